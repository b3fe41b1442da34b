"""Benchmark: open fixtures/opensnoop.bpf.o and relocate it (CO-RE + linking + maps).

Target: <= 10 ms per ``ObjectSpec.from_file`` + ``relocate`` with the kernel BTF
index warm (it is built once per process and shared, as in real use).

Run: python -m pytest benchmarks/bench_object.py --benchmark-only
(or ``python benchmarks/bench_object.py`` for a quick timing without pytest-benchmark).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyebpf import ObjectSpec
from pyebpf.btf.kernel import kernel_btf

VMLINUX = "/sys/kernel/btf/vmlinux"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
OPENSNOOP = FIXTURES / "opensnoop.bpf.o"
TARGET_MS = 10.0

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX) or not OPENSNOOP.exists(),
                                reason="needs kernel BTF and fixtures")


def open_and_relocate(path: Path = OPENSNOOP) -> ObjectSpec:
    spec = ObjectSpec.from_file(path)
    spec.relocate(kernel_btf())
    return spec


def _warm() -> None:
    # the shared kernel index and the CO-RE candidate memo are per process
    open_and_relocate()


def test_bench_open_relocate_opensnoop(benchmark) -> None:
    _warm()
    spec = benchmark(open_and_relocate)
    assert len(spec.programs) == 2
    mean_ms = benchmark.stats.stats.mean * 1e3
    assert mean_ms <= TARGET_MS, f"{mean_ms:.2f} ms > {TARGET_MS} ms"


def test_bench_open_only_opensnoop(benchmark) -> None:
    spec = benchmark(ObjectSpec.from_file, OPENSNOOP)
    assert len(spec.programs) == 2


@pytest.mark.parametrize("name", ["core", "subprogs", "sections"])
def test_bench_open_relocate_other(benchmark, name: str) -> None:
    path = FIXTURES / f"{name}.bpf.o"
    if not path.exists():
        pytest.skip(f"{path.name} not built")
    open_and_relocate(path)
    benchmark(open_and_relocate, path)


def main() -> None:
    t0 = time.perf_counter()
    open_and_relocate()
    cold = time.perf_counter() - t0
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        open_and_relocate()
    warm = (time.perf_counter() - t0) / n
    print(f"opensnoop open+relocate: first {cold * 1e3:.1f} ms (index build/load included), "
          f"warm {warm * 1e3:.2f} ms (target {TARGET_MS} ms)")
    for name in ("core", "subprogs", "sections", "externs"):
        path = FIXTURES / f"{name}.bpf.o"
        if path.exists():
            open_and_relocate(path)
            t0 = time.perf_counter()
            for _ in range(50):
                open_and_relocate(path)
            print(f"{name}: {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
