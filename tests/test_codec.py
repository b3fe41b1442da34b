"""The BTF value codec: every kind, bitfields, unions, anonymous members, errors,
hypothesis round trips, fixture and kernel types, and C-compiled initializers."""

from __future__ import annotations

import ctypes
import enum
import os
import shutil
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyebpf
from pyebpf.btf.codec import (
    RawCodec,
    StructValue,
    UnionValue,
    clear_cache,
    codec_for,
    codec_from_ctypes,
    codec_from_format,
)
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import (
    INT_BOOL,
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
    Member,
    Ptr,
    Restrict,
    Struct,
    Typedef,
    TypeTag,
    Union_,
    Var,
    VarSecinfo,
    Volatile,
    sizeof,
    skip_modifiers,
)
from pyebpf.errors import BTFError, OptionError

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")


class B:
    """A small BTF with the usual base types."""

    def __init__(self) -> None:
        self.btf = BTF()
        a = self.btf.add
        self.u8 = a(Int("unsigned char", 1))
        self.s8 = a(Int("signed char", 1, INT_SIGNED))
        self.char = a(Int("char", 1, INT_SIGNED))
        self.u16 = a(Int("short unsigned int", 2))
        self.s16 = a(Int("short int", 2, INT_SIGNED))
        self.u32 = a(Int("unsigned int", 4))
        self.s32 = a(Int("int", 4, INT_SIGNED))
        self.u64 = a(Int("long long unsigned int", 8))
        self.s64 = a(Int("long long int", 8, INT_SIGNED))
        self.u128 = a(Int("unsigned __int128", 16))
        self.s128 = a(Int("__int128", 16, INT_SIGNED))
        self.bool = a(Int("_Bool", 1, INT_BOOL))
        self.f32 = a(Float("float", 4))
        self.f64 = a(Float("double", 8))

    def add(self, t: Any) -> int:
        return self.btf.add(t)

    def arr(self, elem: int, n: int) -> int:
        return self.add(Array(elem, self.u32, n))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]] | list[Member],
               union: bool = False, kflag: bool = False) -> int:
        ms = [m if isinstance(m, Member) else Member(m[0], m[1], m[2] * 8) for m in members]
        cls = Union_ if union else Struct
        return self.add(cls(name, size, ms, kflag))

    def codec(self, tid: int) -> Any:
        return codec_for(self.btf, tid)


# -- scalars ---------------------------------------------------------------------------

