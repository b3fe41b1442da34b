"""struct_ops maps: ``SEC(".struct_ops")`` / ``SEC(".struct_ops.link")`` variables.

Opening (:func:`collect_struct_ops`) follows libbpf's ``init_struct_ops_maps`` and
``bpf_object__collect_st_ops_relos``: every VAR in a struct_ops section's DATASEC
becomes one ``BPF_MAP_TYPE_STRUCT_OPS`` map named after the variable, whose value
is the variable's (local) struct; the relocations of ``.rel.struct_ops*`` say which
``SEC("struct_ops/...")`` program each function-pointer member points to.

Loading needs the kernel's view of the struct. :func:`resolve_struct_ops` is the
pure half of libbpf's ``bpf_map__init_kern_struct_ops``: against a kernel BTF it
finds ``struct <name>`` and its ``struct bpf_struct_ops_<name>`` wrapper, matches
members BY NAME, translates the initial data into the kernel layout and computes,
per program, ``attach_btf_id`` (the kernel struct) and ``expected_attach_type``
(the kernel member index). The loader then writes program fds at
:attr:`StructOpsPlan.func_offsets` in :attr:`StructOpsPlan.value` and updates the
map (key 0) with it.

Section names: libbpf master accepts ``.struct_ops`` and ``.struct_ops.link``, each
optionally prefixed with ``?`` (the map then starts with autocreate off). pyebpf
also accepts ``.struct_ops.<suffix>`` and ``.struct_ops.link.<suffix>`` so one object
can spread struct_ops over several sections; ``.link`` variants get ``BPF_F_LINK``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from .._record import Record
from ..btf.types import MODIFIER_KINDS, BTFView, Kind, Struct, essential_name, sizeof
from ..errors import BTFError, ObjectError
from ..uapi import BPF_F_LINK, MapType, ProgType
from .elf import SHN_LORESERVE, SHT_PROGBITS, ElfObject
from .spec import MapSpec

STRUCT_OPS_SEC = ".struct_ops"
STRUCT_OPS_LINK_SEC = ".struct_ops.link"
VALUE_PREFIX = "bpf_struct_ops_"

__all__ = [
    "StructOpsMember",
    "StructOpsSpec",
    "StructOpsPlan",
    "is_struct_ops_section",
    "collect_struct_ops",
    "resolve_struct_ops",
    "struct_ops_prog_attach",
    "adjust_struct_ops_autoload",
]


class StructOpsMember(Record):
    """One member of the local (object BTF) struct, captured at open."""

    name: str
    index: int
    offset: int  # bytes from the start of the struct
    size: int  # btf__resolve_size of the member type; -1 if it has none
    kind: Kind  # kind after skipping modifiers/typedefs
    bitfield: bool
    func_ptr: bool  # a pointer to a FUNC_PROTO: may hold a program

    def __init__(self, name: str, index: int, offset: int, size: int, kind: Kind, bitfield: bool,
                 func_ptr: bool) -> None:
        self.name = name
        self.index = index
        self.offset = offset
        self.size = size
        self.kind = kind
        self.bitfield = bitfield
        self.func_ptr = func_ptr


class StructOpsSpec(Record):
    """What a struct_ops map holds before load (``MapSpec.extra["struct_ops"]``)."""

    type_name: str  # local struct name, flavour included ("tcp_congestion_ops___v2")
    type_id: int  # the struct's id in the object BTF
    data: bytearray  # the variable's initial bytes, local layout (function slots zero)
    members: list[StructOpsMember]
    # member name -> program name; edit to change or drop (del) a callback
    programs: dict[str, str]
    section: str
    sec_offset: int

    def __init__(self, type_name: str, type_id: int, data: bytearray,
                 members: list[StructOpsMember], programs: dict[str, str] | None = None,
                 section: str = "", sec_offset: int = 0) -> None:
        self.type_name = type_name
        self.type_id = type_id
        self.data = data
        self.members = members
        self.programs = {} if programs is None else programs
        self.section = section
        self.sec_offset = sec_offset

    @property
    def kernel_name(self) -> str:
        """The kernel struct this implements (libbpf drops a ``___flavour`` suffix)."""
        return essential_name(self.type_name)

    def member(self, name: str) -> StructOpsMember | None:
        for m in self.members:
            if m.name == name:
                return m
        return None


class StructOpsPlan(Record):
    """A struct_ops map resolved against kernel BTF: what the loader submits."""

    map_name: str
    btf_index: int  # which of the given kernel BTFs holds the struct (0: vmlinux)
    kernel_type_id: int  # struct <name>: every program's attach_btf_id
    value_type_id: int  # struct bpf_struct_ops_<name>: btf_vmlinux_value_type_id
    value_size: int  # the map's value_size at creation
    data_offset: int  # where the <name> struct sits inside the value
    value: bytearray  # the value to write at key 0 (program slots still zero)
    member_offsets: dict[str, int]  # member name -> offset in the kernel struct
    member_indexes: dict[str, int]  # member name -> index in the kernel struct
    func_offsets: dict[str, int]  # member name -> offset IN THE VALUE of its program fd
    programs: dict[str, str]  # member name -> program name (members the kernel knows)
    # program name -> (attach_btf_id, expected_attach_type = kernel member index)
    prog_attach: dict[str, tuple[int, int]]
    skipped: list[str]  # members absent from the kernel struct, left out (they were zero)
    dropped_programs: list[str]  # programs of skipped members (libbpf sets autoload off)

    def __init__(self, map_name: str, btf_index: int, kernel_type_id: int, value_type_id: int,
                 value_size: int, data_offset: int, value: bytearray,
                 member_offsets: dict[str, int], member_indexes: dict[str, int],
                 func_offsets: dict[str, int], programs: dict[str, str],
                 prog_attach: dict[str, tuple[int, int]], skipped: list[str],
                 dropped_programs: list[str]) -> None:
        self.map_name = map_name
        self.btf_index = btf_index
        self.kernel_type_id = kernel_type_id
        self.value_type_id = value_type_id
        self.value_size = value_size
        self.data_offset = data_offset
        self.value = value
        self.member_offsets = member_offsets
        self.member_indexes = member_indexes
        self.func_offsets = func_offsets
        self.programs = programs
        self.prog_attach = prog_attach
        self.skipped = skipped
        self.dropped_programs = dropped_programs


def is_struct_ops_section(name: str) -> bool:
    """True for the ELF sections libbpf (and pyebpf) read struct_ops maps from."""
    if name.startswith("?"):
        name = name[1:]
    return name == STRUCT_OPS_SEC or name.startswith(STRUCT_OPS_SEC + ".")


def _is_link_section(name: str) -> bool:
    if name.startswith("?"):
        name = name[1:]
    return name == STRUCT_OPS_LINK_SEC or name.startswith(STRUCT_OPS_LINK_SEC + ".")


def _resolve_type(btf: BTFView, type_id: int) -> int:
    """libbpf's btf__resolve_type: through VAR, modifiers and typedefs."""
    for _ in range(64):
        t = btf.type(type_id)
        if t.kind in MODIFIER_KINDS or t.kind in (Kind.VAR, Kind.DECL_TAG):
            type_id = t.type  # type: ignore[union-attr]
            continue
        return type_id
    raise BTFError(f"type chain too long or looping at type id {type_id}")


