"""Benchmarks of the eager BTF parser and writer on the running kernel's vmlinux BTF.

Run: python -m pytest benchmarks/bench_btf_parse.py --benchmark-only
(or `python benchmarks/bench_btf_parse.py` for a quick timing without pytest-benchmark).
The lazy kernel-BTF index is the hot path for CO-RE; this eager path is for reference.
"""

from __future__ import annotations

import os
import time

import pytest

from pyebpf.btf import formats
from pyebpf.btf.spec import BTF
from pyebpf.btf.write import marshal

VMLINUX = "/sys/kernel/btf/vmlinux"

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")


def _raw() -> bytes:
    with open(VMLINUX, "rb") as f:
        return f.read()


def test_bench_parse_vmlinux(benchmark) -> None:  # type: ignore[no-untyped-def]
    raw = _raw()
    btf = benchmark.pedantic(BTF.from_bytes, args=(raw,), rounds=3, iterations=1)
    assert len(btf) > 1000


def test_bench_marshal_vmlinux(benchmark) -> None:  # type: ignore[no-untyped-def]
    btf = BTF.from_bytes(_raw())
    data = benchmark.pedantic(marshal, args=(btf,), rounds=3, iterations=1)
    assert data[:2] == b"\x9f\xeb"


def main() -> None:
    raw = _raw()
    t = time.perf_counter()
    btf = BTF.from_bytes(raw)
    parse = time.perf_counter() - t
    t = time.perf_counter()
    btf.find("task_struct")
    index = time.perf_counter() - t
    t = time.perf_counter()
    out = marshal(btf)
    write = time.perf_counter() - t
    hdr = formats.btf_header.parse(raw)
    t = time.perf_counter()
    formats.btf_type_section.parse(raw[hdr.hdr_len + hdr.type_off:][:hdr.type_len])
    cons = time.perf_counter() - t
    print(f"vmlinux: {len(raw)} bytes, {len(btf)} type ids")
    print(f"BTF.from_bytes     {parse * 1000:8.1f} ms")
    print(f"name index (find)  {index * 1000:8.1f} ms")
    print(f"marshal            {write * 1000:8.1f} ms ({len(out)} bytes)")
    print(f"construct parse    {cons * 1000:8.1f} ms (types only, for comparison)")


if __name__ == "__main__":
    main()
