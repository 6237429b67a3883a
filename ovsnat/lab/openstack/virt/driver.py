"""The lab's Nova virt driver: Nova's fake driver (nova/virt/fake.py, FakeLiveMigrateDriver,
what Nova's functional tests boot and live-migrate with) with the network done as the
libvirt driver does it, and guests in the lab's VM model (guest.py).

Loaded by nova-compute as `compute_driver = ovsnat_lab.LabDriver` (see compute.py). What is
the fake driver's: resources, instance bookkeeping, the live-migration checks and data
(LibvirtLiveMigrateData with shared storage). What follows nova/virt/libvirt/driver.py
(Nova 34.0.0) step by step:

- plug_vifs / unplug_vifs: LibvirtGenericVIFDriver.plug -> _plug_os_vif (vif.py): Nova's own
  os_vif_util turns each VIF into os-vif's object and os_vif.plug plugs it. For a port bound
  by ovsnat (vif_type ovs, no hybrid plug) that is VIFOpenVSwitch with create_port=True
  (Nova's `delegate_create`): os-vif creates the OVS port, whose device does not exist yet.
- spawn: _create_guest_with_network. The events to wait for are _get_neutron_events (a
  `network-vif-plugged` per VIF not yet active); inside virtapi.wait_for_instance_event the
  VIFs are plugged and the guest is created *paused* (its taps exist) when there are events;
  then the wait, with vif_plugging_timeout; on timeout with vif_plugging_is_fatal the guest
  is destroyed, the VIFs unplugged and VirtualInterfaceCreateException raised; on any other
  error the same cleanup; then the guest is resumed.
- node identity (get_available_resource, get_nodenames_by_uuid): Host.get_node_uuid.
- check_can_live_migrate_destination: the VIF skeletons flagged for os-vif delegation.
- pre_live_migration: _pre_live_migration_plug_vifs: plug with the destination's port
  bindings (migrate_data.vifs -> get_dest_vif()), before any tap exists there.
- live_migration: _live_migration: the guest moves (its taps to the destination, then
  QEMU's RARPs), then post_method; an error before the switch-over calls recover_method.
- post_live_migration_at_source: unplug_vifs with the source's VIFs.
- post_live_migration_at_destination: the guest is already there (the fake driver would
  spawn a second one): only bookkeeping.
- rollback_live_migration_at_destination: destroy -> cleanup -> unplug the destination's
  VIFs; the guest keeps running on the source.
- destroy: _destroy (the guest goes, if it runs on this host) then cleanup (unplug).
"""

from __future__ import annotations

import nova.conf
import nova.virt.node
import os_vif
from nova import exception
from nova.compute import power_state
from nova.network import model as network_model
from nova.network import neutron, os_vif_util
from nova.objects import migrate_data as migrate_data_obj
from nova.virt import fake
from os_vif import exception as osv_exception
from oslo_config import cfg
from oslo_log import log as logging

from ovsnat.lab.openstack.virt.guest import Guest, Nic

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

OPTS = [
    cfg.StrOpt("lab_id", help="the lab this nova-compute belongs to"),
    cfg.StrOpt("host_namespace", help="the hypervisor's network namespace (its OVS, taps)"),
    cfg.StrOpt(
        "guests_dir",
        help="where the guests' records are (shared by the lab's nova-computes and its teardown)",
    ),
]
CONF.register_opts(OPTS, group="ovsnat_lab")