def _skip_mods(btf: BTFView, type_id: int) -> int:
    """libbpf's skip_mods_and_typedefs."""
    for _ in range(64):
        t = btf.type(type_id)
        if t.kind not in MODIFIER_KINDS:
            return type_id
        type_id = t.type  # type: ignore[union-attr]
    raise BTFError(f"modifier chain too long or looping at type id {type_id}")


def _is_func_ptr(btf: BTFView, type_id: int) -> bool:
    """libbpf's resolve_func_ptr: a (modified) pointer to a (modified) FUNC_PROTO."""
    t = btf.type(_skip_mods(btf, type_id))
    if t.kind != Kind.PTR:
        return False
    return btf.type(_skip_mods(btf, t.type)).kind == Kind.FUNC_PROTO  # type: ignore[union-attr]


def _members_of(btf: BTFView, st: Struct) -> list[StructOpsMember]:
    out = []
    for i, m in enumerate(st.members):
        try:
            size = sizeof(btf, m.type)
        except BTFError:
            size = -1  # libbpf fails on this only when the map is loaded
        out.append(StructOpsMember(
            name=m.name, index=i, offset=m.bit_offset // 8, size=size,
            kind=btf.type(_skip_mods(btf, m.type)).kind, bitfield=bool(m.bitfield_size),
            func_ptr=_is_func_ptr(btf, m.type)))
    return out


