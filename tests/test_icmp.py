"""ICMP errors for FIP VMs get their quoted header translated with every checksum right."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPerror, TCPerror, UDPerror, raw

from ovsnat.packets.icmp import translate_error

FIP, FIXED, SERVER, ROUTER = "203.0.113.10", "10.0.0.11", "198.51.100.10", "203.0.113.1"
A, B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x0a\x00\x00\x0b"


def ip(text):
    return bytes(int(x) for x in text.split("."))


@pytest.mark.parametrize("l4", [UDP(sport=40000, dport=53), TCP(sport=40000, dport=80)])
def test_frag_needed_to_a_fip_quotes_the_fixed_ip_after_translation(l4):
    quoted = IP(src=FIP, dst=SERVER, ttl=63, flags="DF") / l4 / (b"x" * 40)
    err = (
        Ether(src="02:00:00:00:0e:01", dst="02:5a:cb:00:71:0a")
        / IP(src=ROUTER, dst=FIP, ttl=64)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / raw(quoted)[:48]
    )
    out = translate_error(raw(err), ip(FIP), ip(FIXED), True, A, B)
    pkt = Ether(out)
    assert pkt.src == "02:00:00:00:00:01" and pkt.dst == "02:00:0a:00:00:0b"
    assert pkt[IP].dst == FIXED and pkt[IP].src == ROUTER and pkt[IP].ttl == 63
    assert pkt[IPerror].src == FIXED and pkt[IPerror].dst == SERVER
    rebuilt = Ether(raw(pkt))
    for layer in (IP, ICMP, IPerror):
        fresh = rebuilt.copy()
        del fresh[layer].chksum
        assert Ether(raw(fresh))[layer].chksum == pkt[layer].chksum, layer.__name__
    # The quoted transport checksum now fits the fixed IP (as Linux's NAT keeps it).
    original = IP(src=FIXED, dst=SERVER, ttl=63, flags="DF") / l4 / (b"x" * 40)
    want = IP(raw(original))[l4.__class__].chksum
    got = pkt[UDPerror].chksum if isinstance(l4, UDP) else pkt[TCPerror].chksum
    assert got == want


def test_port_unreachable_from_a_fip_vm_quotes_the_fip():
    quoted = IP(src=SERVER, dst=FIXED, ttl=62) / UDP(sport=5000, dport=9) / b"hello"
    err = (
        Ether(src="02:00:0a:00:00:0b", dst="02:00:00:00:00:01")
        / IP(src=FIXED, dst=SERVER, ttl=64)
        / ICMP(type=3, code=3)
        / raw(quoted)
    )
    out = translate_error(raw(err), ip(FIXED), ip(FIP), False, b"\x02\x5a\xcb\x00\x71\x0a", A)
    pkt = Ether(out)
    assert pkt[IP].src == FIP and pkt[IPerror].dst == FIP and pkt[IPerror].src == SERVER
    fresh = Ether(raw(pkt))
    del fresh[ICMP].chksum
    assert Ether(raw(fresh))[ICMP].chksum == pkt[ICMP].chksum


@pytest.mark.parametrize(
    "frame",
    [
        raw(Ether() / IP(src=ROUTER, dst=FIP) / ICMP(type=8)),  # echo request
        raw(
            Ether()
            / IP(src=ROUTER, dst="203.0.113.99")
            / ICMP(type=3, code=4)
            / raw(IP(src="203.0.113.99", dst=SERVER) / UDP())
        ),  # other address
        raw(
            Ether()
            / IP(src=ROUTER, dst=FIP, ttl=1)
            / ICMP(type=11)
            / raw(IP(src=FIP, dst=SERVER) / UDP())
        ),  # TTL exhausted
        raw(Ether() / IP(src=ROUTER, dst=FIP) / UDP()),  # not ICMP
        b"\x00" * 30,  # garbage
    ],
)
def test_anything_else_is_left_alone(frame):
    assert translate_error(frame, ip(FIP), ip(FIXED), True, A, B) is None


def test_time_exceeded_quotes_the_header_and_8_bytes_and_goes_back_to_the_sender():
    from scapy.all import ICMP, IP, UDP, Ether

    from ovsnat.packets.icmp import time_exceeded

    probe = (
        Ether(src="02:00:0a:00:00:0b", dst="02:00:00:00:00:01")
        / IP(src="10.0.0.11", dst="198.51.100.10", ttl=1)
        / UDP(sport=40000, dport=33434)
        / (b"x" * 40)
    )
    out = Ether(
        time_exceeded(
            bytes(probe),
            bytes([10, 0, 0, 1]),
            bytes.fromhex("020000000001"),
            bytes.fromhex("02000a00000b"),
        )
    )
    assert (out.src, out.dst) == ("02:00:00:00:00:01", "02:00:0a:00:00:0b")
    assert (out[IP].src, out[IP].dst, out[IP].ttl) == ("10.0.0.1", "10.0.0.11", 64)
    assert (out[ICMP].type, out[ICMP].code) == (11, 0)
    quoted = IP(bytes(out[ICMP].payload))
    assert quoted.src == "10.0.0.11" and quoted[UDP].dport == 33434
    assert len(bytes(out[ICMP])) == 8 + 20 + 8
    rebuilt = Ether(bytes(out))
    del rebuilt[IP].chksum, rebuilt[ICMP].chksum
    assert bytes(Ether(bytes(rebuilt))) == bytes(out)  # checksums right


def test_time_exceeded_is_never_sent_about_an_error_a_later_fragment_or_a_broadcast():
    from scapy.all import ICMP, IP, UDP, Ether

    from ovsnat.packets.icmp import time_exceeded

    gw, mac = bytes([10, 0, 0, 1]), bytes(6)
    base = Ether() / IP(src="10.0.0.11", dst="198.51.100.10", ttl=1)
    assert time_exceeded(bytes(base / ICMP(type=3, code=3) / (b"x" * 28)), gw, mac, mac) is None
    assert (
        time_exceeded(
            bytes(Ether() / IP(src="10.0.0.11", dst="198.51.100.10", ttl=1, frag=8) / (b"x" * 16)),
            gw,
            mac,
            mac,
        )
        is None
    )
    assert (
        time_exceeded(
            bytes(Ether() / IP(src="10.0.0.11", dst="224.0.0.9", ttl=1) / UDP()), gw, mac, mac
        )
        is None
    )
    assert time_exceeded(bytes(base / ICMP(type=8) / b"ping"), gw, mac, mac) is not None
