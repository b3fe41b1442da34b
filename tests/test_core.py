"""Unit tests of the CO-RE engine (pyebpf.btf.core) on hand-built BTF."""

from __future__ import annotations

import os

import pytest
from hyp_examples import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from pyebpf import insn as I
from pyebpf.btf.core import CoreRelocator, parse_spec, patch_insn
from pyebpf.btf.core_types import core_essential
from pyebpf.btf.ext import CoreRelo
from pyebpf.btf.ext import CoreReloKind as K
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import (
    Array,
    Const,
    Enum,
    Enum64,
    EnumValue,
    Float,
    FuncProto,
    Fwd,
    Int,
    Member,
    Param,
    Ptr,
    Struct,
    Typedef,
    Union_,
    Volatile,
)
from pyebpf.errors import CORERelocationError

MOV64_IMM = I.BPF_ALU64 | I.BPF_MOV | I.BPF_K  # 0xb7
ADD64_IMM = I.BPF_ALU64 | I.BPF_ADD | I.BPF_K
LDX_W = I.BPF_LDX | I.BPF_MEM | I.BPF_W  # 0x61
LDX_DW = I.BPF_LDX | I.BPF_MEM | I.BPF_DW  # 0x79
STX_W = I.BPF_STX | I.BPF_MEM | I.BPF_W
ST_W = I.BPF_ST | I.BPF_MEM | I.BPF_W
POISON = I.Insn(I.BPF_JMP | I.BPF_CALL, 0, 0, 0, 0xBAD2310)


def prog(*insns: I.Insn) -> bytearray:
    return bytearray(b"".join(i.pack() for i in insns))


def ldimm64(dst: int, val: int, src: int = 0) -> tuple[I.Insn, I.Insn]:
    lo = val & 0xFFFFFFFF
    hi = (val >> 32) & 0xFFFFFFFF
    s32 = lambda v: v - (1 << 32) if v >= 1 << 31 else v  # noqa: E731
    return I.Insn(I.LD_IMM64, dst, src, 0, s32(lo)), I.Insn(0, 0, 0, 0, s32(hi))


class Types:
    """Common scalar types added to a BTF."""

    def __init__(self, b: BTF):
        self.int = b.add(Int("int", 4, 1))
        self.uint = b.add(Int("unsigned int", 4, 0))
        self.long = b.add(Int("long", 8, 1))
        self.ulong = b.add(Int("unsigned long", 8, 0))
        self.char = b.add(Int("char", 1, 2))
        self.u16 = b.add(Int("unsigned short", 2, 0))
        self.u8 = b.add(Int("unsigned char", 1, 0))


def btf() -> tuple[BTF, Types]:
    b = BTF()
    return b, Types(b)


def resolve(local, targets, type_id, access, kind):
    return CoreRelocator(local, targets).resolve(CoreRelo(0, type_id, access, kind))


# -- field offsets -------------------------------------------------------------------


def test_field_offset_simple_and_patch_alu_ldx():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    tb, tt = btf()
    tb.add(Struct("s", 16, [Member("x", tt.long, 0), Member("b", tt.int, 64),
                            Member("a", tt.int, 96)]))
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:1", K.FIELD_BYTE_OFFSET))
    assert (res.orig_val, res.new_val) == (4, 8)
    assert res.local_spec.raw_spec == [0, 1] and res.local_spec.path == [0, "b"]
    assert res.target_spec.raw_spec == [0, 1]
    assert res.orig_sz == res.new_sz == 4 and not res.fail_memsz_adjust
    assert str(res.local_spec) == f"<byte_off> [{ls}] struct s.b (0:1 @ offset 4)"
    assert str(res).endswith("4 -> 8")
    insns = prog(I.Insn(MOV64_IMM, 1, 0, 0, 4), I.Insn(LDX_W, 1, 2, 4, 0),
                 I.Insn(STX_W, 2, 1, 4, 0), I.Insn(ST_W, 2, 0, 4, 7))
    for k in range(4):
        r.apply(insns, CoreRelo(k, ls, "0:1", K.FIELD_BYTE_OFFSET), res)
    got = I.iter_insns(insns)
    assert got[0].imm == 8
    assert got[1].off == 8 and got[1].code == LDX_W
    assert got[2].off == 8 and got[3].off == 8 and got[3].imm == 7


def test_nested_anonymous_struct_union():
    lb, lt = btf()
    anon = lb.add(Struct("", 4, [Member("b", lt.int, 0)]))
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("", anon, 32)]))
    tb, tt = btf()
    inner = tb.add(Struct("", 8, [Member("q", tt.int, 0), Member("b", tt.int, 32)]))
    un = tb.add(Union_("", 8, [Member("x", tt.int, 0), Member("", inner, 0)]))
    ts = tb.add(Struct("s", 24, [Member("pad", tt.long, 0), Member("", un, 64),
                                 Member("a", tt.int, 128)]))
    res = resolve(lb, [tb], ls, "0:1:0", K.FIELD_BYTE_OFFSET)
    assert res.local_spec.path == [0, "b"]
    assert res.orig_val == 4
    assert res.target_spec.raw_spec == [0, 1, 1, 1]
    assert res.new_val == 8 + 4
    assert res.target_spec.root_type_id == ts
    a = resolve(lb, [tb], ls, "0:0", K.FIELD_BYTE_OFFSET)
    assert a.new_val == 16