def collect_struct_ops(elf: ElfObject, btf: Any, programs: Iterable[Any]) -> dict[str, MapSpec]:
    """The struct_ops maps of an object, in section then DATASEC order.

    ``programs`` are all ProgramSpecs (subprograms included) so relocations can be
    matched to the program at the symbol's section and offset. Raises ObjectError
    on anything libbpf refuses at open.
    """
    secs = [s for s in elf.sections
            if is_struct_ops_section(s.name) and s.type == SHT_PROGBITS and s.size]
    if not secs:
        return {}
    if btf is None:
        raise ObjectError("struct_ops maps need BTF, but .BTF is missing", path=elf.path)
    progs = list(programs)
    maps: dict[str, MapSpec] = {}
    for sec in secs:
        sec_maps = _init_section(elf, btf, sec.name, sec.data)
        for m in sec_maps:
            if m.name in maps:
                raise ObjectError(f"duplicate struct_ops map name {m.name!r}", path=elf.path,
                                  section=sec.name)
            maps[m.name] = m
        _collect_relos(elf, btf, sec.index, sec.name, sec_maps, progs)
    return maps


def _init_section(elf: ElfObject, btf: Any, sec_name: str, data: bytes) -> list[MapSpec]:
    def fail(msg: str) -> ObjectError:
        return ObjectError(f"struct_ops init: {msg}", path=elf.path, section=sec_name)

    ids = btf.find(sec_name, Kind.DATASEC)
    if not ids:
        raise fail(f"DATASEC {sec_name} not found")
    autocreate = not sec_name.startswith("?")
    flags = BPF_F_LINK if _is_link_section(sec_name) else 0
    out = []
    try:
        datasec = btf.type(ids[0])
        for vsi in datasec.vars:
            var = btf.type(vsi.type)
            var_name = var.name
            try:
                type_id = _resolve_type(btf, vsi.type)
            except BTFError:
                raise fail(f"cannot resolve var type_id {vsi.type} in DATASEC {sec_name}"
                           ) from None
            st = btf.type(type_id)
            if not st.name:
                raise fail("anonymous type is not supported")
            if st.kind != Kind.STRUCT:
                raise fail(f"{st.name} is not a struct")
            if vsi.offset + st.size > len(data):
                raise fail(f"var {var_name} is beyond the end of DATASEC {sec_name}")
            so = StructOpsSpec(
                type_name=st.name, type_id=type_id,
                data=bytearray(data[vsi.offset:vsi.offset + st.size]),
                members=_members_of(btf, st), section=sec_name, sec_offset=vsi.offset)
            out.append(MapSpec(
                name=var_name, type=MapType.STRUCT_OPS, key_size=4, value_size=st.size,
                max_entries=1, flags=flags, btf_value_type_id=type_id, section=sec_name,
                autocreate=autocreate, struct_ops_type=so.kernel_name,
                extra={"struct_ops": so}))
    except BTFError as e:
        raise fail(f"bad BTF: {e}") from None
    return out


def _collect_relos(elf: ElfObject, btf: Any, shndx: int, sec_name: str,
                   maps: list[MapSpec], progs: list[Any]) -> None:
    def fail(msg: str) -> ObjectError:
        return ObjectError(f"struct_ops reloc {msg}", path=elf.path, section=sec_name)

    for i, rel in enumerate(elf.relocs.get(shndx, [])):
        if not 0 <= rel.sym < len(elf.symbols):
            raise fail(f": symbol {rel.sym:#x} not found (relo #{i})")
        sym = elf.symbols[rel.sym]
        m = next((m for m in maps if m.extra["struct_ops"].sec_offset <= rel.offset
                  < m.extra["struct_ops"].sec_offset + m.value_size), None)
        if m is None:
            raise fail(f": cannot find map at rel->r_offset {rel.offset}")
        so: StructOpsSpec = m.extra["struct_ops"]
        moff = rel.offset - so.sec_offset
        if sym.shndx >= SHN_LORESERVE:
            raise fail(f"{m.name}: rel->r_offset {rel.offset} shdr_idx {sym.shndx} "
                       "unsupported non-static function")
        if sym.value % 8:
            raise fail(f"{m.name}: invalid target program offset {sym.value}")
        insn_idx = sym.value // 8
        member = _member_at_bit(btf, so.type_id, moff * 8, so.members)
        if member is None:
            raise fail(f"{m.name}: cannot find member at moff {moff}")
        if not member.func_ptr:
            raise fail(f"{m.name}: cannot relocate non func ptr {member.name}")
        prog = next((p for p in progs if p.sec_idx == sym.shndx
                     and p.sec_insn_off <= insn_idx < p.sec_insn_off + p.sec_insn_cnt), None)
        if prog is None:
            raise fail(f"{m.name}: cannot find prog at shdr_idx {sym.shndx} to relocate "
                       f"func ptr {member.name}")
        if prog.is_subprog or prog.type != ProgType.STRUCT_OPS:
            raise fail(f"{m.name}: prog {prog.name} is not struct_ops BPF program")
        so.programs[member.name] = prog.name


