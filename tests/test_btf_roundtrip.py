"""BTF round trips: generated type graphs, vmlinux, and marshalled BTF loaded by the kernel."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable

import pytest
from elftools.elf.elffile import ELFFile
from hyp_examples import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unitobj import unit_object

from pyebpf.btf.spec import BTF
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
    Type,
    Typedef,
    TypeTag,
    Union_,
    Var,
    VarSecinfo,
    Volatile,
)
from pyebpf.btf.write import Features, fixup_datasec, marshal
from pyebpf.errors import BTFError

VMLINUX = "/sys/kernel/btf/vmlinux"

# -- generated graphs ---------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6
)
u32 = st.integers(0, 0xFFFF_FFFF)


def type_strategy(ref: st.SearchStrategy[int]) -> st.SearchStrategy[Type]:
    member_plain = st.builds(Member, names, ref, u32, st.just(0))
    member_bits = st.builds(Member, names, ref, st.integers(0, (1 << 24) - 1), st.integers(0, 255))

    def composite(cls: type) -> st.SearchStrategy[Type]:
        return st.one_of(
            st.builds(cls, names, u32, st.lists(member_plain, max_size=4), st.just(False)),
            st.builds(cls, names, u32, st.lists(member_bits, max_size=4), st.just(True)),
        )

    def enums(cls: type, bits: int) -> st.SearchStrategy[Type]:
        uval = st.builds(EnumValue, names, st.integers(0, (1 << bits) - 1))
        sval = st.builds(EnumValue, names, st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
        return st.one_of(
            st.builds(cls, names, u32, st.lists(uval, max_size=4), st.just(False)),
            st.builds(cls, names, u32, st.lists(sval, max_size=4), st.just(True)),
        )

    return st.one_of(
        st.builds(Int, names, u32, st.integers(0, 15), st.integers(1, 128), st.integers(0, 255)),
        st.builds(Float, names, u32),
        st.builds(Ptr, ref, names),
        st.builds(Array, ref, ref, u32, names),
        composite(Struct),
        composite(Union_),
        enums(Enum, 32),
        enums(Enum64, 64),
        st.builds(Fwd, names, st.booleans()),
        st.builds(Typedef, names, ref),
        st.builds(Volatile, ref, names),
        st.builds(Const, ref, names),
        st.builds(Restrict, ref, names),
        # attr=True: kind_flag=1, an __attribute__((...)) tag rather than btf_type_tag
        st.builds(TypeTag, names, ref, st.booleans()),
        st.builds(Func, names, ref, st.integers(0, 0xFFFF)),
        st.builds(FuncProto, ref, st.lists(st.builds(Param, names, ref), max_size=4), names),
        st.builds(Var, names, ref, u32),
        st.builds(Datasec, names, u32,
                  st.lists(st.builds(VarSecinfo, ref, u32, u32), max_size=4)),
        # attr=True: kind_flag=1, an __attribute__((...)) tag rather than btf_decl_tag
        st.builds(DeclTag, names, ref, st.integers(-1, (1 << 31) - 1), st.booleans()),
    )


@st.composite
def graphs(draw: st.DrawFn) -> BTF:
    n = draw(st.integers(1, 25))
    ref = st.integers(0, n)  # forward references are legal in BTF
    return BTF(draw(st.lists(type_strategy(ref), min_size=n, max_size=n)))


@settings(max_examples=examples(100), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generated_graph_roundtrip(btf: BTF) -> None:
    data = marshal(btf)
    parsed = BTF.from_bytes(data)
    assert list(parsed) == list(btf)
    assert marshal(parsed) == data
    for tid in range(1, len(btf)):
        name = btf.type(tid).name
        if name:
            assert tid in parsed.find(name)


@pytest.mark.parametrize("attr", [False, True])
def test_attribute_tags_set_kind_flag(attr: bool) -> None:
    # the generator draws attr both ways; this pins down the wire bit (info bit 31)
    btf = BTF([Int("int", 4), TypeTag("tt", 1, attr), DeclTag("dt", 1, -1, attr),
               DeclTag("dc", 1, 3, attr)])
    data = marshal(btf)
    hdr_len, type_off = struct.unpack_from("<II", data, 4)  # after magic, version, flags
    types = data[hdr_len + type_off:]
    # INT is 16 bytes (+4 of encoding); TYPE_TAG 12; DECL_TAG 16 each
    infos = [struct.unpack_from("<I", types, off + 4)[0] for off in (16, 28, 44)]
    assert [i >> 31 for i in infos] == [int(attr)] * 3
    parsed = BTF.from_bytes(data)
    assert [parsed.type(t).attr for t in (2, 3, 4)] == [attr] * 3
    assert list(parsed) == list(btf)


@settings(max_examples=examples(75), deadline=None)
@given(graphs(), st.data())
def test_generated_graph_mutations_raise_only_btferror(btf: BTF, data: st.DataObject) -> None:
    blob = bytearray(marshal(btf))
    cut = data.draw(st.integers(0, len(blob)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    for candidate in (bytes(blob), bytes(blob[:cut])):
        try:
            BTF.from_bytes(candidate)
        except BTFError:
            pass


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.data())
def test_generated_split_roundtrip(base: BTF, data: st.DataObject) -> None:
    base = BTF.from_bytes(marshal(base))
    n = data.draw(st.integers(0, 10))
    ref = st.integers(0, len(base) + n - 1)  # into the base and the split alike
    split = BTF(data.draw(st.lists(type_strategy(ref), min_size=n, max_size=n)), base=base)
    blob = marshal(split)
    parsed = BTF.from_bytes(blob, base=base)
    assert list(parsed) == list(split)
    assert marshal(parsed) == blob
    for tid, t in split.own_types():
        if t.name:
            assert tid in parsed.find(t.name)


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_vmlinux_roundtrip() -> None:
    raw = open(VMLINUX, "rb").read()
    btf = BTF.from_bytes(raw)
    again = BTF.from_bytes(marshal(btf))
    assert len(again) == len(btf)
    for tid in range(0, len(btf), 97):
        assert again.type(tid) == btf.type(tid)
    assert btf.find("task_struct")


# -- the kernel accepts what we write ---------------------------------------------------

BPF_BTF_LOAD = 18
NR_BPF = 321  # x86_64


class _BtfLoadAttr(ctypes.Structure):
    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_log_buf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("btf_log_size", ctypes.c_uint32),
        ("btf_log_level", ctypes.c_uint32),
        ("btf_log_true_size", ctypes.c_uint32),
    ]


def _btf_load(data: bytes, log_level: int, log_size: int) -> tuple[int, int, bytes]:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(data)
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _BtfLoadAttr(ctypes.addressof(buf), ctypes.addressof(log) if log else 0, len(data),
                        log_size, log_level, 0)
    fd = libc.syscall(NR_BPF, BPF_BTF_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd, ctypes.get_errno(), log.value if log else b""


def kernel_load_btf(data: bytes) -> None:
    """BPF_BTF_LOAD ``data``; assert the kernel accepts it (showing the end of its log if not)."""
    fd, err, _ = _btf_load(data, 0, 0)
    if fd >= 0:
        os.close(fd)
        return
    # Only now ask for the log: a log that does not fit fails the load with ENOSPC.
    fd2, _, log = _btf_load(data, 1, 1 << 24)
    if fd2 >= 0:
        os.close(fd2)
    tail = "\n".join(log.decode(errors="replace").splitlines()[-5:])
    raise AssertionError(f"BTF_LOAD failed: {os.strerror(err)}\n{tail}")


need_root = pytest.mark.skipif(os.geteuid() != 0, reason="BPF_BTF_LOAD needs root")

@pytest.fixture(scope="session")
def clang_object() -> str:
    """fixtures/src/unit/btf_roundtrip.bpf.c: every BTF kind clang emits, in one object."""
    return str(unit_object("btf_roundtrip"))


def elf_callbacks(elf: ELFFile) -> tuple[Callable[[str], int | None],
                                         Callable[[str, str], int | None],
                                         Callable[[str, str], bool]]:
    syms = {}
    for sym in elf.get_section_by_name(".symtab").iter_symbols():
        if sym["st_info"]["type"] == "STT_OBJECT" and sym["st_info"]["bind"] in (
            "STB_GLOBAL", "STB_WEAK"
        ):
            sec = elf.get_section(sym["st_shndx"]).name
            syms[(sec, sym.name)] = (sym["st_value"], sym["st_other"]["visibility"])

    def size(sec: str) -> int | None:
        s = elf.get_section_by_name(sec)
        return s["sh_size"] if s is not None else None

    def offset(sec: str, name: str) -> int | None:
        v = syms.get((sec, name))
        return v[0] if v else None

    def hidden(sec: str, name: str) -> bool:
        v = syms.get((sec, name))
        return bool(v) and v[1] in ("STV_HIDDEN", "STV_INTERNAL")

    return size, offset, hidden


def object_btf(path: str) -> BTF:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        btf = BTF.from_bytes(elf.get_section_by_name(".BTF").data())
        fixup_datasec(btf, *elf_callbacks(elf)[:2], symbol_hidden=elf_callbacks(elf)[2])
    return btf


@need_root
def test_kernel_loads_clang_object_btf(clang_object: str) -> None:
    btf = object_btf(clang_object)
    bss = btf.type(btf.find(".bss")[0])
    assert bss.size > 0 and [v.offset for v in bss.vars] == sorted(v.offset for v in bss.vars)
    hid = btf.type(btf.find("hid")[0])
    assert hid.linkage == Linkage.STATIC  # hidden visibility -> static, as libbpf does
    kernel_load_btf(marshal(btf))


@need_root
def test_kernel_loads_sanitized_clang_object_btf(clang_object: str) -> None:
    btf = object_btf(clang_object)
    for f in (Features(has_enum64=False), Features(has_type_tag=False, has_decl_tag=False),
              Features(has_float=False, has_datasec=False), Features(has_func_global=False),
              Features.none()):
        kernel_load_btf(marshal(btf, sanitize=f))


@need_root
def test_kernel_loads_fixture_objects() -> None:
    root = os.path.join(os.path.dirname(__file__), "..", "fixtures")
    objs = [os.path.join(root, n) for n in sorted(os.listdir(root)) if n.endswith(".bpf.o")] \
        if os.path.isdir(root) else []
    if not objs:
        pytest.skip("no fixture objects")
    for path in objs:
        with open(path, "rb") as f:
            if ELFFile(f).get_section_by_name(".BTF") is None:
                continue
        btf = object_btf(path)
        # Extern VARs/FUNCs are rewritten by the extern layer (as libbpf's
        # bpf_object__collect_externs does) before the kernel sees them; not our job here.
        if any(getattr(t, "linkage", 0) == Linkage.EXTERN for t in btf):
            continue
        kernel_load_btf(marshal(btf))


def every_kind_for_kernel() -> BTF:
    btf = BTF()
    i = btf.add(Int("int", 4, INT_SIGNED))  # 1
    c = btf.add(Int("char", 1, INT_SIGNED, 8))  # 2
    p = btf.add(Ptr(i))  # 3
    arr = btf.add(Array(c, i, 4))  # 4
    st_ = btf.add(Struct("st", 16, [Member("a", i, 0, 3), Member("b", i, 3, 5),
                                    Member("p", p, 64, 0)], True))  # 5
    btf.add(Union_("un", 4, [Member("x", i, 0), Member("y", arr, 0)]))  # 6
    btf.add(Enum("en", 4, [EnumValue("NEG", -1), EnumValue("POS", 2)], True))  # 7
    btf.add(Fwd("fw", True))  # 8
    td = btf.add(Typedef("td", st_))  # 9
    btf.add(Volatile(td))  # 10
    btf.add(Const(i))  # 11
    btf.add(Restrict(p))  # 12
    fp = btf.add(FuncProto(i, [Param("x", i), Param("y", p)]))  # 13
    fn = btf.add(Func("fn", fp, Linkage.GLOBAL))  # 14
    v = btf.add(Var("v", i, Linkage.GLOBAL))  # 15
    w = btf.add(Var("w", arr, Linkage.STATIC))  # 16
    btf.add(Datasec(".data", 8, [VarSecinfo(v, 0, 4), VarSecinfo(w, 4, 4)]))  # 17
    btf.add(Float("float", 4))  # 18
    btf.add(DeclTag("dt", fn, 0))  # 19
    btf.add(DeclTag("whole", st_, -1))  # 20
    tt = btf.add(TypeTag("user", i))  # 21
    btf.add(Ptr(tt))  # 22
    btf.add(Enum64("e64", 8, [EnumValue("BIG", 1 << 40), EnumValue("M1", -1)], True))  # 23
    btf.add(Enum64("u64", 8, [EnumValue("MAX", (1 << 64) - 1)], False))  # 24
    return btf


@need_root
def test_kernel_loads_every_kind() -> None:
    btf = every_kind_for_kernel()
    kernel_load_btf(marshal(btf))
    kernel_load_btf(marshal(BTF.from_bytes(marshal(btf))))


@need_root
def test_kernel_loads_every_kind_sanitized() -> None:
    btf = every_kind_for_kernel()
    for f in (Features(has_enum64=False), Features(has_type_tag=False),
              Features(has_decl_tag=False), Features(has_float=False),
              Features(has_datasec=False), Features(has_func_global=False), Features.none()):
        kernel_load_btf(marshal(btf, sanitize=f))


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_split_on_vmlinux() -> None:
    vmlinux = BTF.from_bytes(open(VMLINUX, "rb").read())
    task = vmlinux.find("task_struct", Kind.STRUCT)[0]
    split = BTF(base=vmlinux)
    p = split.add(Ptr(task))
    s = split.add(Struct("my_wrapper", 8, [Member("task", p, 0)]))
    assert (p, s) == (len(vmlinux), len(vmlinux) + 1)
    blob = marshal(split)
    # "task" is a vmlinux string: shared, so only "my_wrapper" is in the split's own table.
    assert blob.endswith(b"\0my_wrapper\0") or blob.endswith(b"my_wrapper\0")
    parsed = BTF.from_bytes(blob, base=vmlinux)
    assert parsed.type(s) == split.type(s)
    assert parsed.find("my_wrapper") == [s]