def test_array_element_and_root_index():
    lb, lt = btf()
    arr = lb.add(Array(lt.int, lt.int, 4))
    ls = lb.add(Struct("s", 20, [Member("pad", lt.int, 0), Member("arr", arr, 32)]))
    tb, tt = btf()
    tarr = tb.add(Array(tt.int, tt.int, 8))
    tb.add(Struct("s", 48, [Member("x", tt.long, 0), Member("arr", tarr, 64)]))
    res = resolve(lb, [tb], ls, "0:1:2", K.FIELD_BYTE_OFFSET)
    assert res.orig_val == 4 + 8 and res.new_val == 8 + 8
    assert res.local_spec.path == [0, "arr", 2]
    assert res.orig_sz == 4 and res.new_sz == 4
    assert "s.arr[2]" in str(res.local_spec)
    sz = resolve(lb, [tb], ls, "0:1", K.FIELD_BYTE_SIZE)
    assert (sz.orig_val, sz.new_val) == (16, 32)
    elem_sz = resolve(lb, [tb], ls, "0:1:3", K.FIELD_BYTE_SIZE)
    assert elem_sz.new_val == 4
    # s[1].pad: the root index scales by the struct size
    root = resolve(lb, [tb], ls, "1:1", K.FIELD_BYTE_OFFSET)
    assert (root.orig_val, root.new_val) == (20 + 4, 48 + 8)
    assert "[1].arr" in str(root.local_spec)
    assert root.fail_memsz_adjust  # 16-byte vs 32-byte array: no load can be resized
    # index beyond the target's bound: no match -> poison
    tb2, tt2 = btf()
    small = tb2.add(Array(tt2.int, tt2.int, 2))
    tb2.add(Struct("s", 12, [Member("pad", tt2.int, 0), Member("arr", small, 32)]))
    bad = resolve(lb, [tb2], ls, "0:1:3", K.FIELD_BYTE_OFFSET)
    assert bad.poison and "out of bounds" in bad.candidates[0].reason
    # shifts make no sense on array elements: libbpf errors out
    with pytest.raises(CORERelocationError, match="array access"):
        resolve(lb, [tb], ls, "0:1:2", K.FIELD_LSHIFT_U64)


def test_flexible_array():
    lb, lt = btf()
    flex = lb.add(Array(lt.int, lt.int, 0))
    ls = lb.add(Struct("s", 4, [Member("n", lt.int, 0), Member("data", flex, 32)]))
    tb, tt = btf()
    tflex = tb.add(Array(tt.int, tt.int, 0))
    tb.add(Struct("s", 8, [Member("n", tt.long, 0), Member("data", tflex, 64)]))
    res = resolve(lb, [tb], ls, "0:1:10", K.FIELD_BYTE_OFFSET)
    assert (res.orig_val, res.new_val) == (4 + 40, 8 + 40)
    # a zero-length array that is not the last member is not flexible
    lb2, lt2 = btf()
    z = lb2.add(Array(lt2.int, lt2.int, 0))
    ls2 = lb2.add(Struct("s", 8, [Member("data", z, 0), Member("n", lt2.int, 0)]))
    with pytest.raises(CORERelocationError, match="out of bounds"):
        resolve(lb2, [tb], ls2, "0:0:1", K.FIELD_BYTE_OFFSET)
    # target zero-length array not last: index out of bounds -> no match
    tb3, tt3 = btf()
    tz = tb3.add(Array(tt3.int, tt3.int, 0))
    tb3.add(Struct("s", 8, [Member("data", tz, 0), Member("n", tt3.int, 0)]))
    assert resolve(lb, [tb3], ls, "0:1:1", K.FIELD_BYTE_OFFSET).poison


def test_typedef_and_modifiers_are_skipped():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.long, 0)]))
    lb.replace(ls, Struct("s", 16, [Member("a", lt.int, 0), Member("b", lt.long, 64)]))
    td = lb.add(Typedef("s_t", ls))
    cv = lb.add(Const(lb.add(Volatile(td))))
    tb, tt = btf()
    tl = tb.add(Typedef("long_t", tt.long))
    tb.add(Struct("s", 24, [Member("b", tb.add(Const(tl)), 128)]))
    # relocations on typedef'd roots search candidates by the typedef's own name
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:1", K.FIELD_BYTE_OFFSET))
    assert res.new_val == 16
    with pytest.raises(CORERelocationError, match="anonymous"):
        r.resolve(CoreRelo(0, cv, "0:1", K.FIELD_BYTE_OFFSET))
    assert r.resolve(CoreRelo(0, td, "0:1", K.FIELD_BYTE_OFFSET)).poison  # no typedef s_t


# -- bitfields -----------------------------------------------------------------------


def _bitfields():
    b, t = btf()
    s = b.add(Struct("bf", 16, [
        Member("a", t.uint, 0, 3),
        Member("b", t.uint, 3, 5),
        Member("c", t.int, 30, 4),  # straddles the 32-bit boundary
        Member("d", t.u8, 41, 2),
        Member("e", t.ulong, 64, 64),
    ], bitfield_encoding=True))
    return b, s


