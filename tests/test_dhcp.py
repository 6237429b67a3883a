"""Native DHCP, decided without a switch: a simulated host (tests/hostsim.py) gets client
messages built with the framework's packet library, and the answers are parsed back with it.
The lab tests (tests/test_dhcp_lab.py) run real clients against a real switch."""

from __future__ import annotations

import struct

import pytest

from ovsnat.cli import golden
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import COOKIE_QUARANTINE, cookie_kind
from ovsnat.compile.punt_flows import DHCP_METER
from ovsnat.core import dhcp, punts
from ovsnat.core.state import build_state
from ovsnat.model import HostConfig, PortError, VmPort
from ovsnat.packets import arp
from ovsnat.runtime import framework as fw
from tests.hostsim import SimHost, vm_row

ROUTER = "02:00:00:00:00:01"
OPTS = dict(
    dhcp_dns="198.51.100.53,198.51.100.54", dhcp_domain="lab.example", dhcp_lease_time="600"
)


def mac(n: int) -> str:
    return f"02:00:0a:00:00:{n:02x}"


def client(
    kind: int,
    chaddr: str,
    *,
    requested: str | None = None,
    server: str | None = None,
    ciaddr: str = "0.0.0.0",
    broadcast: bool = True,
    xid: int = 0x1234,
) -> bytes:
    """A client message as a real client sends it (udhcpc: broadcast until bound)."""
    opts = [fw.dhcp.option(dhcp.OPT_TYPE, bytes([kind]))]
    if requested:
        opts.append(fw.dhcp.option(dhcp.OPT_REQUESTED, _ip(requested)))
    if server:
        opts.append(fw.dhcp.option(dhcp.OPT_SERVER, _ip(server)))
    body = fw.dhcp.dhcp(
        op=1,
        chaddr=chaddr,
        xid=xid,
        hlen=6,
        ciaddr=ciaddr,
        flags=0x8000 if broadcast else 0,
        options=fw.dhcp.options(option_list=opts),
    )
    pkt = fw.packet.Packet()
    pkt.add_protocol(
        fw.ethernet.ethernet(
            dst="ff:ff:ff:ff:ff:ff" if ciaddr == "0.0.0.0" else ROUTER, src=chaddr, ethertype=0x0800
        )
    )
    pkt.add_protocol(
        fw.ipv4.ipv4(
            src=ciaddr, dst="255.255.255.255" if ciaddr == "0.0.0.0" else "10.0.0.1", proto=17
        )
    )
    pkt.add_protocol(fw.udp.udp(src_port=68, dst_port=67))
    pkt.add_protocol(body)
    pkt.serialize()
    return bytes(pkt.data)


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def answers(host: SimHost, port: int) -> list:
    """(ip header, dhcp message, {option: value}) of each DHCP answer out of `port`."""
    out = []
    for p, frame in host.switch.packet_outs:
        pkt = fw.packet.Packet(frame)
        msg = pkt.get_protocol(fw.dhcp.dhcp)
        if p == port and msg is not None:
            opts = {o.tag: o.value for o in msg.options.option_list}
            out.append((pkt.get_protocol(fw.ipv4.ipv4), msg, opts))
    return out


@pytest.fixture
def host():
    h = SimHost(**OPTS).start()
    h.plug(vm_row(5), vm_row(6))
    return h


def test_discover_gets_an_offer_of_the_fixed_ip_with_gateway_dns_and_lease(host):
    host.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    [(ip, msg, opts)] = answers(host, 5)
    assert (msg.op, msg.yiaddr, msg.xid) == (2, "10.0.0.5", 0x1234)
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.OFFER])
    assert opts[dhcp.OPT_ROUTER] == _ip("10.0.0.1") == opts[dhcp.OPT_SERVER]
    assert opts[dhcp.OPT_MASK] == _ip("255.255.255.0")
    assert opts[dhcp.OPT_DNS] == _ip("198.51.100.53") + _ip("198.51.100.54")
    assert opts[dhcp.OPT_DOMAIN] == b"lab.example"
    assert struct.unpack("!I", opts[dhcp.OPT_LEASE]) == (600,)
    assert struct.unpack("!H", opts[dhcp.OPT_MTU]) == (1500,)
    assert (ip.src, ip.dst) == ("10.0.0.1", "255.255.255.255")  # the client asked broadcast


