#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (apt packages; pyebpf editable,
# with its test dependencies, into the checkout's virtual environment .venv), then runs
# it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

# bpftool (libbpf 1.1) is the reference loader the tag tests compare against; a few
# tests build small libbpf drivers with gcc and libbpf-dev; the network tests use
# iproute2 (ip, tc). BPF objects and target binaries are committed: no clang is needed.
pkgs=()
command -v bpftool >/dev/null 2>&1 || pkgs+=(bpftool)
command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
[ -f /usr/include/bpf/libbpf.h ] || pkgs+=(libbpf-dev)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || pkgs+=(iproute2)
apt_install "${pkgs[@]}"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'

# bpffs and tracefs may be unmounted on a fresh machine.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

# no path given: pytest runs pyproject's testpaths (tests/); given paths run alone
exec "$PY" -m pytest -p no:cacheprovider "$@"
