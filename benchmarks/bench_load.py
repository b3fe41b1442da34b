"""Benchmark: load fixtures/opensnoop.bpf.o into the kernel, against the C floor.

Measured in one run:

* in process, warm caches: ``pyebpf.load`` (open + CO-RE + BTF + maps + programs),
  and load + ``attach()``;
* fresh processes, end to end: ``python -c "pyebpf.load(...)"`` (interpreter start,
  imports, load, exit) and ``python -c "...load(...).attach()"``, against
  ``bpftool prog loadall`` of the same object (libbpf 1.1 in C; it also pins the
  programs, which the cleanup removes).

Run: python -m pytest benchmarks/bench_load.py --benchmark-only -s
(or ``python benchmarks/bench_load.py`` for a quick table without pytest-benchmark).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPENSNOOP = ROOT / "fixtures" / "opensnoop.bpf.o"
BPFTOOL = shutil.which("bpftool")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

# The child prints the wall-clock time at which it is loaded (or attached), and its peak RSS.
# (VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.)
_MARK = ("; import time; print(time.time(), [l.split()[1] for l in open('/proc/self/status') "
         "if l.startswith('VmHWM')][0], flush=True)")
_LOAD = "import pyebpf; o = pyebpf.load({path!r})" + _MARK
_ATTACH = "import pyebpf; o = pyebpf.load({path!r}); o.attach()" + _MARK
_PYC = os.path.join("/tmp", f"pyebpf_bench_pyc_{os.getuid()}")


def _load_close() -> None:
    import pyebpf

    pyebpf.load(OPENSNOOP).close()


def _fresh_run(code: str) -> tuple[float, float, int]:
    """(exec -> mark seconds, exec -> exit seconds, peak RSS KiB) of a fresh interpreter.

    Bytecode is cached under /tmp (this environment sets PYTHONDONTWRITEBYTECODE, an
    installed package would have its .pyc files), so imports are measured as in real use.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=_PYC)
    t_wall = time.time()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code.format(path=str(OPENSNOOP))], check=True,
                         cwd=ROOT, env=env, capture_output=True, text=True).stdout.split()
    total = time.perf_counter() - t
    if len(out) >= 2:
        return float(out[0]) - t_wall, total, int(out[1])
    return total, total, 0


def _fresh(code: str) -> float:
    return _fresh_run(code)[0]


def _bpftool_loadall() -> float:
    """Seconds for ``bpftool prog loadall`` (exec to exit); pins are removed afterwards."""
    assert BPFTOOL is not None
    d = Path("/sys/fs/bpf") / f"pyebpf_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    subprocess.run([BPFTOOL, "prog", "loadall", str(OPENSNOOP), str(d)], check=True,
                   capture_output=True)
    elapsed = time.perf_counter() - t
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    return elapsed


def _median_ms(fn, n: int) -> float:
    fn()  # warm: page cache, kernel BTF cache file
    return statistics.median(fn() for _ in range(n)) * 1e3


def test_bench_load_opensnoop_warm(benchmark) -> None:
    _load_close()
    benchmark(_load_close)


def test_bench_load_attach_opensnoop_warm(benchmark) -> None:
    import pyebpf

    objs: list = []

    def setup() -> None:
        while objs:  # detaching tracepoints costs the kernel ~70 ms: keep it out of the timing
            objs.pop().close()

    def load_attach() -> None:
        o = pyebpf.load(OPENSNOOP)
        o.attach()
        objs.append(o)

    benchmark.pedantic(load_attach, setup=setup, rounds=20)
    setup()


def _fresh_table(n: int = 7) -> dict[str, str]:
    rows: dict[str, str] = {}
    if BPFTOOL:
        rows["bpftool prog loadall (C, libbpf 1.1), exec->exit"] = \
            f"{_median_ms(_bpftool_loadall, n):8.1f} ms"
    for label, code in (("pyebpf.load", _LOAD), ("pyebpf.load + attach", _ATTACH)):
        _fresh_run(code)  # fills the bytecode cache
        runs = [_fresh_run(code) for _ in range(n)]
        mark = statistics.median(r[0] for r in runs) * 1e3
        total = statistics.median(r[1] for r in runs) * 1e3
        rss = max(r[2] for r in runs) / 1024
        rows[f"python: {label}, exec->done"] = f"{mark:8.1f} ms  (exec->exit {total:.1f} ms, " \
                                              f"peak RSS {rss:.1f} MiB)"
    rows["python -c pass, exec->exit"] = f"{_median_ms(lambda: _fresh_run('pass')[1], n):8.1f} ms"
    return rows


@pytest.mark.skipif(BPFTOOL is None, reason="needs bpftool")
def test_fresh_process_vs_bpftool() -> None:
    for k, v in _fresh_table().items():
        print(f"{k:52s} {v}")


def main() -> None:
    _load_close()
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        _load_close()
    print(f"{'pyebpf.load + close, warm, in process':52s} "
          f"{(time.perf_counter() - t0) / n * 1e3:8.1f} ms")
    for k, v in _fresh_table().items():
        print(f"{k:52s} {v}")


if __name__ == "__main__":
    main()
