"""ovsnat-neutron-agent after an error answer from Neutron (a server-side fault: a bug, an
exhausted address pool for the SNAT port): that call is held back, 1 s doubling to 60 s, on
its own; silence (a timeout, the broker away) is an outage instead, probed every 0.25 s.
Pure parts of ovsnat/neutron/agent_health.py, run in Neutron's virtualenv (oslo.messaging's
exceptions, oslo.log)."""

from __future__ import annotations

from tests.devstack_harness import in_neutron_venv

CHECK = r"""
import threading, time
import oslo_messaging
from ovsnat.neutron.agent_health import SERVER_BACKOFF, Health, Holds

holds = Holds()
assert [holds.failed("get_snat_address", 100.0) for _ in range(8)] == \
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
assert holds.held("get_snat_address", 159.9) and not holds.held("get_snat_address", 160.1)
assert not holds.held("get_ports", 100.0) and holds.next_at() == 160.0     # each call alone
holds.ok("get_snat_address")
assert holds.next_at() is None and holds.failed("get_snat_address", 0.0) == SERVER_BACKOFF[0]

resyncs = []
health = Health(5.0, resyncs.append, threading.Event())
fault = oslo_messaging.RemoteError("IpAddressGenerationFailure",
                                   "No more IP addresses available on network x")
assert health.rpc_failed("get_snat_address", fault) is True                # held back
assert health.holds.held("get_snat_address", time.monotonic()) and health.neutron_ok
assert resyncs == []                                                       # no full resync
assert health.rpc_failed("get_ports", oslo_messaging.MessagingTimeout("x")) is False
assert not health.neutron_ok and resyncs == [False]                        # an outage
assert not health.holds.held("get_ports", time.monotonic())                # probed at once
print("ok")
"""


def test_an_error_answer_holds_that_call_back_and_silence_is_an_outage():
    in_neutron_venv(CHECK)
