"""ObjectSpec: everything in a BPF object file, as editable data (no syscalls).

Opening (:meth:`ObjectSpec.from_bytes`) mirrors libbpf's ``bpf_object__open``:
ELF sections are classified, programs are cut out of executable sections at
their FUNC symbols, BTF is parsed and its DATASECs fixed up, maps, global data
and externs are collected, and every relocation is recorded. Relocating
(:meth:`ObjectSpec.relocate`) mirrors ``bpf_object__relocate``: CO-RE first, then
subprogram linking, then map/data/extern references.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .. import insn as I
from .._log import get_logger
from ..errors import BTFError, ExternError, ObjectError
from ..uapi import MapType, ProgType
from .elf import (
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_OBJECT,
    STV_HIDDEN,
    STV_INTERNAL,
    ElfObject,
    read_elf,
)
from .linker import link_program
from .program import ProgramSpec, RelocType
from .reloc import RelocContext, apply_data_relocs, collect_relocs, find_prog
from .sections import SecFlag, attach_target, match_section
from .spec import ExternKind, ExternSpec, MapSpec, VariableSpec

if TYPE_CHECKING:
    from ..btf.spec import BTF

log = get_logger("pyebpf.obj")

_LICENSE_MAX = 64  # libbpf keeps char license[64]


def _obj_name(path: str) -> str:
    # libbpf: basename, cut at the first '.'
    return os.path.basename(path).split(".", 1)[0]


class ObjectSpec:
    """A parsed BPF object: programs, maps, global variables and externs by name.

    Everything is editable before loading: ``spec.maps["events"].max_entries = N``,
    ``spec.programs["x"].autoload = False``, ``spec.variables["pid"].value = ...``.
    """

    def __init__(self, name: str, elf: ElfObject) -> None:
        self.name = name
        self.path = elf.path
        self.elf = elf
        self.programs: dict[str, ProgramSpec] = {}
        self.subprograms: dict[str, ProgramSpec] = {}  # .text functions called by programs
        self.maps: dict[str, MapSpec] = {}
        self.variables: dict[str, VariableSpec] = {}
        self.externs: dict[str, ExternSpec] = {}
        self.btf: BTF | None = None
        self.btf_ext: Any = None  # pyebpf.btf.ext.BTFExt
        self.license = ""
        self.kern_version = 0
        self.kconfig_map: str | None = None
        self.text_shndx = 0
        self._externs_resolved = False
        # libbpf >= 1.2 turns a call to an unresolved __weak kfunc into an invalid helper
        # call (imm = 2002000000 + extern index); False keeps libbpf 1.1's `call kfunc#0`
        self.poison_unresolved_kfuncs = True
        self._by_section: dict[int, list[ProgramSpec]] = {}

    def __repr__(self) -> str:
        return (f"ObjectSpec({self.name!r}, programs={list(self.programs)}, "
                f"maps={list(self.maps)})")

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ObjectSpec:
        """Open and parse a ``.bpf.o`` file (pure: no kernel access)."""
        p = os.fspath(path)
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ObjectError(f"cannot read object: {e.strerror}", path=p) from None
        return cls.from_bytes(data, name=_obj_name(p), path=p)

    @classmethod
    def from_bytes(cls, data: bytes, name: str | None = None,
                   path: str | None = None) -> ObjectSpec:
        """Parse an object from memory. ``name`` prefixes global-data map names."""
        elf = read_elf(data, path)
        spec = cls(name if name is not None else "", elf)
        spec._open()
        return spec

    def _open(self) -> None:
        elf = self.elf
        if not elf.symtab_index:
            raise ObjectError("no symbol table (stripped object file?)", path=elf.path)
        secs = elf.sections
        maps_shndx = legacy_shndx = 0
        for sec in secs:
            if sec.name == "license":
                raw = sec.data[:_LICENSE_MAX - 1]
                self.license = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            elif sec.name == "version":
                if len(sec.data) != 4:
                    raise ObjectError(f"invalid kver section size {len(sec.data)}",
                                      path=elf.path, section="version")
                self.kern_version = int.from_bytes(sec.data, "little")
            elif sec.name == ".maps" and not maps_shndx:
                maps_shndx = sec.index
            elif sec.name == "maps" and not legacy_shndx:
                legacy_shndx = sec.index
            elif sec.name == ".text" and sec.is_exec and sec.size:
                self.text_shndx = sec.index

        from .struct_ops import is_struct_ops_section

        self._init_btf(needs_btf=bool(maps_shndx)
                       or any(is_struct_ops_section(s.name) for s in secs))
        self._init_programs()
        self._mark_hidden_funcs_static()
        self._init_maps_and_externs(maps_shndx, legacy_shndx)

        ctx = RelocContext(elf, self.text_shndx, maps_shndx, legacy_shndx,
                           externs=self.externs)
        sec_index: dict[str, int] = {}
        for sec in secs:
            sec_index.setdefault(sec.name, sec.index)
        for m in self.maps.values():
            if m.is_global_data and m.section in sec_index and m.section != ".kconfig":
                ctx.data_maps[sec_index[m.section]] = m.name
        for sym in elf.symbols:
            if sym.shndx and sym.shndx in (maps_shndx, legacy_shndx) and sym.name in self.maps:
                ctx.map_syms.setdefault((sym.shndx, sym.value), sym.name)
        self._init_arena(ctx)
        collect_relocs(ctx, self._by_section)

    def _init_arena(self, ctx: RelocContext) -> None:
        """Point relocations against ``__arena`` globals at the object's ARENA map."""
        from .maps import ARENA_SECTION, arena_section

        sec = arena_section(self.elf)
        if sec is None:
            return
        arenas = [m.name for m in self.maps.values() if m.type == MapType.ARENA]
        if not arenas:
            # parse_btf_maps says so when there is a .maps section; this covers
            # objects without one (libbpf would index maps[-1] there)
            raise ObjectError("to use global __arena variables the ARENA map should be "
                              "explicitly declared in SEC(\".maps\")", path=self.elf.path,
                              section=ARENA_SECTION)
        ctx.arena_shndx = sec.index
        ctx.arena_map = arenas[0]

    def _init_btf(self, needs_btf: bool) -> None:
        from ..btf.spec import BTF

        elf = self.elf
        sec = elf.section(".BTF")
        if sec is None:
            if needs_btf:
                raise ObjectError("BTF is required (.maps), but is missing", path=elf.path)
            return
        try:
            if sec.type != SHT_PROGBITS:
                raise BTFError(".BTF is not SHT_PROGBITS")
            btf = BTF.from_bytes(sec.data)
            self._fixup_datasec(btf)
        except BTFError as e:
            if needs_btf:
                raise ObjectError(f"BTF is required, but is corrupted: {e}",
                                  path=elf.path, section=".BTF") from None
            log.info("%s: ignoring corrupted .BTF: %s", elf.path or self.name, e)
            return
        self.btf = btf
        ext = elf.section(".BTF.ext")
        if ext is not None:
            from ..btf.ext import parse_btf_ext

            try:
                self.btf_ext = parse_btf_ext(ext.data, btf)
            except BTFError as e:
                # libbpf drops a corrupted .BTF.ext and goes on without it
                log.info("%s: ignoring corrupted .BTF.ext: %s", elf.path or self.name, e)

    def _fixup_datasec(self, btf: Any) -> None:
        from ..btf.write import fixup_datasec

        elf = self.elf
        sizes: dict[str, int] = {}
        for s in elf.sections:
            sizes.setdefault(s.name, s.size)
        var_syms: dict[str, Any] = {}
        for sym in elf.symbols:
            if (sym.type == STT_OBJECT and sym.bind in (STB_GLOBAL, STB_WEAK)
                    and sym.name not in var_syms):
                var_syms[sym.name] = sym

        def offset(_sec: str, var: str) -> int | None:
            sym = var_syms.get(var)
            return None if sym is None else sym.value

        def hidden(_sec: str, var: str) -> bool:
            sym = var_syms.get(var)
            return sym is not None and sym.visibility in (STV_HIDDEN, STV_INTERNAL)

        fixup_datasec(btf, sizes.get, offset, symbol_hidden=hidden)

    def _init_programs(self) -> None:
        elf = self.elf
        progs: list[ProgramSpec] = []
        for sec in elf.sections:
            if not (sec.is_exec and sec.size):
                continue
            raw_name = sec.name
            sec_name = raw_name[1:] if raw_name.startswith("?") else raw_name
            for sym in elf.symbols:
                if sym.shndx != sec.index or sym.type != STT_FUNC:
                    continue
                if sym.value + sym.size > sec.size:
                    raise ObjectError(f"program at offset {sym.value} crosses section boundary",
                                      path=elf.path, section=raw_name)
                if sec.index != self.text_shndx and sym.bind == STB_LOCAL:
                    raise ObjectError(f"program {sym.name!r} is static and not supported",
                                      path=elf.path, section=raw_name)
                cnt = sym.size // 8
                code = sec.data[sym.value:sym.value + cnt * 8]
                progs.append(ProgramSpec(
                    name=sym.name, section=sec_name, sec_def=None, type=ProgType.UNSPEC,
                    expected_attach_type=None, attach_target=None, flags=SecFlag.NONE,
                    license=self.license, kern_version=self.kern_version,
                    insns=bytearray(code), autoload=not raw_name.startswith("?"),
                    sec_idx=sec.index, sec_insn_off=sym.value // 8,
                    symbol_global=sym.bind != STB_LOCAL, orig_insns=code,
                    mark_btf_static=(sym.bind != STB_LOCAL
                                     and sym.visibility in (STV_HIDDEN, STV_INTERNAL))))
        progs.sort(key=lambda p: (p.sec_idx, p.sec_insn_off))
        multi = len(progs) > 1
        for p in progs:
            self._by_section.setdefault(p.sec_idx, []).append(p)
            p.is_subprog = p.sec_idx == self.text_shndx and multi
            table = self.subprograms if p.is_subprog else self.programs
            if p.name in self.programs or p.name in self.subprograms:
                raise ObjectError(f"duplicate program name {p.name!r}", path=elf.path)
            table[p.name] = p
            if p.is_subprog:
                continue
            sd = match_section(p.section)
            p.sec_def = sd
            if sd is not None:
                p.type = sd.prog_type
                p.expected_attach_type = sd.attach_type
                p.flags = sd.flags
                p.attach_target = attach_target(sd, p.section)
                p.autoattach = sd.attach is not None

    def _mark_hidden_funcs_static(self) -> None:
        """Give hidden global subprograms static BTF linkage (libbpf's btf_finalize_data):
        the verifier then checks them in their callers' context, as static functions."""
        if self.btf is None:
            return
        from ..btf.types import Func, Linkage

        for p in self.subprograms.values():
            if not p.mark_btf_static:
                continue
            for tid, t in self.btf.own_types():
                if isinstance(t, Func) and t.linkage == Linkage.GLOBAL and t.name == p.name:
                    self.btf.replace(tid, Func(t.name, t.type, Linkage.STATIC))
                    break

    def _init_maps_and_externs(self, maps_shndx: int, legacy_shndx: int) -> None:
        from . import externs as _ext
        from . import maps as _maps

        elf = self.elf
        if maps_shndx and self.btf is not None:
            self.maps.update(_maps.parse_btf_maps(elf, self.btf))
        if legacy_shndx:
            for name, m in _maps.parse_legacy_maps(elf).items():
                self._add_map(name, m)
        data_maps, variables = _maps.parse_global_data(elf, self.btf, self.name)
        for name, m in data_maps.items():
            self._add_map(name, m)
        self.variables.update(variables)
        externs, kconfig = _ext.collect_externs(elf, self.btf, obj_name=self.name)
        self.externs.update(externs)
        if kconfig is not None:
            self._add_map(kconfig.name, kconfig)
            self.kconfig_map = kconfig.name
        # after kconfig, as libbpf's bpf_object__init_maps orders them
        from .struct_ops import collect_struct_ops

        for name, m in collect_struct_ops(elf, self.btf, self._all_programs()).items():
            self._add_map(name, m)

    def _add_map(self, name: str, m: MapSpec) -> None:
        if name in self.maps:
            raise ObjectError(f"duplicate map name {name!r}", path=self.elf.path)
        self.maps[name] = m

    # -- kernel-dependent steps ------------------------------------------------------

    def resolve_externs(self, *, kconfig: Mapping[str, str] | None = None,
                        kernel_btf: Any = None, kallsyms: Mapping[str, int] | None = None,
                        kernel_version: int | None = None, has_bpf_cookie: bool | None = None,
                        has_syscall_wrapper: bool | None = None) -> None:
        """Resolve kconfig/ksym/kfunc externs; whatever is not given is read from the
        running kernel (/proc/config.gz, /proc/kallsyms, kernel BTF, uname).

        ``has_bpf_cookie``/``has_syscall_wrapper`` are libbpf's FEAT_BPF_COOKIE and
        FEAT_SYSCALL_WRAPPER (the loader passes its runtime probes); when not given,
        the kernel's BTF answers, and is read for them even when the only externs are
        kconfig ones."""
        from . import externs as _ext

        if not self.externs:
            self._externs_resolved = True
            return
        kinds = {e.kind for e in self.externs.values()}
        if kconfig is None and any(n.startswith("CONFIG_") for n in self.externs):
            # as libbpf, only CONFIG_* externs need the file (LINUX_* ones are virtual);
            # without it only the strong CONFIG_* externs fail, in resolve_externs
            try:
                kconfig = _ext.read_kconfig()
            except ExternError as e:
                log.debug("%s: CONFIG_* externs stay unresolved", e)
        virtual = {"LINUX_HAS_BPF_COOKIE": has_bpf_cookie,
                   "LINUX_HAS_SYSCALL_WRAPPER": has_syscall_wrapper}
        needs_btf = any(virtual.get(n, False) is None for n in self.externs)
        if kernel_btf is None and (kinds & {ExternKind.KSYM, ExternKind.KFUNC} or needs_btf):
            from ..btf.kernel import kernel_btf as _kbtf

            try:
                kernel_btf = _kbtf()
            except (OSError, BTFError):
                if kinds & {ExternKind.KSYM, ExternKind.KFUNC}:
                    raise
                log.debug("no kernel BTF: LINUX_HAS_* externs default to 0")
        if kallsyms is None and any(e.kind == ExternKind.KSYM and not e.typed
                                    for e in self.externs.values()):
            kallsyms = _ext.read_kallsyms({e.name for e in self.externs.values()
                                           if e.kind == ExternKind.KSYM})
        if kernel_version is None and ExternKind.KCONFIG in kinds:
            kernel_version = _ext.kernel_version_code()
        _ext.resolve_externs(self.externs, kconfig=dict(kconfig) if kconfig else kconfig,
                             kernel_btf=kernel_btf,
                             kallsyms=dict(kallsyms) if kallsyms else kallsyms,
                             kernel_version=kernel_version, has_bpf_cookie=has_bpf_cookie,
                             has_syscall_wrapper=has_syscall_wrapper)
        if self.kconfig_map is not None:
            m = self.maps.get(self.kconfig_map)
            if m is not None:
                m.data = _ext.kconfig_map_data(self.externs, m)
        self._externs_resolved = True

    def relocate(self, target_btf: Any = None) -> None:
        """Compute every program's final instructions (CO-RE, subprograms, data refs).

        ``target_btf`` (a BTFView) defaults to the running kernel's BTF, read only
        when the object has CO-RE relocations or externs to resolve. Externs are
        resolved first if :meth:`resolve_externs` has not run. Callable again after
        edits: it always starts from the instructions in the ELF file.
        """
        if self.externs and not self._externs_resolved:
            self.resolve_externs(kernel_btf=target_btf)
        relocator = None
        ext = self.btf_ext
        core_by_sec = ext.core_relos if ext is not None else {}
        active = [p for p in self._all_programs() if p.is_subprog or p.autoload]
        if any(core_by_sec.get(self._raw_section(p)) for p in active):
            from ..btf.core import CoreRelocator

            if target_btf is None:
                from ..btf.kernel import kernel_btf

                target_btf = kernel_btf()
            # CO-RE records come from .BTF.ext, which is only read with a .BTF
            relocator = CoreRelocator(cast("BTF", self.btf), [target_btf])

        code: dict[str, bytearray] = {}
        core: dict[str, list[Any]] = {}
        for p in self._all_programs():
            buf = bytearray(p.orig_insns)
            code[p.name] = buf
            # mark function-pointer loads so the linker recognizes them (libbpf does
            # this before relocating calls, whether or not clang already did)
            for r in p.relocs:
                if r.type == RelocType.SUBPROG_ADDR:
                    I.set_src(buf, r.insn_idx, I.BPF_PSEUDO_FUNC)
        if relocator is not None:
            self._relocate_core(relocator, core_by_sec, code, core)

        text = self._by_section.get(self.text_shndx, []) if self.text_shndx else []
        section_of = {p.name: self._raw_section(p) for p in self._all_programs()}
        func_info = ext.func_info if ext is not None else {}
        line_info = ext.line_info if ext is not None else {}
        # compute everything first: a failure leaves every program as it was
        results: list[tuple[ProgramSpec, bytearray, list[Any], list[Any], list[Any], list[Any]]] = []
        for p in self.programs.values():
            if not p.autoload:
                results.append((p, bytearray(p.orig_insns), [], [], [], []))
                continue
            linked = link_program(p, text, code, core, func_info, line_info, section_of)
            refs = apply_data_relocs(linked.insns, linked.relocs, self.maps, self.externs,
                                     self.kconfig_map, p.name,
                                     poison_unresolved_kfuncs=self.poison_unresolved_kfuncs)
            results.append((p, linked.insns, linked.func_info or [], linked.line_info or [],
                            linked.core_results, refs))
        for p, insns, fi, li, cr, refs in results:
            p.insns, p.func_info, p.line_info, p.core_results, p.map_refs = insns, fi, li, cr, refs

    def _relocate_core(self, relocator: Any, core_by_sec: Mapping[str, Any],
                       code: dict[str, bytearray], core: dict[str, list[Any]]) -> None:
        """CO-RE, walking BTF.ext sections and records in file order as libbpf does:
        the candidate cache is pruned by earlier relocations, so order can matter,
        and relocation numbers in messages are per section, as in libbpf's log."""
        from ..btf.core import patch_insn

        shndx: dict[str, int] = {}
        for sec in self.elf.sections:
            shndx.setdefault(sec.name, sec.index)
        for sec_name, relos in core_by_sec.items():
            progs = self._by_section.get(shndx.get(sec_name, -1), [])
            for i, relo in enumerate(relos):
                p = find_prog(progs, relo.insn_off)
                if p is None or not (p.is_subprog or p.autoload):
                    continue  # no program there (dropped static function) or not loaded
                idx = relo.insn_off - p.sec_insn_off
                res = relocator.resolve(relo, i, p.name)
                patch_insn(code[p.name], idx, res, p.name, i)
                core.setdefault(p.name, []).append(res)

    # -- helpers -----------------------------------------------------------------------

    def _all_programs(self) -> list[ProgramSpec]:
        """Every program and subprogram, including any the user added to ``programs``."""
        seen = {id(p) for progs in self._by_section.values() for p in progs}
        out = [p for progs in self._by_section.values() for p in progs]
        out.extend(p for p in self.programs.values() if id(p) not in seen)
        return out

    def _raw_section(self, p: ProgramSpec) -> str:
        if 0 <= p.sec_idx < len(self.elf.sections):
            return self.elf.sections[p.sec_idx].name
        return p.section
