"""BTF parser/writer unit tests: every kind from hand-built bytes, header checks, sanitize."""

from __future__ import annotations

import os
import struct

import pytest

from pyebpf.btf import formats
from pyebpf.btf.spec import BTF, decode_type, record_words
from pyebpf.btf.types import (
    INT_SIGNED,
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    Enum64,
    EnumValue,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Linkage,
    Member,
    Param,
    Ptr,
    Restrict,
    Struct,
    Typedef,
    TypeTag,
    Union_,
    Var,
    VarSecinfo,
    Void,
    Volatile,
)
from pyebpf.btf.write import Features, fixup_datasec, marshal, marshal_with_offsets
from pyebpf.errors import BTFError

VMLINUX = "/sys/kernel/btf/vmlinux"


class Strings:
    """A string table built in test code, independent of the writer."""

    def __init__(self) -> None:
        self.buf = bytearray(b"\0")
        self.off: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        if s not in self.off:
            self.off[s] = len(self.buf)
            self.buf += s.encode() + b"\0"
        return self.off[s]


def info(kind: int, vlen: int = 0, kflag: int = 0) -> int:
    return kflag << 31 | kind << 24 | vlen


def blob(words: list[int], strs: Strings, *, hdr_len: int = 24) -> bytes:
    types = struct.pack(f"<{len(words)}I", *words)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(types), len(types), len(strs.buf))
    return hdr + bytes(hdr_len - 24) + types + bytes(strs.buf)


def roundtrip(data: bytes) -> BTF:
    btf = BTF.from_bytes(data)
    again = BTF.from_bytes(marshal(btf))
    assert list(again) == list(btf)
    assert marshal(again) == marshal(btf)
    return btf


# -- every kind, from hand-written words ---------------------------------------------


def test_int_and_float() -> None:
    s = Strings()
    w = [s("int"), info(1), 4, (INT_SIGNED << 24) | 32]
    w += [s("bf"), info(1), 1, (0 << 24) | (2 << 16) | 3]
    w += [s("u128"), info(1), 16, 128]
    w += [s("double"), info(16), 8]
    btf = roundtrip(blob(w, s))
    assert btf.type(1) == Int("int", 4, INT_SIGNED, 32, 0)
    assert btf.type(1).signed
    assert btf.type(2) == Int("bf", 1, 0, 3, 2)
    assert btf.type(3).bits == 128
    assert btf.type(4) == Float("double", 8)
    assert isinstance(btf.type(0), Void) and len(btf) == 5


def test_ptr_array_modifiers() -> None:
    s = Strings()
    w = [s("int"), info(1), 4, 32]  # 1
    w += [0, info(2), 1]  # 2 ptr
    w += [0, info(3), 0, 1, 1, 10]  # 3 array
    w += [s("T"), info(8), 3]  # 4 typedef
    w += [0, info(9), 4]  # 5 volatile
    w += [0, info(10), 5]  # 6 const
    w += [0, info(11), 2]  # 7 restrict
    w += [s("user"), info(18), 2]  # 8 type_tag
    btf = roundtrip(blob(w, s))
    assert btf.type(2) == Ptr(1)
    assert btf.type(3) == Array(1, 1, 10)
    assert btf.type(4) == Typedef("T", 3)
    assert btf.type(5) == Volatile(4)
    assert btf.type(6) == Const(5)
    assert btf.type(7) == Restrict(2)
    assert btf.type(8) == TypeTag("user", 2)


def test_hand_written_header_matches_construct() -> None:
    from pyebpf.btf.write import header

    raw = header(1234, 56)
    assert raw == formats.btf_header.build(dict(
        magic=0xEB9F, version=1, flags=0, hdr_len=24, type_off=0, type_len=1234, str_off=1234,
        str_len=56))


