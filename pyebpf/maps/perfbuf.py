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
import itertools
import mmap
import select
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .._log import get_logger
from ..errors import PyebpfError, SyscallError
from ..sys import perf as P
from ..sys.fd import Closing
from ..sys.mm import epoll_create, mmap_fd
from ..sys.syscall import ioctl

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
_MAP_TYPE_PERF_EVENT_ARRAY = 4
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


def _fileno(fd: Any) -> int:
    if isinstance(fd, int):
        return fd
    if hasattr(fd, "fileno"):
        return int(fd.fileno())
    return int(fd)


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
            parts = []
            for start, count, stride in self._runs:
                size = stride - _SAMPLE_HDR
                if st.size > size or order == "@":
                    parts = None
                    break
                whole = struct.Struct(f"{order}{_SAMPLE_HDR}x{body}{size - st.size}x")
                if whole.size != stride:
                    parts = None
                    break
                parts.append(whole.iter_unpack(mv[start : start + count * stride]))
            if parts is not None:
                return itertools.chain.from_iterable(parts)
        return (st.unpack_from(self.data, s) for s in self._offsets)

    def __repr__(self) -> str:
        kind = f"uniform size={self.record_size}" if self.uniform else "variable sizes"
        return f"<PerfBatch cpu={self.cpu} {self._count} records, {kind}, lost={self.lost}>"


class _PerfRing:
    """One CPU's event and mmap'd ring; the reading algorithms, no waiting."""

    __slots__ = (
        "cpu", "fd", "mm", "meta", "data", "q", "size", "mask", "lost", "overwritable",
        "prev_head", "chunk",
    )

    def __init__(self, cpu: int, page_cnt: int, wakeup_events: int, watermark: int | None,
                 overwritable: bool) -> None:
        self.cpu = cpu
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
        return self.meta[_HEAD_Q] != self.meta[_TAIL_Q]

    def avail(self) -> int:
        return (self.meta[_HEAD_Q] - self.meta[_TAIL_Q]) & 0xFFFFFFFFFFFFFFFF

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
        finally:
            try:
                meta[_TAIL_Q] = tail
            except ValueError:  # closed under a live generator
                pass

    def batch(self, lost_cb: LostCallback | None, limit: int) -> PerfBatch:
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

    ``map``: a Map (``.fd`` and ``.max_entries``) or a map fd (not owned).
    ``callback(cpu, data)`` is called per sample by :meth:`poll_callbacks` /
    :meth:`consume`; ``lost(cpu, count)`` for each ``PERF_RECORD_LOST``.
    ``page_cnt`` data pages per CPU (a power of two); a wake-up after every
    ``wakeup_events`` samples, or once ``watermark`` bytes are waiting.
    ``cpus``: which CPUs get a ring (default: the online ones below the
    map's size).  Use as a context manager or call :meth:`close`, which
    disables the events, clears the map slots it set, unmaps and closes.
    """

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
        self._ep: select.epoll | None = None
        self._map = map
        self._map_fd = _fileno(map.fd) if hasattr(map, "fd") else _fileno(map)
        max_entries = getattr(map, "max_entries", None)
        if max_entries is None or not hasattr(map, "fd"):
            from ..sys.bpf import map_info

            info = map_info(self._map_fd)
            if info.type != _MAP_TYPE_PERF_EVENT_ARRAY:
                raise PyebpfError(
                    f"PerfBuffer: fd {self._map_fd} is a map of type {info.type}, "
                    "not a perf_event_array")
            max_entries = int(info.max_entries)
        if cpus is None:
            cpus = [c for c in online_cpus() if c < max_entries]
        elif any(c < 0 or c >= max_entries for c in cpus):
            raise PyebpfError(f"PerfBuffer: cpus {cpus} do not fit a map of {max_entries} entries")
        from ..sys.bpf import map_delete_elem, map_update_elem

        self._delete = map_delete_elem
        self._set: list[int] = []
        try:
            self._ep = epoll_create("perf buffer wake-ups")
            for cpu in cpus:
                ring = _PerfRing(cpu, page_cnt, wakeup_events, watermark, overwritable)
                self._rings.append(ring)
                P.perf_event_enable(ring.fd)
                map_update_elem(self._map_fd, struct.pack("<I", cpu),
                                struct.pack("<I", ring.fd.fileno()))
                self._set.append(cpu)
                if not overwritable:
                    self._ep.register(ring.fd.fileno(), select.EPOLLIN)
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
        if self._ep is None:
            raise ValueError("perf buffer is closed")
        return self._ep.fileno()

    def avail(self) -> int:
        """Unconsumed bytes over all rings."""
        return sum(r.avail() for r in self._live())

    def _live(self) -> list[_PerfRing]:
        if self._ep is None:
            raise ValueError("perf buffer is closed")
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
        """Wait up to ``timeout`` s (None: forever) until some ring has data."""
        rings = self._consumable()
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self._ep is not None
        ep = self._ep
        while True:
            if any(r.has_data() for r in rings):
                return True
            if deadline is None:
                ep.poll(-1)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ep.poll(left)

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
        for ring in self._consumable():
            cpu = ring.cpu
            for rec in ring.records(self.lost_callback):
                yield cpu, rec

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        """``(cpu, data)`` forever, blocking on epoll between bursts."""
        while True:
            yield from self._drain_iter()
            self.wait(None)

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

    async def _readable(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            # A record that came after the caller last looked may have had its wake-up
            # spent already (perf_poll() reports a wake-up once; the loop polls our
            # epoll fd when it registers it): the record is in the ring, so look again.
            if self._has_data():
                return
            await fut
        finally:
            loop.remove_reader(fd)
            assert self._ep is not None
            self._ep.poll(0)  # take the events off the ready list

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` on the running event loop (a reader on the epoll fd)."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._has_data():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._readable(), left)
            except asyncio.TimeoutError:
                return self._has_data()

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
        while True:
            for ring in self._consumable():
                cpu = ring.cpu
                for rec in ring.records(self.lost_callback):
                    yield cpu, rec
            await self.wait_async(None)

    # -- overwritable ------------------------------------------------------

    def read_overwritable(self, *, pause: bool = True) -> list[tuple[int, bytes]]:
        """Snapshot of an overwritable buffer: ``(cpu, data)`` of the samples written since the
        previous snapshot that were not overwritten, oldest first within each CPU.

        Each ring is paused (``PERF_EVENT_IOC_PAUSE_OUTPUT``) while it is read,
        unless ``pause=False`` (then a record being overwritten during the read
        can come out torn).  Samples the program emits while paused are lost.
        """
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
        """Disable the events, clear the map slots this buffer set, unmap, close (idempotent)."""
        rings, self._rings = self._rings, []
        for cpu in getattr(self, "_set", []):
            try:
                self._delete(self._map_fd, struct.pack("<I", cpu))
            except (OSError, PyebpfError):  # the map may be gone already
                pass
        self._set = []
        for ring in rings:
            try:
                P.perf_event_disable(ring.fd)
            except (OSError, PyebpfError):
                pass
            ring.close()
        if self._ep is not None:
            self._ep.close()
            self._ep = None

    def __repr__(self) -> str:
        if self._ep is None:
            return "<PerfBuffer closed>"
        mode = " overwritable" if self.overwritable else ""
        return (f"<PerfBuffer{mode} cpus={self.cpus} ring_size={self.ring_size} "
                f"lost_total={self.lost_total}>")
