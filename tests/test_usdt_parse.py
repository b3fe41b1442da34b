"""pyebpf.obj.usdt without a kernel: .note.stapsdt parsing, address -> file offset resolution,
x86-64 operand parsing, struct __bpf_usdt_spec bytes, and the SEC("usdt/...") grammar.

File offsets are cross-checked against pyelftools' view of the same binaries.
"""

from __future__ import annotations

import os
import shutil
import struct

import pytest
from elftools.elf.elffile import ELFFile

from pyebpf import ObjectSpec
from pyebpf.errors import ObjectError, OptionError
from pyebpf.links.usdt import parse_usdt_section
from pyebpf.obj import usdt as U

HERE = os.path.dirname(__file__)
TARGET = os.path.join(HERE, "..", "fixtures", "targets", "usdt_target")
THROW = os.path.join(HERE, "..", "fixtures", "targets", "usdt_throw")
NOPIE = os.path.join(HERE, "..", "fixtures", "targets", "usdt_target_nopie")
BPF_OBJ = os.path.join(HERE, "..", "fixtures", "unit", "attach_usdt.bpf.o")

# pt_regs offsets on x86-64 (arch/x86/include/asm/ptrace.h)
RDI, RAX, RBP, RSP, RIP, R8, R15, RCX, RSI = 112, 80, 32, 152, 128, 72, 0, 88, 104


