"""Recording and applying ELF relocations of program code (libbpf's reloc_desc logic).

At open, every REL entry against an executable section becomes a :class:`Reloc`
of the program containing the instruction (``bpf_object__collect_prog_relos`` +
``bpf_program__record_reloc``). At relocate time, :func:`apply_data_relocs`
patches map, global-data and extern references (``bpf_object__relocate_data``);
calls and subprogram addresses are left to :mod:`pyebpf.obj.linker`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from .. import insn as I
from .._record import Record
from ..errors import ObjectError
from ..uapi import MapType
from .elf import (
    SHN_LORESERVE,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    ElfObject,
    Symbol,
)
from .program import MapRef, MapRefKind, ProgramSpec, Reloc, RelocType
from .spec import ExternKind, ExternSpec, MapSpec

_CALL = I.BPF_JMP | I.BPF_CALL


def sym_is_extern(sym: Symbol) -> bool:
    """Undefined NOTYPE global/weak symbol: a BPF ``extern``."""
    return (sym.shndx == SHN_UNDEF and sym.bind in (STB_GLOBAL, STB_WEAK)
            and sym.type == STT_NOTYPE)


def sym_is_subprog(sym: Symbol, text_shndx: int) -> bool:
    """A reference to a ``.text`` function: section symbol (static) or global FUNC."""
    if sym.shndx != text_shndx:
        return False
    if sym.bind == STB_LOCAL and sym.type == STT_SECTION:
        return True
    return sym.bind == STB_GLOBAL and sym.type == STT_FUNC


class RelocContext(Record):
    """What relocation recording needs to know about the object."""

    elf: ElfObject
    text_shndx: int  # 0 when there is no non-empty .text
    maps_shndx: int  # ".maps" section index, 0 when absent
    legacy_maps_shndx: int  # "maps" section index, 0 when absent
    # data section index -> global-data map name
    data_maps: dict[int, str]
    # (section index, st_value) -> map name, for .maps / legacy maps symbols
    map_syms: dict[tuple[int, int], str]
    externs: Mapping[str, ExternSpec]
    # ".addr_space.1" (global __arena variables) index, 0 when absent, and the
    # object's ARENA map those variables live in (None when there is none)
    arena_shndx: int
    arena_map: str | None

    def __init__(self, elf: ElfObject, text_shndx: int, maps_shndx: int, legacy_maps_shndx: int,
                 data_maps: dict[int, str] | None = None,
                 map_syms: dict[tuple[int, int], str] | None = None,
                 externs: Mapping[str, ExternSpec] | None = None, arena_shndx: int = 0,
                 arena_map: str | None = None) -> None:
        self.elf = elf
        self.text_shndx = text_shndx
        self.maps_shndx = maps_shndx
        self.legacy_maps_shndx = legacy_maps_shndx
        self.data_maps = {} if data_maps is None else data_maps
        self.map_syms = {} if map_syms is None else map_syms
        self.externs = {} if externs is None else externs
        self.arena_shndx = arena_shndx
        self.arena_map = arena_map


def _sym_name(ctx: RelocContext, sym: Symbol) -> str:
    if sym.type == STT_SECTION and not sym.name and 0 <= sym.shndx < len(ctx.elf.sections):
        return ctx.elf.sections[sym.shndx].name
    return sym.name or "<?>"


def record_reloc(ctx: RelocContext, prog: ProgramSpec, insn_idx: int, sym: Symbol) -> Reloc:
    """Classify one relocation of ``prog`` at its instruction ``insn_idx``."""
    buf = prog.orig_insns
    code = buf[insn_idx * 8]
    name = _sym_name(ctx, sym)

    def fail(msg: str) -> ObjectError:
        return ObjectError(f"prog {prog.name!r}: {msg}", path=ctx.elf.path)

    is_call = code == _CALL
    if not is_call and code != I.LD_IMM64:
        raise fail(f"invalid relo against {name!r} for insns[{insn_idx}].code {code:#x}")
    if not is_call and (insn_idx + 1) * 8 >= len(buf):
        raise fail(f"relo against {name!r} at insns[{insn_idx}]: truncated ld_imm64")

    if sym_is_extern(sym):
        if sym.name not in ctx.externs:
            raise fail(f"extern relo failed to find extern for {name!r} ({sym.index})")
        kind = RelocType.EXTERN_CALL if is_call else RelocType.EXTERN_LD64
        return Reloc(kind, insn_idx, 0, sym.name, name)

    shndx = sym.shndx
    if is_call:
        src = buf[insn_idx * 8 + 1] >> 4
        if src != I.BPF_PSEUDO_CALL:
            raise fail("incorrect bpf_call opcode")
        if not shndx or shndx != ctx.text_shndx:
            sec = ctx.elf.sections[shndx].name if shndx < len(ctx.elf.sections) else "?"
            raise fail(f"bad call relo against {name!r} in section {sec!r}")
        if sym.value % 8:
            raise fail(f"bad call relo against {name!r} at offset {sym.value}")
        return Reloc(RelocType.CALL, insn_idx, sym.value, "", name)

    if not shndx or shndx >= SHN_LORESERVE:
        raise fail(f"invalid relo against {name!r} in special section {shndx:#x}; "
                   "forgot to initialize global var?..")

    if sym_is_subprog(sym, ctx.text_shndx):
        imm = struct.unpack_from("<i", buf, insn_idx * 8 + 4)[0]
        if sym.value % 8 or imm % 8:
            raise fail(f"bad subprog addr relo against {name!r} at offset {sym.value}+{imm}")
        return Reloc(RelocType.SUBPROG_ADDR, insn_idx, sym.value, "", name)

    sec_name = ctx.elf.sections[shndx].name
    if ctx.arena_shndx and shndx == ctx.arena_shndx:
        # libbpf >= 1.4: an __arena global is a data reference into the arena map.
        # sym_off is the variable's offset in its section only; apply_data_relocs adds
        # the arena data offset, which depends on max_entries (editable until then).
        if ctx.arena_map is None:
            raise fail(f"relo against __arena variable {name!r}: the ARENA map should be "
                       "explicitly declared in SEC(\".maps\")")
        return Reloc(RelocType.DATA, insn_idx, sym.value, ctx.arena_map, name)
    if shndx in ctx.data_maps:
        return Reloc(RelocType.DATA, insn_idx, sym.value, ctx.data_maps[shndx], name)
    if shndx in (ctx.maps_shndx, ctx.legacy_maps_shndx) and shndx:
        target = ctx.map_syms.get((shndx, sym.value))
        if target is None:
            raise fail(f"map relo failed to find map for section {sec_name!r}, off {sym.value}")
        return Reloc(RelocType.LD64, insn_idx, 0, target, name)
    raise fail(f"bad map relo against {name!r} in section {sec_name!r}")


def collect_relocs(ctx: RelocContext, by_section: Mapping[int, list[ProgramSpec]]) -> None:
    """Record every relocation of every program (fills ``ProgramSpec.relocs``)."""
    elf = ctx.elf
    nsec = len(elf.sections)
    for sec_idx, progs in by_section.items():
        rels = elf.relocs.get(sec_idx)
        if not rels:
            continue
        size = len(elf.sections[sec_idx].data)
        for i, rel in enumerate(rels):
            sym = elf.symbols[rel.sym]
            if sym.shndx >= nsec:
                raise ObjectError(f"corrupted symbol #{rel.sym} pointing to invalid section "
                                  f"#{sym.shndx} for relo #{i}", path=elf.path,
                                  section=elf.sections[sec_idx].name)
            if rel.offset % 8 or rel.offset >= size:
                raise ObjectError(f"invalid offset {rel.offset:#x} for relo #{i}", path=elf.path,
                                  section=elf.sections[sec_idx].name)
            idx = rel.offset // 8
            prog = find_prog(progs, idx)
            if prog is None:
                # an overridden weak function's code: libbpf skips these too
                continue
            prog.relocs.append(record_reloc(ctx, prog, idx - prog.sec_insn_off, sym))
    for progs in by_section.values():
        for p in progs:
            p.relocs.sort(key=lambda r: (r.insn_idx, r.type))


def find_prog(progs: list[ProgramSpec], insn_idx: int) -> ProgramSpec | None:
    """The program of one section (sorted by offset) that contains instruction ``insn_idx``."""
    lo, hi = 0, len(progs) - 1
    if hi < 0:
        return None
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if progs[mid].sec_insn_off <= insn_idx:
            lo = mid
        else:
            hi = mid - 1
    p = progs[lo]
    if p.sec_insn_off <= insn_idx < p.sec_insn_off + p.sec_insn_cnt:
        return p
    return None


# -- applying ----------------------------------------------------------------------


def _poison_map_ldimm64(buf: bytearray, idx: int, map_idx: int) -> None:
    # two identical invalid helper calls: the verifier names the map if reached
    for k in (idx, idx + 1):
        I.put(buf, k, I.Insn(_CALL, 0, 0, 0, I.POISON_LDIMM64_MAP_BASE + map_idx))


def _poison_kfunc_call(buf: bytearray, idx: int, ext_idx: int) -> None:
    I.put(buf, idx, I.Insn(_CALL, 0, 0, 0, I.POISON_CALL_KFUNC_BASE + ext_idx))


def apply_data_relocs(buf: bytearray, relocs: list[Reloc], maps: Mapping[str, MapSpec],
                      externs: Mapping[str, ExternSpec], kconfig_map: str | None,
                      prog_name: str, *, poison_unresolved_kfuncs: bool = True) -> list[MapRef]:
    """Patch map/data/extern references in ``buf`` (libbpf's relocate_data).

    Map fds are left as 0 placeholders; the returned MapRefs tell the loader where
    to put them. ``poison_unresolved_kfuncs`` (default, libbpf >= 1.2's poison_kfunc_call)
    turns a call to an unresolved weak kfunc into ``call 2002000000 + extern index``;
    False leaves libbpf 1.1's ``call kfunc#0``.
    """
    from .externs import extern_call, extern_ldimm64  # lazy: heavy BTF imports
    from .maps import arena_data_offset

    refs: list[MapRef] = []
    map_index = {name: i for i, name in enumerate(maps)}
    ext_index = {name: i for i, name in enumerate(externs)}
    for r in relocs:
        idx = r.insn_idx
        ins = I.get(buf, idx)
        if r.type in (RelocType.LD64, RelocType.DATA):
            m = maps.get(r.target)
            if m is None:
                raise ObjectError(f"prog {prog_name!r}: relocation against map {r.target!r}, "
                                  "which is no longer in the object")
            if r.type == RelocType.DATA:
                off = r.sym_off
                if m.type == MapType.ARENA:
                    # __arena globals sit at the end of the arena (libbpf's arena_data_off)
                    off += arena_data_offset(m)
                # libbpf: insn[1].imm = insn[0].imm + sym_off (the addend is in insn[0])
                I.set_imm(buf, idx + 1, ins.imm + off)
            if not m.autocreate:
                _poison_map_ldimm64(buf, idx, map_index[r.target])
                continue
            if r.type == RelocType.LD64:
                I.set_src(buf, idx, I.BPF_PSEUDO_MAP_FD)
                I.set_imm(buf, idx, 0)
                refs.append(MapRef(idx, r.target, MapRefKind.FD))
            else:
                I.set_src(buf, idx, I.BPF_PSEUDO_MAP_VALUE)
                I.set_imm(buf, idx, 0)
                refs.append(MapRef(idx, r.target, MapRefKind.VALUE, I.get(buf, idx + 1).imm))
        elif r.type in (RelocType.EXTERN_LD64, RelocType.EXTERN_CALL):
            ext = externs.get(r.target)
            if ext is None:
                raise ObjectError(f"prog {prog_name!r}: unknown extern {r.target!r}")
            if r.type == RelocType.EXTERN_CALL:
                src, imm, off = extern_call(ext, poison=poison_unresolved_kfuncs,
                                            index=ext_index[r.target])
                if src == 0:  # poisoned: an invalid helper call the verifier can name
                    _poison_kfunc_call(buf, idx, imm - I.POISON_CALL_KFUNC_BASE)
                    continue
                I.set_src(buf, idx, src)
                I.set_imm(buf, idx, imm)
                I.set_off(buf, idx, off)
                continue
            if ext.kind == ExternKind.KCONFIG and kconfig_map is None:
                raise ObjectError(f"prog {prog_name!r}: kconfig extern {ext.name!r} "
                                  "without a .kconfig map")
            src, imm0, imm1 = extern_ldimm64(ext)
            if src:
                I.set_src(buf, idx, src)
            I.set_imm(buf, idx, imm0)
            I.set_imm(buf, idx + 1, imm1)
            if ext.kind == ExternKind.KCONFIG:
                assert kconfig_map is not None
                refs.append(MapRef(idx, kconfig_map, MapRefKind.VALUE, imm1))
        elif r.type == RelocType.SUBPROG_ADDR:
            if ins.src != I.BPF_PSEUDO_FUNC:
                raise ObjectError(f"prog {prog_name!r}: relo at insn #{idx}: bad insn")
    return refs