def test_attribute_tags_keep_kind_flag() -> None:
    # vmlinux carries TYPE_TAG "address_space(1)" with kind_flag set (an __attribute__ tag)
    s = Strings()
    w = [s("int"), info(1), 4, 32]  # 1
    w += [s("address_space(1)"), info(18, 0, 1), 1]  # 2 attribute type_tag
    w += [s("packed"), info(17, 0, 1), 1, 0xFFFFFFFF]  # 3 attribute decl_tag
    btf = roundtrip(blob(w, s))
    assert btf.type(2) == TypeTag("address_space(1)", 1, attr=True)
    assert btf.type(3) == DeclTag("packed", 1, -1, attr=True)
    assert marshal(btf) == blob(w, s)


def test_struct_union_bitfields() -> None:
    s = Strings()
    w = [s("int"), info(1), 4, 32]
    w += [s("plain"), info(4, 2), 8, s("a"), 1, 0, s("b"), 1, 32]
    # kind_flag: offset = bitfield_size << 24 | bit_offset
    w += [s("bits"), info(4, 2, 1), 4, s("x"), 1, 3 << 24 | 0, s("y"), 1, 5 << 24 | 3]
    w += [s("u"), info(5, 1), 4, s("a"), 1, 0]
    btf = roundtrip(blob(w, s))
    assert btf.type(2) == Struct("plain", 8, [Member("a", 1, 0), Member("b", 1, 32)])
    t = btf.type(3)
    assert t.bitfield_encoding and t.members == [Member("x", 1, 0, 3), Member("y", 1, 3, 5)]
    assert btf.type(4) == Union_("u", 4, [Member("a", 1, 0)])


def test_enum_signedness() -> None:
    s = Strings()
    w = [s("u"), info(6, 2), 4, s("A"), 0xFFFFFFFF, s("B"), 1]
    w += [s("sgn"), info(6, 2, 1), 4, s("C"), 0xFFFFFFFF, s("D"), 0x80000000]
    btf = roundtrip(blob(w, s))
    assert btf.type(1) == Enum("u", 4, [EnumValue("A", 0xFFFFFFFF), EnumValue("B", 1)], False)
    assert btf.type(2).values == [EnumValue("C", -1), EnumValue("D", -(1 << 31))]
    assert btf.type(2).signed


def test_enum64_signedness() -> None:
    s = Strings()
    w = [s("u64e"), info(19, 2), 8, s("A"), 0xFFFFFFFF, 0xFFFFFFFF, s("B"), 1, 2]
    w += [s("s64e"), info(19, 2, 1), 8, s("C"), 0xFFFFFFFF, 0xFFFFFFFF, s("D"), 0, 0x80000000]
    btf = roundtrip(blob(w, s))
    assert btf.type(1).values == [EnumValue("A", (1 << 64) - 1), EnumValue("B", 2 << 32 | 1)]
    assert btf.type(2).values == [EnumValue("C", -1), EnumValue("D", -(1 << 63))]


def test_fwd_func_proto_var_datasec_decl_tag() -> None:
    s = Strings()
    w = [s("int"), info(1), 4, 32]  # 1
    w += [s("fs"), info(7), 0]  # 2 fwd struct
    w += [s("fu"), info(7, 0, 1), 0]  # 3 fwd union
    w += [0, info(13, 3), 1, s("a"), 1, s("b"), 2, 0, 0]  # 4 proto(int a, fs b, ...)
    w += [s("f"), info(12, 1), 4]  # 5 global func
    w += [s("v"), info(14), 1, 1]  # 6 var global
    w += [s(".data"), info(15, 1), 4, 6, 0, 4]  # 7 datasec
    w += [s("tag"), info(17), 5, 0xFFFFFFFF]  # 8 decl_tag -1
    w += [s("ptag"), info(17), 5, 1]  # 9 decl_tag on param 1
    btf = roundtrip(blob(w, s))
    assert btf.type(2) == Fwd("fs", False)
    assert btf.type(3) == Fwd("fu", True)
    assert btf.type(4) == FuncProto(1, [Param("a", 1), Param("b", 2), Param("", 0)])
    assert btf.type(5) == Func("f", 4, Linkage.GLOBAL)
    assert btf.type(6) == Var("v", 1, Linkage.GLOBAL)
    assert btf.type(7) == Datasec(".data", 4, [VarSecinfo(6, 0, 4)])
    assert btf.type(8) == DeclTag("tag", 5, -1)
    assert btf.type(9) == DeclTag("ptag", 5, 1)


