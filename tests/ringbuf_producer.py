"""The ring buffer producer fixture, loaded for tests and benchmarks.

Loads fixtures/ringbuf_producer.bpf.o with a minimal loader (object layer +
pyebpf.sys: create the maps, patch map fds into ld_imm64, load the two
``syscall`` programs), so the ring buffer tests do not depend on the full
loader.  ``Producer.run()`` triggers a program with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pyebpf import sys as S
from pyebpf.btf.ext import pack_func_info
from pyebpf.btf.write import marshal
from pyebpf.obj.object import ObjectSpec
from pyebpf.uapi import BPF_F_SLEEPABLE, MapType, ProgType

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "ringbuf_producer.bpf.o"

ARGS = struct.Struct("<QIIIIII")  # struct rb_args
MODE_OUTPUT, MODE_RESERVE, MODE_MIXED = 0, 1, 2
RESERVE_SIZES = (16, 24, 32, 40, 64, 100, 128, 256, 1000)
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP = 1, 2
BPF_PSEUDO_MAP_FD = 1

__all__ = [
    "ARGS",
    "BPF_RB_FORCE_WAKEUP",
    "BPF_RB_NO_WAKEUP",
    "FIXTURE",
    "MODE_MIXED",
    "MODE_OUTPUT",
    "MODE_RESERVE",
    "RESERVE_SIZES",
    "Producer",
    "check_record",
    "expected_seqs",
]


def _patch_map_fd(insns: bytearray, idx: int, fd: int) -> None:
    # ld_imm64: dst/src byte at +1 (src in the high nibble), imm at +4.
    off = idx * 8
    insns[off + 1] = (insns[off + 1] & 0x0F) | (BPF_PSEUDO_MAP_FD << 4)
    struct.pack_into("<i", insns, off + 4, fd)
    struct.pack_into("<i", insns, off + 12, 0)


class Producer:
    """Maps rb/rb2 and programs produce_rb/produce_rb2 of the fixture, in the kernel."""

    def __init__(self, ring_size: int = 256 * 1024, ring2_size: int | None = None) -> None:
        spec = ObjectSpec.from_file(str(FIXTURE))
        spec.relocate()
        sizes = {"rb": ring_size, "rb2": ring2_size or ring_size}
        self.maps: dict[str, S.FD] = {}
        self.progs: dict[str, S.FD] = {}
        self.sizes = sizes
        self.btf: S.FD | None = None
        try:
            # bpf_loop's callback needs BTF func_info.
            self.btf = S.btf_load(marshal(spec.btf))
            for name, m in spec.maps.items():
                if m.type == MapType.RINGBUF:
                    fd = S.map_create(m.type, 0, 0, sizes[name], name=name)
                else:
                    fd = S.map_create(m.type, m.key_size, m.value_size, m.max_entries, name=name)
                self.maps[name] = fd
            for name, p in spec.programs.items():
                insns = bytearray(p.insns)
                for ref in p.map_refs:
                    _patch_map_fd(insns, ref.insn_idx, self.maps[ref.map_name].fileno())
                self.progs[name] = S.prog_load(
                    ProgType.SYSCALL,
                    bytes(insns),
                    p.license or "GPL",
                    name=name,
                    prog_flags=BPF_F_SLEEPABLE,
                    prog_btf_fd=self.btf,
                    func_info=pack_func_info(p.func_info),
                    func_info_rec_size=8,
                )
        except BaseException:
            self.close()
            raise
        self._seq = {"produce_rb": 0, "produce_rb2": 0}

    def fd(self, ring: str = "rb") -> int:
        return self.maps[ring].fileno()

    def run(
        self,
        count: int,
        size: int = 32,
        mode: int = MODE_RESERVE,
        flags: int = 0,
        *,
        ring: str = "rb",
        seq: int | None = None,
    ) -> int:
        """Produce ``count`` records; returns how many were committed (not discarded/dropped).

        Sequence numbers continue from the previous run unless ``seq`` is given.
        """
        prog = "produce_rb" if ring == "rb" else "produce_rb2"
        start = self._seq[prog] if seq is None else seq
        ctx = ARGS.pack(start, count, size, mode, flags, 0, 0)
        retval = S.bpf.prog_test_run(self.progs[prog], ctx_in=ctx)[0]
        self._seq[prog] = start + count
        return retval

    def close(self) -> None:
        for fd in list(self.progs.values()) + list(self.maps.values()):
            fd.close()
        self.progs.clear()
        self.maps.clear()
        if self.btf is not None:
            self.btf.close()
            self.btf = None

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def expected_seqs(start: int, count: int, mode: int) -> list[int]:
    """The seqs a consumer sees after one run (mixed mode discards every third)."""
    if mode == MODE_MIXED:
        return [start + i for i in range(count) if i % 3 != 2]
    return list(range(start, start + count))


def check_record(rec: bytes | memoryview, size: int) -> int:
    """Validate one record written by the fixture; returns its seq."""
    assert len(rec) == size, (len(rec), size)
    seq, rsize, kind = struct.unpack_from("<QII", rec)
    assert rsize == size
    assert kind in (0, 1)
    if size >= 24:
        (tail,) = struct.unpack_from("<Q", rec, size - 8)
        assert tail == seq ^ 0xFFFFFFFFFFFFFFFF, (seq, tail)
    return seq
