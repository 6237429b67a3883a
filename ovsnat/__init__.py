"""ovsnat: scale-out NAT for Open vSwitch hypervisors.

Kept empty on purpose: the ryu import shim (ryu_compat) is imported from a .pth file at
interpreter start-up, so importing this package must cost nothing.
"""
