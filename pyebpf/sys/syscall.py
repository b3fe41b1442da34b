"""The ctypes chokepoint: every bpf(), perf_event_open() and ioctl() goes through here.

``libc.syscall`` is called untyped (no argtypes) with prebuilt attr buffers: that
is measurably cheaper than a declared prototype or fresh ctypes objects per call.
Failures become :class:`~pyebpf.errors.SyscallError` with a hint; every call is
logged at DEBUG under ``pyebpf.sys`` (the Python ``strace -e bpf``).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
from enum import IntEnum
from typing import Any

from .._log import DEBUG, get_logger
from ..errors import SyscallError

__all__ = [
    "NR_BPF",
    "NR_PERF_EVENT_OPEN",
    "PERM_HINT",
    "Cmd",
    "bpf",
    "errno_hint",
    "ioctl",
    "libc",
    "log",
    "raw_syscall",
    "sys_perf_event_open",
]

log = get_logger("pyebpf.sys")

# (bpf, perf_event_open) per machine
_NR = {
    "x86_64": (321, 298),
    "amd64": (321, 298),
    "aarch64": (280, 241),
    "arm64": (280, 241),
}
try:
    NR_BPF, NR_PERF_EVENT_OPEN = _NR[os.uname().machine.lower()]
except KeyError:  # pragma: no cover - only x86_64/aarch64 are supported
    NR_BPF, NR_PERF_EVENT_OPEN = -1, -1

libc = ctypes.CDLL(None, use_errno=True)
# Untyped on purpose (see module docstring); arguments must be ctypes objects or small ints.
raw_syscall = libc.syscall
get_errno = ctypes.get_errno

ENOTSUPP = 524  # kernel-internal "not supported", leaks to user space from some commands


class Cmd(IntEnum):
    """enum bpf_cmd."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34
    PROG_BIND_MAP = 35
    TOKEN_CREATE = 36
    PROG_STREAM_READ_BY_FD = 37

    @property
    def cname(self) -> str:
        return "BPF_" + self.name


_CMD_NAMES = {c.value: c.cname for c in Cmd}


def cmd_name(cmd: int) -> str:
    return _CMD_NAMES.get(cmd, f"BPF_CMD_{cmd}")


PERM_HINT = "run as root, or grant CAP_BPF (plus CAP_PERFMON for tracing, CAP_NET_ADMIN for networking programs)"
_POLICY = (
    "this process already holds CAP_BPF and CAP_SYS_ADMIN, so the kernel or a security policy "
    "(LSM, lockdown) refused this program or map type here; "
)
_CAP_SYS_ADMIN, _CAP_BPF = 21, 39


def _effective_caps() -> int:
    # read afresh on every EPERM (an error path): a forked child may have dropped privileges
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _perm_hint() -> str:
    # "run as root" misleads a root caller: name the policy instead, keep the caps advice last
    caps = _effective_caps()
    if caps >> _CAP_BPF & 1 and caps >> _CAP_SYS_ADMIN & 1:
        return _POLICY + "otherwise " + PERM_HINT
    return PERM_HINT

_LOAD_CMDS = {Cmd.PROG_LOAD, Cmd.BTF_LOAD}
_MAP_WRITE = {Cmd.MAP_UPDATE_ELEM, Cmd.MAP_UPDATE_BATCH}


