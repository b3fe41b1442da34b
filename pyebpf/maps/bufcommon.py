"""What the event buffers (RingBuffer, PerfBuffer, UserRingBuffer) share: opening their
map (kind and type checked, the fd duplicated so the buffer never acts through an fd
number it does not own) and waiting in epoll in a way that another thread's ``close()``
interrupts.

Closing while another thread waits: ``close()`` signals an eventfd that sits in the
same epoll set, so a thread blocked in ``wait()`` wakes at once and returns as if its
timeout had passed; the epoll and eventfd fds are closed by the last thread to leave
``wait()`` (never under a waiting thread, whose fd number could otherwise be reused).
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._log import get_logger
from ..errors import ClosedError, OptionError, PyebpfError
from ..sys.fd import FD, eventfd, require_kind
from ..sys.mm import epoll_create
from ..uapi import MapType

__all__ = ["MapHandle", "MapLike", "MapOrFd", "Waiter", "open_map", "readable", "wait_deadline", "wait_for"]

# The mmaps and epoll registrations are logged with the syscall layer's messages, so
# the "pyebpf.sys" log shows everything done to the kernel.
_log = get_logger("pyebpf.sys")

# What to use for each buffer map type, for the wrong-type message.
_READ_WITH = {
    MapType.RINGBUF: "read it with pyebpf.RingBuffer",
    MapType.USER_RINGBUF: "write it with pyebpf.UserRingBuffer",
    MapType.PERF_EVENT_ARRAY: "read it with pyebpf.PerfBuffer",
}


class MapLike(Protocol):
    """What RingBuffer needs of a map object (pyebpf's Map has both)."""

    @property
    def fd(self) -> Any: ...  # an int or an object with fileno()

    @property
    def max_entries(self) -> int: ...


# A Map, or a ring buffer map's fd (int, or an object with fileno() such as pyebpf.sys.FD).
MapOrFd = MapLike | int | Any


def _type_name(t: int) -> str:
    try:
        return MapType(t).name.lower()  # as bpftool names them
    except ValueError:
        return f"type-{t}"


def _fileno(fd: Any) -> int:
    if isinstance(fd, int):
        return fd
    if hasattr(fd, "fileno"):
        return int(fd.fileno())
    return int(fd)


class MapHandle:
    """A buffer's own duplicate of its map's fd, with what the kernel says of the map."""

    __slots__ = ("fd", "name", "type", "max_entries", "value_size", "id")

    def __init__(self, fd: FD, info: Any) -> None:
        self.fd = fd
        self.name: str = info.name.decode("latin-1")
        self.type = int(info.type)
        self.max_entries = int(info.max_entries)
        self.value_size = int(info.value_size)
        self.id = int(info.id)

    @property
    def label(self) -> str:
        return f"map {self.name!r}" if self.name else f"map id {self.id}"


def open_map(map_or_fd: Any, want: int, who: str) -> MapHandle:
    """Duplicate the fd of ``map_or_fd`` (a Map, an FD or an int) and check that it is a
    BPF map of type ``want``; ``who`` (e.g. "RingBuffer") starts the error messages."""
    from ..sys.bpf import map_info

    src = map_or_fd.fd if hasattr(map_or_fd, "fd") and not isinstance(map_or_fd, int) else map_or_fd
    if isinstance(src, FD):
        owned = src.dup()  # a closed Map raises ClosedError naming it
    else:
        try:
            n = _fileno(src)
        except (TypeError, ValueError) as e:
            if isinstance(e, PyebpfError):
                raise
            raise OptionError(f"{who}: expected a Map or a map fd, got {map_or_fd!r}") from None
        try:
            owned = FD(fcntl.fcntl(n, fcntl.F_DUPFD_CLOEXEC, 3), "map")
        except OSError:
            raise OptionError(f"{who}: fd {n} is not open") from None
    try:
        require_kind(owned, "map", source=f"{who}: fd {_fileno(src)}", verb="is")
        info = map_info(owned)
        h = MapHandle(owned, info)
        owned.label = h.label
        if h.type != want:
            how = _READ_WITH.get(MapType(h.type), "") if h.type in _READ_WITH else ""
            got = _type_name(h.type)
            raise OptionError(f"{who}: {h.label} is {'an' if got[0] in 'aeio' else 'a'} "
                              f"{got} map, not a {_type_name(want)}" + (f"; {how}" if how else ""))
    except BaseException:
        owned.close()
        raise
    return h


def wait_deadline(timeout: float | None) -> float | None:
    return None if timeout is None or timeout < 0 else time.monotonic() + timeout


class Waiter:
    """An epoll set over kernel fds and an eventfd that :meth:`close` signals.

    :meth:`wait` returns the ready kernel fds, or ``[]`` on timeout and when the waiter
    was closed meanwhile (callers look at :attr:`closed`)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.closed = False
        self._lock = threading.Lock()
        self._waiting = 0
        self.ep: select.epoll | None = epoll_create(what)
        try:
            self._efd: FD | None = eventfd()
            self._efd_no = self._efd.fileno()
            self.ep.register(self._efd_no, select.EPOLLIN)
        except BaseException:
            self.ep.close()
            self.ep = None
            raise

    def register(self, fd: int, events: int = select.EPOLLIN) -> None:
        if self.ep is None or self.closed:
            raise ClosedError(f"{self.what}: closed")
        self.ep.register(fd, events)
        _log.debug("epoll_ctl(ADD) epfd=%d fd=%d events=%#x", self.ep.fileno(), fd, events)

    def unregister(self, fd: int) -> None:
        if self.ep is not None and not self.closed:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def fileno(self) -> int:
        """The epoll fd (readable when a watched fd is, or once the waiter is closed)."""
        ep = self.ep
        if ep is None or self.closed:
            raise ClosedError(f"{self.what}: closed")
        return ep.fileno()

    def _enter(self) -> select.epoll | None:
        with self._lock:
            if self.closed or self.ep is None:
                return None
            self._waiting += 1
            return self.ep

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1
            last = self.closed and self._waiting == 0
        if last:
            self._release()

    def wait(self, timeout: float | None) -> list[int]:
        """Kernel fds that are ready, waiting up to ``timeout`` s (None: forever)."""
        ep = self._enter()
        if ep is None:
            return []
        t = -1 if timeout is None or timeout < 0 else timeout
        try:
            while True:
                try:
                    events = ep.poll(t)
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries already
                    continue
        finally:
            self._leave()
        efd = self._efd_no
        return [fd for fd, _ in events if fd != efd]

    def wait_until(self, has_data: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``has_data()`` or ``timeout``; False also once closed. epoll can wake
        without new data (level-triggered readiness left from an earlier wake-up)."""
        deadline = wait_deadline(timeout)
        while True:
            if self.closed:
                return False
            if has_data():
                return True
            if deadline is None:
                self.wait(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.wait(left)

    async def wait_async(self, timeout: float | None,
                         has_data: Callable[[], bool] | None = None) -> None:
        """Until the epoll fd is readable (or closed), on the running event loop;
        ``has_data`` is looked at once the loop watches the fd."""
        import asyncio  # imported lazily: ~15 ms that sync users don't need

        ep = self._enter()
        if ep is None:
            return
        try:
            await asyncio.wait_for(readable(ep.fileno(), has_data), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._leave()
        self.wait(0)  # drain the epoll ready list

    async def wait_until_async(self, has_data: Callable[[], bool], timeout: float | None) -> bool:
        """:meth:`wait_until` on the running event loop (a reader on the epoll fd)."""
        deadline = wait_deadline(timeout)
        while True:
            if self.closed:
                return False
            if has_data():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await self.wait_async(left, has_data)

    def close(self) -> None:
        """Wake every waiter; the fds close when the last one has left (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            now = self._waiting == 0
            if self._efd is not None:
                try:
                    os.eventfd_write(self._efd_no, 1)
                except OSError:  # counter full: waiters are being woken anyway
                    pass
        if now:
            self._release()

    def _release(self) -> None:
        ep, self.ep = self.ep, None
        efd, self._efd = self._efd, None
        if ep is not None:
            ep.close()
        if efd is not None:
            efd.close()


async def readable(fd: int, has_data: Callable[[], bool] | None = None) -> None:
    """Until ``fd`` is readable (or ``has_data()`` once the loop watches it), on the
    running event loop."""
    import asyncio  # imported lazily: ~15 ms that sync users don't need

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        # A record that came after the caller last looked may have had its wake-up spent
        # already (perf_poll() reports a wake-up once, and the loop polls the fd when it
        # registers it): the record is in the ring, so look again.
        if has_data is not None and has_data():
            return
        await fut
    finally:
        loop.remove_reader(fd)


def wait_for(waiter: Waiter, has_data: Callable[[], bool], timeout: float | None,
             interval: float | None) -> bool:
    """Wait for ``has_data()``: through epoll, or every ``interval`` s when given
    (False once the waiter is closed).

    The periodic mode does not depend on the kernel's wake-ups (a producer may pass
    BPF_RB_NO_WAKEUP, or wake-ups may be too costly at high rates); ``interval=0`` spins.
    """
    if waiter.closed:
        return False
    if has_data():
        return True
    if timeout == 0:
        return False
    if interval is None:
        return waiter.wait_until(has_data, timeout)
    deadline = wait_deadline(timeout)
    while True:
        if interval:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return not waiter.closed and has_data()
                time.sleep(min(interval, left))
            else:
                time.sleep(interval)
        elif deadline is not None and time.monotonic() >= deadline:
            return not waiter.closed and has_data()
        if waiter.closed:
            return False
        if has_data():
            return True
