"""Consumer of ``BPF_MAP_TYPE_RINGBUF``: mmap'd, epoll-driven, zero-copy records.

Memory layout (kernel/bpf/ringbuf.c): page 0 holds ``consumer_pos`` and is
mapped read-write; page 1 holds ``producer_pos``; the data area follows and is
mapped twice in a row, so a record that wraps past the end is still one
contiguous slice.  Each record starts with an 8-byte header ``u32 len;
u32 pg_off``.  ``len`` carries ``BUSY`` (reserved, not yet committed) and
``DISCARD`` (committed, to be skipped) bits.  Records are 8-byte aligned.

Positions are 64-bit counters that only grow; ``pos & (size - 1)`` is the
offset in the data area.  The consumer publishes how far it got by storing
``consumer_pos``; the producer refuses a reservation that would overwrite
anything past it.

Validity of records: a record is handed out as a ``memoryview`` of the
mmap'd ring, not a copy.  It stays unchanged until the consumer position is
committed past it, which happens at the earliest when the next record is
requested from the same ring (the iterator advances, the callback returns,
any other consume call starts).  Copy it with ``bytes(rec)`` /
``rec.tobytes()`` to keep it longer.  :meth:`RingBuffer.poll_batch` returns
copies.  The position is committed to the kernel in bulk (per quarter ring,
per batch), not per record, which keeps the producer's cache line quiet.

One consumer per ring at a time: the consumer position is not shared between
threads or processes.  Interleaving calls on one ring from one thread is safe
(an interrupted iterator simply ends).

Drop counts: the kernel keeps none.  A full ring makes ``bpf_ringbuf_reserve``
return NULL / ``bpf_ringbuf_output`` return -EAGAIN in the program, and
nothing is recorded anywhere (unlike a perf buffer, which delivers lost-sample
records).  A program that wants losses reported must count its failed
reservations itself, in a map or a global variable; ``RingBuffer(...,
drops=...)`` then reads that counter as :attr:`RingBuffer.dropped` (per-CPU
counters are summed).  See :class:`DropCounter` for the accepted sources.

Memory ordering: ``producer_pos`` and the record headers are read and
``consumer_pos`` is stored with single aligned 8/4-byte accesses through
memoryviews.  On x86_64 (TSO) these loads are acquires and the store is a
release.  On arm64 the interpreter's work between the load of
``producer_pos`` and the header loads, and the address dependency through the
header, are relied upon, as other pure-Python consumers do.
"""

from __future__ import annotations

import array
import itertools
import mmap
import select
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from .._log import get_logger
from ..errors import OptionError, PyebpfError, SyscallError
from ..sys.fd import Closing
from ..sys.mm import epoll_create, mmap_fd

__all__ = [
    "BPF_RINGBUF_BUSY_BIT",
    "BPF_RINGBUF_DISCARD_BIT",
    "BPF_RINGBUF_HDR_SZ",
    "Batch",
    "DropCounter",
    "RingBuffer",
    "RingBufferManager",
]

BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
_LEN_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF
_PAGE = mmap.PAGESIZE
# The mmaps and epoll registrations are logged with the syscall layer's
# messages, so the "pyebpf.sys" log shows everything done to the kernel.
_log = get_logger("pyebpf.sys")
_MAP_TYPE_RINGBUF = 27
_BYTEORDER = sys.byteorder

Callback = Callable[[memoryview], Any]


class MapLike(Protocol):
    """What RingBuffer needs of a map object (pyebpf's Map has both)."""

    @property
    def fd(self) -> Any: ...  # an int or an object with fileno()

    @property
    def max_entries(self) -> int: ...


# A Map, or a ring buffer map's fd (int, or an object with fileno() such as pyebpf.sys.FD).
MapOrFd = MapLike | int | Any


def _fileno(fd: Any) -> int:
    if isinstance(fd, int):
        return fd
    if hasattr(fd, "fileno"):
        return int(fd.fileno())
    return int(fd)


