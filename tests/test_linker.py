"""Subprogram linking: DFS append order, call/func-pointer offsets, func/line info."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unitobj import kernelref_module, unit_object

from pyebpf import ObjectSpec
from pyebpf import insn as I
from pyebpf.btf.ext import FuncInfo
from pyebpf.errors import ObjectError
from pyebpf.obj.linker import _ext_slice, link_program
from pyebpf.obj.program import ProgramSpec, Reloc, RelocType
from pyebpf.obj.sections import SecFlag
from pyebpf.uapi import ProgType

CALL = I.BPF_JMP | I.BPF_CALL
EXIT = I.BPF_JMP | I.BPF_EXIT

# fixtures/src/unit/linker.bpf.c: static and global subprograms (leaf, sub_a, sub_b, sub_c),
# a bpf_loop callback, three socket programs.


@pytest.fixture(scope="module")
def linked() -> tuple[Path, ObjectSpec]:
    path = unit_object("linker")
    spec = ObjectSpec.from_file(path)
    spec.relocate()
    return path, spec


def _calls(prog: ProgramSpec) -> list[tuple[int, int]]:
    """(insn index, target index) of every subprogram call / function pointer."""
    out = []
    for i, ins in enumerate(I.iter_insns(prog.insns)):
        if (ins.code == CALL and ins.src == I.BPF_PSEUDO_CALL) or (
                ins.code == I.LD_IMM64 and ins.src == I.BPF_PSEUDO_FUNC):
            out.append((i, i + ins.imm + 1))
    return out


def _func_starts(spec: ObjectSpec, prog: ProgramSpec) -> dict[int, str]:
    return {fi.insn_off: spec.btf.type(fi.type_id).name for fi in prog.func_info}


def test_dfs_order_and_sharing(linked) -> None:
    _, spec = linked
    a = spec.programs["main_a"]
    b = spec.programs["main_b"]
    # main_a -> sub_a -> sub_b -> leaf: appended in first-call depth-first order
    assert list(_func_starts(spec, a).values()) == ["main_a", "sub_a", "sub_b", "leaf"]
    # main_b: loop_cb (first referenced), then sub_c -> sub_b -> leaf; leaf is shared
    assert list(_func_starts(spec, b).values()) == ["main_b", "loop_cb", "sub_c", "sub_b",
                                                    "leaf"]
    plain = spec.programs["main_plain"]
    assert plain.insns == bytearray(plain.orig_insns) and len(plain.func_info) == 1
    total = sum(spec.subprograms[n].sec_insn_cnt for n in ("sub_a", "sub_b", "leaf"))
    assert a.insn_count == a.sec_insn_cnt + total


def test_every_call_lands_on_a_function_start(linked) -> None:
    _, spec = linked
    for prog in spec.programs.values():
        starts = _func_starts(spec, prog)
        for _, target in _calls(prog):
            assert target in starts, (prog.name, target, starts)
    b = spec.programs["main_b"]
    starts = _func_starts(spec, b)
    named = sorted(starts[t] for _, t in _calls(b))
    assert named == ["leaf", "leaf", "loop_cb", "sub_b", "sub_c"]


def test_line_info_follows_code(linked) -> None:
    _, spec = linked
    for prog in spec.programs.values():
        offs = [li.insn_off for li in prog.line_info]
        assert offs == sorted(offs) and offs[0] == 0 and offs[-1] < prog.insn_count
        for fi in prog.func_info:
            assert fi.insn_off in offs  # every function's first insn has a line


def test_tags_equal_libbpf(linked) -> None:
    path, spec = linked
    kernelref = kernelref_module()
    if not kernelref.bpftool_available() or not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("bpftool/root needed")
    assert {n: p.tag for n, p in spec.programs.items()} == kernelref.libbpf_tags(path)


# -- synthetic programs: edge cases without a compiler --------------------------------


def _prog(name: str, code: list[I.Insn], sec_idx: int, off: int, *, sub: bool,
          relocs: list[Reloc] | None = None) -> ProgramSpec:
    raw = b"".join(i.pack() for i in code)
    return ProgramSpec(name=name, section=".text" if sub else "socket", sec_def=None,
                       type=ProgType.SOCKET_FILTER, expected_attach_type=None,
                       attach_target=None, flags=SecFlag.NONE, license="GPL", kern_version=0,
                       insns=bytearray(raw), sec_idx=sec_idx, sec_insn_off=off,
                       is_subprog=sub, relocs=relocs or [], orig_insns=raw)


def test_deep_call_chain_is_not_recursive() -> None:
    depth = 3000  # far beyond Python's recursion limit
    text = []
    for k in range(depth):
        body = ([I.Insn(CALL, 0, I.BPF_PSEUDO_CALL, 0, 1)] if k < depth - 1
                else [I.Insn(I.BPF_ALU64 | I.BPF_MOV, 0, 0, 0, 0)])
        text.append(_prog(f"f{k}", body + [I.Insn(EXIT, 0, 0, 0, 0)], 2, 2 * k, sub=True))
    main = _prog("main", [I.Insn(CALL, 0, I.BPF_PSEUDO_CALL, 0, -1), I.Insn(EXIT, 0, 0, 0, 0)],
                 3, 0, sub=False, relocs=[Reloc(RelocType.CALL, 0, 0)])
    code = {p.name: bytearray(p.orig_insns) for p in [main, *text]}
    sections = {p.name: ".text" for p in text} | {"main": "socket"}
    out = link_program(main, text, code, {}, {}, {}, sections)
    assert out.order == ["main"] + [f"f{k}" for k in range(depth)]
    insns = I.iter_insns(out.insns)
    assert len(insns) == 2 + 2 * depth
    assert insns[0].imm == 1  # main's call -> f0 right after main
    assert all(insns[2 + 2 * k].imm == 1 for k in range(depth - 1))


def test_call_into_nothing_is_an_error() -> None:
    main = _prog("main", [I.Insn(CALL, 0, I.BPF_PSEUDO_CALL, 0, 40), I.Insn(EXIT, 0, 0, 0, 0)],
                 3, 0, sub=False)
    with pytest.raises(ObjectError, match="sub-program call"):
        link_program(main, [], {"main": bytearray(main.orig_insns)}, {}, {}, {},
                     {"main": "socket"})


def test_ext_slice_matches_libbpf_selection() -> None:
    recs = [FuncInfo(o, 1) for o in (0, 5, 9, 12, 20)]
    assert [r.insn_off for r in _ext_slice(recs, 5, 13)] == [5, 9, 12]
    assert _ext_slice(recs, 13, 20) is None
    assert _ext_slice(None, 0, 1) is None
    # libbpf copies the contiguous run, stopping at the first record past the end
    unsorted = [FuncInfo(o, 1) for o in (6, 2, 7, 30, 8)]
    assert [r.insn_off for r in _ext_slice(unsorted, 5, 10)] == [6, 2, 7]


# -- more shapes, checked against libbpf 1.1 -------------------------------------------

# fixtures/src/unit/linker_shapes.bpf.c: a weak subprogram, callbacks, map access in .text.


def test_more_shapes_equal_libbpf() -> None:
    path = unit_object("linker_shapes")
    spec = ObjectSpec.from_file(path)
    assert "weak_helper" in spec.subprograms
    spec.relocate()
    starts = _func_starts(spec, spec.programs["cls_main"])
    assert list(starts.values()) == ["cls_main", "walker", "elem_cb", "printer", "weak_helper"]
    for prog in (spec.programs["cls_main"], spec.programs["xdp_main"]):
        for _, target in _calls(prog):
            assert target in _func_starts(spec, prog)
    kernelref = kernelref_module()
    if not kernelref.bpftool_available():
        pytest.skip("bpftool/root needed")
    ours = {n: p.tag for n, p in spec.programs.items() if p.autoload}
    assert ours == kernelref.libbpf_tags(path)
    # autoload off: left as in the ELF; back on: relocated exactly as before
    xdp = spec.programs["xdp_main"]
    xdp.autoload = False
    spec.relocate()
    assert xdp.insns == bytearray(xdp.orig_insns) and xdp.map_refs == []
    xdp.autoload = True
    spec.relocate()
    assert xdp.tag == ours["xdp_main"]


# fixtures/src/unit/linker_coresub.bpf.c: CO-RE reads inside .text subprograms, and two
# programs (first, second) in one raw_tp/sys_enter section.


def test_core_in_subprograms_and_shared_sections_equal_libbpf() -> None:
    path = unit_object("linker_coresub")
    spec = ObjectSpec.from_file(path)
    assert spec.programs["second"].sec_insn_off > 0  # shares its section with first
    spec.relocate()
    second = spec.programs["second"]
    assert list(_func_starts(spec, second).values()) == ["second", "parent_tgid", "own_pid"]
    # CO-RE results travel with the subprogram code they patched
    n_sub = len(spec.btf_ext.core_relos[".text"])
    n_own = sum(1 for r in spec.btf_ext.core_relos["raw_tp/sys_enter"]
                if r.insn_off >= second.sec_insn_off)
    assert len(second.core_results) == n_own + n_sub
    for at in second.core_results:
        assert 0 <= at.insn_idx < second.insn_count
    kernelref = kernelref_module()
    if not kernelref.bpftool_available():
        pytest.skip("bpftool/root needed")
    assert {n: p.tag for n, p in spec.programs.items()} == kernelref.libbpf_tags(path)


def test_hidden_global_subprog_gets_static_btf_linkage() -> None:
    from pyebpf.btf.types import Func, Linkage

    # hidden __noinline hid(), global pub(), socket program entry() calling both
    path = unit_object("linker_hidden")
    spec = ObjectSpec.from_file(path)
    funcs = {t.name: t.linkage for _, t in spec.btf.own_types() if isinstance(t, Func)}
    assert funcs["hid"] == Linkage.STATIC and funcs["pub"] == Linkage.GLOBAL
    assert funcs["entry"] == Linkage.GLOBAL  # only subprograms are changed
    spec.relocate()
    kernelref = kernelref_module()
    if not kernelref.bpftool_available():
        pytest.skip("bpftool/root needed")
    assert spec.programs["entry"].tag == kernelref.libbpf_tags(path)["entry"]
