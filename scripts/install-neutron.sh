#!/usr/bin/env bash
# The OpenStack half of ovsnat's install path (scripts/install.sh calls it): what the OpenStack
# lab and its tests need beside ovsnat's own virtualenv.
#
#   - Debian's rabbitmq-server and mariadb-server (OVSNAT_MARIADB=0 skips MariaDB: the suite's
#     MariaDB run, tests/test_openstack_demo.py, then fails saying so), installed WITHOUT
#     starting anything: Debian's postinst would start a broker and epmd listening on every
#     address of the root namespace. The lab starts its own broker (and a private MariaDB
#     with no network listener) inside a lab namespace.
#   - Neutron's own virtualenv ($VENV_NEUTRON, default .venv-neutron): neutron 29.0.0 needs
#     eventlet 0.41, ryu 4.34 (ovsnat's controller) needs 0.33.3, so they cannot share one.
#     ovsnat goes in editable as ovsnat[neutron], so Neutron finds ovsnat's entry points (the
#     ML2 mechanism driver `ovsnat`) and the venv has `ovsnat-neutron-agent`.
#   - The lab's other OpenStack services in the same virtualenv (extra `lab`: Keystone,
#     Placement, Glance, Nova, the `openstack` CLI; pins at the end of constraints-neutron.txt).
#     Lab-only: ovsnat's driver and agent need none of them (devstack installs `[neutron]`).
# Idempotent and stamp-based like install.sh: with nothing changed it only checks.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV_NEUTRON:-$here/.venv-neutron}
python=${PYTHON:-python3}

say() { printf 'install-neutron: %s\n' "$*"; }

# apt-get install without starting services: policy-rc.d exit 101 = "action forbidden" for
# invoke-rc.d, which every Debian postinst uses. An existing policy-rc.d (containers often
# have one) is left as it is.
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# ovsnat install: start no service during apt-get install\nexit 101\n' >"$policy"
        chmod 755 "$policy"; ours=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?; }
    [ "$ours" = 1 ] && rm -f "$policy"
    if [ "$rc" != 0 ]; then
        apt-get update -qq
        apt_install_no_start "$@"
    fi
}

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "installing rabbitmq-server (not started: the lab runs its own broker in a namespace)"
    apt_install_no_start rabbitmq-server
fi
if [ "${OVSNAT_MARIADB:-1}" = 1 ] && ! command -v mariadbd >/dev/null 2>&1; then
    say "installing mariadb-server (not started: the lab runs its own server in a namespace)"
    apt_install_no_start mariadb-server
fi

stamp=$venv/.ovsnat-install-stamp
want=$(cat "$here/setup.cfg" "$here/constraints-neutron.txt" "$here/pyproject.toml" \
    "$0" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "up to date ($venv)"
    exit 0
fi

t0=$(date +%s)
[ -x "$venv/bin/python" ] || { say "creating virtualenv $venv"; "$python" -m venv "$venv"; }
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$here/constraints-neutron.txt" -e "${here}[neutron,lab]"
# Neutron must find ovsnat's mechanism driver and router plugin by their entry points, as it
# will in production.
"$venv/bin/python" - <<'EOF'
from importlib.metadata import entry_points
names = [e.name for e in entry_points(group="neutron.ml2.mechanism_drivers")]
assert "ovsnat" in names and "openvswitch" in names, names
plugins = [e.name for e in entry_points(group="neutron.service_plugins")]
assert "ovsnat-router" in plugins and "router" in plugins, plugins
EOF
# The lab's services start from these (ovsnat/lab/openstack/stack.py): fail here, not in a test.
for cmd in keystone-manage placement-manage glance-manage nova-manage nova-conductor \
        nova-scheduler nova-compute openstack uwsgi; do
    [ -x "$venv/bin/$cmd" ] || { say "$cmd missing from $venv" >&2; exit 1; }
done
echo "$want" >"$stamp"
say "done: $venv ($(( $(date +%s) - t0 )) s)"
