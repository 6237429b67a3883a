"""The OpenStack lab: OpenStack's own services (Keystone, Placement, Glance, Nova, Neutron with
ovsnat's ML2 driver, RabbitMQ, MariaDB) in a lab namespace beside the lab's hypervisors, each
with ovsnat's controller, ovsnat-neutron-agent and nova-compute (whose virt driver, in
virt/, is the lab's only part). Needs Neutron's virtualenv (scripts/install-neutron.sh);
the modules here import nothing from OpenStack themselves, but virt/, which runs inside
nova-compute."""