def errno_hint(err: int, cmd: int | str) -> str:
    """A short explanation of what ``err`` usually means for ``cmd`` (a Cmd or a name)."""
    c = cmd if isinstance(cmd, int) else None
    if err == _errno.EPERM:
        if c in (Cmd.MAP_UPDATE_ELEM, Cmd.MAP_DELETE_ELEM, Cmd.MAP_UPDATE_BATCH, Cmd.MAP_DELETE_BATCH):
            return "the map is frozen or read-only for user space (BPF_F_RDONLY / BPF_MAP_FREEZE), or " + PERM_HINT
        return _perm_hint()
    if err == _errno.E2BIG:
        return (
            "the attr has non-zero bytes past the fields this kernel knows (a newer field used on an "
            "older kernel), or a size is too big (instructions, entries, key/value size)"
        )
    if err == _errno.ENOSPC:
        if c in _LOAD_CMDS:
            return "the verifier log buffer is too small (the library grows it and retries)"
        if c in _MAP_WRITE:
            return "the map is full (max_entries reached)"
        return "no space left (a size or count limit was reached)"
    if err == _errno.ENOENT:
        if c in (Cmd.MAP_LOOKUP_ELEM, Cmd.MAP_DELETE_ELEM, Cmd.MAP_LOOKUP_AND_DELETE_ELEM):
            return "no such key"
        if c == Cmd.OBJ_GET:
            return "no such pinned object"
        if c in (Cmd.PROG_GET_FD_BY_ID, Cmd.MAP_GET_FD_BY_ID, Cmd.LINK_GET_FD_BY_ID, Cmd.BTF_GET_FD_BY_ID):
            return "no object with that id (it may have been freed)"
        if c == Cmd.RAW_TRACEPOINT_OPEN:
            return "no such raw tracepoint"
        return "not found"
    if err == _errno.EEXIST:
        return "the key already exists (BPF_NOEXIST) or the object is already attached/pinned"
    if err == _errno.EBADF:
        return "a file descriptor in the attr is not open or is of the wrong kind"
    if err == _errno.EACCES:
        if c == Cmd.PROG_LOAD:
            return "the verifier rejected the program (see the log)"
        return "permission denied"
    if err == _errno.EINVAL:
        if c == Cmd.PROG_LOAD:
            return "invalid program or attributes (see the verifier log; check prog type, expected_attach_type and flags)"
        if c == Cmd.MAP_CREATE:
            return "invalid map attributes (type, key/value size, max_entries or flags; some types need BTF)"
        if c == Cmd.LINK_CREATE:
            return "this program/attach type pair cannot be linked this way"
        return "invalid argument (an attr field is wrong for this command or object)"
    if err == ENOTSUPP:
        return "the kernel does not support this operation for this object type (ENOTSUPP)"
    if err == _errno.EOPNOTSUPP:
        return "operation not supported by this kernel or configuration"
    if err == _errno.EFAULT:
        return "the kernel could not access a user buffer (bad pointer or size)"
    if err == _errno.ENOMEM:
        return "out of memory (memory cgroup limit, or RLIMIT_MEMLOCK on kernels before 5.11)"
    if err == _errno.EBUSY:
        return "the object is busy (already attached, or in use)"
    return ""


_ENUM_FIELDS: dict[str, Any] = {}


def _enum_fields() -> dict[str, Any]:
    if not _ENUM_FIELDS:
        from ..uapi import AttachType, MapType, ProgType

        _ENUM_FIELDS.update(map_type=MapType, prog_type=ProgType, attach_type=AttachType,
                            expected_attach_type=AttachType)
    return _ENUM_FIELDS


# Enum fields whose 0 the command does not mean as a value: BPF_PROG_LOAD's
# expected_attach_type is optional for most program types, so 0 there is "unset".
# attach_type in BPF_PROG_ATTACH/LINK_CREATE/PROG_QUERY is always meant and keeps its name.
_UNSET_WHEN_ZERO = frozenset({"expected_attach_type"})


def _fmt_attr(attr: Any) -> str:
    """Non-zero fields of a ctypes attr, for the DEBUG trace."""
    parts = []
    enums = _enum_fields()
    for f in attr._fields_:
        name = f[0]
        if name.startswith("_"):
            continue
        v = getattr(attr, name)
        if name in _UNSET_WHEN_ZERO and v == 0:
            continue  # 0 is "not set" here, not the enum's first member (CGROUP_INET_INGRESS)
        if name in enums and isinstance(v, int):
            try:
                parts.append(f"{name}={enums[name](v).name}")
            except ValueError:
                parts.append(f"{name}={v}")
            continue
        if isinstance(v, bytes):
            v = v.rstrip(b"\0")
            if v:
                parts.append(f"{name}={v.decode('latin-1')!r}")
        elif isinstance(v, int):
            if v:
                parts.append(f"{name}={v:#x}" if v > 0xFFFF else f"{name}={v}")
        elif hasattr(v, "_length_"):
            raw = bytes(v)
            if any(raw):
                parts.append(f"{name}={raw.hex()}")
    return " ".join(parts)