def test_request_is_acked_and_the_lease_shows_in_status(host):
    host.from_vm(5, client(dhcp.REQUEST, mac(5), requested="10.0.0.5", server="10.0.0.1"))
    [(_, msg, opts)] = answers(host, 5)
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.ACK]) and msg.yiaddr == "10.0.0.5"
    leases = host.ctl.status(host.now)["dhcp_leases"]
    assert leases["tapvm5"]["ip"] == "10.0.0.5" and leases["tapvm5"]["acks"] == 1
    assert leases["tapvm5"]["remaining"] == 600
    assert host.ctl.stats.counts["dhcp_acks"] == 1


def test_a_client_asking_for_another_vms_address_is_refused(host):
    host.from_vm(5, client(dhcp.REQUEST, mac(5), requested="10.0.0.6"))
    [(_, msg, opts)] = answers(host, 5)
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.NAK]) and msg.yiaddr == "0.0.0.0"
    assert host.ctl.stats.counts["dhcp_naks"] == 1
    assert "tapvm5" not in host.ctl.status(host.now)["dhcp_leases"]


def test_a_request_for_another_mac_or_from_an_unserved_port_gets_nothing(host):
    host.from_vm(5, client(dhcp.DISCOVER, mac(6)))  # vm5 asks with vm6's MAC
    host.from_vm(9, client(dhcp.DISCOVER, mac(9)))  # no ovsnat port there
    host.plug(vm_row(7, **{"ovsnat-dhcp": "off"}))
    host.from_vm(7, client(dhcp.DISCOVER, mac(7)))  # opted out
    assert not host.switch.packet_outs
    assert host.ctl.stats.counts["dhcp_refused"] == 3
    host.from_vm(6, client(dhcp.DISCOVER, mac(6)))  # positive control
    assert len(answers(host, 6)) == 1


def test_a_renewal_is_unicast_and_survives_a_controller_restart(host):
    renew = client(dhcp.REQUEST, mac(5), ciaddr="10.0.0.5", broadcast=False)
    restarted = SimHost(switch=host.switch, **OPTS)
    restarted.rows = dict(host.rows)
    restarted.start()
    restarted.from_vm(5, renew)
    [(ip, msg, opts)] = answers(restarted, 5)
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.ACK])
    assert (ip.dst, msg.ciaddr, msg.yiaddr) == ("10.0.0.5", "10.0.0.5", "10.0.0.5")


def test_inform_gets_options_only_and_release_ends_the_lease(host):
    host.from_vm(5, client(dhcp.REQUEST, mac(5), requested="10.0.0.5"))
    host.from_vm(5, client(dhcp.INFORM, mac(5), ciaddr="10.0.0.5", broadcast=False))
    _, (_, msg, opts) = answers(host, 5)
    assert opts[dhcp.OPT_TYPE] == bytes([dhcp.ACK]) and msg.yiaddr == "0.0.0.0"
    assert dhcp.OPT_LEASE not in opts and opts[dhcp.OPT_ROUTER] == _ip("10.0.0.1")
    host.from_vm(5, client(dhcp.RELEASE, mac(5), ciaddr="10.0.0.5", broadcast=False))
    assert len(answers(host, 5)) == 2
    assert "tapvm5" not in host.ctl.status(host.now)["dhcp_leases"]


def test_a_flooding_port_is_quarantined_at_the_switch_and_others_are_still_served(host):
    for _ in range(100):
        host.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    burst = punts.SHARES["dhcp"].burst
    assert len(answers(host, 5)) == burst
    [(key, hard)] = host.switch.temporary.items()
    assert cookie_kind(key[1]) == COOKIE_QUARANTINE and hard == punts.QUARANTINE_S
    assert host.ctl.stats.counts["dhcp_quarantines"] == 1
    assert host.ctl.status(host.now)["packet_in_drops"]["over_share"] == 100 - burst
    host.from_vm(6, client(dhcp.DISCOVER, mac(6)))
    assert len(answers(host, 6)) == 1
    host.advance(punts.QUARANTINE_S + 1)  # the quarantine is over
    host.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    assert len(answers(host, 5)) == burst + 1


