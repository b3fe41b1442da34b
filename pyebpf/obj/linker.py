"""Linking a main program with the ``.text`` subprograms it uses (libbpf's reloc_code).

For each main program, subprograms are appended in depth-first order of their
first call (or ``ld_imm64`` BPF_PSEUDO_FUNC reference), each exactly once, and
every call/func-pointer immediate is rewritten relative to the final layout.
func_info and line_info records travel with the code they describe.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, NamedTuple

from .. import insn as I
from .._record import Record, replace
from ..errors import ObjectError
from .program import ProgramSpec, Reloc, RelocType
from .reloc import find_prog

_CALL = I.BPF_JMP | I.BPF_CALL


class CoreResultAt(NamedTuple):
    """A CO-RE result and the index of the instruction it patched in the final program."""

    insn_idx: int
    result: Any  # pyebpf.btf.core.CoreResult


class Linked(Record):
    """The final instructions of one main program and everything indexed by them."""

    insns: bytearray
    relocs: list[Reloc]
    func_info: list[Any] | None
    line_info: list[Any] | None
    core_results: list[CoreResultAt]
    order: list[str]  # main, then subprograms as appended

    def __init__(self, insns: bytearray, relocs: list[Reloc], func_info: list[Any] | None,
                 line_info: list[Any] | None, core_results: list[CoreResultAt] | None = None,
                 order: list[str] | None = None) -> None:
        self.insns = insns
        self.relocs = relocs
        self.func_info = func_info
        self.line_info = line_info
        self.core_results = [] if core_results is None else core_results
        self.order = [] if order is None else order


def _is_subprog_call(ins: I.Insn) -> bool:
    return (ins.code == _CALL and ins.src == I.BPF_PSEUDO_CALL and ins.dst == 0
            and ins.off == 0)


def _is_pseudo_func(ins: I.Insn) -> bool:
    return ins.code == I.LD_IMM64 and ins.src == I.BPF_PSEUDO_FUNC


def _ext_slice(records: Sequence[Any] | None, start: int, end: int) -> list[Any] | None:
    """libbpf's adjust_prog_btf_ext_info selection: the contiguous run of records
    from the first one inside [start, end) up to the last one seen before a record
    at or past ``end``. None when there is none (libbpf's -ENOENT)."""
    if not records:
        return None
    first = last = -1
    for k, rec in enumerate(records):
        off = rec.insn_off
        if off < start:
            continue
        if off >= end:
            break
        if first < 0:
            first = k
        last = k
    if first < 0:
        return None
    return list(records[first:last + 1])


def _shift(rec: Any, delta: int) -> Any:
    # direct construction: replace() costs ~5x more on this hot path
    from ..btf.ext import FuncInfo, LineInfo  # lazy: keeps construct off `import pyebpf`

    if isinstance(rec, FuncInfo):
        return FuncInfo(rec.insn_off + delta, rec.type_id)
    if isinstance(rec, LineInfo):
        return LineInfo(rec.insn_off + delta, rec.file_name_off, rec.line_off, rec.line,
                        rec.col, rec.file_name, rec.line_text)
    return replace(rec, insn_off=rec.insn_off + delta)


def link_program(main: ProgramSpec, text_progs: Sequence[ProgramSpec],
                 code: Mapping[str, bytearray],
                 core: Mapping[str, list[Any]],
                 func_info: Mapping[str, Sequence[Any]],
                 line_info: Mapping[str, Sequence[Any]],
                 section_of: Mapping[str, str]) -> Linked:
    """Append and relocate every subprogram ``main`` uses.

    ``code[name]`` is each program's own instructions (CO-RE already applied) and
    ``core[name]`` its CO-RE results; ``text_progs`` are the ``.text`` functions sorted
    by offset; ``func_info``/``line_info`` map ELF section names to BTF.ext records
    (section-relative instruction indexes); ``section_of[name]`` is a program's raw
    ELF section name.
    """
    out = bytearray(code[main.name])
    linked = Linked(out, list(main.relocs), None, None)
    sub_off: dict[str, int] = {}
    by_name = {p.name: p for p in text_progs}
    text_list = list(text_progs)
    reloc_at: dict[str, dict[int, Reloc]] = {}

    def relocs_of(p: ProgramSpec) -> dict[int, Reloc]:
        m = reloc_at.get(p.name)
        if m is None:
            m = {}
            for r in p.relocs:
                m.setdefault(r.insn_idx, r)
            reloc_at[p.name] = m
        return m

    def add_ext_info(p: ProgramSpec, base: int) -> None:
        sec = section_of[p.name]
        start, end = p.sec_insn_off, p.sec_insn_off + p.sec_insn_cnt
        delta = base - p.sec_insn_off
        for attr, table, what in (("func_info", func_info, "function"),
                                  ("line_info", line_info, "line")):
            have = getattr(linked, attr)
            if p is not main and have is None:
                continue
            recs = _ext_slice(table.get(sec), start, end)
            if recs is None:
                if have is not None:
                    raise ObjectError(f"prog {p.name!r}: missing .BTF.ext {what} info")
                continue
            if have is None:
                have = []
                setattr(linked, attr, have)
            have.extend(_shift(r, delta) for r in recs)

    def process(p: ProgramSpec) -> Generator[ProgramSpec, None, None]:
        base = sub_off.get(p.name, 0)
        add_ext_info(p, base)
        linked.order.append(p.name)
        linked.core_results.extend(CoreResultAt(r.relo.insn_off - p.sec_insn_off + base, r)
                                   for r in core.get(p.name, ()))
        relos = relocs_of(p)
        for i in range(p.sec_insn_cnt):
            ins = I.get(out, base + i)
            pseudo_func = _is_pseudo_func(ins)
            if not pseudo_func and not _is_subprog_call(ins):
                continue
            r = relos.get(i)
            if r is not None and r.type == RelocType.EXTERN_CALL:
                continue  # kfunc calls are data relocations
            if r is not None and r.type not in (RelocType.CALL, RelocType.SUBPROG_ADDR):
                raise ObjectError(f"prog {p.name!r}: unexpected relo for insn #{i}, "
                                  f"type {int(r.type)}")
            if r is not None:
                if r.type == RelocType.CALL:
                    target = r.sym_off // 8 + ins.imm + 1
                else:
                    target = (r.sym_off + ins.imm) // 8
            elif pseudo_func:
                raise ObjectError(f"prog {p.name!r}: missing subprog addr relo for insn #{i}")
            else:
                # same-section static call: imm is relative to the original position
                target = p.sec_insn_off + i + ins.imm + 1
            sub = find_prog(text_list, target)
            if sub is None:
                raise ObjectError(f"prog {p.name!r}: no .text section found yet "
                                  "sub-program call exists")
            if sub_off.get(sub.name, 0) == 0:
                sub_off[sub.name] = len(out) // I.INSN_SIZE
                out.extend(code[sub.name])
                if sub is not main:
                    shift = sub_off[sub.name]
                    linked.relocs.extend(Reloc(x.type, x.insn_idx + shift, x.sym_off, x.target,
                                               x.symbol) for x in by_name[sub.name].relocs)
                yield sub
            I.set_imm(out, base + i, sub_off[sub.name] - (base + i) - 1)

    # depth-first with an explicit stack: call chains may be deeper than Python's limit
    stack = [process(main)]
    while stack:
        try:
            nxt = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        stack.append(process(nxt))
    return linked