@pytest.mark.parametrize("attr,size,lo,hi", [
    ("u8", 1, 0, 255), ("s8", 1, -128, 127), ("char", 1, -128, 127),
    ("u16", 2, 0, 0xFFFF), ("s16", 2, -0x8000, 0x7FFF),
    ("u32", 4, 0, 2**32 - 1), ("s32", 4, -2**31, 2**31 - 1),
    ("u64", 8, 0, 2**64 - 1), ("s64", 8, -2**63, 2**63 - 1),
    ("u128", 16, 0, 2**128 - 1), ("s128", 16, -2**127, 2**127 - 1),
])
def test_ints(attr: str, size: int, lo: int, hi: int) -> None:
    b = B()
    c = b.codec(getattr(b, attr))
    assert c.size == size
    for v in (lo, hi, 0, 1, (lo + hi) // 2):
        raw = c.encode(v)
        assert len(raw) == size
        assert raw == v.to_bytes(size, "little", signed=lo < 0)
        assert c.decode(raw) == v
        assert type(c.decode(raw)) is int
    for bad in (lo - 1, hi + 1):
        with pytest.raises(OptionError, match="out of range"):
            c.encode(bad)
    with pytest.raises(OptionError, match="expected an int"):
        c.encode("12")
    with pytest.raises(OptionError, match="expected an int"):
        c.encode(1.5)
    assert c.zero() == 0


def test_bool_float_ptr() -> None:
    b = B()
    cb = b.codec(b.bool)
    assert cb.decode(b"\x01") is True and cb.decode(b"\x00") is False
    assert cb.decode(b"\x02") is True
    assert cb.encode(True) == b"\x01" and cb.encode(0) == b"\x00"
    with pytest.raises(OptionError, match="bool"):
        cb.encode(2)
    f = b.codec(b.f64)
    assert f.decode(f.encode(1.25)) == 1.25 and f.encode(3) == struct.pack("d", 3.0)
    with pytest.raises(OptionError, match="float"):
        f.encode("x")
    f32 = b.codec(b.f32)
    assert f32.decode(f32.encode(0.5)) == 0.5
    with pytest.raises(OptionError):
        f32.encode(1e300)
    half = b.codec(b.add(Float("_Float16", 2)))
    assert half.decode(half.encode(1.5)) == 1.5
    ld = b.codec(b.add(Float("long double", 16)))
    assert ld.size == 16 and ld.decode(bytes(range(16))) == bytes(range(16))
    p = b.codec(b.add(Ptr(b.s32)))
    assert p.size == 8 and p.decode(p.encode(0xFFFF_8880_0000_0000)) == 0xFFFF_8880_0000_0000
    with pytest.raises(OptionError):
        p.encode(-1)


def test_modifiers_are_transparent() -> None:
    b = B()
    t = b.s32
    for cls in (Typedef, Const, Volatile, Restrict, TypeTag):
        t = b.add(cls("t", t) if cls in (Typedef, TypeTag) else cls(t))
    c = b.codec(t)
    assert c is b.codec(b.s32)
    assert c.decode(c.encode(-5)) == -5
    var = b.add(Var("x", t))
    assert b.codec(var) is c


def test_datasec() -> None:
    b = B()
    x = b.add(Var("x", b.s32))
    name = b.add(Var("name", b.arr(b.char, 8)))
    sec = b.add(Datasec(".data", 16, [VarSecinfo(x, 0, 4), VarSecinfo(name, 8, 8)]))
    c = b.codec(sec)
    assert c.type_name == "section .data" and type(c.zero()).__name__ == "data"
    raw = c.encode({"x": -1, "name": "cfg"})
    assert raw == b"\xff" * 4 + bytes(4) + b"cfg" + bytes(5)
    assert c.decode(raw) == {"x": -1, "name": b"cfg"}


def test_legacy_int_bits() -> None:
    """An INT whose bits/offset do not fill its size (old BTF bitfield encoding)."""
    b = B()
    c = b.codec(b.add(Int("int", 4, INT_SIGNED, bits=5, offset=3)))
    assert c.decode((0b10001 << 3).to_bytes(4, "little")) == -15
    buf = bytearray(b"\xff\xff\xff\xff")
    c.encode_into(buf, 0, 3)
    assert int.from_bytes(buf, "little") == 0xFFFFFFFF & ~(0x1F << 3) | (3 << 3)
    with pytest.raises(OptionError):
        c.encode(16)


# -- enums -----------------------------------------------------------------------------

def test_enum() -> None:
    b = B()
    e = b.add(Enum("color", 4, [EnumValue("RED", 0), EnumValue("GREEN", 1),
                                EnumValue("BLUE", 7), EnumValue("ALIAS", 7)]))
    c = b.codec(e)
    v = c.decode((7).to_bytes(4, "little"))
    assert isinstance(v, enum.IntEnum) and v.name == "BLUE" and v == 7
    assert type(v) is c.enum and type(v).__name__ == "color"
    assert c.enum["GREEN"] == 1
    unknown = c.decode((99).to_bytes(4, "little"))
    assert type(unknown) is int and unknown == 99
    assert c.encode("GREEN") == c.encode(1) == c.encode(c.enum.GREEN) == b"\x01\0\0\0"
    assert c.zero() is c.enum.RED
    with pytest.raises(OptionError, match="not a member"):
        c.encode("PURPLE")
    with pytest.raises(OptionError, match="out of range"):
        c.encode(-1)
    se = b.codec(b.add(Enum("s", 1, [EnumValue("NEG", 0xFF), EnumValue("POS", 1)], signed=True)))
    assert se.decode(b"\xff") == -1 and se.decode(b"\xff").name == "NEG"
    e64 = b.codec(b.add(Enum64("big", 8, [EnumValue("HUGE", 1 << 40)])))
    assert e64.decode((1 << 40).to_bytes(8, "little")).name == "HUGE"
    assert e64.encode("HUGE") == (1 << 40).to_bytes(8, "little")
    # names Enum refuses are skipped, not fatal
    odd = b.codec(b.add(Enum("", 4, [EnumValue("_sunder_", 1), EnumValue("ok", 2)])))
    assert odd.decode(b"\x02\0\0\0").name == "ok" and odd.decode(b"\x01\0\0\0") == 1


# -- arrays ----------------------------------------------------------------------------

def test_char_arrays() -> None:
    b = B()
    c = b.codec(b.arr(b.char, 8))
    assert c.decode(b"bash\0xyz") == b"bash"
    assert c.decode(b"12345678") == b"12345678"
    assert c.encode("bash") == b"bash\0\0\0\0"
    assert c.encode(b"12345678") == b"12345678"
    assert c.encode(bytearray(b"ab")) == b"ab" + bytes(6)
    with pytest.raises(OptionError, match="do not fit"):
        c.encode("123456789")
    with pytest.raises(OptionError, match="bytes or str"):
        c.encode(5)
    # u8 arrays (typedef'd or unsigned char) are numbers, not text
    u8t = b.add(Typedef("__u8", b.u8))
    a = b.codec(b.arr(u8t, 4))
    assert a.decode(b"\x01\x00\x02\x03") == (1, 0, 2, 3)


def test_arrays() -> None:
    b = B()
    a = b.codec(b.arr(b.s16, 3))
    assert a.decode(struct.pack("<hhh", 1, -2, 3)) == (1, -2, 3)
    assert a.encode([1, -2]) == struct.pack("<hhh", 1, -2, 0)
    with pytest.raises(OptionError, match="do not fit"):
        a.encode([1, 2, 3, 4])
    with pytest.raises(OptionError, match=r"\[1\]"):
        a.encode([1, 1 << 20])
    m = b.codec(b.arr(b.arr(b.u8, 2), 3))  # u8[3][2]
    assert m.decode(bytes(range(6))) == ((0, 1), (2, 3), (4, 5))
    assert m.encode([[1, 2], [3]]) == bytes([1, 2, 3, 0, 0, 0])
    names = b.codec(b.arr(b.arr(b.char, 4), 2))
    assert names.decode(b"ab\0\0cdef") == (b"ab", b"cdef")
    assert names.zero() == (b"", b"")
    assert b.codec(b.arr(b.u32, 0)).decode(b"") == ()


def test_array_of_structs_large_and_small() -> None:
    b = B()
    pt = b.struct("pt", 8, [("x", b.s32, 0), ("y", b.s32, 4)])
    for n in (3, 2000):  # unrolled into one format, and decoded element by element
        c = b.codec(b.arr(pt, n))
        vals = [{"x": i, "y": -i} for i in range(n)]
        raw = c.encode(vals)
        assert raw == b"".join(struct.pack("<ii", i, -i) for i in range(n))
        got = c.decode(raw)
        assert len(got) == n and got[n - 1].y == -(n - 1) and got == tuple(
            b.codec(pt).cls(**v) for v in vals)


# -- structs ---------------------------------------------------------------------------

def _event_btf() -> tuple[B, int]:
    """struct event from fixtures/src/opensnoop.bpf.c, laid out as clang does."""
    b = B()
    ev = b.struct("event", 312, [
        ("ts_ns", b.u64, 0), ("pid", b.u32, 8), ("tid", b.u32, 12), ("ppid", b.u32, 16),
        ("uid", b.u32, 20), ("ret", b.s32, 24), ("flags", b.s32, 28), ("mode", b.u32, 32),
        ("comm", b.arr(b.char, 16), 36), ("fname", b.arr(b.char, 255), 52)])
    return b, ev


def test_struct_values() -> None:
    b, ev = _event_btf()
    c = b.codec(ev)
    assert c.size == 312 and c.type_name == "struct event"
    raw = struct.pack("<QIIIIiiI16s255s5x", 123, 1, 2, 3, 4, -2, 0o100, 0o644, b"bash",
                      b"/etc/passwd")
    v = c.decode(raw)
    assert isinstance(v, StructValue) and type(v).__name__ == "event"
    assert (v.ts_ns, v.pid, v.ret, v.comm, v.fname) == (123, 1, -2, b"bash", b"/etc/passwd")
    assert repr(v).startswith("event(ts_ns=123, pid=1, tid=2, ppid=3, uid=4, ret=-2,")
    assert c.encode(v) == raw
    assert c.encode(v._asdict()) == raw
    Event = c.cls
    built = Event(ts_ns=123, pid=1, tid=2, ppid=3, uid=4, ret=-2, flags=0o100, mode=0o644,
                  comm="bash", fname=b"/etc/passwd")
    assert built == v and hash(built) == hash(v)
    assert v == {"ts_ns": 123, "pid": 1, "tid": 2, "ppid": 3, "uid": 4, "ret": -2,
                 "flags": 0o100, "mode": 0o644, "comm": b"bash", "fname": b"/etc/passwd"}
    assert v != {"pid": 1} and v != (123, 1) and v != {"nope": 1}
    assert Event(pid=7) == {"pid": 7} and Event(pid=7).ts_ns == 0 and Event().comm == b""
    assert {v: 1}[built] == 1
    w = v._replace(pid=9)
    assert w.pid == 9 and v.pid == 1 and c.decode(c.encode(w)).pid == 9
    assert c.zero() == Event() and c.decode(bytes(312)) == Event()
    # memoryview, offset, encode_into
    buf = bytearray(400)
    c.encode_into(buf, 50, v)
    assert c.decode(memoryview(buf), 50) == v
    with pytest.raises(OptionError, match="need 312 bytes"):
        c.decode(raw[:-1])
    with pytest.raises(OptionError, match="need 312 bytes"):
        c.decode(buf, 100)
    with pytest.raises(OptionError, match=r"struct event\.pid: -1 is out of range"):
        c.encode({"pid": -1})
    with pytest.raises(OptionError, match=r"struct event\.comm: .*char\[16\]"):
        Event(comm="x" * 17).__class__ and c.encode(Event(comm="x" * 17))
    with pytest.raises(OptionError, match="has no member 'nope'"):
        Event(nope=1)
    with pytest.raises(OptionError, match="expected struct event"):
        c.encode(5)
    assert c.encode((123, 1)) == c.encode(Event(ts_ns=123, pid=1))


def test_nested_struct_paths_and_deep_dict() -> None:
    b = B()
    inner = b.struct("inner", 8, [("a", b.u32, 0), ("tag", b.arr(b.char, 4), 4)])
    outer = b.struct("outer", 24, [("x", b.u8, 0), ("in_", inner, 4), ("list", b.arr(inner, 1), 12),
                                  ("y", b.u16, 20)])
    c = b.codec(outer)
    v = c.cls(x=1, in_={"a": 2, "tag": "ab"}, list=[{"a": 3}], y=4)
    assert isinstance(v.in_, StructValue) and v.in_.tag == b"ab"
    assert c.decode(c.encode(v)) == v
    assert v._asdict(deep=True) == {"x": 1, "in_": {"a": 2, "tag": b"ab"},
                                    "list": ({"a": 3, "tag": b""},), "y": 4}
    with pytest.raises(OptionError, match=r"struct outer\.in_\.a"):
        c.encode({"in_": {"a": "no"}})
    with pytest.raises(OptionError, match=r"struct outer\.list\[0\]\.a"):
        c.encode({"list": [{"a": -3}]})
    assert "(buf, offset +" not in c._source  # the nested structs were inlined into one format
    assert c.encode(v) == struct.pack("<B3xI4sI4sH2x", 1, 2, b"ab", 3, b"", 4)


def test_unions() -> None:
    b = B()
    u = b.struct("val", 8, [("u64", b.u64, 0), ("u32", b.u32, 0), ("s", b.arr(b.char, 4), 0),
                            ("flag", b.bool, 0)], union=True)
    c = b.codec(u)
    v = c.decode(struct.pack("<Q", 0x0000_0001_0063_6261))
    assert isinstance(v, UnionValue)
    assert (v.u64, v.u32, v.s, v.flag) == (0x1_0063_6261, 0x0063_6261, b"abc", True)
    assert c.encode(v) == struct.pack("<Q", 0x0000_0001_0063_6261)
    one = c.cls(u32=5)
    assert (one.u64, one.u32, one.s, one.flag) == (5, 5, b"\x05", True)
    assert one == {"u32": 5} and one == c.cls(u64=5)
    assert one._replace(u64=1 << 40).u32 == 0
    with pytest.raises(OptionError, match="union members disagree"):
        c.cls(u64=1, u32=2)
    assert c.encode({"s": "hi"}) == b"hi" + bytes(6)
    assert c.zero() == c.cls()
    # a union inside a struct
    s = b.struct("holder", 16, [("kind", b.u32, 0), ("v", u, 8)])
    hc = b.codec(s)
    h = hc.cls(kind=1, v={"u32": 7})
    assert hc.decode(hc.encode(h)) == h and hc.encode(h)[8:12] == b"\x07\0\0\0"


def test_anonymous_members() -> None:
    b = B()
    au = b.struct("", 8, [("a", b.u64, 0), ("b", b.u32, 0)], union=True)
    ast = b.struct("", 8, [("lo", b.u32, 0), ("hi", b.u32, 4)])
    au2 = b.struct("", 8, [("whole", b.u64, 0), ("", ast, 0)], union=True)
    s = b.struct("s", 24, [("", au, 0), ("c", b.u32, 8), ("", au2, 16)])
    c = b.codec(s)
    v = c.cls(b=3, c=4, hi=1)
    assert v.a == 3 and v.b == 3 and v.c == 4 and v.whole == 1 << 32 and v.lo == 0 and v.hi == 1
    assert c.decode(c.encode(v)) == v
    assert v == {"a": 3, "c": 4, "whole": 1 << 32}
    assert v._fields == ("_anon0", "c", "_anon1")
    w = v._replace(b=9, lo=2)
    assert (w.a, w.c, w.lo, w.hi) == (9, 4, 2, 1) and (v.a, v.lo) == (3, 0)
    with pytest.raises(OptionError, match="no member"):
        c.cls(zz=1)


# -- bitfields -------------------------------------------------------------------------

def test_bitfields_kind_flag() -> None:
    b = B()
    color = b.add(Enum("color", 4, [EnumValue("R", 0), EnumValue("G", 1), EnumValue("B", 2)]))
    s = b.struct("bf", 8, [
        Member("a", b.u32, 0, 3), Member("b", b.s32, 3, 5), Member("flag", b.bool, 8, 1),
        Member("col", color, 9, 2), Member("wide", b.u64, 11, 40), Member("tail", b.u8, 56)],
        kflag=True)
    c = b.codec(s)
    v = c.cls(a=5, b=-3, flag=True, col="B", wide=(1 << 40) - 1, tail=9)
    raw = c.encode(v)
    word = int.from_bytes(raw[:7], "little")
    assert word & 7 == 5 and (word >> 3) & 31 == 32 - 3 and (word >> 8) & 1 == 1
    assert (word >> 9) & 3 == 2 and (word >> 11) == (1 << 40) - 1 and raw[7] == 9
    d = c.decode(raw)
    assert d == v and d.b == -3 and d.flag is True and d.col.name == "B"
    with pytest.raises(OptionError, match=r"struct bf\.a: 8 does not fit in a 3-bit"):
        c.encode({"a": 8})
    with pytest.raises(OptionError, match=r"struct bf\.b"):
        c.encode({"b": -17})
    assert c.encode({"b": -16})[0] == 0x80
    # inlined into a parent
    p = b.codec(b.struct("p", 12, [("x", b.u32, 0), ("bf", s, 4)]))
    pv = p.cls(x=1, bf=v)
    assert p.encode(pv) == b"\x01\0\0\0" + raw and p.decode(p.encode(pv)) == pv


def test_bitfields_without_kind_flag() -> None:
    b = B()
    i3 = b.add(Int("unsigned int", 4, 0, bits=3))
    i5 = b.add(Int("int", 4, INT_SIGNED, bits=5))
    s = b.struct("old", 4, [Member("a", i3, 0), Member("b", i5, 3), Member("c", b.u16, 16)])
    c = b.codec(s)
    raw = c.encode({"a": 7, "b": -1, "c": 0x1234})
    assert raw == bytes([0b11111111, 0, 0x34, 0x12])
    assert c.decode(raw) == {"a": 7, "b": -1, "c": 0x1234}


def test_bitfields_in_union_and_odd_order() -> None:
    b = B()
    u = b.struct("ub", 4, [Member("x", b.u32, 0, 4), Member("all", b.u32, 0)],
                 union=True, kflag=True)
    c = b.codec(u)
    v = c.decode(b"\xfa\0\0\0")
    assert v.x == 0xA and v.all == 0xFA
    assert c.cls(x=3).all == 3
    # a bitfield placed before an earlier member: decoded on its own, not flattened
    s = b.struct("odd", 8, [Member("late", b.u32, 4 * 8), Member("early", b.u32, 0, 4)],
                 kflag=True)
    oc = b.codec(s)
    assert oc.decode(c.encode(v) + b"\x05\0\0\0") == {"late": 5, "early": 0xA}
    assert oc.encode({"late": 5, "early": 3}) == b"\x03\0\0\0\x05\0\0\0"


def test_flexible_array_member() -> None:
    b = B()
    s = b.struct("rec", 4, [("len", b.u32, 0), ("data", b.arr(b.char, 0), 4)])
    c = b.codec(s)
    assert c.decode(b"\x03\0\0\0abc") == {"len": 3, "data": b"abc"}
    assert c.decode(b"\x00\0\0\0") == {"len": 0, "data": b""}
    assert c.encode({"len": 3, "data": b"abc"}) == b"\x03\0\0\0abc"
    s2 = b.codec(b.struct("rec2", 4, [("n", b.u32, 0), ("vals", b.arr(b.u16, 0), 4)]))
    assert s2.decode(b"\x02\0\0\0\x01\0\x02\0\x03") == {"n": 2, "vals": (1, 2)}
    assert s2.encode({"n": 1, "vals": [7]}) == b"\x01\0\0\0\x07\0"
    with pytest.raises(OptionError, match="do not fit"):
        s2.encode_into(bytearray(4), 0, {"vals": [1]})


# -- errors, caching, other codecs -----------------------------------------------------

def test_types_without_values() -> None:
    b = B()
    proto = b.add(FuncProto(0, []))
    for tid in (0, proto, b.add(Func("f", proto)), b.add(Fwd("later")),
                b.add(DeclTag("tag", b.u32))):
        with pytest.raises(OptionError, match="no value"):
            b.codec(tid)
    with pytest.raises(BTFError):
        codec_for(b.btf, 10_000)
    with pytest.raises(BTFError, match="beyond"):
        b.codec(b.struct("bad", 2, [("x", b.u32, 0)]))


def test_cache_per_btf() -> None:
    b = B()
    s = b.struct("p", 4, [("x", b.u32, 0)])
    first = codec_for(b.btf, s)
    assert codec_for(b.btf, s) is first
    b.btf.replace(s, Struct("p", 8, [Member("x", b.u64, 0)]))
    clear_cache(b.btf)
    assert codec_for(b.btf, s).size == 8
    other = B()
    s2 = other.struct("p", 4, [("x", other.u32, 0)])
    assert codec_for(other.btf, s2) is not codec_for(b.btf, s)
    # same layout from two BTFs: values still compare equal
    assert codec_for(other.btf, s2).cls(x=1) == codec_for(b.btf, s).cls(x=1)


def test_raw_format_ctypes() -> None:
    r = RawCodec(4)
    assert r.decode(b"\x01\x02\x03\x04\x05", 1) == b"\x02\x03\x04\x05"
    assert r.encode(b"abcd") == b"abcd" and r.zero() == bytes(4)
    with pytest.raises(OptionError, match="expected 4 bytes"):
        r.encode(b"abc")
    f = codec_from_format("<I")
    assert f.size == 4 and f.decode(b"\x05\0\0\0") == 5 and f.encode(5) == b"\x05\0\0\0"
    f2 = codec_from_format("<IH")
    assert f2.decode(f2.encode((1, 2))) == (1, 2)
    with pytest.raises(OptionError):
        f2.encode((1, -2))
    with pytest.raises(OptionError):
        codec_from_format("<Z")

    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_int16)]

    c = codec_from_ctypes(Pair)
    assert c.size == 8
    p = c.decode(c.encode({"a": 1, "b": -2}))
    assert isinstance(p, Pair) and (p.a, p.b) == (1, -2)
    assert c.encode((3, 4)) == c.encode(Pair(3, 4))
    with pytest.raises(OptionError):
        c.decode(b"\0")
    with pytest.raises(OptionError):
        c.encode({"zz": 1})


