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
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..errors import ClosedError, OptionError, PyebpfError, SyscallError
from ..sys.fd import Closing
from ..sys.mm import mmap_fd
from ..uapi import MapType
from .bufcommon import MapHandle, MapLike, MapOrFd, Waiter, open_map, readable, wait_for  # noqa: F401 - MapLike re-exported
from .ringbuf_types import BPF_RINGBUF_HDR_SZ, Batch, DropCounter, _count  # noqa: F401

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
_LEN_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF
_PAGE = mmap.PAGESIZE
_MAP_TYPE_RINGBUF = 27
_readable = readable  # old private name

Callback = Callable[[memoryview], Any]




def _resolve(map_or_fd: MapOrFd, size: int | None, who: str = "RingBuffer"
             ) -> tuple[int, int, MapHandle]:
    """(fd, data size, handle owning that fd): the map's type checked first, its fd
    duplicated so that the buffer never acts through a number it does not own."""
    h = open_map(map_or_fd, MapType.RINGBUF, who)
    try:
        if size is None:
            size = h.max_entries
        if size <= 0 or size & (size - 1) or size % _PAGE:
            raise OptionError(f"{who}: size {size} is not a power-of-2 multiple of the page "
                              f"size ({_PAGE})")
    except BaseException:
        h.fd.close()
        raise
    return h.fd.fileno(), size, h


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
        "closed",
        "label",
    )

    def __init__(self, fd: int, size: int, callback: Callback | None, keep: Any) -> None:
        """``keep``: what holds ``fd`` open (a MapHandle is closed with the ring)."""
        self.closed = False
        self.label = getattr(keep, "label", f"fd {fd}")
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
        self.closed = False
        self.label = "a test ring"
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
        try:
            return self._prod_q[0] - self.pos
        except ValueError:
            if self.closed:
                return 0
            raise

    def has_data(self) -> bool:
        try:
            return self._prod_q[0] > self.pos
        except ValueError:  # closed by another thread: nothing more to read
            if self.closed:
                return False
            raise

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
        try:
            cons_q[0] = cons
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
        except ValueError:
            if self.closed:  # closed (maybe by another thread) under a live iterator: done
                return
            raise
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
        count = 0
        try:
            cons_q[0] = cons
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
        except ValueError:
            if self.closed:  # the callback, or another thread, closed the ring
                return count
            raise
        finally:
            if self.pos == cons:
                try:
                    cons_q[0] = cons
                except ValueError:
                    pass

    def batch(self, limit: int = -1) -> Batch:
        """Copy every record available now (one producer snapshot); commit once. Empty
        when the ring was closed by another thread meanwhile."""
        try:
            return self._batch(limit)
        except ValueError:
            if self.closed:
                return Batch(b"")
            raise

    def _batch(self, limit: int) -> Batch:
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
        # flagged first: a consumer that trips over a released view ends quietly
        self.closed = True
        for name in ("_cons_q", "_prod_q", "_hdr", "_data"):
            mv = getattr(self, name, None)
            if mv is not None:
                mv.release()
        self._unmap()
        keep, self.keep = self.keep, None
        if isinstance(keep, MapHandle):
            keep.fd.close()  # our duplicate of the map fd


