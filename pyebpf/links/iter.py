"""BPF iterators: IterLink and its output as a Python stream."""

from __future__ import annotations

import errno as _errno
import io
import os
import struct
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys.fd import FD
from ..uapi import AttachType
from .base import AttachError, Link, prog_fd, prog_label

__all__ = ["IterLink", "IterStream", "attach_iter", "iter_info"]

# enum bpf_cgroup_iter_order
CGROUP_ITER_SELF_ONLY = 1
CGROUP_ITER_DESCENDANTS_PRE = 2
CGROUP_ITER_DESCENDANTS_POST = 3
CGROUP_ITER_ANCESTORS_UP = 4

# iterator targets that cannot run without a map (the kernel refuses the link otherwise)
MAP_TARGETS = frozenset({"bpf_map_elem", "bpf_sk_storage_map", "sockmap"})


def _fdint(x: Any) -> int:
    return int(getattr(x, "fd", x))


def iter_info(*, map: Any = None, cgroup_fd: int | None = None, cgroup_id: int = 0,
              order: int = 0, tid: int = 0, pid: int = 0, pid_fd: int = 0) -> bytes:
    """union bpf_iter_link_info bytes: a map fd, cgroup (order, fd, id) or task (tid, pid, pid_fd).

    ``map`` may be a Map-like object (``.fd``), an FD, or an int fd.
    """
    if map is not None:
        if cgroup_fd is not None or cgroup_id or tid or pid or pid_fd:
            raise OptionError("an iterator takes a map, a cgroup or a task, not several")
        return struct.pack("<I", _fdint(map))
    if cgroup_fd is not None or cgroup_id or order:
        if tid or pid or pid_fd:
            raise OptionError("an iterator takes a cgroup or a task, not both")
        return struct.pack("<IIQ", order, int(cgroup_fd or 0), cgroup_id)
    if tid or pid or pid_fd:
        if sum(bool(x) for x in (tid, pid, pid_fd)) > 1:
            raise OptionError("give one of tid, pid, pid_fd")
        return struct.pack("<III", tid, pid, pid_fd)
    return b""


class IterStream(io.RawIOBase):
    """The readable side of one iterator run (BPF_ITER_CREATE); owns its fd."""

    def __init__(self, fd: FD) -> None:
        super().__init__()
        self._fd = fd

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd.fileno()

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        while True:
            try:
                return os.readv(self._fd.fileno(), [mv])
            except InterruptedError:
                continue
            except OSError as e:
                raise SyscallError(e.errno or _errno.EIO, "read(iter)",
                                   "the iterator program failed or its output overflowed") from None

    def close(self) -> None:
        if not self.closed:
            self._fd.close()
        super().close()


class IterLink(Link):
    """An iterator link: each :meth:`open` starts a new run whose output is a Python stream."""

    kind = "iter"
    updatable = True

    def open(self, *, text: bool = False, encoding: str = "utf-8",
             buffering: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader | io.TextIOWrapper:
        """A new iterator run (BPF_ITER_CREATE) as a buffered binary (or text) stream.

        Use it as a context manager; closing the stream closes its fd.
        """
        fd = _bpf.iter_create(self._need_link_fd("open the iterator"))
        raw = IterStream(fd)
        buf = io.BufferedReader(raw, buffer_size=max(buffering, 1))
        if text:
            return io.TextIOWrapper(buf, encoding=encoding, errors="replace")
        return buf

    def read_all(self) -> bytes:
        """Run the iterator once and return everything it printed."""
        with self.open() as f:
            return f.read()  # type: ignore[return-value]

    def read_text(self, encoding: str = "utf-8") -> str:
        """Run the iterator once and return its output decoded."""
        return self.read_all().decode(encoding, "replace")


def attach_iter(prog: Any, map: Any = None, *, cgroup_fd: int | None = None, cgroup_id: int = 0,
                order: int = 0, tid: int = 0, pid: int = 0, pid_fd: int = 0) -> IterLink:
    """Create an iterator link for an ``iter/<target>`` program (BPF_LINK_CREATE(BPF_TRACE_ITER)).

    ``map`` is required by the bpf_map_elem, bpf_sk_storage_map and sockmap targets;
    the cgroup/task parameters narrow cgroup and task iterators.
    """
    info = iter_info(map=map, cgroup_fd=cgroup_fd, cgroup_id=cgroup_id, order=order,
                     tid=tid, pid=pid, pid_fd=pid_fd)
    target = getattr(getattr(prog, "spec", None), "attach_target", None) or ""
    try:
        fd = _bpf.link_create(prog_fd(prog), None, AttachType.TRACE_ITER, iter_info=info)
    except SyscallError as e:
        msg = f"cannot create iterator link{f' for {target!r}' if target else ''}: {e}"
        if target in MAP_TARGETS and map is None:
            msg += f"; the {target} iterator needs a map: attach_iter(prog, map=...)"
        raise AttachError(msg, program=prog_label(prog), cause=e) from e
    return IterLink(fd, prog, target=target)
