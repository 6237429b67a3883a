"""Where ovsnat meets the world: the OpenFlow framework (framework, the only module that
imports ryu or os-ken), oslo.config, ovs-vswitchd's control socket (dpctl, calls), the
metrics server, the loop meter, the status file, memory given back. ovsnat.app, the shim
ryu-manager loads, dispatches the core's effects to these."""
