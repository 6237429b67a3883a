"""The incremental host state (what the controller runs) always equals a batch compile of
the same ports, whatever the order of events, and each event touches only its own VM."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ovsnat.cli import golden
from ovsnat.compile import vm as vmflows
from ovsnat.compile.compiler import compile_state
from ovsnat.core.state import HOST, HostState, build_state
from ovsnat.model import HostConfig, VmPort


def vm_flows(cfg, vm, active=True):
    return vmflows.vm_flows(cfg, vm, vm.net(cfg), active)


CFG = HostConfig.parse({**golden.BASE, "fip_activation": "immediate"})


def port(name: str, n: int, mac: int, fip: int | None, iface: str) -> VmPort:
    ids = {
        "iface-id": iface,
        "attached-mac": f"02:00:0a:00:00:{mac:02x}",
        "ovsnat-fixed-ip": f"10.0.0.{n}",
    }
    if fip is not None:
        ids["ovsnat-fip"] = f"203.0.113.{fip}"
    return VmPort.from_external_ids(name, n + 100, ids)


# Small pools of addresses so clashes (same fixed IP, MAC or FIP) are frequent.
ports = st.builds(
    port,
    name=st.sampled_from([f"tap{i}" for i in range(6)]),
    n=st.integers(10, 13),
    mac=st.integers(1, 4),
    fip=st.one_of(st.none(), st.integers(20, 22)),
    iface=st.sampled_from(["a", "b", "c", "d"]),
)
events = st.lists(st.one_of(ports, st.sampled_from([f"tap{i}" for i in range(6)])), max_size=25)


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_incremental_updates_equal_a_batch_compile_of_the_final_ports(events):
    host = HostState(CFG)
    current: dict[str, VmPort] = {}
    installed = {(f.table, f.cookie) for f in host.all_flows()}
    for ev in events:
        if isinstance(ev, str):  # the port was unplugged
            current.pop(ev, None)
            delta = host.update(ev, None)
        else:
            current[ev.name] = ev
            delta = host.update(ev.name, ev)
        # Applying each delta to what is installed keeps it equal to the desired flows.
        installed -= set(delta.delete)
        installed |= {(f.table, f.cookie) for f in delta.add}
        assert installed == {(f.table, f.cookie) for f in host.all_flows()}
    batch = build_state(CFG, current.values())
    assert host.accepted == list(batch.vms)
    assert [r.name for r in host.rejected] == [r.name for r in batch.rejected]
    assert host.all_flows() == compile_state(batch)
    # Never two accepted ports answering for one address.
    for attr in ("fixed_ip", "mac", "fip"):
        values = [getattr(p, attr) for p in host.accepted if getattr(p, attr) is not None]
        assert len(values) == len(set(values)), attr


def test_adding_one_vm_changes_only_that_vms_flows():
    host = HostState(CFG)
    for n in range(20, 40):
        host.update(f"tap{n}", golden.port(n, f"203.0.113.{n}" if n % 2 else None))
    new = golden.port(50, "203.0.113.50")
    delta = host.update(new.name, new)
    assert delta.delete == [] and delta.owners == {new.name}
    assert sorted(delta.add, key=lambda f: f.text()) == sorted(
        vm_flows(CFG, new), key=lambda f: f.text()
    )
    gone = host.update(new.name, None)
    assert gone.add == [] and sorted(gone.delete) == sorted(
        (f.table, f.cookie) for f in vm_flows(CFG, new)
    )


def test_a_learned_gateway_mac_changes_only_host_level_flows():
    host = HostState(
        HostConfig.parse({**golden.BASE, "external_gateway_mac": "", "fip_activation": "immediate"})
    )
    for n in (11, 12):
        host.update(f"tapvm{n}", golden.port(n, "203.0.113.10" if n == 11 else None))
    delta = host.set_config(CFG)
    assert delta and all(f.cookie >> 56 == 0xA1 for f in delta.add)
    assert all(cookie >> 56 == 0xA1 for _, cookie in delta.delete)
    assert HOST in delta.owners


def test_a_fip_stays_dark_until_the_vm_shows_up_then_yields_to_another_host():
    host = HostState(HostConfig.parse(golden.BASE))  # fip_activation=first-packet
    vm = golden.port(11, "203.0.113.10")
    host.update(vm.name, vm)
    assert host.is_pending(vm.name)
    assert host.owner_flows(vm.name) == vm_flows(host.cfg, vm, active=False)
    delta = host.activate(vm.name)
    assert not host.is_pending(vm.name)
    assert host.owner_flows(vm.name) == vm_flows(host.cfg, vm, active=True)
    assert any(f.match.get("arp_tpa") == "203.0.113.10" for f in delta.add)
    host.yield_fip(vm.name)
    assert host.is_pending(vm.name) and vm.name in host.standing.yielded
    # A row update that keeps the device (same ofport) keeps the state...
    host.activate(vm.name)
    host.update(vm.name, vm)
    assert not host.is_pending(vm.name)
    # ...a new device (new ofport) must prove itself again.
    moved = VmPort(vm.name, 99, vm.mac, vm.fixed_ip, vm.iface_id, vm.fip)
    host.update(vm.name, moved)
    assert host.is_pending(vm.name)


def test_after_a_restart_fips_still_installed_on_the_switch_stay_active():
    host = HostState(HostConfig.parse(golden.BASE))
    vm, other = golden.port(11, "203.0.113.10"), golden.port(13, "203.0.113.12")
    host.update(vm.name, vm)
    host.update(other.name, other)
    installed = {(f.table, f.cookie) for f in vm_flows(host.cfg, vm, active=True)}
    assert host.adopt_installed(installed) == [vm.name]
    assert not host.is_pending(vm.name) and host.is_pending(other.name)


def test_composed_deltas_never_send_a_flow_that_was_added_then_removed():
    host = HostState(HostConfig.parse(golden.BASE))  # first-packet activation
    vm = golden.port(11, "203.0.113.10")
    delta = host.update(vm.name, vm)  # pending flows
    delta.extend(host.activate(vm.name))  # then active flows
    assert {(f.table, f.cookie) for f in delta.add} == {
        (f.table, f.cookie) for f in vm_flows(host.cfg, vm, active=True)
    }
    assert delta.delete == []


def test_missing_flows_are_recompiled_from_their_keys_alone():
    host = HostState(CFG)
    for n in (11, 12, 13):
        port = golden.port(n, "203.0.113.10" if n == 11 else None)
        host.update(port.name, port)
    everything = host.all_flows()
    assert {(f.table, f.cookie) for f in everything} == host.all_keys()
    some = {(f.table, f.cookie) for f in everything[::7]}
    assert sorted(host.flows_for(some), key=lambda f: f.text()) == sorted(
        (f for f in everything if (f.table, f.cookie) in some), key=lambda f: f.text()
    )


def test_cached_packed_flow_mods_equal_a_fresh_encoding():
    host = HostState(CFG)
    for n in (11, 12):
        port = golden.port(n, "203.0.113.10" if n == 11 else None)
        host.update(port.name, port)
    from ovsnat.openflow import messages

    flows = {(f.table, f.cookie): f for f in host.all_flows()}
    cached = dict(host.iter_wire_for(set(flows)))
    assert cached.keys() == flows.keys()
    assert all(cached[k] == messages.flow_add(f, 0) for k, f in flows.items())


def test_a_clash_resolved_leaves_one_plain_claimant_and_the_fip_with_the_survivor():
    host = HostState(CFG)
    first, second = golden.port(11, "203.0.113.10"), golden.port(12, "203.0.113.10")
    host.update(first.name, first)
    host.update(second.name, second)
    assert host.fip_owner("203.0.113.10") == first.name
    assert "FIP 203.0.113.10 is already used by port 'tapvm11'" in host.lost[second.name]
    host.update(first.name, None)
    assert host.fip_owner("203.0.113.10") == second.name and not host.lost
    assert all(isinstance(names, str) for names in host.arbiter.claims._held.values())
    assert host.fip_owner("203.0.113.99") is None and host.fip_owner("not an IP") is None


FIRST_PACKET = HostConfig.parse(golden.BASE)  # FIPs wait for the VM's frame
names = st.sampled_from([f"tap{i}" for i in range(6)])
lifecycle = st.lists(
    st.one_of(ports, names, st.tuples(st.sampled_from(["activate", "yield"]), names)), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(events=lifecycle)
def test_the_status_counters_kept_on_the_way_equal_a_full_scan(events):
    """The controller publishes counts() after every change; it must agree with a scan of
    every port, whatever mix of plugs, unplugs, clashes, activations and yields came first."""
    host = HostState(FIRST_PACKET)
    for ev in events:
        if isinstance(ev, VmPort):
            host.update(ev.name, ev)
        elif isinstance(ev, str):
            host.update(ev, None)
        elif ev[1] in host.valid:
            (host.activate if ev[0] == "activate" else host.yield_fip)(ev[1])
    accepted = host.accepted
    pending = sorted(p.name for p in accepted if host.is_pending(p.name))
    assert host.counts() == (len(accepted), sum(p.fip is not None for p in accepted), pending)
