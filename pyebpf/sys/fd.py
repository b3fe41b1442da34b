"""FD: ownership of one kernel file descriptor (bpf object, perf event, ...), and what
an fd refers to (:func:`fd_kind`), so that opening an object by fd, pin or id can check
that it got the kind it asked for."""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import weakref
from typing import TypeVar

from .._log import get_logger
from ..errors import ClosedError, OptionError

__all__ = ["FD", "KIND_NAMES", "eventfd", "fd_kind", "kind_name", "open_fd_count", "require_kind"]

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

    __slots__ = ("_fd", "kind", "label", "__weakref__")

    def __init__(self, fd: int, kind: str = "fd", label: str | None = None):
        global _open
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        if fd < 3:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = new
        self._fd = fd
        self.kind = kind
        # what owns it, for the closed error (e.g. "map 'counts'")
        self.label = label
        with _lock:
            _open += 1
            _live.add(self)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The raw descriptor; raises :class:`~pyebpf.errors.ClosedError` (a ValueError)
        when closed."""
        fd = self._fd
        if fd < 0:
            raise ClosedError(f"{self.label} is closed" if self.label
                              else f"{self.kind} file descriptor is closed")
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
        return FD(fcntl.fcntl(self.fileno(), fcntl.F_DUPFD_CLOEXEC, 3), self.kind, self.label)

    def __repr__(self) -> str:
        return f"<FD {self.kind} {'closed' if self._fd < 0 else self._fd}>"


# anon inode names the kernel gives its fds (anon_inode_getfd callers) -> our kind names
_ANON = {
    "bpf-map": "map", "bpf-prog": "prog", "bpf_link": "link", "bpf-link": "link", "btf": "btf",
    "bpf-token": "token", "bpf_iter": "iter", "[perf_event]": "perf_event",
    "[eventpoll]": "epoll", "[eventfd]": "eventfd", "[timerfd]": "timerfd",
    "[signalfd]": "signalfd", "[pidfd]": "pidfd", "[io_uring]": "io_uring",
}

# How each kind is named in messages.
KIND_NAMES = {
    "map": "a BPF map", "prog": "a BPF program", "link": "a BPF link", "btf": "a BTF object",
    "token": "a BPF token", "iter": "a BPF iterator", "perf_event": "a perf event",
    "epoll": "an epoll instance", "eventfd": "an eventfd", "file": "a regular file",
    "directory": "a directory", "socket": "a socket", "pipe": "a pipe",
    "device": "a device", "unknown": "an unknown kind of file",
}


def fd_kind(fd: int | FD) -> str:
    """What ``fd`` refers to: "map", "prog", "link", "btf", "token", "iter", "perf_event",
    "epoll", "eventfd", "socket", "pipe", "file", "directory", "device", or
    "anon:<name>" for another anonymous inode ("unknown" when /proc cannot tell).

    Read from the name the kernel gives the fd (``/proc/self/fd/N``): no syscall on the
    object itself, so it is safe on any fd. A closed or invalid fd raises OptionError."""
    n = fd.fileno() if isinstance(fd, FD) else int(fd)
    if n < 0:
        raise OptionError(f"fd {n} is not a file descriptor")
    try:
        target = os.readlink(f"/proc/self/fd/{n}")
    except FileNotFoundError:
        raise OptionError(f"fd {n} is not open") from None
    except OSError:
        return _kind_by_stat(n)
    return _kind_of_link(target, n)


def _kind_of_link(target: str, n: int) -> str:
    if target.startswith("anon_inode:"):
        name = target[len("anon_inode:"):]
        return _ANON.get(name, f"anon:{name}")
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    return _kind_by_stat(n)


def _kind_by_stat(n: int) -> str:
    import stat

    try:
        mode = os.fstat(n).st_mode
    except OSError:
        raise OptionError(f"fd {n} is not open") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unknown"


def kind_name(kind: str) -> str:
    """``fd_kind``'s answer in words ("a BPF program")."""
    if kind.startswith("anon:"):
        return f"an anonymous inode {kind[5:]!r}"
    return KIND_NAMES.get(kind, kind)


def require_kind(fd: int | FD, kind: str, *, source: str | None = None,
                 hint: str = "", verb: str | None = None) -> None:
    """Raise OptionError unless ``fd`` is of ``kind`` ("map", "prog", "link", "btf", ...).

    ``source`` says where the fd came from in the message (e.g. "the pin
    /sys/fs/bpf/x" ... "holds"); the default is "fd N" ... "is" (``verb`` overrides).
    A kind that /proc cannot tell passes."""
    got = fd_kind(fd)
    if got == kind or got == "unknown":
        return
    where = source or f"fd {fd.fileno() if isinstance(fd, FD) else int(fd)}"
    holds = verb or ("holds" if source else "is")
    msg = f"{where} {holds} {kind_name(got)}, not {kind_name(kind)}"
    raise OptionError(msg + (f"; {hint}" if hint else ""))


def eventfd(initval: int = 0) -> FD:
    """A non-blocking, close-on-exec eventfd (wakes threads blocked in epoll)."""
    return FD(os.eventfd(initval, os.EFD_CLOEXEC | os.EFD_NONBLOCK), "eventfd")


@atexit.register
def _close_all() -> None:
    for fd in list(_live):
        fd.close()
