"""The ELF reader: real fixtures parse to the expected sections/symbols, bad input raises ObjectError."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyebpf.errors import ObjectError
from pyebpf.obj import elf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _load(name: str) -> elf.ElfObject:
    path = FIXTURES / f"{name}.bpf.o"
    if not path.exists():
        pytest.skip(f"fixture {path.name} not built")
    return elf.read_elf(path.read_bytes(), str(path))


def test_opensnoop_sections_symbols_relocs() -> None:
    obj = _load("opensnoop")
    names = [s.name for s in obj.sections]
    for want in ("tracepoint/syscalls/sys_enter_openat", "tracepoint/syscalls/sys_exit_openat",
                 ".rodata", ".maps", "license", ".BTF", ".BTF.ext", ".symtab"):
        assert want in names
    enter = obj.section("tracepoint/syscalls/sys_enter_openat")
    assert enter is not None and enter.is_exec and enter.size % 8 == 0
    assert obj.section("license").data.rstrip(b"\0") == b"Dual BSD/GPL"
    syms = {s.name: s for s in obj.symbols if s.name}
    fn = syms["tracepoint__syscalls__sys_enter_openat"]
    assert fn.type == elf.STT_FUNC and fn.bind == elf.STB_GLOBAL and fn.shndx == enter.index
    assert fn.size == enter.size and fn.value == 0
    assert syms["events"].shndx == obj.section(".maps").index
    # every ld_imm64 map reference in the program is an R_BPF_64_64 at an 8-aligned offset
    rels = obj.relocs[enter.index]
    assert rels and all(r.type == elf.R_BPF_64_64 and r.offset % 8 == 0 for r in rels)
    assert {obj.symbols[r.sym].name for r in rels} >= {"targ_tgid", "targ_pid", "start"}


def test_bss_is_nobits_with_size() -> None:
    obj = _load("minimal")
    bss = obj.section(".bss")
    assert bss is not None and bss.type == elf.SHT_NOBITS and bss.data == b"" and bss.size == 4


def test_subprog_call_relocs() -> None:
    obj = _load("subprogs")
    text = obj.section(".text")
    assert text is not None and text.size > 0
    calls = [r for r in obj.relocs[obj.section("tp/syscalls/sys_enter_getpid").index]
             if r.type == elf.R_BPF_64_32]
    assert calls, "expected R_BPF_64_32 call relocations"


def _minimal_bytes() -> bytes:
    path = FIXTURES / "minimal.bpf.o"
    if not path.exists():
        pytest.skip("fixture not built")
    return path.read_bytes()


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda d: b"", "not an ELF"),
        (lambda d: b"\x7fELF" + b"\0" * 10, "not an ELF"),
        (lambda d: d[:4] + b"\x01" + d[5:], "64-bit"),
        (lambda d: d[:5] + b"\x02" + d[6:], "little-endian"),
        (lambda d: d[:18] + struct.pack("<H", 62) + d[20:], "EM_BPF"),
        (lambda d: d[:16] + struct.pack("<H", 2) + d[18:], "ET_REL"),
        (lambda d: d[: len(d) // 2], "outside the file"),
    ],
)
def test_malformed(mutate, msg) -> None:
    data = _minimal_bytes()
    with pytest.raises(ObjectError, match=msg):
        elf.read_elf(mutate(data))


def test_bad_section_offset() -> None:
    data = bytearray(_minimal_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    # section #3's sh_offset -> far beyond the end
    struct.pack_into("<Q", data, shoff + 3 * 64 + 24, 1 << 40)
    with pytest.raises(ObjectError, match="outside the file"):
        elf.read_elf(bytes(data))