def _resolve(map_or_fd: MapOrFd, size: int | None) -> tuple[int, int, Any]:
    """(raw fd, data size, object to keep alive) from a Map, an FD or an int."""
    keep = map_or_fd
    if hasattr(map_or_fd, "max_entries") and hasattr(map_or_fd, "fd"):
        fd = _fileno(map_or_fd.fd)
        if size is None:
            size = int(map_or_fd.max_entries)
    else:
        fd = _fileno(map_or_fd)
    if size is None:
        from ..sys.bpf import map_info

        info = map_info(fd)
        if info.type != _MAP_TYPE_RINGBUF:
            raise PyebpfError(f"RingBuffer: fd {fd} is a map of type {info.type}, not a ringbuf")
        size = int(info.max_entries)
    if size <= 0 or size & (size - 1) or size % _PAGE:
        raise PyebpfError(
            f"RingBuffer: size {size} is not a power-of-2 multiple of the page size ({_PAGE})"
        )
    return fd, size, keep


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


class _Ring:
    """One mapped ring buffer: the consumer algorithm, no waiting."""

    __slots__ = (
        "fd",
        "size",
        "callback",
        "keep",
        "_cons_mm",
        "_prod_mm",
        "_cons_q",
        "_prod_q",
        "_data",
        "_hdr",
        "_mask",
        "_chunk",
        "pos",
    )

    def __init__(self, fd: int, size: int, callback: Callback | None, keep: Any) -> None:
        self.fd = fd
        self.size = size
        self.callback = callback
        self.keep = keep
        self._cons_mm: mmap.mmap | None = None
        self._prod_mm: mmap.mmap | None = None
        try:
            self._cons_mm = mmap_fd(fd, _PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                                    what="ring buffer consumer page")
            # The producer page and the data area are read-only to user
            # space; the data is mapped twice so wrapped records are contiguous.
            self._prod_mm = mmap_fd(fd, _PAGE + 2 * size, mmap.PROT_READ, offset=_PAGE,
                                    what="ring buffer producer page and data")
        except SyscallError:
            self._unmap()
            raise
        self._cons_q = memoryview(self._cons_mm)[:8].cast("Q")
        prod = memoryview(self._prod_mm)
        self._prod_q = prod[:8].cast("Q")
        self._data = prod[_PAGE:]
        self._hdr = self._data.cast("I")
        prod.release()
        self._mask = size - 1
        self._chunk = max(size // 4, 8)
        self.pos = self._cons_q[0]

    @classmethod
    def from_buffers(cls, consumer: Any, producer: Any, data: Any, size: int) -> _Ring:
        """A ring over caller-provided writable buffers (tests of the algorithm)."""
        self = cls.__new__(cls)
        self.fd = -1
        self.size = size
        self.callback = None
        self.keep = (consumer, producer, data)
        self._cons_mm = None
        self._prod_mm = None
        self._cons_q = memoryview(consumer)[:8].cast("Q")
        self._prod_q = memoryview(producer)[:8].cast("Q")
        self._data = memoryview(data)
        self._hdr = self._data.cast("I")
        self._mask = size - 1
        self._chunk = max(size // 4, 8)
        self.pos = self._cons_q[0]
        return self

    # -- positions ---------------------------------------------------------

    @property
    def consumer_pos(self) -> int:
        return self._cons_q[0]

    @property
    def producer_pos(self) -> int:
        return self._prod_q[0]

    def avail(self) -> int:
        """Bytes not yet handed out (busy and discarded records included)."""
        return self._prod_q[0] - self.pos

    def has_data(self) -> bool:
        return self._prod_q[0] > self.pos

    # -- consuming ---------------------------------------------------------

    def records(self, limit: int = -1) -> Iterator[memoryview]:
        """Yield available records.

        ``self.pos`` (the logical consumer position) moves past a record as it
        is handed out; ``consumer_pos`` in the shared page follows it once
        per quarter ring, when the iteration ends, and at the start of the
        next operation on this ring, so the record handed out last stays
        untouched until more is asked for.  Another operation on this ring
        in the middle of the iteration ends the iteration (it never moves
        the position backwards or hands a record out twice).
        """
        if limit > 0:
            # islice stops asking after ``limit`` records; the last one is
            # published by the next operation (or when the generator dies).
            return itertools.islice(self._records(), limit)
        return self._records()

    def _records(self) -> Iterator[memoryview]:
        hdr = self._hdr
        data = self._data
        prod_q = self._prod_q
        cons_q = self._cons_q
        mask = self._mask
        chunk = self._chunk
        discard_bit = BPF_RINGBUF_DISCARD_BIT
        cons = self.pos
        cons_q[0] = cons
        try:
            while True:
                prod = prod_q[0]
                if cons >= prod:
                    return
                # Publish progress at least every quarter ring, so a slow
                # consumer of a small ring does not stall the producer.
                if prod - cons > chunk:
                    prod = cons + chunk
                while cons < prod:
                    off = cons & mask
                    ln = hdr[off >> 2]
                    if ln < discard_bit:  # neither BUSY nor DISCARD
                        start = off + 8
                        cons += (ln + 15) & -8
                        self.pos = cons
                        yield data[start : start + ln]
                        if self.pos != cons:
                            return
                    elif ln & BPF_RINGBUF_BUSY_BIT:
                        return
                    else:
                        cons += ((ln & _LEN_MASK) + 15) & -8
                        self.pos = cons
                cons_q[0] = cons
        finally:
            if self.pos == cons:
                try:
                    cons_q[0] = cons
                except ValueError:  # the ring was closed under a live iterator
                    pass

    def consume_callbacks(self, callback: Callback, limit: int = -1) -> int:
        """Call ``callback`` for each available record; libbpf's ringbuf_process_ring.

        Returns the number of records passed to the callback, or the
        callback's negative return value if it stopped early.  A record whose
        callback stopped early or raised counts as consumed, as in libbpf.
        """
        hdr = self._hdr
        data = self._data
        prod_q = self._prod_q
        cons_q = self._cons_q
        mask = self._mask
        chunk = self._chunk
        discard_bit = BPF_RINGBUF_DISCARD_BIT
        cons = self.pos
        cons_q[0] = cons
        count = 0
        try:
            while True:
                prod = prod_q[0]
                if cons >= prod:
                    return count
                if prod - cons > chunk:
                    prod = cons + chunk
                while cons < prod:
                    off = cons & mask
                    ln = hdr[off >> 2]
                    if ln < discard_bit:
                        start = off + 8
                        cons += (ln + 15) & -8
                        self.pos = cons
                        r = callback(data[start : start + ln])
                        count += 1
                        if r is not None and r < 0:
                            return int(r)
                        if count == limit or self.pos != cons:
                            return count
                    elif ln & BPF_RINGBUF_BUSY_BIT:
                        return count
                    else:
                        cons += ((ln & _LEN_MASK) + 15) & -8
                        self.pos = cons
                cons_q[0] = cons
        finally:
            if self.pos == cons:
                try:
                    cons_q[0] = cons
                except ValueError:
                    pass

    def batch(self, limit: int = -1) -> Batch:
        """Copy every record available now (one producer snapshot); commit once."""
        cons_q = self._cons_q
        cons = self.pos
        cons_q[0] = cons
        prod = self._prod_q[0]
        avail = prod - cons
        if avail <= 0:
            return Batch(b"")
        hdr = self._hdr
        off0 = cons & self._mask
        first = hdr[off0 >> 2]
        if first < BPF_RINGBUF_DISCARD_BIT:
            # Fast path: records of one size back to back.  Check all their
            # headers at once through a strided view.
            stride = (first + 15) & -8
            n = avail // stride
            if 0 < limit < n:
                n = limit
            if n:
                i0 = off0 >> 2
                heads = hdr[i0 : i0 + n * (stride >> 2) : stride >> 2]
                # memoryview == compares native items in C, no int objects.
                if heads == memoryview(array.array("I", (first,)) * n):
                    end = off0 + n * stride
                    blob = self._data[off0:end].tobytes()
                    self.pos = cons_q[0] = cons + n * stride
                    return Batch(blob, count=n, stride=stride, size=first)
        return self._batch_walk(cons, prod, limit)

    def _batch_walk(self, cons: int, prod: int, limit: int) -> Batch:
        hdr = self._hdr
        mask = self._mask
        start_off = cons & mask
        pos = cons
        offsets: list[int] = []
        lengths: list[int] = []
        while pos < prod:
            off = pos & mask
            ln = hdr[off >> 2]
            if ln < BPF_RINGBUF_DISCARD_BIT:
                offsets.append(pos - cons + 8)
                lengths.append(ln)
                pos += (ln + 15) & -8
                if len(offsets) == limit:
                    break
            elif ln & BPF_RINGBUF_BUSY_BIT:
                break
            else:
                pos += ((ln & _LEN_MASK) + 15) & -8
        if not offsets:
            self.pos = self._cons_q[0] = pos  # only discarded records (or none)
            return Batch(b"")
        # [cons, pos) is contiguous thanks to the double mapping (pos - cons <= size).
        blob = self._data[start_off : start_off + (pos - cons)].tobytes()
        self.pos = self._cons_q[0] = pos
        return Batch(blob, offsets=offsets, lengths=lengths)

    # -- teardown ----------------------------------------------------------

    def _unmap(self) -> None:
        for mm in (self._cons_mm, self._prod_mm):
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    # Records (memoryview slices) are still referenced; the
                    # mapping goes away with the last of them.
                    pass
        self._cons_mm = self._prod_mm = None

    def close(self) -> None:
        for name in ("_cons_q", "_prod_q", "_hdr", "_data"):
            mv = getattr(self, name, None)
            if mv is not None:
                mv.release()
        self._unmap()
        self.keep = None


def _wait_deadline(timeout: float | None) -> float | None:
    return None if timeout is None or timeout < 0 else time.monotonic() + timeout


def _wait_for(
    waiter: _Waiter, has_data: Callable[[], bool], timeout: float | None, interval: float | None
) -> bool:
    """Wait for ``has_data()``: through epoll, or every ``interval`` s when given.

    The periodic mode does not depend on the kernel's wake-ups (a producer
    may pass BPF_RB_NO_WAKEUP, or wake-ups may be too costly at high rates);
    ``interval=0`` spins.
    """
    if has_data():
        return True
    if timeout == 0:
        return False
    if interval is None:
        return waiter.wait_until(has_data, timeout)
    deadline = _wait_deadline(timeout)
    while True:
        if interval:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return has_data()
                time.sleep(min(interval, left))
            else:
                time.sleep(interval)
        elif deadline is not None and time.monotonic() >= deadline:
            return has_data()
        if has_data():
            return True


class _Waiter:
    """An epoll fd over ring buffer map fds (the wake-ups come from the kernel's
    BPF_RB_* notification logic), or a periodic sleep when ``interval`` is set."""

    def __init__(self) -> None:
        self.ep: select.epoll | None = epoll_create("ring buffer wake-ups")

    def register(self, fd: int) -> None:
        if self.ep is None:
            raise ValueError("ring buffer is closed")
        self.ep.register(fd, select.EPOLLIN)
        _log.debug("epoll_ctl(ADD) epfd=%d fd=%d EPOLLIN", self.ep.fileno(), fd)

    def unregister(self, fd: int) -> None:
        if self.ep is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def fileno(self) -> int:
        if self.ep is None:
            raise ValueError("ring buffer is closed")
        return self.ep.fileno()

    def wait(self, timeout: float | None) -> list[int]:
        """Map fds that are ready, waiting up to ``timeout`` seconds (None: forever)."""
        if self.ep is None:
            raise ValueError("ring buffer is closed")
        t = -1 if timeout is None or timeout < 0 else timeout
        while True:
            try:
                return [fd for fd, _ in self.ep.poll(t)]
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue

    def wait_until(self, has_data: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``has_data()`` or ``timeout``; epoll can wake without new data
        (level-triggered readiness left from an earlier wake-up)."""
        deadline = _wait_deadline(timeout)
        while True:
            if has_data():
                return True
            if deadline is None:
                self.wait(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.wait(left)

    async def wait_until_async(self, has_data: Callable[[], bool], timeout: float | None) -> bool:
        """:meth:`wait_until` on the running event loop (a reader on the epoll fd)."""
        import asyncio  # imported lazily: ~15 ms that sync users don't need
        deadline = _wait_deadline(timeout)
        while True:
            if has_data():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(_readable(self.fileno()), left)
            except asyncio.TimeoutError:
                return has_data()
            self.wait(0)  # drain the epoll ready list

    def close(self) -> None:
        if self.ep is not None:
            self.ep.close()
            self.ep = None


async def _readable(fd: int) -> None:
    import asyncio  # imported lazily: ~15 ms that sync users don't need
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


class RingBuffer(Closing):
    """Consumer of one ``BPF_MAP_TYPE_RINGBUF`` map.

    ``RingBuffer(obj.maps["events"])`` takes a Map (anything with ``.fd`` and
    ``.max_entries``); ``RingBuffer(fd)`` takes a raw fd or FD (not owned; the
    size is asked from the kernel unless ``size=`` is given).
    ``callback`` is used by :meth:`poll_callbacks` and :meth:`consume`.

    Records are memoryviews into the ring (see the module docstring for how
    long they stay valid).  Use as a context manager or call :meth:`close`.

    ``drops``: where the producing program counts the records it could not
    reserve (the kernel itself reports no drop count for ring buffers); a Map,
    ``(map, key)``, ``(obj, "global_name")`` or a callable, read by
    :attr:`dropped` (see :class:`DropCounter`).
    """

    def __init__(
        self,
        map: MapOrFd,
        callback: Callback | None = None,
        *,
        size: int | None = None,
        drops: Any = None,
    ) -> None:
        self.drops: DropCounter | None = None if drops is None else DropCounter(drops)
        fd, size, keep = _resolve(map, size)
        self._ring: _Ring | None = _Ring(fd, size, callback, keep)
        try:
            self._waiter = _Waiter()
            self._waiter.register(fd)
        except BaseException:
            self._ring.close()
            raise
        self.callback = callback

    @property
    def size(self) -> int:
        """Size of the data area in bytes (the map's max_entries)."""
        return self._r().size

    @property
    def fd(self) -> int:
        """The ring buffer map's fd."""
        return self._r().fd

    def fileno(self) -> int:
        """The epoll fd: readable when the ring has data (for select/asyncio)."""
        return self._waiter.fileno()

    def _r(self) -> _Ring:
        if self._ring is None:
            raise ValueError("ring buffer is closed")
        return self._ring

    # -- waiting -----------------------------------------------------------

    def _wait(self, ring: _Ring, timeout: float | None, interval: float | None) -> bool:
        """Wait until the ring has data or ``timeout`` passes; True if data."""
        return _wait_for(self._waiter, ring.has_data, timeout, interval)

    # -- iterator API ------------------------------------------------------

    def poll(
        self,
        timeout: float | None = None,
        *,
        interval: float | None = None,
        max_records: int | None = None,
    ) -> Iterator[memoryview]:
        """Wait up to ``timeout`` s (None: forever) for data, then yield records until empty.

        Each record is a memoryview valid until the next one is requested.
        ``interval``: instead of epoll wake-ups, re-check the ring every
        ``interval`` seconds (0: busy poll).  A reserved but uncommitted
        (BUSY) record ends the iteration, as in libbpf.
        """
        ring = self._r()
        if not self._wait(ring, timeout, interval):
            return iter(())
        return ring.records(max_records or -1)

    def __iter__(self) -> Iterator[memoryview]:
        """Records forever, blocking on epoll between bursts."""
        while True:
            ring = self._r()
            got = False
            for rec in ring.records():
                got = True
                yield rec
            if not got and ring.avail() > 0:
                # A BUSY record: epoll reports the ring ready until it is
                # committed, so yield the CPU instead of spinning on epoll.
                time.sleep(0)
                continue
            self._wait(ring, None, None)

    # -- callback API ------------------------------------------------------

    def poll_callbacks(
        self,
        timeout: float | None = None,
        *,
        interval: float | None = None,
        max_records: int | None = None,
    ) -> int:
        """Wait like :meth:`poll`, then call ``callback(record)`` for each record.

        Returns the number of records handled, or the callback's negative
        return value if it stopped early (libbpf's semantics).
        """
        ring = self._r()
        cb = self._need_callback()
        if not self._wait(ring, timeout, interval):
            return 0
        return ring.consume_callbacks(cb, max_records or -1)

    def consume(self, max_records: int | None = None) -> int:
        """Non-blocking: call the callback for every available record (see poll_callbacks)."""
        return self._r().consume_callbacks(self._need_callback(), max_records or -1)

    def _need_callback(self) -> Callback:
        if self.callback is None:
            raise PyebpfError("RingBuffer: no callback given; use poll() to iterate instead")
        return self.callback

    # -- batch API ---------------------------------------------------------

    def poll_batch(
        self,
        timeout: float | None = None,
        max_records: int | None = None,
        *,
        interval: float | None = None,
    ) -> Batch:
        """Wait like :meth:`poll`, then copy every available record into one :class:`Batch`.

        The consumer position is committed once for the whole batch.
        Records of one size take a fast path (headers checked in bulk, one
        copy); mixed sizes are walked record by record.
        """
        ring = self._r()
        if not self._wait(ring, timeout, interval):
            return Batch(b"")
        return ring.batch(max_records or -1)

    def consume_batch(self, max_records: int | None = None) -> Batch:
        """Non-blocking :meth:`poll_batch`."""
        return self._r().batch(max_records or -1)

    # -- asyncio -----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[memoryview]:
        """``async for rec in rb``: records forever, waiting via the event loop."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[memoryview]:
        import asyncio  # imported lazily: ~15 ms that sync users don't need
        while True:
            ring = self._r()
            got = False
            for rec in ring.records():
                got = True
                yield rec
            if got:
                continue
            if ring.avail() > 0:
                await asyncio.sleep(0)  # a BUSY record: let the loop run
                continue
            await _readable(self.fileno())
            self._waiter.wait(0)  # drain the epoll ready list

    async def poll_async(self, timeout: float | None = None) -> Batch:
        """Wait on the event loop for data, then return a :class:`Batch` (empty on timeout)."""
        ring = self._r()
        if not await self._waiter.wait_until_async(ring.has_data, timeout):
            return Batch(b"")
        return ring.batch()

    # -- misc --------------------------------------------------------------

    @property
    def dropped(self) -> int | None:
        """Records the program failed to reserve, from the ``drops=`` counter
        (None without one: the kernel keeps no drop count for ring buffers)."""
        return None if self.drops is None else self.drops.read()

    def avail(self) -> int:
        """Bytes of unconsumed data (``BPF_RB_AVAIL_DATA`` as seen by user space)."""
        return self._r().avail()

    @property
    def consumer_pos(self) -> int:
        return self._r().consumer_pos

    @property
    def producer_pos(self) -> int:
        return self._r().producer_pos

    def close(self) -> None:
        """Close the epoll fd and unmap the ring (idempotent).  The map fd is not closed."""
        ring, self._ring = self._ring, None
        waiter = getattr(self, "_waiter", None)
        if waiter is not None:
            waiter.close()
        if ring is not None:
            ring.close()

    def __repr__(self) -> str:
        if self._ring is None:
            return "<RingBuffer closed>"
        r = self._ring
        return (
            f"<RingBuffer fd={r.fd} size={r.size} consumer_pos={r.consumer_pos} "
            f"producer_pos={r.producer_pos}>"
        )


class RingBufferManager(Closing):
    """Several ring buffers behind one epoll fd, each with its own callback
    (libbpf's ``ring_buffer__new`` + ``ring_buffer__add``)."""

    def __init__(self) -> None:
        self._waiter = _Waiter()
        self._rings: list[_Ring] = []
        self._by_fd: dict[int, _Ring] = {}
        self._drops: list[DropCounter | None] = []

    def add(
        self, map: MapOrFd, callback: Callback, *, size: int | None = None, drops: Any = None
    ) -> int:
        """Add a ring buffer; returns its index (also passed by ``async for``).

        ``drops``: the program's drop counter for this ring, as for :class:`RingBuffer`."""
        counter = None if drops is None else DropCounter(drops)
        fd, size, keep = _resolve(map, size)
        if fd in self._by_fd:
            raise PyebpfError(f"RingBufferManager: fd {fd} was already added")
        ring = _Ring(fd, size, callback, keep)
        try:
            self._waiter.register(fd)
        except BaseException:
            ring.close()
            raise
        self._rings.append(ring)
        self._by_fd[fd] = ring
        self._drops.append(counter)
        return len(self._rings) - 1

    def dropped(self, index: int | None = None) -> int | None:
        """The drop count of ring ``index``, or the sum over rings that have a counter
        (None if none has: the kernel keeps no drop count for ring buffers)."""
        if index is not None:
            c = self._drops[index]
            return None if c is None else c.read()
        counters = [c for c in self._drops if c is not None]
        return sum(c.read() for c in counters) if counters else None

    def __len__(self) -> int:
        return len(self._rings)

    def fileno(self) -> int:
        """The epoll fd (readable when any ring has data)."""
        return self._waiter.fileno()

    def _consume_rings(self, rings: list[_Ring]) -> int:
        total = 0
        for ring in rings:
            assert ring.callback is not None
            n = ring.consume_callbacks(ring.callback)
            if n < 0:
                return n
            total += n
        return total

    def poll(self, timeout: float | None = None, *, interval: float | None = None) -> int:
        """Wait up to ``timeout`` s for any ring, then run callbacks on the ready ones.

        ``interval``: re-check every ``interval`` s instead of waiting in epoll
        (0 spins).  Returns the records handled, or a callback's negative value
        (which stops the poll).
        """
        if not _wait_for(self._waiter, self._has_data, timeout, interval):
            return 0
        return self._consume_rings([r for r in self._rings if r.has_data()])

    def consume(self) -> int:
        """Non-blocking: run callbacks for every available record of every ring."""
        return self._consume_rings(self._rings)

    def consume_ring(self, index: int) -> int:
        """Non-blocking consume of one ring (libbpf's ring_buffer__consume_ring)."""
        ring = self._rings[index]
        assert ring.callback is not None
        return ring.consume_callbacks(ring.callback)

    async def poll_async(self, timeout: float | None = None) -> int:
        """Await data on any ring via the event loop, then run the callbacks."""
        if not await self._waiter.wait_until_async(self._has_data, timeout):
            return 0
        return self.consume()

    def _has_data(self) -> bool:
        return any(r.pos < r.producer_pos for r in self._rings)

    def __aiter__(self) -> AsyncIterator[tuple[int, memoryview]]:
        """``async for index, rec in mgr``: records of every ring, forever."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[tuple[int, memoryview]]:
        import asyncio  # imported lazily: ~15 ms that sync users don't need
        while True:
            got = False
            for i, ring in enumerate(self._rings):
                for rec in ring.records():
                    got = True
                    yield i, rec
            if got:
                continue
            if any(r.avail() > 0 for r in self._rings):
                await asyncio.sleep(0)  # only BUSY records: let the loop run
                continue
            await _readable(self.fileno())
            self._waiter.wait(0)

    def close(self) -> None:
        """Close the epoll fd and unmap every ring (map fds are not closed)."""
        self._waiter.close()
        for ring in self._rings:
            ring.close()
        self._rings = []
        self._by_fd = {}
        self._drops = []

    def __repr__(self) -> str:
        return f"<RingBufferManager {len(self._rings)} rings>"
