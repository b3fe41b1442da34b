"""BPF iterators: IterLink and its output as a Python stream.

:func:`attach_iter` makes the link for an ``iter/<target>`` program; the link
parameters (``union bpf_iter_link_info``) narrow some targets: a map for the map
element iterators, a cgroup and a walk order for ``cgroup``, a thread, a process or a
pidfd for ``task``, ``task_file`` and ``task_vma``. Every :meth:`IterLink.open` runs
the iterator once more from the start."""

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
from .base import AttachError, Link, LinkInfo, ProgramLike, prog_fd, prog_label

__all__ = ["CGROUP_ITER_ORDERS", "IterLink", "IterStream", "attach_iter", "cgroup_order",
           "iter_info", "needs_parameter"]

# enum bpf_cgroup_iter_order
CGROUP_ITER_SELF_ONLY = 1
CGROUP_ITER_DESCENDANTS_PRE = 2
CGROUP_ITER_DESCENDANTS_POST = 3
CGROUP_ITER_ANCESTORS_UP = 4

# order names as libbpf/bpftool spell them (without the BPF_CGROUP_ITER_ prefix)
CGROUP_ITER_ORDERS = {
    "self_only": CGROUP_ITER_SELF_ONLY,
    "descendants_pre": CGROUP_ITER_DESCENDANTS_PRE,
    "descendants_post": CGROUP_ITER_DESCENDANTS_POST,
    "ancestors_up": CGROUP_ITER_ANCESTORS_UP,
}

# iterator targets that cannot run without a map (the kernel refuses the link otherwise)
MAP_TARGETS = frozenset({"bpf_map_elem", "bpf_sk_storage_map", "sockmap"})
# targets that a task (tid, pid or pidfd) narrows
TASK_TARGETS = frozenset({"task", "task_file", "task_vma"})
CGROUP_TARGETS = frozenset({"cgroup"})


def cgroup_order(order: int | str) -> int:
    """enum bpf_cgroup_iter_order from a name (``"descendants_pre"``, ...) or an int."""
    if isinstance(order, str):
        key = order.lower().removeprefix("bpf_cgroup_iter_")
        if key not in CGROUP_ITER_ORDERS:
            raise OptionError(f"unknown cgroup iterator order {order!r}; use one of "
                              f"{', '.join(CGROUP_ITER_ORDERS)} (or its number)")
        return CGROUP_ITER_ORDERS[key]
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise OptionError(f"cgroup iterator order must be a name or a number, not {order!r}")
    return order


def needs_parameter(target: str) -> str | None:
    """Why an ``iter/<target>`` program cannot be attached without parameters (None if it can):
    for auto-attach, which has none to give (libbpf fails there; skipping says why)."""
    if target in MAP_TARGETS:
        return f"the {target} iterator needs a map; attach it with attach_iter(prog, map=...)"
    if target in CGROUP_TARGETS:
        return (f"the {target} iterator needs an order; attach it with "
                "attach_iter(prog, cgroup=..., order=...)")
    return None


def _order_name(order: int) -> str | int:
    return next((k for k, v in CGROUP_ITER_ORDERS.items() if v == order), order)


def _fdint(x: Any) -> int:
    return int(getattr(x, "fd", x))


def iter_info(*, map: Any = None, cgroup_fd: int | None = None, cgroup_id: int = 0,
              order: int | str = 0, tid: int = 0, pid: int = 0, pid_fd: int = 0) -> bytes:
    """union bpf_iter_link_info bytes: a map fd, cgroup (order, fd, id) or task (tid, pid, pid_fd).

    ``map`` may be a Map-like object (``.fd``), an FD, or an int fd.
    """
    order = cgroup_order(order)
    if cgroup_fd is not None and cgroup_id:
        raise OptionError("give a cgroup (path or fd) or a cgroup_id, not both")
    if map is not None:
        if cgroup_fd is not None or cgroup_id or order or tid or pid or pid_fd:
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

    def info(self) -> LinkInfo:
        """The kernel's view of the link: ``target_name``, and the parameters it was made
        with (``map_id``; ``cgroup_id`` and ``order`` for cgroup; ``tid``/``pid`` for task*)."""
        li = super().info()
        target = li.details.get("target_name", "")
        if target in CGROUP_TARGETS or target in TASK_TARGETS:
            # bpf_link_info.iter: name ptr, name len, map_id, then the cgroup/task union at 16
            ex = bytes(_bpf.link_info(self._need_link_fd("query link info")).extra)
            if target in CGROUP_TARGETS:
                li.details["cgroup_id"] = int.from_bytes(ex[16:24], "little")
                li.details["order"] = _order_name(int.from_bytes(ex[24:28], "little"))
            else:
                li.details["tid"] = int.from_bytes(ex[16:20], "little")
                li.details["pid"] = int.from_bytes(ex[20:24], "little")
        return li

    def open(self, *, text: bool = False, encoding: str = "utf-8",
             buffering: int = io.DEFAULT_BUFFER_SIZE
             ) -> io.BufferedReader[IterStream] | io.TextIOWrapper[io.BufferedReader[IterStream]]:
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


def _open_cgroup(cgroup: Any) -> tuple[int, int | None]:
    """(fd, fd we opened and must close) for a cgroup given as a path, an fd or an object."""
    if isinstance(cgroup, (str, bytes, os.PathLike)):
        try:
            fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise OptionError(f"cannot open cgroup {os.fsdecode(cgroup)!r}: {e.strerror}; give "
                              "the path of a cgroup v2 directory (e.g. under "
                              "/sys/fs/cgroup or /sys/fs/cgroup/unified)") from None
        return fd, fd
    if isinstance(cgroup, bool):
        raise OptionError(f"cgroup must be a path, an fd or an object with one, not {cgroup!r}")
    if isinstance(cgroup, int):
        return cgroup, None
    for attr in ("fd", "fileno"):
        v = getattr(cgroup, attr, None)
        if v is not None:
            v = v() if callable(v) else v
            return int(v), None
    raise OptionError(f"cgroup must be a path, an fd or an object with one, not {cgroup!r}")