def _member_at_bit(btf: Any, type_id: int, bit_off: int,
                   members: list[StructOpsMember]) -> StructOpsMember | None:
    st = btf.type(type_id)
    for i, mb in enumerate(st.members):
        if mb.bit_offset == bit_off:
            return members[i]
    return None


# -- load-time resolution against kernel BTF ------------------------------------------------


def _find_kernel_struct(btfs: list[BTFView], tname: str) -> tuple[int, int]:
    """(index into ``btfs``, type id) of ``struct tname``: vmlinux first, then each
    module's own types, as libbpf's find_ksym_btf_id."""
    for i, btf in enumerate(btfs):
        start = 1 if i == 0 else getattr(btf, "start_id", 1)
        ids = [t for t in btf.find(tname, Kind.STRUCT) if t >= start]
        if ids:
            return i, ids[0]
    raise BTFError(f"struct_ops init_kern: struct {tname} is not found in kernel BTF")


def resolve_struct_ops(map_spec: MapSpec,
                       kernel_btf: BTFView | Sequence[BTFView]) -> StructOpsPlan:
    """Lay a struct_ops map out for the running kernel (libbpf's init_kern_struct_ops).

    Pure: reads only ``kernel_btf``, a BTFView of vmlinux, or a sequence of views
    (vmlinux first, then module BTFs split on it): the struct is looked up as libbpf
    does and :attr:`StructOpsPlan.btf_index` says which one held it (the loader
    passes that module's BTF fd). Raises BTFError when the kernel lacks the struct or
    its ``bpf_struct_ops_<name>`` value type, and ObjectError when the object's struct
    does not fit the kernel's (a non-zero member the kernel does not have, a
    bitfield, a kind or size mismatch). ``map_spec`` is not modified.
    """
    so = map_spec.extra.get("struct_ops")
    if not isinstance(so, StructOpsSpec):
        raise ObjectError(f"map {map_spec.name!r} is not a struct_ops map")
    tname = so.kernel_name
    name = map_spec.name

    def fail(msg: str) -> ObjectError:
        return ObjectError(f"struct_ops init_kern {name}: {msg}")

    btfs: list[BTFView] = (list(kernel_btf) if isinstance(kernel_btf, (list, tuple))
                           else [cast(BTFView, kernel_btf)])
    if not btfs:
        raise BTFError("struct_ops init_kern: no kernel BTF given")
    btf_index, ktype_id = _find_kernel_struct(btfs, tname)
    kbtf = btfs[btf_index]
    vtype_ids = kbtf.find(VALUE_PREFIX + tname, Kind.STRUCT)
    if not vtype_ids:
        raise BTFError(f"struct_ops init_kern: struct {VALUE_PREFIX}{tname} is not found "
                       "in kernel BTF")
    vtype_id = vtype_ids[0]
    ktype = kbtf.type(ktype_id)
    vtype = kbtf.type(vtype_id)
    assert isinstance(ktype, Struct) and isinstance(vtype, Struct)
    data_member = next((m for m in vtype.members if m.type == ktype_id), None)
    if data_member is None:
        raise BTFError(f"struct_ops init_kern: struct {tname} data is not found in struct "
                       f"{VALUE_PREFIX}{tname}")
    data_off = data_member.bit_offset // 8
    if data_off + ktype.size > vtype.size:
        raise BTFError(f"struct {VALUE_PREFIX}{tname}: data member beyond the value size")
    value = bytearray(vtype.size)
    kmembers: dict[str, int] = {}
    for i, km in enumerate(ktype.members):
        kmembers.setdefault(km.name, i)  # first of a duplicate name, as find_member_by_name

    offsets: dict[str, int] = {}
    indexes: dict[str, int] = {}
    func_offsets: dict[str, int] = {}
    progs: dict[str, str] = {}
    attach: dict[str, tuple[int, int]] = {}
    skipped: list[str] = []
    data = so.data
    for mb in so.members:
        if mb.size < 0:
            raise fail(f"failed to resolve the size of member {mb.name}")
        prog = so.programs.get(mb.name)
        mdata = data[mb.offset:mb.offset + mb.size]
        kidx = kmembers.get(mb.name)
        if kidx is None:
            # a program pointer counts as non-zero: libbpf stores it in the shadow data
            if prog is not None or any(mdata):
                raise fail(f"Cannot find member {mb.name} in kernel BTF")
            skipped.append(mb.name)
            continue
        km = ktype.members[kidx]
        if mb.bitfield or km.bitfield_size:
            raise fail(f"bitfield {mb.name} is not supported")
        kmoff = km.bit_offset // 8
        kmtype_id = _skip_mods(kbtf, km.type)
        kmtype = kbtf.type(kmtype_id)
        if mb.kind != kmtype.kind:
            raise fail(f"Unmatched member type {mb.name} {int(mb.kind)} != "
                       f"{int(kmtype.kind)}(kernel)")
        offsets[mb.name] = kmoff
        indexes[mb.name] = kidx
        if mb.kind == Kind.PTR:
            # pointers other than programs are not copied: the kernel would reject them
            if prog is None:
                if any(mdata):
                    # libbpf reads the slot as a program pointer: junk there is refused
                    raise fail(f"member {mb.name} is not a struct_ops program")
                continue
            target = kbtf.type(_skip_mods(kbtf, kmtype.type))  # type: ignore[union-attr]
            if target.kind != Kind.FUNC_PROTO:
                raise fail(f"kernel member {mb.name} is not a func ptr")
            prev = attach.get(prog)
            if prev is not None and prev != (ktype_id, kidx):
                raise fail(f"func ptr {mb.name}: invalid reuse of prog {prog}: "
                           f"expected_attach_type {prev[1]} != kern_member_idx {kidx}")
            attach[prog] = (ktype_id, kidx)
            progs[mb.name] = prog
            func_offsets[mb.name] = data_off + kmoff
            continue
        try:
            kmsize = sizeof(kbtf, kmtype_id)
        except BTFError:
            kmsize = -1
        if kmsize != mb.size:
            raise fail(f"Error in size of member {mb.name}: {mb.size} != {kmsize}(kernel)")
        start = data_off + kmoff
        if start + mb.size > len(value):
            raise BTFError(f"struct {tname}: member {mb.name} beyond the value size")
        value[start:start + mb.size] = mdata
    # a program dropped with its member still counts if another member uses it
    dropped = [p for p in (so.programs.get(n) for n in skipped) if p and p not in attach]
    return StructOpsPlan(
        map_name=name, btf_index=btf_index, kernel_type_id=ktype_id, value_type_id=vtype_id,
        value_size=vtype.size, data_offset=data_off, value=value, member_offsets=offsets,
        member_indexes=indexes, func_offsets=func_offsets, programs=progs,
        prog_attach=attach, skipped=skipped, dropped_programs=dropped)


