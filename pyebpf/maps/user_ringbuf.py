"""Producer of ``BPF_MAP_TYPE_USER_RINGBUF``: user space writes, a BPF program drains.

The inverse of :mod:`pyebpf.maps.ringbuf` (libbpf's ``user_ring_buffer__*``).
The layout is the same as a ring buffer's (kernel/bpf/ringbuf.c), but the
rights are swapped: page 0 (``consumer_pos``) is mapped read-only, because
the kernel owns it, and page 1 (``producer_pos``) plus the data area, which is
mapped twice in a row so a sample that wraps past the end is one contiguous
slice, are mapped read-write.

Protocol: a sample is an 8-byte header ``u32 len; u32 pad`` and the payload,
rounded up to 8 bytes.  :meth:`UserRingBuffer.reserve` writes the header with
the ``BUSY`` bit and only then stores the new ``producer_pos``;
:meth:`~UserRingBuffer.submit` clears ``BUSY`` (and :meth:`~UserRingBuffer.discard`
sets ``DISCARD``) after the payload is written.  ``bpf_user_ringbuf_drain``
in a program stops at the first ``BUSY`` sample, skips ``DISCARD`` ones, and
moves ``consumer_pos`` past what it took, which frees the space.

Memory ordering: every position and header is stored with one aligned 8/4
byte store through a memoryview; on x86_64 (TSO) the stores are seen in
program order, which is what the kernel's acquire loads need.

Waiting: the kernel wakes the map's poll queue (``EPOLLOUT``) after a drain
that took at least one sample (unless the program passed
``BPF_RB_NO_WAKEUP``).  :meth:`UserRingBuffer.reserve_blocking` waits on an
edge-triggered epoll for those wake-ups, and re-checks the ring at least every
0.1 s, since an edge reaches only one of several waiters.

One object may be shared by threads: reserving and committing take a lock,
so samples from several threads never overlap.  Several *processes*
producing into one map need their own coordination, as in libbpf.
"""

from __future__ import annotations

import mmap
import select
import threading
import time

from ..errors import ClosedError, OptionError, SyscallError
from ..sys.fd import Closing
from ..sys.mm import mmap_fd
from ..uapi import MapType
from .bufcommon import MapHandle, MapOrFd, Waiter, open_map
from .ringbuf import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ

__all__ = ["UserRingBuffer"]

_PAGE = mmap.PAGESIZE
_MAP_TYPE_USER_RINGBUF = 31
_FLAG_BITS = BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT
# Longest single wait before re-checking the ring: an edge-triggered wake-up goes
# to one waiter, so threads (or coroutines) sharing this producer could miss one.
_RECHECK = 0.1


def _resolve(map_or_fd: MapOrFd, size: int | None) -> tuple[int, int, MapHandle]:
    """(fd, data size, handle owning that fd): type checked first, fd duplicated."""
    h = open_map(map_or_fd, MapType.USER_RINGBUF, "UserRingBuffer")
    if size is None:
        size = h.max_entries
    if size <= 0 or size & (size - 1) or size % _PAGE:
        h.fd.close()
        raise OptionError(
            f"UserRingBuffer: size {size} is not a power-of-2 multiple of the page size ({_PAGE})"
        )
    return h.fd.fileno(), size, h