class LabDriver(fake.FakeLiveMigrateDriver):
    """Module doc. One per nova-compute, i.e. per lab hypervisor (CONF.host)."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self.lab = CONF.ovsnat_lab

    def init_host(self, host):
        """The fake driver's nodes; then the guests of this host that outlived a restart
        of this nova-compute are tracked again (their processes did not: see guest.py)."""
        super().init_host(host)
        for guest in Guest.all(self.lab.guests_dir):
            if guest.host == CONF.host:
                self.instances[guest.uuid] = fake.FakeInstance(
                    guest.name, power_state.RUNNING, guest.uuid
                )

    # --- node identity: libvirt's Host.get_node_uuid ---------------------------------------
    def get_available_resource(self, nodename):
        """The fake driver's resources with the node's identity as libvirt keeps it (a
        `compute_id` file in state_path, made at the first start): the fake driver's
        constant uuid is never written down, and nova-compute then refuses to start again
        ("No local node identity found")."""
        data = super().get_available_resource(nodename)
        if data:
            data["uuid"] = nova.virt.node.get_local_node_uuid()
        return data

    def get_nodenames_by_uuid(self, refresh=False):
        return {nova.virt.node.get_local_node_uuid(): CONF.host}

    # --- VIFs: libvirt's LibvirtGenericVIFDriver.plug/_plug_os_vif ------------------------
    def plug_vifs(self, instance, network_info):
        for vif in network_info:
            self._plug_os_vif(instance, vif, os_vif.plug)

    def unplug_vifs(self, instance, network_info):
        for vif in network_info:
            self._plug_os_vif(instance, vif, os_vif.unplug)

    @staticmethod
    def _plug_os_vif(instance, vif, action):
        vif_obj = os_vif_util.nova_to_osvif_vif(vif)
        if vif_obj is None:
            raise exception.VirtualInterfacePlugException(
                f"vif_type {vif['type']} is not an os-vif type: the lab plugs only those"
            )
        instance_info = os_vif_util.nova_to_osvif_instance(instance)
        try:
            action(vif_obj, instance_info)
        except osv_exception.ExceptionBase as ex:
            raise exception.InternalError(
                f"Failure running os_vif plugin {action.__name__} method: {ex}"
            ) from ex

    # --- boot: libvirt's spawn / _create_guest_with_network -------------------------------
    @staticmethod
    def _get_neutron_events(network_info):
        return [
            ("network-vif-plugged", vif["id"])
            for vif in network_info
            if vif.get("active", True) is False
            and vif["vnic_type"] != network_model.VNIC_TYPE_REMOTE_MANAGED
        ]

    @staticmethod
    def _neutron_failed_callback(event_name, instance):
        LOG.error(
            "Neutron Reported failure on event %(event)s for instance %(uuid)s",
            {"event": event_name, "uuid": instance.uuid},
            instance=instance,
        )
        if CONF.vif_plugging_is_fatal:
            raise exception.VirtualInterfaceCreateException()

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
        accel_info=None,
    ):
        network_info = network_info or network_model.NetworkInfo([])
        timeout = CONF.vif_plugging_timeout
        events = self._get_neutron_events(network_info) if power_on and timeout else []
        pause = bool(events)
        guest = None
        try:
            with self.virtapi.wait_for_instance_event(
                instance, events, timeout=timeout, error_callback=self._neutron_failed_callback
            ):
                self.plug_vifs(instance, network_info)
                guest = self._create_guest(instance, network_info)
                LOG.info(
                    "Guest created paused=%s, waiting for %s", pause, events, instance=instance
                )
        except exception.InstanceEventTimeout:
            if CONF.vif_plugging_is_fatal:
                self._cleanup_failed_spawn(instance, network_info, guest)
                raise exception.VirtualInterfaceCreateException() from None
        except Exception:
            LOG.error("Failed to start lab guest", instance=instance)
            self._cleanup_failed_spawn(instance, network_info, guest)
            raise
        if power_on:
            guest.resume()
        super().spawn(
            context,
            instance,
            image_meta,
            injected_files,
            admin_password,
            allocations,
            network_info,
            block_device_info,
            power_on,
            accel_info,
        )

    def _cleanup_failed_spawn(self, instance, network_info, guest):
        if guest is not None:
            guest.destroy()
        try:
            self.unplug_vifs(instance, network_info)
        except Exception:
            LOG.exception("Unplugging after a failed spawn failed", instance=instance)

    def _create_guest(self, instance, network_info) -> Guest:
        nics = [
            Nic(
                tap=os_vif_util.nova_to_osvif_vif(vif).vif_name,
                dev=f"eth{i}",
                mac=vif["address"],
                mtu=int(vif["network"].get_meta("mtu") or 1500),
                port_id=vif["id"],
            )
            for i, vif in enumerate(network_info)
        ]
        return Guest.create(
            self.lab.guests_dir, self.lab.lab_id, instance.uuid, instance.name, CONF.host, nics
        )

    def _guest_here(self, instance) -> Guest | None:
        guest = Guest.load(self.lab.guests_dir, instance.uuid)
        return guest if guest is not None and guest.host == CONF.host else None

    # --- delete: libvirt's destroy -> _destroy + cleanup ---------------------------------
    def destroy(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        destroy_secrets=True,
    ):
        guest = self._guest_here(instance)
        if guest is not None:
            guest.destroy()
        if network_info:
            self._unplug_ignoring_errors(instance, network_info)
        super().destroy(
            context, instance, network_info, block_device_info, destroy_disks, destroy_secrets
        )

    def _unplug_ignoring_errors(self, instance, network_info):
        """libvirt's _cleanup unplugs with ignore_errors=True."""
        for vif in network_info:
            try:
                self._plug_os_vif(instance, vif, os_vif.unplug)
            except exception.NovaException:
                LOG.warning("Unplugging %s failed", vif["id"], instance=instance)

    # --- live migration ------------------------------------------------------------------
    def check_can_live_migrate_destination(
        self,
        context,
        instance,
        src_compute_info,
        dst_compute_info,
        block_migration=False,
        disk_over_commit=False,
    ):
        """The fake driver's data, and the VIFs as libvirt's gives them: with Neutron's
        multiple port bindings, a skeleton per VIF flagged `supports_os_vif_delegation`
        (it travels in the destination binding's profile, and get_dest_vif() turns it into
        `delegate_create`: os-vif creates the destination's OVS port in
        pre_live_migration, before any tap exists)."""
        data = super().check_can_live_migrate_destination(
            context, instance, src_compute_info, dst_compute_info, block_migration, disk_over_commit
        )
        if self._network_api.has_port_binding_extension(context):
            data.vifs = migrate_data_obj.VIFMigrateData.create_skeleton_migrate_vifs(
                instance.get_network_info()
            )
            for vif in data.vifs:
                vif.supports_os_vif_delegation = True
        return data

    @property
    def _network_api(self):
        if not hasattr(self, "_neutron_api"):
            self._neutron_api = neutron.API()
        return self._neutron_api

    def pre_live_migration(
        self, context, instance, block_device_info, network_info, disk_info, migrate_data
    ):
        """libvirt's _pre_live_migration_plug_vifs: the destination's bindings if Neutron
        gave them (multiple port bindings), else the instance's network_info."""
        if "vifs" in migrate_data and migrate_data.vifs:
            LOG.debug(
                "Plugging VIFs using destination host port bindings before live migration.",
                instance=instance,
            )
            nw_info = network_model.NetworkInfo(
                [migrate_vif.get_dest_vif() for migrate_vif in migrate_data.vifs]
            )
        else:
            nw_info = network_info
        self.plug_vifs(instance, nw_info)
        return migrate_data

    def live_migration(
        self,
        context,
        instance,
        dest,
        post_method,
        recover_method,
        block_migration=False,
        migrate_data=None,
    ):
        """The memory copy is instantaneous here; the switch-over is the tap's move."""
        self._abort_migration = False
        guest = self._guest_here(instance)
        try:
            if guest is None:
                raise exception.InstanceNotRunning(instance_id=instance.uuid)
            guest.move(dest)
        except Exception:
            LOG.exception(
                "Live migration to %s failed before the switch-over", dest, instance=instance
            )
            recover_method(context, instance, dest, migrate_data)
            return
        post_method(context, instance, dest, block_migration, migrate_data)

    def post_live_migration_at_source(self, context, instance, network_info):
        self.unplug_vifs(instance, network_info)

    def post_live_migration_at_destination(
        self, context, instance, network_info, block_migration=False, block_device_info=None
    ):
        self.instances[instance.uuid] = fake.FakeInstance(
            instance.name, power_state.RUNNING, instance.uuid
        )

    def rollback_live_migration_at_destination(
        self,
        context,
        instance,
        network_info,
        block_device_info,
        destroy_disks=True,
        migrate_data=None,
    ):
        self.destroy(context, instance, network_info, block_device_info, destroy_disks)
