"""CO-RE relocation against the running kernel's BTF (/sys/kernel/btf/vmlinux).

Reading the kernel BTF needs no root. The comparisons with libbpf (bpftool's debug
log and the kernel's program tags) need root and bpftool and are skipped otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from pyebpf import insn as I
from pyebpf.btf.core import CoreRelocator, CoreResult
from pyebpf.btf.ext import CoreRelo, CoreReloKind, parse_btf_ext
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import Int, Kind, Member, Ptr, Struct, skip_modifiers
from pyebpf.obj.elf import read_elf

VMLINUX = "/sys/kernel/btf/vmlinux"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")


@pytest.fixture(scope="module")
def kbtf():
    from pyebpf.btf.kernel import kernel_btf

    return kernel_btf()


def _kernel_member(kbtf, struct_name: str, member: str) -> tuple[int, Member]:
    (sid,) = [i for i in kbtf.find(struct_name) if kbtf.type(i).kind == Kind.STRUCT]
    for m in kbtf.type(sid).members:
        if m.name == member:
            return sid, m
    raise AssertionError(f"{struct_name}.{member} not in kernel BTF")


def _local_task() -> tuple[BTF, int]:
    b = BTF()
    i32 = b.add(Int("int", 4, 1))
    u32 = b.add(Int("unsigned int", 4, 0))
    tid = b.add(Struct("task_struct", 8, [Member("pid", i32, 0), Member("tgid", i32, 32),
                                          Member("__state", u32, 64)]))
    return b, tid


def test_task_struct_pid_offset(kbtf):
    local, tid = _local_task()
    r = CoreRelocator(local, [kbtf])
    res = r.resolve(CoreRelo(0, tid, "0:0", CoreReloKind.FIELD_BYTE_OFFSET))
    ksid, m = _kernel_member(kbtf, "task_struct", "pid")
    assert res.new_val == m.bit_offset // 8
    assert res.target_spec.root_type_id == ksid
    assert not res.poison
    assert str(res).endswith(f"{res.orig_val} -> {m.bit_offset // 8}")
    assert "struct task_struct.pid" in str(res)


def test_kernel_kinds(kbtf):
    local, tid = _local_task()
    r = CoreRelocator(local, [kbtf])
    ksid, m = _kernel_member(kbtf, "task_struct", "tgid")
    size = r.resolve(CoreRelo(0, tid, "0", CoreReloKind.TYPE_SIZE))
    assert size.new_val == kbtf.type(ksid).size
    tgt = r.resolve(CoreRelo(0, tid, "0", CoreReloKind.TYPE_ID_TARGET))
    assert tgt.new_val == ksid
    tgid = r.resolve(CoreRelo(0, tid, "0:1", CoreReloKind.FIELD_BYTE_OFFSET))
    assert tgid.new_val == m.bit_offset // 8
    sz = r.resolve(CoreRelo(0, tid, "0:1", CoreReloKind.FIELD_BYTE_SIZE))
    assert sz.new_val == 4
    signed = r.resolve(CoreRelo(0, tid, "0:1", CoreReloKind.FIELD_SIGNED))
    assert signed.new_val == 1
    ex = r.resolve(CoreRelo(0, tid, "0:2", CoreReloKind.FIELD_EXISTS))
    assert ex.new_val == 1


def test_kernel_missing_field_poisons(kbtf):
    b = BTF()
    lng = b.add(Int("long", 8, 1))
    tid = b.add(Struct("task_struct___old", 8, [Member("state", lng, 0)]))
    r = CoreRelocator(b, [kbtf])
    res = r.resolve(CoreRelo(0, tid, "0:0", CoreReloKind.FIELD_BYTE_OFFSET))
    assert res.poison and res.target_spec is None
    assert res.candidates and not res.candidates[0].matched
    assert "state" in res.candidates[0].reason
    ex = r.resolve(CoreRelo(0, tid, "0:0", CoreReloKind.FIELD_EXISTS))
    assert ex.new_val == 0 and not ex.poison


# -- comparison with libbpf ------------------------------------------------------------

_PATCHED = re.compile(r"prog '(\S+)': relo #(\d+): patched insn #(\d+) \(([A-Z0-9/]+)\) "
                      r"(?:imm64|imm|off) (\d+) -> (\d+)")
_POISON = re.compile(r"prog '(\S+)': relo #(\d+): substituting insn #(\d+) w/ invalid insn")


def _kernelref():
    try:
        import kernelref  # type: ignore[import-not-found]
    except ImportError:
        from tests import kernelref  # type: ignore[no-redef]
    return kernelref


def _bpftool_ok() -> bool:
    return _kernelref().bpftool_available()


def _libbpf_log(obj: Path) -> dict[tuple[str, int], tuple[int, int | None]]:
    """(prog, relo #) -> (insn #, new value or None when poisoned), from libbpf's debug log."""
    kr = _kernelref()
    pin = kr.BPFFS / f"pyebpf_core_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    by_name = [kr.BPFFS / n for n in kr._object_map_names(obj)]
    preexisting = {p for p in by_name if p.exists()}
    try:
        p = subprocess.run([kr.BPFTOOL, "-d", "prog", "loadall", str(obj), str(pin)],
                           capture_output=True, text=True, timeout=120)
    finally:
        kr._remove_pins(pin)
        for q in by_name:  # LIBBPF_PIN_BY_NAME maps we created
            if q not in preexisting and q.exists():
                q.unlink()
    out: dict[tuple[str, int], tuple[int, int | None]] = {}
    for m in _PATCHED.finditer(p.stderr):
        out[(m.group(1), int(m.group(2)))] = (int(m.group(3)), int(m.group(6)))
    for m in _POISON.finditer(p.stderr):
        out.setdefault((m.group(1), int(m.group(2))), (int(m.group(3)), None))
    return out


def _load_obj(path: Path):
    elf = read_elf(path.read_bytes(), str(path))
    btf = BTF.from_bytes(elf.section(".BTF").data)
    ext = parse_btf_ext(elf.section(".BTF.ext").data, btf)
    return elf, btf, ext


def _funcs(elf, sec: str) -> list[tuple[str, int, int]]:
    """(name, first insn, end insn) of every function symbol in a section."""
    idx = elf.section(sec).index
    return sorted(((s.name, s.value // 8, (s.value + s.size) // 8) for s in elf.symbols
                   if s.type == 2 and s.shndx == idx), key=lambda f: f[1])


def _relocate_obj(path: Path, kbtf) -> list[tuple[str, int, int, CoreResult, bytearray]]:
    """Resolve and apply every CO-RE relocation in libbpf's order, one relocator per object
    (libbpf's candidate cache lives per object). Returns
    (program, relo # within its section, insn # within the program, result, program insns)."""
    elf, btf, ext = _load_obj(path)
    r = CoreRelocator(btf, [kbtf])
    out = []
    for sec, relos in ext.core_relos.items():
        data = elf.section(sec).data
        funcs = _funcs(elf, sec)
        insns = {name: bytearray(data[lo * 8:hi * 8]) for name, lo, hi in funcs}
        for i, relo in enumerate(relos):
            name, lo, _ = next(f for f in funcs if f[1] <= relo.insn_off < f[2])
            res = r.resolve(relo, i, name)
            r.apply(insns[name], relo, res, name, insn_idx=relo.insn_off - lo, relo_index=i)
            out.append((name, i, relo.insn_off - lo, res, insns[name]))
    return out


@pytest.mark.parametrize("obj", ["core.bpf.o", "core_fail.bpf.o", "opensnoop.bpf.o",
                                 "sections.bpf.o", "sections_struct_ops.bpf.o",
                                 "externs.bpf.o"])
def test_matches_libbpf_log(kbtf, obj):
    if not _bpftool_ok():
        pytest.skip("needs root and bpftool")
    path = FIXTURES / obj
    ref = _libbpf_log(path)
    if not ref:
        pytest.skip("libbpf stopped before CO-RE relocation")
    seen = 0
    for prog, i, idx, res, insns in _relocate_obj(path, kbtf):
        key = (prog, i)
        if key not in ref:
            continue  # e.g. a subprogram libbpf did not relocate
        ref_idx, val = ref[key]
        assert idx == ref_idx, key
        if val is None:
            assert res.poison or res.fail_memsz_adjust, f"{key}: {res}"
            assert I.get(insns, idx).imm == I.CORE_POISON_IMM
        else:
            assert not res.poison, f"{key}: {res}"
            assert res.new_val == val, f"{key}: {res}"
        seen += 1
    assert seen == len(ref)


def _as_loaded(elf, sec: str, lo: int, insns: bytearray) -> bytearray:
    """Mimic libbpf's map relocations: ld_imm64 of a map gets src_reg MAP_FD, of global
    data MAP_VALUE (the kernel zeroes their immediates before computing the tag)."""
    for rel in elf.relocs.get(elf.section(sec).index, []):
        k = rel.offset // 8 - lo
        if not 0 <= k < I.count(insns) or I.get(insns, k).code != I.LD_IMM64:
            continue
        target = elf.sections[elf.symbols[rel.sym].shndx].name
        src = I.BPF_PSEUDO_MAP_FD if target in (".maps", "maps") else I.BPF_PSEUDO_MAP_VALUE
        I.set_src(insns, k, src)
    return insns


@pytest.mark.parametrize("obj", ["core.bpf.o", "opensnoop.bpf.o"])
def test_tags_match_libbpf(kbtf, obj):
    if not _bpftool_ok():
        pytest.skip("needs root and bpftool")
    path = FIXTURES / obj
    ref = _kernelref().libbpf_tags(path)
    elf, _, ext = _load_obj(path)
    done = {}
    for prog, _, _, _, insns in _relocate_obj(path, kbtf):
        done[prog] = insns
    assert done
    for sec in ext.core_relos:
        for name, lo, _ in _funcs(elf, sec):
            if name in done:
                assert I.tag(_as_loaded(elf, sec, lo, done[name])) == ref[name], name


def test_type_matches_list_head(kbtf):
    b = BTF()
    lh = b.add(Struct("list_head___local", 16, []))
    p = b.add(Ptr(lh))
    b.replace(lh, Struct("list_head___local", 16, [Member("next", p, 0), Member("prev", p, 64)]))
    r = CoreRelocator(b, [kbtf])
    res = r.resolve(CoreRelo(0, lh, "0", CoreReloKind.TYPE_MATCHES))
    assert res.new_val == 1
    kid = res.target_spec.root_type_id
    assert kbtf.type(skip_modifiers(kbtf, kid)).name == "list_head"


@pytest.mark.parametrize("name", ["task_struct", "sk_buff", "sock", "mm_struct", "inode"])
def test_kernel_against_itself_is_identity(kbtf, name):
    """Relocating kernel types against themselves changes nothing, for every member and
    field kind (exercises anonymous unions, bitfields and arrays of real kernel types)."""
    (sid,) = [i for i in kbtf.find(name) if kbtf.type(i).kind == Kind.STRUCT]
    r = CoreRelocator(kbtf, [kbtf])
    kinds = [CoreReloKind.FIELD_BYTE_OFFSET, CoreReloKind.FIELD_BYTE_SIZE,
             CoreReloKind.FIELD_EXISTS, CoreReloKind.FIELD_SIGNED,
             CoreReloKind.FIELD_LSHIFT_U64, CoreReloKind.FIELD_RSHIFT_U64]
    n = 0
    for idx, m in enumerate(kbtf.type(sid).members):
        if not m.name:
            continue
        for kind in kinds:
            res = r.resolve(CoreRelo(0, sid, f"0:{idx}", kind))
            assert not res.poison and not res.fail_memsz_adjust
            assert res.orig_val == res.new_val, str(res)
            n += 1
        if not m.bitfield_size:
            assert r.resolve(CoreRelo(0, sid, f"0:{idx}", 0)).new_val == m.bit_offset // 8
    assert n > 0