def test_port_values_win_and_vlan_networks_on_a_fabric_get_a_smaller_mtu():
    h = SimHost(fabric_port="fabric", fabric_ofport="2", **OPTS).start()
    net = {
        "ovsnat-network": "blue",
        "ovsnat-cidr": "10.1.0.0/24",
        "ovsnat-gateway": "10.1.0.1",
        "ovsnat-vlan": "101",
    }
    h.plug(
        vm_row(5, **{**net, "ovsnat-fixed-ip": "10.1.0.5"}),
        vm_row(
            6,
            **{
                **net,
                "ovsnat-fixed-ip": "10.1.0.6",
                "ovsnat-mtu": "1450",
                "ovsnat-dns": "198.51.100.99",
                "ovsnat-routes": "198.51.100.0/24>10.1.0.254,10.9.0.0/16>10.1.0.253",
            },
        ),
    )
    h.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    h.from_vm(6, client(dhcp.DISCOVER, mac(6)))
    [(_, _, five)], [(_, _, six)] = answers(h, 5), answers(h, 6)
    assert struct.unpack("!H", five[dhcp.OPT_MTU]) == (1496,)
    assert five[dhcp.OPT_ROUTER] == _ip("10.1.0.1") and dhcp.OPT_ROUTES not in five
    assert struct.unpack("!H", six[dhcp.OPT_MTU]) == (1450,)
    assert six[dhcp.OPT_DNS] == _ip("198.51.100.99")
    # RFC 3442: the default route first (a client then ignores option 3), each destination
    # as its significant octets.
    assert six[dhcp.OPT_ROUTES] == (
        bytes([0])
        + _ip("10.1.0.1")
        + bytes([24, 198, 51, 100])
        + _ip("10.1.0.254")
        + bytes([16, 10, 9])
        + _ip("10.1.0.253")
    )


def test_with_metadata_on_the_answer_routes_169_254_169_254_through_the_gateway():
    """Option 121 (RFC 3442, so the default route goes first), as Neutron's DHCP gives it;
    a subnet's own route for 169.254.169.254/32 is left as it is."""
    h = SimHost(metadata_port="ovsnat-meta", **OPTS).start()
    own = "169.254.169.254/32>10.0.0.254"
    h.plug(vm_row(5), vm_row(6, **{"ovsnat-routes": own}))
    h.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    h.from_vm(6, client(dhcp.DISCOVER, mac(6)))
    [(_, _, five)], [(_, _, six)] = answers(h, 5), answers(h, 6)
    gw = _ip("10.0.0.1")
    assert five[dhcp.OPT_ROUTES] == bytes([0]) + gw + bytes([32, 169, 254, 169, 254]) + gw
    assert six[dhcp.OPT_ROUTES] == (
        bytes([0]) + gw + bytes([32, 169, 254, 169, 254]) + _ip("10.0.0.254")
    )
    # without metadata, no option 121 at all (the positive control above)
    plain = SimHost(**OPTS).start()
    plain.plug(vm_row(5))
    plain.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    [(_, _, answer)] = answers(plain, 5)
    assert dhcp.OPT_ROUTES not in answer and answer[dhcp.OPT_ROUTER] == gw


def test_a_pending_fip_vms_dhcp_request_proves_it_is_here():
    h = SimHost(fip_activation="first-packet", **OPTS).start()
    h.plug(vm_row(5, fip="203.0.113.50"))
    assert not h.fip_live("203.0.113.50")
    h.from_vm(5, client(dhcp.DISCOVER, mac(5)))
    h.advance(0.2)  # the FIP settles, as at any first frame
    assert h.fip_live("203.0.113.50") and len(answers(h, 5)) == 1


def lease(h: SimHost, n: int) -> None:
    """The VM of port n takes its lease: DISCOVER, then REQUEST of what was offered."""
    h.from_vm(n, client(dhcp.DISCOVER, mac(n)))
    h.from_vm(n, client(dhcp.REQUEST, mac(n), requested=f"10.0.0.{n}", server="10.0.0.1"))
    assert h.ctl.dhcp.leases[f"tapvm{n}"]["acks"] >= 1


