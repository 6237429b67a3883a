"""Plug and unplug an instance's port with os-vif, as nova-compute does for vif_type `ovs`.

    python -m ovsnat.lab.openstack.vif serve --ovsdb unix:/path/db.sock
        a host's long-lived os-vif, as in nova-compute: os-vif initialized and its privsep
        daemon started once; one request per line on stdin,
        {"action": "plug"|"unplug", "vifs": [{VifSpec}, ...]}, one answer per line on
        stdout, {"done_at": time.time() when the last plug/unplug returned, "count": n} or
        {"error": "..."}; it exits at the end of its input
    python -m ovsnat.lab.openstack.vif plug   --ovsdb unix:/path/db.sock --vif '{json}'
    python -m ovsnat.lab.openstack.vif unplug --ovsdb unix:/path/db.sock --vif '{json}'
        one request, one process (--vif again for more ports)

Runs in Neutron's virtualenv (os-vif is there), inside the hypervisor's namespace (os-vif sets
the tap's MTU there). The VIF is built as nova.network.os_vif_util builds it for a bound port
with vif_type=ovs and ovs_hybrid_plug=False: VIFOpenVSwitch, vif_name "tap" + port id
(14 characters), VIFPortProfileOpenVSwitch(interface_id=port id, datapath_type from
vif_details), Network(id, bridge=vif_details.bridge_name, mtu), InstanceInfo(uuid, name).

What differs without libvirt and QEMU:
- libvirt creates the tap and, for an OVS VIF, adds it to the bridge itself
  (<virtualport type='openvswitch'>) with the same external_ids os-vif writes. Here the
  lab creates the tap first (a veth whose far end is the VM's eth0) and os-vif adds the OVS
  port: the profile's create_port=True, which Nova sets from the VIF's `delegate_create`
  (os-vif creating the port instead of libvirt). The row gets iface-id, iface-status,
  attached-mac and vm-uuid exactly as from libvirt or os-vif in production.
- privsep: os-vif's privileged calls (the tap's MTU) run in a privsep daemon. Nova starts it
  through sudo and rootwrap; here we are root already, so `helper_command` is the venv's
  privsep-helper without sudo. The daemon exits when this process does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class VifSpec:
    """What nova-compute knows about a bound port when it plugs it (network_info)."""

    port_id: str
    mac: str
    network_id: str
    bridge: str
    datapath_type: str
    mtu: int
    port_filter: bool
    instance_uuid: str
    instance_name: str

    @property
    def vif_name(self) -> str:
        return ("tap" + self.port_id)[:14]     # nova's NIC_NAME_LEN

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _configure(ovsdb: str) -> None:
    """As nova-compute's nova.conf would say it: [os_vif_ovs] and the privsep helper. In a
    config file, not set_override: os-vif's plugin reads its options when it is loaded."""
    import os
    import tempfile
    import os_vif
    from oslo_config import cfg
    helper = os.path.join(os.path.dirname(sys.executable), "privsep-helper")
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(f"[os_vif_ovs]\novsdb_connection = {ovsdb}\n"
                f"[vif_plug_ovs_privileged]\nhelper_command = {helper}\n")
    try:
        cfg.CONF(["--config-file", f.name], project="ovsnat-lab-vif")
        os_vif.initialize()
    finally:
        os.unlink(f.name)


def _objects(spec: VifSpec):
    from os_vif import objects
    objects.register_all()
    network = objects.network.Network(id=spec.network_id, bridge=spec.bridge, mtu=spec.mtu,
                                      subnets=objects.subnet.SubnetList(objects=[]))
    profile = objects.vif.VIFPortProfileOpenVSwitch(
        interface_id=spec.port_id, datapath_type=spec.datapath_type, create_port=True)
    vif = objects.vif.VIFOpenVSwitch(
        id=spec.port_id, address=spec.mac, network=network, plugin="ovs",
        port_profile=profile, vif_name=spec.vif_name, bridge_name=spec.bridge,
        has_traffic_filtering=spec.port_filter, preserve_on_delete=False, active=False)
    instance = objects.instance_info.InstanceInfo(uuid=spec.instance_uuid,
                                                  name=spec.instance_name)
    return vif, instance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsnat.lab.openstack.vif")
    parser.add_argument("action", choices=("plug", "unplug", "serve"))
    parser.add_argument("--ovsdb", required=True, help="e.g. unix:/run/.../db.sock")
    parser.add_argument("--vif", action="append", default=[],
                        help="VifSpec as JSON (repeat: several ports, one after the other, "
                             "as nova-compute plugs an instance's ports)")
    args = parser.parse_args(argv)
    _configure(args.ovsdb)
    if args.action != "serve":
        print(json.dumps(_act(args.action, [json.loads(v) for v in args.vif])), flush=True)
        return 0
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = _act(request["action"], request["vifs"])
        except Exception as e:      # the caller raises it; this os-vif keeps serving
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    return 0


def _act(action: str, specs: list[dict]) -> dict:
    """os_vif.plug or unplug for each VIF, in order."""
    import os_vif
    act = {"plug": os_vif.plug, "unplug": os_vif.unplug}[action]
    for fields in specs:
        vif, instance = _objects(VifSpec(**fields))
        act(vif, instance)
    return {"done_at": time.time(), "count": len(specs)}


if __name__ == "__main__":
    sys.exit(main())