# -- real types ------------------------------------------------------------------------

def test_opensnoop_fixture_types() -> None:
    spec = pyebpf.ObjectSpec.from_file(os.path.join(FIXTURES, "opensnoop.bpf.o"))
    btf = spec.btf
    start = spec.maps["start"]
    key, val = codec_for(btf, start.btf_key_type_id), codec_for(btf, start.btf_value_type_id)
    assert (key.size, val.size) == (start.key_size, start.value_size) == (4, 16)
    a = val.cls(fname=0xFFFF_0000_1234, flags=-1, mode=0o644)
    assert val.decode(val.encode(a)) == a and type(a).__name__ == "args_t"
    ro = spec.maps[next(n for n in spec.maps if n.endswith(".rodata"))]
    sec = codec_for(btf, ro.btf_value_type_id)
    assert sec.size == len(ro.data)
    ro.data[8:12] = b"\xff\xff\xff\xff"
    g = sec.decode(bytes(ro.data))
    assert g == {"targ_pid": 0, "targ_tgid": 0, "targ_uid": 0xFFFFFFFF, "targ_failed": False}
    assert g.targ_failed is False and sec.encode(g) == bytes(ro.data)
    assert sec.encode(g._replace(targ_pid=42))[:4] == b"\x2a\0\0\0"
    var = next(v for v in spec.variables.values() if v.name == "targ_uid")
    assert codec_for(btf, var.btf_type_id).decode(bytes(ro.data), var.offset) == 0xFFFFFFFF
    ev = btf.find("event", Kind.STRUCT)
    if ev:  # present once the shipped object keeps it in BTF
        c = codec_for(btf, ev[0])
        assert c.decode(bytes(c.size)).comm == b""


