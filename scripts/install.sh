#!/usr/bin/env bash
# The one install path for ovsnat: README, `make test`, `make lab`, benchmarks and CI all use it.
#
# On a fresh Debian 12 (root, Python 3.11, no Open vSwitch) it installs the Debian packages the lab
# needs, creates a virtualenv and installs ovsnat with its pinned framework (ryu 4.34) and tools.
# Idempotent: when nothing changed since the last run it only checks and returns in seconds.
#
#   VENV=/path/to/venv  (default: .venv in the checkout)
#   PYTHON=python3.11   (default: python3)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
python=${PYTHON:-python3}
apt_packages=(openvswitch-switch openvswitch-common iproute2 ethtool iputils-ping tcpdump procps psmisc shellcheck iperf3 traceroute udhcpc frr)
needed_cmds=(ovs-vswitchd ovsdb-server ovs-vsctl ovs-ofctl ip ethtool ping tcpdump shellcheck iperf3 traceroute udhcpc vtysh)

say() { printf 'install: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (the lab creates network namespaces and runs Open vSwitch)" >&2
    exit 1
fi

missing=()
for c in "${needed_cmds[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

# cloud-init's own metadata reader, which the metadata tests run inside guests: Debian's
# package unpacked under .cache, never installed (installed, it would configure this
# machine at its next boot).
cloud_init=$here/.cache/cloud-init
if [ ! -f "$cloud_init/cloudinit/__init__.py" ]; then
    say "unpacking Debian's cloud-init into $cloud_init"
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq cloud-init 2>/dev/null \
        || { apt-get update -qq && apt-get download -qq cloud-init; }; } \
        && dpkg -x cloud-init_*.deb unpacked)
    mkdir -p "$cloud_init"
    cp -r "$tmp/unpacked/usr/lib/python3/dist-packages/cloudinit" "$cloud_init/"
    rm -rf "$tmp"
fi

# Re-run pip only when the dependency declarations changed (or the venv is new).
stamp=$venv/.ovsnat-install-stamp
want=$(cat "$here/setup.cfg" "$here/constraints.txt" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)
# The OpenStack lab's parts (RabbitMQ, Neutron's own virtualenv): a script of their own, with
# its own stamp, so either half can change without reinstalling the other.
bash "$here/scripts/install-neutron.sh"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "up to date ($venv)"
    exit 0
fi

[ -x "$venv/bin/python" ] || { say "creating virtualenv $venv"; "$python" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# ryu 4.34 only builds with an old setuptools and without build isolation.
"${pip[@]}" 'setuptools<68' wheel pbr
"${pip[@]}" --no-build-isolation -c "$here/constraints.txt" -e "${here}[ryu,osken,test]"
# ryu-manager imports eventlet.wsgi.ALREADY_HANDLED, which current eventlet lacks: install
# ovsnat's import shim (a .pth file in this venv) instead of patching ryu. See ovsnat/ryu_compat.py.
"$venv/bin/python" -m ovsnat.ryu_compat --install
"$venv/bin/ryu-manager" --version >/dev/null 2>&1 || { say "ryu-manager does not start" >&2; exit 1; }
echo "$want" >"$stamp"
say "done: $venv"