@pytest.mark.parametrize("member,expect", [
    # (byte_off, byte_sz, lshift, rshift, signed)
    (0, (0, 4, 61, 61, 0)),
    (1, (0, 4, 56, 59, 0)),
    (2, (0, 8, 30, 60, 1)),
    (3, (5, 1, 61, 62, 0)),
    (4, (8, 8, 0, 0, 0)),
])
def test_bitfield_values(member, expect):
    lb, ls = _bitfields()
    r = CoreRelocator(lb, [lb])
    access = f"0:{member}"
    got = tuple(r.resolve(CoreRelo(0, ls, access, k)).new_val
                for k in (K.FIELD_BYTE_OFFSET, K.FIELD_BYTE_SIZE, K.FIELD_LSHIFT_U64,
                          K.FIELD_RSHIFT_U64, K.FIELD_SIGNED))
    assert got == expect


def test_bitfield_moves_and_validation_is_off():
    lb, ls = _bitfields()
    tb, tt = btf()
    tb.add(Struct("bf", 16, [Member("pad", tt.uint, 0, 7), Member("a", tt.uint, 7, 3)],
                  bitfield_encoding=True))
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_LSHIFT_U64))
    assert res.new_val == 64 - 10 and not res.validate
    insns = prog(I.Insn(ADD64_IMM, 1, 0, 0, 999))  # wrong imm is fine: not validated
    r.apply(insns, res.relo, res)
    assert I.get(insns, 0).imm == 54
    rs = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_RSHIFT_U64))
    assert rs.validate  # right shift is never ambiguous
    with pytest.raises(CORERelocationError, match="unexpected value"):
        r.apply(prog(I.Insn(ADD64_IMM, 1, 0, 0, 999)), rs.relo, rs)


def test_bitfield_too_wide_for_u64_load():
    b, t = btf()
    s = b.add(Struct("w", 16, [Member("x", t.ulong, 60, 10)], bitfield_encoding=True))
    with pytest.raises(CORERelocationError, match="bitfield"):
        resolve(b, [b], s, "0:0", K.FIELD_BYTE_OFFSET)


# -- signedness, existence, memory size adjustment -------------------------------------


def test_field_signed_and_exists():
    b, t = btf()
    en = b.add(Enum("e", 4, [EnumValue("X", -1)], signed=True))
    ue = b.add(Enum("ue", 4, [EnumValue("Y", 1)]))
    s = b.add(Struct("s", 24, [Member("i", t.int, 0), Member("u", t.uint, 32),
                               Member("c", t.char, 64), Member("e", en, 96),
                               Member("ue", ue, 128)]))
    vals = [resolve(b, [b], s, f"0:{i}", K.FIELD_SIGNED).new_val for i in range(5)]
    assert vals == [1, 0, 0, 1, 0]
    tb, tt = btf()
    tb.add(Struct("s", 4, [Member("u", tt.uint, 0)]))
    assert resolve(b, [tb], s, "0:1", K.FIELD_EXISTS).new_val == 1
    missing = resolve(b, [tb], s, "0:0", K.FIELD_EXISTS)
    assert (missing.orig_val, missing.new_val, missing.poison) == (1, 0, False)


def test_load_size_adjustment_unsigned():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("v", lt.ulong, 0)]))
    tb, tt = btf()
    tb.add(Struct("s", 8, [Member("x", tt.uint, 0), Member("v", tt.uint, 32)]))
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    assert (res.orig_sz, res.new_sz, res.fail_memsz_adjust) == (8, 4, False)
    insns = prog(I.Insn(LDX_DW, 1, 2, 0, 0))
    r.apply(insns, res.relo, res)
    assert I.get(insns, 0) == I.Insn(LDX_W, 1, 2, 4, 0)
    # the instruction must load the local size
    with pytest.raises(CORERelocationError, match="mem size"):
        r.apply(prog(I.Insn(LDX_W, 1, 2, 0, 0)), res.relo, res)


def test_load_size_adjustment_signed_poisons_ldx_only():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("v", lt.long, 0)]))
    tb, tt = btf()
    tb.add(Struct("s", 8, [Member("x", tt.int, 0), Member("v", tt.int, 32)]))
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    assert res.fail_memsz_adjust and not res.poison
    insns = prog(I.Insn(LDX_DW, 1, 2, 0, 0))
    r.apply(insns, res.relo, res)
    assert I.get(insns, 0) == POISON
    alu = prog(I.Insn(ADD64_IMM, 1, 0, 0, 0))
    r.apply(alu, res.relo, res)  # ALU only sees the offset
    assert I.get(alu, 0).imm == 4


def test_ldx_offset_too_big():
    lb, lt = btf()
    ls = lb.add(Struct("s", 4, [Member("v", lt.int, 0)]))
    tb, tt = btf()
    big = tb.add(Array(tt.u8, tt.int, 40000))
    tb.add(Struct("s", 40004, [Member("pad", big, 0), Member("v", tt.int, 40000 * 8)]))
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    with pytest.raises(CORERelocationError, match="too big"):
        r.apply(prog(I.Insn(LDX_W, 1, 2, 0, 0)), res.relo, res)
    alu = prog(I.Insn(MOV64_IMM, 1, 0, 0, 0))
    r.apply(alu, res.relo, res)
    assert I.get(alu, 0).imm == 40000


# -- type-based relocations ----------------------------------------------------------


