"""Maps whose values are file descriptors of other BPF objects: prog_array (tail calls)
and map-in-map (array_of_maps, hash_of_maps).

User space writes such a map with an fd (a :class:`~pyebpf.program.Program`, a
:class:`~pyebpf.maps.map.Map`, anything with ``.fd``, or an int) and the kernel reads
back the object's *id*: ``m[k]``, ``lookup()``, ``items()`` and ``values()`` give ids,
while ``get_program(k)`` / ``get_map(k)`` open the object from that id (a new fd the
caller owns).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from ..errors import OptionError
from ..uapi import MapType
from .map import BPF_ANY, Map, register_map_class

__all__ = ["ArrayOfMaps", "FdArrayMap", "HashOfMaps", "ProgArray", "fd_number"]

_BO = sys.byteorder
_RAW = (bytes, bytearray, memoryview)


def fd_number(value: Any) -> int:
    """The fd of a Program/Map/Link (``.fd``), a socket or file (``fileno()``) or an int."""
    if isinstance(value, bool):
        raise OptionError(f"expected a Program, a Map, a socket or an fd, got {value!r}")
    fd = getattr(value, "fd", None)
    if fd is None:
        fileno = getattr(value, "fileno", None)
        fd = fileno() if callable(fileno) else value
    try:
        n = int(fd)
    except (TypeError, ValueError):
        raise OptionError(f"expected a Program, a Map, a socket or an fd, got {value!r}") from None
    if n < 0:
        raise OptionError(f"invalid fd {n}")
    return n


class _FdValues(Map):
    """Values are fds on update and object ids on lookup; never BTF-typed."""

    _batchable = False

    def encode_value(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            return super().encode_value(value)
        # some kinds (sockmap, reuseport) take the fd as 4 or 8 bytes
        return fd_number(value).to_bytes(self.value_size, _BO)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return int.from_bytes(bytes(raw[:4]), _BO)

    def _open(self, obj_id: int) -> Any:
        raise OptionError(f"map {self.name!r}: its values are not openable objects")

    def _get_object(self, key: Any) -> Any:
        obj_id = self.lookup(key)
        if obj_id is None:
            raise KeyError(key)
        return self._open(obj_id)

    def ids(self) -> dict[Any, Any]:
        """{key: what the kernel returns for the slot (an id, a cookie, ...)} for every
        filled slot."""
        return dict(self.items())


class FdArrayMap(_FdValues):
    """Indexed fd maps (0..max_entries-1): empty slots are absent, ``del m[i]`` empties one."""

    def __len__(self) -> int:
        self._check_open()
        return self.max_entries

    def encode_key(self, key: Any) -> bytes:
        if type(key) is int and self.key_size == 4:
            if not 0 <= key < self.max_entries:
                raise OptionError(f"map {self.name!r}: index {key} out of range "
                                  f"0..{self.max_entries - 1}")
            return key.to_bytes(4, _BO)
        return super().encode_key(key)

    def decode_key(self, raw: bytes) -> Any:
        return int.from_bytes(raw, _BO) if len(raw) == 4 else super().decode_key(raw)

    def keys_bytes(self) -> Iterator[bytes]:
        # every index exists as a key; lookups of empty ones fail with ENOENT
        for i in range(self.max_entries):
            yield i.to_bytes(4, _BO)

    def keys(self) -> Iterator[Any]:
        """Indexes of filled slots."""
        for k, _v in self.items(raw=True):
            yield self.decode_key(k)

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        ops = self.ops
        for kb in self.keys_bytes():
            v = ops.lookup(kb)
            if v is None:
                continue
            yield (kb, v) if raw else (self.decode_key(kb), self.decode_value(v))

    def count(self) -> int:
        """Number of filled slots."""
        return sum(1 for _ in self.items(raw=True))

    def clear(self) -> None:
        """Empty every slot."""
        ops = self.ops
        for kb in self.keys_bytes():
            ops.delete(kb)


@register_map_class(MapType.PROG_ARRAY)
class ProgArray(FdArrayMap):
    """Tail-call table: ``m[i] = program`` fills slot i, ``del m[i]`` clears it.

    ``m[i]`` gives the program id; ``m.get_program(i)`` opens the :class:`Program`.
    """

    def get_program(self, index: int) -> Any:
        """The :class:`Program` in slot ``index``, opened by id (KeyError if empty)."""
        return self._get_object(index)

    def set(self, index: int, prog: Any, flags: int = BPF_ANY) -> None:
        """Put ``prog`` (a Program or fd) in slot ``index``."""
        self.update(index, prog, flags)

    def _open(self, obj_id: int) -> Any:
        from ..program import Program

        return Program.from_id(obj_id)


def _open_map(obj_id: int) -> Map:
    return Map.from_id(obj_id)


@register_map_class(MapType.ARRAY_OF_MAPS)
class ArrayOfMaps(FdArrayMap):
    """Array of maps: ``m[i] = inner_map`` stores a map compatible with the inner template;
    ``m[i]`` gives the inner map's id, ``m.get_map(i)`` opens it."""

    def get_map(self, index: int) -> Map:
        """The inner :class:`Map` at ``index``, opened by id (KeyError if empty)."""
        return self._get_object(index)  # type: ignore[no-any-return]

    def _open(self, obj_id: int) -> Any:
        return _open_map(obj_id)


@register_map_class(MapType.HASH_OF_MAPS)
class HashOfMaps(_FdValues):
    """Hash of maps: ``m[key] = inner_map``; ``m[key]`` gives the inner map's id,
    ``m.get_map(key)`` opens it."""

    def get_map(self, key: Any) -> Map:
        """The inner :class:`Map` at ``key``, opened by id (KeyError if absent)."""
        return self._get_object(key)  # type: ignore[no-any-return]

    def _open(self, obj_id: int) -> Any:
        return _open_map(obj_id)