class RingBuffer(Closing):
    """Consumer of one ``BPF_MAP_TYPE_RINGBUF`` map.

    ``RingBuffer(obj.maps["events"])`` takes a Map; ``RingBuffer(fd)`` takes a
    raw fd or FD. Either way the map must be a ``BPF_MAP_TYPE_RINGBUF`` (anything
    else raises OptionError naming its type), and the buffer keeps its own duplicate
    of the fd: closing the Map or its Object first is safe. The size is the map's
    unless ``size=`` is given. ``callback`` is used by :meth:`poll_callbacks` and
    :meth:`consume`.

    Records are memoryviews into the ring (see the module docstring for how
    long they stay valid).  Use as a context manager or call :meth:`close`.

    Closing: every call made after :meth:`close` raises
    :class:`~pyebpf.errors.ClosedError`. ``close()`` may come from another thread:
    a consumer blocked in ``for rec in rb``, :meth:`poll`, :meth:`poll_callbacks`
    or :meth:`poll_batch` wakes at once and ends as if nothing more came (the
    loop ends, poll returns nothing), which is how a consumer thread is stopped.

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
        self._label = keep.label
        try:
            self._ring: _Ring | None = _Ring(fd, size, callback, keep)
        except BaseException:
            keep.fd.close()
            raise
        try:
            self._waiter = Waiter(f"ring buffer on {self._label}")
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
        self._r()
        return self._waiter.fileno()

    @property
    def closed(self) -> bool:
        return self._ring is None

    def _r(self) -> _Ring:
        ring = self._ring
        if ring is None:
            raise ClosedError(f"ring buffer on {getattr(self, '_label', 'a map')} is closed")
        return ring

    # -- waiting -----------------------------------------------------------

    def _wait(self, ring: _Ring, timeout: float | None, interval: float | None) -> bool:
        """Wait until the ring has data or ``timeout`` passes; True if data (False
        also when another thread closed the buffer meanwhile)."""
        return wait_for(self._waiter, ring.has_data, timeout, interval)

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
        """Records forever, blocking on epoll between bursts; the loop ends when the
        buffer is closed (from another thread, or from the loop's body)."""
        ring = self._r()
        while True:
            got = False
            for rec in ring.records():
                got = True
                yield rec
            if ring.closed:
                return
            if not got and ring.avail() > 0:
                # A BUSY record: epoll reports the ring ready until it is
                # committed, so yield the CPU instead of spinning on epoll.
                time.sleep(0)
                continue
            if not self._wait(ring, None, None):
                return  # closed while waiting

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
        ring = self._r()
        while True:
            got = False
            for rec in ring.records():
                got = True
                yield rec
            if ring.closed:
                return
            if got:
                continue
            if ring.avail() > 0:
                await asyncio.sleep(0)  # a BUSY record: let the loop run
                continue
            await self._waiter.wait_async(None, ring.has_data)

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
        """Wake any thread waiting on this buffer, unmap the ring and close this buffer's
        fds (idempotent; safe from another thread). The Map itself stays open."""
        ring, self._ring = self._ring, None
        waiter = getattr(self, "_waiter", None)
        if waiter is not None:
            waiter.close()
        if ring is not None:
            ring.close()

    def __repr__(self) -> str:
        if self._ring is None:
            return f"<RingBuffer on {getattr(self, '_label', '?')} closed>"
        r = self._ring
        return (
            f"<RingBuffer fd={r.fd} size={r.size} consumer_pos={r.consumer_pos} "
            f"producer_pos={r.producer_pos}>"
        )


class RingBufferManager(Closing):
    """Several ring buffers behind one epoll fd, each with its own callback
    (libbpf's ``ring_buffer__new`` + ``ring_buffer__add``)."""

    def __init__(self) -> None:
        self._waiter = Waiter("ring buffer manager")
        self._rings: list[_Ring] = []
        self._ids: set[int] = set()
        self._by_fd: dict[int, _Ring] = {}
        self._drops: list[DropCounter | None] = []

    def add(
        self, map: MapOrFd, callback: Callback, *, size: int | None = None, drops: Any = None
    ) -> int:
        """Add a ring buffer; returns its index (also passed by ``async for``).

        ``drops``: the program's drop counter for this ring, as for :class:`RingBuffer`."""
        counter = None if drops is None else DropCounter(drops)
        self._check_open()
        fd, size, keep = _resolve(map, size, "RingBufferManager")
        if keep.id in self._ids:
            keep.fd.close()
            raise OptionError(f"RingBufferManager: {keep.label} was already added")
        try:
            ring = _Ring(fd, size, callback, keep)
        except BaseException:
            keep.fd.close()
            raise
        try:
            self._waiter.register(fd)
        except BaseException:
            ring.close()
            raise
        self._ids.add(keep.id)
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
        self._check_open()
        return self._waiter.fileno()

    @property
    def closed(self) -> bool:
        return self._waiter.closed

    def _check_open(self) -> None:
        if self._waiter.closed:
            raise ClosedError("ring buffer manager is closed")

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
        self._check_open()
        if not wait_for(self._waiter, self._has_data, timeout, interval):
            return 0
        return self._consume_rings([r for r in self._rings if r.has_data()])

    def consume(self) -> int:
        """Non-blocking: run callbacks for every available record of every ring."""
        self._check_open()
        return self._consume_rings(self._rings)

    def consume_ring(self, index: int) -> int:
        """Non-blocking consume of one ring (libbpf's ring_buffer__consume_ring)."""
        self._check_open()
        ring = self._rings[index]
        assert ring.callback is not None
        return ring.consume_callbacks(ring.callback)

    async def poll_async(self, timeout: float | None = None) -> int:
        """Await data on any ring via the event loop, then run the callbacks."""
        self._check_open()
        if not await self._waiter.wait_until_async(self._has_data, timeout):
            return 0
        return self.consume()

    def _has_data(self) -> bool:
        return any(r.has_data() for r in self._rings)

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
            if self._waiter.closed:
                return
            await self._waiter.wait_async(None, self._has_data)

    def close(self) -> None:
        """Close the epoll fd and unmap every ring (map fds are not closed)."""
        self._waiter.close()
        for ring in self._rings:
            ring.close()
        self._rings = []
        self._by_fd = {}
        self._ids = set()
        self._drops = []

    def __repr__(self) -> str:
        return f"<RingBufferManager {len(self._rings)} rings>"
