"""What this host's controller reserves, read from the controller's own configuration file
for ovsnat-neutron-agent's heartbeat: the mechanism driver refuses at binding a port whose
network overlaps it (ovsnat.validate.HostLimits).

The file is parsed with the controller's own code (ovsnat.options, HostConfig.parse: the
same `transit_cidr = auto` choice), so the report says what the controller will reserve when
it starts from that file. Re-read when it changes (its mtime and size), checked at every
heartbeat: a controller restarted with other options is reported within one
report_interval. A file that is missing or invalid is reported as nothing (one warning per
change): the driver then binds such ports and the controller refuses them, as before.
"""

from __future__ import annotations

import os

from oslo_log import log

LOG = log.getLogger(__name__)


class ControllerLimits:
    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: tuple | None = None          # (mtime_ns, size) of the file last read
        self.cached: dict | None = None

    def report(self) -> dict | None:
        """HostLimits.to_report() of the controller's file, or None."""
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError as e:
            return self._give_up(("missing", str(e)), f"cannot read it ({e.strerror})")
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.seen:
            return self.cached
        from ovsnat.model import HostConfig
        from ovsnat.options import read_ini
        try:
            values = read_ini(self.path)
            values["uplink_ofport"] = 0
            self.cached = HostConfig.parse(values).limits.to_report()
        except (OSError, ValueError) as e:
            return self._give_up(stamp, f"it is not a valid controller configuration ({e})")
        self.seen = stamp
        LOG.info("reporting what the controller reserves (%s): %s", self.path, self.cached)
        return self.cached

    def _give_up(self, stamp: tuple, why: str) -> None:
        if stamp != self.seen:
            LOG.warning("controller_config %s: %s; Neutron is told nothing about the "
                        "address ranges this host reserves", self.path, why)
            self.seen, self.cached = stamp, None
        return None