class UserRingBuffer(Closing):
    """User-space producer for one ``BPF_MAP_TYPE_USER_RINGBUF`` map.

    ``UserRingBuffer(obj.maps["urb"])`` takes a Map, or a raw fd / FD, of type
    ``BPF_MAP_TYPE_USER_RINGBUF`` (anything else raises OptionError naming its type);
    the buffer keeps its own duplicate of the fd.  Reserve a sample, fill the
    returned writable ``memoryview``, then :meth:`submit` or :meth:`discard` it::

        with UserRingBuffer(obj.maps["urb"]) as urb:
            s = urb.reserve(8)
            if s is not None:
                s[:] = (42).to_bytes(8, "little")
                urb.submit(s)

    Samples are committed to the kernel individually; the program sees them
    in reservation order and stops at the first one that is still reserved.

    After :meth:`close` every call raises :class:`~pyebpf.errors.ClosedError`; a
    thread blocked in :meth:`reserve_blocking` when another thread closes the
    buffer wakes and gets None, as on a timeout.
    """

    _prod_mm: mmap.mmap | None = None
    _waiter: Waiter | None = None
    _label = "a map"

    def __init__(self, map: MapOrFd, *, size: int | None = None) -> None:
        fd, size, keep = _resolve(map, size)
        self._label = keep.label
        self._fd = fd
        self._size = size
        self._mask = size - 1
        self._keep: MapHandle | None = keep
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[memoryview, int]] = {}
        self._cons_mm: mmap.mmap | None = None
        self._prod_mm: mmap.mmap | None = None
        self._waiter = None
        try:
            # The kernel refuses a writable mapping of the consumer page.
            self._cons_mm = mmap_fd(fd, _PAGE, mmap.PROT_READ,
                                    what="user ring buffer consumer page")
            self._prod_mm = mmap_fd(fd, _PAGE + 2 * size, mmap.PROT_READ | mmap.PROT_WRITE,
                                    offset=_PAGE, what="user ring buffer producer page and data")
        except SyscallError:
            self._unmap()
            keep.fd.close()
            raise
        self._cons_q = memoryview(self._cons_mm)[:8].cast("Q")
        prod = memoryview(self._prod_mm)
        self._prod_q = prod[:8].cast("Q")
        self._data = prod[_PAGE:]
        self._hdr = self._data.cast("I")
        prod.release()

    # -- properties ----------------------------------------------------------

    @property
    def size(self) -> int:
        """Size of the data area in bytes (the map's max_entries)."""
        return self._size

    @property
    def fd(self) -> int:
        """The user ring buffer map's fd."""
        return self._fd

    @property
    def consumer_pos(self) -> int:
        return self._q()[0][0]

    @property
    def producer_pos(self) -> int:
        return self._q()[1][0]

    def free(self) -> int:
        """Bytes the producer may still reserve (headers and padding included)."""
        cons_q, prod_q = self._q()
        return self._size - (prod_q[0] - cons_q[0])

    def pending(self) -> int:
        """Samples reserved and not yet submitted or discarded."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._prod_mm is None

    def _q(self) -> tuple[memoryview, memoryview]:
        if self._prod_mm is None:
            raise ClosedError(f"user ring buffer on {self._label} is closed")
        return self._cons_q, self._prod_q

    # -- producing -----------------------------------------------------------

    def reserve(self, size: int) -> memoryview | None:
        """A writable ``size``-byte sample, or None if the ring has no room now.

        Raises :class:`~pyebpf.errors.OptionError` for a size that can never
        fit (negative, flag bits set, or larger than the ring).
        """
        if size < 0 or size & _FLAG_BITS:
            raise OptionError(f"UserRingBuffer: invalid sample size {size}")
        total = (size + BPF_RINGBUF_HDR_SZ + 7) & -8
        if total > self._size:
            raise OptionError(
                f"UserRingBuffer: a {size}-byte sample needs {total} bytes, "
                f"the ring holds {self._size}"
            )
        with self._lock:
            cons_q, prod_q = self._q()
            cons = cons_q[0]
            prod = prod_q[0]
            if self._size - (prod - cons) < total:
                return None
            off = prod & self._mask
            # Header first (BUSY), then publish the position: the kernel
            # never sees a position covering an unwritten header.
            self._hdr[off >> 2] = size | BPF_RINGBUF_BUSY_BIT
            prod_q[0] = prod + total
            start = off + BPF_RINGBUF_HDR_SZ
            sample = self._data[start : start + size]
            self._pending[id(sample)] = (sample, off >> 2)
            return sample

    def reserve_blocking(self, size: int, timeout: float | None = None) -> memoryview | None:
        """:meth:`reserve`, waiting up to ``timeout`` s (None: forever) for room.

        Room appears when a program drains samples; the wait uses the kernel's
        ``EPOLLOUT`` wake-ups.  Returns None on timeout.
        """
        sample = self.reserve(size)
        if sample is not None or timeout == 0:
            return sample
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        waiter = self._epoll()
        while True:
            if deadline is None:
                left = _RECHECK
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None if waiter.closed else self.reserve(size)
            waiter.wait(min(left, _RECHECK))
            if waiter.closed:  # closed by another thread while we waited
                return None
            sample = self.reserve(size)
            if sample is not None:
                return sample

    async def reserve_async(self, size: int, timeout: float | None = None) -> memoryview | None:
        """:meth:`reserve_blocking` on the running asyncio loop (the epoll fd as a reader)."""
        sample = self.reserve(size)
        if sample is not None or timeout == 0:
            return sample
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        waiter = self._epoll()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None if waiter.closed else self.reserve(size)
            await waiter.wait_async(_RECHECK if left is None else min(left, _RECHECK))
            if waiter.closed:
                return None
            sample = self.reserve(size)
            if sample is not None:
                return sample

    def fileno(self) -> int:
        """An epoll fd that becomes readable when a drain frees space (for select/asyncio)."""
        return self._epoll().fileno()

    def _epoll(self) -> Waiter:
        with self._lock:
            self._q()  # raises when closed
            if self._waiter is None:
                w = Waiter(f"user ring buffer on {self._label}: space wake-ups")
                try:
                    # Edge-triggered: level-triggered EPOLLOUT stays set while any
                    # byte is free and would spin when a sample needs more.  A
                    # drain's wake-up after our failed reserve is queued even if
                    # we are not yet waiting, so no wake-up is missed.
                    w.register(self._fd, select.EPOLLOUT | select.EPOLLET)
                except BaseException:
                    w.close()
                    raise
                self._waiter = w
            return self._waiter

    def _commit(self, sample: memoryview, discard: bool) -> None:
        with self._lock:
            self._q()  # closed: the sample was given back with the ring
            entry = self._pending.pop(id(sample), None)
            if entry is None or entry[0] is not sample:
                if entry is not None:
                    self._pending[id(sample)] = entry
                raise OptionError("UserRingBuffer: not a pending sample of this ring "
                                  "(already submitted or discarded?)")
            idx = entry[1]
            ln = self._hdr[idx] & ~BPF_RINGBUF_BUSY_BIT
            if discard:
                ln |= BPF_RINGBUF_DISCARD_BIT
            self._hdr[idx] = ln
        try:
            sample.release()  # writing a committed sample is a bug: make it fail
        except BufferError:
            pass

    def submit(self, sample: memoryview) -> None:
        """Hand a reserved sample to the kernel."""
        self._commit(sample, False)

    def discard(self, sample: memoryview) -> None:
        """Give a reserved sample back: the draining program skips it."""
        self._commit(sample, True)

    def write(self, data: bytes | bytearray | memoryview, timeout: float | None = 0) -> bool:
        """Reserve, copy ``data`` in and submit; False if no room came within ``timeout``
        (0: don't wait, None: wait forever)."""
        n = len(data)
        sample = self.reserve(n) if timeout == 0 else self.reserve_blocking(n, timeout)
        if sample is None:
            return False
        sample[:] = data
        self.submit(sample)
        return True

    # -- teardown ------------------------------------------------------------

    def _unmap(self) -> None:
        for mm in (self._cons_mm, self._prod_mm):
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    # Samples are still referenced; the mapping goes with them.
                    pass
        self._cons_mm = self._prod_mm = None

    def close(self) -> None:
        """Unmap the ring and close the epoll fd (idempotent); the map fd stays open.

        Samples still reserved stay BUSY, which stops the program's drain there."""
        if self._prod_mm is None and self._waiter is None:
            return
        with self._lock:
            if self._waiter is not None:
                self._waiter.close()  # wakes a thread in reserve_blocking
                self._waiter = None
            for sample, _ in self._pending.values():
                try:
                    sample.release()
                except BufferError:
                    pass
            self._pending.clear()
            for name in ("_cons_q", "_prod_q", "_hdr", "_data"):
                mv = getattr(self, name, None)
                if mv is not None:
                    mv.release()
            self._unmap()
            keep, self._keep = self._keep, None
            if isinstance(keep, MapHandle):
                keep.fd.close()

    def __repr__(self) -> str:
        if self._prod_mm is None:
            return f"<UserRingBuffer on {self._label} closed>"
        return (f"<UserRingBuffer fd={self._fd} size={self._size} "
                f"consumer_pos={self.consumer_pos} producer_pos={self.producer_pos}>")
