"""The host's SNAT address, the agent's one request that is not about a port: an address
Neutron allocates for this host on the external network (get_snat_address), asked for at
start, after an outage and, while Neutron has none, again with a backoff (an exhausted pool
must not make every host ask every quarter second); written on the bridge as `ovsnat-snat-ip`
for the controller. A mixin of agent.OvsnatAgent, whose pass calls `_snat` and whose state
(`snat_ip`, `snat_next`, `snat_backoff`, `snat_wanted` under `lock`) it keeps."""

from __future__ import annotations

import time

from oslo_log import log

from ovsnat.neutron import routers as rt
from ovsnat.neutron.keys import SNAT_IP, KeyDiff

LOG = log.getLogger(__name__)

SNAT_BACKOFF = (2.0, 60.0)  # s: asking again for a SNAT address while Neutron has none


class SnatAddress:
    """OvsnatAgent's SNAT address (module doc)."""

    # (network id, `ovsnat-ext-<id>` value, physnet) of the network it is on: the
    # controller's untagged external network (its options'), whatever Neutron's type for it;
    # ovsnat.neutron.agent_routers always writes its key, and serves other external
    # networks only on its physnet (the uplink's wire).
    own_external: tuple[str, str, str | None] | None = None

    def _snat(self, snap) -> bool:
        """The host's SNAT address: a port Neutron allocates on the external network."""
        with self.lock:
            wanted, self.snat_wanted = self.snat_wanted, False
        if self._held("get_snat_address"):
            with self.lock:
                self.snat_wanted |= wanted
            return False
        if wanted or (self.snat_ip is None and time.monotonic() >= self.snat_next):
            try:
                answer = self.ovsnat_rpc.get_snat_address(
                    self.context, self.host, self.conf.ovsnat.external_network
                )
            except Exception as e:
                self._failed("get_snat_address", e)
                with self.lock:
                    self.snat_wanted = True
                return False
            self._answered("get_snat_address")
            if answer is None:
                LOG.warning(
                    "no SNAT address: Neutron has no usable external network; "
                    "asking again in %.0f s",
                    self.snat_backoff,
                )
                self.snat_next = time.monotonic() + self.snat_backoff
                self.snat_backoff = min(SNAT_BACKOFF[1], self.snat_backoff * 2)
            else:
                self.snat_ip, self.snat_backoff = answer["ip"], SNAT_BACKOFF[0]
                self.own_external = rt.own_external(answer)
        if self.snat_ip and snap.bridge_ids.get(SNAT_IP) != self.snat_ip:
            try:
                self.ovsdb.write_keys("Bridge", self.bridge, KeyDiff({SNAT_IP: self.snat_ip}, ()))
                LOG.info("bridge %s: %s=%s", self.bridge, SNAT_IP, self.snat_ip)
            except Exception as e:
                LOG.warning("bridge SNAT address write failed (%s); retrying", e)
                self.fast_retry = True
                return False
        return True
