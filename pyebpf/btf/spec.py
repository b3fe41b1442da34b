"""The BTF container and its binary parser.

:func:`decode_type` decodes one ``struct btf_type`` record (plus its trailing data)
from the type section viewed as native u32 words. It is hand-written rather than
built on the construct descriptions in :mod:`pyebpf.btf.formats` because it is the
hot loop of every BTF parse: construct needs about a second for vmlinux, this needs
a fraction of that, and the lazy kernel-BTF index calls it once per requested type.

:class:`BTF` is the eager, editable container used for object BTF (and for small
split BTF). It implements :class:`~pyebpf.btf.types.BTFView`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable, Iterator

from ..errors import BTFError
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
    Member,
    Param,
    Ptr,
    Restrict,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union_,
    Var,
    VarSecinfo,
    Void,
    Volatile,
    essential_name,
)

__all__ = [
    "BTF",
    "BTF_MAGIC",
    "HEADER_SIZE",
    "decode_type",
    "record_words",
    "referenced_ids",
]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
HEADER_SIZE = 24  # struct btf_header: magic, version, flags, hdr_len, 4 x u32
_HEADER = struct.Struct("<HBBIIIII")

# The kernel caps vlen at 16 bits and kinds at 5 bits (BTF_INFO_KIND / BTF_INFO_VLEN).
_KIND_SHIFT = 24
_KIND_MASK = 0x1F
_VLEN_MASK = 0xFFFF
_KFLAG = 1 << 31

# Trailing words per record: (fixed extra words, extra words per vlen entry).
_LAYOUT: dict[int, tuple[int, int]] = {
    Kind.INT: (1, 0),
    Kind.PTR: (0, 0),
    Kind.ARRAY: (3, 0),
    Kind.STRUCT: (0, 3),
    Kind.UNION: (0, 3),
    Kind.ENUM: (0, 2),
    Kind.FWD: (0, 0),
    Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0),
    Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0),
    Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 2),
    Kind.VAR: (1, 0),
    Kind.DATASEC: (0, 3),
    Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (1, 0),
    Kind.TYPE_TAG: (0, 0),
    Kind.ENUM64: (0, 3),
}
# Indexed by kind number for speed; None marks an unknown kind.
_LAYOUT_BY_KIND: list[tuple[int, int] | None] = [None] * 32
for _k, _v in _LAYOUT.items():
    _LAYOUT_BY_KIND[_k] = _v

_KINDS: list[Kind | None] = [None] * 32
for _k in Kind:
    _KINDS[_k] = _k

(_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT,
 _FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64) = range(1, 20)


def record_words(kind: int, vlen: int) -> int:
    """Size in u32 words of a btf_type record of ``kind`` with ``vlen`` entries, header included."""
    layout = _LAYOUT_BY_KIND[kind] if 0 <= kind < 32 else None
    if layout is None:
        raise BTFError(f"unknown BTF kind {kind}")
    return 3 + layout[0] + layout[1] * vlen


def _s32(v: int) -> int:
    return v - 0x1_0000_0000 if v & 0x8000_0000 else v


def decode_type(
    words: memoryview, i: int, string: Callable[[int], str]
) -> tuple[Type, int]:
    """Decode the btf_type record starting at word ``i`` of ``words``.

    ``words`` is the type section cast to native u32 (``memoryview.cast("I")``);
    ``string`` maps a string offset to its text. Returns the type and the word
    index of the next record. Raises :class:`BTFError` on an unknown kind or a
    record that runs past the end of ``words``.
    """
    n = len(words)
    if i + 3 > n:
        raise BTFError(f"truncated btf_type header at byte offset {i * 4}")
    name_off = words[i]
    info = words[i + 1]
    size_or_type = words[i + 2]
    kind = (info >> _KIND_SHIFT) & _KIND_MASK
    vlen = info & _VLEN_MASK
    kflag = bool(info & _KFLAG)
    layout = _LAYOUT_BY_KIND[kind]
    if layout is None:
        raise BTFError(f"unknown BTF kind {kind} at byte offset {i * 4}")
    end = i + 3 + layout[0] + layout[1] * vlen
    if end > n:
        raise BTFError(f"truncated {Kind(kind).name} record at byte offset {i * 4}")
    name = string(name_off)
    j = i + 3
    t: Type
    # Plain int constants, branches ordered by frequency in vmlinux: this is the hot loop.
    if kind == _FUNC:
        t = Func(name, size_or_type, vlen)
    elif kind == _FUNC_PROTO:
        w = words[j:end].tolist()
        t = FuncProto(
            size_or_type,
            [Param(string(w[k]), w[k + 1]) for k in range(0, 2 * vlen, 2)],
            name,
        )
    elif kind == _PTR:
        t = Ptr(size_or_type, name)
    elif kind == _STRUCT or kind == _UNION:
        w = words[j:end].tolist()
        if kflag:
            members = [
                Member(string(w[k]), w[k + 1], w[k + 2] & 0xFFFFFF, w[k + 2] >> 24)
                for k in range(0, 3 * vlen, 3)
            ]
        else:
            members = [Member(string(w[k]), w[k + 1], w[k + 2]) for k in range(0, 3 * vlen, 3)]
        cls = Struct if kind == _STRUCT else Union_
        t = cls(name, size_or_type, members, kflag)
    elif kind == _CONST:
        t = Const(size_or_type, name)
    elif kind == _ARRAY:
        t = Array(words[j], words[j + 1], words[j + 2], name)
    elif kind == _TYPEDEF:
        t = Typedef(name, size_or_type)
    elif kind == _ENUM:
        w = words[j:end].tolist()
        if kflag:
            values = [EnumValue(string(w[k]), _s32(w[k + 1])) for k in range(0, 2 * vlen, 2)]
        else:
            values = [EnumValue(string(w[k]), w[k + 1]) for k in range(0, 2 * vlen, 2)]
        t = Enum(name, size_or_type, values, kflag)
    elif kind == _VAR:
        t = Var(name, size_or_type, words[j])
    elif kind == _DECL_TAG:
        t = DeclTag(name, size_or_type, _s32(words[j]), kflag)
    elif kind == _FWD:
        t = Fwd(name, kflag)
    elif kind == _VOLATILE:
        t = Volatile(size_or_type, name)
    elif kind == _INT:
        enc = words[j]
        # BTF_INT_ENCODING: bits 24..27, BTF_INT_OFFSET: 16..23, BTF_INT_BITS: 0..7
        bits = enc & 0xFF
        if bits == 0:
            raise BTFError(f"INT {name!r} has 0 bits")
        t = Int(name, size_or_type, (enc >> 24) & 0x0F, bits, (enc >> 16) & 0xFF)
    elif kind == _RESTRICT:
        t = Restrict(size_or_type, name)
    elif kind == _ENUM64:
        w = words[j:end].tolist()
        values = []
        for k in range(0, 3 * vlen, 3):
            v = (w[k + 2] << 32) | w[k + 1]
            if kflag and v & (1 << 63):
                v -= 1 << 64
            values.append(EnumValue(string(w[k]), v))
        t = Enum64(name, size_or_type, values, kflag)
    elif kind == _FLOAT:
        t = Float(name, size_or_type)
    elif kind == _TYPE_TAG:
        t = TypeTag(name, size_or_type, kflag)
    elif kind == _DATASEC:
        w = words[j:end].tolist()
        t = Datasec(
            name,
            size_or_type,
            [VarSecinfo(w[k], w[k + 1], w[k + 2]) for k in range(0, 3 * vlen, 3)],
        )
    else:  # kind 0 (UNKN): the kernel never emits it
        raise BTFError(f"BTF kind 0 (UNKN) at byte offset {i * 4}")
    return t, end


def referenced_ids(t: Type) -> Iterator[int]:
    """Every type id that ``t`` refers to (members, params, element types, ...)."""
    k = t.kind
    if k in (Kind.STRUCT, Kind.UNION):
        for m in t.members:  # type: ignore[union-attr]
            yield m.type
    elif k == Kind.ARRAY:
        yield t.type  # type: ignore[union-attr]
        yield t.index_type  # type: ignore[union-attr]
    elif k == Kind.FUNC_PROTO:
        yield t.return_type  # type: ignore[union-attr]
        for p in t.params:  # type: ignore[union-attr]
            yield p.type
    elif k == Kind.DATASEC:
        for v in t.vars:  # type: ignore[union-attr]
            yield v.type
    elif k in (
        Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG,
        Kind.FUNC, Kind.VAR, Kind.DECL_TAG,
    ):
        yield t.type  # type: ignore[union-attr]


class _Offsets(dict[int, str]):
    """offset -> string; hits stay in C (dict lookup), misses decode on demand."""

    __slots__ = ("table",)
    table: _StringTable

    def __missing__(self, off: int) -> str:
        return self.table._lookup(off)


class _StringTable:
    """A read-only BTF string section; offsets are relative to ``start``."""

    __slots__ = ("data", "start", "base_get", "base_find", "_cache", "_index", "get")

    def __init__(
        self,
        data: bytes,
        start: int = 0,
        base_get: Callable[[int], str] | None = None,
        base_find: Callable[[str], int | None] | None = None,
    ):
        self.data = data
        self.start = start
        self.base_get = base_get
        self.base_find = base_find
        cache = _Offsets({0: ""})
        cache.table = self
        self._cache = cache
        self._index: dict[str, int] | None = None
        # get(off) -> str: the string at an absolute offset (base offsets included).
        self.get: Callable[[int], str] = cache.__getitem__

    def prefill(self) -> None:
        """Decode every string that starts after a NUL up front (one split beats 100k finds)."""
        cache = self._cache
        pos = self.start
        for raw in self.data.split(b"\0")[:-1]:
            if pos not in cache:
                try:
                    cache[pos] = raw.decode()
                except UnicodeDecodeError:
                    pass  # left for _lookup to report if anything refers to it
            pos += len(raw) + 1

    def find(self, s: str) -> int | None:
        """Offset of ``s`` in this table or its base (the base wins, as in libbpf)."""
        if self.base_find is not None:
            off = self.base_find(s)
            if off is not None:
                return off
        if self._index is None:
            idx: dict[str, int] = {}
            pos = 0
            for raw in self.data.split(b"\0")[:-1]:
                try:
                    idx.setdefault(raw.decode(), self.start + pos)
                except UnicodeDecodeError:
                    pass
                pos += len(raw) + 1
            self._index = idx
        return self._index.get(s)

    def __len__(self) -> int:
        return self.start + len(self.data)

    def _lookup(self, off: int) -> str:
        if not isinstance(off, int) or off < 0:
            raise BTFError(f"bad string offset {off!r}")
        if off < self.start:
            if self.base_get is None:
                raise BTFError(f"string offset {off} out of range")
            s = self.base_get(off)
        else:
            rel = off - self.start
            data = self.data
            if rel >= len(data):
                raise BTFError(f"string offset {off} out of range (table ends at {len(self)})")
            end = data.find(b"\0", rel)
            if end < 0:
                raise BTFError(f"string at offset {off} is not NUL-terminated")
            try:
                s = data[rel:end].decode()
            except UnicodeDecodeError as e:
                raise BTFError(f"string at offset {off} is not valid UTF-8") from e
        self._cache[off] = s
        return s


def _ref_one(t: Type) -> int:
    return t.type  # type: ignore[union-attr]


def _ref_members(t: Type) -> int:
    return max([m.type for m in t.members], default=0)  # type: ignore[union-attr]


def _ref_array(t: Type) -> int:
    return max(t.type, t.index_type)  # type: ignore[union-attr]


def _ref_proto(t: Type) -> int:
    return max([p.type for p in t.params], default=t.return_type)  # type: ignore[union-attr]


def _ref_datasec(t: Type) -> int:
    return max([v.type for v in t.vars], default=0)  # type: ignore[union-attr]


def _ref_none(t: Type) -> int:
    return 0


# Largest referenced id per class; keyed by class because hashing a class is C-fast.
_MAX_REF: dict[type, Callable[[Type], int]] = {
    Ptr: _ref_one, Typedef: _ref_one, Volatile: _ref_one, Const: _ref_one, Restrict: _ref_one,
    TypeTag: _ref_one, Func: _ref_one, Var: _ref_one, DeclTag: _ref_one,
    Struct: _ref_members, Union_: _ref_members, Array: _ref_array, FuncProto: _ref_proto,
    Datasec: _ref_datasec, Int: _ref_none, Float: _ref_none, Enum: _ref_none,
    Enum64: _ref_none, Fwd: _ref_none, Void: _ref_none,
}


class BTF:
    """An editable BTF: a list of types indexed by type id, optionally split on a base.

    For plain BTF, id 0 is :class:`Void` and ``types[0]`` must be a Void (one is
    inserted when missing). For split BTF (``base`` given) the ids of ``types`` start
    at ``len(base)``, as in libbpf split BTF. A base needs the :class:`BTFView`
    methods plus ``string(offset)`` and ``strings_len`` (and optionally
    ``find_string(s)`` so a split BTF can share the base's strings when written).
    """

    def __init__(self, types: Iterable[Type] | None = None, base: BTF | None = None):
        self.base = base
        self._base_len = len(base) if base is not None else 0
        own = list(types) if types is not None else []
        if base is None and (not own or not isinstance(own[0], Void)):
            own.insert(0, Void())
        self._types: list[Type] = own
        self._strings: _StringTable | None = None  # set by from_bytes
        self._strings_derived = False  # True: built from the types, dropped on edits
        self._by_name: dict[str, list[int]] | None = None
        self._by_essential: dict[str, list[int]] | None = None

    # -- BTFView -----------------------------------------------------------------

    def __len__(self) -> int:
        return self._base_len + len(self._types)

    def type(self, type_id: int) -> Type:
        """The type with id ``type_id`` (0 is void). Raises BTFError when out of range."""
        if type_id < self._base_len:
            if type_id < 0:
                raise BTFError(f"type id {type_id} out of range")
            return self.base.type(type_id)  # type: ignore[union-attr]
        try:
            return self._types[type_id - self._base_len]
        except (IndexError, TypeError):
            raise BTFError(f"type id {type_id} out of range (have {len(self)})") from None

    def find(self, name: str, kind: Kind | None = None) -> list[int]:
        """Ids of types named exactly ``name`` (base BTF included), optionally of one kind."""
        ids = self._name_index().get(name, [])
        if self.base is not None:
            ids = self.base.find(name) + ids
        if kind is None:
            return list(ids)
        return [i for i in ids if self.type(i).kind == kind]

    def candidates(self, essential: str) -> list[int]:
        """Ids of types whose essential name (before ``___``) is ``essential``."""
        ids = self._essential_index().get(essential, [])
        if self.base is not None:
            return self.base.candidates(essential) + ids
        return list(ids)

    # -- editing -----------------------------------------------------------------

    def add(self, t: Type) -> int:
        """Append a type and return its new id."""
        if isinstance(t, Void):
            raise BTFError("cannot add Void: it is always type id 0")
        self._types.append(t)
        tid = len(self) - 1
        if self._strings_derived:
            self._strings = None
        if t.name:
            if self._by_name is not None:
                self._by_name.setdefault(t.name, []).append(tid)
            if self._by_essential is not None:
                self._by_essential.setdefault(essential_name(t.name), []).append(tid)
        return tid

    def invalidate(self) -> None:
        """Drop the name indexes; call after renaming or replacing types in place."""
        self._by_name = None
        self._by_essential = None
        if self._strings_derived:
            self._strings = None

    def replace(self, type_id: int, t: Type) -> None:
        """Replace the type with id ``type_id`` (not void, not a base type)."""
        if type_id < self._base_len or type_id == 0 or type_id >= len(self):
            raise BTFError(f"cannot replace type id {type_id}")
        self._types[type_id - self._base_len] = t
        self.invalidate()

    # -- iteration ---------------------------------------------------------------

    @property
    def start_id(self) -> int:
        """First id owned by this BTF (1 for plain BTF, ``len(base)`` for split BTF)."""
        return self._base_len if self.base is not None else 1

    def own_types(self) -> Iterator[tuple[int, Type]]:
        """(id, type) for every type this BTF owns (void and base types excluded)."""
        start = self.start_id
        for off, t in enumerate(self._types[start - self._base_len:]):
            yield start + off, t

    def __iter__(self) -> Iterator[Type]:
        """Every type by id, void first, base types included."""
        for i in range(len(self)):
            yield self.type(i)

    def __repr__(self) -> str:
        split = f", split on {len(self.base)} base ids" if self.base is not None else ""
        return f"<BTF {len(self)} type ids{split}>"

    # -- names -------------------------------------------------------------------

    def _name_index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            idx: dict[str, list[int]] = {}
            for tid, t in self.own_types():
                if t.name:
                    idx.setdefault(t.name, []).append(tid)
            self._by_name = idx
        return self._by_name

    def _essential_index(self) -> dict[str, list[int]]:
        if self._by_essential is None:
            idx: dict[str, list[int]] = {}
            for tid, t in self.own_types():
                if t.name:
                    idx.setdefault(essential_name(t.name), []).append(tid)
            self._by_essential = idx
        return self._by_essential

    def name_of(self, type_id: int) -> str:
        """The name of a type, "" for anonymous types."""
        return self.type(type_id).name

    def string(self, offset: int) -> str:
        """The string at ``offset`` of the string section.

        For parsed BTF this is the original section (BTF.ext refers to it), even
        after edits. For BTF built in memory it is the section :func:`marshal` writes.
        """
        return self._string_table().get(offset)

    def find_string(self, s: str) -> int | None:
        """Offset of ``s`` in the string section (base first), None when absent."""
        return self._string_table().find(s)

    @property
    def strings_len(self) -> int:
        """Length of the string section, base included (split string offsets start here)."""
        return len(self._string_table())

    # -- bytes -------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, base: BTF | None = None) -> BTF:
        """Parse a BTF blob (``.BTF`` section or /sys/kernel/btf/*), eagerly.

        With ``base``, parse split BTF: ids continue after the base's last id and
        string offsets at or past the base's string section length refer to this
        blob's own string section.
        """
        data = bytes(data)
        if len(data) < 4:
            raise BTFError("BTF too short for a header")
        magic = int.from_bytes(data[:2], "little")
        if magic != BTF_MAGIC:
            if magic == 0x9FEB:
                raise BTFError("big-endian BTF not supported")
            raise BTFError(f"bad BTF magic {magic:#06x}")
        if len(data) < HEADER_SIZE:
            raise BTFError("BTF too short for a header")
        _, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            data
        )
        if version != BTF_VERSION:
            raise BTFError(f"unsupported BTF version {version}")
        if hdr_len < HEADER_SIZE or hdr_len > len(data):
            raise BTFError(f"bad BTF header length {hdr_len}")
        if any(data[HEADER_SIZE:hdr_len]):
            # Same as the kernel: a newer header with fields we do not know is unsafe.
            raise BTFError("BTF header has unknown non-zero fields")
        body = len(data) - hdr_len
        if type_off % 4 or type_len % 4:
            raise BTFError("BTF type section is not 4-byte aligned")
        if type_off + type_len > body or str_off + str_len > body:
            raise BTFError("BTF section offsets/lengths out of bounds")
        if type_off < str_off < type_off + type_len or str_off < type_off < str_off + str_len:
            raise BTFError("BTF type and string sections overlap")
        strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        if base is None:
            if not strs or strs[0] != 0:
                raise BTFError("BTF string section must start with an empty string")
        if strs and strs[-1] != 0:
            raise BTFError("BTF string section is not NUL-terminated")
        if base is not None:
            table = _StringTable(strs, base.strings_len, base.string,
                                 getattr(base, "find_string", None))
        else:
            table = _StringTable(strs)
        table.prefill()
        words = memoryview(data[hdr_len + type_off: hdr_len + type_off + type_len]).cast("I")
        if sys.byteorder != "little":  # pragma: no cover - we only run on little-endian hosts
            raise BTFError("BTF parsing needs a little-endian host")
        get = table.get
        types: list[Type] = []
        i, n = 0, len(words)
        while i < n:
            t, i = decode_type(words, i, get)
            types.append(t)
        btf = cls(types, base)
        btf._strings = table
        btf._validate_refs()
        return btf

    def _string_table(self) -> _StringTable:
        if self._strings is None:
            from .write import string_table

            raw, _ = string_table(self)
            base = self.base
            if base is None:
                self._strings = _StringTable(raw)
            else:
                self._strings = _StringTable(raw, base.strings_len, base.string,
                                             getattr(base, "find_string", None))
            self._strings_derived = True
        return self._strings

    def _validate_refs(self) -> None:
        n = len(self)
        start = self.start_id
        refs = _MAX_REF
        for off, t in enumerate(self._types[start - self._base_len:]):
            if refs[t.__class__](t) >= n:
                ref = max(referenced_ids(t))
                raise BTFError(
                    f"type id {start + off} ({t.kind.name}) refers to type id {ref}, "
                    f"but the last id is {n - 1}"
                )

    def copy(self) -> BTF:
        """A deep copy sharing only the base (edit it without touching this BTF)."""
        import copy

        new = BTF(copy.deepcopy(self._types), self.base)
        if not self._strings_derived:
            new._strings = self._strings
        return new

    def to_bytes(self) -> bytes:
        """Marshal to BTF bytes (no sanitization); see :func:`pyebpf.btf.write.marshal`."""
        from .write import marshal

        return marshal(self)
