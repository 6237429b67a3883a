"""The host controller's decisions, pure: each call takes an event with `now` and returns
bytes for the switch and effects (ovsnat.core.effects) for the runtime to carry out. Nothing
here opens a socket, starts a thread, reads the clock or imports the framework, OVSDB or
subprocess (an import-linter contract and tests/test_architecture.py hold it)."""
