"""Kernel BTF index cost in fresh interpreters, as a CLI tool pays it.

Usage: python benchmarks/fresh_process_btf.py [--python /tmp/venv-bench/bin/python] [-n 15]

Each sample is a new process. Reported per scenario (medians):
  wall      whole process, as seen by the parent (interpreter start-up included)
  +wall     wall minus the median wall of `python -c pass`
  import    `import pyebpf.btf.kernel`, timed inside the child
  open      KernelBTF.open(), timed inside the child
  20 finds  find() of 20 common names right after open (first lookup included)

Scenarios: cold (empty cache dir: walk + write cache), cold-nocache (cache=False),
cached-offsets (a cache written by a process that did no lookup), cached (a cache
holding the name table too, the steady state after one CO-RE load).
Use a venv without extra site packages; PYTHONDONTWRITEBYTECODE=1 (as set on this
machine) makes every import compile from source, which shows up in `import`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

NAMES = [
    "task_struct", "trace_event_raw_sys_enter", "sk_buff", "file", "inode", "mm_struct",
    "cred", "pt_regs", "bpf_map", "xdp_md", "sock", "net_device", "path", "dentry",
    "super_block", "pid_t", "u32", "vm_area_struct", "list_head", "bpf_prog",
]

CHILD = """
import sys, time, json
t0 = time.perf_counter()
from pyebpf.btf.kernel import KernelBTF
t1 = time.perf_counter()
btf = KernelBTF.open(cache={cache})
t2 = time.perf_counter()
n = {lookups} and sum(len(btf.find(x)) for x in {names!r})
t3 = time.perf_counter()
print(json.dumps(dict(imp=t1 - t0, open=t2 - t1, find=t3 - t2, n=n)))
"""


def run(python: str, code: str, env: dict[str, str]) -> tuple[float, dict]:
    t = time.perf_counter()
    # cwd "/": run from the checkout, "-c" would import ./pyebpf, not the installed package
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd="/").stdout
    wall = time.perf_counter() - t
    return wall, (json.loads(out) if out.strip() else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("-n", type=int, default=15, help="samples per scenario")
    args = ap.parse_args()
    base_env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="pyebpf-fresh-")

    walls = [run(args.python, "pass", base_env)[0] for _ in range(args.n)]
    baseline = statistics.median(walls)
    print(f"python: {args.python}")
    print(f"baseline `python -c pass`: {baseline * 1e3:.1f} ms (median of {args.n})")
    print(f"{'scenario':<16}{'wall':>9}{'+wall':>9}{'import':>9}{'open':>9}{'20 finds':>10}")

    def scenario(label: str, cache: bool, lookups: bool, prepare) -> None:
        rows = []
        for i in range(args.n):
            env = dict(base_env, PYEBPF_CACHE_DIR=prepare(i))
            code = CHILD.format(cache=cache, lookups=lookups, names=NAMES)
            rows.append(run(args.python, code, env))
        med = statistics.median
        wall = med(r[0] for r in rows)
        print(f"{label:<16}{wall * 1e3:9.1f}{(wall - baseline) * 1e3:9.1f}"
              f"{med(r[1]['imp'] for r in rows) * 1e3:9.1f}"
              f"{med(r[1]['open'] for r in rows) * 1e3:9.2f}"
              f"{med(r[1]['find'] for r in rows) * 1e3:10.2f}")

    def fresh_dir(i: int) -> str:
        return os.path.join(tmp, f"cold{i}")

    def warm(lookups: bool):
        d = os.path.join(tmp, f"warm-{lookups}")
        env = dict(base_env, PYEBPF_CACHE_DIR=d)
        run(args.python, CHILD.format(cache=True, lookups=lookups, names=NAMES), env)
        return lambda i: d

    scenario("cold", True, True, fresh_dir)
    scenario("cold-nocache", False, True, fresh_dir)
    scenario("cold-open-only", True, False, lambda i: fresh_dir(i + 10_000))
    scenario("cached-offsets", True, False, warm(False))
    scenario("cached", True, True, warm(True))
    scenario("cached-open", True, False, warm(True))


if __name__ == "__main__":
    main()
