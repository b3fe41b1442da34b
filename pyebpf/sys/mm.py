"""mmap and epoll, through the syscall layer like every other kernel call.

Map memory (mmapable arrays, arenas, global data), ring buffers and perf rings are
mapped here, and event loops get their epoll instances here, so that a failure is a
:class:`~pyebpf.errors.SyscallError` with an errno and a hint, and every call shows in
the ``pyebpf.sys`` DEBUG trace. Only set-up goes through here: the hot paths (reads
of mapped memory, ``epoll.poll``) stay direct.
"""

from __future__ import annotations

import errno as _errno
import mmap as _mmap
import select

from ..errors import SyscallError
from .syscall import log

__all__ = ["PAGE_SIZE", "epoll_create", "mmap_fd"]

PAGE_SIZE = _mmap.PAGESIZE

_PROT = {_mmap.PROT_READ: "r", _mmap.PROT_WRITE: "w"}


def _prot_name(prot: int) -> str:
    return "".join(c for bit, c in _PROT.items() if prot & bit) or "none"


def _mmap_hint(err: int, prot: int, what: str) -> str:
    if err == _errno.EPERM:
        if prot & _mmap.PROT_WRITE:
            return (f"{what}: the kernel refuses a writable mapping here (a frozen or read-only "
                    "map, or a page only the kernel may write)")
        return f"{what}: mapping refused (perf rings: raise /proc/sys/kernel/perf_event_mlock_kb)"
    if err == _errno.EINVAL:
        return f"{what}: the object cannot be mapped this way (not mmapable, or a bad size/offset)"
    if err == _errno.ENOMEM:
        return f"{what}: out of memory or address space for the mapping"
    return what


def mmap_fd(fd: int, length: int, prot: int, *, offset: int = 0, what: str = "mmap") -> _mmap.mmap:
    """``mmap(MAP_SHARED)`` of a kernel object's fd; failures raise SyscallError."""
    try:
        mm = _mmap.mmap(fd, length, _mmap.MAP_SHARED, prot, offset=offset)
    except OSError as e:
        err = e.errno or _errno.EIO
        log.debug("mmap fd=%d len=%d prot=%s offset=%d (%s) -> errno %d", fd, length,
                  _prot_name(prot), offset, what, err)
        raise SyscallError(err, "mmap", _mmap_hint(err, prot, what),
                           detail=f"fd {fd}, {length} bytes at {offset}") from None
    log.debug("mmap fd=%d len=%d prot=%s offset=%d (%s)", fd, length, _prot_name(prot),
              offset, what)
    return mm


def epoll_create(what: str = "epoll") -> select.epoll:
    """A new epoll instance (close-on-exec); failures raise SyscallError."""
    try:
        ep = select.epoll()
    except OSError as e:
        err = e.errno or _errno.EIO
        raise SyscallError(err, "epoll_create1", f"{what}: out of file descriptors or memory"
                           if err in (_errno.EMFILE, _errno.ENFILE, _errno.ENOMEM) else what
                           ) from None
    log.debug("epoll_create1 -> fd %d (%s)", ep.fileno(), what)
    return ep
