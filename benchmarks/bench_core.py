"""Benchmark: resolving ~50 CO-RE relocations against the running kernel's BTF.

Run: python -m pytest benchmarks/bench_core.py --benchmark-only
(or `python benchmarks/bench_core.py` for a quick timing without pytest-benchmark).

The relocations are the 35 of fixtures/core.bpf.o plus field relocations on a few
common kernel structs, built as a local BTF the way a BPF object would carry them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyebpf.btf.core import CoreRelocator
from pyebpf.btf.ext import CoreRelo, CoreReloKind, parse_btf_ext
from pyebpf.btf.kernel import KernelBTF, kernel_btf
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import Enum, Int, Kind, Member, Ptr, Struct, skip_modifiers
from pyebpf.obj.elf import read_elf

VMLINUX = "/sys/kernel/btf/vmlinux"
CORE_OBJ = Path(__file__).resolve().parent.parent / "fixtures" / "core.bpf.o"
STRUCTS = ["task_struct", "mm_struct", "file", "inode", "sk_buff", "sock", "cred"]

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")


def _synthetic(kbtf, per_struct: int = 3) -> tuple[BTF, list[CoreRelo]]:
    """A local BTF mirroring a few members of common kernel structs, one relo per member."""
    b = BTF()
    void_ptr = b.add(Ptr(0))
    ints: dict[tuple[int, int], int] = {}
    relos: list[CoreRelo] = []
    for name in STRUCTS:
        sid = next(i for i in kbtf.find(name) if kbtf.type(i).kind == Kind.STRUCT)
        members = []
        for m in kbtf.type(sid).members:
            if not m.name or m.bitfield_size:
                continue
            mt = kbtf.type(skip_modifiers(kbtf, m.type))
            if mt.kind == Kind.INT:
                key = (mt.size, mt.encoding)
                if key not in ints:
                    ints[key] = b.add(Int(mt.name, mt.size, mt.encoding))
                tid = ints[key]
            elif mt.kind == Kind.PTR:
                tid = void_ptr
            elif mt.kind in (Kind.STRUCT, Kind.UNION) and mt.name:
                tid = b.add(Struct(mt.name, 0, []))
            elif mt.kind == Kind.ENUM and mt.name:
                tid = b.add(Enum(mt.name, mt.size, []))
            else:
                continue
            members.append(Member(m.name, tid, 0))
            if len(members) == per_struct:
                break
        local = b.add(Struct(name, 0, members))
        for i in range(len(members)):
            relos.append(CoreRelo(0, local, f"0:{i}", CoreReloKind.FIELD_BYTE_OFFSET))
    return b, relos


def _workload(kbtf) -> list[tuple[BTF, list[CoreRelo]]]:
    elf = read_elf(CORE_OBJ.read_bytes(), str(CORE_OBJ))
    obj_btf = BTF.from_bytes(elf.section(".BTF").data)
    ext = parse_btf_ext(elf.section(".BTF.ext").data, obj_btf)
    obj_relos = [r for relos in ext.core_relos.values() for r in relos]
    return [(obj_btf, obj_relos), _synthetic(kbtf)]


def _resolve_all(kbtf, work) -> int:
    n = 0
    for local, relos in work:
        r = CoreRelocator(local, [kbtf])
        for relo in relos:
            r.resolve(relo)
            n += 1
    return n


def test_bench_core_warm(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Shared kernel index (types already decoded), fresh relocator per object."""
    kbtf = kernel_btf()
    work = _workload(kbtf)
    n = benchmark(_resolve_all, kbtf, work)
    assert n >= 50


def test_bench_core_cold(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A fresh kernel index (from the on-disk cache when present) for every round."""
    work = _workload(kernel_btf())

    def run() -> int:
        return _resolve_all(KernelBTF.open(VMLINUX), work)

    n = benchmark.pedantic(run, rounds=5, iterations=1)
    assert n >= 50


def main() -> None:
    work = _workload(kernel_btf())
    total = sum(len(r) for _, r in work)
    for label, make in (("cold, no index cache", lambda: KernelBTF.open(VMLINUX, cache=False)),
                        ("cold, index cache", lambda: KernelBTF.open(VMLINUX)),
                        ("warm (shared index)", kernel_btf)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            kbtf = make()
            t_open = time.perf_counter() - t
            _resolve_all(kbtf, work)
            best = min(best, time.perf_counter() - t)
        print(f"{label:>22}: {total} relocations in {best * 1000:.1f} ms "
              f"(index open {t_open * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
