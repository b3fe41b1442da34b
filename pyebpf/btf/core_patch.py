"""Instruction patching of CO-RE results (libbpf's bpf_core_patch_insn / bpf_core_poison_insn)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import insn as _insn
from .._log import get_logger
from ..errors import CORERelocationError
from .core_spec import _SHRT_MAX, _U32, _U64, _sext

if TYPE_CHECKING:
    from .core import CoreResult

log = get_logger("pyebpf.core")

def _poison_one(insns: bytearray, idx: int) -> None:
    _insn.put(insns, idx, _insn.Insn(_insn.BPF_JMP | _insn.BPF_CALL, 0, 0, 0,
                                     _insn.CORE_POISON_IMM))


_SIZE_BYTES = {_insn.BPF_DW: 8, _insn.BPF_W: 4, _insn.BPF_H: 2, _insn.BPF_B: 1}
_BYTES_SIZE = {v: k for k, v in _SIZE_BYTES.items()}


def patch_insn(insns: bytearray, idx: int, res: CoreResult, prog_name: str = "",
               relo_index: int | None = None) -> None:
    """libbpf's bpf_core_patch_insn on instruction ``idx`` of ``insns``."""

    def fail(msg: str) -> CORERelocationError:
        return CORERelocationError(f"insn #{idx} {msg}", program=prog_name or None,
                                   relo_index=relo_index)

    n = _insn.count(insns)
    if idx < 0 or idx >= n:
        raise fail(f"out of range (program has {n} instructions)")
    ins = _insn.get(insns, idx)
    cls = _insn.insn_class(ins.code)
    is_ld64 = ins.code == _insn.LD_IMM64

    def poison() -> None:
        # poison the second half of ld_imm64 too, or the verifier reports "unknown opcode 00"
        if is_ld64:
            if idx + 1 >= n:
                raise fail("(LDIMM64) is truncated")
            _poison_one(insns, idx + 1)
        _poison_one(insns, idx)
        log.debug("prog '%s': relo #%s: substituting insn #%d w/ invalid insn",
                  prog_name, relo_index, idx)

    if res.poison:
        poison()
        return
    orig_val, new_val = res.orig_val & _U64, res.new_val & _U64
    if cls in (_insn.BPF_ALU, _insn.BPF_ALU64):
        if ins.code & _insn.BPF_X:
            raise fail("(ALU/ALU64) uses a register source, expected an immediate")
        if res.validate and _sext(ins.imm, 32) != orig_val:
            raise fail(f"(ALU/ALU64) unexpected value: got {ins.imm & _U32}, exp {orig_val} "
                       f"-> {new_val}")
        _insn.set_imm(insns, idx, new_val)
    elif cls in (_insn.BPF_LDX, _insn.BPF_ST, _insn.BPF_STX):
        if res.validate and _sext(ins.off, 16) != orig_val:
            raise fail(f"(LDX/ST/STX) unexpected value: got {ins.off & 0xFFFF}, exp "
                       f"{orig_val} -> {new_val}")
        if new_val > _SHRT_MAX:
            raise fail(f"(LDX/ST/STX) value too big: {new_val}")
        if res.fail_memsz_adjust:
            msg = (f"insn #{idx} (LDX/ST/STX) accesses field incorrectly: its size changes "
                   f"{res.orig_sz} -> {res.new_sz} but it is not a pointer or unsigned "
                   "integer; instruction poisoned")
            res.explain.append(msg)
            log.debug("prog '%s': relo #%s: %s", prog_name, relo_index, msg)
            poison()
            return
        _insn.set_off(insns, idx, new_val)
        if res.new_sz != res.orig_sz:
            have = _SIZE_BYTES[ins.code & 0x18]
            if have != res.orig_sz:
                raise fail(f"(LDX/ST/STX) unexpected mem size: got {have}, exp {res.orig_sz}")
            new_size = _BYTES_SIZE.get(res.new_sz)
            if new_size is None:
                raise fail(f"(LDX/ST/STX) invalid new mem size: {res.new_sz}")
            insns[idx * _insn.INSN_SIZE] = (ins.code & 0xE0) | new_size | cls
    elif cls == _insn.BPF_LD:
        nxt = _insn.get(insns, idx + 1) if idx + 1 < n else None
        if (not is_ld64 or ins.src != 0 or ins.off != 0 or nxt is None or nxt.code != 0
                or nxt.dst != 0 or nxt.src != 0 or nxt.off != 0):
            raise fail("(LDIMM64) has unexpected form")
        imm = (ins.imm & _U32) | ((nxt.imm & _U32) << 32)
        if res.validate and imm != orig_val:
            raise fail(f"(LDIMM64) unexpected value: got {imm}, exp {orig_val} -> {new_val}")
        _insn.set_imm(insns, idx, new_val & _U32)
        _insn.set_imm(insns, idx + 1, new_val >> 32)
    else:
        raise fail(f"trying to relocate unrecognized insn, code:{ins.code:#x}, src:{ins.src:#x}, "
                   f"dst:{ins.dst:#x}, off:{ins.off:#x}, imm:{ins.imm & _U32:#x}")
