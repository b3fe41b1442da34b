#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, then runs it.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# bpftool (libbpf 1.1) is the reference loader the tag tests compare against;
# tests/test_core_libbpf.py builds a small libbpf driver with gcc and libbpf-dev.
# BPF objects are committed fixtures: no clang is needed.
pkgs=()
command -v bpftool >/dev/null 2>&1 || pkgs+=(bpftool)
command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
[ -f /usr/include/bpf/libbpf.h ] || pkgs+=(libbpf-dev)
if [ "${#pkgs[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# bpffs and tracefs may be unmounted on a fresh machine.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

exec python3 -m pytest tests -p no:cacheprovider "$@"
