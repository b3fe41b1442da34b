"""Perf buffer records copied out in bulk: :class:`PerfBatch`."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import Any

from ..errors import PyebpfError

__all__ = ["PerfBatch"]

_SAMPLE_HDR = 12  # perf_event_header + u32 raw size


class PerfBatch:
    """Copies of the records of one CPU's ring: one ``bytes`` blob plus positions.

    ``batch[i]`` / iteration give zero-copy memoryviews into the blob (safe to
    keep).  When every record has one size (``uniform``), :meth:`iter_unpack`
    decodes them all at C speed.  ``lost`` is the count from any
    ``PERF_RECORD_LOST`` met while reading this batch.
    """

    __slots__ = ("cpu", "data", "lost", "_count", "_stride", "_offsets", "_lengths", "_runs")

    def __init__(
        self,
        cpu: int,
        data: bytes,
        *,
        count: int = 0,
        stride: int = 0,
        offsets: list[int] | None = None,
        lengths: list[int] | None = None,
        lost: int = 0,
        runs: list[tuple[int, int, int]] | None = None,
    ) -> None:
        self.cpu = cpu
        # (blob offset of the first header, record count, stride) for each run
        # of equal-sized samples, when known: lets iter_unpack stay in C.
        self._runs = runs
        self.data = data
        self.lost = lost
        self._offsets = offsets
        self._lengths = lengths
        self._count = len(offsets) if offsets is not None else count
        self._stride = stride or 16

    @property
    def uniform(self) -> bool:
        """True when all records have one size and sit ``stride`` bytes apart."""
        return self._offsets is None

    @property
    def record_size(self) -> int | None:
        """The common (padded) record size of a uniform batch, None otherwise."""
        return self._stride - _SAMPLE_HDR if self._offsets is None else None

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
        mv = memoryview(self.data)
        if self._offsets is None:
            start = i * self._stride + _SAMPLE_HDR
            return mv[start : start + self._stride - _SAMPLE_HDR]
        assert self._lengths is not None
        start = self._offsets[i]
        return mv[start : start + self._lengths[i]]

    def __iter__(self) -> Iterator[memoryview]:
        mv = memoryview(self.data)
        if self._offsets is None:
            stride = self._stride
            size = stride - _SAMPLE_HDR
            for start in range(_SAMPLE_HDR, self._count * stride, stride):
                yield mv[start : start + size]
        else:
            assert self._lengths is not None
            for start, ln in zip(self._offsets, self._lengths, strict=True):
                yield mv[start : start + ln]

    def tolist(self) -> list[bytes]:
        """Every record as its own ``bytes``."""
        return [bytes(r) for r in self]

    def iter_unpack(self, fmt: str) -> Iterator[tuple[Any, ...]]:
        """``struct.unpack`` of each record's leading bytes with ``fmt`` (e.g. ``"<QI"``)."""
        st = struct.Struct(fmt)
        if self._count == 0:
            return iter(())
        if self._offsets is None:
            size = self._stride - _SAMPLE_HDR
            if st.size > size:
                raise PyebpfError(f"format {fmt!r} needs {st.size} bytes, records have {size}")
            order = fmt[0] if fmt and fmt[0] in "@=<>!" else "@"
            body = fmt[1:] if fmt and fmt[0] in "@=<>!" else fmt
            # One struct covering header, fields and tail padding lets
            # struct.iter_unpack walk the blob in C.  The 12-byte header only
            # keeps field offsets with a standard-size (non-native) format.
            whole = struct.Struct(f"{order}{_SAMPLE_HDR}x{body}{size - st.size}x")
            if whole.size != self._stride:
                return (st.unpack_from(r) for r in self)
            return whole.iter_unpack(memoryview(self.data)[: self._count * self._stride])
        if self._runs is not None:
            order = fmt[0] if fmt and fmt[0] in "@=<>!" else "@"
            body = fmt[1:] if fmt and fmt[0] in "@=<>!" else fmt
            mv = memoryview(self.data)
            parts: list[Iterator[tuple[Any, ...]]] = []
            for start, count, stride in self._runs:
                size = stride - _SAMPLE_HDR
                if st.size > size or order == "@":
                    break
                whole = struct.Struct(f"{order}{_SAMPLE_HDR}x{body}{size - st.size}x")
                if whole.size != stride:
                    break
                parts.append(whole.iter_unpack(mv[start : start + count * stride]))
            else:  # every run had a whole-record struct
                return itertools.chain.from_iterable(parts)
        return (st.unpack_from(self.data, s) for s in self._offsets)

    def __repr__(self) -> str:
        kind = f"uniform size={self.record_size}" if self.uniform else "variable sizes"
        return f"<PerfBatch cpu={self.cpu} {self._count} records, {kind}, lost={self.lost}>"