@pytest.mark.parametrize("path", sorted(
    f for f in os.listdir(FIXTURES) if f.endswith(".bpf.o")))
def test_fixture_types(path: str) -> None:
    """Every struct, union, section, variable and array of every fixture's BTF; the
    global-data maps decode their initial contents and survive a round trip."""
    spec = pyebpf.ObjectSpec.from_file(os.path.join(FIXTURES, path))
    btf = spec.btf
    if btf is None:
        pytest.skip("no BTF")
    kinds = (Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.VAR, Kind.ENUM, Kind.ARRAY)
    for tid in range(1, len(btf)):
        t: Any = btf.type(tid)
        if t.kind not in kinds or t.kind == Kind.VAR and skip_modifiers(btf, t.type) == 0:
            continue
        c = codec_for(btf, tid)
        assert c.encode(c.decode(bytes(c.size))) == bytes(c.size), (tid, c.type_name)
    for m in spec.maps.values():
        if m.btf_value_type_id and m.data is not None and not m.name.endswith("kconfig"):
            c = codec_for(btf, m.btf_value_type_id)
            assert c.size == m.value_size == len(m.data)
            v = c.decode(bytes(m.data))
            assert c.encode(v) == bytes(m.data)


@pytest.fixture(scope="module")
def kbtf() -> Any:
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    from pyebpf.btf.kernel import kernel_btf

    return kernel_btf()


