"""Map definitions from an object file: BTF-defined ``.maps``, legacy ``maps``, global data.

Pure functions from :class:`~pyebpf.obj.elf.ElfObject` (+ object BTF) to
:class:`~pyebpf.obj.spec.MapSpec`. They follow libbpf:

* ``.maps`` — ``parse_btf_map_def()``: every member of the map's anonymous struct is an
  attribute. ``__uint(name, v)`` is ``int (*name)[v]`` (a pointer to an array whose
  length is the value), ``__type(name, T)`` is ``T *name``, ``__array(name, T)`` is
  ``T *name[]`` (a zero-length array of pointers), ``__ulong(name, v)`` (map_extra only)
  is an enum with one enumerator. Unknown members are errors (libbpf "strict" mode).
* legacy ``maps`` — libbpf 0.x ``bpf_object__init_user_maps()``: ``struct bpf_map_def``
  records, record size = section size / number of map symbols.
* global data — ``bpf_object__init_internal_map()`` and ``internal_map_name()``.

Map dicts are keyed by the name libbpf's ``bpf_map__name()`` returns. The name the
kernel sees (at most 15 characters) is in ``MapSpec.extra["kernel_name"]``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from .._log import get_logger
from ..btf.types import (
    Array,
    BTFView,
    Datasec,
    Enum,
    Enum64,
    FuncProto,
    Kind,
    Linkage,
    Ptr,
    Struct,
    Var,
    VarSecinfo,
    sizeof,
    skip_modifiers,
)
from ..errors import BTFError, ObjectError
from ..uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, BPF_OBJ_NAME_LEN, MapType
from .elf import (
    SHF_EXECINSTR,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_WEAK,
    STT_OBJECT,
    STT_SECTION,
    STV_HIDDEN,
    STV_INTERNAL,
    ElfObject,
    Section,
    Symbol,
)
from .spec import MapSpec, PinType, VariableSpec

__all__ = [
    "ARENA_SECTION",
    "MAPS_SECTION",
    "arena_data_offset",
    "arena_section",
    "data_section_kind",
    "internal_map_name",
    "object_name",
    "parse_btf_maps",
    "parse_global_data",
    "parse_legacy_maps",
]

log = get_logger("pyebpf")

MAPS_SECTION = ".maps"
LEGACY_MAPS_SECTION = "maps"
_LEGACY_DEF = struct.Struct("<5I")  # type, key_size, value_size, max_entries, map_flags
_MAP_IN_MAP = (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)
_BPF_PTR_SIZE = 8


def object_name(path: str) -> str:
    """libbpf's object name for ``path``: the basename cut to 15 chars, then at the first '.'."""
    base = os.path.basename(path)[: BPF_OBJ_NAME_LEN - 1]
    return base.split(".", 1)[0]


def internal_map_name(obj_name: str, real_name: str) -> str:
    """libbpf ``internal_map_name()``: the kernel-visible name of a global-data map.

    ``.data``/``.rodata``/``.bss``/``.kconfig`` get as much of the object name as fits
    in front (the suffix always reserves at least 7 characters); custom
    ``.data.foo`` style sections (a second dot) use their own name, truncated to 15.
    Characters the kernel refuses become ``_``.
    """
    sfx_len = min(max(7, len(real_name)), BPF_OBJ_NAME_LEN - 1)
    if "." in real_name[1:]:
        pfx_len = 0
    else:
        pfx_len = min(BPF_OBJ_NAME_LEN - sfx_len - 1, len(obj_name))
    name = (obj_name[:pfx_len] + real_name[:sfx_len])[: BPF_OBJ_NAME_LEN - 1]
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_." else "_" for c in name)


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 4096


