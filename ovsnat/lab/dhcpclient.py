"""A lab VM configured the way a cloud image is: by a real DHCP client (busybox udhcpc, the
client cirros runs) in the VM's namespace, and nothing else.

The client's event script configures eth0 from the lease (address, default route, MTU,
classless routes) and records what it got in the lab directory, where tests read it; it
never touches the namespace's /etc (DNS servers and domain are recorded, not installed).
The client is a lab process like any other: recorded by pid, stopped at teardown.
"""

from __future__ import annotations

import os
import signal

from ovsnat.lab.sh import LabError, wait_for

SCRIPT = r"""#!/bin/sh
# udhcpc event script of an ovsnat lab VM. $1: deconfig bound renew nak leasefail
rec="$OVSNAT_LEASE_FILE"
ev="$1"
echo "$ev ${ip:-}" >> "$rec.events"
case "$ev" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    [ "$ev" = bound ] && ip addr flush dev "$interface"
    ip addr replace "$ip/${mask:-$subnet}" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
        [ "$1" != 0.0.0.0/0 ] && ip route replace "$1" via "$2" dev "$interface"
        shift 2
    done
    {
        echo "event=$ev"; echo "ip=$ip"; echo "mask=${mask:-$subnet}"; echo "router=$router"
        echo "dns=$dns"; echo "domain=$domain"; echo "lease=$lease"; echo "mtu=$mtu"
        echo "serverid=$serverid"; echo "staticroutes=$staticroutes"
    } > "$rec.tmp" && mv "$rec.tmp" "$rec"
    ;;
esac
exit 0
"""


def _script(lab) -> str:
    path = os.path.join(lab.dir, "udhcpc.script")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(SCRIPT)
        os.chmod(path, 0o755)
    return path


def lease_file(lab, vm) -> str:
    return os.path.join(lab.dir, f"lease-{vm.name}")


def start(lab, vm) -> None:
    """Run udhcpc on the VM's eth0: discover every second until an offer comes, then keep
    the lease (renewals at T1, as a booting instance does)."""
    path = lease_file(lab, vm)
    for stale in (path, path + ".events"):
        if os.path.exists(stale):
            os.remove(stale)
    lab.spawn(
        f"udhcpc-{vm.name}",
        [
            "udhcpc",
            "-f",
            "-i",
            "eth0",
            "-s",
            _script(lab),
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
            "-O",
            "mtu",
            "-O",
            "staticroutes",
            "-O",
            "domain",
        ],
        ns=vm.ns,
        env={"OVSNAT_LEASE_FILE": path},
    )


def lease(lab, vm) -> dict[str, str]:
    """What the client last got (empty before its first lease)."""
    try:
        with open(lease_file(lab, vm)) as f:
            return dict(line.rstrip("\n").partition("=")[::2] for line in f if "=" in line)
    except FileNotFoundError:
        return {}


def bound_at(lab, vm) -> float:
    """When the client last wrote its lease (wall clock; the event script writes the file
    at `bound` and at each renewal)."""
    return os.path.getmtime(lease_file(lab, vm))


def events(lab, vm) -> list[str]:
    """The script's events so far, in order ("bound 10.0.0.5", "renew 10.0.0.5", ...)."""
    try:
        with open(lease_file(lab, vm) + ".events") as f:
            return [line.strip() for line in f]
    except FileNotFoundError:
        return []


def wait_bound(lab, vm, timeout: float = 15.0) -> dict[str, str]:
    """Wait for the VM's first lease; returns it."""
    try:
        return wait_for(
            lambda: lease(lab, vm) or None, timeout, interval=0.05, what=f"{vm.name}'s DHCP lease"
        )
    except LabError:
        raise LabError(
            f"{vm.name} got no DHCP lease within {timeout} s; client events: {events(lab, vm)}"
        ) from None


def renew(lab, vm) -> None:
    """Make the client renew now (busybox udhcpc: SIGUSR1), as it would at T1."""
    os.kill(lab.procs[f"udhcpc-{vm.name}"]["pid"], signal.SIGUSR1)
