"""The eBPF instruction model: 8-byte ``struct bpf_insn`` records.

Programs are kept as ``bytearray`` (the exact bytes sent to the kernel); these
helpers decode, encode and patch single instructions in place.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")

# instruction classes
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07

# size
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18

# mode
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_MEMSX = 0x80
BPF_ATOMIC = 0xC0

# alu/jmp op
BPF_ADD = 0x00
BPF_MOV = 0xB0
BPF_K = 0x00
BPF_X = 0x08
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JA = 0x00

LD_IMM64 = BPF_LD | BPF_DW | BPF_IMM  # 0x18

# src_reg values of ld_imm64
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_BTF_ID = 3
BPF_PSEUDO_FUNC = 4
BPF_PSEUDO_MAP_IDX = 5
BPF_PSEUDO_MAP_IDX_VALUE = 6

# src_reg values of call
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_KFUNC_CALL = 2

# libbpf's poison values
CORE_POISON_IMM = 0xBAD2310  # bpf_core_poison_insn: "call 195896080"
POISON_LDIMM64_MAP_BASE = 2001000000
POISON_CALL_KFUNC_BASE = 2002000000


def insn_class(code: int) -> int:
    return code & 0x07


class Insn(NamedTuple):
    code: int
    dst: int
    src: int
    off: int
    imm: int

    def pack(self) -> bytes:
        return _INSN.pack(self.code, (self.src << 4) | (self.dst & 0xF), self.off, self.imm)

    @property
    def is_ldimm64(self) -> bool:
        return self.code == LD_IMM64

    @property
    def is_call(self) -> bool:
        return self.code == (BPF_JMP | BPF_CALL)

    @property
    def is_subprog_call(self) -> bool:
        return self.code == (BPF_JMP | BPF_CALL) and self.src == BPF_PSEUDO_CALL


def get(buf: bytes | bytearray | memoryview, idx: int) -> Insn:
    """Decode instruction number ``idx``."""
    code, regs, off, imm = _INSN.unpack_from(buf, idx * INSN_SIZE)
    return Insn(code, regs & 0xF, regs >> 4, off, imm)


def put(buf: bytearray, idx: int, insn: Insn) -> None:
    """Encode ``insn`` over instruction number ``idx``."""
    _INSN.pack_into(buf, idx * INSN_SIZE, insn.code, (insn.src << 4) | (insn.dst & 0xF),
                    insn.off, insn.imm)


def set_imm(buf: bytearray, idx: int, imm: int) -> None:
    """Overwrite the 32-bit immediate of instruction ``idx`` (imm wraps to s32)."""
    imm &= 0xFFFFFFFF
    if imm >= 1 << 31:
        imm -= 1 << 32
    struct.pack_into("<i", buf, idx * INSN_SIZE + 4, imm)


def set_off(buf: bytearray, idx: int, off: int) -> None:
    struct.pack_into("<h", buf, idx * INSN_SIZE + 2, off)


def set_src(buf: bytearray, idx: int, src: int) -> None:
    pos = idx * INSN_SIZE + 1
    buf[pos] = (buf[pos] & 0x0F) | ((src & 0xF) << 4)


def count(buf: bytes | bytearray | memoryview) -> int:
    return len(buf) // INSN_SIZE


def iter_insns(buf: bytes | bytearray | memoryview) -> list[Insn]:
    return [Insn(c, r & 0xF, r >> 4, o, i) for c, r, o, i in _INSN.iter_unpack(buf)]


def tag(buf: bytes | bytearray | memoryview) -> str:
    """The kernel's program tag for these instructions, as 16 hex digits.

    Mirrors bpf_prog_calc_tag() on Linux >= 6.x: the immediates of every ld_imm64
    that references a map (by fd or by value) are zeroed, then the first 8 bytes
    of the SHA-256 of the instruction bytes are taken.
    """
    import hashlib  # ~2.5 ms to import; only tag computation needs it

    data = bytearray(buf)
    n = len(data) // INSN_SIZE
    i = 0
    while i < n:
        p = i * INSN_SIZE
        if data[p] == LD_IMM64:
            src = data[p + 1] >> 4
            if src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE) and i + 1 < n:
                data[p + 4 : p + 8] = b"\0\0\0\0"
                data[p + 12 : p + 16] = b"\0\0\0\0"
            i += 2
            continue
        i += 1
    return hashlib.sha256(bytes(data)).digest()[:8].hex()
