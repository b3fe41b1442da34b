"""The Python values that struct and union codecs produce.

A decoded struct is an instance of a class generated per BTF type: an immutable
tuple subclass (like a namedtuple) with one attribute per member. Tuples because
building one from ``struct.unpack_from`` output is a single C call, which keeps
decoding of small structs well under a microsecond; immutability makes them
hashable. Use ``_replace(**changes)`` to derive a modified value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import Codec

try:  # the C accessor namedtuple uses; fall back to itemgetter elsewhere
    from collections import _tuplegetter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _tuplegetter = None

__all__ = ["StructValue", "UnionValue", "make_value_class", "values_equal"]


def _getter(index: int, doc: str) -> property:
    if _tuplegetter is not None:
        return _tuplegetter(index, doc)  # type: ignore[no-any-return]
    return property(itemgetter(index), doc=doc)


def _path_getter(path: tuple[int, ...], doc: str) -> property:
    def get(self: tuple) -> Any:  # type: ignore[type-arg]
        v: Any = self
        for i in path:
            v = v[i]
        return v

    return property(get, doc=doc)


class StructValue(tuple):  # type: ignore[type-arg]
    """Base of the generated classes of decoded BTF structs.

    Construct one with keyword arguments or positionally (missing members are
    zero); it compares equal to values of the same layout and to dicts.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _codec: Codec

    def __new__(cls, *args: Any, **kwargs: Any) -> StructValue:
        return cls._codec._construct(args, kwargs)  # type: ignore[attr-defined,no-any-return]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self, strict=False))
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StructValue):
            return self._fields == other._fields and (
                tuple.__eq__(self, other) or values_equal(self, other))
        if isinstance(other, Mapping):
            try:
                other = type(self)(**other)
            except (ValueError, TypeError):  # OptionError is a ValueError
                return False
            return tuple.__eq__(self, other) or values_equal(self, other)
        return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = tuple.__hash__

    def _asdict(self, deep: bool = False) -> dict[str, Any]:
        """Members by name; ``deep=True`` also turns nested structs into dicts."""
        if not deep:
            return dict(zip(self._fields, self, strict=False))
        return {n: _deep(v) for n, v in zip(self._fields, self, strict=False)}

    def _replace(self, **changes: Any) -> StructValue:
        """A copy with some members changed (names of anonymous members' fields work too)."""
        kw = self._asdict()
        paths = self._codec.paths  # type: ignore[attr-defined]
        for k, v in changes.items():
            p = paths.get(k)
            if p is not None and len(p) > 1:  # a field of an anonymous member
                anon = self._fields[p[0]]
                kw[anon] = kw[anon]._replace(**{k: v})
            else:
                kw[k] = v
        return type(self)(**kw)

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(self), {}

    def __copy__(self) -> StructValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> StructValue:
        return self


class UnionValue(StructValue):
    """Base of decoded BTF unions: every member viewed over the same bytes.

    Constructing one from some members encodes them and decodes all members
    back, so the members always agree; giving members that disagree is an error.
    """

    __slots__ = ()

    def _replace(self, **changes: Any) -> StructValue:
        """A new union from only the given members (the others follow from the bytes).

        A field of an anonymous struct member changes that struct, keeping its other fields.
        """
        paths = self._codec.paths  # type: ignore[attr-defined]
        kw: dict[str, Any] = {}
        for k, v in changes.items():
            p = paths.get(k)
            if p is not None and len(p) > 1:
                anon = self._fields[p[0]]
                kw[anon] = kw.get(anon, self[p[0]])._replace(**{k: v})
            else:
                kw[k] = v
        return type(self)(**kw)


def _deep(v: Any) -> Any:
    if isinstance(v, StructValue):
        return v._asdict(deep=True)
    if type(v) is tuple:
        return tuple(_deep(x) for x in v)
    return v


def values_equal(a: Any, b: Any) -> bool:
    """Equality of decoded values where NaN equals NaN (floats in unions often are NaN)."""
    if a is b:
        return True
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        if isinstance(a, StructValue) and isinstance(b, StructValue) and a._fields != b._fields:
            return False
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def make_value_class(
    name: str,
    fields: list[str],
    anon: dict[str, tuple[int, ...]],
    codec: Codec,
    union: bool,
) -> type[StructValue]:
    """A tuple subclass with one property per field, plus properties reaching into
    anonymous members (``anon``: name -> index path), as C allows."""
    ns: dict[str, Any] = {"__slots__": (), "_fields": tuple(fields), "_codec": codec,
                          "__match_args__": tuple(f for f in fields if f.isidentifier())}
    for i, f in enumerate(fields):
        if f not in ns:  # a member named like our own class attributes stays reachable by index
            ns[f] = _getter(i, f"member {f!r}")
    for f, path in anon.items():
        if f not in ns:
            ns[f] = _path_getter(path, f"member {f!r} of an anonymous member")
    base: type[StructValue] = UnionValue if union else StructValue
    cls_name = name if name.isidentifier() else "anon"
    cls: type[StructValue] = type(cls_name, (base,), ns)
    cls.__qualname__ = cls_name
    cls.__module__ = "pyebpf.btf.values"
    return cls