def test_type_kinds():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0)]))
    nope = lb.add(Struct("nope", 4, [Member("a", lt.int, 0)]))
    tb, tt = btf()
    ts = tb.add(Struct("s", 32, [Member("z", tt.long, 0)]))
    r = CoreRelocator(lb, [tb])
    assert r.resolve(CoreRelo(0, ls, "0", K.TYPE_EXISTS)).new_val == 1
    sz = r.resolve(CoreRelo(0, ls, "0", K.TYPE_SIZE))
    assert (sz.orig_val, sz.new_val) == (8, 32)
    loc = r.resolve(CoreRelo(0, ls, "0", K.TYPE_ID_LOCAL))
    assert (loc.orig_val, loc.new_val, loc.validate) == (ls, ls, False)
    tgt = r.resolve(CoreRelo(0, ls, "0", K.TYPE_ID_TARGET))
    assert (tgt.orig_val, tgt.new_val, tgt.validate) == (ls, ts, False)
    ne = r.resolve(CoreRelo(0, nope, "0", K.TYPE_EXISTS))
    assert (ne.orig_val, ne.new_val, ne.poison) == (1, 0, False)
    assert r.resolve(CoreRelo(0, nope, "0", K.TYPE_SIZE)).new_val == 0
    assert r.resolve(CoreRelo(0, nope, "0", K.TYPE_ID_TARGET)).new_val == 0
    assert "no candidate type named 'nope'" in "\n".join(ne.explain)
    # TYPE_ID_* go into ld_imm64 in practice; validation is off so any imm works
    insns = prog(*ldimm64(1, 12345))
    r.apply(insns, tgt.relo, tgt)
    assert I.get(insns, 0).imm == ts and I.get(insns, 1).imm == 0


def test_type_compat_rules():
    lb, lt = btf()
    fp = lb.add(FuncProto(lt.int, [Param("a", lt.long)]))
    lfn = lb.add(Typedef("fn_t", lb.add(Ptr(fp))))
    lint = lb.add(Typedef("val_t", lt.int))
    tb, tt = btf()
    tfp = tb.add(FuncProto(tt.uint, [Param("x", tt.ulong)]))
    tb.add(Typedef("fn_t", tb.add(Ptr(tfp))))
    tb.add(Typedef("val_t", tb.add(Struct("x", 4, []))))
    assert resolve(lb, [tb], lfn, "0", K.TYPE_EXISTS).new_val == 1
    res = resolve(lb, [tb], lint, "0", K.TYPE_EXISTS)
    assert res.new_val == 0
    assert "not compatible" in res.candidates[0].reason
    # arity mismatch
    tb2, tt2 = btf()
    tfp2 = tb2.add(FuncProto(tt2.int, []))
    tb2.add(Typedef("fn_t", tb2.add(Ptr(tfp2))))
    assert resolve(lb, [tb2], lfn, "0", K.TYPE_EXISTS).new_val == 0


def test_type_matches():
    lb, lt = btf()
    lfwd = lb.add(Fwd("node"))
    le = lb.add(Enum("color", 4, [EnumValue("RED", 0), EnumValue("BLUE___x", 1)]))
    ls = lb.add(Struct("thing", 16, [Member("n", lb.add(Ptr(lfwd)), 0),
                                     Member("c", le, 64), Member("id", lt.int, 96)]))
    tb, tt = btf()
    node = tb.add(Struct("node", 8, [Member("v", tt.long, 0)]))
    te = tb.add(Enum64("color", 4, [EnumValue("GREEN", 5), EnumValue("BLUE", 7),
                                    EnumValue("RED", 9)]))
    tb.add(Struct("thing", 32, [Member("pad", tt.long, 0), Member("id", tt.int, 64),
                                Member("c", te, 96), Member("n", tb.add(Ptr(node)), 128)]))
    assert resolve(lb, [tb], ls, "0", K.TYPE_MATCHES).new_val == 1
    # signedness of a member differs -> no match
    tb2, tt2 = btf()
    node2 = tb2.add(Struct("node", 8, []))
    te2 = tb2.add(Enum("color", 4, [EnumValue("RED", 0), EnumValue("BLUE", 1)]))
    tb2.add(Struct("thing", 16, [Member("n", tb2.add(Ptr(node2)), 0), Member("c", te2, 64),
                                 Member("id", tt2.uint, 96)]))
    res = resolve(lb, [tb2], ls, "0", K.TYPE_MATCHES)
    assert res.new_val == 0 and "don't match" in res.candidates[0].reason
    # an enum value missing in the target -> no match
    tb3, _ = btf()
    tb3.add(Enum("color", 4, [EnumValue("RED", 0)]))
    assert resolve(lb, [tb3], le, "0", K.TYPE_MATCHES).new_val == 0
    # floats are not handled by libbpf's matcher: never a match
    fb = BTF()
    f = fb.add(Float("double", 8))
    assert resolve(fb, [fb], f, "0", K.TYPE_MATCHES).new_val == 0
    assert resolve(fb, [fb], f, "0", K.TYPE_EXISTS).new_val == 0  # nor compatible


# -- enums ---------------------------------------------------------------------------


