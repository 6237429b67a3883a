"""The reference lab: real Open vSwitch hypervisors, VMs and an outside network, all in network
namespaces. Shared by the tests, `make lab`, `ovsnat lab ...` and the benchmarks."""

from ovsnat.lab.topology import Host, Lab, LabError, Vm  # noqa: F401
