"""The lab's tenant-network fabric: a top-of-rack switch in a namespace of its own that joins
every hypervisor's `fabric` port, and the networks the lab's VMs live in.

This kernel has no Linux-bridge VLAN filtering and no 8021q, so the switch is a plain Linux
bridge: it learns MACs and carries tagged frames transparently, which is all a trunk between
hypervisors needs (each host tags and untags its own networks).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.lab.sh import run

FABRIC = "fabric"  # the OVS port of every host toward the switch


@dataclass(frozen=True)
class LabNet:
    """A tenant network as the lab writes it into a port's external_ids."""

    name: str
    cidr: str
    gateway: str
    vlan: int | None = None

    @property
    def prefix(self) -> int:
        return int(self.cidr.split("/")[1])

    def external_ids(self) -> dict[str, str]:
        ids = {
            "ovsnat-network": self.name,
            "ovsnat-cidr": self.cidr,
            "ovsnat-gateway": self.gateway,
        }
        return ids | ({"ovsnat-vlan": str(self.vlan)} if self.vlan else {})


# The reference lab's tenant networks: two with the same addresses, beside the default one.
TENANT_A = LabNet("tenant-a", "10.1.0.0/24", "10.1.0.1", 101)
TENANT_B = LabNet("tenant-b", "10.1.0.0/24", "10.1.0.1", 102)


def add_switch(lab) -> str:
    """The top-of-rack switch's namespace (created once per lab)."""
    ns = lab.ns_name("tor")
    if ns not in lab.namespaces:
        lab._add_ns("tor")
        run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", "br0", "up"])
    return ns


def connect(lab, host) -> int:
    """Cable a host's `fabric` port to the switch; returns its ofport."""
    ns = add_switch(lab)
    lab._veth(host.ns, FABRIC, ns, host.name)
    run(["ip", "-n", ns, "link", "set", host.name, "master", "br0"])
    host.vsctl("--may-exist", "add-port", "br-int", FABRIC)
    return host.ofport(FABRIC)