def struct_ops_prog_attach(plans: Iterable[StructOpsPlan]) -> dict[str, tuple[int, int]]:
    """Program name -> (attach_btf_id, expected_attach_type) over several maps.

    libbpf lets one program serve several struct_ops maps only for the same kernel
    struct and the same member; anything else is an ObjectError.
    """
    out: dict[str, tuple[int, int]] = {}
    for plan in plans:
        for prog, att in plan.prog_attach.items():
            prev = out.setdefault(prog, att)
            if prev != att:
                raise ObjectError(
                    f"struct_ops init_kern {plan.map_name}: invalid reuse of prog {prog}: "
                    f"attach_btf_id/member {prev} != {att}")
    return out


def adjust_struct_ops_autoload(maps: Mapping[str, MapSpec], programs: Mapping[str, Any]) -> None:
    """libbpf's bpf_object_adjust_struct_ops_autoload: a struct_ops program referenced
    by struct_ops maps loads iff one of those maps is created; others are untouched."""
    refs: dict[str, bool] = {}
    for m in maps.values():
        so = m.extra.get("struct_ops")
        if m.type != MapType.STRUCT_OPS or not isinstance(so, StructOpsSpec):
            continue
        for prog in so.programs.values():
            refs[prog] = refs.get(prog, False) or m.autocreate
    for name, load in refs.items():
        p = programs.get(name)
        if p is not None and p.type == ProgType.STRUCT_OPS:
            p.autoload = load