def test_record_words() -> None:
    assert record_words(Kind.INT, 0) == 4
    assert record_words(Kind.PTR, 0) == 3
    assert record_words(Kind.ARRAY, 0) == 6
    assert record_words(Kind.STRUCT, 2) == 9
    assert record_words(Kind.ENUM, 3) == 9
    assert record_words(Kind.ENUM64, 3) == 12
    assert record_words(Kind.FUNC_PROTO, 2) == 7
    assert record_words(Kind.DATASEC, 1) == 6
    assert record_words(Kind.DECL_TAG, 0) == 4
    assert record_words(Kind.FUNC, 2) == 3  # vlen is the linkage, no trailing data
    for bad in (0, 20, 31, -1, 99):
        with pytest.raises(BTFError):
            record_words(bad, 0)


def test_decode_type_direct() -> None:
    s = Strings()
    w = [s("x"), info(1), 4, 32, 0, info(2), 1]
    words = memoryview(struct.pack("<7I", *w)).cast("I")
    names = {v: k for k, v in s.off.items()}
    t, nxt = decode_type(words, 0, names.__getitem__)
    assert t == Int("x", 4) and nxt == 4
    t, nxt = decode_type(words, 4, names.__getitem__)
    assert t == Ptr(1) and nxt == 7
    with pytest.raises(BTFError):
        decode_type(words[:6], 4, names.__getitem__)
    with pytest.raises(BTFError):
        decode_type(words, 5, names.__getitem__)  # info word as header: kind unknown


# -- header validation ------------------------------------------------------------------


def small() -> bytes:
    s = Strings()
    return blob([s("int"), info(1), 4, 32, 0, info(2), 1], s)


def test_header_checks() -> None:
    good = small()
    BTF.from_bytes(good)
    with pytest.raises(BTFError, match="big-endian"):
        BTF.from_bytes(b"\xeb\x9f" + good[2:])
    with pytest.raises(BTFError, match="magic"):
        BTF.from_bytes(b"\x00\x00" + good[2:])
    with pytest.raises(BTFError, match="version"):
        BTF.from_bytes(good[:2] + b"\x02" + good[3:])
    with pytest.raises(BTFError):
        BTF.from_bytes(good[:10])
    # hdr_len larger than 24 with zero padding is fine (newer header, nothing unknown set)
    s = Strings()
    BTF.from_bytes(blob([s("int"), info(1), 4, 32], s, hdr_len=32))
    # string section must end in NUL and start with ""
    with pytest.raises(BTFError):
        BTF.from_bytes(good[:-1] + b"x")
    bad = bytearray(good)
    bad[24 + 28] = ord("x")  # first byte of the string section
    with pytest.raises(BTFError):
        BTF.from_bytes(bytes(bad))
    # type_len not a multiple of 4
    bad = bytearray(good)
    struct.pack_into("<I", bad, 12, 27)
    with pytest.raises(BTFError):
        BTF.from_bytes(bytes(bad))
    # str_len past the end
    bad = bytearray(good)
    struct.pack_into("<I", bad, 20, 1000)
    with pytest.raises(BTFError):
        BTF.from_bytes(bytes(bad))


def test_dangling_reference_rejected() -> None:
    s = Strings()
    with pytest.raises(BTFError, match="refers to type id 9"):
        BTF.from_bytes(blob([0, info(2), 9], s))