def test_enumval_kinds_and_ldimm64():
    lb, _ = btf()
    le = lb.add(Enum("mode", 4, [EnumValue("A", 1), EnumValue("B___old", 2),
                                 EnumValue("GONE", 3)]))
    le64 = lb.add(Enum64("big", 8, [EnumValue("HUGE", 1 << 40)]))
    tb, _ = btf()
    tb.add(Enum("mode", 4, [EnumValue("B", -5), EnumValue("A", 10)], signed=True))
    tb.add(Enum64("big", 8, [EnumValue("HUGE", (1 << 63) + 7)]))
    r = CoreRelocator(lb, [tb])
    assert r.resolve(CoreRelo(0, le, "0", K.ENUMVAL_EXISTS)).new_val == 1
    assert r.resolve(CoreRelo(0, le, "2", K.ENUMVAL_EXISTS)).new_val == 0
    a = r.resolve(CoreRelo(0, le, "0", K.ENUMVAL_VALUE))
    assert (a.orig_val, a.new_val) == (1, 10)
    assert str(a.target_spec).endswith("::A = 10")
    b = r.resolve(CoreRelo(0, le, "1", K.ENUMVAL_VALUE))
    assert b.new_val == (1 << 64) - 5  # s32 widened to u64, as libbpf does
    alu = prog(I.Insn(MOV64_IMM, 1, 0, 0, 2))
    r.apply(alu, b.relo, b)
    assert I.get(alu, 0).imm == -5
    gone = r.resolve(CoreRelo(0, le, "2", K.ENUMVAL_VALUE))
    assert gone.poison
    h = r.resolve(CoreRelo(0, le64, "0", K.ENUMVAL_VALUE))
    assert (h.orig_val, h.new_val) == (1 << 40, (1 << 63) + 7)
    insns = prog(*ldimm64(2, 1 << 40))
    r.apply(insns, h.relo, h)
    lo, hi = I.get(insns, 0), I.get(insns, 1)
    assert (lo.imm & 0xFFFFFFFF) | ((hi.imm & 0xFFFFFFFF) << 32) == (1 << 63) + 7
    assert lo.dst == 2 and lo.code == I.LD_IMM64 and hi.code == 0
    with pytest.raises(CORERelocationError, match="LDIMM64"):
        r.apply(prog(*ldimm64(2, 1 << 41)), h.relo, h)  # orig value mismatch
    with pytest.raises(CORERelocationError, match="unexpected form"):
        r.apply(prog(*ldimm64(2, 1 << 40, src=1)), h.relo, h)
    with pytest.raises(CORERelocationError, match="unexpected form"):
        r.apply(prog(ldimm64(2, 1 << 40)[0]), h.relo, h)  # truncated


def test_enum_vs_enum64_candidates():
    lb, _ = btf()
    le = lb.add(Enum("e", 4, [EnumValue("V", 1)]))
    tb, _ = btf()
    tb.add(Enum64("e", 8, [EnumValue("V", 1 << 33)]))
    res = resolve(lb, [tb], le, "0", K.ENUMVAL_VALUE)
    assert res.new_val == 1 << 33


# -- flavors, ambiguity, candidate cache ----------------------------------------------


def test_flavors_select_variant():
    lb, lt = btf()
    v1 = lb.add(Struct("task___v1", 8, [Member("state", lt.long, 0)]))
    v2 = lb.add(Struct("task___v2", 4, [Member("__state", lt.uint, 0)]))
    tb, tt = btf()
    tb.add(Struct("task", 16, [Member("x", tt.long, 0), Member("__state", tt.uint, 64)]))
    r = CoreRelocator(lb, [tb])
    assert r.resolve(CoreRelo(0, v1, "0:0", K.FIELD_EXISTS)).new_val == 0
    assert r.resolve(CoreRelo(0, v2, "0:0", K.FIELD_EXISTS)).new_val == 1
    assert r.resolve(CoreRelo(0, v2, "0:0", K.FIELD_BYTE_OFFSET)).new_val == 8
    assert r.resolve(CoreRelo(0, v1, "0:0", K.FIELD_BYTE_OFFSET)).poison


def test_essential_name_rule():
    assert core_essential("task_struct___v1") == "task_struct"
    assert core_essential("a___b___c") == "a___b"
    assert core_essential("____x") == "____x"
    assert core_essential("a____b") == "a____b"
    assert core_essential("x___") == "x___"


def test_target_flavors_and_offset_ambiguity():
    lb, lt = btf()
    ls = lb.add(Struct("s", 4, [Member("a", lt.int, 0)]))
    tb, tt = btf()
    tb.add(Struct("s___one", 4, [Member("a", tt.int, 0)]))
    tb.add(Struct("s___two", 8, [Member("b", tt.int, 0), Member("a", tt.int, 32)]))
    with pytest.raises(CORERelocationError, match="field offset ambiguity"):
        resolve(lb, [tb], ls, "0:0", K.FIELD_BYTE_OFFSET)


def test_decision_ambiguity_and_identical_duplicates():
    lb, lt = btf()
    ls = lb.add(Struct("s", 4, [Member("a", lt.int, 0)]))
    tb, tt = btf()
    tb.add(Struct("s", 8, [Member("a", tt.long, 0)]))
    tb.add(Struct("s___dup", 4, [Member("a", tt.int, 0)]))
    # same offset, different size: "relocation decision ambiguity" is an error, not poison
    with pytest.raises(CORERelocationError, match="decision ambiguity"):
        resolve(lb, [tb], ls, "0:0", K.FIELD_BYTE_SIZE)
    # same offset and same value: fine
    res = resolve(lb, [tb], ls, "0:0", K.FIELD_BYTE_OFFSET)
    assert res.new_val == 0 and len([c for c in res.candidates if c.matched]) == 2
    # two candidates with different type ids are ambiguous for TYPE_ID_TARGET
    with pytest.raises(CORERelocationError, match="decision ambiguity"):
        resolve(lb, [tb], ls, "0", K.TYPE_ID_TARGET)


