"""nova-compute with the lab's virt driver: `python -m ovsnat.lab.openstack.virt.compute
--config-file nova.conf --config-file nova-compute-HOST.conf`.

This is Nova's own nova-compute (nova.cmd.compute.main, the console script's target) with
one thing added before it runs: Nova loads a virt driver only from its own package
(nova.virt.driver.load_compute_driver imports 'nova.virt.' + compute_driver), so the lab's
driver module is registered as `nova.virt.ovsnat_lab` and nova.conf says
`compute_driver = ovsnat_lab.LabDriver`. Nova's files are left as installed.
"""

from __future__ import annotations

import sys


def main() -> int:
    # First: nova.cmd.compute's own first line applies Nova's concurrency mode (native
    # threads for nova-compute in Nova 34) before anything else is imported.
    from nova.cmd import compute as nova_compute

    from ovsnat.lab.openstack.virt import driver

    sys.modules["nova.virt.ovsnat_lab"] = driver
    sys.argv[0] = "nova-compute"
    return nova_compute.main()


if __name__ == "__main__":
    sys.exit(main())
