"""Benchmark: map lookup/update through pyebpf's MapOps against the bare-syscall floors.

Run: python -m pytest benchmarks/bench_syscall.py --benchmark-only
or   python benchmarks/bench_syscall.py      (one table: C floor, Python floor, MapOps, ratios)

Floors:
- Python: ``libc.syscall(NR_bpf, BPF_MAP_LOOKUP_ELEM, attr, 32)`` untyped, with a
  preallocated attr (the cheapest possible call from Python).
- C: a tiny program compiled with gcc at benchmark time, 1M lookups/updates via syscall(2).
Target (issue 3): MapOps lookup/update at most 1.3x the Python floor.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import timeit

import pytest

from pyebpf.sys import bpf as B
from pyebpf.sys.attrs import MapElemAttr
from pyebpf.sys.syscall import NR_BPF, raw_syscall
from pyebpf.uapi import MapType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

KEY = struct.pack("<I", 5)
VALUE = struct.pack("<Q", 0x1234)

C_SOURCE = r"""
#include <linux/bpf.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *a, unsigned sz) { return syscall(__NR_bpf, cmd, a, sz); }

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000000;
    int types[2] = {BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH};
    const char *names[2] = {"array", "hash"};
    for (int t = 0; t < 2; t++) {
        union bpf_attr c; memset(&c, 0, sizeof(c));
        c.map_type = types[t]; c.key_size = 4; c.value_size = 8; c.max_entries = 1024;
        int fd = sys_bpf(BPF_MAP_CREATE, &c, sizeof(c));
        if (fd < 0) { perror("map_create"); return 1; }
        uint32_t key = 5; uint64_t val = 0x1234;
        union bpf_attr a; memset(&a, 0, sizeof(a));
        a.map_fd = fd; a.key = (uint64_t)&key; a.value = (uint64_t)&val; a.flags = 0;
        if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a, 32)) { perror("update"); return 1; }
        for (int w = 0; w < 10000; w++) sys_bpf(BPF_MAP_LOOKUP_ELEM, &a, 32);
        double best_l = 1e18, best_u = 1e18;
        for (int r = 0; r < 3; r++) {
            double t0 = now();
            for (int i = 0; i < n; i++) sys_bpf(BPF_MAP_LOOKUP_ELEM, &a, 32);
            double t1 = now();
            for (int i = 0; i < n; i++) sys_bpf(BPF_MAP_UPDATE_ELEM, &a, 32);
            double t2 = now();
            if ((t1 - t0) / n < best_l) best_l = (t1 - t0) / n;
            if ((t2 - t1) / n < best_u) best_u = (t2 - t1) / n;
        }
        printf("%s lookup %.1f update %.1f\n", names[t], best_l, best_u);
        close(fd);
    }
    return 0;
}
"""


def c_floor(n: int = 1_000_000) -> dict[str, tuple[float, float]] | None:
    """ns per (lookup, update) from the C program, per map kind; None without gcc."""
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    with tempfile.TemporaryDirectory(prefix="pyebpf_bench_") as d:
        src, exe = os.path.join(d, "floor.c"), os.path.join(d, "floor")
        with open(src, "w") as f:
            f.write(C_SOURCE.replace("#include <unistd.h>", "#include <unistd.h>\n#include <stdlib.h>"))
        subprocess.run([gcc, "-O2", "-o", exe, src], check=True, capture_output=True)
        out = subprocess.run([exe, str(n)], check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        kind, _, lk, _, up = line.split()
        res[kind] = (float(lk), float(up))
    return res


class Setup:
    """One map with KEY present, its MapOps, and a bare preallocated lookup attr."""

    def __init__(self, map_type: int):
        self.fd = B.map_create(map_type, 4, 8, 1024, name="bench_sys")
        self.ops = B.MapOps(self.fd, 4, 8)
        self.ops.update(KEY, VALUE)
        self._k = ctypes.create_string_buffer(KEY, 4)
        self._v = ctypes.create_string_buffer(8)
        self.attr = MapElemAttr(map_fd=int(self.fd), key=ctypes.addressof(self._k), value=ctypes.addressof(self._v))
        self.attr_p = ctypes.c_void_p(ctypes.addressof(self.attr))
        self.uattr = MapElemAttr(map_fd=int(self.fd), key=ctypes.addressof(self._k), value=ctypes.addressof(self._v))
        self.uattr_p = ctypes.c_void_p(ctypes.addressof(self.uattr))
        raw_syscall(NR_BPF, 1, self.attr_p, 32)  # fill the value buffer so updates write VALUE

    def close(self) -> None:
        self.fd.close()


@pytest.fixture(params=[MapType.ARRAY, MapType.HASH], ids=["array", "hash"])
def setup(request):
    s = Setup(request.param)
    yield s
    s.close()


def test_floor_bare_syscall_lookup(benchmark, setup):
    benchmark(raw_syscall, NR_BPF, 1, setup.attr_p, 32)


def test_floor_bare_syscall_update(benchmark, setup):
    benchmark(raw_syscall, NR_BPF, 2, setup.uattr_p, 32)


def test_mapops_lookup(benchmark, setup):
    assert benchmark(setup.ops.lookup, KEY) == VALUE


def test_mapops_update(benchmark, setup):
    benchmark(setup.ops.update, KEY, VALUE)


def measure(n: int = 200_000, repeat: int = 7) -> dict[str, dict[str, float]]:
    """Interleaved best-of timings in ns/op (interleaving keeps a busy neighbour fair to both)."""
    out: dict[str, dict[str, float]] = {}
    for mt, name in ((MapType.ARRAY, "array"), (MapType.HASH, "hash")):
        s = Setup(mt)
        try:
            ap, up, lookup, update = s.attr_p, s.uattr_p, s.ops.lookup, s.ops.update
            best = {"floor": 1e18, "floor_update": 1e18, "lookup": 1e18, "update": 1e18}
            for _ in range(repeat):
                for label, stmt in (("floor", lambda ap=ap: raw_syscall(NR_BPF, 1, ap, 32)),
                                    ("floor_update", lambda up=up: raw_syscall(NR_BPF, 2, up, 32)),
                                    ("lookup", lambda f=lookup: f(KEY)),
                                    ("update", lambda f=update: f(KEY, VALUE))):
                    t = timeit.timeit(stmt, number=n) / n * 1e9
                    best[label] = min(best[label], t)
            # the lambda costs the same in all three; subtract it so ratios compare the calls
            empty = min(timeit.repeat(lambda: None, number=n, repeat=repeat)) / n * 1e9
            out[name] = {k: v - empty for k, v in best.items()}
        finally:
            s.close()
    return out


def test_ratio_against_floor():
    """Report the ratio; assert a loose bound (the machine is shared, so no hard 1.3x gate here)."""
    m = measure(n=50_000, repeat=5)
    for name, r in m.items():
        ratio = r["lookup"] / r["floor"]
        print(f"{name}: floor {r['floor']:.0f} ns, lookup {r['lookup']:.0f} ns ({ratio:.2f}x), "
              f"update floor {r['floor_update']:.0f} ns, update {r['update']:.0f} ns "
              f"({r['update'] / r['floor_update']:.2f}x)")
        assert ratio < 2.0


def test_c_floor_runs():
    res = c_floor(100_000)
    if res is None:
        pytest.skip("no gcc")
    assert set(res) == {"array", "hash"} and all(v[0] > 0 for v in res.values())


def main() -> None:
    c = c_floor()
    m = measure()
    print(f"{'map':6} {'op':7} {'C floor':>9} {'Py floor':>9} {'MapOps':>9} {'vs Py':>7} {'vs C':>7}")
    for name, r in m.items():
        for op in ("lookup", "update"):
            cf = c[name][0 if op == "lookup" else 1] if c else float("nan")
            pf = r["floor" if op == "lookup" else "floor_update"]
            print(f"{name:6} {op:7} {cf:8.0f}n {pf:8.0f}n {r[op]:8.0f}n "
                  f"{r[op] / pf:6.2f}x {r[op] / cf:6.2f}x")
    print("(Py floor = untyped libc.syscall of the same command with a preallocated attr)")


if __name__ == "__main__":
    sys.exit(main())
