"""FD: ownership of one kernel file descriptor (bpf object, perf event, ...)."""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import weakref
from typing import TypeVar

from .._log import get_logger

__all__ = ["FD", "open_fd_count"]

_log = get_logger("pyebpf.sys")

_lock = threading.Lock()
_open = 0
# Live FD objects, so the ones still open at interpreter exit can be closed in order.
_live: weakref.WeakSet[FD] = weakref.WeakSet()


def open_fd_count() -> int:
    """Number of FD objects in this process that are still open (for leak tests)."""
    return _open


_C = TypeVar("_C", bound="Closing")


class Closing:
    """Mixin for objects that own kernel resources: ``with`` and garbage collection
    both end in ``close()``, which subclasses implement idempotently."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from a finalizer (interpreter may be shutting down)
            pass


class FD(Closing):
    """Owns one file descriptor: closed by ``close()``, ``with``, garbage collection or exit.

    Descriptors 0-2 are moved above 2 first: the kernel reads fd 0 as "none" in
    several bpf_attr fields, and stdio slots are not ours to keep.
    """

    __slots__ = ("_fd", "kind", "__weakref__")

    def __init__(self, fd: int, kind: str = "fd"):
        global _open
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        if fd < 3:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = new
        self._fd = fd
        self.kind = kind
        with _lock:
            _open += 1
            _live.add(self)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The raw descriptor; raises ValueError when closed."""
        fd = self._fd
        if fd < 0:
            raise ValueError(f"{self.kind} file descriptor is closed")
        return fd

    def __int__(self) -> int:
        return self.fileno()

    __index__ = __int__

    def close(self) -> None:
        """Close the descriptor; calling it again does nothing."""
        global _open
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        with _lock:
            _open -= 1
            _live.discard(self)
        try:
            os.close(fd)
        except OSError as e:  # EBADF means someone closed it behind our back; nothing to undo
            _log.debug("close(%d) failed: %s", fd, e)

    def detach(self) -> int:
        """Give up ownership and return the raw descriptor (the caller must close it)."""
        global _open
        fd = self.fileno()
        self._fd = -1
        with _lock:
            _open -= 1
            _live.discard(self)
        return fd

    def dup(self) -> FD:
        """A new FD owning a duplicate (close-on-exec) of this descriptor."""
        return FD(fcntl.fcntl(self.fileno(), fcntl.F_DUPFD_CLOEXEC, 3), self.kind)

    def __repr__(self) -> str:
        return f"<FD {self.kind} {'closed' if self._fd < 0 else self._fd}>"


@atexit.register
def _close_all() -> None:
    for fd in list(_live):
        fd.close()
