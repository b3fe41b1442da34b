#!/usr/bin/env bash
# Installs pyebpf and runs the main job on a shipped CO-RE object.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check .
exec python3 -m pyebpf inspect fixtures/opensnoop.bpf.o
