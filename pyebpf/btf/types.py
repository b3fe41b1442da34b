"""The BTF type model: one small class per BTF kind.

Types refer to other types by *type id* (an ``int``), never by object. That keeps
the model identical for a fully parsed object BTF and for the lazily decoded
kernel BTF, where decoding the whole graph up front would be far too slow.
Type id 0 is ``void``.

Every container of types implements :class:`BTFView`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, Protocol, runtime_checkable

from .._record import Record


class Kind(IntEnum):
    """BTF_KIND_* from include/uapi/linux/btf.h."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# BTF_INT_* encoding bits
INT_SIGNED = 1 << 0
INT_CHAR = 1 << 1
INT_BOOL = 1 << 2


class Linkage(IntEnum):
    """BTF_FUNC_* / BTF_VAR_* linkage values (the two enums share numbers)."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


# The classes are hand-written, not @dataclass: see pyebpf._record for why. Each
# kind's ``kind`` is a class attribute, the same for every instance.


class Void(Record):
    """Type id 0. Never stored in a BTF blob."""

    __slots__ = ("name",)
    kind: ClassVar[Kind] = Kind.UNKN
    name: str

    def __init__(self, name: str = "") -> None:
        self.name = name


class Int(Record):
    __slots__ = ("name", "size", "encoding", "bits", "offset")
    kind: ClassVar[Kind] = Kind.INT
    name: str
    size: int
    encoding: int  # INT_SIGNED | INT_CHAR | INT_BOOL
    bits: int  # 0 in the constructor means size * 8
    offset: int

    def __init__(self, name: str, size: int, encoding: int = 0, bits: int = 0, offset: int = 0) -> None:
        self.name = name
        self.size = size
        self.encoding = encoding
        self.bits = bits or size * 8
        self.offset = offset

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)


class Float(Record):
    __slots__ = ("name", "size")
    kind: ClassVar[Kind] = Kind.FLOAT
    name: str
    size: int

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size


class Ptr(Record):
    __slots__ = ("type", "name")
    kind: ClassVar[Kind] = Kind.PTR
    type: int
    name: str

    def __init__(self, type: int, name: str = "") -> None:
        self.type = type
        self.name = name


class Array(Record):
    __slots__ = ("type", "index_type", "nelems", "name")
    kind: ClassVar[Kind] = Kind.ARRAY
    type: int  # element type
    index_type: int
    nelems: int
    name: str

    def __init__(self, type: int, index_type: int, nelems: int, name: str = "") -> None:
        self.type = type
        self.index_type = index_type
        self.nelems = nelems
        self.name = name


class Member(Record):
    __slots__ = ("name", "type", "bit_offset", "bitfield_size")
    name: str
    type: int
    bit_offset: int
    bitfield_size: int

    def __init__(self, name: str, type: int, bit_offset: int, bitfield_size: int = 0) -> None:
        self.name = name
        self.type = type
        self.bit_offset = bit_offset
        self.bitfield_size = bitfield_size


class _Composite(Record):
    """struct and union: the same record, told apart by ``kind``."""

    __slots__ = ("name", "size", "members", "bitfield_encoding")
    name: str
    size: int
    members: list[Member]
    # kind_flag: member offsets carry bitfield sizes (bits 24..31)
    bitfield_encoding: bool

    def __init__(self, name: str, size: int, members: list[Member], bitfield_encoding: bool = False) -> None:
        self.name = name
        self.size = size
        self.members = members
        self.bitfield_encoding = bitfield_encoding


class Struct(_Composite):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.STRUCT


class Union_(_Composite):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.UNION


class EnumValue(Record):
    __slots__ = ("name", "value")
    name: str
    value: int

    def __init__(self, name: str, value: int) -> None:
        self.name = name
        self.value = value


class _EnumBase(Record):
    """enum and enum64: the same record, told apart by ``kind`` (and value width)."""

    __slots__ = ("name", "size", "values", "signed")
    name: str
    size: int
    values: list[EnumValue]
    signed: bool  # kind_flag

    def __init__(self, name: str, size: int, values: list[EnumValue], signed: bool = False) -> None:
        self.name = name
        self.size = size
        self.values = values
        self.signed = signed


class Enum(_EnumBase):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.ENUM


class Enum64(_EnumBase):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.ENUM64


class Fwd(Record):
    __slots__ = ("name", "union")
    kind: ClassVar[Kind] = Kind.FWD
    name: str
    union: bool  # kind_flag: 1 = union, 0 = struct

    def __init__(self, name: str, union: bool = False) -> None:
        self.name = name
        self.union = union


class Typedef(Record):
    __slots__ = ("name", "type")
    kind: ClassVar[Kind] = Kind.TYPEDEF
    name: str
    type: int

    def __init__(self, name: str, type: int) -> None:
        self.name = name
        self.type = type


class _Modifier(Record):
    """const, volatile, restrict: a type id and an (always empty) name."""

    __slots__ = ("type", "name")
    type: int
    name: str

    def __init__(self, type: int, name: str = "") -> None:
        self.type = type
        self.name = name


class Volatile(_Modifier):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.VOLATILE


class Const(_Modifier):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.CONST


class Restrict(_Modifier):
    __slots__ = ()
    kind: ClassVar[Kind] = Kind.RESTRICT


class TypeTag(Record):
    __slots__ = ("name", "type", "attr")
    kind: ClassVar[Kind] = Kind.TYPE_TAG
    name: str
    type: int
    attr: bool  # kind_flag: an __attribute__ tag, not a btf_type_tag

    def __init__(self, name: str, type: int, attr: bool = False) -> None:
        self.name = name
        self.type = type
        self.attr = attr


class Func(Record):
    __slots__ = ("name", "type", "linkage")
    kind: ClassVar[Kind] = Kind.FUNC
    name: str
    type: int  # a FUNC_PROTO
    linkage: int

    def __init__(self, name: str, type: int, linkage: int = Linkage.STATIC) -> None:
        self.name = name
        self.type = type
        self.linkage = linkage


class Param(Record):
    __slots__ = ("name", "type")
    name: str
    type: int  # 0 with an empty name marks a trailing "..." (varargs)

    def __init__(self, name: str, type: int) -> None:
        self.name = name
        self.type = type


class FuncProto(Record):
    __slots__ = ("return_type", "params", "name")
    kind: ClassVar[Kind] = Kind.FUNC_PROTO
    return_type: int
    params: list[Param]
    name: str

    def __init__(self, return_type: int, params: list[Param], name: str = "") -> None:
        self.return_type = return_type
        self.params = params
        self.name = name


class Var(Record):
    __slots__ = ("name", "type", "linkage")
    kind: ClassVar[Kind] = Kind.VAR
    name: str
    type: int
    linkage: int

    def __init__(self, name: str, type: int, linkage: int = Linkage.STATIC) -> None:
        self.name = name
        self.type = type
        self.linkage = linkage


class VarSecinfo(Record):
    __slots__ = ("type", "offset", "size")
    type: int  # a VAR (or FUNC for .ksyms)
    offset: int
    size: int

    def __init__(self, type: int, offset: int, size: int) -> None:
        self.type = type
        self.offset = offset
        self.size = size


class Datasec(Record):
    __slots__ = ("name", "size", "vars")
    kind: ClassVar[Kind] = Kind.DATASEC
    name: str
    size: int
    vars: list[VarSecinfo]

    def __init__(self, name: str, size: int, vars: list[VarSecinfo]) -> None:
        self.name = name
        self.size = size
        self.vars = vars


class DeclTag(Record):
    __slots__ = ("name", "type", "component_idx", "attr")
    kind: ClassVar[Kind] = Kind.DECL_TAG
    name: str
    type: int
    component_idx: int  # -1: the tag applies to the type itself
    attr: bool  # kind_flag: an __attribute__ tag, not a btf_decl_tag

    def __init__(self, name: str, type: int, component_idx: int = -1, attr: bool = False) -> None:
        self.name = name
        self.type = type
        self.component_idx = component_idx
        self.attr = attr


Type = (
    Void | Int | Float | Ptr | Array | Struct | Union_ | Enum | Enum64 | Fwd | Typedef
    | Volatile | Const | Restrict | TypeTag | Func | FuncProto | Var | Datasec | DeclTag
)

# Kinds that only qualify another type; CO-RE and sizeof skip them.
MODIFIER_KINDS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
COMPOSITE_KINDS = frozenset({Kind.STRUCT, Kind.UNION})
ENUM_KINDS = frozenset({Kind.ENUM, Kind.ENUM64})


@runtime_checkable
class BTFView(Protocol):
    """What every BTF container offers (object BTF, kernel BTF, split BTF)."""

    def type(self, type_id: int) -> Type:
        """The type with this id; id 0 is :class:`Void`. Raises BTFError when out of range."""
        ...

    def __len__(self) -> int:
        """Number of type ids, void included (the last valid id is ``len - 1``)."""
        ...

    def find(self, name: str, kind: Kind | None = None) -> list[int]:
        """Ids of the types named exactly ``name`` (optionally of one kind)."""
        ...

    def candidates(self, essential: str) -> list[int]:
        """Ids of the types whose essential name (the part before ``___``) is ``essential``."""
        ...


def essential_name(name: str) -> str:
    """The part of a name before ``___`` (CO-RE flavours: ``task_struct___v1``)."""
    i = name.find("___")
    return name if i < 0 else name[:i]


def skip_modifiers(btf: BTFView, type_id: int) -> int:
    """Follow typedef/const/volatile/restrict/type_tag to the underlying type id."""
    for _ in range(64):
        t = btf.type(type_id)
        if t.kind not in MODIFIER_KINDS:
            return type_id
        type_id = t.type  # type: ignore[union-attr]
    from ..errors import BTFError

    raise BTFError(f"modifier chain too long or looping at type id {type_id}")


def sizeof(btf: BTFView, type_id: int) -> int:
    """Size in bytes of a type, resolving modifiers and arrays (libbpf's btf__resolve_size)."""
    from ..errors import BTFError

    nelems = 1
    for _ in range(64):
        t = btf.type(type_id)
        k = t.kind
        if k in (Kind.INT, Kind.FLOAT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64,
                 Kind.DATASEC):
            return nelems * t.size  # type: ignore[union-attr]
        if k == Kind.PTR:
            return nelems * 8
        if k in MODIFIER_KINDS or k == Kind.VAR:
            type_id = t.type  # type: ignore[union-attr]
        elif k == Kind.ARRAY:
            nelems *= t.nelems  # type: ignore[union-attr]
            type_id = t.type  # type: ignore[union-attr]
        else:
            raise BTFError(f"type id {type_id} ({k.name}) has no size")
    raise BTFError(f"type chain too deep at type id {type_id}")
