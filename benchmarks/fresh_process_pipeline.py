"""A whole fresh process: import pyebpf, parse and CO-RE-relocate opensnoop.

Target (issue 2): at most 90 ms wall with a warm kernel-BTF cache. The
interpreter alone takes ~10-20 ms here and that is included.

Usage: python benchmarks/fresh_process_pipeline.py [--python PY] [-n 21]

Use a venv with pyebpf installed non-editable (an editable install adds an
import hook that costs several ms). PYTHONDONTWRITEBYTECODE=1, set on this
machine, makes every import compile from source; the script reports runs with
it as inherited and with a bytecode cache (PYTHONPYCACHEPREFIX) allowed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPENSNOOP = Path(__file__).resolve().parent.parent / "fixtures" / "opensnoop.bpf.o"

CHILD = (
    "import pyebpf\n"
    f"spec = pyebpf.ObjectSpec.from_file({str(OPENSNOOP)!r})\n"
    "spec.relocate()\n"
    "assert len(spec.programs) == 2\n"
)


def wall(python: str, code: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    # cwd "/": run from the checkout, "-c" would import ./pyebpf, not the installed package
    subprocess.run([python, "-c", code], env=env, check=True, cwd="/")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("-n", type=int, default=21)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="pyebpf-btfcache-")
    pyc = tempfile.mkdtemp(prefix="pyebpf-pyc-")
    inherited = dict(os.environ, PYEBPF_CACHE_DIR=cache)
    bytecode = dict(inherited, PYTHONPYCACHEPREFIX=pyc)
    bytecode.pop("PYTHONDONTWRITEBYTECODE", None)

    for env in (inherited, bytecode):  # warm the BTF cache (and the pyc cache)
        wall(args.python, CHILD, env)
    print(f"python: {args.python}, {args.n} runs each, medians")
    for label, env in (("env as inherited", inherited), ("bytecode cached", bytecode)):
        base = statistics.median(wall(args.python, "pass", env) for _ in range(args.n))
        full = statistics.median(wall(args.python, CHILD, env) for _ in range(args.n))
        print(f"{label:<18} python -c pass {base * 1e3:6.1f} ms   "
              f"import+parse+relocate opensnoop {full * 1e3:6.1f} ms wall "
              f"(+{(full - base) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
