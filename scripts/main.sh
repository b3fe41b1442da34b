#!/usr/bin/env bash
# Installs pyebpf into the checkout's virtual environment (.venv), then runs the main
# job: opensnoop, a real CO-RE tracing tool, for a few seconds (run as root). Extra
# arguments go to opensnoop.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
"$PY" -m pip install -q --disable-pip-version-check .
# tracepoints are looked up in tracefs, which a fresh machine may not have mounted
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
# something to see: a few opens while the trace runs
(sleep 1.5; cat /etc/hostname /nonexistent-file >/dev/null 2>&1 || true) &
cd /  # run the installed package, not the checkout
exec "$VENV/bin/opensnoop" --duration 4 "$@"
