# The README's commands. Each target installs what it needs first (scripts/install.sh is
# idempotent and takes well under a second when nothing changed).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install lab lab-openstack lab-down test unit golden clean bench test-openstack \
	test-openstack-mariadb test-openstack-long

install:
	bash scripts/install.sh

lab: install
	$(VENV)/bin/ovsnat lab demo

# The OpenStack lab (Keystone, Placement, Glance, Nova, Neutron driving ovsnat, RabbitMQ,
# MariaDB, two hypervisors) and its narrated demo, driven with the `openstack` command.
lab-openstack: install
	$(VENV)/bin/ovsnat lab demo --openstack $(LAB_ARGS)

lab-down:
	$(VENV)/bin/ovsnat lab down --all

# Everything but the long runs (marker openstack_long: make test-openstack-long).
test: install
	$(PY) -m pytest -q -m "not openstack_long" $(PYTEST_ARGS)

# BENCH_ARGS: e.g. --quick, --only cold,restart, --sizes 1000,10000 (python -m bench --help)
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Only the OpenStack lab tests of `make test` (OpenStack's own services, the databases
# from the cache of migrated databases); the same with every database migrated from
# nothing by each service (no cache read or written); the long runs: 10 live migrations for
# the worst event latency, 100 servers on one host through an agent restart.
test-openstack: install
	$(PY) -m pytest -q -m "openstack and not openstack_long" $(PYTEST_ARGS)

test-openstack-mariadb: install
	OVSNAT_OPENSTACK_FRESH_DB=1 $(PY) -m pytest -q -m "openstack and not openstack_long" \
		$(PYTEST_ARGS)

test-openstack-long: install
	$(PY) -m pytest -q -m openstack_long $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest -q -m "not lab" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-neutron .pytest_cache

golden: install
	$(PY) -m ovsnat.golden --write
