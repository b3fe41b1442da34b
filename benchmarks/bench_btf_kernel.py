"""Benchmarks of the lazy kernel BTF index (pyebpf.btf.kernel) on this machine's vmlinux.

Run: python -m pytest benchmarks/bench_btf_kernel.py --benchmark-only
Fresh-process figures (what a CLI pays): python benchmarks/fresh_process_btf.py
"""

from __future__ import annotations

import os

import pytest

from pyebpf.btf.kernel import DEFAULT_PATH, KernelBTF

pytestmark = pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="no kernel BTF")

COMMON_NAMES = [
    "task_struct", "trace_event_raw_sys_enter", "sk_buff", "file", "inode", "mm_struct",
    "cred", "pt_regs", "bpf_map", "xdp_md", "sock", "net_device", "path", "dentry",
    "super_block", "pid_t", "u32", "vm_area_struct", "list_head", "bpf_prog",
]


@pytest.fixture
def warm_cache(tmp_path, monkeypatch):
    """A cache dir holding the full index (offsets + name table), as after one CO-RE load."""
    monkeypatch.setenv("PYEBPF_CACHE_DIR", str(tmp_path / "cache"))
    KernelBTF.open().find("task_struct")
    btf = KernelBTF.open()
    assert btf._table is not None, "cache did not take"
    return tmp_path / "cache"


def test_bench_index_cold(benchmark):
    """One walk over ~126k records, no cache read or write."""
    btf = benchmark(KernelBTF.open, DEFAULT_PATH, cache=False)
    assert len(btf) > 100_000


def test_bench_index_cold_writing_cache(benchmark, tmp_path, monkeypatch):
    """The real first run: walk, then write the cache (a new empty dir each round)."""
    dirs = iter(range(10**6))

    def setup():
        monkeypatch.setenv("PYEBPF_CACHE_DIR", str(tmp_path / f"c{next(dirs)}"))

    benchmark.pedantic(KernelBTF.open, setup=setup, rounds=30, iterations=1)


def test_bench_index_cached(benchmark, warm_cache):
    btf = benchmark(KernelBTF.open)
    assert btf._table is not None


def test_bench_name_table_build(benchmark):
    """One-off cost of the crc32 name table (first lookup when a cache is usable)."""
    def setup():
        return (KernelBTF.open(cache=False),), {}

    benchmark.pedantic(lambda b: b._build_table(), setup=setup, rounds=15, iterations=1)


def test_bench_search_index_build(benchmark):
    """One-off cost of the string-search path's name offsets (first lookup, no cache)."""
    def setup():
        return (KernelBTF.open(cache=False),), {}

    benchmark.pedantic(lambda b: b._name_index(), setup=setup, rounds=15, iterations=1)


def _lookup_all(btf: KernelBTF) -> int:
    n = 0
    for name in COMMON_NAMES:
        n += len(btf.find(name))
    return n


def test_bench_lookup_20_names(benchmark, warm_cache):
    """20 find() calls on a fresh instance loaded from the cache (no memo yet)."""
    def setup():
        return (KernelBTF.open(),), {}

    n = benchmark.pedantic(_lookup_all, setup=setup, rounds=30, iterations=1)
    assert n >= 20


def test_bench_lookup_20_names_uncached(benchmark):
    """20 find() calls without a cache: string search (name offsets already built)."""
    def setup():
        btf = KernelBTF.open(cache=False)
        btf._name_index()
        return (btf,), {}

    n = benchmark.pedantic(_lookup_all, setup=setup, rounds=15, iterations=1)
    assert n >= 20


def test_bench_candidates_20_names(benchmark, warm_cache):
    def setup():
        return (KernelBTF.open(),), {}

    def run(btf: KernelBTF) -> int:
        return sum(len(btf.candidates(name)) for name in COMMON_NAMES)

    assert benchmark.pedantic(run, setup=setup, rounds=30, iterations=1) >= 20


def test_bench_lookup_20_names_memoized(benchmark, warm_cache):
    """The same lookups again on a shared instance (kernel_btf()): memo hits."""
    btf = KernelBTF.open()
    _lookup_all(btf)
    assert benchmark(_lookup_all, btf) >= 20


def test_bench_decode_20_types(benchmark, warm_cache):
    """type() of the 20 common names' first ids on a fresh instance (decode, no memo)."""
    ref = KernelBTF.open()
    ids = [ref.find(n)[0] for n in COMMON_NAMES]

    def setup():
        return (KernelBTF.open(),), {}

    def run(btf: KernelBTF) -> None:
        for i in ids:
            btf.type(i)

    benchmark.pedantic(run, setup=setup, rounds=30, iterations=1)
