"""bgp mode: a live migration between two hypervisors on routed uplinks, end to end with
real FRR on both hosts and both ToRs (issue 30 items 3 and 6; docs/bgp.md sections 2 and 5).

The server holds a TCP session with the VM through its FIP. The VM moves as Nova and
libvirt move it: the destination's port and device first, while the guest still runs on the
source (the destination sees the source's route come back from the ToRs, its echo, and holds
the FIP dark); then the guest runs on the destination and sends QEMU's RARPs, and its FIP
goes live there with a route the ToRs prefer (MOVED) over the source's, which still
announces it; then the source's port is unplugged and withdrawn. What is
read is what the fabric does: each ToR's best path, from FRR's JSON, sampled.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ovsnat.lab.bgpplan import link_address
from ovsnat.lab.routedhost import RoutedHost, ip
from ovsnat.lab.sh import wait_for
from ovsnat.lab.traffic import background_tcp, ping, tcp_established

pytestmark = pytest.mark.lab

FIP, VM, PORT = "203.0.113.20", 21, 7000
TORS = ("ta", "tb")


@pytest.fixture(scope="module")
def lab():
    lab = RoutedHost(frr=True, hosts=2).up()
    try:
        yield lab
    finally:
        lab.down()


def best_host(lab: RoutedHost, tor: str, prefix: str) -> int | None:
    """The host the ToR's best path to prefix/32 goes to (1, 2), or None."""
    best = lab.best(tor, prefix)
    if not best:
        return None
    hop = best["nexthops"][0]["ip"]
    return next((n for n in (1, 2) if link_address(n, tor) == hop), 0)


def echoed(lab: RoutedHost, n: int, prefix: str) -> bool:
    """Host n's kernel holds another host's route to prefix/32 from the ToRs (an echo)."""
    return bool(ip(lab.ns[lab.role(n)], "route", "show", f"{prefix}/32", "proto", "bgp").strip())


def test_each_host_announces_its_own_snat_address_and_no_other(lab):
    for n in (1, 2):
        snat = lab.hv(n).snat
        for tor in TORS:
            wait_for(lambda t=tor, s=snat, h=n: best_host(lab, t, s) == h, 20,
                     what=f"{tor}'s best path to host {n}'s SNAT address")  # fmt: skip
        assert lab.hv(n).announced() == {snat}  # nothing of the other host's


def test_a_live_migration_moves_the_fips_next_hop_within_a_second_and_the_session_survives(lab):
    vm = lab.add_vm(VM, fip=FIP, host=1)
    for tor in TORS:
        wait_for(lambda t=tor: best_host(lab, t, FIP) == 1, 20, what=f"{tor}: the FIP on host 1")
    wait_for(lambda: echoed(lab, 2, FIP), 20, what="host 2 seeing host 1's FIP (its echo)")
    assert not echoed(lab, 1, FIP)  # a host never sees its own announcement as an echo
    server = subprocess.Popen(
        ["ip", "netns", "exec", vm, *lab.python("-m", "ovsnat.lab.peer", "tcp-server",
                                                 "--port", str(PORT))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout.readline().strip() == "READY"
        wait_for(lambda: ping(lab.ns["srv"], FIP, count=1, wait=1).received, 20,
                 what="the FIP from outside, before the move")  # fmt: skip
        session = background_tcp(lab, lab.ns["srv"], FIP, PORT, hold=10)
        wait_for(lambda: tcp_established(lab.ns["srv"], FIP, PORT) >= 1, 10,
                 what="the inbound session")  # fmt: skip
        time.sleep(1.0)  # the session runs on host 1 for a while (echoes every 10 ms)

        lab.prepare(VM, dest=2)  # the guest still runs on host 1
        wait_for(lambda: lab.hv(2).status().get("waiting", {}).get(f"tap{VM}", {})
                 .get("state") == "held", 10, what="host 2 holding the FIP dark")  # fmt: skip
        for _ in range(5):  # the source keeps the route meanwhile: nothing moved
            assert [best_host(lab, t, FIP) for t in TORS] == [1, 1]
            assert FIP not in lab.hv(2).announced(100) | lab.hv(2).announced(101)
            time.sleep(0.1)

        rarps = lab.switch_over(VM, 1, 2)
        moved: dict[str, float] = {}
        deadline = time.monotonic() + 5.0
        while len(moved) < len(TORS) and time.monotonic() < deadline:
            for tor in TORS:
                if tor not in moved and best_host(lab, tor, FIP) == 2:
                    moved[tor] = time.monotonic()
        first = min(rarps.resumed, rarps.first())  # its first frame: a RARP or a TCP reply
        moved = {tor: round(at - first, 3) for tor, at in moved.items()}
        assert set(moved) == set(TORS), f"the ToRs' best paths did not move: {moved}"
        assert max(moved.values()) < 1.0, moved
        # Held at the first frame, while the source still announces it: MOVED, and the
        # ToRs prefer it over the source's LIVE route.
        assert FIP in lab.hv(2).announced(101) and FIP in lab.hv(1).announced(100)
        said = lab.hv(2).controller.text()
        assert f"port tap{VM}: first frame seen; activating its FIP" in said, said[-3000:]
        time.sleep(0.5)
        lab.unplug(VM, 1)  # Nova unplugs the source once the guest runs on the destination
        wrong, samples, end = [], 0, time.monotonic() + 3.0
        while time.monotonic() < end:  # the best path never goes back, across the unplug
            for tor in TORS:
                samples += 1
                if (host := best_host(lab, tor, FIP)) != 2:
                    wrong.append((tor, host, round(time.monotonic() - first, 3)))
        assert samples > 10 and wrong == [], wrong
        wait_for(lambda: FIP not in lab.hv(1).announced(), 10, what="host 1 withdrew the FIP")
        result = session.result(timeout=30)
        assert result.startswith("PEER") and "HELD" in result, result
        print(f"next hop moved after {moved} s; {result.splitlines()[-1]}")
    finally:
        server.kill()
        server.wait(10)
