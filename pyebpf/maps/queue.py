"""Queue, stack and bloom filter: value-only maps."""

from __future__ import annotations

import ctypes
import errno as _errno
from collections.abc import Iterator
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import attrs as A
from ..sys.syscall import Cmd, bpf_errno
from ..uapi import MapType
from .map import BPF_ANY, NoKeysMap, register_map_class

__all__ = ["BloomFilter", "Queue", "Stack"]


@register_map_class(MapType.QUEUE)
class Queue(NoKeysMap):
    """A FIFO queue: ``push(v)``, ``pop()``, ``peek()``; ``drain()`` pops until empty.
    The kernel does not report a queue's length, so ``len()`` raises
    :class:`~pyebpf.maps.map.NoLengthError` (a TypeError); ``bool(q)`` tells if it is empty."""

    _no_len_why = ("the kernel does not report a queue's length (pop() until None, or "
                   "bool() to test for emptiness)")

    def push(self, value: Any, flags: int = BPF_ANY) -> None:
        """Add ``value`` (flags BPF_EXIST overwrites the oldest when full)."""
        self.ops.push(self.encode_value(value), flags)

    def pop(self, default: Any = None, *, raw: bool = False) -> Any:
        """Remove and return the next value, or ``default`` when empty."""
        v = self.ops.lookup_and_delete(None)
        if v is None:
            return default
        return v if raw else self.decode_value(v)

    def peek(self, default: Any = None, *, raw: bool = False) -> Any:
        """The next value without removing it, or ``default`` when empty."""
        v = self.ops.lookup(b"")
        if v is None:
            return default
        return v if raw else self.decode_value(v)

    def drain(self, *, raw: bool = False) -> Iterator[Any]:
        """Pop values until the map is empty."""
        ld = self.ops.lookup_and_delete
        while (v := ld(None)) is not None:
            yield v if raw else self.decode_value(v)

    def __bool__(self) -> bool:
        return self.ops.lookup(b"") is not None

    def clear(self) -> None:
        while self.ops.lookup_and_delete(None) is not None:
            pass


@register_map_class(MapType.STACK)
class Stack(Queue):
    """A LIFO stack: ``push``/``pop``/``peek`` as :class:`Queue`, newest first."""


@register_map_class(MapType.BLOOM_FILTER)
class BloomFilter(NoKeysMap):
    """A bloom filter: ``add(v)`` (or ``push``); ``v in m`` is False when certainly
    absent, True when probably present."""

    def push(self, value: Any, flags: int = BPF_ANY) -> None:
        self.ops.push(self.encode_value(value), flags)

    add = push

    def __contains__(self, value: Any) -> bool:
        return self.contains_bytes(self.encode_value(value))

    def contains(self, value: Any) -> bool:
        """``value in self``."""
        return self.contains_bytes(self.encode_value(value))

    def contains_bytes(self, raw: bytes) -> bool:
        """``raw`` (exactly value_size bytes) is probably in the filter."""
        if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != self.value_size:
            # the kernel reads value_size bytes from the buffer: never hand it fewer
            got = len(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else type(raw).__name__
            raise OptionError(f"map {self.name!r}: value must be {self.value_size} bytes, got {got}")
        # BPF_MAP_LOOKUP_ELEM with a NULL key and the value as input: 0 = maybe present
        vb = (ctypes.c_char * max(len(raw), 1)).from_buffer_copy(raw or b"\0")
        if self.fd.closed:
            raise self._closed_error()
        a = A.MapElemAttr(map_fd=int(self.fd), key=0, value=ctypes.addressof(vb))
        ret, err = bpf_errno(Cmd.MAP_LOOKUP_ELEM, a, A.MapElemAttr.SIZE)
        if ret >= 0:
            return True
        if err == _errno.ENOENT:
            return False
        raise SyscallError(err, "BPF_MAP_LOOKUP_ELEM", detail=f"map {self.name!r}")

    def clear(self) -> None:
        raise OptionError("a bloom filter cannot be cleared")
