"""The fixture corpus against the reference loader (bpftool 7.1 / libbpf 1.1).

Every object in fixtures/ either loads with libbpf on this kernel, or is
listed in NOT_LOADABLE with the reason and a fragment of bpftool's error.
Also checks that the reference helper leaves no pins or programs behind and
that the corpus still contains the features other tests rely on.
"""

from __future__ import annotations

from pathlib import Path

import kernelref
import pytest
from elftools.elf.elffile import ELFFile

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
OBJECTS = sorted(FIXTURES.glob("*.bpf.o"))

# object name -> (why libbpf 1.1 on this kernel cannot load it, stderr fragment)
NOT_LOADABLE: dict[str, tuple[str, str]] = {
    "maps_legacy.bpf.o": (
        'legacy SEC("maps") struct bpf_map_def is rejected by libbpf 1.0+',
        "legacy map definitions",
    ),
    "core_fail.bpf.o": (
        "unresolvable CO-RE relocation is poisoned and the verifier reaches it",
        "failed to resolve CO-RE relocation",
    ),
    "externs_typed_ksym.bpf.o": (
        "typed ksym of a variable: kernel lacks CONFIG_KALLSYMS_ALL, so it cannot "
        "find the variable's address",
        "failed to find the address for kernel symbol",
    ),
    "sections_new.bpf.o": (
        "tcx/, netfilter, uprobe.multi, netkit/ section names are newer than libbpf 1.1",
        "failed to guess program type",
    ),
    "sections_trampoline.bpf.o": (
        "fentry/fexit/fmod_ret/lsm: this kernel refuses trampoline programs with EPERM",
        "Operation not permitted",
    ),
}

needs_bpftool = pytest.mark.skipif(
    not kernelref.bpftool_available(), reason="needs root and bpftool"
)


def test_corpus_complete() -> None:
    sources = sorted(p.name.removesuffix(".c") for p in (FIXTURES / "src").glob("*.bpf.c"))
    assert [p.name.removesuffix(".o") for p in OBJECTS] == sources
    assert set(NOT_LOADABLE) <= {p.name for p in OBJECTS}


@needs_bpftool
@pytest.mark.parametrize("obj", OBJECTS, ids=lambda p: p.name)
def test_libbpf_loads_or_documented(obj: Path) -> None:
    if obj.name in NOT_LOADABLE:
        _reason, fragment = NOT_LOADABLE[obj.name]
        with pytest.raises(kernelref.BpftoolError) as exc:
            kernelref.libbpf_progs(obj)
        assert fragment in exc.value.stderr
    else:
        progs = kernelref.libbpf_progs(obj)
        assert progs, f"{obj.name}: no programs pinned"
        for name, info in progs.items():
            assert len(info["tag"]) == 16
            # Kernel names are truncated to 15 chars (BPF_OBJ_NAME_LEN - 1).
            assert name.startswith(info["name"][:15])
        ids = [info["id"] for info in progs.values()]
        assert kernelref.wait_progs_gone(ids) == []
    assert kernelref.leftover_pins() == []


@needs_bpftool
def test_tags_are_stable() -> None:
    # Same object, same kernel, same libbpf: same relocated instructions.
    first = kernelref.libbpf_tags(FIXTURES / "opensnoop.bpf.o")
    assert kernelref.libbpf_tags(FIXTURES / "opensnoop.bpf.o") == first
    assert set(first) == {
        "tracepoint__syscalls__sys_enter_openat",
        "tracepoint__syscalls__sys_exit_openat",
    }


@needs_bpftool
def test_by_name_map_pin_removed() -> None:
    pin = kernelref.BPFFS / "pyebpf_fixture_pinned"
    existed = pin.exists()
    assert kernelref.bpftool_loads(FIXTURES / "maps_btf.bpf.o")
    assert pin.exists() == existed


@needs_bpftool
def test_bpftool_loads() -> None:
    assert kernelref.bpftool_loads(FIXTURES / "minimal.bpf.o")
    assert not kernelref.bpftool_loads(FIXTURES / "maps_legacy.bpf.o")


def _sections(obj: str) -> dict[str, object]:
    with open(FIXTURES / obj, "rb") as f:
        elf = ELFFile(f)
        return {
            s.name: s.data() if s["sh_type"] != "SHT_NOBITS" else None for s in elf.iter_sections()
        }


@pytest.mark.parametrize(
    ("obj", "names"),
    [
        (
            "globals.bpf.o",
            {".data", ".bss", ".rodata", ".data.foo", ".rodata.bar", ".rodata.str1.1"},
        ),
        ("minimal.bpf.o", {".bss", ".rodata", ".debug_info", ".rel.debug_info", ".BTF.ext"}),
        ("maps_legacy.bpf.o", {"maps"}),
        ("maps_btf.bpf.o", {".maps", ".rel.maps"}),
        ("sections_struct_ops.bpf.o", {".struct_ops", ".rel.struct_ops"}),
        ("subprogs.bpf.o", {".text", ".rel.text"}),
        ("opensnoop.bpf.o", {".rodata", ".maps", ".BTF", ".BTF.ext"}),
    ],
)
def test_corpus_has_sections(obj: str, names: set[str]) -> None:
    assert names <= set(_sections(obj))


def test_externs_are_undefined_symbols() -> None:
    # .kconfig/.ksyms exist only as BTF DATASECs; in ELF they are UND symbols.
    with open(FIXTURES / "externs.bpf.o", "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        und = {s.name for s in symtab.iter_symbols() if s["st_shndx"] == "SHN_UNDEF" and s.name}
    assert {
        "CONFIG_HZ",
        "LINUX_KERNEL_VERSION",
        "__start_BTF",
        "bpf_task_acquire",
        "bpf_pyebpf_no_such_kfunc",
    } <= und


def test_isa_v4_has_v4_opcodes() -> None:
    code = _sections("isa_v4.bpf.o")["syscall"]
    assert isinstance(code, bytes)
    ops = {code[i] for i in range(0, len(code), 8)}
    # BPF_LDX | BPF_MEMSX: 0x81 (W), 0x89 (H), 0x91 (B); BPF_END|BPF_ALU64 = 0xd7.
    assert ops & {0x81, 0x89, 0x91}
    assert 0xD7 in ops
    # sdiv/smod are div/mod (0x3f/0x9f for 64-bit reg) with off=1.
    assert any(
        code[i] in (0x3F, 0x9F, 0x37, 0x97) and code[i + 2] == 1 for i in range(0, len(code), 8)
    )