def test_candidate_cache_is_pruned_like_libbpf():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    tb, tt = btf()
    one = tb.add(Struct("s___one", 4, [Member("a", tt.int, 0)]))
    two = tb.add(Struct("s___two", 8, [Member("a", tt.int, 0), Member("b", tt.int, 32)]))
    r = CoreRelocator(lb, [tb])
    assert r.find_candidates(ls) == [(0, one), (0, two)]
    first = r.resolve(CoreRelo(0, ls, "0:1", K.FIELD_BYTE_OFFSET))
    assert [(c.type_id, c.matched) for c in first.candidates] == [(one, False), (two, True)]
    assert "field 'b' not found" in first.candidates[0].reason
    assert r.find_candidates(ls) == [(0, two)]
    # s___one would match this one too, but libbpf no longer tries it
    second = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    assert [c.type_id for c in second.candidates] == [two]
    assert any("pruned" in e for e in second.explain)
    # a relocation with no match leaves the cached list alone
    r.resolve(CoreRelo(0, ls, "1:1", K.FIELD_EXISTS))
    assert r.find_candidates(ls) == [(0, two)]


def test_kind_filter_and_incompatible_field():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("p", lb.add(Ptr(lt.int)), 0)]))
    tb, tt = btf()
    tb.add(Union_("s", 4, [Member("a", tt.int, 0)]))  # wrong kind: not a candidate
    tstruct = tb.add(Struct("s", 8, [Member("a", tb.add(Struct("x", 4, [])), 0),
                                     Member("p", tt.long, 0)]))
    r = CoreRelocator(lb, [tb])
    assert r.find_candidates(ls) == [(0, tstruct)]
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    assert res.poison
    assert "incompatible type" in res.candidates[0].reason


def test_modules_searched_only_without_vmlinux_candidates():
    vb, vt = btf()
    vb.add(Struct("core_s", 4, [Member("a", vt.int, 0)]))
    mod = BTF(base=vb)
    mid = mod.add(Struct("mod_s", 8, [Member("x", vt.int, 0), Member("a", vt.int, 32)]))
    mod.add(Struct("core_s", 8, [Member("x", vt.int, 0), Member("a", vt.int, 32)]))
    lb, lt = btf()
    lc = lb.add(Struct("core_s", 4, [Member("a", lt.int, 0)]))
    lm = lb.add(Struct("mod_s", 4, [Member("a", lt.int, 0)]))
    r = CoreRelocator(lb, [vb, mod])
    assert r.resolve(CoreRelo(0, lc, "0:0", K.FIELD_BYTE_OFFSET)).new_val == 0
    res = r.resolve(CoreRelo(0, lm, "0:0", K.FIELD_BYTE_OFFSET))
    assert res.new_val == 4 and res.target == 1 and res.target_spec.root_type_id == mid


# -- poisoning -----------------------------------------------------------------------


def test_missing_type_poisons_bytes():
    lb, lt = btf()
    ls = lb.add(Struct("gone", 4, [Member("a", lt.int, 0)]))
    tb, _ = btf()
    r = CoreRelocator(lb, [tb])
    res = r.resolve(CoreRelo(0, ls, "0:0", K.FIELD_BYTE_OFFSET))
    assert res.poison and res.target_spec is None and not res.candidates
    insns = prog(I.Insn(LDX_W, 3, 4, 0, 0), I.Insn(MOV64_IMM, 0, 0, 0, 0))
    r.apply(insns, res.relo, res)
    assert bytes(insns[:8]) == bytes.fromhex("8500000010 23ad0b".replace(" ", ""))
    assert I.get(insns, 1) == I.Insn(MOV64_IMM, 0, 0, 0, 0)
    # ld_imm64: both halves become the poison call
    ld = prog(*ldimm64(1, 0), I.Insn(I.BPF_JMP | I.BPF_EXIT, 0, 0, 0, 0))
    r.apply(ld, res.relo, res)
    assert I.get(ld, 0) == POISON and I.get(ld, 1) == POISON
    assert I.get(ld, 2).code == I.BPF_JMP | I.BPF_EXIT


def test_orig_value_mismatch_and_bad_insns():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    r = CoreRelocator(lb, [lb])
    res = r.resolve(CoreRelo(0, ls, "0:1", K.FIELD_BYTE_OFFSET))
    with pytest.raises(CORERelocationError, match="ALU.*got 8, exp 4"):
        r.apply(prog(I.Insn(MOV64_IMM, 1, 0, 0, 8)), res.relo, res)
    with pytest.raises(CORERelocationError, match="LDX/ST/STX"):
        r.apply(prog(I.Insn(LDX_W, 1, 2, 0, 0)), res.relo, res)
    with pytest.raises(CORERelocationError, match="register source"):
        r.apply(prog(I.Insn(I.BPF_ALU64 | I.BPF_ADD | I.BPF_X, 1, 2, 0, 4)), res.relo, res)
    with pytest.raises(CORERelocationError, match="unrecognized insn"):
        r.apply(prog(I.Insn(I.BPF_JMP | I.BPF_EXIT, 0, 0, 0, 4)), res.relo, res)
    with pytest.raises(CORERelocationError, match="out of range"):
        r.apply(prog(I.Insn(MOV64_IMM, 1, 0, 0, 4)), CoreRelo(5, ls, "0:1", 0), res)