def _adjust_ringbuf_size(sz: int) -> int:
    """libbpf ``adjust_ringbuf_sz()``: round up to a power-of-2 multiple of the page size."""
    page = _page_size()
    if sz == 0:
        return 0
    if sz % page == 0 and ((sz // page) & (sz // page - 1)) == 0:
        return sz
    mul = 1
    while mul <= 0xFFFFFFFF // page:
        if mul * page > sz:
            return mul * page
        mul <<= 1
    return sz


# -- DATASEC layout ----------------------------------------------------------------------


def _elf_var_symbol(elf: ElfObject, name: str) -> Symbol | None:
    """libbpf ``find_elf_var_sym()``: a GLOBAL or WEAK STT_OBJECT symbol called ``name``."""
    for s in elf.symbols:
        if s.type == STT_OBJECT and s.bind in (STB_GLOBAL, STB_WEAK) and s.name == name:
            return s
    return None


def datasec_layout(elf: ElfObject, btf: BTFView, ds: Datasec
                   ) -> list[tuple[Var, int, int, int, int]]:
    """(var, var type id, offset, size, linkage) per VAR of ``ds``, sorted by offset.

    Applies libbpf's ``btf_fixup_datasec()`` without touching the BTF: clang leaves
    the DATASEC size and VAR offsets at 0, so offsets of global VARs come from their
    ELF symbols; a global symbol with hidden/internal visibility counts as static.
    When the DATASEC already has a size (BTF fixed up, or statically linked), its
    offsets are kept.
    """
    fix_offsets = ds.size == 0
    out = []
    for vi in ds.vars:
        v = btf.type(vi.type)
        if not isinstance(v, Var):
            raise ObjectError(f"DATASEC '{ds.name}': entry [{vi.type}] is not a VAR",
                              section=ds.name)
        off, linkage = vi.offset, v.linkage
        if linkage not in (Linkage.STATIC, Linkage.EXTERN):
            sym = _elf_var_symbol(elf, v.name)
            if sym is None:
                raise ObjectError(f"DATASEC '{ds.name}': no ELF symbol for VAR '{v.name}'",
                                  section=ds.name)
            if fix_offsets:
                off = sym.value
            if sym.visibility in (STV_HIDDEN, STV_INTERNAL):
                linkage = Linkage.STATIC
        out.append((v, vi.type, off, vi.size, linkage))
    out.sort(key=lambda e: e[2])
    return out


# -- BTF-defined maps ----------------------------------------------------------------


class _Def:
    """struct btf_map_def: what parse_btf_map_def() collects."""

    __slots__ = ("map_type", "key_size", "value_size", "max_entries", "map_flags",
                 "numa_node", "map_extra", "pinning", "key_type_id", "value_type_id",
                 "inner", "values_member")

    def __init__(self) -> None:
        self.map_type = 0
        self.key_size = 0
        self.value_size = 0
        self.max_entries = 0
        self.map_flags = 0
        self.numa_node = 0
        self.map_extra = 0
        self.pinning = 0
        self.key_type_id = 0
        self.value_type_id = 0
        self.inner: _Def | None = None
        self.values_member = False


def _kind_name(t: object) -> str:
    k = getattr(t, "kind", None)
    return k.name.lower() if isinstance(k, Kind) else "?"


def _field_int(map_name: str, btf: BTFView, mname: str, type_id: int) -> int:
    """``__uint()``: pointer to an array whose element count is the value."""
    t = btf.type(skip_modifiers(btf, type_id))
    if not isinstance(t, Ptr):
        raise ObjectError(f"map '{map_name}': attr '{mname}': expected PTR, got {_kind_name(t)}")
    arr = btf.type(t.type)
    if not isinstance(arr, Array):
        raise ObjectError(f"map '{map_name}': attr '{mname}': expected ARRAY, got {_kind_name(arr)}")
    return arr.nelems


def _field_long(map_name: str, btf: BTFView, mname: str, type_id: int) -> int:
    """``__uint()`` or ``__ulong()`` (an enum with one enumerator holding the value)."""
    t = btf.type(skip_modifiers(btf, type_id))
    if isinstance(t, Ptr):
        return _field_int(map_name, btf, mname, type_id)
    if not isinstance(t, (Enum, Enum64)):
        raise ObjectError(
            f"map '{map_name}': attr '{mname}': expected ENUM or ENUM64, got {_kind_name(t)}"
        )
    if len(t.values) != 1:
        raise ObjectError(f"map '{map_name}': attr '{mname}': invalid __ulong")
    v = t.values[0].value
    return v & 0xFFFFFFFF if isinstance(t, Enum) else v & 0xFFFFFFFFFFFFFFFF


def _parse_def(map_name: str, btf: BTFView, st: Struct, strict: bool, d: _Def,
               inner: _Def | None) -> None:
    """libbpf ``parse_btf_map_def()``; ``inner`` is None while parsing an inner template."""
    is_inner = inner is None
    n = len(st.members)
    for i, m in enumerate(st.members):
        name = m.name
        if not name:
            raise ObjectError(f"map '{map_name}': invalid field #{i}.")
        if name == "type":
            d.map_type = _field_int(map_name, btf, name, m.type)
        elif name == "max_entries":
            d.max_entries = _field_int(map_name, btf, name, m.type)
        elif name == "map_flags":
            d.map_flags = _field_int(map_name, btf, name, m.type)
        elif name == "numa_node":
            d.numa_node = _field_int(map_name, btf, name, m.type)
        elif name in ("key_size", "value_size"):
            sz = _field_int(map_name, btf, name, m.type)
            what = name[:-5]
            cur = getattr(d, name)
            if cur and cur != sz:
                raise ObjectError(f"map '{map_name}': conflicting {what} size {cur} != {sz}.")
            setattr(d, name, sz)
        elif name in ("key", "value"):
            t = btf.type(m.type)
            if not isinstance(t, Ptr):
                raise ObjectError(f"map '{map_name}': {name} spec is not PTR: {_kind_name(t)}.")
            try:
                sz = sizeof(btf, t.type)
            except BTFError as e:
                raise ObjectError(
                    f"map '{map_name}': can't determine {name} size for type [{t.type}]: {e}"
                ) from None
            attr = name + "_size"
            cur = getattr(d, attr)
            if cur and cur != sz:
                raise ObjectError(f"map '{map_name}': conflicting {name} size {cur} != {sz}.")
            setattr(d, attr, sz)
            setattr(d, name + "_type_id", t.type)
        elif name == "values":
            is_mim = d.map_type in _MAP_IN_MAP
            is_prog_array = d.map_type == MapType.PROG_ARRAY
            desc = "map-in-map inner" if is_mim else "prog-array value"
            if is_inner:
                raise ObjectError(f"map '{map_name}': multi-level inner maps not supported.")
            if i != n - 1:
                raise ObjectError(f"map '{map_name}': '{name}' member should be last.")
            if not is_mim and not is_prog_array:
                raise ObjectError(f"map '{map_name}': should be map-in-map or prog-array.")
            if d.value_size and d.value_size != 4:
                raise ObjectError(f"map '{map_name}': conflicting value size {d.value_size} != 4.")
            d.value_size = 4
            t = btf.type(m.type)
            if not isinstance(t, Array) or t.nelems:
                raise ObjectError(f"map '{map_name}': {desc} spec is not a zero-sized array.")
            t = btf.type(skip_modifiers(btf, t.type))
            if not isinstance(t, Ptr):
                raise ObjectError(f"map '{map_name}': {desc} def is of unexpected kind {_kind_name(t)}.")
            t = btf.type(skip_modifiers(btf, t.type))
            d.values_member = True
            if is_prog_array:
                if not isinstance(t, FuncProto):
                    raise ObjectError(
                        f"map '{map_name}': prog-array value def is of unexpected kind {_kind_name(t)}."
                    )
                continue
            if not isinstance(t, Struct):
                raise ObjectError(
                    f"map '{map_name}': map-in-map inner def is of unexpected kind {_kind_name(t)}."
                )
            assert inner is not None
            _parse_def(f"{map_name}.inner", btf, t, strict, inner, None)
            d.inner = inner
        elif name == "pinning":
            if is_inner:
                raise ObjectError(f"map '{map_name}': inner def can't be pinned.")
            val = _field_int(map_name, btf, name, m.type)
            if val not in (0, 1):
                raise ObjectError(f"map '{map_name}': invalid pinning value {val}.")
            d.pinning = val
        elif name == "map_extra":
            d.map_extra = _field_long(map_name, btf, name, m.type)
        elif strict:
            raise ObjectError(f"map '{map_name}': unknown field '{name}'.")
        else:
            log.debug("map '%s': ignoring unknown field '%s'", map_name, name)
    if d.map_type == 0:
        raise ObjectError(f"map '{map_name}': map type isn't specified.")


def _spec_from_def(name: str, d: _Def, section: str) -> MapSpec:
    max_entries = d.max_entries
    if d.map_type in (MapType.RINGBUF, MapType.USER_RINGBUF):
        max_entries = _adjust_ringbuf_size(max_entries)
    spec = MapSpec(
        name=name,
        type=d.map_type,
        key_size=d.key_size,
        value_size=d.value_size,
        max_entries=max_entries,
        flags=d.map_flags,
        numa_node=d.numa_node,
        map_extra=d.map_extra,
        pinning=PinType(d.pinning),
        btf_key_type_id=d.key_type_id,
        btf_value_type_id=d.value_type_id,
        section=section,
    )
    spec.extra["kernel_name"] = name[: BPF_OBJ_NAME_LEN - 1]
    return spec


def _find_datasec(btf: BTFView, name: str) -> tuple[int, Datasec] | None:
    for tid in btf.find(name, Kind.DATASEC):
        t = btf.type(tid)
        if isinstance(t, Datasec):
            return tid, t
    return None


def parse_btf_maps(elf: ElfObject, btf: BTFView | None, *, strict: bool = True) -> dict[str, MapSpec]:
    """The BTF-defined maps of the ``.maps`` section, in declaration order.

    Inner map templates (``__array(values, struct {...})``) land in ``MapSpec.inner``
    (named ``<outer>.inner``); ``.values`` initialisers from the ``.rel.maps``
    relocations land in ``MapSpec.init_slots`` (slot -> map or program name).
    ``MapSpec.extra["btf_var_offset"]`` is the variable's offset inside ``.maps``.
    """
    sec = elf.section(MAPS_SECTION)
    if sec is None:
        return {}
    if btf is None:
        raise ObjectError("object has a '.maps' section but no BTF", section=MAPS_SECTION)
    try:
        return _parse_btf_maps(elf, btf, sec, strict)
    except BTFError as e:
        raise ObjectError(f"malformed BTF for '.maps': {e}", section=MAPS_SECTION) from None


def _parse_btf_maps(elf: ElfObject, btf: BTFView, sec: Section, strict: bool) -> dict[str, MapSpec]:
    found = _find_datasec(btf, MAPS_SECTION)
    if found is None:
        raise ObjectError(f"DATASEC '{MAPS_SECTION}' not found.", section=MAPS_SECTION)
    _, ds = found
    maps: dict[str, MapSpec] = {}
    spans: list[tuple[int, int, MapSpec]] = []
    for idx, (var, vid, off, size, linkage) in enumerate(datasec_layout(elf, btf, ds)):
        vi = VarSecinfo(vid, off, size)
        map_name = var.name
        if not map_name:
            raise ObjectError(f"map #{idx}: empty name.", section=MAPS_SECTION)
        if vi.offset + vi.size > sec.size:
            raise ObjectError(f"map '{map_name}' BTF data is corrupted.", section=MAPS_SECTION)
        if linkage != Linkage.GLOBAL:
            lname = Linkage(linkage).name.lower() if linkage in (0, 1, 2) else str(linkage)
            raise ObjectError(f"map '{map_name}': unsupported map linkage {lname}.",
                              section=MAPS_SECTION)
        st = btf.type(skip_modifiers(btf, var.type))
        if not isinstance(st, Struct):
            raise ObjectError(f"map '{map_name}': unexpected def kind {_kind_name(st)}.")
        if st.size > vi.size:
            raise ObjectError(f"map '{map_name}': invalid def size.")
        if map_name in maps:
            raise ObjectError(f"map '{map_name}': defined twice.", section=MAPS_SECTION)
        d, inner = _Def(), _Def()
        _parse_def(map_name, btf, st, strict, d, inner)
        spec = _spec_from_def(map_name, d, MAPS_SECTION)
        if d.inner is not None:
            spec.inner = _spec_from_def(f"{map_name}.inner", d.inner, MAPS_SECTION)
        spec.extra["btf_var_offset"] = vi.offset
        spec.extra["btf_var_type_id"] = vi.type
        maps[map_name] = spec
        spans.append((vi.offset, vi.offset + vi.size, spec))
        # where the 'values' array starts, for the .rel.maps slot arithmetic
        if d.values_member:
            spec.extra["values_offset"] = st.members[-1].bit_offset // 8
    _collect_map_relos(elf, sec, maps, spans)
    _attach_arena_data(elf, maps)
    return maps


ARENA_SECTION = ".addr_space.1"


def arena_section(elf: ElfObject) -> Section | None:
    """The section of global ``__arena`` variables, if the object has any (libbpf's
    ``efile.arena_data``: a non-empty, non-executable PROGBITS ``.addr_space.1``)."""
    sec = elf.section(ARENA_SECTION)
    if sec is None or sec.type != SHT_PROGBITS or not sec.size or sec.flags & SHF_EXECINSTR:
        return None
    return sec


def arena_data_offset(arena: MapSpec) -> int:
    """Where the ``__arena`` globals start inside ``arena``'s memory (libbpf's
    ``arena_data_off``): at its end, on a page boundary, so that the first pages stay
    free and a NULL arena pointer never lands on a global.

    Computed from the spec as it is now: ``max_entries`` may be edited before load,
    and the relocations and the loader's copy must agree with the map created.
    """
    data = arena.extra.get("arena_data") or b""
    page = _page_size()
    alloc = (len(data) + page - 1) // page * page
    mmap_sz = page * arena.max_entries
    if alloc > mmap_sz:
        raise ObjectError(f"declared ARENA map size ({mmap_sz}) is too small to hold global "
                          f"__arena variables of size {len(data)}", section=ARENA_SECTION)
    return mmap_sz - alloc


def _attach_arena_data(elf: ElfObject, maps: dict[str, MapSpec]) -> None:
    """Global ``__arena`` variables (section ``.addr_space.1``) belong to the one ARENA map.

    libbpf keeps them as the arena's initial data: ``MapSpec.extra["arena_data"]``,
    copied to :func:`arena_data_offset` of the arena once it is created.
    """
    arenas = [m for m in maps.values() if m.type == MapType.ARENA]
    if len(arenas) > 1:
        raise ObjectError(f"map '{arenas[1].name}': only single ARENA map is supported "
                          f"(map '{arenas[0].name}' is also ARENA)", section=MAPS_SECTION)
    sec = arena_section(elf)
    if sec is None:
        return
    if not arenas:
        raise ObjectError("to use global __arena variables the ARENA map should be explicitly "
                          "declared in SEC(\".maps\")", section=ARENA_SECTION)
    arena = arenas[0]
    arena.extra["arena_data"] = bytes(sec.data)
    arena_data_offset(arena)  # libbpf checks the size at open, so do we


def _collect_map_relos(elf: ElfObject, sec: Section, maps: dict[str, MapSpec],
                       spans: list[tuple[int, int, MapSpec]]) -> None:
    """libbpf ``bpf_object__collect_map_relos()``: ``.values = { [i] = &x }`` initialisers."""
    for n, rel in enumerate(elf.relocs.get(sec.index, [])):
        if not 0 <= rel.sym < len(elf.symbols):
            raise ObjectError(f".maps relo #{n}: bad symbol index {rel.sym}", section=MAPS_SECTION)
        sym = elf.symbols[rel.sym]
        name = sym.name or "<?>"
        owner = None
        for start, end, spec in spans:
            if start <= rel.offset and rel.offset + _BPF_PTR_SIZE <= end:
                owner = spec
                break
        if owner is None:
            raise ObjectError(f".maps relo #{n}: cannot find map '{name}' at offset {rel.offset}",
                              section=MAPS_SECTION)
        if owner.type in _MAP_IN_MAP:
            if sym.shndx != sec.index:
                raise ObjectError(f".maps relo #{n}: '{name}' isn't a BTF-defined map",
                                  section=MAPS_SECTION)
            if owner.type == MapType.HASH_OF_MAPS and owner.key_size != 4:
                raise ObjectError(f".maps relo #{n}: hash-of-maps '{owner.name}' should have key size 4.",
                                  section=MAPS_SECTION)
            if name not in maps:
                raise ObjectError(f".maps relo #{n}: '{name}' isn't a valid map reference",
                                  section=MAPS_SECTION)
        elif owner.type == MapType.PROG_ARRAY:
            tsec = elf.sections[sym.shndx] if 0 < sym.shndx < len(elf.sections) else None
            # an entry-point program: a function symbol in an executable section other than .text
            if (tsec is None or not (tsec.type == SHT_PROGBITS and tsec.flags & SHF_EXECINSTR)
                    or tsec.name == ".text" or not name or sym.type == STT_SECTION):
                raise ObjectError(f".maps relo #{n}: '{name}' isn't an entry-point program",
                                  section=MAPS_SECTION)
        else:
            raise ObjectError(f".maps relo #{n}: map '{owner.name}' can't have initial values",
                              section=MAPS_SECTION)
        values_off = owner.extra.get("values_offset")
        if values_off is None:
            raise ObjectError(f".maps relo #{n}: map '{owner.name}' has no 'values' member",
                              section=MAPS_SECTION)
        moff = rel.offset - owner.extra["btf_var_offset"]
        if moff < values_off:
            raise ObjectError(f".maps relo #{n}: offset before 'values' of '{owner.name}'",
                              section=MAPS_SECTION)
        moff -= values_off
        if moff % _BPF_PTR_SIZE:
            raise ObjectError(f".maps relo #{n}: misaligned slot in '{owner.name}'",
                              section=MAPS_SECTION)
        owner.init_slots[moff // _BPF_PTR_SIZE] = name


# -- legacy "maps" section -------------------------------------------------------------


def parse_legacy_maps(elf: ElfObject, *, strict: bool = True) -> dict[str, MapSpec]:
    """Maps from a legacy ``maps`` section of ``struct bpf_map_def`` records.

    libbpf >= 1.0 refuses these objects; this follows libbpf 0.x: one record per
    symbol in the section, record size = section size / symbol count. Bytes beyond
    the 20-byte ``bpf_map_def`` must be zero when ``strict`` (else they are kept in
    ``MapSpec.extra["legacy_extra"]``).
    """
    sec = elf.section(LEGACY_MAPS_SECTION)
    if sec is None:
        return {}
    syms = [s for s in elf.symbols
            if s.shndx == sec.index and s.type != STT_SECTION and s.name]
    if not syms:
        return {}
    if sec.size == 0 or sec.size % len(syms) or not sec.data:
        raise ObjectError(f"unable to determine map definition size: {len(syms)} maps in "
                          f"{sec.size} bytes", section=LEGACY_MAPS_SECTION)
    rec = sec.size // len(syms)
    if rec < 4:
        raise ObjectError(f"map definition size {rec} is too small", section=LEGACY_MAPS_SECTION)
    maps: dict[str, MapSpec] = {}
    for s in sorted(syms, key=lambda s: s.value):
        if s.value + rec > len(sec.data):
            raise ObjectError(f"corrupted maps section: map '{s.name}' at {s.value} + {rec} "
                              f"> {len(sec.data)}", section=LEGACY_MAPS_SECTION)
        raw = sec.data[s.value: s.value + rec]
        head = raw[: _LEGACY_DEF.size].ljust(_LEGACY_DEF.size, b"\0")
        mtype, ksz, vsz, maxe, flags = _LEGACY_DEF.unpack(head)
        tail = raw[_LEGACY_DEF.size:]
        if tail.strip(b"\0") and strict:
            raise ObjectError(f"'{s.name}' has unrecognized, non-zero options",
                              section=LEGACY_MAPS_SECTION)
        if s.name in maps:
            raise ObjectError(f"map '{s.name}' defined twice", section=LEGACY_MAPS_SECTION)
        spec = MapSpec(name=s.name, type=mtype, key_size=ksz, value_size=vsz,
                       max_entries=maxe, flags=flags, section=LEGACY_MAPS_SECTION)
        spec.extra["kernel_name"] = s.name[: BPF_OBJ_NAME_LEN - 1]
        spec.extra["sec_offset"] = s.value
        if tail.strip(b"\0"):
            spec.extra["legacy_extra"] = bytes(tail)
        maps[s.name] = spec
    return maps


# -- global data --------------------------------------------------------------------------


def data_section_kind(sec: Section) -> str | None:
    """``"data"``, ``"rodata"`` or ``"bss"`` when libbpf turns ``sec`` into a global-data
    map (non-empty ``.data[.*]``/``.rodata[.*]`` PROGBITS, ``.bss[.*]`` NOBITS), else None."""
    name = sec.name
    if sec.size == 0:
        return None
    if sec.type == SHT_PROGBITS and not sec.flags & SHF_EXECINSTR:
        if name == ".data" or name.startswith(".data."):
            return "data"
        if name == ".rodata" or name.startswith(".rodata."):
            return "rodata"
    elif sec.type == SHT_NOBITS and (name == ".bss" or name.startswith(".bss.")):
        return "bss"
    return None


def make_internal_map(obj_name: str, real_name: str, kind: str, size: int,
                      data: bytes | None, btf: BTFView | None,
                      layout: list[tuple[Var, int, int, int, int]] | None = None) -> MapSpec:
    """One libbpf internal map (``kind``: data, rodata, bss or kconfig).

    ``layout`` is the DATASEC's :func:`datasec_layout`; it decides BPF_F_MMAPABLE
    (libbpf ``map_is_mmapable()``: some VAR is not static).
    """
    flags = BPF_F_RDONLY_PROG if kind in ("rodata", "kconfig") else 0
    value_type_id = 0
    if btf is not None:
        found = _find_datasec(btf, real_name)
        if found is not None:
            value_type_id = found[0]
    if value_type_id and layout and any(e[4] != Linkage.STATIC for e in layout):
        flags |= BPF_F_MMAPABLE
    kernel_name = internal_map_name(obj_name, real_name)
    # bpf_map__name(): custom .data.*/.rodata.* maps show their section name
    custom = kind in ("data", "rodata") and real_name not in (".data", ".rodata")
    buf = bytearray(size)
    if data:
        buf[: min(size, len(data))] = data[:size]
    spec = MapSpec(
        name=real_name if custom else kernel_name,
        type=MapType.ARRAY,
        key_size=4,
        value_size=size,
        max_entries=1,
        flags=flags,
        btf_key_type_id=0,
        btf_value_type_id=value_type_id,
        data=buf,
        section=real_name,
    )
    spec.extra["kernel_name"] = kernel_name
    spec.extra["libbpf_type"] = kind
    return spec


def parse_global_data(elf: ElfObject, btf: BTFView | None, obj_name: str
                      ) -> tuple[dict[str, MapSpec], dict[str, VariableSpec]]:
    """Global-data maps (in section order) and the variables they hold.

    Variables come from the DATASEC named like the section: every named VAR,
    static ones included (``VariableSpec.linkage`` tells them apart). A name seen in
    two sections is kept for the first one only.
    """
    maps: dict[str, MapSpec] = {}
    variables: dict[str, VariableSpec] = {}
    for sec in elf.sections[1:]:
        kind = data_section_kind(sec)
        if kind is None:
            continue
        try:
            layout = None
            if btf is not None:
                found = _find_datasec(btf, sec.name)
                if found is not None:
                    layout = datasec_layout(elf, btf, found[1])
            spec = make_internal_map(obj_name, sec.name, kind, sec.size,
                                     None if kind == "bss" else sec.data, btf, layout)
        except BTFError as e:
            raise ObjectError(f"malformed BTF for global data: {e}", section=sec.name) from None
        spec.extra["section_index"] = sec.index
        if spec.name in maps:
            raise ObjectError(f"two global-data sections map to '{spec.name}'", section=sec.name)
        maps[spec.name] = spec
        for v, _vid, off, size, linkage in layout or ():
            if not v.name:
                continue
            if off + size > spec.value_size:
                raise ObjectError(f"variable '{v.name}' at {off}+{size} lies outside "
                                  f"'{sec.name}' ({spec.value_size} bytes)", section=sec.name)
            if v.name in variables:
                log.debug("variable '%s' of %s shadows one of %s; keeping the first",
                          v.name, sec.name, variables[v.name].map_name)
                continue
            variables[v.name] = VariableSpec(name=v.name, map_name=spec.name, offset=off,
                                             size=size, btf_type_id=v.type, linkage=linkage,
                                             _map=spec)
    return maps, variables


def map_for_section(maps: Iterable[MapSpec], section: str) -> MapSpec | None:
    """The map backed by ELF section ``section`` (for relocation code)."""
    for m in maps:
        if m.section == section:
            return m
    return None
