"""Consumer of ``BPF_MAP_TYPE_PERF_EVENT_ARRAY``: one perf ring per CPU (libbpf's perf_buffer).

For every CPU a ``PERF_COUNT_SW_BPF_OUTPUT`` software event is opened
(``sample_type = PERF_SAMPLE_RAW``), its ring is mmap'd (one metadata page +
``page_cnt`` data pages) and the event fd is stored in the map at index
``cpu``, which is where ``bpf_perf_event_output(ctx, &map, BPF_F_CURRENT_CPU,
...)`` writes.  One epoll fd watches every event.

Ring layout (include/uapi/linux/perf_event.h): the metadata page holds
``data_head`` (offset 1024, advanced by the kernel) and ``data_tail`` (offset
1032, advanced by us); both are 64-bit counters that only grow, ``pos &
(data_size - 1)`` is the offset in the data area.  Records are
``struct perf_event_header {u32 type; u16 misc; u16 size}`` followed by the
body; sizes are multiples of 8, so a header never straddles the end of the
ring but a body can: such a record is reassembled from its two parts.

``PERF_RECORD_SAMPLE`` with only ``PERF_SAMPLE_RAW`` is ``header, u32 size,
u8 data[size]``.  The kernel pads ``4 + len`` up to 8 bytes and reports the
padded length, so a 64-byte ``bpf_perf_event_output`` arrives as 68 bytes,
exactly as libbpf and cilium/ebpf hand it out.  The padding is skipped, not
written: its bytes are whatever the ring held before.

Losses: when a ring is full, ``bpf_perf_event_output`` fails in the program
and the kernel counts the sample; the count is written as one
``PERF_RECORD_LOST`` record *before the next sample that fits*.  Each one is
added to :attr:`PerfBuffer.lost_by_cpu` / :attr:`PerfBuffer.lost_total` and
passed to the ``lost(cpu, count)`` callback.  Losses still pending in the
kernel (nothing written since) cannot be seen from user space.

Ordering: ``data_head`` is loaded before the records are read; ``data_tail``
is stored only past records that are done with: every quarter ring during a
long consume (so a live producer is not stalled) and at the end of the call.
On x86_64 (TSO) plain aligned 8-byte loads/stores through a memoryview are
acquire/release.

Validity: callback and iterator records are memoryviews of the ring, valid
until ``data_tail`` moves past them: copy a record (``bytes(data)``) to keep
it after the callback returns or the iterator advances.  Wrapped records are
copies.  :meth:`PerfBuffer.poll_batch` returns copies.

Overwritable mode (``overwritable=True``): the events are opened with
``write_backward`` and mapped read-only, so the kernel overwrites the oldest
data instead of losing new samples; nothing is consumed continuously.  Take
a snapshot with :meth:`PerfBuffer.read_overwritable`, which pauses each ring
(``PERF_EVENT_IOC_PAUSE_OUTPUT``), reads from ``data_head`` forward (newest
first) and resumes it.
"""

from __future__ import annotations

import array
import mmap
import select
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .._log import get_logger
from ..errors import ClosedError, PyebpfError, SyscallError
from ..sys import perf as P
from ..sys.fd import Closing
from ..sys.mm import mmap_fd
from ..sys.syscall import ioctl
from ..uapi import MapType
from .bufcommon import Waiter, open_map
from .perfbuf_types import PerfBatch

__all__ = [
    "PERF_RECORD_LOST",
    "PERF_RECORD_SAMPLE",
    "PerfBatch",
    "PerfBuffer",
    "online_cpus",
]

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_EVENT_IOC_PAUSE_OUTPUT = 0x40042409  # _IOW('$', 9, __u32)
_PAGE = mmap.PAGESIZE
_HEAD_Q = 1024 // 8  # data_head in the metadata page, as a u64 index
_TAIL_Q = 1032 // 8
_SAMPLE_HDR = 12  # perf_event_header + u32 raw size
_log = get_logger("pyebpf.sys")

SampleCallback = Callable[[int, memoryview], Any]
LostCallback = Callable[[int, int], Any]