@pytest.mark.parametrize("name", ["task_struct", "sk_buff", "bpf_attr", "perf_event_attr",
                                  "net_device", "page"])
def test_kernel_types_zero(kbtf: Any, name: str) -> None:
    tid = kbtf.find(name, Kind.STRUCT) or kbtf.find(name, Kind.UNION)
    c = codec_for(kbtf, tid[0])
    assert c.size == sizeof(kbtf, tid[0])
    v = c.decode(bytes(c.size))
    assert c.encode(v) == bytes(c.size)
    if name == "task_struct":
        assert v.comm == b"" and v.pid == 0 and v.se.load.weight == 0
    if name == "sk_buff":
        assert v.len == 0 and v.next == 0 and v.dev == 0  # fields of anonymous unions


def test_kernel_sample_random_bytes(kbtf: Any) -> None:
    """A sample of vmlinux structs, unions and sections: sizes match, zero bytes round
    trip exactly, and the value of random bytes survives encode + decode."""
    import random

    rnd = random.Random(1)
    n = 0
    for tid in range(1, len(kbtf), 20):
        if kbtf.kind_of(tid) not in (Kind.STRUCT, Kind.UNION, Kind.DATASEC):
            continue
        c = codec_for(kbtf, tid)
        assert c.size == sizeof(kbtf, tid)
        assert c.encode(c.decode(bytes(c.size))) == bytes(c.size)
        v = c.decode(rnd.randbytes(c.size))
        assert c.decode(c.encode(v)) == v, (tid, c.type_name)
        n += 1
    assert n > 250


