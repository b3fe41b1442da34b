"""The BTF type model: one small class per BTF kind.

Types refer to other types by *type id* (an ``int``), never by object. That keeps
the model identical for a fully parsed object BTF and for the lazily decoded
kernel BTF, where decoding the whole graph up front would be far too slow.
Type id 0 is ``void``.

Every container of types implements :class:`BTFView`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable


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


@dataclass(slots=True)
class Void:
    """Type id 0. Never stored in a BTF blob."""

    name: str = ""
    kind: Kind = field(default=Kind.UNKN, init=False)


@dataclass(slots=True)
class Int:
    name: str
    size: int
    encoding: int = 0  # INT_SIGNED | INT_CHAR | INT_BOOL
    bits: int = 0  # 0 means size * 8
    offset: int = 0
    kind: Kind = field(default=Kind.INT, init=False)

    def __post_init__(self) -> None:
        if not self.bits:
            self.bits = self.size * 8

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)


@dataclass(slots=True)
class Float:
    name: str
    size: int
    kind: Kind = field(default=Kind.FLOAT, init=False)


@dataclass(slots=True)
class Ptr:
    type: int
    name: str = ""
    kind: Kind = field(default=Kind.PTR, init=False)


@dataclass(slots=True)
class Array:
    type: int  # element type
    index_type: int
    nelems: int
    name: str = ""
    kind: Kind = field(default=Kind.ARRAY, init=False)


@dataclass(slots=True)
class Member:
    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0


@dataclass(slots=True)
class Struct:
    name: str
    size: int
    members: list[Member]
    # kind_flag: member offsets carry bitfield sizes (bits 24..31)
    bitfield_encoding: bool = False
    kind: Kind = field(default=Kind.STRUCT, init=False)


@dataclass(slots=True)
class Union_:
    name: str
    size: int
    members: list[Member]
    bitfield_encoding: bool = False
    kind: Kind = field(default=Kind.UNION, init=False)


@dataclass(slots=True)
class EnumValue:
    name: str
    value: int


@dataclass(slots=True)
class Enum:
    name: str
    size: int
    values: list[EnumValue]
    signed: bool = False  # kind_flag
    kind: Kind = field(default=Kind.ENUM, init=False)


@dataclass(slots=True)
class Enum64:
    name: str
    size: int
    values: list[EnumValue]
    signed: bool = False
    kind: Kind = field(default=Kind.ENUM64, init=False)


@dataclass(slots=True)
class Fwd:
    name: str
    union: bool = False  # kind_flag: 1 = union, 0 = struct
    kind: Kind = field(default=Kind.FWD, init=False)


@dataclass(slots=True)
class Typedef:
    name: str
    type: int
    kind: Kind = field(default=Kind.TYPEDEF, init=False)


@dataclass(slots=True)
class Volatile:
    type: int
    name: str = ""
    kind: Kind = field(default=Kind.VOLATILE, init=False)


@dataclass(slots=True)
class Const:
    type: int
    name: str = ""
    kind: Kind = field(default=Kind.CONST, init=False)


@dataclass(slots=True)
class Restrict:
    type: int
    name: str = ""
    kind: Kind = field(default=Kind.RESTRICT, init=False)


@dataclass(slots=True)
class TypeTag:
    name: str
    type: int
    attr: bool = False  # kind_flag: an __attribute__ tag, not a btf_type_tag
    kind: Kind = field(default=Kind.TYPE_TAG, init=False)


@dataclass(slots=True)
class Func:
    name: str
    type: int  # a FUNC_PROTO
    linkage: int = Linkage.STATIC
    kind: Kind = field(default=Kind.FUNC, init=False)


@dataclass(slots=True)
class Param:
    name: str
    type: int  # 0 with an empty name marks a trailing "..." (varargs)


@dataclass(slots=True)
class FuncProto:
    return_type: int
    params: list[Param]
    name: str = ""
    kind: Kind = field(default=Kind.FUNC_PROTO, init=False)


@dataclass(slots=True)
class Var:
    name: str
    type: int
    linkage: int = Linkage.STATIC
    kind: Kind = field(default=Kind.VAR, init=False)


@dataclass(slots=True)
class VarSecinfo:
    type: int  # a VAR (or FUNC for .ksyms)
    offset: int
    size: int


@dataclass(slots=True)
class Datasec:
    name: str
    size: int
    vars: list[VarSecinfo]
    kind: Kind = field(default=Kind.DATASEC, init=False)


@dataclass(slots=True)
class DeclTag:
    name: str
    type: int
    component_idx: int = -1  # -1: the tag applies to the type itself
    attr: bool = False  # kind_flag: an __attribute__ tag, not a btf_decl_tag
    kind: Kind = field(default=Kind.DECL_TAG, init=False)


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