def test_bad_name_offset_rejected() -> None:
    s = Strings()
    with pytest.raises(BTFError, match="string offset"):
        BTF.from_bytes(blob([999, info(1), 4, 32], s))


def test_every_truncation_and_byte_flip_raises_only_btferror() -> None:
    s = Strings()
    w = [s("int"), info(1), 4, 32, s("st"), info(4, 2, 1), 8, s("a"), 1, 3 << 24, s("b"), 1, 32]
    w += [s("e"), info(19, 1, 1), 8, s("V"), 1, 2, s("t"), info(17), 2, 0]
    w += [s(".data"), info(15, 1), 4, 6, 0, 4, s("v"), info(14), 1, 1]
    data = blob(w, s)
    BTF.from_bytes(data)
    for n in range(len(data)):
        with pytest.raises(BTFError):
            BTF.from_bytes(data[:n])
    for i in range(len(data)):
        for v in (0x00, 0xFF, 0x80, 0x13):
            mutated = bytearray(data)
            mutated[i] = v
            try:
                BTF.from_bytes(bytes(mutated))
            except BTFError:
                pass


# -- container -------------------------------------------------------------------------


def test_container_add_find_candidates() -> None:
    btf = BTF()
    i = btf.add(Int("int", 4, INT_SIGNED))
    a = btf.add(Struct("task", 4, [Member("pid", i, 0)]))
    b = btf.add(Struct("task___v2", 4, []))
    assert btf.find("task") == [a]
    c = btf.add(Typedef("task", a))
    assert btf.find("task") == [a, c]
    assert btf.find("task", Kind.STRUCT) == [a]
    assert btf.candidates("task") == [a, b, c]
    assert btf.candidates("") == []
    assert len(btf) == 5
    with pytest.raises(BTFError):
        btf.type(5)
    with pytest.raises(BTFError):
        btf.type(-1)
    with pytest.raises(BTFError):
        btf.add(Void())
    again = BTF.from_bytes(btf.to_bytes())
    assert list(again) == list(btf)


def test_split_btf() -> None:
    base = BTF()
    i = base.add(Int("int", 4, INT_SIGNED))
    base = BTF.from_bytes(base.to_bytes())
    split = BTF(base=base)
    p = split.add(Ptr(i))
    st = split.add(Struct("s", 8, [Member("p", p, 0), Member("int", i, 0)]))
    assert (p, st) == (2, 3)
    data = marshal(split)
    hdr = formats.btf_header.parse(data)
    strs = data[24 + hdr.str_off:]
    # Own strings only: "int" is shared with the base, as libbpf does.
    assert strs == b"s\0p\0"
    parsed = BTF.from_bytes(data, base=base)
    assert len(parsed) == 4
    assert parsed.type(1) == Int("int", 4, INT_SIGNED)
    assert parsed.type(3) == Struct("s", 8, [Member("p", 2, 0), Member("int", 1, 0)])
    assert parsed.find("int") == [1]
    assert parsed.string(1) == "int"  # base string reachable through the split
    with pytest.raises(BTFError):
        BTF.from_bytes(data)  # without the base the references dangle


def test_marshal_with_offsets_extra_strings() -> None:
    btf = BTF([Void(), Int("int", 4)])
    data, offs = marshal_with_offsets(btf, extra_strings=["file.c", "int"])
    parsed = BTF.from_bytes(data)
    assert parsed.string(offs["file.c"]) == "file.c"
    assert offs["int"] == 1 and offs[""] == 0


def test_marshal_rejects_out_of_range_values() -> None:
    for t in (Enum("e", 4, [EnumValue("x", 1 << 32)]), Int("i", 4, 0, 200),
              Struct("s", 4, [Member("m", 0, 0, 3)]), Enum64("e", 8, [EnumValue("x", 1 << 64)])):
        with pytest.raises(BTFError):
            marshal(BTF([Void(), t]))
    with pytest.raises(BTFError):
        marshal(BTF([Void(), Ptr(1 << 32)]))