def test_kernel_enum(kbtf: Any) -> None:
    c = codec_for(kbtf, kbtf.find("bpf_map_type", Kind.ENUM)[0])
    v = c.decode((2).to_bytes(4, "little"))
    assert isinstance(v, enum.IntEnum) and v.name == "BPF_MAP_TYPE_ARRAY"
    assert c.encode("BPF_MAP_TYPE_RINGBUF") == c.encode(c.enum.BPF_MAP_TYPE_RINGBUF)


def test_kernel_task_struct_roundtrip_pattern(kbtf: Any) -> None:
    c = codec_for(kbtf, kbtf.find("task_struct", Kind.STRUCT)[0])
    raw = bytes((i * 7) & 0xFF for i in range(c.size))
    v = c.decode(raw)
    assert c.decode(c.encode(v)) == v


# -- compiled C as the reference -------------------------------------------------------

C_SRC = r"""
typedef unsigned long long u64;
enum mode { M_OFF, M_ON = 3, M_NEG = -2 };
struct flags { unsigned int a : 3; int b : 5; _Bool c : 1; enum mode m : 4; u64 big : 40; };
struct mixed {
    char tag;
    struct flags f;
    union { int i; float fl; char s[4]; };
    struct { short lo, hi; } pair[2];
    unsigned char bytes[3];
    double d;
    enum mode mode;
    const volatile long long neg;
    char name[6];
};
struct mixed g = { .tag = 'x', .f = { .a = 5, .b = -7, .c = 1, .m = M_NEG, .big = 0x12345678ABULL },
                   .i = -100, .pair = { { 1, -2 }, { 3, -4 } }, .bytes = { 1, 0, 255 },
                   .d = 2.5, .mode = M_ON, .neg = -3, .name = "hello" };
"""


