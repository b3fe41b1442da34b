"""Ring buffer records copied out in bulk (:class:`Batch`) and the program-kept drop
counter a consumer reads (:class:`DropCounter`)."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import OptionError, PyebpfError

__all__ = ["BPF_RINGBUF_HDR_SZ", "Batch", "DropCounter"]

BPF_RINGBUF_HDR_SZ = 8
_BYTEORDER = sys.byteorder


class Batch:
    """Copies of many records: one ``bytes`` blob plus where each record is in it.

    ``batch[i]`` is a zero-copy ``memoryview`` of record *i* inside the blob
    (safe to keep: the blob is immutable).  When every record has the same
    size (``uniform``), :meth:`iter_unpack` decodes all of them at C speed.
    """

    __slots__ = ("data", "_offsets", "_lengths", "_count", "_stride", "_size")

    def __init__(
        self,
        data: bytes,
        *,
        count: int = 0,
        stride: int = 0,
        size: int = 0,
        offsets: list[int] | None = None,
        lengths: list[int] | None = None,
    ) -> None:
        self.data = data
        self._offsets = offsets
        self._lengths = lengths
        if offsets is not None:
            count = len(offsets)
        self._count = count
        self._stride = stride or 8  # any non-zero stride for an empty batch
        self._size = size

    @property
    def uniform(self) -> bool:
        """True when all records have one size and sit ``stride`` bytes apart."""
        return self._offsets is None

    @property
    def record_size(self) -> int | None:
        """The common record size of a uniform batch (None otherwise)."""
        return self._size if self._offsets is None else None

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __getitem__(self, i: int) -> memoryview:
        n = self._count
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("batch index out of range")
        if self._offsets is None:
            start = i * self._stride + BPF_RINGBUF_HDR_SZ
            return memoryview(self.data)[start : start + self._size]
        start = self._offsets[i]
        assert self._lengths is not None
        return memoryview(self.data)[start : start + self._lengths[i]]

    def __iter__(self) -> Iterator[memoryview]:
        mv = memoryview(self.data)
        if self._offsets is None:
            size = self._size
            for start in range(BPF_RINGBUF_HDR_SZ, self._count * self._stride, self._stride):
                yield mv[start : start + size]
        else:
            assert self._lengths is not None
            for start, ln in zip(self._offsets, self._lengths, strict=True):
                yield mv[start : start + ln]

    def tolist(self) -> list[bytes]:
        """Every record as its own ``bytes``."""
        data = self.data
        if self._offsets is None:
            size = self._size
            return [
                data[s : s + size]
                for s in range(BPF_RINGBUF_HDR_SZ, self._count * self._stride, self._stride)
            ]
        assert self._lengths is not None
        return [data[s : s + ln] for s, ln in zip(self._offsets, self._lengths, strict=True)]

    def iter_unpack(self, fmt: str) -> Iterator[tuple[Any, ...]]:
        """``struct.unpack`` of each record's leading bytes with ``fmt`` (e.g. ``"<QI"``)."""
        st = struct.Struct(fmt)
        if self._count == 0:
            return iter(())
        if self._offsets is None:
            if st.size > self._size:
                raise PyebpfError(
                    f"format {fmt!r} needs {st.size} bytes, records have {self._size}"
                )
            # One struct that also skips the header and the padding after the
            # fields lets struct.iter_unpack walk the blob in C.  The header
            # is 8 bytes, the largest native alignment, so prefixing it keeps
            # every field's offset.
            order = fmt[0] if fmt and fmt[0] in "@=<>!" else "@"
            body = fmt[1:] if fmt and fmt[0] in "@=<>!" else fmt
            pad = self._stride - BPF_RINGBUF_HDR_SZ - st.size
            whole = struct.Struct(f"{order}{BPF_RINGBUF_HDR_SZ}x{body}{pad}x")
            if whole.size != self._stride:  # native alignment changed the layout
                return (st.unpack_from(rec) for rec in self)
            return whole.iter_unpack(memoryview(self.data)[: self._count * self._stride])
        return (st.unpack_from(self.data, s) for s in self._offsets)

    def __repr__(self) -> str:
        kind = f"uniform size={self._size}" if self._offsets is None else "variable sizes"
        return f"<Batch {self._count} records, {kind}, {len(self.data)} bytes>"


def _count(v: Any) -> int:
    """A counter value as an int: per-CPU lists are summed, raw bytes read host-endian."""
    if v is None:
        return 0
    if isinstance(v, int):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return int.from_bytes(v, _BYTEORDER)
    if isinstance(v, (list, tuple)):
        return sum(_count(x) for x in v)
    return int(v)


class DropCounter:
    """Reads a drop counter that a BPF program keeps (the kernel keeps none for ring buffers).

    ``source`` is one of:

    - a Map (anything with ``lookup``): the value at key 0;
    - ``(map, key)``: the value at ``key``;
    - ``(obj, "name")``: the global variable ``name`` of a loaded Object (``obj.globals``);
    - a callable returning the count.

    Per-CPU values (a list per CPU) are summed; a missing key counts as 0.
    """

    __slots__ = ("_read", "source")

    def __init__(self, source: Any) -> None:
        self.source = source
        if isinstance(source, tuple) and len(source) == 2:
            owner, key = source
            if isinstance(key, str) and hasattr(owner, "globals"):
                glb = owner.globals
                if key not in glb:
                    raise OptionError(f"drop counter: the object has no global variable {key!r}")
                self._read: Callable[[], Any] = lambda: glb[key]
            elif hasattr(owner, "lookup"):
                self._read = lambda: owner.lookup(key)
            else:
                raise OptionError("drop counter: expected (Map, key) or (Object, 'global_name'), "
                                  f"got ({type(owner).__name__}, {type(key).__name__})")
        elif hasattr(source, "lookup"):
            self._read = lambda: source.lookup(0)
        elif callable(source):
            self._read = source
        else:
            raise OptionError("drop counter: expected a Map, (Map, key), (Object, 'global_name') "
                              f"or a callable, got {type(source).__name__}")

    def read(self) -> int:
        """The current count."""
        return _count(self._read())

    def __repr__(self) -> str:
        return f"<DropCounter {self.source!r}>"
