"""The agent half of ovsnat's RPC: calls to the driver's endpoint, and the endpoint that
receives pushes (Neutron's own q-agent-notifier-* casts and the driver's ovsnat-agent casts).

Pushes carry only ids. The endpoint marks them dirty and wakes the agent's loop, which
fetches the current keys: a cast that arrives late or twice cannot install a stale value.
"""

from __future__ import annotations

from collections.abc import Callable

import oslo_messaging
from neutron.agent import rpc as agent_rpc
from neutron_lib import rpc as n_rpc
from neutron_lib.agent import topics

from ovsnat.neutron import constants as c

CALL_TIMEOUT = 10  # s: a dead rpc-server must not stall the loop for the default 60 s
# Calls fail at once rather than wait for their timeout when nobody could hear them: with the
# broker down (retry=0: no reconnect loop inside the call; the agent's own loop retries) or
# with no server consuming the topic yet (mandatory publish: RabbitMQ returns the message,
# oslo.messaging raises MessageUndeliverable). After a broker restart the servers' queues
# come back a moment after the broker does; the agent's next try then gets through.
AT_LEAST_ONCE = oslo_messaging.TransportOptions(at_least_once=True)
UNREACHABLE = (
    oslo_messaging.MessagingTimeout,
    oslo_messaging.MessageDeliveryFailure,
    oslo_messaging.MessageUndeliverable,
)


class NamespacedApi:
    """A client of one of the driver's endpoints in its own RPC namespace on ovsnat's server
    topic (security groups', routers'), whose calls fail fast as OvsnatPluginApi's do."""

    def __init__(self, namespace: str, version: str) -> None:
        target = oslo_messaging.Target(topic=c.SERVER_TOPIC, namespace=namespace, version=version)
        self.client = n_rpc.get_client(target)

    def _call(self, context, method: str, timeout: float, **kwargs):
        cctxt = self.client.prepare(timeout=timeout, retry=0, transport_options=AT_LEAST_ONCE)
        return cctxt.call(context, method, **kwargs)


class OvsnatPluginApi:
    """Client of ovsnat.neutron.server_rpc.OvsnatServerRpc (topic ovsnat-plugin)."""

    def __init__(self) -> None:
        target = oslo_messaging.Target(topic=c.SERVER_TOPIC, version=c.RPC_VERSION)
        self.client = n_rpc.get_client(target)

    def _prepare(self, version: str = c.RPC_VERSION, timeout: float = CALL_TIMEOUT):
        return self.client.prepare(
            timeout=timeout, retry=0, version=version, transport_options=AT_LEAST_ONCE
        )

    def get_ports(
        self, context, host: str, port_ids: list[str], timeout: float = CALL_TIMEOUT
    ) -> dict:
        """port id -> {"keys": ..., "up": bool} or None (the port does not exist)."""
        return self._prepare("1.1", timeout).call(
            context, "get_ports", host=host, port_ids=port_ids
        )

    def get_up_ports(self, context, host: str) -> list[str]:
        """The ports Neutron has ACTIVE on this host."""
        return self._prepare("1.1").call(context, "get_up_ports", host=host)

    def get_snat_address(self, context, host: str, network: str) -> dict | None:
        return self._prepare().call(context, "get_snat_address", host=host, network=network)


class DeviceApi:
    """Neutron's update_device_list (topic q-plugin), made as its agents' PluginApi makes it
    (in steps of 20 devices), but failing fast while nobody can answer instead of retrying
    inside the call until the broker is back: the agent's loop must stay free to resync."""

    STEP = 20
    TIMEOUT = 30.0  # s per step: Neutron spends tens of ms on each device

    def __init__(self) -> None:
        self.client = n_rpc.get_client(oslo_messaging.Target(topic=topics.PLUGIN, version="1.0"))

    def update_device_list(
        self, context, up: list[str], down: list[str], agent_id: str, host: str
    ) -> dict:
        cctxt = self.client.prepare(
            version="1.9", timeout=self.TIMEOUT, retry=0, transport_options=AT_LEAST_ONCE
        )
        result: dict[str, list] = {
            "devices_up": [],
            "failed_devices_up": [],
            "devices_down": [],
            "failed_devices_down": [],
        }
        for i in range(0, max(len(up), len(down)), self.STEP):
            answer = cctxt.call(
                context,
                "update_device_list",
                devices_up=up[i : i + self.STEP],
                devices_down=down[i : i + self.STEP],
                agent_id=agent_id,
                host=host,
                refresh_tunnels=False,
            )
            for key, values in result.items():
                values.extend(answer.get(key, []))
        return result


class PushEndpoint:
    """Receives pushes; `ports` and `networks` are the agent's thread-safe markers."""

    # Neutron's AgentNotifierApi casts at versions up to 1.5 (binding (de)activate).
    target = oslo_messaging.Target(version="1.5")

    def __init__(
        self,
        ports: Callable[[list[str]], None],
        networks: Callable[[str], None],
        activated: Callable[[str, str], None],
    ) -> None:
        self._ports = ports
        self._networks = networks
        self._activated = activated

    # Neutron's L2-agent notifications (q-agent-notifier-*)
    def port_update(self, context, **kwargs) -> None:
        self._ports([kwargs["port"]["id"]])

    def port_delete(self, context, **kwargs) -> None:
        self._ports([kwargs["port_id"]])

    def binding_activate(self, context, **kwargs) -> None:
        """A live migration's destination binding became the active one (Neutron set the
        port DOWN): the destination must report the device up again."""
        self._activated(kwargs["port_id"], kwargs.get("host", ""))

    def binding_deactivate(self, context, **kwargs) -> None:
        self._ports([kwargs["port_id"]])

    def network_update(self, context, **kwargs) -> None:
        self._networks(kwargs["network"]["id"])

    def network_delete(self, context, **kwargs) -> None:
        self._networks(kwargs["network_id"])

    # ovsnat's driver (ovsnat-agent): FIPs, fixed IP changes, subnets, MTU
    def ports_changed(self, context, port_ids: list[str]) -> None:
        self._ports(list(port_ids))

    def network_changed(self, context, network_id: str) -> None:
        self._networks(network_id)


def start_consumers(endpoint: PushEndpoint, *more: object) -> object:
    """Listen where Neutron's L2 agents listen, plus ovsnat's own fanout topic (where `more`
    endpoints, in namespaces of their own, listen too: agent_sg)."""
    conn = agent_rpc.create_consumers(
        [endpoint],
        topics.AGENT,
        [
            [topics.PORT, topics.UPDATE],
            [topics.PORT, topics.DELETE],
            [topics.NETWORK, topics.UPDATE],
            [topics.NETWORK, topics.DELETE],
            [topics.PORT_BINDING, topics.ACTIVATE],
            [topics.PORT_BINDING, topics.DEACTIVATE],
        ],
        start_listening=False,
    )
    conn.create_consumer(c.AGENT_TOPIC, [endpoint, *more], fanout=True)
    conn.consume_in_threads()
    return conn
