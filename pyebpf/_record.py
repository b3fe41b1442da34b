"""Plain data classes without ``dataclasses``.

pyebpf's data classes write their ``__init__`` by hand and inherit field-wise
``__eq__`` and ``__repr__`` from :class:`Record`. ``@dataclass`` compiles each
class's methods with ``exec`` at import time: about 0.4 ms a class. Across the
~60 classes on the open → relocate → load path, plus the import of ``dataclasses``
and ``inspect`` themselves, that was over a third of a fresh process's start-up
(issue 2 budgets 90 ms for import + parse + relocate, issue 3 100 ms for
exec → attached).

A subclass lists its fields as class annotations, in ``__init__`` order. Names
annotated ``ClassVar`` are not fields. The field list is computed once per class
in ``__init_subclass__``; that is cheap, because it only reads ``__annotations__``.
"""

from __future__ import annotations

from typing import Any, ClassVar


def _is_classvar(ann: Any) -> bool:
    if isinstance(ann, str):  # postponed annotations (``from __future__ import annotations``)
        return ann.startswith(("ClassVar", "typing.ClassVar"))
    return ann is ClassVar or getattr(ann, "__origin__", None) is ClassVar


class Record:
    """Field-wise equality and repr over the annotated fields, like a dataclass.

    Instances are unhashable, as a non-frozen dataclass's are (``__eq__`` without
    ``__hash__``). ``_norepr`` names fields the repr leaves out."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _norepr: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = [name for name, ann in cls.__dict__.get("__annotations__", {}).items()
               if not _is_classvar(ann)]
        inherited = [f for f in cls._fields if f not in own]
        cls._fields = tuple(inherited + own)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields if f not in self._norepr)
        return f"{type(self).__qualname__}({body})"


class Frozen(Record):
    """An immutable :class:`Record`, hashable by its fields (a frozen dataclass).

    ``__init__`` sets fields with ``object.__setattr__``; ``__reduce__`` rebuilds an
    instance from its fields, so ``copy``, ``deepcopy`` and ``pickle`` work although
    ``__setattr__`` refuses. That needs every field to be an ``__init__`` argument, in
    field order."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(getattr(self, f) for f in self._fields))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f) for f in self._fields))


def replace(obj: Any, **changes: Any) -> Any:
    """A shallow copy of a :class:`Record` with some fields changed (like
    ``dataclasses.replace``, without running ``__init__`` again)."""
    unknown = set(changes).difference(obj._fields)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {', '.join(sorted(unknown))}")
    cls: Any = type(obj)
    new = cls.__new__(cls)
    d = getattr(obj, "__dict__", None)
    if d is not None:
        new.__dict__.update(d)
    for f in obj._fields:
        object.__setattr__(new, f, changes[f] if f in changes else getattr(obj, f))
    return new