# -- construct descriptions agree with the hand-written decoder ------------------------


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_construct_matches_decoder_on_vmlinux_prefix() -> None:
    data = open(VMLINUX, "rb").read()
    hdr = formats.btf_header.parse(data)
    btf = BTF.from_bytes(data)
    types = data[hdr.hdr_len + hdr.type_off:hdr.hdr_len + hdr.type_off + hdr.type_len]
    pos = 0
    rec = formats.btf_type
    for tid in range(1, 3000):
        c = rec.parse(types[pos:])
        pos += 12 + 4 * (record_words(c.kind, c.vlen) - 3)
        t = btf.type(tid)
        assert c.kind == t.kind and btf.string(c.name_off) == t.name
        if t.kind in (Kind.STRUCT, Kind.UNION):
            assert [m.type for m in t.members] == [m.type for m in c.data]
        elif t.kind == Kind.ENUM64:
            assert [v.value & ((1 << 64) - 1) for v in t.values] == [v.val for v in c.data]


# -- sanitize ---------------------------------------------------------------------------


def every_kind() -> BTF:
    btf = BTF()
    i = btf.add(Int("int", 4, INT_SIGNED))  # 1
    p = btf.add(Ptr(i))  # 2
    btf.add(Array(i, i, 4))  # 3
    st = btf.add(Struct("st", 8, [Member("a", i, 0, 3), Member("b", p, 32, 0)], True))  # 4
    btf.add(Union_("un", 4, [Member("x", i, 0)]))  # 5
    btf.add(Enum("en", 4, [EnumValue("NEG", -1), EnumValue("POS", 2)], True))  # 6
    btf.add(Fwd("fw", True))  # 7
    td = btf.add(Typedef("td", st))  # 8
    btf.add(Volatile(td))  # 9
    btf.add(Const(i))  # 10
    btf.add(Restrict(p))  # 11
    fp = btf.add(FuncProto(i, [Param("x", i)]))  # 12
    fn = btf.add(Func("fn", fp, Linkage.GLOBAL))  # 13
    v = btf.add(Var("v", i, Linkage.GLOBAL))  # 14
    btf.add(Datasec("?.data.x", 4, [VarSecinfo(v, 0, 4)]))  # 15
    btf.add(Float("float", 4))  # 16
    btf.add(DeclTag("dt", fn, 0))  # 17
    tt = btf.add(TypeTag("user", i))  # 18
    btf.add(Ptr(tt))  # 19
    btf.add(Enum64("e64", 8, [EnumValue("BIG", 1 << 40), EnumValue("M1", -1)], True))  # 20
    return btf


def test_sanitize_nothing_by_default() -> None:
    btf = every_kind()
    assert marshal(btf, sanitize=Features()) == marshal(btf)


def test_sanitize_old_kernel_rewrites() -> None:
    btf = every_kind()
    before = list(btf)
    out = BTF.from_bytes(marshal(btf, sanitize=Features.none()))
    assert list(btf) == before  # input untouched
    assert len(out) == len(btf) + 1  # enum64 placeholder appended
    ph = len(btf)
    assert out.type(ph) == Int("enum64_placeholder", 1, 0, 8)
    assert out.type(14) == Int("v", 1, 0, 8)  # VAR -> INT size 1
    assert out.type(17) == Int("dt", 1, 0, 8)  # DECL_TAG -> INT
    assert out.type(15) == Struct("__data_x", 4, [Member("v", 14, 0)])  # DATASEC -> STRUCT
    assert out.type(12) == Enum("", 4, [EnumValue("x", 1)])  # FUNC_PROTO -> ENUM
    assert out.type(13) == Typedef("fn", 12)  # FUNC -> TYPEDEF
    assert out.type(16) == Struct("", 4, [])  # FLOAT -> anonymous empty STRUCT
    assert out.type(18) == Const(1)  # TYPE_TAG -> CONST
    assert out.type(6) == Enum("en", 4, [EnumValue("NEG", 0xFFFFFFFF), EnumValue("POS", 2)])
    assert out.type(20) == Union_("e64", 8, [Member("BIG", ph, 0), Member("M1", ph, 0)])


