"""Names shared by the server side (mechanism driver) and the host side (agent).

Pure, no Neutron import: changing one of these is a wire-protocol change between
neutron-server and every host's ovsnat-neutron-agent.
"""

AGENT_TYPE = "ovsnat agent"  # agents table `agent_type`; the driver binds for it
AGENT_BINARY = "ovsnat-neutron-agent"

# RPC: the agent calls the driver's endpoint on SERVER_TOPIC (served by neutron-rpc-server);
# the driver casts to every agent on AGENT_TOPIC (fanout: a port may be plugged on two hosts
# during a live migration, and each agent ignores ports it does not have).
SERVER_TOPIC = "ovsnat-plugin"
AGENT_TOPIC = "ovsnat-agent"
RPC_VERSION = "1.0"  # the casts to agents
# The driver's endpoint: 1.0 get_port_keys, get_snat_address; 1.1 get_ports (the keys and
# whether Neutron already has the port up on the asking host); 1.2 get_ports' answers also
# carry the status of the asking host's binding. Agents still call get_ports at 1.1: a 1.1
# server's answers lack "binding", and the agent then reports up as before 1.2 (installed).
SERVER_RPC_VERSION = "1.2"

# The port Neutron allocates on the external network for each host's SNAT (PAT) address,
# like DVR's per-host "network:floatingip_agent_gateway" port; device_id is the host name.
DEVICE_OWNER_SNAT = "network:ovsnat_snat"

# The agent's `configurations` in its heartbeat (read by the driver when it binds).
CONF_BRIDGE = "bridge_name"
CONF_PHYSNETS = "physical_networks"
CONF_DATAPATH = "datapath_type"
