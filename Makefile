# The README's commands. Each target installs what it needs first (scripts/install.sh is
# idempotent and takes well under a second when nothing changed).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install lab lab-openstack lab-down test unit golden clean bench test-openstack \
	test-openstack-mariadb test-nova test-devstack config-samples

install:
	bash scripts/install.sh

lab: install
	$(VENV)/bin/ovsnat lab demo

# The OpenStack lab (RabbitMQ, a real Neutron driving ovsnat, two hypervisors) and its
# narrated demo; LAB_ARGS=--db mariadb for Neutron's real migrations.
lab-openstack: install
	$(VENV)/bin/ovsnat lab demo --openstack $(LAB_ARGS)

lab-down:
	$(VENV)/bin/ovsnat lab down --all

# Everything but the run under devstack's own code, which needs a checkout CI cannot fetch
# (make test-devstack).
test: install
	$(PY) -m pytest -q -m "not devstack" $(PYTEST_ARGS)

# BENCH_ARGS: e.g. --quick, --only cold,restart, --sizes 1000,10000 (python -m bench --help)
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Only the OpenStack lab tests (real Neutron, RabbitMQ, os-vif; SQLite, and the demo on
# MariaDB), or all of them on MariaDB with Neutron's real migrations.
test-openstack: install
	$(PY) -m pytest -q -m openstack $(PYTEST_ARGS)

test-openstack-mariadb: install
	OVSNAT_OPENSTACK_DB=mariadb $(PY) -m pytest -q -m openstack $(PYTEST_ARGS)

# Only the tests driven by OpenStack's own services (Keystone, Placement, Glance, Nova with
# the lab's virt driver; ovsnat/lab/openstack/stack.py): the place for their long runs.
test-nova: install
	$(PY) -m pytest -q -m nova $(PYTEST_ARGS)

# The devstack plugin run by devstack's own code (devstack/tools/with-devstack.sh), both
# samples: DEVSTACK_DIR is a checkout of openstack/devstack (outside this repository; e.g.
# git clone https://opendev.org/openstack/devstack). Needs root and PyPI; about a minute each.
test-devstack: install
	OVSNAT_DEVSTACK_DIR=$(DEVSTACK_DIR) $(PY) -m pytest -q -m devstack $(PYTEST_ARGS)

# ovsnat-neutron-agent's sample configuration, generated from its options as Neutron generates
# its own agents' (tests/test_agent_options.py fails when it is stale).
config-samples: install
	.venv-neutron/bin/oslo-config-generator \
		--config-file etc/oslo-config-generator/ovsnat_agent.ini

unit: install
	$(PY) -m pytest -q -m "not lab and not devstack" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-neutron .pytest_cache

golden: install
	$(PY) -m ovsnat.golden --write
