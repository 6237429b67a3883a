"""ovsnat as a Neutron backend: the ML2 mechanism driver `ovsnat` and `ovsnat-neutron-agent`.

Imported only inside Neutron's virtualenv (scripts/install-neutron.sh)."""
