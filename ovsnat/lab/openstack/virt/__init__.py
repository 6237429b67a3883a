"""The lab's Nova virt driver (driver.py), its guests (guest.py) and the nova-compute that
loads it (compute.py). Imported only inside Neutron's virtualenv, where Nova is."""
