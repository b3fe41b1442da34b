#!/usr/bin/env bash
# Installs pyebpf and runs the main job: opensnoop, a real CO-RE tracing tool,
# for a few seconds (run as root). Extra arguments go to opensnoop.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check .
# tracepoints are looked up in tracefs, which a fresh machine may not have mounted
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
# something to see: a few opens while the trace runs
(sleep 1.5; cat /etc/hostname /nonexistent-file >/dev/null 2>&1 || true) &
cd /  # run the installed package, not the checkout
exec python3 -m pyebpf.tools.opensnoop --duration 4 "$@"