def _elftools_offset(path: str, vaddr: int, *, exec_: bool) -> int:
    """File offset of ``vaddr`` through pyelftools' PT_LOAD segments."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            h = seg.header
            if h.p_type != "PT_LOAD" or not h.p_vaddr <= vaddr < h.p_vaddr + h.p_memsz:
                continue
            assert bool(h.p_flags & 1) == exec_
            return vaddr - h.p_vaddr + h.p_offset
    raise AssertionError(f"{vaddr:#x} in no segment")


def _elftools_symbol(path: str, name: str) -> int:
    with open(path, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"]


# --- the fixture binary -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [TARGET, NOPIE], ids=["pie", "no_pie"])
def test_target_probes(path: str) -> None:
    elf = U.read_usdt_elf(path)
    assert elf.is_shared == (path == TARGET)
    probes = U.list_usdt_probes(elf)
    names = [p.qualname for p in probes]
    assert sorted(set(names)) == [f"usdt_test:{n}" for n in
                                  ("consts", "mem", "noargs", "regs", "sema", "sib", "step",
                                   "twice")]
    assert names.count("usdt_test:twice") == 2
    for p in probes:
        assert p.file_offset == _elftools_offset(path, p.abs_ip, exec_=True)
        assert p.abs_ip == p.loc_addr  # not prelinked
        # a position-dependent executable is linked at 0x400000: addresses are not offsets
        assert (p.abs_ip == p.file_offset) == (path == TARGET)
    sema = [p for p in probes if p.sema_addr]
    assert [p.name for p in sema] == ["sema"]
    # the semaphore is the variable usdt_test_sema_semaphore in .probes, in a data segment
    assert sema[0].sema_addr == _elftools_symbol(path, "usdt_test_sema_semaphore")
    assert sema[0].sema_offset == _elftools_offset(path, sema[0].sema_addr, exec_=False)
    noargs = U.find_usdt_probes(path, "usdt_test", "noargs")
    assert noargs[0].args == "" and noargs[0].parse_args() == []


def test_target_args() -> None:
    by = {p.name: p.parse_args() for p in U.list_usdt_probes(TARGET) if p.name != "twice"}
    consts = by["consts"]
    assert [a.kind for a in consts] == [U.ArgKind.CONST] * 6
    assert [(a.size, a.signed) for a in consts] == [(1, True), (2, False), (4, True), (8, False),
                                                   (8, True), (1, False)]
    assert consts[2].val_off == -100000 and consts[3].val_off == 1234567890123
    assert {a.kind for a in by["regs"]} == {U.ArgKind.REG}
    assert [a.size for a in by["regs"]] == [1, 2, 4, 8, 1, 8]
    mem = by["mem"]
    assert {a.kind for a in mem} == {U.ArgKind.REG_DEREF}
    assert [a.size for a in mem] == [4, 2, 1, 8, 8]
    assert any(a.val_off < 0 for a in mem)  # a frame-pointer local: negative displacement
    (sib,) = by["sib"]
    assert (sib.kind, sib.size, sib.signed, sib.reg, sib.idx_reg, sib.scale) == (
        U.ArgKind.SIB, 4, True, "rdi", "rsi", 4)
    twice = [p.parse_args() for p in U.find_usdt_probes(TARGET, "usdt_test", "twice")]
    assert {tuple(a.kind for a in t) for t in twice} == {
        (U.ArgKind.CONST, U.ArgKind.CONST), (U.ArgKind.REG, U.ArgKind.REG)}


def test_system_binaries_with_notes() -> None:
    """Every stapsdt note of the system binaries that have them resolves and parses."""
    seen = 0
    for path in ("/usr/bin/python3", "/lib/x86_64-linux-gnu/libstdc++.so.6",
                 "/lib/x86_64-linux-gnu/libc.so.6"):
        if not os.path.exists(path):
            continue
        try:
            probes = U.list_usdt_probes(path)
        except U.UsdtError as e:
            assert "no USDT notes" in str(e)
            continue
        for p in probes:
            p.parse_args()
            assert p.file_offset == _elftools_offset(path, p.abs_ip, exec_=True)
            if p.sema_addr:
                assert p.sema_offset == _elftools_offset(path, p.sema_addr, exec_=False)
            seen += 1
    if not seen:
        pytest.skip("no system binary with USDT notes here")


def test_throw_target_is_cxx() -> None:
    with open(THROW, "rb") as f:
        needed = [t.needed for t in ELFFile(f).get_section_by_name(".dynamic").iter_tags()
                  if t.entry.d_tag == "DT_NEEDED"]
    assert "libstdc++.so.6" in needed


# --- errors reading binaries ------------------------------------------------------------------


def test_no_notes() -> None:
    with pytest.raises(U.UsdtError, match=r"no \.note\.stapsdt section"):
        U.read_usdt_elf("/bin/true" if os.path.exists("/bin/true") else "/bin/sh")


def test_not_elf(tmp_path) -> None:
    p = tmp_path / "text"
    p.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(U.UsdtError, match="not an ELF file") as ei:
        U.read_usdt_elf(str(p))
    assert isinstance(ei.value, ObjectError) and ei.value.path == str(p)


def test_relocatable_rejected() -> None:
    with pytest.raises(U.UsdtError, match=r"ELF type 1 is not supported"):
        U.read_usdt_elf(BPF_OBJ)


def test_truncated(tmp_path) -> None:
    data = open(TARGET, "rb").read()
    for cut in (40, 200, len(data) // 2):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(data[:cut])
        with pytest.raises(U.UsdtError):
            U.read_usdt_elf(str(p))


def test_unknown_probe_lists_existing() -> None:
    with pytest.raises(U.UsdtError) as ei:
        U.find_usdt_probes(TARGET, "usdt_test", "nope")
    msg = str(ei.value)
    assert "no USDT probe usdt_test:nope" in msg
    assert "usdt_test:sema" in msg and "usdt_test:step" in msg


# --- notes from bytes -------------------------------------------------------------------------


def _note(desc: bytes, name: bytes = b"stapsdt\0", ntype: int = 3) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def _desc(loc: int, base: int, sema: int, provider: bytes, name: bytes, args: bytes) -> bytes:
    return struct.pack("<QQQ", loc, base, sema) + provider + b"\0" + name + b"\0" + args + b"\0"


def test_parse_notes_bytes() -> None:
    data = (_note(_desc(0x1000, 0x2000, 0, b"p", b"a", b"-4@%eax 8@$5"))
            + _note(_desc(0x1010, 0x2000, 0x3000, b"p", b"b", b"")))
    notes = U.parse_stapsdt_notes(data)
    assert notes == [U.UsdtNote("p", "a", "-4@%eax 8@$5", 0x1000, 0x2000, 0),
                     U.UsdtNote("p", "b", "", 0x1010, 0x2000, 0x3000)]
    # libbpf treats an argument string starting with ':' as none
    assert U.parse_stapsdt_notes(_note(_desc(1, 2, 0, b"p", b"c", b":x")))[0].args == ""


@pytest.mark.parametrize("data, match", [
    (_note(b"\0" * 20), "too short"),
    (_note(_desc(1, 2, 0, b"p", b"", b"")), "lacks a provider, name"),
    (_note(struct.pack("<QQQ", 1, 2, 0) + b"p\0name"), "lacks a provider, name"),
    (_note(_desc(1, 2, 0, b"p", b"n", b""), name=b"GNU\0"), "not a stapsdt note"),
    (_note(_desc(1, 2, 0, b"p", b"n", b""), ntype=1), "not a stapsdt note"),
    (_note(_desc(1, 2, 0, b"p", b"n", b""))[:-8], "runs past the section end"),
])
def test_parse_notes_malformed(data: bytes, match: str) -> None:
    with pytest.raises(U.UsdtError, match=match):
        U.parse_stapsdt_notes(data, path="x")


def test_prelink_base_and_segments() -> None:
    segs = [U.Segment(0x400000, 0x401000, 0, False), U.Segment(0x401000, 0x402000, 0x1000, True),
            U.Segment(0x403000, 0x404000, 0x2000, False)]
    note = U.UsdtNote("p", "n", "", 0x401100, 0x401f00, 0x403010)
    # .stapsdt.base moved by +0x10 since link time: the site moves with it, the semaphore
    # does not (libbpf adjusts only the probe address)
    elf = U.UsdtElf("bin", U.ET_EXEC, U.EM_X86_64, segs, 0x401f10, [note])
    (p,) = U.resolve_notes(elf)
    assert (p.abs_ip, p.file_offset, p.sema_offset) == (0x401110, 0x1110, 0x2010)
    # no .stapsdt.base section: no adjustment
    elf0 = U.UsdtElf("bin", U.ET_EXEC, U.EM_X86_64, segs, 0, [note])
    assert U.resolve_notes(elf0)[0].abs_ip == 0x401100
    bad = [U.UsdtNote("p", "n", "", 0x400010, 0, 0)]
    with pytest.raises(U.UsdtError, match="non-executable segment"):
        U.resolve_notes(U.UsdtElf("bin", U.ET_EXEC, U.EM_X86_64, segs, 0, bad))
    bad = [U.UsdtNote("p", "n", "", 0x900000, 0, 0)]
    with pytest.raises(U.UsdtError, match="no loadable segment holds the probe"):
        U.resolve_notes(U.UsdtElf("bin", U.ET_EXEC, U.EM_X86_64, segs, 0, bad))
    bad = [U.UsdtNote("p", "n", "", 0x401100, 0, 0x401200)]
    with pytest.raises(U.UsdtError, match="semaphore .* executable segment"):
        U.resolve_notes(U.UsdtElf("bin", U.ET_EXEC, U.EM_X86_64, segs, 0, bad))


def test_vma_segments() -> None:
    maps = (
        "55d0a000-55d0b000 r--p 00000000 08:01 42   /opt/app/libx.so\n"
        "55d0b000-55d0c000 r-xp 00001000 08:01 42   /opt/app/libx.so\n"
        "55d0c000-55d0d000 rw-p 00002000 08:01 42   /opt/app/libx.so\n"
        "7f000000-7f001000 r-xp 00000000 08:01 43   /opt/app/libx.so.old\n"
        "7f100000-7f101000 rw-p 00000000 00:00 0\n"
    )
    segs = U.vma_segments(maps, "/opt/app/libx.so")
    assert segs == [U.Segment(0x55d0b000, 0x55d0c000, 0x1000, True)]
    assert U.vma_address(segs, 0x1234) == 0x55d0b234
    assert U.vma_address(segs, 0x2000) is None


# --- operands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, size, signed, val_off, reg_off", [
    ("-4@-1204(%rbp)", U.ArgKind.REG_DEREF, 4, True, -1204, RBP),
    ("-4@%edi", U.ArgKind.REG, 4, True, 0, RDI),
    ("-8@%r8", U.ArgKind.REG, 8, True, 0, R8),
    ("-4@$5", U.ArgKind.CONST, 4, True, 5, 0),
    ("-4@$-9", U.ArgKind.CONST, 4, True, -9, 0),
    ("8@%rdx", U.ArgKind.REG, 8, False, 0, 96),
    ("-2@%cx", U.ArgKind.REG, 2, True, 0, RCX),
    ("-1@%sil", U.ArgKind.REG, 1, True, 0, RSI),
    ("1@%r15b", U.ArgKind.REG, 1, False, 0, R15),
    ("8@(%rsp)", U.ArgKind.REG_DEREF, 8, False, 0, RSP),
    ("2@16(%rax)", U.ArgKind.REG_DEREF, 2, False, 16, RAX),
    ("8@%rip", U.ArgKind.REG, 8, False, 0, RIP),
    ("8@24(%rip)", U.ArgKind.REG_DEREF, 8, False, 24, RIP),  # libbpf reads it the same way
    (" 4 @ $ 7", None, None, None, None, None),  # '$' must touch the number: unrecognized
])
def test_parse_operand(text, kind, size, signed, val_off, reg_off) -> None:
    if kind is None:
        with pytest.raises(U.UsdtError, match="unrecognized USDT argument"):
            U.parse_usdt_arg(text)
        return
    arg, n = U.parse_usdt_arg(text)
    assert n == len(text)
    assert (arg.kind, arg.size, arg.signed, arg.val_off, arg.reg_off) == (kind, size, signed,
                                                                          val_off, reg_off)
    assert arg.bitshift == 64 - 8 * size


def test_parse_sib() -> None:
    args = U.parse_usdt_args("1@-96(%rbp,%rax,8) 2@(%rbp,%rcx) -4@16(%rsp,%rdi,4)")
    assert [(a.kind, a.val_off, a.reg_off, a.idx_reg_off, a.scale) for a in args] == [
        (U.ArgKind.SIB, -96, RBP, RAX, 8), (U.ArgKind.SIB, 0, RBP, RCX, 1),
        (U.ArgKind.SIB, 16, RSP, RDI, 4)]
    with pytest.raises(U.UsdtError, match="scale 3"):
        U.parse_usdt_args("1@(%rbp,%rax,3)")


def test_parse_whole_string() -> None:
    s = "-4@-1204(%rbp) -4@%edi -8@-1216(%rbp) -8@%r8 -4@$5 -8@%r9 8@%rdx 8@%r10 -4@$-9 -2@%cx -2@%ax -1@%sil"
    args = U.parse_usdt_args(s)
    assert len(args) == 12 and " ".join(a.text for a in args) == s
    assert U.parse_usdt_args("   ") == []
    with pytest.raises(U.UsdtError, match="too many USDT arguments"):
        U.parse_usdt_args(s + " 8@%rax")


@pytest.mark.parametrize("text, match", [
    ("3@%eax", "unsupported size 3"),
    ("16@%rax", "unsupported size 16"),
    ("4@%xmm0", "unrecognized x86-64 register '%xmm0'"),
    ("4@8(%foo)", "unrecognized x86-64 register '%foo'"),
    ("-4@counter(%rip)", "symbol-relative operand"),
    ("-4@counter+8(%rip)", "symbol-relative operand"),
    ("hello", "unrecognized USDT argument #0 spec 'hello'"),
    ("8@$99999999999999999999999", "does not fit in 64 bits"),
])
def test_parse_operand_errors(text: str, match: str) -> None:
    with pytest.raises(U.UsdtError, match=match):
        U.parse_usdt_args(text, probe="p:n")


def test_probe_name_in_arg_error() -> None:
    with pytest.raises(U.UsdtError, match=r"^p:n: unrecognized USDT argument #1"):
        U.parse_usdt_args("4@%eax nope", probe="p:n")


# --- spec bytes -------------------------------------------------------------------------------


def test_encode_spec_libbpf_1_1() -> None:
    args = U.parse_usdt_args("-4@-20(%rbp) 2@%ax 8@$-1")
    raw = U.encode_usdt_spec(args, cookie=0xDEADBEEF)
    assert len(raw) == 208
    # struct __bpf_usdt_arg_spec: u64 val_off, enum arg_type, short reg_off, bool signed, char shift
    assert raw[0:16] == struct.pack("<QIhBB", (-20) & (2**64 - 1), 2, RBP, 1, 32)
    assert raw[16:32] == struct.pack("<QIhBB", 0, 1, RAX, 0, 48)
    assert raw[32:48] == struct.pack("<QIhBB", 2**64 - 1, 0, 0, 0, 0)
    assert raw[48:192] == bytes(144)
    assert struct.unpack_from("<Qh", raw, 192) == (0xDEADBEEF, 3)
    fields, cookie = U.decode_usdt_spec(raw)
    assert cookie == 0xDEADBEEF and len(fields) == 3
    assert fields[1] == {"val_off": 0, "arg_type": 1, "reg_off": RAX, "arg_signed": 0,
                         "arg_bitshift": 48}


def test_encode_sib_needs_new_header() -> None:
    args = U.parse_usdt_args("1@-96(%rbp,%rax,8)")
    with pytest.raises(U.UsdtError, match="scale-index-base operand"):
        U.encode_usdt_spec(args)
    # a libbpf >= 1.7 style layout (arg_type:8, idx_reg_off:12, scale_bitshift:4, reserved:8)
    new = U.SpecLayout(size=208, arg_size=16, args_off=0, max_args=12, cookie_off=192, cnt_off=200,
                       arg_fields=(("val_off", 0, 64), ("arg_type", 64, 8),
                                   ("idx_reg_off", 72, 12), ("scale_bitshift", 84, 4),
                                   ("__reserved", 88, 8), ("reg_off", 96, 16),
                                   ("arg_signed", 112, 8), ("arg_bitshift", 120, 8)))
    raw = U.encode_usdt_spec(args, layout=new)
    word = int.from_bytes(raw[8:12], "little")
    assert (word & 0xFF, (word >> 8) & 0xFFF, (word >> 20) & 0xF, word >> 24) == (3, RAX, 3, 0)
    assert U.decode_usdt_spec(raw, new)[0][0]["idx_reg_off"] == RAX


def test_layout_libbpf_1_7_shape() -> None:
    """An object whose struct __bpf_usdt_spec has the SIB bitfields: the layout comes from
    its BTF (24-byte argument specs, as C lays those bitfields out)."""
    spec = ObjectSpec.from_file(os.path.join(HERE, "..", "fixtures", "unit",
                                             "attach_usdt_sib_layout.bpf.o"))
    layout = U.spec_layout_from_btf(spec.btf)
    assert layout is not None and layout.sib
    assert (layout.size, layout.arg_size, layout.cookie_off, layout.cnt_off) == (304, 24, 288, 296)
    assert spec.maps["__bpf_usdt_specs"].value_size == layout.size
    assert layout.field("arg_type") == (64, 8) and layout.field("idx_reg_off") == (80, 12)
    assert layout.field("scale_bitshift") == (92, 4) and layout.field("reg_off") == (112, 16)
    args = U.parse_usdt_args("-4@-8(%rdi,%rsi,4) 8@%rax")
    raw = U.encode_usdt_spec(args, 5, layout)
    assert len(raw) == 304
    assert struct.unpack_from("<q", raw, 0)[0] == -8
    assert raw[8] == 3 and int.from_bytes(raw[10:12], "little") == RSI | (2 << 12)
    assert struct.unpack_from("<hBB", raw, 14) == (RDI, 1, 32)
    assert raw[24 + 8] == 1 and struct.unpack_from("<hBB", raw, 24 + 14) == (RAX, 0, 0)
    assert struct.unpack_from("<Qh", raw, 288) == (5, 2)


def test_layout_from_fixture_btf() -> None:
    spec = ObjectSpec.from_file(BPF_OBJ)
    layout = U.spec_layout_from_btf(spec.btf)
    assert layout == U.LIBBPF_1_1_LAYOUT
    assert spec.maps["__bpf_usdt_specs"].value_size == layout.size
    assert U.spec_layout_from_btf(ObjectSpec.from_file(
        os.path.join(HERE, "..", "fixtures", "unit", "attach_usdt_nomaps.bpf.o")).btf) is None


# --- SEC("usdt/...") --------------------------------------------------------------------------


@pytest.mark.parametrize("section, want", [
    ("usdt", None),
    ("usdt.s", None),
    ("usdt/libc.so.6:libc:setjmp", ("libc.so.6", "libc", "setjmp")),
    ("usdt//usr/bin/python3:python:function__entry", ("/usr/bin/python3", "python", "function__entry")),
    ("usdt.s/./bin:p:n", ("./bin", "p", "n")),
    ("usdt/a:b:c:ignored", ("a", "b", "c")),  # libbpf's sscanf stops at the third ':'
])
def test_section_parse(section: str, want) -> None:
    assert parse_usdt_section(section) == want


@pytest.mark.parametrize("section", ["usdt/", "usdt/a", "usdt/a:b", "usdt/a::c", "usdt/:b:c",
                                     "usdtx/a:b:c"])
def test_section_parse_errors(section: str) -> None:
    with pytest.raises(OptionError, match="expected SEC"):
        parse_usdt_section(section)


def test_copy_of_target_same_probes(tmp_path) -> None:
    dst = tmp_path / "copy"
    shutil.copy(TARGET, dst)
    assert U.list_usdt_probes(str(dst)) == U.list_usdt_probes(TARGET)


def test_fuzz_only_usdt_errors(tmp_path) -> None:
    """Corrupt binaries, note sections and operand strings give UsdtError, nothing else."""
    import random

    rnd = random.Random(7)
    data = open(TARGET, "rb").read()
    notes_at = U.read_usdt_elf(TARGET)  # where to aim: headers, notes, the end
    assert notes_at.notes
    p = tmp_path / "f"
    for _ in range(400):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 12)):
            pos = rnd.choice([rnd.randrange(64), rnd.randrange(len(b)), len(b) - 1 - rnd.randrange(4096)])
            b[pos] = rnd.randrange(256)
        p.write_bytes(bytes(b))
        try:
            for probe in U.list_usdt_probes(str(p)):
                probe.parse_args()
        except U.UsdtError:
            pass
    for _ in range(2000):
        try:
            U.parse_stapsdt_notes(bytes(rnd.randrange(256) for _ in range(rnd.randrange(100))))
        except U.UsdtError:
            pass
        text = "".join(rnd.choice("0123456789-+@%$(),: abcdeilrsx") for _ in range(rnd.randrange(30)))
        try:
            U.parse_usdt_args(text)
        except U.UsdtError:
            pass