def test_relocate_program():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    gone = lb.add(Struct("gone", 4, [Member("a", lt.int, 0)]))
    tb, tt = btf()
    tb.add(Struct("s", 16, [Member("b", tt.int, 0), Member("a", tt.int, 96)]))
    insns = prog(I.Insn(MOV64_IMM, 0, 0, 0, 0), I.Insn(LDX_W, 1, 1, 4, 0),
                 I.Insn(MOV64_IMM, 2, 0, 0, 0), I.Insn(MOV64_IMM, 3, 0, 0, 1))
    relos = [CoreRelo(11, ls, "0:1", K.FIELD_BYTE_OFFSET),
             CoreRelo(12, ls, "0:0", K.FIELD_BYTE_OFFSET),
             CoreRelo(13, gone, "0", K.TYPE_EXISTS)]
    out = CoreRelocator(lb, [tb]).relocate(insns, relos, "p", insn_offset=10)
    assert [r.new_val for r in out] == [0, 12, 0]
    got = I.iter_insns(insns)
    assert got[1].off == 0 and got[2].imm == 12 and got[3].imm == 0
    with pytest.raises(CORERelocationError, match="outside the program"):
        CoreRelocator(lb, [tb]).relocate(insns, [CoreRelo(3, ls, "0:1", 0)], "p", 10)


def test_patch_insn_function_directly():
    lb, lt = btf()
    ls = lb.add(Struct("s", 4, [Member("a", lt.int, 0)]))
    res = resolve(lb, [lb], ls, "0", K.TYPE_SIZE)
    insns = prog(I.Insn(MOV64_IMM, 1, 0, 0, 4))
    patch_insn(insns, 0, res)
    assert I.get(insns, 0).imm == 4


# -- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize("access,kind,match", [
    ("", K.FIELD_BYTE_OFFSET, "access string"),
    (":0", K.FIELD_BYTE_OFFSET, "access string"),
    ("0:", K.FIELD_BYTE_OFFSET, "access string"),
    ("0::1", K.FIELD_BYTE_OFFSET, "access string"),
    ("x", K.FIELD_BYTE_OFFSET, "access string"),
    ("0:1x", K.FIELD_BYTE_OFFSET, "access string"),
    ("-1", K.FIELD_BYTE_OFFSET, "bad index"),
    ("0:99", K.FIELD_BYTE_OFFSET, "member index 99"),
    ("0:0:1", K.FIELD_BYTE_OFFSET, "unexpected kind int"),
    (":".join(["0"] * 65), K.FIELD_BYTE_OFFSET, "too long"),
    ("1", K.TYPE_SIZE, "'0'"),
    ("0:0", K.TYPE_EXISTS, "'0'"),
    ("0", K.ENUMVAL_VALUE, "enumerator"),
    ("0", 77, "unknown relocation kind"),
])
def test_malformed_access(access, kind, match):
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    with pytest.raises(CORERelocationError, match=match):
        resolve(lb, [lb], ls, access, kind)
    if kind in (K.FIELD_BYTE_OFFSET,):
        with pytest.raises(CORERelocationError):
            parse_spec(lb, CoreRelo(0, ls, access, kind))


def test_sscanf_quirks_accepted_like_libbpf():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    # sscanf("%d") skips blanks and takes a sign: "0 1" and "0:+1" parse as 0:1
    for access in ("0 1", "0:+1", "00:01"):
        assert parse_spec(lb, CoreRelo(0, ls, access, 0)).raw_spec == [0, 1]


def test_bad_type_ids_and_enum_index():
    lb, lt = btf()
    le = lb.add(Enum("e", 4, [EnumValue("A", 0)]))
    with pytest.raises(CORERelocationError, match="type id"):
        resolve(lb, [lb], 999, "0:0", K.FIELD_BYTE_OFFSET)
    with pytest.raises(CORERelocationError, match="enumerator"):
        resolve(lb, [lb], le, "1", K.ENUMVAL_EXISTS)
    with pytest.raises(CORERelocationError, match="enumerator"):
        resolve(lb, [lb], le, "0:0", K.ENUMVAL_EXISTS)
    ls = lb.add(Struct("s", 4, [Member("a", lt.int, 0)]))
    with pytest.raises(CORERelocationError):
        resolve(lb, [lb], ls, "0", K.ENUMVAL_EXISTS)  # not an enum
    # anonymous local type: only TYPE_ID_LOCAL works
    anon = lb.add(Struct("", 4, [Member("a", lt.int, 0)]))
    assert resolve(lb, [lb], anon, "0", K.TYPE_ID_LOCAL).new_val == anon
    with pytest.raises(CORERelocationError, match="anonymous"):
        resolve(lb, [lb], anon, "0", K.TYPE_EXISTS)


