"""``extern`` variables and functions of a BPF object: collection, layout, resolution.

Follows libbpf's ``bpf_object__collect_externs()`` / ``bpf_object__resolve_externs()``.

Collection
    An extern is an undefined (SHN_UNDEF) NOTYPE symbol with GLOBAL or WEAK binding.
    Its BTF is the VAR or FUNC of the same name with *extern* linkage, listed in the
    ``.kconfig`` or ``.ksyms`` DATASEC. The result is ordered as libbpf sorts its
    ``obj->externs`` array: kconfig externs first, by alignment (descending), size
    (ascending), then name; then ksyms/kfuncs by name. That order matters: libbpf
    >= 1.2 poisons an unresolved weak kfunc call with ``imm = 2002000000 + index``
    (:attr:`ExternDesc.index` is that index).

The ``.kconfig`` map
    One ARRAY map (``<obj>.kconfig``, key 4 bytes, 1 entry, flags
    ``BPF_F_RDONLY_PROG | BPF_F_MMAPABLE``) holding every kconfig extern at
    ``ExternSpec.offset``: offsets are assigned in the sorted order, each rounded
    up to the extern's alignment; value_size ends after the last extern.
    :func:`kconfig_map_data` produces its bytes after resolution.

Resolution (what each kind becomes)
    =====================  ==========================================================
    CONFIG_* (kconfig)      value parsed from the kernel config: ``y``/``n``/``m`` for
                            bool (``m`` rejected), ``enum libbpf_tristate`` (0 no,
                            1 yes, 2 module) and char; ``"..."`` for char arrays
                            (truncated, NUL-terminated); other values through
                            ``strtoull(v, 0)`` (decimal, 0x hex, 0 octal) for
                            int/char/bool, range-checked for the size and sign.
                            Unset options ("# CONFIG_X is not set") stay unresolved.
    LINUX_KERNEL_VERSION    :func:`kernel_version_code`
    LINUX_HAS_BPF_COOKIE    kernel supports bpf_get_attach_cookie (the loader passes
                            libbpf's runtime probe, :func:`pyebpf.features.bpf_cookie`;
                            offline, kernel BTF's ``enum bpf_func_id`` answers)
    LINUX_HAS_SYSCALL_WRAPPER  kernel has ``__<arch>_sys_*`` syscall wrappers (loader:
                            :func:`pyebpf.features.syscall_wrapper`; offline: kallsyms,
                            then kernel BTF)
    other LINUX_*           weak: 0 (counts as resolved, as in libbpf); strong: error
    typeless ksym           (``extern const void x __ksym``): address from /proc/kallsyms
                            (``.llvm.<hash>`` suffixes of 'd' symbols ignored; two
                            different addresses = error)
    typed ksym              (VAR with a type): VAR id in kernel BTF, and the local and
                            kernel types must be CO-RE compatible
    kfunc                   FUNC id in kernel BTF (looked up by essential name, the part
                            before ``___``), prototypes must be CO-RE compatible
    =====================  ==========================================================

    Unresolved weak externs stay ``resolved=False`` with value 0; unresolved strong
    ones raise :class:`~pyebpf.errors.ExternError`.

Instruction patching (done by the relocation code, :mod:`pyebpf.obj.reloc`)
    =====================================  ===========================================
    reference                              instructions libbpf submits
    =====================================  ===========================================
    kconfig, ld_imm64                      ``src=BPF_PSEUDO_MAP_VALUE``, imm=.kconfig map
                                           fd, insn[1].imm = ExternSpec.offset
    typed ksym resolved, ld_imm64          ``src=BPF_PSEUDO_BTF_ID``, imm=kernel BTF id,
                                           insn[1].imm = BTF object fd (0 = vmlinux)
    typeless ksym, or typed unresolved     src unchanged (0), imm/insn[1].imm = low/high
      (weak), ld_imm64                     32 bits of the address (0 when unresolved)
    kfunc via ld_imm64 (bpf_ksym_exists)   resolved: as a typed ksym (PSEUDO_BTF_ID, the
                                           FUNC id); unresolved weak: address 0
    kfunc call, resolved                   ``src=BPF_PSEUDO_KFUNC_CALL``, imm=FUNC id,
                                           off=fd_array index of the module BTF (0)
    kfunc call, unresolved weak (default,  poisoned: ``call`` with src=0, off=0,
      libbpf >= 1.2)                       imm = 2002000000 + extern index
    kfunc call, unresolved weak, 1.1       ``src=BPF_PSEUDO_KFUNC_CALL``, imm=0, off=0
      (``ObjectSpec.poison_unresolved_kfuncs = False``)
    =====================================  ===========================================

Differences between libbpf 1.1 (bpftool 7.1 here, the tag reference) and master:
    * the poisoned weak kfunc call above (1.1: ``call kfunc#0`` left for the verifier's
      dead-code elimination); pyebpf follows master unless told otherwise;
    * master looks kfuncs up by essential name (``bpf_foo___v2`` -> ``bpf_foo``);
      1.1 uses the full name;
    * master treats an *incompatible* prototype of a weak kfunc as unresolved; 1.1
      fails the load;
    * ``bpf_ksym_exists()`` (ld_imm64 of a kfunc) appeared with libbpf 1.2; 1.1 handles
      such an ld_imm64 through its generic ksym path, which gives the same
      instructions for vmlinux kfuncs;
    * master reads ``/boot/config-$(uname -r)`` before ``/proc/config.gz``, like 1.1.

The BTF that goes to the kernel must be fixed up the way libbpf does (the kernel
rejects extern linkage in DATASECs): :func:`fixup_extern_btf`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .._log import get_logger
from ..btf.types import (
    INT_BOOL,
    INT_SIGNED,
    Array,
    BTFView,
    Datasec,
    Enum,
    Enum64,
    Func,
    FuncProto,
    Int,
    Kind,
    Linkage,
    Param,
    Var,
    essential_name,
    sizeof,
    skip_modifiers,
)
from ..errors import BTFError, ExternError, ObjectError
from ..uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, MapType
from .elf import SHN_UNDEF, STB_GLOBAL, STB_WEAK, STT_NOTYPE, ElfObject, Symbol

# the kernel's config/kallsyms/version readers moved to .kdata; still exported from here
from .kdata import (
    kernel_version_code,
    parse_kallsyms,
    parse_kconfig,
    read_kallsyms,
    read_kconfig,
)
from .maps import internal_map_name, object_name
from .spec import ExternKind, ExternSpec, MapSpec

if TYPE_CHECKING:
    from ..btf.spec import BTF

__all__ = [
    "KCONFIG_SECTION",
    "KSYMS_SECTION",
    "POISON_CALL_KFUNC_BASE",
    "ExternDesc",
    "KcfgType",
    "Tristate",
    "collect_externs",
    "extern_call",
    "extern_ldimm64",
    "fixup_extern_btf",
    "kconfig_map_data",
    "kernel_version_code",
    "parse_kconfig",
    "parse_kallsyms",
    "read_kallsyms",
    "read_kconfig",
    "resolve_externs",
    "syscall_wrapper_symbol",
]

log = get_logger("pyebpf")

KCONFIG_SECTION = ".kconfig"
KSYMS_SECTION = ".ksyms"
POISON_CALL_KFUNC_BASE = 2002000000
_PSEUDO_BTF_ID = 3
_PSEUDO_KFUNC_CALL = 2


class KcfgType(IntEnum):
    """libbpf ``enum kcfg_type``."""

    UNKNOWN = 0
    CHAR = 1
    BOOL = 2
    INT = 3
    TRISTATE = 4
    CHAR_ARR = 5


class Tristate(IntEnum):
    """``enum libbpf_tristate`` from bpf_helpers.h."""

    NO = 0
    YES = 1
    MODULE = 2


class ExternDesc(ExternSpec):
    """An :class:`ExternSpec` plus what libbpf keeps in ``struct extern_desc``."""

    _norepr: ClassVar[frozenset[str]] = frozenset({"raw"})
    index: int  # position in libbpf's sorted extern array
    sym_index: int  # ELF symbol index (relocations refer to it)
    sec_btf_id: int  # the .kconfig/.ksyms DATASEC
    type_id: int  # ksym: VAR type (0 = typeless) or FUNC_PROTO, modifiers skipped
    kcfg_type: KcfgType
    signed: bool
    align: int
    essential: str  # kfunc lookup name (before '___')
    raw: str | None  # kconfig text it was set from

    def __init__(self, name: str, kind: ExternKind, weak: bool, btf_id: int, typed: bool = True,
                 offset: int = 0, size: int = 0, resolved: bool = False, value: Any = None,
                 kernel_btf_id: int = 0, kernel_btf_fd_idx: int = 0, index: int = 0,
                 sym_index: int = 0, sec_btf_id: int = 0, type_id: int = 0,
                 kcfg_type: KcfgType = KcfgType.UNKNOWN, signed: bool = False, align: int = 0,
                 essential: str = "", raw: str | None = None) -> None:
        ExternSpec.__init__(self, name, kind, weak, btf_id, typed, offset, size, resolved, value,
                            kernel_btf_id, kernel_btf_fd_idx)
        self.index = index
        self.sym_index = sym_index
        self.sec_btf_id = sec_btf_id
        self.type_id = type_id
        self.kcfg_type = kcfg_type
        self.signed = signed
        self.align = align
        self.essential = essential
        self.raw = raw


# -- collection -------------------------------------------------------------------------


def _kcfg_type(btf: BTFView, type_id: int) -> tuple[KcfgType, bool]:
    """libbpf ``find_kcfg_type()``: (kind of kconfig value, signed)."""
    t = btf.type(skip_modifiers(btf, type_id))
    if isinstance(t, Int):
        if t.encoding & INT_BOOL:
            return (KcfgType.BOOL if t.size == 1 else KcfgType.UNKNOWN), False
        signed = bool(t.encoding & INT_SIGNED)
        if t.size == 1:
            return KcfgType.CHAR, signed
        if t.size < 1 or t.size > 8 or t.size & (t.size - 1):
            return KcfgType.UNKNOWN, signed
        return KcfgType.INT, signed
    if isinstance(t, Enum):
        if t.size != 4 or t.name != "libbpf_tristate":
            return KcfgType.UNKNOWN, False
        return KcfgType.TRISTATE, False
    if isinstance(t, Enum64):
        return (KcfgType.TRISTATE if t.name == "libbpf_tristate" else KcfgType.UNKNOWN), False
    if isinstance(t, Array):
        if t.nelems == 0 or _kcfg_type(btf, t.type)[0] != KcfgType.CHAR:
            return KcfgType.UNKNOWN, False
        return KcfgType.CHAR_ARR, False
    return KcfgType.UNKNOWN, False


def _align_of(btf: BTFView, type_id: int, memo: dict[int, int] | None = None) -> int:
    """libbpf ``btf__align_of()``; 0 when it cannot be told.

    ``memo`` holds each struct/union's answer, and 0 while it is being worked out: a
    corrupt BTF whose struct contains itself then ends (0) instead of recursing forever,
    and a large struct's shared member types are walked once.
    """
    if memo is None:
        memo = {}
    for _ in range(64):
        t = btf.type(type_id)
        k = t.kind
        if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
            return min(8, t.size)  # type: ignore[union-attr]
        if k == Kind.PTR:
            return 8
        if k in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG):
            type_id = t.type  # type: ignore[union-attr]
            continue
        if k == Kind.ARRAY:
            type_id = t.type  # type: ignore[union-attr]
            continue
        if k in (Kind.STRUCT, Kind.UNION):
            if type_id in memo:
                return memo[type_id]
            memo[type_id] = 0  # in progress: a cycle back here answers "cannot tell"
            memo[type_id] = _composite_align(btf, t, memo)
            return memo[type_id]
        return 0
    return 0


def _composite_align(btf: BTFView, t: Any, memo: dict[int, int]) -> int:
    best = 1
    for m in t.members:
        a = _align_of(btf, m.type, memo)
        if a <= 0:
            return 0
        best = max(best, a)
        # a member offset that breaks natural alignment means packed
        if m.bitfield_size == 0 and (m.bit_offset % (8 * a)):
            return 1
    if t.size % best:
        return 1
    return best


def _is_extern_sym(s: Symbol) -> bool:
    return s.shndx == SHN_UNDEF and s.bind in (STB_GLOBAL, STB_WEAK) and s.type == STT_NOTYPE


def _sort_key(e: ExternDesc) -> tuple[int, int, int, bytes]:
    # libbpf cmp_externs: EXT_KCFG (1) before EXT_KSYM (2); kcfg by -align, size; then name
    if e.kind == ExternKind.KCONFIG:
        return (0, -e.align, e.size, e.name.encode())
    return (1, 0, 0, e.name.encode())


def collect_externs(elf: ElfObject, btf: BTFView | None, *, obj_name: str | None = None
                    ) -> tuple[dict[str, ExternDesc], MapSpec | None]:
    """The object's externs in libbpf's order, and its ``.kconfig`` map (or None).

    ``obj_name`` names the kconfig map (``<obj>.kconfig``); default: from ``elf.path``.
    """
    syms = [s for s in elf.symbols if _is_extern_sym(s) and s.name]
    if not syms:
        return {}, None
    if btf is None:
        raise ObjectError(f"extern '{syms[0].name}' needs BTF, and the object has none")
    try:
        return _collect(elf, btf, syms, obj_name)
    except BTFError as e:
        raise ObjectError(f"malformed BTF for externs: {e}") from None


def _find_extern_btf(btf: BTFView, name: str) -> int:
    """libbpf ``find_extern_btf_id()``: the first VAR or FUNC called ``name``."""
    for tid in sorted(btf.find(name)):
        t = btf.type(tid)
        if isinstance(t, (Var, Func)):
            if t.linkage != Linkage.EXTERN:
                raise ObjectError(f"extern '{name}': BTF {t.kind.name} [{tid}] is not extern")
            return tid
    raise ObjectError(f"failed to find BTF for extern '{name}'")


def _datasecs(btf: BTFView) -> dict[int, tuple[int, Datasec]]:
    """VAR/FUNC id -> (DATASEC id, DATASEC) for every DATASEC entry."""
    out: dict[int, tuple[int, Datasec]] = {}
    for tid in range(1, len(btf)):
        t = btf.type(tid)
        if isinstance(t, Datasec):
            for vi in t.vars:
                out.setdefault(vi.type, (tid, t))
    return out


def _collect(elf: ElfObject, btf: BTFView, syms: list[Symbol], obj_name: str | None
             ) -> tuple[dict[str, ExternDesc], MapSpec | None]:
    secs = _datasecs(btf)
    descs: list[ExternDesc] = []
    seen: set[str] = set()
    kcfg_sec_id = 0
    for s in syms:
        btf_id = _find_extern_btf(btf, s.name)
        t = btf.type(btf_id)
        name = t.name
        if name in seen:
            raise ObjectError(f"extern '{name}' declared twice")
        seen.add(name)
        if btf_id not in secs:
            raise ObjectError(f"failed to find BTF for extern '{name}' [{btf_id}] section")
        sec_id, sec = secs[btf_id]
        weak = s.bind == STB_WEAK
        if sec.name == KCONFIG_SECTION:
            if isinstance(t, Func):
                raise ObjectError(f"extern function {name} is unsupported under {KCONFIG_SECTION} section")
            assert isinstance(t, Var)
            try:
                size = sizeof(btf, t.type)
            except BTFError as e:
                raise ObjectError(f"failed to resolve size of extern (kcfg) '{name}': {e}") from None
            align = _align_of(btf, t.type)
            if size <= 0 or align <= 0:
                raise ObjectError(f"failed to determine size/alignment of extern (kcfg) '{name}'")
            ktype, signed = _kcfg_type(btf, t.type)
            if ktype == KcfgType.UNKNOWN:
                raise ObjectError(f"extern (kcfg) '{name}': type is unsupported")
            kcfg_sec_id = sec_id
            descs.append(ExternDesc(name=name, kind=ExternKind.KCONFIG, weak=weak, btf_id=btf_id,
                                    size=size, sym_index=s.index, sec_btf_id=sec_id,
                                    kcfg_type=ktype, signed=signed, align=align))
        elif sec.name == KSYMS_SECTION:
            # _find_extern_btf returns only a VAR or a FUNC
            type_id = skip_modifiers(btf, cast("Var | Func", t).type)
            is_func = isinstance(t, Func)
            if is_func and not isinstance(btf.type(type_id), FuncProto):
                raise ObjectError(f"extern function '{name}' has no FUNC_PROTO")
            descs.append(ExternDesc(
                name=name, kind=ExternKind.KFUNC if is_func else ExternKind.KSYM, weak=weak,
                btf_id=btf_id, typed=is_func or type_id != 0, sym_index=s.index,
                sec_btf_id=sec_id, type_id=type_id, essential=essential_name(name)))
        else:
            raise ObjectError(f"unrecognized extern section '{sec.name}'")
    descs.sort(key=_sort_key)
    off = 0
    for i, d in enumerate(descs):
        d.index = i
        if d.kind == ExternKind.KCONFIG:
            d.offset = (off + d.align - 1) // d.align * d.align
            off = d.offset + d.size
    externs = {d.name: d for d in descs}
    kmap = None
    if kcfg_sec_id:
        if obj_name is None:
            obj_name = object_name(elf.path) if elf.path else ""
        kname = internal_map_name(obj_name, KCONFIG_SECTION)
        kmap = MapSpec(name=kname, type=MapType.ARRAY, key_size=4, value_size=off, max_entries=1,
                       flags=BPF_F_RDONLY_PROG | BPF_F_MMAPABLE, btf_value_type_id=kcfg_sec_id,
                       data=bytearray(off), section=KCONFIG_SECTION)
        kmap.extra["kernel_name"] = kname
        kmap.extra["libbpf_type"] = "kconfig"
    return externs, kmap


# -- kconfig values ------------------------------------------------------------------------


def _strtoull(value: str) -> int:
    """C ``strtoull(value, &end, 0)`` that must consume the whole string."""
    s = value.strip() if value[:1].isspace() else value
    neg = False
    body = s
    if body[:1] in "+-":
        neg = body[0] == "-"
        body = body[1:]
    try:
        if body[:2].lower() == "0x":
            n = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            n = int(body[1:], 8)
        else:
            if not body.isdigit():
                raise ValueError
            n = int(body, 10)
    except ValueError:
        raise ExternError(f"failed to parse '{value}' as integer completely") from None
    if n > 0xFFFFFFFFFFFFFFFF:
        raise ExternError(f"failed to parse '{value}': out of range")
    return (-n) & 0xFFFFFFFFFFFFFFFF if neg else n


def _set_num(e: ExternDesc, v: int) -> None:
    """libbpf ``set_kcfg_value_num()``."""
    if e.kcfg_type not in (KcfgType.INT, KcfgType.CHAR, KcfgType.BOOL):
        raise ExternError(f"extern (kcfg) '{e.name}': value '{v}' implies integer, char, "
                          "or boolean type", name=e.name)
    if e.kcfg_type == KcfgType.BOOL and v > 1:
        raise ExternError(f"extern (kcfg) '{e.name}': value '{v}' isn't boolean compatible",
                          name=e.name)
    if e.size not in (1, 2, 4, 8):
        raise ExternError(f"extern (kcfg) '{e.name}': unsupported size {e.size}", name=e.name)
    bits = e.size * 8
    if e.size != 8:
        ok = ((v + (1 << (bits - 1))) & 0xFFFFFFFFFFFFFFFF) < (1 << bits) if e.signed \
            else (v >> bits) == 0
        if not ok:
            raise ExternError(f"extern (kcfg) '{e.name}': value '{v}' doesn't fit in "
                              f"{e.size} bytes", name=e.name)
    e.value = bool(v) if e.kcfg_type == KcfgType.BOOL else v
    e.resolved = True


def _set_tristate(e: ExternDesc, c: str) -> None:
    """libbpf ``set_kcfg_value_tri()``."""
    if e.kcfg_type == KcfgType.BOOL:
        if c == "m":
            raise ExternError(f"extern (kcfg) '{e.name}': value '{c}' implies tristate or "
                              "char type", name=e.name)
        e.value = c == "y"
    elif e.kcfg_type == KcfgType.TRISTATE:
        e.value = {"y": Tristate.YES, "m": Tristate.MODULE}.get(c, Tristate.NO)
    elif e.kcfg_type == KcfgType.CHAR:
        e.value = ord(c)
    else:
        raise ExternError(f"extern (kcfg) '{e.name}': value '{c}' implies bool, tristate, "
                          "or char type", name=e.name)
    e.resolved = True


def _set_str(e: ExternDesc, value: str) -> None:
    """libbpf ``set_kcfg_value_str()``: strip the quotes, truncate, NUL-terminate."""
    if e.kcfg_type != KcfgType.CHAR_ARR:
        raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies char array type",
                          name=e.name)
    if len(value) < 2 or not value.endswith('"'):
        raise ExternError(f"extern (kcfg) '{e.name}': invalid string config '{value}'",
                          name=e.name)
    raw = value[1:-1].encode()
    if len(raw) >= e.size:
        log.warning("extern (kcfg) '%s': long string '%s' truncated to %d bytes",
                    e.name, value, e.size - 1)
        raw = raw[: e.size - 1]
    e.value = raw
    e.resolved = True


def set_kconfig_value(e: ExternDesc, value: str) -> None:
    """Set a kconfig extern from its config text (libbpf ``process_kconfig_line()``)."""
    c = value[:1]
    if c in ("y", "n", "m"):
        _set_tristate(e, c)
    elif c == '"':
        _set_str(e, value)
    else:
        v = _strtoull(value)
        if e.kcfg_type not in (KcfgType.INT, KcfgType.CHAR):
            raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies integer type",
                              name=e.name)
        _set_num(e, v)
    e.raw = value


# -- kernel BTF lookups ---------------------------------------------------------------------


def _find_kernel(kbtf: BTFView, name: str, kind: Kind) -> int:
    ids = kbtf.find(name, kind)
    return min(ids) if ids else 0


def _compat(local: BTFView, lid: int, kbtf: BTFView, kid: int) -> bool:
    from ..btf.core_types import types_are_compat

    try:
        return types_are_compat(local, lid, kbtf, kid) > 0
    except Exception:  # CoreFail (too deep) counts as incompatible
        return False


_SYSCALL_PFX = {"x86_64": "x64", "i386": "ia32", "i686": "ia32", "aarch64": "arm64",
                "s390x": "s390x", "s390": "s390", "armv7l": "arm", "riscv64": "riscv",
                "ppc64le": "powerpc", "ppc64": "powerpc", "loongarch64": "loongarch"}


def syscall_wrapper_symbol(machine: str | None = None) -> str | None:
    """The function libbpf's FEAT_SYSCALL_WRAPPER probe looks for (``__x64_sys_bpf`` on
    x86_64); None on an architecture without syscall wrappers."""
    pfx = _SYSCALL_PFX.get(machine or os.uname().machine)
    return None if pfx is None else f"__{pfx}_sys_bpf"


def _has_syscall_wrapper(kbtf: BTFView | None, kallsyms: Mapping[str, int] | None) -> bool:
    sym = syscall_wrapper_symbol()
    if sym is None:
        return False
    if kallsyms and sym in kallsyms:
        return True
    return bool(kbtf is not None and kbtf.find(sym, Kind.FUNC))


def _has_bpf_cookie(kbtf: BTFView | None) -> bool:
    if kbtf is None:
        return False
    for tid in kbtf.find("bpf_func_id", Kind.ENUM):
        t = kbtf.type(tid)
        if any(v.name == "BPF_FUNC_get_attach_cookie" for v in t.values):  # type: ignore[union-attr]
            return True
    return False


# -- resolution ------------------------------------------------------------------------------


def resolve_externs(externs: Mapping[str, ExternSpec], *, kconfig: Mapping[str, str] | None = None,
                    kernel_btf: BTFView | None = None, kallsyms: Mapping[str, int] | None = None,
                    kernel_version: int | None = None, local_btf: BTFView | None = None,
                    has_bpf_cookie: bool | None = None,
                    has_syscall_wrapper: bool | None = None) -> None:
    """Resolve ``externs`` (from :func:`collect_externs`) against the given kernel data.

    Pure: nothing is read here. Missing inputs leave the externs that need them
    unresolved. ``local_btf`` (the object's BTF) enables libbpf's type-compatibility
    checks for typed ksyms and kfuncs. ``LINUX_HAS_*`` default to what kernel BTF and
    kallsyms show. Raises ExternError for an unresolved strong extern or a malformed
    value; weak ones stay unresolved with value 0.
    """
    for e in externs.values():
        e.resolved = False
        e.value = None
        e.kernel_btf_id = 0
        e.kernel_btf_fd_idx = 0
    for e in externs.values():
        if e.kind == ExternKind.KCONFIG:
            _resolve_kcfg(e, kconfig, kernel_btf, kallsyms, kernel_version, has_bpf_cookie,
                          has_syscall_wrapper)
        elif e.kind == ExternKind.KSYM and not e.typed:
            if kallsyms is not None and e.name in kallsyms:
                e.value = kallsyms[e.name]
                e.resolved = True
        elif kernel_btf is not None:
            _resolve_btf(e, kernel_btf, local_btf)
    for e in externs.values():
        if not e.resolved:
            if not e.weak:
                why = ""
                if e.kind == ExternKind.KCONFIG and kconfig is None and e.name.startswith("CONFIG_"):
                    why = " (no kernel config available)"
                elif e.kind in (ExternKind.KSYM, ExternKind.KFUNC) and e.typed and kernel_btf is None:
                    why = " (no kernel BTF available)"
                elif e.kind == ExternKind.KSYM and not e.typed and kallsyms is None:
                    why = " (no kallsyms available)"
                raise ExternError(f"extern '{e.name}' (strong): not resolved{why}", name=e.name)
            log.debug("extern '%s' (weak): not resolved, defaulting to zero", e.name)
            if e.value is None:
                e.value = 0


def _resolve_kcfg(e: ExternSpec, kconfig: Mapping[str, str] | None, kbtf: BTFView | None,
                  kallsyms: Mapping[str, int] | None, kver: int | None, cookie: bool | None,
                  wrapper: bool | None) -> None:
    if not isinstance(e, ExternDesc):
        raise ExternError(f"extern '{e.name}': not from collect_externs()", name=e.name)
    name = e.name
    if name.startswith("CONFIG_"):
        if kconfig is not None and name in kconfig:
            set_kconfig_value(e, kconfig[name])
        return
    if name == "LINUX_KERNEL_VERSION":
        v = kernel_version_code() if kver is None else kver
        if not v:
            raise ExternError(f"extern (kcfg) '{name}': failed to get kernel version", name=name)
    elif name == "LINUX_HAS_BPF_COOKIE":
        v = int(_has_bpf_cookie(kbtf) if cookie is None else cookie)
    elif name == "LINUX_HAS_SYSCALL_WRAPPER":
        v = int(_has_syscall_wrapper(kbtf, kallsyms) if wrapper is None else wrapper)
    elif not name.startswith("LINUX_") or not e.weak:
        raise ExternError(f"extern (kcfg) '{name}': unrecognized virtual extern", name=name)
    else:
        v = 0
    _set_num(e, v)


def _resolve_btf(e: ExternSpec, kbtf: BTFView, local: BTFView | None) -> None:
    if e.kind == ExternKind.KSYM:
        kid = _find_kernel(kbtf, e.name, Kind.VAR)
        if not kid:
            return
        if local is not None and isinstance(e, ExternDesc):
            kvar = kbtf.type(kid)
            if not _compat(local, e.type_id, kbtf, skip_modifiers(kbtf, kvar.type)):  # type: ignore[union-attr]
                raise ExternError(f"extern (var ksym) '{e.name}': incompatible types with kernel "
                                  f"BTF [{kid}]", name=e.name)
    else:
        lookup = e.essential if isinstance(e, ExternDesc) and e.essential else e.name
        kid = _find_kernel(kbtf, lookup, Kind.FUNC)
        if not kid:
            return
        if local is not None and isinstance(e, ExternDesc):
            kfn = kbtf.type(kid)
            if not _compat(local, e.type_id, kbtf, kfn.type):  # type: ignore[union-attr]
                if e.weak:
                    return
                raise ExternError(f"extern (func ksym) '{e.name}': func_proto [{e.type_id}] "
                                  f"incompatible with vmlinux [{kfn.type}]", name=e.name)  # type: ignore[union-attr]
    e.kernel_btf_id = kid
    e.kernel_btf_fd_idx = 0
    e.resolved = True


# -- outputs -----------------------------------------------------------------------------------


def kconfig_map_data(externs: Mapping[str, ExternSpec], map_spec: MapSpec) -> bytearray:
    """The ``.kconfig`` map value after resolution (also stored in ``map_spec.data``)."""
    buf = bytearray(map_spec.value_size)
    for e in externs.values():
        if e.kind != ExternKind.KCONFIG or not e.resolved:
            continue
        if e.offset + e.size > len(buf):
            raise ObjectError(f"kconfig extern '{e.name}' lies outside the .kconfig map")
        v = e.value
        if isinstance(v, (bytes, bytearray)):
            raw = bytes(v)[: e.size - 1] + b"\0"
            buf[e.offset: e.offset + len(raw)] = raw
        else:
            n = int(v) & ((1 << (8 * e.size)) - 1)
            buf[e.offset: e.offset + e.size] = n.to_bytes(e.size, "little")
    map_spec.data = bytearray(buf)
    return buf


def extern_ldimm64(ext: ExternSpec, kconfig_offset_only: bool = False) -> tuple[int, int, int]:
    """(src_reg, insn[0].imm, insn[1].imm) libbpf writes for an ld_imm64 of ``ext``.

    For kconfig externs the src is BPF_PSEUDO_MAP_VALUE (2), imm the map fd (0 here,
    patched at load) and insn[1].imm the offset in the .kconfig map.
    """
    if ext.kind == ExternKind.KCONFIG:
        return 2, 0, ext.offset
    if ext.typed and ext.resolved:
        return _PSEUDO_BTF_ID, ext.kernel_btf_id, 0  # insn[1].imm: BTF obj fd, 0 = vmlinux
    addr = int(ext.value or 0) & 0xFFFFFFFFFFFFFFFF
    return 0, _s32(addr & 0xFFFFFFFF), _s32(addr >> 32)


def extern_call(ext: ExternSpec, *, poison: bool = False, index: int | None = None
                ) -> tuple[int, int, int]:
    """(src_reg, imm, off) of a call to kfunc ``ext``; ``poison`` selects libbpf >= 1.2
    handling of unresolved weak kfuncs (needs the extern ``index``)."""
    if ext.resolved:
        return _PSEUDO_KFUNC_CALL, ext.kernel_btf_id, ext.kernel_btf_fd_idx
    if poison:
        if index is None:
            index = ext.index if isinstance(ext, ExternDesc) else 0
        return 0, POISON_CALL_KFUNC_BASE + index, 0
    return _PSEUDO_KFUNC_CALL, 0, 0


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


# -- BTF fixup for the kernel ------------------------------------------------------------------


def fixup_extern_btf(btf: BTF, externs: Mapping[str, ExternSpec]) -> None:
    """Rewrite extern DATASECs of ``btf`` (a mutable :class:`~pyebpf.btf.spec.BTF`) as libbpf
    does before loading it: the kernel refuses extern linkage in a DATASEC.

    * ``.ksyms``: each VAR becomes a GLOBAL 4-byte int at offset ``4*i``; each FUNC entry
      is replaced by a ``dummy_ksym`` VAR and becomes a GLOBAL FUNC, and nameless params
      of its prototype get the name ``dummy_ksym``.
    * ``.kconfig``: VARs become GLOBAL at their ``ExternSpec.offset``; the DATASEC size
      is the layout's end.
    """
    by_name = dict(externs)
    int_id = 0
    for tid in range(1, len(btf)):
        t = btf.type(tid)
        if isinstance(t, Int) and t.bits == 32:
            int_id = tid
            break
    for tid in range(1, len(btf)):
        t = btf.type(tid)
        if not isinstance(t, Datasec):
            continue
        if t.name == KSYMS_SECTION:
            dummy = 0
            if any(isinstance(btf.type(vi.type), Func) for vi in t.vars):
                dummy = btf.add(Var("dummy_ksym", int_id, Linkage.GLOBAL))
            for i, vi in enumerate(t.vars):
                vt = btf.type(vi.type)
                if vt.name not in by_name:
                    raise ObjectError(f"failed to find extern definition for BTF '{vt.name}'")
                if isinstance(vt, Func):
                    proto = btf.type(vt.type)
                    if isinstance(proto, FuncProto):
                        proto.params = [Param("dummy_ksym", p.type) if p.type and not p.name else p
                                        for p in proto.params]
                    vt.linkage = Linkage.GLOBAL
                    vi.type = dummy
                elif isinstance(vt, Var):
                    vt.linkage = Linkage.GLOBAL
                    vt.type = int_id
                vi.offset = 4 * i
                vi.size = 4
            t.size = 4 * len(t.vars)
        elif t.name == KCONFIG_SECTION:
            end = 0
            for vi in t.vars:
                vt = btf.type(vi.type)
                e = by_name.get(vt.name)
                if e is None:
                    raise ObjectError(f"failed to find extern definition for BTF var '{vt.name}'")
                if isinstance(vt, Var):
                    vt.linkage = Linkage.GLOBAL
                vi.offset = e.offset
                end = max(end, e.offset + e.size)
            t.size = max((e.offset + e.size for e in externs.values()
                          if e.kind == ExternKind.KCONFIG), default=end)
        else:
            continue
        t.vars.sort(key=lambda v: v.offset)
    if hasattr(btf, "invalidate"):
        btf.invalidate()