def _parse_cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def online_cpus() -> list[int]:
    """CPU numbers in /sys/devices/system/cpu/online."""
    with open("/sys/devices/system/cpu/online") as f:
        return _parse_cpulist(f.read())


class _PerfRing:
    """One CPU's event and mmap'd ring; the reading algorithms, no waiting."""

    __slots__ = (
        "cpu", "fd", "mm", "meta", "data", "q", "size", "mask", "lost", "overwritable",
        "prev_head", "chunk", "closed",
    )

    def __init__(self, cpu: int, page_cnt: int, wakeup_events: int, watermark: int | None,
                 overwritable: bool) -> None:
        self.cpu = cpu
        self.closed = False
        self.lost = 0
        self.overwritable = overwritable
        self.prev_head = 0
        self.mm: mmap.mmap | None = None
        attr = P.PerfEventAttr(
            type=P.PERF_TYPE_SOFTWARE,
            config=P.PERF_COUNT_SW_BPF_OUTPUT,
            sample_type=P.PERF_SAMPLE_RAW,
            sample_period=1,
        )
        if watermark is not None:
            attr.watermark = 1
            attr.wakeup_events = watermark  # wakeup_watermark in the union
        else:
            attr.wakeup_events = wakeup_events
        if overwritable:
            attr.write_backward = 1
        self.fd = P.perf_event_open(attr, pid=-1, cpu=cpu)
        self.size = page_cnt * _PAGE
        self.mask = self.size - 1
        self.chunk = max(self.size // 4, 8)
        prot = mmap.PROT_READ if overwritable else mmap.PROT_READ | mmap.PROT_WRITE
        try:
            self.mm = mmap_fd(self.fd.fileno(), _PAGE + self.size, prot,
                              what=f"perf ring of {page_cnt + 1} pages for CPU {cpu}")
        except SyscallError:
            self.fd.close()
            raise
        _log.debug("perf_event_open BPF_OUTPUT cpu=%d fd=%d, mmap 1+%d pages%s", cpu,
                   self.fd.fileno(), page_cnt, " ro backward" if overwritable else "")
        whole = memoryview(self.mm)
        self.meta = whole[:_PAGE].cast("Q")
        self.data = whole[_PAGE:]
        self.q = self.data.cast("Q")
        whole.release()

    # -- positions ---------------------------------------------------------

    def has_data(self) -> bool:
        try:
            return self.meta[_HEAD_Q] != self.meta[_TAIL_Q]
        except ValueError:  # closed by another thread: nothing more to read
            if self.closed:
                return False
            raise

    def avail(self) -> int:
        try:
            return (self.meta[_HEAD_Q] - self.meta[_TAIL_Q]) & 0xFFFFFFFFFFFFFFFF
        except ValueError:
            if self.closed:
                return 0
            raise

    def _record(self, off: int, size: int) -> memoryview:
        """Record bytes at ``off``; a record crossing the end is copied together."""
        end = off + size
        if end <= self.size:
            return self.data[off:end]
        return memoryview(bytes(self.data[off:]) + bytes(self.data[: end - self.size]))

    def _lost_at(self, off: int, lost_cb: LostCallback | None) -> None:
        rec = self._record(off, 24)
        (n,) = struct.unpack_from("<Q", rec, 16)
        self.lost += n
        if lost_cb is not None:
            lost_cb(self.cpu, n)

    # -- consuming ---------------------------------------------------------

    def consume(self, cb: SampleCallback, lost_cb: LostCallback | None, limit: int) -> int:
        """Call ``cb(cpu, data)`` per sample; libbpf's perf_event_read_simple + callbacks."""
        meta = self.meta
        head = meta[_HEAD_Q]
        tail = meta[_TAIL_Q]
        if head == tail:
            return 0
        q = self.q
        data = self.data
        mask = self.mask
        ring_size = self.size
        cpu = self.cpu
        chunk = self.chunk
        n = 0
        try:
            while tail < head:
                # Publish data_tail every quarter ring so a live producer
                # is not stalled (and does not lose samples) for the whole call.
                stop = head if head - tail <= chunk else tail + chunk
                while tail < stop:
                    off = tail & mask
                    h = q[off >> 3]
                    end = off + (h >> 48)
                    # The common case in one test: a sample that does not wrap.
                    if h & 0xFFFFFFFF == 9 and end <= ring_size:  # PERF_RECORD_SAMPLE
                        tail += end - off
                        cb(cpu, data[off + 12 : end])
                        n += 1
                        if n == limit:
                            return n
                        continue
                    size = h >> 48
                    if size == 0:  # cannot happen with a sane kernel; never spin
                        return n
                    tail += size
                    if h & 0xFFFFFFFF == PERF_RECORD_SAMPLE:
                        cb(cpu, self._record(off, size)[12:])
                        n += 1
                        if n == limit:
                            return n
                    elif h & 0xFFFFFFFF == PERF_RECORD_LOST:
                        self._lost_at(off, lost_cb)
                meta[_TAIL_Q] = tail
        except ValueError:
            if self.closed:  # the callback, or another thread, closed the buffer
                return n
            raise
        finally:
            try:
                meta[_TAIL_Q] = tail
            except ValueError:  # a callback closed the buffer
                pass
        return n

    def records(self, lost_cb: LostCallback | None) -> Iterator[memoryview]:
        """Yield the samples present now; data_tail moves when the generator ends."""
        meta = self.meta
        head = meta[_HEAD_Q]
        tail = meta[_TAIL_Q]
        q = self.q
        data = self.data
        mask = self.mask
        ring_size = self.size
        chunk = self.chunk
        try:
            while tail < head:
                stop = head if head - tail <= chunk else tail + chunk
                while tail < stop:
                    off = tail & mask
                    h = q[off >> 3]
                    end = off + (h >> 48)
                    if h & 0xFFFFFFFF == 9 and end <= ring_size:  # PERF_RECORD_SAMPLE, not wrapped
                        tail += end - off
                        yield data[off + 12 : end]
                        continue
                    size = h >> 48
                    if size == 0:
                        return
                    tail += size
                    typ = h & 0xFFFFFFFF
                    if typ == PERF_RECORD_SAMPLE:
                        yield self._record(off, size)[12:]
                    elif typ == PERF_RECORD_LOST:
                        self._lost_at(off, lost_cb)
                # The record handed out last is done with once the next is asked for.
                meta[_TAIL_Q] = tail
        except ValueError:
            if self.closed:  # closed under a live generator: it just ends
                return
            raise
        finally:
            try:
                meta[_TAIL_Q] = tail
            except ValueError:  # closed under a live generator
                pass

    def batch(self, lost_cb: LostCallback | None, limit: int) -> PerfBatch:
        """:meth:`_batch`, empty when another thread closed the buffer meanwhile."""
        try:
            return self._batch(lost_cb, limit)
        except ValueError:
            if self.closed:
                return PerfBatch(self.cpu, b"")
            raise

    def _batch(self, lost_cb: LostCallback | None, limit: int) -> PerfBatch:
        """Copy the available records out in one go and free the ring space.

        One size throughout: a uniform batch.  Otherwise (LOST records, mixed
        sizes) offsets per sample, built per run of equal samples."""
        meta = self.meta
        head = meta[_HEAD_Q]
        tail = meta[_TAIL_Q]
        if head == tail:
            return PerfBatch(self.cpu, b"")
        start = tail & self.mask
        avail = head - tail
        ring_size = self.size
        h0 = self.q[start >> 3]
        stride = h0 >> 48
        if h0 & 0xFFFFFFFF == PERF_RECORD_SAMPLE and stride and avail % stride == 0:
            # Fast path: samples of one size back to back, every header equal
            # to the first.  Compare them all at C speed (memoryview ==
            # memoryview compares native items, no copies); on the ring before
            # copying, which also brings the lines into the cache for the copy.
            count = avail // stride
            if 0 < limit < count:
                count = limit
            nbytes = count * stride
            k = stride >> 3
            pattern = memoryview(array.array("Q", (h0,)) * count)
            q = self.q
            # Records wholly before the ring end, then the one that may
            # straddle it (its header never does), then those after it.
            n1 = min(count, (ring_size - start) // stride)
            i0 = start >> 3
            ok = q[i0 : i0 + n1 * k : k] == pattern[:n1]
            if ok and n1 < count:
                off = start + n1 * stride
                rest = count - n1
                if off < ring_size:
                    ok = q[off >> 3] == h0
                    off += stride
                    rest -= 1
                j0 = (off - ring_size) >> 3
                ok = ok and q[j0 : j0 + rest * k : k] == pattern[:rest]
            if ok:
                blob = self._copy(start, nbytes)
                meta[_TAIL_Q] = tail + nbytes
                return PerfBatch(self.cpu, blob, count=count, stride=stride)
        blob = self._copy(start, avail)
        # Samples of one size usually come in long runs between LOST records
        # (a producer that overran the ring): find each run's length with
        # strided compares in C and build its positions with range(), so
        # Python touches each run rather than each record.
        qv = memoryview(blob)[: avail & ~7].cast("Q")
        offsets: list[int] = []
        lengths: list[int] = []
        runs: list[tuple[int, int, int]] = []
        losses: list[int] = []
        patterns: dict[int, memoryview] = {}
        lost = 0
        pos = 0
        n = 0
        while pos + 8 <= avail:
            h = qv[pos >> 3]
            size = h >> 48
            if size == 0 or size & 7 or pos + size > avail:
                break
            typ = h & 0xFFFFFFFF
            if typ == PERF_RECORD_SAMPLE:
                most = (avail - pos) // size
                if limit > 0:
                    most = min(most, limit - n)
                m = self._run_length(qv, pos >> 3, size >> 3, h, most, patterns)
                offsets += range(pos + 12, pos + m * size, size)
                lengths += [size - 12] * m
                runs.append((pos, m, size))
                pos += m * size
                n += m
                if n == limit:
                    break
                continue
            if typ == PERF_RECORD_LOST and size >= 24:
                c = qv[(pos >> 3) + 2]
                lost += c
                losses.append(c)
            pos += size
        meta[_TAIL_Q] = tail + pos
        # Counted and reported once the ring space is released, so a raising
        # callback cannot make the same LOST record count twice.
        self.lost += lost
        if lost_cb is not None:
            for c in losses:
                lost_cb(self.cpu, c)
        return PerfBatch(self.cpu, blob, offsets=offsets, lengths=lengths, lost=lost, runs=runs)

    @staticmethod
    def _run_length(qv: memoryview, i0: int, k: int, h: int, most: int,
                    patterns: dict[int, memoryview]) -> int:
        """How many of the next ``most`` records (``k`` words apart from word
        ``i0``) have header ``h``; the first one is known to.  Galloping
        compares of strided views, O(most) work in C in total."""
        pat = patterns.get(h)
        if pat is None or len(pat) < most:
            pat = patterns[h] = memoryview(array.array("Q", (h,)) * max(most, 1))
        if qv[i0 : i0 + most * k : k] == pat[:most]:
            return most
        good, bad = 1, most  # records [0, good) match; some record in [good, bad) does not
        step = 1
        while bad - good > 1:
            mid = min(good + step, bad - 1)
            if qv[i0 + good * k : i0 + mid * k : k] == pat[: mid - good]:
                good = mid
                step *= 2
            else:
                bad = mid
                step = max(1, (bad - good) // 2)
        return good

    def _copy(self, start: int, nbytes: int) -> bytes:
        """``nbytes`` of stream from ring offset ``start``; the two parts of a wrap joined,
        so every record is contiguous in the result."""
        end = start + nbytes
        if end <= self.size:
            return self.data[start:end].tobytes()
        return b"".join((self.data[start:], self.data[: end - self.size]))

    # -- overwritable ------------------------------------------------------

    def pause(self, paused: bool) -> None:
        ioctl(self.fd.fileno(), PERF_EVENT_IOC_PAUSE_OUTPUT, int(paused),
              name="PERF_EVENT_IOC_PAUSE_OUTPUT")

    def read_backward(self) -> list[bytes]:
        """Samples written since the last snapshot that are still whole, oldest first.

        With write_backward the kernel moves ``data_head`` down and writes
        each record just below the previous one, so reading forward from
        ``data_head`` meets the newest record first.  Stop at the previous
        snapshot's head, at a never-written (zero) header, or before a record
        that reaches past one ring of data (partly overwritten).
        """
        head = self.meta[_HEAD_Q]
        stop = self.prev_head
        self.prev_head = head
        out: list[bytes] = []
        mask64 = 0xFFFFFFFFFFFFFFFF
        pos = head
        while pos != stop:
            done = (pos - head) & mask64
            if done + 8 > self.size:
                break
            off = pos & self.mask
            h = self.q[off >> 3]
            size = h >> 48
            if size == 0 or done + size > self.size:
                break
            if h & 0xFFFFFFFF == PERF_RECORD_SAMPLE:
                out.append(bytes(self._record(off, size)[12:]))
            pos = (pos + size) & mask64
        out.reverse()
        return out

    def close(self) -> None:
        self.closed = True  # first: a reader tripping over a released view ends quietly
        for v in ("q", "data", "meta"):
            view = getattr(self, v, None)
            if view is not None:
                view.release()
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                # Records (memoryview slices) are still referenced; the
                # mapping goes away with the last of them.
                pass
            self.mm = None
        self.fd.close()


class PerfBuffer(Closing):
    """Per-CPU perf rings over a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` (libbpf's ``perf_buffer``).

    ``map``: a Map or a map fd of type ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` (anything
    else raises OptionError naming its type); the buffer keeps its own duplicate of
    the fd, so the slots it set are cleared in that map even after the Map or its
    Object was closed, never in another map that got the same fd number.
    ``callback(cpu, data)`` is called per sample by :meth:`poll_callbacks` /
    :meth:`consume`; ``lost(cpu, count)`` for each ``PERF_RECORD_LOST``.
    ``page_cnt`` data pages per CPU (a power of two); a wake-up after every
    ``wakeup_events`` samples, or once ``watermark`` bytes are waiting.
    ``cpus``: which CPUs get a ring (default: the online ones below the
    map's size).  Use as a context manager or call :meth:`close`, which
    disables the events, clears the map slots it set, unmaps and closes.

    After :meth:`close` every call raises :class:`~pyebpf.errors.ClosedError`.
    ``close()`` may come from another thread: a consumer blocked in ``for cpu, data
    in pb``, :meth:`poll`, :meth:`wait` or :meth:`poll_callbacks` wakes at once and
    ends as if nothing more came.
    """

    _waiter: Waiter | None = None
    _label = "a map"

    def __init__(
        self,
        map: Any,
        callback: SampleCallback | None = None,
        lost: LostCallback | None = None,
        *,
        page_cnt: int = 8,
        wakeup_events: int = 1,
        watermark: int | None = None,
        cpus: list[int] | None = None,
        overwritable: bool = False,
    ) -> None:
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise PyebpfError(f"PerfBuffer: page_cnt {page_cnt} is not a power of two")
        if wakeup_events < 1:
            raise PyebpfError("PerfBuffer: wakeup_events must be >= 1")
        self.callback = callback
        self.lost_callback = lost
        self.overwritable = overwritable
        self._rings: list[_PerfRing] = []
        self._set: list[int] = []
        # our own duplicate of the map fd, type checked: the slots are set and cleared
        # through it (with 4-byte values: the kernel requires value_size 4 of this type)
        self._handle = h = open_map(map, MapType.PERF_EVENT_ARRAY, "PerfBuffer")
        self._label = h.label
        self._map_fd = h.fd.fileno()
        max_entries = h.max_entries
        from ..sys.bpf import map_delete_elem, map_update_elem

        self._delete = map_delete_elem
        try:
            if cpus is None:
                cpus = [c for c in online_cpus() if c < max_entries]
            elif any(c < 0 or c >= max_entries for c in cpus):
                raise PyebpfError(
                    f"PerfBuffer: cpus {cpus} do not fit {h.label} of {max_entries} entries")
            if h.value_size != 4:  # never hand the kernel a buffer shorter than a value
                raise PyebpfError(f"PerfBuffer: {h.label} has {h.value_size}-byte values, "
                                  "perf event fds are 4 bytes")
            self._waiter = Waiter(f"perf buffer on {h.label}")
            for cpu in cpus:
                ring = _PerfRing(cpu, page_cnt, wakeup_events, watermark, overwritable)
                self._rings.append(ring)
                P.perf_event_enable(ring.fd)
                map_update_elem(self._map_fd, struct.pack("<I", cpu),
                                struct.pack("<I", ring.fd.fileno()))
                self._set.append(cpu)
                if not overwritable:
                    self._waiter.register(ring.fd.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    # -- introspection -----------------------------------------------------

    @property
    def cpus(self) -> list[int]:
        """The CPUs that have a ring, in ring order."""
        return [r.cpu for r in self._rings]

    @property
    def lost_by_cpu(self) -> dict[int, int]:
        """Lost samples reported so far, per CPU."""
        return {r.cpu: r.lost for r in self._rings}

    @property
    def lost_total(self) -> int:
        """Lost samples reported so far, all CPUs."""
        return sum(r.lost for r in self._rings)

    @property
    def ring_size(self) -> int:
        """Bytes of data per CPU ring."""
        return self._rings[0].size if self._rings else 0

    def fileno(self) -> int:
        """The epoll fd over all rings (readable after a wake-up; for select/asyncio)."""
        self._live()
        assert self._waiter is not None
        return self._waiter.fileno()

    @property
    def closed(self) -> bool:
        w = self._waiter
        return w is None or w.closed

    def avail(self) -> int:
        """Unconsumed bytes over all rings."""
        return sum(r.avail() for r in self._live())

    def _live(self) -> list[_PerfRing]:
        w = self._waiter
        if w is None or w.closed:
            raise ClosedError(f"perf buffer on {self._label} is closed")
        return self._rings

    def _has_data(self) -> bool:
        return any(r.has_data() for r in self._consumable())

    def _consumable(self) -> list[_PerfRing]:
        rings = self._live()
        if self.overwritable:
            raise PyebpfError("PerfBuffer: an overwritable buffer is read with read_overwritable()")
        return rings

    # -- waiting -----------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s (None: forever) until some ring has data (False also
        when another thread closes the buffer meanwhile)."""
        rings = self._consumable()
        w = self._waiter
        assert w is not None
        return w.wait_until(lambda: any(r.has_data() for r in rings), timeout)

    # -- callback API ------------------------------------------------------

    def _cb(self) -> SampleCallback:
        if self.callback is None:
            raise PyebpfError("PerfBuffer: no callback given; iterate with poll() instead")
        return self.callback

    def consume(self, max_records: int | None = None) -> int:
        """Non-blocking: ``callback(cpu, data)`` for every available sample of every ring."""
        cb = self._cb()
        limit = max_records or -1
        n = 0
        for ring in self._consumable():
            n += ring.consume(cb, self.lost_callback, limit - n if limit > 0 else -1)
            if n == limit:
                break
        return n

    def consume_cpu(self, cpu: int, max_records: int | None = None) -> int:
        """Non-blocking consume of one CPU's ring (libbpf's perf_buffer__consume_buffer)."""
        return self._ring(cpu).consume(self._cb(), self.lost_callback, max_records or -1)

    def poll_callbacks(self, timeout: float | None = None, *, max_records: int | None = None) -> int:
        """Wait up to ``timeout`` s for data, then run :meth:`consume`; returns samples handled."""
        self._cb()
        if not self.wait(timeout):
            return 0
        return self.consume(max_records)

    def _ring(self, cpu: int) -> _PerfRing:
        for r in self._consumable():
            if r.cpu == cpu:
                return r
        raise PyebpfError(f"PerfBuffer: no ring for CPU {cpu}")

    # -- iterator API ------------------------------------------------------

    def poll(self, timeout: float | None = None) -> Iterator[tuple[int, memoryview]]:
        """Wait up to ``timeout`` s for data, then yield ``(cpu, data)`` for what is there."""
        if not self.wait(timeout):
            return iter(())
        return self._drain_iter()

    def _drain_iter(self) -> Iterator[tuple[int, memoryview]]:
        try:
            rings = self._consumable()
        except ClosedError:  # closed by another thread since the caller's wait
            return
        for ring in rings:
            if ring.closed:
                return
            cpu = ring.cpu
            for rec in ring.records(self.lost_callback):
                yield cpu, rec

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        """``(cpu, data)`` forever, blocking on epoll between bursts; the loop ends when
        the buffer is closed (from another thread, or from the loop's body)."""
        self._consumable()
        while True:
            yield from self._drain_iter()
            if self.closed or not self.wait(None):
                return

    # -- batch API ---------------------------------------------------------

    def consume_batch(self, max_records: int | None = None) -> list[PerfBatch]:
        """Non-blocking: copies of the available samples, one :class:`PerfBatch` per CPU with data."""
        out = []
        limit = max_records or -1
        for ring in self._consumable():
            if ring.has_data():
                b = ring.batch(self.lost_callback, limit)
                out.append(b)
                if limit > 0:
                    limit -= len(b)
                    if limit == 0:
                        break
        return out

    def poll_batch(self, timeout: float | None = None,
                   max_records: int | None = None) -> list[PerfBatch]:
        """Wait up to ``timeout`` s for data, then :meth:`consume_batch`."""
        if not self.wait(timeout):
            return []
        return self.consume_batch(max_records)

    # -- asyncio -----------------------------------------------------------

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` on the running event loop (a reader on the epoll fd)."""
        rings = self._consumable()
        w = self._waiter
        assert w is not None
        # A record that came after the caller last looked may have had its wake-up spent
        # already (perf_poll() reports a wake-up once): wait_until_async looks at the
        # rings before each wait
        return await w.wait_until_async(lambda: any(r.has_data() for r in rings), timeout)

    async def poll_async(self, timeout: float | None = None,
                         max_records: int | None = None) -> list[PerfBatch]:
        """Await data on the event loop, then return :meth:`consume_batch` (empty on timeout)."""
        if not await self.wait_async(timeout):
            return []
        return self.consume_batch(max_records)

    def __aiter__(self) -> AsyncIterator[tuple[int, memoryview]]:
        """``async for cpu, data in pb``: samples forever, waiting via the event loop."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[tuple[int, memoryview]]:
        self._consumable()
        while True:
            for cpu, rec in self._drain_iter():
                yield cpu, rec
            if self.closed or not await self.wait_async(None):
                return

    # -- overwritable ------------------------------------------------------

    def read_overwritable(self, *, pause: bool = True) -> list[tuple[int, bytes]]:
        """Snapshot of an overwritable buffer: ``(cpu, data)`` of the samples written since the
        previous snapshot that were not overwritten, oldest first within each CPU.

        Each ring is paused (``PERF_EVENT_IOC_PAUSE_OUTPUT``) while it is read,
        unless ``pause=False`` (then a record being overwritten during the read
        can come out torn).  Samples the program emits while paused are lost.
        """
        self._live()
        if not self.overwritable:
            raise PyebpfError("PerfBuffer: read_overwritable() needs overwritable=True")
        out: list[tuple[int, bytes]] = []
        for ring in self._live():
            if pause:
                ring.pause(True)
            try:
                out.extend((ring.cpu, rec) for rec in ring.read_backward())
            finally:
                if pause:
                    ring.pause(False)
        return out

    def pause(self, paused: bool = True) -> None:
        """Pause (or resume) output on every ring (``PERF_EVENT_IOC_PAUSE_OUTPUT``)."""
        for ring in self._live():
            ring.pause(paused)

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Wake any thread waiting on this buffer, disable the events, clear the map slots
        this buffer set (through its own fd of the map), unmap, close (idempotent; safe
        from another thread)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()
        rings, self._rings = self._rings, []
        handle = getattr(self, "_handle", None)
        for cpu in getattr(self, "_set", []):
            try:
                self._delete(self._map_fd, struct.pack("<I", cpu))
            except (OSError, PyebpfError):  # e.g. a frozen map; nothing else to undo
                pass
        self._set = []
        for ring in rings:
            try:
                P.perf_event_disable(ring.fd)
            except (OSError, PyebpfError):
                pass
            ring.close()
        if handle is not None:
            handle.fd.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<PerfBuffer on {self._label} closed>"
        mode = " overwritable" if self.overwritable else ""
        return (f"<PerfBuffer{mode} cpus={self.cpus} ring_size={self.ring_size} "
                f"lost_total={self.lost_total}>")
