"""Desired state -> flows, pure: flows as values and cookies (flows), the declared tables
every flow is checked against (pipeline), the compiler and its per-feature flow builders,
and flow identity as Open vSwitch has it (flowident)."""
