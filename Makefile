# The README's commands. Each target installs what it needs first (scripts/install.sh is
# idempotent and takes well under a second when nothing changed).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install lab lab-openstack lab-down test unit lint format golden clean bench \
	lab-bgp test-long test-openstack test-openstack-mariadb test-openstack-long test-devstack config-samples

install:
	bash scripts/install.sh

lab: install
	$(VENV)/bin/ovsnat lab demo

# The same lab on a routed fabric (docs/bgp.md): ToRs and an outside router running FRR.
lab-bgp: install
	$(VENV)/bin/ovsnat lab demo --bgp

# The OpenStack lab (Keystone, Placement, Glance, Nova, Neutron driving ovsnat, RabbitMQ,
# MariaDB, two hypervisors) and its narrated demo, driven with the `openstack` command.
lab-openstack: install
	$(VENV)/bin/ovsnat lab demo --openstack $(LAB_ARGS)

lab-down:
	$(VENV)/bin/ovsnat lab down --all

# Everything but the run under devstack's own code, which needs a checkout CI cannot fetch
# (make test-devstack), and the long runs (markers long and openstack_long: make test-long,
# or make test-openstack-long for the OpenStack lab's alone).
test: install
	$(PY) -m pytest -q -m "not devstack and not openstack_long and not long" $(PYTEST_ARGS)

test-long: install
	$(PY) -m pytest -q -m "long or openstack_long" $(PYTEST_ARGS)

# BENCH_ARGS: e.g. --quick, --only cold,restart, --sizes 1000,10000 (python -m bench --help)
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Only the OpenStack lab tests of `make test` (OpenStack's own services, the databases
# from the cache of migrated databases); the same with every database migrated from
# nothing by each service (no cache read or written); the long runs: 10 live migrations for
# the worst event latency, 100 servers on one host through an agent restart, and the
# security-group cases that restart Neutron's services (tests/secgroup_keys.py).
test-openstack: install
	$(PY) -m pytest -q -m "openstack and not openstack_long" $(PYTEST_ARGS)

test-openstack-mariadb: install
	OVSNAT_OPENSTACK_FRESH_DB=1 $(PY) -m pytest -q -m "openstack and not openstack_long" \
		$(PYTEST_ARGS)

test-openstack-long: install
	$(PY) -m pytest -q -m openstack_long $(PYTEST_ARGS)

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

# What tests/test_architecture.py checks (make test runs it too): lint, format, the layers.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .venv-neutron .pytest_cache

golden: install
	$(PY) -m ovsnat.cli.golden --write