@pytest.fixture(scope="module")
def c_object(tmp_path_factory: Any) -> Any:
    cc = shutil.which("clang-19") or shutil.which("clang")
    if cc is None:
        pytest.skip("no clang")
    d = tmp_path_factory.mktemp("codec")
    src, obj = d / "mixed.bpf.c", d / "mixed.bpf.o"
    src.write_text(C_SRC)
    subprocess.run([cc, "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)],
                   check=True)
    return pyebpf.ObjectSpec.from_file(str(obj))


def test_c_initializer_matches(c_object: Any) -> None:
    btf = c_object.btf
    c = codec_for(btf, btf.find("mixed", Kind.STRUCT)[0])
    data = bytes(c_object.maps[next(n for n in c_object.maps if n.endswith(".data"))].data)
    v = c.decode(data)
    assert v.tag == ord("x")
    assert (v.f.a, v.f.b, v.f.c, v.f.m, v.f.big) == (5, -7, True, -2, 0x12345678AB)
    assert v.f.m.name == "M_NEG"
    assert v.i == -100 and v.s == (-100).to_bytes(4, "little", signed=True)
    assert v.pair == ({"lo": 1, "hi": -2}, {"lo": 3, "hi": -4})
    assert v.bytes == (1, 0, 255) and v.d == 2.5 and v.mode.name == "M_ON"
    assert v.neg == -3 and v.name == b"hello"
    built = c.cls(tag=ord("x"), f=dict(a=5, b=-7, c=True, m="M_NEG", big=0x12345678AB), i=-100,
                  pair=[dict(lo=1, hi=-2), dict(lo=3, hi=-4)], bytes=[1, 0, 255], d=2.5,
                  mode="M_ON", neg=-3, name="hello")
    assert built == v
    assert c.encode(built) == data  # clang zeroes padding too


# -- hypothesis round trips over random layouts -----------------------------------------

SCALARS = ["u8", "s8", "u16", "s16", "u32", "s32", "u64", "s64", "bool", "f64", "s128"]


def _value_strategy(b: B, kind: str) -> st.SearchStrategy[Any]:
    sizes = {"u8": 8, "s8": 8, "u16": 16, "s16": 16, "u32": 32, "s32": 32, "u64": 64,
             "s64": 64, "s128": 128}
    if kind == "bool":
        return st.booleans()
    if kind == "f64":
        return st.floats(allow_nan=False)
    bits = sizes[kind]
    if kind.startswith("s"):
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


@st.composite
def layouts(draw: Any, b: B, depth: int = 0) -> tuple[int, st.SearchStrategy[Any]]:
    """A random struct type in ``b`` and a strategy for its values (as dicts)."""
    n = draw(st.integers(1, 6))
    members, strategies, off, align = [], {}, 0, 1
    for i in range(n):
        what = draw(st.sampled_from(["scalar", "scalar", "chars", "array", "nested", "bits",
                                     "union", "enum"]
                                    if depth < 2 else ["scalar", "chars", "array", "bits"]))
        name = f"m{i}"
        if what == "scalar":
            k = draw(st.sampled_from(SCALARS))
            tid, strat = getattr(b, k), _value_strategy(b, k)
        elif what == "chars":
            ln = draw(st.integers(1, 20))
            tid = b.arr(b.char, ln)
            strat = st.binary(max_size=ln).map(lambda x: x.replace(b"\0", b"."))
        elif what == "array":
            k = draw(st.sampled_from(SCALARS[:8]))
            ln = draw(st.integers(1, 5))
            tid = b.arr(getattr(b, k), ln)
            strat = st.lists(_value_strategy(b, k), min_size=ln, max_size=ln).map(tuple)
        elif what == "nested":
            tid, strat = draw(layouts(b, depth + 1))
        elif what == "union":
            kinds = draw(st.lists(st.sampled_from(["u8", "s16", "u32", "u64", "f64"]),
                                  min_size=1, max_size=3))
            usize = max(codec_for(b.btf, getattr(b, k)).size for k in kinds)
            tid = b.add(Union_(f"u{len(b.btf)}", usize,
                               [Member(f"v{j}", getattr(b, k), 0) for j, k in enumerate(kinds)]))
            strat = st.integers(0, len(kinds) - 1).flatmap(
                lambda j, kinds=kinds: st.fixed_dictionaries(
                    {f"v{j}": _value_strategy(b, kinds[j])}))
        elif what == "enum":
            tid = b.add(Enum(f"e{len(b.btf)}", 4, [EnumValue("A", 0), EnumValue("B", 5)]))
            strat = st.sampled_from(["A", "B", 0, 5, 77])
        else:
            bits = draw(st.integers(1, 31))
            signed = draw(st.booleans())
            a = 4
            off = (off + a - 1) // a * a
            members.append(Member(name, b.s32 if signed else b.u32, off * 8, bits))
            strategies[name] = (st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed
                                else st.integers(0, (1 << bits) - 1))
            off += 4
            align = max(align, 4)
            continue
        size = codec_for(b.btf, tid).size
        a = min(size, 8) if what != "chars" else 1
        if what in ("array", "nested"):
            a = min(8, max(1, _alignment(b, tid)))
        off = (off + a - 1) // a * a
        members.append(Member(name, tid, off * 8))
        strategies[name] = strat
        off += size
        align = max(align, a)
    size = (off + align - 1) // align * align
    tid = b.add(Struct(f"s{len(b.btf)}", size, members, True))
    return tid, st.fixed_dictionaries(strategies)


def _alignment(b: B, tid: int) -> int:
    t: Any = b.btf.type(tid)
    if t.kind == Kind.ARRAY:
        return _alignment(b, t.type)
    if t.kind in (Kind.STRUCT, Kind.UNION):
        return max([_alignment(b, m.type) for m in t.members] or [1])
    return min(8, codec_for(b.btf, tid).size) or 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_roundtrip(data: Any) -> None:
    b = B()
    tid, values = data.draw(layouts(b))
    c = codec_for(b.btf, tid)
    value = data.draw(values)
    raw = c.encode(value)
    assert len(raw) == c.size
    back = c.decode(raw)
    assert back == value
    assert c.encode(back) == raw
    assert c.decode(c.encode(c.cls(**value))) == back
    # arbitrary bytes decode, and their value survives a round trip
    junk = data.draw(st.binary(min_size=c.size, max_size=c.size))
    v = c.decode(junk)
    assert c.decode(c.encode(v)) == v