def _check_params(prog: Any, target: str, map: Any, cgroup_given: bool, order: int,
                  task_given: bool) -> None:
    """What a known target needs and accepts, checked before the kernel says EINVAL."""
    label = prog_label(prog)
    eat = getattr(prog, "expected_attach_type", None)
    if eat is not None and eat != AttachType.TRACE_ITER:
        name = getattr(eat, "name", eat)
        raise AttachError(f"not an iterator program (expected attach type {name}); only "
                          "SEC(\"iter/<target>\") programs make iterator links", program=label)
    if not target:
        return
    if target in MAP_TARGETS and map is None:
        raise AttachError(f"the {target} iterator needs a map: attach_iter(prog, map=...)",
                          program=label)
    if map is not None and target not in MAP_TARGETS:
        raise OptionError(f"the {target!r} iterator takes no map (only "
                          f"{', '.join(sorted(MAP_TARGETS))} do)")
    if task_given and target not in TASK_TARGETS:
        raise OptionError(f"tid/pid/pid_fd narrow only the {', '.join(sorted(TASK_TARGETS))} "
                          f"iterators, not {target!r}")
    if (cgroup_given or order) and target not in CGROUP_TARGETS:
        raise OptionError(f"cgroup/order apply only to the cgroup iterator, not {target!r}")
    if target in CGROUP_TARGETS and not order:
        raise AttachError("the cgroup iterator needs an order: attach_iter(prog, cgroup=..., "
                          f"order=...) with one of {', '.join(CGROUP_ITER_ORDERS)} "
                          "(without a cgroup it starts at the root)", program=label)


def attach_iter(prog: ProgramLike, map: Any = None, *, cgroup: str | int | Any = None,
                cgroup_fd: int | None = None, cgroup_id: int = 0, order: int | str = 0,
                tid: int = 0, pid: int = 0, pid_fd: int = 0) -> IterLink:
    """Create an iterator link for an ``iter/<target>`` program (BPF_LINK_CREATE(BPF_TRACE_ITER)).

    ``map`` is required by the bpf_map_elem, bpf_sk_storage_map and sockmap targets.
    The cgroup iterator takes ``cgroup`` (a cgroup v2 path, an fd, or an object with
    ``fd``/``fileno()``; ``cgroup_fd``/``cgroup_id`` also work) and a required ``order``:
    ``"self_only"``, ``"descendants_pre"``, ``"descendants_post"``, ``"ancestors_up"`` or
    the number. ``tid``, ``pid`` or ``pid_fd`` (one of them) narrow task, task_file and
    task_vma iterators to a thread or a process.
    """
    if cgroup is not None and cgroup_fd is not None:
        raise OptionError("give cgroup or cgroup_fd, not both")
    order_num = cgroup_order(order)
    target = getattr(getattr(prog, "spec", None), "attach_target", None) or ""
    _check_params(prog, target, map, cgroup is not None or cgroup_fd is not None or bool(cgroup_id),
                  order_num, bool(tid or pid or pid_fd))
    opened: int | None = None
    if cgroup is not None:
        cgroup_fd, opened = _open_cgroup(cgroup)
    try:
        info = iter_info(map=map, cgroup_fd=cgroup_fd, cgroup_id=cgroup_id, order=order_num,
                         tid=tid, pid=pid, pid_fd=pid_fd)
        try:
            fd = _bpf.link_create(prog_fd(prog), None, AttachType.TRACE_ITER, iter_info=info)
        except SyscallError as e:
            raise AttachError(_explain(e, target, map, order_num, cgroup_fd, cgroup_id,
                                       (tid, pid, pid_fd)),
                              program=prog_label(prog), cause=e) from e
    finally:
        if opened is not None:
            os.close(opened)  # the link holds its own reference to the cgroup
    return IterLink(fd, prog, target=target)


def _explain(e: SyscallError, target: str, map: Any, order: int, cgroup_fd: int | None,
             cgroup_id: int, task: tuple[int, int, int]) -> str:
    msg = f"cannot create iterator link{f' for {target!r}' if target else ''}: {e}"
    if target in MAP_TARGETS and map is None:
        return msg + f"; the {target} iterator needs a map: attach_iter(prog, map=...)"
    if e.errno == _errno.EPERM:
        return msg + "; iterator links need CAP_BPF and CAP_PERFMON (run as root)"
    if target in CGROUP_TARGETS and e.errno in (_errno.EINVAL, _errno.EBADF, _errno.ENOENT):
        if e.errno == _errno.ENOENT and cgroup_id:
            return msg + f"; no cgroup has id {cgroup_id}"
        if e.errno == _errno.EBADF:
            return msg + f"; fd {cgroup_fd} is not a cgroup directory"
        return msg + (f"; order {_order_name(order)!r} is not one this kernel knows"
                      if e.errno == _errno.EINVAL else "")
    if target in TASK_TARGETS and task[2] and e.errno == _errno.EBADF:
        return msg + f"; fd {task[2]} is not a pidfd (os.pidfd_open(pid))"
    if e.errno == _errno.EINVAL and not target:
        return msg + "; is this an iter/<target> program, and does the target take these parameters?"
    return msg