def test_sanitize_partial() -> None:
    btf = every_kind()
    f = Features(has_func_global=False, has_qmark_datasec=False)
    out = BTF.from_bytes(marshal(btf, sanitize=f))
    assert out.type(13) == Func("fn", 12, Linkage.STATIC)
    assert out.type(15).name == "_.data.x"
    assert out.type(20) == btf.type(20)
    assert len(out) == len(btf)


# -- fixup_datasec ----------------------------------------------------------------------


def test_fixup_datasec() -> None:
    btf = BTF()
    i = btf.add(Int("int", 4, INT_SIGNED))
    a = btf.add(Var("a", i, Linkage.GLOBAL))
    b = btf.add(Var("b", i, Linkage.GLOBAL))
    s = btf.add(Var("s", i, Linkage.STATIC))
    h = btf.add(Var("h", i, Linkage.GLOBAL))
    ds = btf.add(Datasec(".data", 0, [VarSecinfo(a, 0, 4), VarSecinfo(b, 0, 4),
                                      VarSecinfo(s, 0, 4), VarSecinfo(h, 0, 4)]))
    k = btf.add(Var("CONFIG_X", i, Linkage.EXTERN))
    kc = btf.add(Datasec(".kconfig", 8, [VarSecinfo(k, 4, 4), VarSecinfo(k, 0, 4)]))
    syms = {"a": 8, "b": 0, "h": 4}
    fixup_datasec(btf, {".data": 16}.get, lambda sec, name: syms.get(name),
                  symbol_hidden=lambda sec, name: name == "h")
    d = btf.type(ds)
    assert d.size == 16
    # sorted by offset; the static var kept offset 0 (no global symbol to read)
    assert [(v.type, v.offset) for v in d.vars] == [(b, 0), (s, 0), (h, 4), (a, 8)]
    assert btf.type(h).linkage == Linkage.STATIC
    assert btf.type(a).linkage == Linkage.GLOBAL
    assert [v.offset for v in btf.type(kc).vars] == [0, 4]
    with pytest.raises(BTFError):
        fixup_datasec(BTF([Void(), Datasec(".bss", 0, [])]), lambda n: None, lambda s, n: None)


def test_mark_funcs_static() -> None:
    from pyebpf.btf.write import mark_funcs_static

    btf = BTF([Void(), FuncProto(0, []), Func("a", 1, Linkage.GLOBAL), Func("b", 1, Linkage.GLOBAL)])
    mark_funcs_static(btf, ["b", "zz"])
    assert [btf.type(i).linkage for i in (2, 3)] == [Linkage.GLOBAL, Linkage.STATIC]


def test_in_memory_strings_follow_edits_and_copy() -> None:
    btf = BTF([Void(), Int("int", 4)])
    assert btf.string(1) == "int" and btf.find_string("int") == 1
    btf.add(Typedef("myint", 1))
    assert btf.find_string("myint") == 5 and btf.strings_len == 11
    c = btf.copy()
    c.type(2).name = "renamed"
    c.invalidate()
    assert btf.type(2).name == "myint" and c.find("renamed") == [2]
    # A parsed BTF keeps its original string section (BTF.ext refers to it) after edits.
    parsed = BTF.from_bytes(btf.to_bytes())
    parsed.replace(2, Typedef("other", 1))
    assert parsed.string(5) == "myint"


def test_split_on_in_memory_base() -> None:
    base = BTF([Void(), Int("int", 4), Int("long", 8)])
    split = BTF([Ptr(2), Typedef("long", 3)], base=base)
    parsed = BTF.from_bytes(split.to_bytes(), base=base)
    assert list(parsed) == list(split)
    assert parsed.find("long") == [2, 4]
