"""Socket-level BPF attachment (SO_ATTACH_BPF and friends) and network namespace entry.

Every setsockopt that attaches or detaches a program goes through :func:`setsockopt_int`,
so failures become :class:`~pyebpf.errors.SyscallError` with a hint and each call shows
in the ``pyebpf.sys`` DEBUG trace, as ``bpf()`` calls do. :func:`run_in_netns` runs a
function on a short-lived thread that joined another network namespace: the kernel
reads "the caller's namespace" for BPF_PROG_ATTACH of flow dissectors, netfilter links
and new netlink sockets, and a thread's membership ends with the thread.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._log import DEBUG
from ..errors import SyscallError
from .syscall import errno_hint, ioctl, libc, log

__all__ = [
    "SOL_SOCKET",
    "SO_ATTACH_BPF",
    "SO_ATTACH_REUSEPORT_EBPF",
    "SO_DETACH_BPF",
    "SO_DETACH_REUSEPORT_BPF",
    "SO_LOCK_FILTER",
    "attach_bpf",
    "attach_reuseport_bpf",
    "detach_bpf",
    "detach_reuseport_bpf",
    "file_identity",
    "netns_identity",
    "run_in_netns",
    "setns",
    "setsockopt_int",
]

SOL_SOCKET = 1
SO_DETACH_FILTER = 27
SO_DETACH_BPF = SO_DETACH_FILTER
SO_LOCK_FILTER = 44
SO_ATTACH_BPF = 50
SO_ATTACH_REUSEPORT_EBPF = 52
SO_DETACH_REUSEPORT_BPF = 68
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)

_OPT_NAMES = {
    SO_DETACH_BPF: "SO_DETACH_BPF",
    SO_LOCK_FILTER: "SO_LOCK_FILTER",
    SO_ATTACH_BPF: "SO_ATTACH_BPF",
    SO_ATTACH_REUSEPORT_EBPF: "SO_ATTACH_REUSEPORT_EBPF",
    SO_DETACH_REUSEPORT_BPF: "SO_DETACH_REUSEPORT_BPF",
}

T = TypeVar("T")


def _sockopt_hint(err: int, opt: int) -> str:
    if err == _errno.ENOTSOCK:
        return "the file descriptor is not a socket"
    if err == _errno.EBADF:
        return "the socket file descriptor is not open"
    if err == _errno.EPERM and opt in (SO_ATTACH_BPF, SO_DETACH_BPF):
        return "the socket's filter is locked (SO_LOCK_FILTER was set on it)"
    if err == _errno.EINVAL and opt == SO_ATTACH_BPF:
        return "the fd is not a BPF socket filter program (BPF_PROG_TYPE_SOCKET_FILTER)"
    if err == _errno.EINVAL and opt == SO_ATTACH_REUSEPORT_EBPF:
        return ("the socket does not have SO_REUSEPORT set (set it before bind), or the fd is not "
                "a sk_reuseport or socket filter program")
    if err == _errno.ENOENT and opt in (SO_DETACH_BPF, SO_DETACH_REUSEPORT_BPF):
        return "no program is attached to this socket"
    if err == _errno.ENOPROTOOPT:
        return "this kernel or socket family does not know the option"
    if err == _errno.ENOMEM:
        return "out of socket memory (net.core.optmem_max)"
    return errno_hint(err, "setsockopt")


def setsockopt_int(fd: int, level: int, opt: int, value: int) -> None:
    """setsockopt(fd, level, opt, &value, 4) on a raw fd; raises SyscallError with a hint."""
    v = ctypes.c_int(value)
    name = _OPT_NAMES.get(opt, f"optname {opt}")
    ret = libc.setsockopt(ctypes.c_int(fd), ctypes.c_int(level), ctypes.c_int(opt),
                          ctypes.byref(v), ctypes.c_uint(4))
    if ret < 0:
        err = ctypes.get_errno()
        if log.isEnabledFor(DEBUG):
            log.debug("setsockopt(%d, %d, %s, %d) = -1 %s", fd, level, name, value,
                      _errno.errorcode.get(err, err))
        raise SyscallError(err, "setsockopt", _sockopt_hint(err, opt), detail=name)
    if log.isEnabledFor(DEBUG):
        log.debug("setsockopt(%d, %d, %s, %d) = 0", fd, level, name, value)


def attach_bpf(sock_fd: int, prog_fd: int) -> None:
    """SO_ATTACH_BPF: make ``prog_fd`` the socket's filter (replacing any previous one)."""
    setsockopt_int(sock_fd, SOL_SOCKET, SO_ATTACH_BPF, prog_fd)


def detach_bpf(sock_fd: int) -> None:
    """SO_DETACH_BPF: remove the socket's filter."""
    setsockopt_int(sock_fd, SOL_SOCKET, SO_DETACH_BPF, 0)


def attach_reuseport_bpf(sock_fd: int, prog_fd: int) -> None:
    """SO_ATTACH_REUSEPORT_EBPF: the program that picks a socket of the reuseport group."""
    setsockopt_int(sock_fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog_fd)


def detach_reuseport_bpf(sock_fd: int) -> None:
    """SO_DETACH_REUSEPORT_BPF: remove the reuseport group's program."""
    setsockopt_int(sock_fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


def file_identity(fd: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of an open fd, or None if it is closed; tells whether a number still
    names the same socket (socket inodes are unique while the socket lives)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def netns_identity(fd: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace fd, or None if ``fd`` is not a network namespace."""
    try:
        # NS_GET_NSTYPE: nsfs answers with the namespace's CLONE_NEW* flag, other files fail
        if ioctl(fd, NS_GET_NSTYPE, name="NS_GET_NSTYPE") != CLONE_NEWNET:
            return None
    except SyscallError:
        return None
    return file_identity(fd)


def current_netns_identity() -> tuple[int, int]:
    """(st_dev, st_ino) of the calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread; raises SyscallError."""
    ret = libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype))
    if ret != 0:
        err = ctypes.get_errno()
        if log.isEnabledFor(DEBUG):
            log.debug("setns(%d, %#x) = -1 %s", fd, nstype, _errno.errorcode.get(err, err))
        hint = ("entering a namespace needs CAP_SYS_ADMIN" if err == _errno.EPERM else
                "the fd is not a namespace of that type" if err == _errno.EINVAL else
                errno_hint(err, "setns"))
        raise SyscallError(err, "setns", hint)
    if log.isEnabledFor(DEBUG):
        log.debug("setns(%d, %#x) = 0", fd, nstype)


def run_in_netns(netns_fd: int | None, fn: Callable[[], T]) -> T:
    """``fn()`` with the caller's network namespace being the one ``netns_fd`` refers to.

    None, or the caller's own namespace, runs ``fn`` right here; otherwise a new thread
    enters the namespace (setns) and runs it, and its result or exception comes back.
    """
    if netns_fd is None or netns_identity(netns_fd) == current_netns_identity():
        return fn()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            setns(netns_fd)
            out["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="pyebpf-netns")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]  # type: ignore[no-any-return]