def test_a_fip_given_to_a_vm_that_took_its_lease_here_is_announced_then_lit_unprobed():
    """A FIP moved to a running VM (its lease taken from this host since its plug): no
    probe round; announced at once (a host that still answers for it yields on that) and
    lit SETTLE later, so two hosts never answer for it. A VM that never spoke DHCP here
    probes (the control)."""
    h = SimHost(**OPTS).start()
    h.plug(vm_row(5), vm_row(6))
    lease(h, 5)
    h.advance(1.0)
    h.plug(vm_row(5, fip="203.0.113.50"), vm_row(6, fip="203.0.113.60"))
    h.advance(0.01)
    garps = [a for a in h.arps_out() if a.is_announcement and a.spa == "203.0.113.50"]
    assert garps and garps[0].sha == h.fip_mac("203.0.113.50")
    assert not h.fip_live("203.0.113.50")  # announced before it answers
    h.advance(0.1)  # SETTLE, still within the first probe round (PROBE_GAP)
    assert h.fip_live("203.0.113.50") and not h.fip_live("203.0.113.60")
    assert not [a for a in h.arps_out() if a.is_probe and a.tpa == "203.0.113.50"]
    assert {a.tpa for a in h.arps_out() if a.is_probe} == {"203.0.113.60"}  # the control


def test_a_lease_from_before_the_port_yielded_its_fip_proves_nothing():
    """The port's FIP was announced by another host (the VM moved there; this host's row
    can outlive the move): a FIP given to the port now probes, its old lease
    notwithstanding. A lease taken after the yield lights the next one unprobed."""
    h = SimHost(**OPTS).start()
    h.plug(vm_row(5))
    lease(h, 5)
    h.advance(1.0)
    h.plug(vm_row(5, fip="203.0.113.50"))
    h.advance(0.2)
    assert h.fip_live("203.0.113.50")
    fip_mac = h.fip_mac("203.0.113.50")
    h.from_uplink(arp.garp(fip_mac, "203.0.113.50"))  # another ovsnat host announces it
    assert not h.fip_live("203.0.113.50")
    h.plug(vm_row(5, fip="203.0.113.51"))
    h.advance(0.2)
    assert not h.fip_live("203.0.113.51")
    assert {a.tpa for a in h.arps_out() if a.is_probe} == {"203.0.113.51"}
    lease(h, 5)
    h.plug(vm_row(5, fip="203.0.113.52"))
    h.advance(0.2)
    assert h.fip_live("203.0.113.52")
    assert "203.0.113.52" not in [a.tpa for a in h.arps_out() if a.is_probe]


def test_a_lease_from_before_the_ports_current_device_proves_nothing():
    """The port left and came back on a new device (a live migration back here: the
    destination hears nothing from the VM before it runs here): its old lease does not
    light a FIP given now; it probes."""
    h = SimHost(**OPTS).start()
    h.plug(vm_row(5))
    lease(h, 5)
    h.advance(1.0)
    h.plug(vm_row(5, ofport=15))
    h.advance(1.0)
    h.plug(vm_row(5, ofport=15, fip="203.0.113.50"))
    h.advance(0.05)
    assert not h.fip_live("203.0.113.50")
    assert [a.tpa for a in h.arps_out() if a.is_probe] == ["203.0.113.50"]


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("ovsnat-dns", "198.51.100.1,nope", "is not an IPv4 address"),
        ("ovsnat-mtu", "100", "is not an MTU"),
        ("ovsnat-routes", "10.9.0.0/16", "is not cidr>nexthop"),
        ("ovsnat-routes", "10.9.0.1/16>10.0.0.254", "is not an IPv4 CIDR without host bits"),
        ("ovsnat-routes", "10.9.0.0/16>10.5.0.254", "next hop is not on the port's network"),
        ("ovsnat-domain", "bad domain", "is not a DNS domain name"),
        ("ovsnat-dhcp", "maybe", "is not on or off"),
    ],
)
def test_bad_port_values_reject_that_port_with_the_key_named(key, value, reason):
    cfg = HostConfig.parse({**golden.BASE, **OPTS})
    ids = {**vm_row(5).external_ids, key: value}
    with pytest.raises(PortError) as e:
        VmPort.from_external_ids("tapvm5", 5, ids).check(cfg)
    assert key in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize("enabled", [True, False])
def test_dhcp_requests_reach_the_controller_only_from_vm_ports(enabled):
    cfg = HostConfig.parse({**golden.BASE, **OPTS, "dhcp": str(enabled).lower()})
    flows = compile_state(build_state(cfg, []))
    punts = [f for f in flows if any(getattr(a, "meter_id", 0) == DHCP_METER for a in f.actions)]
    assert len(punts) == (1 if enabled else 0)
    texts = [f.body() for f in flows]
    assert (
        any("in_port=1" in t and "tp_src=68" in t and "actions=drop" in t for t in texts) == enabled
    )
