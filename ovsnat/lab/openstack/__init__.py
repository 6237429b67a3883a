"""The OpenStack lab: a real Neutron (with ovsnat's ML2 driver) and RabbitMQ in a lab
namespace beside the lab's hypervisors, each host with its ovsnat-neutron-agent, and VMs
plugged with os-vif as nova-compute plugs them. Needs Neutron's virtualenv
(scripts/install-neutron.sh); the modules here import nothing from Neutron themselves."""

from ovsnat.lab.openstack.services import OpenStack  # noqa: F401