def bpf(cmd: int, attr: Any, size: int, *, hint: str | None = None, detail: str = "") -> int:
    """bpf(cmd, &attr, size); returns the result, raises SyscallError on failure."""
    ret: int = raw_syscall(NR_BPF, cmd, ctypes.byref(attr), size)
    if ret < 0:
        err = get_errno()
        if log.isEnabledFor(DEBUG):
            log.debug("bpf(%s, {%s}, %d) = -1 %s", cmd_name(cmd), _fmt_attr(attr), size, _errno.errorcode.get(err, err))
        raise SyscallError(err, cmd_name(cmd), errno_hint(err, cmd) if hint is None else hint, detail=detail)
    if log.isEnabledFor(DEBUG):
        log.debug("bpf(%s, {%s}, %d) = %d", cmd_name(cmd), _fmt_attr(attr), size, ret)
    return ret


def bpf_errno(cmd: int, attr: Any, size: int) -> tuple[int, int]:
    """bpf() without raising: (result, errno); errno is 0 on success. For probes and retry loops."""
    ret: int = raw_syscall(NR_BPF, cmd, ctypes.byref(attr), size)
    err = get_errno() if ret < 0 else 0
    if log.isEnabledFor(DEBUG):
        res = f"-1 {_errno.errorcode.get(err, err)}" if ret < 0 else str(ret)
        log.debug("bpf(%s, {%s}, %d) = %s", cmd_name(cmd), _fmt_attr(attr), size, res)
    return ret, err


def sys_perf_event_open(attr: Any, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(&attr, pid, cpu, group_fd, flags); raises SyscallError."""
    ret: int = raw_syscall(
        NR_PERF_EVENT_OPEN, ctypes.byref(attr), ctypes.c_int(pid), ctypes.c_int(cpu),
        ctypes.c_int(group_fd), ctypes.c_ulong(flags),
    )
    if ret < 0:
        err = get_errno()
        if log.isEnabledFor(DEBUG):
            log.debug("perf_event_open({%s}, pid=%d, cpu=%d, group_fd=%d, flags=%#x) = -1 %s",
                      _fmt_attr(attr), pid, cpu, group_fd, flags, _errno.errorcode.get(err, err))
        raise SyscallError(err, "perf_event_open", _perf_hint(err, attr))
    if log.isEnabledFor(DEBUG):
        log.debug("perf_event_open({%s}, pid=%d, cpu=%d, group_fd=%d, flags=%#x) = %d",
                  _fmt_attr(attr), pid, cpu, group_fd, flags, ret)
    return ret


def _perf_hint(err: int, attr: Any) -> str:
    if err == _errno.ENOENT:
        if getattr(attr, "type", None) == 0:
            return "no such hardware event (this machine has no hardware PMU; use a software event)"
        return "no such event or PMU (the tracepoint/probe id or PMU type does not exist)"
    if err in (_errno.EACCES, _errno.EPERM):
        return "run as root or with CAP_PERFMON (see /proc/sys/kernel/perf_event_paranoid)"
    if err == _errno.E2BIG:
        return "perf_event_attr.size is larger than this kernel knows and the extra bytes are not zero"
    if err == _errno.EINVAL:
        return "invalid perf_event_attr (type/config/sample settings) or cpu/pid combination"
    if err == _errno.ENODEV:
        return "the event is not supported on this CPU/PMU"
    if err == _errno.EOPNOTSUPP:
        return "the PMU does not support this mode (e.g. sampling)"
    return errno_hint(err, "perf_event_open")


def ioctl(fd: int, request: int, arg: int = 0, *, name: str = "ioctl", hint: str = "") -> int:
    """ioctl(fd, request, arg) with an integer argument; raises SyscallError."""
    try:
        ret = fcntl.ioctl(fd, request, arg)
    except OSError as e:
        err = e.errno or 0
        if log.isEnabledFor(DEBUG):
            log.debug("ioctl(%d, %s, %#x) = -1 %s", fd, name, arg, _errno.errorcode.get(err, err))
        raise SyscallError(err, name, hint or errno_hint(err, name)) from None
    if log.isEnabledFor(DEBUG):
        log.debug("ioctl(%d, %s, %#x) = %d", fd, name, arg, ret)
    return ret