def test_modifier_loop_is_an_error():
    b, t = btf()
    td = b.add(Typedef("loop", 0))
    b.replace(td, Typedef("loop", td))
    s = b.add(Struct("s", 4, [Member("a", td, 0)]))
    with pytest.raises(CORERelocationError):
        resolve(b, [b], s, "0:0", K.FIELD_BYTE_OFFSET)


@settings(max_examples=200, deadline=None)
@given(access=st.text(alphabet="0123456789:-+ x", max_size=12),
       kind=st.integers(min_value=0, max_value=14))
def test_fuzz_access_strings_only_raise_core_errors(access, kind):
    lb, lt = btf()
    arr = lb.add(Array(lt.int, lt.int, 3))
    ls = lb.add(Struct("s", 16, [Member("a", lt.int, 0), Member("arr", arr, 32)]))
    try:
        res = resolve(lb, [lb], ls, access, kind)
    except CORERelocationError:
        return
    assert isinstance(res.new_val, int)
    insns = prog(I.Insn(MOV64_IMM, 1, 0, 0, res.orig_val & 0x7FFFFFFF))
    try:
        CoreRelocator(lb, [lb]).apply(insns, res.relo, res)
    except CORERelocationError:
        pass


def test_looping_array_types_do_not_hang():
    b, t = btf()
    arr = b.add(Array(0, t.int, 1))
    b.replace(arr, Array(arr, t.int, 1))
    s = b.add(Struct("s", 4, [Member("a", arr, 0)]))
    with pytest.raises(CORERelocationError):
        resolve(b, [b], s, "0:0", K.FIELD_EXISTS)


_NAMES = ["", "s", "s___a", "s___b", "t", "int", "e", "x", "y"]


@st.composite
def _random_btf(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    ref = st.integers(min_value=0, max_value=n + 1)  # may point past the end
    name = st.sampled_from(_NAMES)
    members = st.lists(st.builds(Member, name, ref, st.integers(0, 96),
                                 st.integers(0, 70)), max_size=4)
    one = st.one_of(
        st.builds(Int, name, st.sampled_from([1, 2, 4, 8]), st.integers(0, 7)),
        st.builds(Ptr, ref),
        st.builds(Array, ref, ref, st.integers(0, 5)),
        st.builds(Struct, name, st.integers(0, 16), members, st.booleans()),
        st.builds(Union_, name, st.integers(0, 16), members, st.booleans()),
        st.builds(Enum, name, st.sampled_from([4, 8]),
                  st.lists(st.builds(EnumValue, name, st.integers(-2**31, 2**31 - 1)),
                           max_size=3), st.booleans()),
        st.builds(Enum64, name, st.just(8),
                  st.lists(st.builds(EnumValue, name, st.integers(0, 2**64 - 1)),
                           max_size=3)),
        st.builds(Typedef, name, ref),
        st.builds(Const, ref),
        st.builds(Fwd, name, st.booleans()),
        st.builds(Float, name, st.just(8)),
        st.builds(FuncProto, ref, st.lists(st.builds(Param, name, ref), max_size=2)),
    )
    return BTF(draw(st.lists(one, min_size=n, max_size=n)))


@settings(max_examples=int(os.environ.get("CORE_FUZZ_EXAMPLES", examples(100))), deadline=None)
@given(local=_random_btf(), target=_random_btf(), type_id=st.integers(0, 9),
       access=st.sampled_from(["0", "0:0", "0:1", "1", "0:0:0", "0:1:2", "2:0", "0:0:1:0"]),
       kind=st.integers(0, 12))
def test_fuzz_random_btf_only_raises_core_errors(local, target, type_id, access, kind):
    r = CoreRelocator(local, [target])
    try:
        res = r.resolve(CoreRelo(0, type_id, access, kind))
    except CORERelocationError:
        return
    str(res)
    insns = prog(I.Insn(MOV64_IMM, 1, 0, 0, 0), *ldimm64(1, 0), I.Insn(LDX_W, 1, 2, 0, 0))
    for idx in (0, 1, 3):
        try:
            patch_insn(insns, idx, res)
        except CORERelocationError:
            pass


def test_resolve_all_in_section_order():
    lb, lt = btf()
    ls = lb.add(Struct("s", 8, [Member("a", lt.int, 0), Member("b", lt.int, 32)]))
    tb, tt = btf()
    tb.add(Struct("s___one", 16, [Member("x", tt.long, 0), Member("a", tt.int, 64)]))
    tb.add(Struct("s___two", 8, [Member("a", tt.int, 0), Member("b", tt.int, 32)]))
    relos = [CoreRelo(0, ls, "0:1", K.FIELD_BYTE_OFFSET), CoreRelo(7, ls, "0:0", K.FIELD_BYTE_OFFSET)]
    # "b" first prunes s___one, so "a" is not ambiguous (libbpf's behaviour)
    res = CoreRelocator(lb, [tb]).resolve_all(relos, lambda r: f"p{r.insn_off}")
    assert [r.new_val for r in res] == [4, 0]
    # in the other order "a" matches both flavours at different offsets
    with pytest.raises(CORERelocationError, match="p7: CO-RE relo #0: field offset ambiguity"):
        CoreRelocator(lb, [tb]).resolve_all(relos[::-1], lambda r: f"p{r.insn_off}")
