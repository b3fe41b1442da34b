"""BTF writer: marshal a :class:`~pyebpf.btf.spec.BTF` to bytes, sanitized for a kernel.

Sanitization follows libbpf's ``bpf_object__sanitize_btf``: every kind the running
kernel lacks is rewritten into an older kind of the same record size, so type ids
(which programs, maps and BTF.ext refer to) never change. :func:`fixup_datasec`
follows libbpf's ``btf_fixup_datasec``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from .._record import Frozen, replace
from ..errors import BTFError
from .spec import BTF, BTF_MAGIC, BTF_VERSION, HEADER_SIZE
from .types import (
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
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union_,
    Var,
    VarSecinfo,
)

__all__ = [
    "Features",
    "encode_type",
    "fixup_datasec",
    "marshal",
    "marshal_with_offsets",
    "mark_funcs_static",
    "sanitize_types",
    "string_table",
]

_U32 = 0xFFFF_FFFF
_set = object.__setattr__


class Features(Frozen):
    """Which BTF features the target kernel supports (libbpf's FEAT_BTF_*).

    The default is a modern kernel that supports everything, i.e. no rewriting.
    """

    __slots__ = ("has_func", "has_func_global", "has_datasec", "has_float", "has_decl_tag",
                 "has_type_tag", "has_enum64", "has_qmark_datasec")
    has_func: bool  # BTF_KIND_FUNC / FUNC_PROTO (4.20)
    has_func_global: bool  # BTF_FUNC_GLOBAL linkage (5.6)
    has_datasec: bool  # BTF_KIND_VAR / DATASEC (5.2)
    has_float: bool  # BTF_KIND_FLOAT (5.13)
    has_decl_tag: bool  # BTF_KIND_DECL_TAG (5.16)
    has_type_tag: bool  # BTF_KIND_TYPE_TAG (5.17)
    has_enum64: bool  # BTF_KIND_ENUM64 and signed ENUM kind_flag (6.0)
    has_qmark_datasec: bool  # DATASEC names starting with '?' (6.8?)

    def __init__(self, has_func: bool = True, has_func_global: bool = True,
                 has_datasec: bool = True, has_float: bool = True, has_decl_tag: bool = True,
                 has_type_tag: bool = True, has_enum64: bool = True,
                 has_qmark_datasec: bool = True) -> None:
        _set(self, "has_func", has_func)
        _set(self, "has_func_global", has_func_global)
        _set(self, "has_datasec", has_datasec)
        _set(self, "has_float", has_float)
        _set(self, "has_decl_tag", has_decl_tag)
        _set(self, "has_type_tag", has_type_tag)
        _set(self, "has_enum64", has_enum64)
        _set(self, "has_qmark_datasec", has_qmark_datasec)

    @classmethod
    def none(cls) -> Features:
        """A kernel with only the oldest BTF kinds (handy for tests)."""
        return cls(False, False, False, False, False, False, False, False)


def _info(kind: int, vlen: int, kflag: bool = False) -> int:
    if not 0 <= vlen <= 0xFFFF:
        raise BTFError(f"{Kind(kind).name}: too many entries ({vlen}) for one BTF record")
    return (int(kflag) << 31) | (kind << 24) | vlen


def encode_type(t: Type, off: Callable[[str], int]) -> list[int]:
    """The u32 words of one btf_type record (with trailing data); ``off`` maps names to offsets."""
    k = t.kind
    name = off(t.name)
    if k == Kind.INT:
        assert isinstance(t, Int)
        if not (0 < t.bits <= 128 and 0 <= t.offset < 256 and 0 <= t.encoding < 16):
            raise BTFError(f"INT {t.name!r}: bad encoding/bits/offset")
        return [name, _info(k, 0), t.size, (t.encoding << 24) | (t.offset << 16) | t.bits]
    if k in (Kind.STRUCT, Kind.UNION):
        assert isinstance(t, (Struct, Union_))
        w = [name, _info(k, len(t.members), t.bitfield_encoding), t.size]
        for m in t.members:
            if t.bitfield_encoding:
                if not (0 <= m.bit_offset < 1 << 24 and 0 <= m.bitfield_size < 256):
                    raise BTFError(f"{t.name!r}.{m.name}: bitfield out of range")
                moff = (m.bitfield_size << 24) | m.bit_offset
            else:
                if m.bitfield_size:
                    raise BTFError(f"{t.name!r}.{m.name}: bitfield without bitfield_encoding")
                moff = m.bit_offset
            w += (off(m.name), m.type, moff)
        return w
    if k == Kind.ENUM:
        assert isinstance(t, Enum)
        w = [name, _info(k, len(t.values), t.signed), t.size]
        for v in t.values:
            if not -(1 << 31) <= v.value < 1 << 32:
                raise BTFError(f"enum {t.name!r}: value {v.name}={v.value} does not fit 32 bits")
            w += (off(v.name), v.value & _U32)
        return w
    if k == Kind.ENUM64:
        assert isinstance(t, Enum64)
        w = [name, _info(k, len(t.values), t.signed), t.size]
        for v in t.values:
            if not -(1 << 63) <= v.value < 1 << 64:
                raise BTFError(f"enum64 {t.name!r}: value {v.name}={v.value} does not fit 64 bits")
            u = v.value & 0xFFFF_FFFF_FFFF_FFFF
            w += (off(v.name), u & _U32, u >> 32)
        return w
    if k == Kind.ARRAY:
        assert isinstance(t, Array)
        return [name, _info(k, 0), 0, t.type, t.index_type, t.nelems]
    if k == Kind.FUNC_PROTO:
        assert isinstance(t, FuncProto)
        w = [name, _info(k, len(t.params)), t.return_type]
        for p in t.params:
            w += (off(p.name), p.type)
        return w
    if k == Kind.FUNC:
        assert isinstance(t, Func)
        return [name, _info(k, int(t.linkage)), t.type]
    if k == Kind.VAR:
        assert isinstance(t, Var)
        return [name, _info(k, 0), t.type, int(t.linkage)]
    if k == Kind.DATASEC:
        assert isinstance(t, Datasec)
        w = [name, _info(k, len(t.vars)), t.size]
        for sv in t.vars:
            w += (sv.type, sv.offset, sv.size)
        return w
    if k == Kind.FWD:
        assert isinstance(t, Fwd)
        return [name, _info(k, 0, t.union), 0]
    if k == Kind.FLOAT:
        assert isinstance(t, Float)
        return [name, _info(k, 0), t.size]
    if k == Kind.DECL_TAG:
        assert isinstance(t, DeclTag)
        if not -1 <= t.component_idx < 1 << 31:
            raise BTFError(f"decl_tag {t.name!r}: bad component_idx {t.component_idx}")
        return [name, _info(k, 0, t.attr), t.type, t.component_idx & _U32]
    if k == Kind.TYPE_TAG:
        assert isinstance(t, TypeTag)
        return [name, _info(k, 0, t.attr), t.type]
    if k in (Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT):
        return [name, _info(k, 0), t.type]  # type: ignore[union-attr]
    raise BTFError(f"cannot encode {type(t).__name__}")


def _names(t: Type) -> list[str]:
    out = [t.name]
    k = t.kind
    if k in (Kind.STRUCT, Kind.UNION):
        out += [m.name for m in t.members]  # type: ignore[union-attr]
    elif k in (Kind.ENUM, Kind.ENUM64):
        out += [v.name for v in t.values]  # type: ignore[union-attr]
    elif k == Kind.FUNC_PROTO:
        out += [p.name for p in t.params]  # type: ignore[union-attr]
    return out


def _build_strings(
    types: list[Type], start: int, extra: Iterable[str] = (),
    in_base: Callable[[str], int | None] | None = None,
) -> tuple[bytes, dict[str, int]]:
    # Plain BTF: "" is the leading NUL at offset 0. Split BTF: "" is the base's offset 0,
    # strings the base already has are shared (as libbpf does), and the split's own
    # table needs no leading NUL.
    offsets: dict[str, int] = {"": 0}
    buf = bytearray(b"" if start else b"\0")

    def add(s: str) -> None:
        if s in offsets:
            return
        if in_base is not None:
            off = in_base(s)
            if off is not None:
                offsets[s] = off
                return
        if "\0" in s:
            raise BTFError(f"name {s!r} contains NUL")
        try:
            enc = s.encode()
        except UnicodeEncodeError as e:
            raise BTFError(f"name {s!r} is not encodable") from e
        offsets[s] = start + len(buf)
        buf.extend(enc)
        buf.append(0)

    for t in types:
        for s in _names(t):
            add(s)
    for s in extra:
        add(s)
    return bytes(buf), offsets


def string_table(btf: BTF) -> tuple[bytes, dict[str, int]]:
    """The deduplicated string section of ``btf``'s own types and the name -> offset map."""
    start = btf.base.strings_len if btf.base is not None else 0
    in_base = getattr(btf.base, "find_string", None)
    return _build_strings([t for _, t in btf.own_types()], start, (), in_base)


def marshal(btf: BTF, *, sanitize: Features | None = None) -> bytes:
    """BTF bytes for ``btf`` (own types in id order), rewritten for ``sanitize`` features."""
    return marshal_with_offsets(btf, sanitize=sanitize)[0]


def marshal_with_offsets(
    btf: BTF, *, sanitize: Features | None = None, extra_strings: Iterable[str] = ()
) -> tuple[bytes, dict[str, int]]:
    """Like :func:`marshal`, also adding ``extra_strings`` and returning every string's offset.

    The loader needs this for line_info: file names and source lines are not type
    names, so they must be added to the string section it loads, and the kernel's
    bpf_line_info records refer to them by their new offsets.
    """
    types = [t for _, t in btf.own_types()]
    if sanitize is not None:
        types = sanitize_types(btf, types, sanitize)
    start = btf.base.strings_len if btf.base is not None else 0
    in_base = getattr(btf.base, "find_string", None)
    strs, offsets = _build_strings(types, start, extra_strings, in_base)
    words: list[int] = []
    get = offsets.__getitem__
    for t in types:
        words += encode_type(t, get)
    try:
        type_sec = struct.pack(f"<{len(words)}I", *words)
    except struct.error as e:
        raise BTFError(f"BTF field out of range: {e}") from None
    return header(len(type_sec), len(strs)) + type_sec + strs, offsets


def header(type_len: int, str_len: int) -> bytes:
    """struct btf_header for a type section followed by a string section.

    Hand-written twin of formats.btf_header (a test checks they agree): every
    program load marshals BTF, and importing construct costs ~12 ms.
    """
    return struct.pack("<HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, HEADER_SIZE, 0, type_len,
                       type_len, str_len)


def sanitize_types(btf: BTF, types: list[Type], f: Features) -> list[Type]:
    """Rewrite ``types`` (the own types of ``btf``, in id order) for a kernel with features ``f``.

    Returns new type objects where anything changes; the input is left untouched.
    Each rewrite keeps the record size, so every type id stays valid. The only
    addition is libbpf's ``enum64_placeholder`` INT, appended last when needed.
    """
    out: list[Type] = []
    placeholder_id = 0
    next_id = btf.start_id + len(types)
    for t in types:
        k = t.kind
        if (k == Kind.VAR and not f.has_datasec) or (k == Kind.DECL_TAG and not f.has_decl_tag):
            # Size 1: a larger INT could fail kernel validation when the variable is smaller.
            out.append(Int(t.name, 1, 0, 8, 0))
        elif k == Kind.DATASEC and not f.has_datasec:
            assert isinstance(t, Datasec)
            name = t.name.replace(".", "_").replace("?", "_")
            members = [
                Member(btf.type(v.type).name, v.type, v.offset * 8) for v in t.vars
            ]
            out.append(Struct(name, t.size, members))
        elif k == Kind.DATASEC and not f.has_qmark_datasec and t.name.startswith("?"):
            out.append(replace(t, name="_" + t.name[1:]))
        elif k == Kind.FUNC_PROTO and not f.has_func:
            assert isinstance(t, FuncProto)
            # The kernel insists enums are 4 bytes; values carry the param type ids.
            out.append(Enum(t.name, 4, [EnumValue(p.name, p.type) for p in t.params]))
        elif k == Kind.FUNC and not f.has_func:
            assert isinstance(t, Func)
            out.append(Typedef(t.name, t.type))
        elif k == Kind.FUNC and not f.has_func_global:
            assert isinstance(t, Func)
            out.append(Func(t.name, t.type, Linkage.STATIC))
        elif k == Kind.FLOAT and not f.has_float:
            # Anonymous: "float" is not a valid struct name for C dumpers.
            out.append(Struct("", t.size, []))  # type: ignore[union-attr]
        elif k == Kind.TYPE_TAG and not f.has_type_tag:
            out.append(Const(t.type))  # type: ignore[union-attr]
        elif k == Kind.ENUM and not f.has_enum64:
            assert isinstance(t, Enum)
            # Old kernels reject a kind_flag on ENUM; values wrap to their u32 pattern.
            out.append(Enum(t.name, t.size, [EnumValue(v.name, v.value & _U32) for v in t.values]))
        elif k == Kind.ENUM64 and not f.has_enum64:
            assert isinstance(t, Enum64)
            if not placeholder_id:
                placeholder_id = next_id
            members = [Member(v.name, placeholder_id, 0) for v in t.values]
            out.append(Union_(t.name, t.size, members))
        else:
            out.append(t)
    if placeholder_id:
        out.append(Int("enum64_placeholder", 1, 0, 8, 0))
    return out


def fixup_datasec(
    btf: BTF,
    section_size: Callable[[str], int | None],
    symbol_offset: Callable[[str, str], int | None],
    *,
    symbol_hidden: Callable[[str, str], bool] | None = None,
) -> None:
    """Fill DATASEC sizes and VAR offsets from the ELF, in place (libbpf's btf_fixup_datasec).

    clang emits DATASEC size 0 and VAR offsets 0; the object layer supplies
    ``section_size(sec_name)`` and ``symbol_offset(sec_name, var_name)`` (st_value of
    the GLOBAL/WEAK STT_OBJECT symbol of that name, like libbpf's find_elf_var_sym),
    ``None`` when missing. ``symbol_hidden(sec_name, var_name)`` tells
    whether a global symbol has STV_HIDDEN/STV_INTERNAL visibility: such VARs become
    static, which decides whether libbpf makes the data map mmapable. Entries are
    then sorted by offset. ``.kconfig``/``.ksyms`` are only sorted: the extern layer
    has already laid them out. Raises :class:`BTFError` when a size or symbol is missing.
    """
    for _tid, t in list(btf.own_types()):
        if not isinstance(t, Datasec):
            continue
        sec = t.name
        if sec not in (".kconfig", ".ksyms"):
            fix_offsets = False
            if t.size == 0:
                size = section_size(sec)
                if not size:
                    raise BTFError(f"DATASEC {sec!r}: cannot determine size from the ELF")
                t.size = size
                fix_offsets = True
            for vsi in t.vars:
                var = btf.type(vsi.type)
                if not isinstance(var, Var):
                    raise BTFError(f"DATASEC {sec!r}: entry type id {vsi.type} is not a VAR")
                # Static vars have no usable global symbol; externs have no storage.
                if var.linkage in (Linkage.STATIC, Linkage.EXTERN):
                    continue
                off = symbol_offset(sec, var.name)
                if off is None:
                    raise BTFError(f"DATASEC {sec!r}: no ELF symbol for VAR {var.name!r}")
                if fix_offsets:
                    vsi.offset = off
                if symbol_hidden is not None and symbol_hidden(sec, var.name):
                    var.linkage = Linkage.STATIC
        t.vars.sort(key=_secinfo_key)


def mark_funcs_static(btf: BTF, names: Iterable[str]) -> None:
    """Make the global FUNCs named in ``names`` static, in place.

    libbpf does this for subprograms with hidden visibility so the verifier checks
    them in their callers' context instead of as global functions.
    """
    wanted = set(names)
    for _tid, t in btf.own_types():
        if isinstance(t, Func) and t.linkage == Linkage.GLOBAL and t.name in wanted:
            t.linkage = Linkage.STATIC


def _secinfo_key(v: VarSecinfo) -> int:
    return v.offset

