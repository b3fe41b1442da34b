"""Cgroup attach: BPF_LINK_CREATE links and BPF_PROG_ATTACH (multi/override/replace), and queries.

libbpf's ``bpf_program__attach_cgroup`` makes a link (always multi mode, updatable,
pinnable). ``bpf_prog_attach_opts`` is the older interface: a program attached with
no flags or with ``BPF_F_ALLOW_OVERRIDE`` is the only one of its type on the cgroup
(attaching another replaces it), ``BPF_F_ALLOW_MULTI`` runs several, and
``BPF_F_REPLACE`` swaps one of those in place. The kernel refuses to mix modes on a
cgroup, and a descendant cannot attach under an ancestor's no-flags program.
"""

from __future__ import annotations

import atexit
import ctypes
import errno as _errno
import os
import re
import weakref
from typing import Any

from .._log import get_logger
from .._record import Record
from ..errors import OptionError, SyscallError
from ..sys import attrs as _A
from ..sys import bpf as _bpf
from ..sys.fd import FD
from ..sys.syscall import Cmd, bpf_errno, errno_hint
from ..uapi import AttachType, ProgType
from .base import AttachError, Link, ProgramLike, ProgRef, prog_fd, prog_label

__all__ = [
    "ATTACH_NAMES",
    "BPF_F_ALLOW_MULTI",
    "BPF_F_ALLOW_OVERRIDE",
    "BPF_F_QUERY_EFFECTIVE",
    "BPF_F_REPLACE",
    "CgroupAttachment",
    "CgroupLink",
    "CgroupQuery",
    "attach_cgroup",
    "cgroup_attach_type",
    "cgroup_query",
    "flag_names",
]

_log = get_logger("pyebpf.links")

BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2
BPF_F_QUERY_EFFECTIVE = 1 << 0
# the kernel's cap on programs of one attach type in one cgroup (BPF_CGROUP_MAX_PROGS)
MAX_PROGS = 64

_A_ = AttachType
_P = ProgType

# attach type -> the only program type the kernel accepts for it (attach_type_to_prog_type)
PROG_TYPE_OF: dict[AttachType, ProgType] = {
    _A_.CGROUP_INET_INGRESS: _P.CGROUP_SKB,
    _A_.CGROUP_INET_EGRESS: _P.CGROUP_SKB,
    _A_.CGROUP_INET_SOCK_CREATE: _P.CGROUP_SOCK,
    _A_.CGROUP_INET_SOCK_RELEASE: _P.CGROUP_SOCK,
    _A_.CGROUP_INET4_POST_BIND: _P.CGROUP_SOCK,
    _A_.CGROUP_INET6_POST_BIND: _P.CGROUP_SOCK,
    _A_.CGROUP_SOCK_OPS: _P.SOCK_OPS,
    _A_.CGROUP_DEVICE: _P.CGROUP_DEVICE,
    _A_.CGROUP_INET4_BIND: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET6_BIND: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET4_CONNECT: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET6_CONNECT: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UNIX_CONNECT: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET4_GETPEERNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET6_GETPEERNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UNIX_GETPEERNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET4_GETSOCKNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_INET6_GETSOCKNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UNIX_GETSOCKNAME: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UDP4_SENDMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UDP6_SENDMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UNIX_SENDMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UDP4_RECVMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UDP6_RECVMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_UNIX_RECVMSG: _P.CGROUP_SOCK_ADDR,
    _A_.CGROUP_SYSCTL: _P.CGROUP_SYSCTL,
    _A_.CGROUP_GETSOCKOPT: _P.CGROUP_SOCKOPT,
    _A_.CGROUP_SETSOCKOPT: _P.CGROUP_SOCKOPT,
    _A_.LSM_CGROUP: _P.LSM,
}

# program types whose expected_attach_type (fixed at load) must equal the attach type
# (the kernel's bpf_prog_attach_check_attach_type)
_STRICT = {_P.CGROUP_SOCK, _P.CGROUP_SOCK_ADDR, _P.CGROUP_SOCKOPT}

# bpftool's short names (bpftool cgroup attach CGROUP ATTACH_TYPE ...)
ATTACH_NAMES: dict[str, AttachType] = {
    "ingress": _A_.CGROUP_INET_INGRESS, "egress": _A_.CGROUP_INET_EGRESS,
    "sock_create": _A_.CGROUP_INET_SOCK_CREATE, "sock_release": _A_.CGROUP_INET_SOCK_RELEASE,
    "sock_ops": _A_.CGROUP_SOCK_OPS, "sockops": _A_.CGROUP_SOCK_OPS, "device": _A_.CGROUP_DEVICE,
    "dev": _A_.CGROUP_DEVICE, "bind4": _A_.CGROUP_INET4_BIND, "bind6": _A_.CGROUP_INET6_BIND,
    "post_bind4": _A_.CGROUP_INET4_POST_BIND, "post_bind6": _A_.CGROUP_INET6_POST_BIND,
    "connect4": _A_.CGROUP_INET4_CONNECT, "connect6": _A_.CGROUP_INET6_CONNECT,
    "connect_unix": _A_.CGROUP_UNIX_CONNECT,
    "getpeername4": _A_.CGROUP_INET4_GETPEERNAME, "getpeername6": _A_.CGROUP_INET6_GETPEERNAME,
    "getpeername_unix": _A_.CGROUP_UNIX_GETPEERNAME,
    "getsockname4": _A_.CGROUP_INET4_GETSOCKNAME, "getsockname6": _A_.CGROUP_INET6_GETSOCKNAME,
    "getsockname_unix": _A_.CGROUP_UNIX_GETSOCKNAME,
    "sendmsg4": _A_.CGROUP_UDP4_SENDMSG, "sendmsg6": _A_.CGROUP_UDP6_SENDMSG,
    "sendmsg_unix": _A_.CGROUP_UNIX_SENDMSG,
    "recvmsg4": _A_.CGROUP_UDP4_RECVMSG, "recvmsg6": _A_.CGROUP_UDP6_RECVMSG,
    "recvmsg_unix": _A_.CGROUP_UNIX_RECVMSG,
    "sysctl": _A_.CGROUP_SYSCTL, "getsockopt": _A_.CGROUP_GETSOCKOPT,
    "setsockopt": _A_.CGROUP_SETSOCKOPT, "lsm_cgroup": _A_.LSM_CGROUP,
}

# a section to name in messages for each program type
_SECTION_HINT = {
    _P.CGROUP_SKB: 'SEC("cgroup_skb/ingress") or SEC("cgroup_skb/egress")',
    _P.CGROUP_SOCK: 'SEC("cgroup/sock_create"), SEC("cgroup/sock_release") or SEC("cgroup/post_bind4")',
    _P.SOCK_OPS: 'SEC("sockops")',
    _P.CGROUP_DEVICE: 'SEC("cgroup/dev")',
    _P.CGROUP_SOCK_ADDR: 'SEC("cgroup/connect4") and the other cgroup/<sockaddr hook> sections',
    _P.CGROUP_SYSCTL: 'SEC("cgroup/sysctl")',
    _P.CGROUP_SOCKOPT: 'SEC("cgroup/getsockopt") or SEC("cgroup/setsockopt")',
    _P.LSM: 'SEC("lsm_cgroup/<hook>")',
}

_CGROUP2_MAGIC_FS = "cgroup2"


def _name(v: Any) -> str:
    return getattr(v, "name", None) or str(v)


def flag_names(flags: int) -> str:
    """Human names of cgroup attach flags (``"NONE"`` for 0, as bpftool prints)."""
    names = [n for bit, n in ((BPF_F_ALLOW_OVERRIDE, "ALLOW_OVERRIDE"),
                              (BPF_F_ALLOW_MULTI, "ALLOW_MULTI"), (BPF_F_REPLACE, "REPLACE"))
             if flags & bit]
    rest = flags & ~(BPF_F_ALLOW_OVERRIDE | BPF_F_ALLOW_MULTI | BPF_F_REPLACE)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "NONE"


def cgroup_attach_type(value: Any) -> AttachType:
    """An attach type from an AttachType, an int, or a name: ``"egress"``, ``"connect4"``,
    ``"CGROUP_INET_EGRESS"`` (case-insensitive); OptionError unless it is a cgroup hook."""
    at: Any = value
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("bpf_")
        at = ATTACH_NAMES.get(key)
        if at is None:
            at = AttachType.__members__.get(key.upper())
        if at is None:
            raise OptionError(f"unknown cgroup attach type {value!r}; use one of "
                              f"{', '.join(sorted(ATTACH_NAMES))} or an AttachType")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"attach_type must be an AttachType, int or name, not {value!r}")
    try:
        hook = AttachType(at)
    except ValueError:
        raise OptionError(f"unknown attach type {value!r}") from None
    if hook not in PROG_TYPE_OF:
        raise OptionError(f"{hook.name} is not a cgroup attach type; cgroup hooks are "
                          f"{', '.join(sorted(ATTACH_NAMES))}")
    return hook


# --- locating cgroup v2 ---------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount, from /proc/self/mountinfo."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if sep and len(fields) >= 5 and len(rfields) >= 2:
                    out.append((_unescape(fields[4]), rfields[0],
                                rfields[2] if len(rfields) > 2 else ""))
    except OSError:
        pass
    return out


def cgroup2_mounts() -> list[str]:
    """Where cgroup v2 is mounted (empty if nowhere)."""
    return [mp for mp, fs, _ in _mounts() if fs == _CGROUP2_MAGIC_FS]


def _where_cgroup2() -> str:
    mps = cgroup2_mounts()
    if mps:
        return f"cgroup v2 is mounted at {mps[0]}"
    return "no cgroup v2 hierarchy is mounted here (mount one: mount -t cgroup2 none <dir>)"


def _fs_of(path: str) -> tuple[str, str, str] | None:
    """The mount (point, fs type, options) that holds ``path`` (longest mount-point prefix)."""
    best: tuple[str, str, str] | None = None
    for m in _mounts():
        mp = m[0]
        if path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best[0]):
                best = m
    return best


def _not_cgroup2(path: str) -> str | None:
    """Why ``path`` (an existing directory) is not a cgroup v2 directory, or None if it is."""
    m = _fs_of(os.path.realpath(path))
    if m is None or m[1] == _CGROUP2_MAGIC_FS:
        return None
    if m[1] == "cgroup":
        ctrl = ",".join(o for o in m[2].split(",") if o not in ("rw", "ro", "relatime")) or "?"
        return (f"{path} is a cgroup v1 directory ({ctrl} hierarchy at {m[0]}); BPF programs "
                f"attach only to cgroup v2 directories: {_where_cgroup2()}")
    return f"{path} is not a cgroup directory (it is on a {m[1]} file system); {_where_cgroup2()}"


class _Target:
    """An open cgroup directory fd (owned) and the path it was named by, for messages."""

    def __init__(self, fd: FD, path: str | None) -> None:
        self.fd = fd
        self.path = path

    @property
    def label(self) -> str:
        return self.path or f"cgroup fd {self.fd.fileno()}"


def _open_target(cgroup: Any, prog: Any = None) -> _Target:
    """Resolve a path, an fd, or an object with ``.fd`` (or ``.path``) to an owned cgroup fd."""
    name = prog_label(prog)
    if isinstance(cgroup, str | os.PathLike):
        path = os.fspath(cgroup)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        try:
            raw = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise AttachError(f"no cgroup directory {path}: {_where_cgroup2()}",
                              program=name, cause=e) from None
        except NotADirectoryError as e:
            raise AttachError(f"{path} is not a directory, so not a cgroup v2 directory: "
                              f"{_where_cgroup2()}", program=name, cause=e) from None
        except PermissionError as e:
            raise AttachError(f"no permission to open the cgroup directory {path}: "
                              f"run as root (or own the cgroup)", program=name, cause=e) from None
        except OSError as e:
            raise AttachError(f"cannot open the cgroup directory {path}: {e.strerror}",
                              program=name, cause=e) from None
        fd = FD(raw, "cgroup")
        why = _not_cgroup2(path)
        if why is not None:
            fd.close()
            raise AttachError(why, program=name)
        return _Target(fd, path)
    if isinstance(cgroup, bool):
        raise OptionError(f"cgroup must be a cgroup v2 directory path, an fd or an object with .fd, "
                          f"not {cgroup!r}")
    raw_fd: Any = cgroup if isinstance(cgroup, int) else getattr(cgroup, "fd", None)
    if raw_fd is None:
        path = getattr(cgroup, "path", None)
        if isinstance(path, str | os.PathLike):
            return _open_target(path, prog)
        raise OptionError(f"cgroup must be a cgroup v2 directory path, an fd or an object with .fd, "
                          f"not {cgroup!r}")
    try:
        n = int(raw_fd)
        dup = os.dup(n)
    except (TypeError, ValueError, OSError) as e:
        raise AttachError(f"the cgroup fd {raw_fd!r} is not open", program=name, cause=e) from None
    fd = FD(dup, "cgroup")
    try:
        path = os.readlink(f"/proc/self/fd/{fd.fileno()}")
    except OSError:
        path = None
    if path is not None and path.startswith("/") and not path.endswith(" (deleted)"):
        why = _not_cgroup2(path) if os.path.isdir(path) else (
            f"fd {n} ({path}) is not a directory, so not a cgroup v2 directory; {_where_cgroup2()}")
        if why is not None:
            fd.close()
            raise AttachError(why, program=name)
    else:
        path = None
    return _Target(fd, path)


# --- query ----------------------------------------------------------------------------------


class CgroupQuery(Record):
    """What BPF_PROG_QUERY reports for one attach type of one cgroup.

    ``prog_ids`` in run order; ``attach_flags`` the cgroup's mode for this type (0 =
    NONE, ALLOW_OVERRIDE, ALLOW_MULTI; not reported for effective queries);
    ``prog_attach_flags`` per program and ``link_ids`` (0 for a BPF_PROG_ATTACH entry)
    when the kernel gives them (else None); ``revision``, the cgroup's change counter for
    this attach type (None when the kernel does not report one, e.g. for effective queries).
    """

    attach_type: AttachType | int
    effective: bool
    prog_ids: list[int]
    attach_flags: int
    prog_attach_flags: list[int] | None
    link_ids: list[int] | None
    revision: int | None

    def __init__(self, attach_type: AttachType | int, effective: bool, prog_ids: list[int],
                 attach_flags: int, prog_attach_flags: list[int] | None = None,
                 link_ids: list[int] | None = None, revision: int | None = None) -> None:
        self.attach_type = attach_type
        self.effective = effective
        self.prog_ids = prog_ids
        self.attach_flags = attach_flags
        self.prog_attach_flags = prog_attach_flags
        self.link_ids = link_ids
        self.revision = revision

    @property
    def count(self) -> int:
        return len(self.prog_ids)

    @property
    def mode(self) -> str:
        """The attach mode's name: NONE, ALLOW_OVERRIDE or ALLOW_MULTI."""
        return flag_names(self.attach_flags)

    def __contains__(self, prog: Any) -> bool:
        """``prog in query``: a Program (by id) or a program id."""
        pid = prog if isinstance(prog, int) else getattr(prog, "id", None)
        return pid in self.prog_ids

    def __len__(self) -> int:
        return len(self.prog_ids)


def _query_raw(fd: int, attach_type: int, query_flags: int, extended: bool, n: int
               ) -> tuple[int, Any, Any, Any, Any]:
    """One BPF_PROG_QUERY; (errno, attr, ids, prog flags, link ids)."""
    ids = (ctypes.c_uint32 * max(n, 1))()
    pflags = (ctypes.c_uint32 * max(n, 1))()
    lids = (ctypes.c_uint32 * max(n, 1))()
    a = _A.ProgQueryAttr(target_fd=fd, attach_type=attach_type, query_flags=query_flags,
                         prog_ids=ctypes.addressof(ids) if n else 0, prog_cnt=n)
    if extended and n:
        a.prog_attach_flags = ctypes.addressof(pflags)
        a.link_ids = ctypes.addressof(lids)
    _, err = bpf_errno(Cmd.PROG_QUERY, a, _A.ProgQueryAttr.SIZE)
    return err, a, ids, pflags, lids


def _query_fd(fd: int, attach_type: AttachType, effective: bool) -> CgroupQuery:
    qflags = BPF_F_QUERY_EFFECTIVE if effective else 0
    # per-program flags only make sense for a cgroup's own list (the kernel refuses them
    # with the effective flag on some versions); link ids came with the mprog API (6.16)
    extended = not effective
    n = MAX_PROGS
    while True:
        err, a, ids, pflags, lids = _query_raw(fd, attach_type, qflags, extended, n)
        if err in (_errno.EINVAL, _errno.E2BIG) and extended:
            extended = False  # an older kernel that knows only prog_ids
            continue
        if err == _errno.ENOSPC and a.prog_cnt > n:
            n = a.prog_cnt
            continue
        if err:
            raise SyscallError(err, "BPF_PROG_QUERY", errno_hint(err, Cmd.PROG_QUERY),
                               detail=f"attach type {_name(attach_type)}")
        cnt = min(a.prog_cnt, n)
        prog_ids = list(ids[:cnt])
        pf = list(pflags[:cnt]) if extended else None
        # 6.18 leaves link ids at 0 for cgroups even for link entries: all zeros says nothing
        li = list(lids[:cnt]) if extended and any(lids[:cnt]) else None
        # a kernel without per-program flags leaves the buffer zeroed: report nothing then
        # rather than a list of zeros that reads as "NONE"
        if pf is not None and a.attach_flags & BPF_F_ALLOW_MULTI and not any(pf):
            pf = None
        return CgroupQuery(attach_type, effective, prog_ids, 0 if effective else a.attach_flags,
                           pf, li, a.revision or None)


def cgroup_query(cgroup: str | int | Any, attach_type: Any, *, effective: bool = False) -> CgroupQuery:
    """BPF_PROG_QUERY on a cgroup v2 directory (path, fd, or object with ``.fd``).

    ``effective=True`` lists what runs for processes in the cgroup, its ancestors'
    inherited programs included (BPF_F_QUERY_EFFECTIVE).
    """
    at = cgroup_attach_type(attach_type)
    target = _open_target(cgroup)
    try:
        try:
            return _query_fd(target.fd.fileno(), at, effective)
        except SyscallError as e:
            if e.errno == _errno.EBADF:
                raise AttachError(f"{target.label} is not a cgroup v2 directory: {_where_cgroup2()}",
                                  cause=e) from e
            if e.errno == _errno.EPERM:
                raise AttachError(f"no permission to query the programs of {target.label}: "
                                  "BPF_PROG_QUERY on a cgroup needs CAP_NET_ADMIN (run as root)",
                                  cause=e) from e
            raise
    finally:
        target.fd.close()


# --- links ----------------------------------------------------------------------------------


class CgroupLink(Link):
    """A program attached to a cgroup through a bpf link (BPF_LINK_CREATE).

    Always in multi mode; ``update()`` swaps the program, ``pin()`` keeps it past this process.
    """

    kind = "cgroup"
    updatable = True

    def __init__(self, fd: FD | None, program: Any, *, attach_type: AttachType, cgroup_path: str | None,
                 target: str = "", extra_fds: tuple[FD, ...] = ()) -> None:
        super().__init__(fd, program, target=target, extra_fds=extra_fds)
        self.attach_type = attach_type
        self.cgroup_path = cgroup_path

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Swap in ``new_prog`` (BPF_LINK_UPDATE); with ``old_prog`` only if that is the one
        running now. The new program must suit the same hook."""
        _check_prog(new_prog, self.attach_type)
        try:
            super().update(new_prog, old_prog)
        except SyscallError as e:
            if e.errno == _errno.EPERM and old_prog is not None:
                raise AttachError(f"cannot update the {self.attach_type.name} link: old_prog "
                                  f"({prog_label(old_prog)}) is not the program it runs now",
                                  program=prog_label(new_prog), cause=e) from e
            if e.errno == _errno.EINVAL:
                raise AttachError(f"the kernel refused {prog_label(new_prog)} for the "
                                  f"{self.attach_type.name} link (BPF_LINK_UPDATE: EINVAL): the new "
                                  "program must have the link's program type and attach type",
                                  program=prog_label(new_prog), cause=e) from e
            raise


class CgroupAttachment(CgroupLink):
    """A program attached with BPF_PROG_ATTACH (``link=False``): there is no link fd.

    ``close()`` detaches exactly this program (BPF_PROG_DETACH), and only if it is still
    the one attached: in NONE/ALLOW_OVERRIDE mode the kernel detaches whatever program
    holds the slot, so a program that was meanwhile replaced is left alone. ``update()``
    replaces the program in place (BPF_F_REPLACE in multi mode, a re-attach otherwise).
    Nothing here can be pinned: that needs a link.
    """

    kind = "cgroup_attach"

    def __init__(self, program: Any, *, attach_type: AttachType, cgroup_fd: FD, prog_fd_dup: FD,
                 prog_id: int, flags: int, cgroup_path: str | None, target: str = "") -> None:
        super().__init__(None, program, attach_type=attach_type, cgroup_path=cgroup_path, target=target)
        self.flags = flags
        self._cgroup_fd = cgroup_fd
        self._prog_fd = prog_fd_dup  # our own reference: the Program may be closed first
        self._prog_id = prog_id
        self._pid = os.getpid()
        _live.add(self)

    @property
    def closed(self) -> bool:
        return self._prog_fd.closed

    @property
    def multi(self) -> bool:
        return bool(self.flags & BPF_F_ALLOW_MULTI)

    no_link = ("this cgroup attachment was made with BPF_PROG_ATTACH (link=False) and has no "
               "bpf link; attach with link=True for that")

    def query(self, *, effective: bool = False) -> CgroupQuery:
        """BPF_PROG_QUERY of this attachment's cgroup and attach type."""
        if self.closed:
            raise AttachError("the cgroup attachment is closed", program=prog_label(self.program))
        return _query_fd(self._cgroup_fd.fileno(), self.attach_type, effective)

    def attached(self) -> bool:
        """Whether this program is still attached to the cgroup for this attach type."""
        return not self.closed and self._prog_id in self.query().prog_ids

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Put ``new_prog`` in this program's place on the cgroup (``old_prog`` is ignored:
        the program replaced is always this attachment's)."""
        if self.closed:
            raise AttachError("cannot update: the cgroup attachment is closed",
                              program=prog_label(self.program))
        _check_prog(new_prog, self.attach_type)
        new_fd = prog_fd(new_prog)
        flags = self.flags & ~BPF_F_REPLACE
        dup = FD(os.dup(new_fd), "prog")  # before the attach: nothing to undo if this fails
        new_id = int(_bpf.prog_info(dup).id)
        try:
            if self.multi:
                _bpf.prog_attach(new_fd, self._cgroup_fd, self.attach_type, flags | BPF_F_REPLACE,
                                 replace_prog_fd=self._prog_fd)
            else:
                _bpf.prog_attach(new_fd, self._cgroup_fd, self.attach_type, flags)
        except SyscallError as e:
            dup.close()
            raise _attach_error(e, new_prog, self._cgroup_fd.fileno(),
                                self.cgroup_path or "the cgroup", self.attach_type, flags,
                                replace=self.program if self.multi else None) from e
        self._prog_fd.close()
        self._prog_fd, self._prog_id = dup, new_id
        self.program = new_prog

    def detach(self) -> None:
        """Detach now (same as ``close()``)."""
        self.close()

    def forget(self) -> None:
        """Close this object's fds but leave the program attached: it then outlives this
        process, as ``bpftool cgroup attach`` does (detach it later with BPF_PROG_DETACH)."""
        _live.discard(self)
        self._prog_fd.close()
        self._cgroup_fd.close()

    def __del__(self) -> None:
        # a forked child that drops its copy must not detach the parent's program
        if getattr(self, "_pid", None) == os.getpid():
            super().__del__()

    def close(self) -> None:
        """BPF_PROG_DETACH of this program (if it is still the one attached); idempotent."""
        if self._prog_fd.closed:
            return
        _live.discard(self)
        try:
            if not self.multi and self._prog_id not in self.query().prog_ids:
                _log.debug("cgroup attachment of %s was replaced; nothing to detach",
                           prog_label(self.program))
            else:
                try:
                    _bpf.prog_detach(self._cgroup_fd, self.attach_type, self._prog_fd)
                except SyscallError as e:
                    if e.errno != _errno.ENOENT:  # ENOENT: someone detached it already
                        raise AttachError(f"cannot detach from {self.cgroup_path or 'the cgroup'} "
                                          f"({self.attach_type.name}): {e}",
                                          program=prog_label(self.program), cause=e) from e
        finally:
            self._prog_fd.close()
            self._cgroup_fd.close()

    def __repr__(self) -> str:
        parts = [repr(self.target)] if self.target else []
        if prog_label(self.program):
            parts.append(f"prog={prog_label(self.program)}")
        parts.append(f"flags={flag_names(self.flags)}")
        if self.closed:
            parts.append("closed")
        return f"{type(self).__name__}({', '.join(parts)})"


# Attachments still open at exit are detached then, as links are when their fds close;
# this runs before pyebpf.sys.fd closes every FD (atexit runs handlers in reverse order).
_live: weakref.WeakSet[CgroupAttachment] = weakref.WeakSet()


@atexit.register
def _detach_at_exit() -> None:
    me = os.getpid()
    for att in list(_live):
        if att._pid == me:
            try:
                att.close()
            except Exception as e:  # never fail interpreter exit
                _log.debug("detach at exit failed: %s", e)


# --- attach ---------------------------------------------------------------------------------


def _default_attach_type(prog: Any) -> AttachType:
    eat = getattr(prog, "expected_attach_type", None)
    spec = getattr(prog, "spec", None)
    sd = getattr(spec, "sec_def", None) if spec is not None else None
    if eat is None and sd is not None:
        eat = sd.attach_type
    if eat is None:
        section = getattr(spec, "section", None)
        where = f"SEC({section!r})" if section else (
            "the program (opened by fd, id or pin: the kernel does not report its attach type)")
        ptype = getattr(prog, "type", None)
        choices = sorted(n for n, at in ATTACH_NAMES.items() if PROG_TYPE_OF[at] == ptype) or sorted(ATTACH_NAMES)
        raise OptionError(f"{prog_label(prog)}: {where} does not say which cgroup hook to attach to; "
                          f"pass attach_type= (one of {', '.join(choices)})")
    try:
        return cgroup_attach_type(int(eat))
    except OptionError:
        raise AttachError(f"the program's attach type {_name(eat)} is not a cgroup hook; "
                          "attach it with the function for its hook", program=prog_label(prog)) from None


def _check_prog(prog: Any, at: AttachType) -> None:
    ptype = getattr(prog, "type", None)
    want = PROG_TYPE_OF[at]
    name = prog_label(prog)
    if ptype is not None and int(ptype) != int(want):
        raise AttachError(f"a {_name(ptype)} program cannot attach to the cgroup hook {at.name}, which "
                          f"takes {want.name} programs ({_SECTION_HINT.get(want, want.name)})",
                          program=name)
    eat = getattr(prog, "expected_attach_type", None)
    if ptype is not None and int(ptype) in _STRICT and eat is not None and int(eat) != int(at):
        raise AttachError(f"the program was loaded for {_name(eat)} (its expected_attach_type) and the "
                          f"kernel lets a {_name(ptype)} program attach only there, not to {at.name}; "
                          f"load it from the section of that hook", program=name)


def _cap_net_admin() -> bool:
    # read fresh: a forked child may have dropped privileges since start-up
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps >> 12 & 1)  # CAP_NET_ADMIN
    except OSError:
        pass
    return os.geteuid() == 0


def _ancestors(path: str | None) -> list[str]:
    if not path:
        return []
    real = os.path.realpath(path)
    m = _fs_of(real)
    root = m[0] if m is not None else "/"
    out = []
    cur = os.path.dirname(real)
    while cur.startswith(root) and cur != real:
        out.append(cur)
        if cur == root or cur == "/":
            break
        cur = os.path.dirname(cur)
    return out


def _explain_eperm(fd: int, label: str, path: str | None, at: AttachType, flags: int) -> str:
    if not _cap_net_admin():
        return ("no permission: attaching to a cgroup needs CAP_NET_ADMIN (and CAP_BPF or "
                "CAP_SYS_ADMIN for the program); run as root")
    mode = flag_names(flags & (BPF_F_ALLOW_OVERRIDE | BPF_F_ALLOW_MULTI))
    try:
        q = _query_fd(fd, at, False)
    except SyscallError:
        q = None
    if q is not None and q.prog_ids and q.attach_flags != flags & (BPF_F_ALLOW_OVERRIDE | BPF_F_ALLOW_MULTI):
        return (f"{label} already has {len(q.prog_ids)} program(s) for {at.name} attached in "
                f"{q.mode} mode (prog ids {q.prog_ids}) and the kernel does not mix modes on one "
                f"cgroup; this attach asked for {mode} (a bpf link is always ALLOW_MULTI). Detach "
                f"them first, or attach with the same mode")
    for anc in _ancestors(path):
        try:
            afd = os.open(anc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            aq = _query_fd(afd, at, False)
        except SyscallError:
            continue
        finally:
            os.close(afd)
        if aq.prog_ids and aq.attach_flags == 0:
            return (f"the ancestor cgroup {anc} has a program for {at.name} attached without "
                    f"BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI (prog ids {aq.prog_ids}), which "
                    "forbids programs of that type in every descendant; attach there with "
                    "override=True or multi=True instead")
    return ("the kernel or a security policy (LSM, lockdown) refused the attach; with "
            f"CAP_NET_ADMIN held, that is usually a mode conflict on {label} or an ancestor")


def _attach_error(e: SyscallError, prog: Any, fd: int, label: str, at: AttachType, flags: int, *,
                  replace: Any = None, link: bool = False, path: str | None = None) -> AttachError:
    """Turn a failed BPF_LINK_CREATE / BPF_PROG_ATTACH into an AttachError that explains it."""
    how = "BPF_LINK_CREATE" if link else "BPF_PROG_ATTACH"
    err = e.errno
    msg = f"{how} to {label} ({at.name}) failed ({e.errname}): "
    ptype = getattr(prog, "type", None)
    if err == _errno.EBADF:
        msg += f"{label} is not a cgroup v2 directory; {_where_cgroup2()}"
    elif (err in (_errno.EPERM, _errno.EINVAL) and ptype is not None
          and int(ptype) == _P.CGROUP_SKB and not _cap_net_admin()):
        # unprivileged users may load cgroup_skb programs, so the kernel checks at attach
        # time; BPF_PROG_ATTACH reports that refusal as EINVAL
        msg += ("no permission: attaching a cgroup_skb program needs CAP_NET_ADMIN (the kernel "
                "checks it at attach time, since unprivileged users may load such programs); "
                "run as root")
    elif err == _errno.EPERM:
        msg += _explain_eperm(fd, label, path, at, BPF_F_ALLOW_MULTI if link else flags)
    elif err in (_errno.EEXIST, _errno.EINVAL) and _attached_here(prog, fd, at):
        msg += (f"the program is already attached to {label} for {at.name}; the kernel takes "
                "the same program only once per cgroup and hook in multi mode")
    elif err == _errno.ENOENT and replace is not None:
        msg += (f"the program to replace ({prog_label(replace) or 'given'}) is not attached to "
                f"{label} for {at.name}")
    elif err == _errno.E2BIG:
        msg += f"{label} already has the maximum of {MAX_PROGS} programs for {at.name}"
    elif err == _errno.EINVAL:
        msg += ("the kernel refused the program, attach type or flags: a program type that does "
                "not match the hook, an expected_attach_type fixed at load for another hook, or "
                f"flags {flag_names(flags)} this kernel does not accept")
    else:
        msg += str(e)
    return AttachError(msg, program=prog_label(prog), cause=e)


def _attached_here(prog: Any, fd: int, at: AttachType) -> bool:
    try:
        pid = _bpf.prog_info(prog_fd(prog)).id
        return pid in _query_fd(fd, at, False).prog_ids
    except (SyscallError, AttachError):
        return False


def attach_cgroup(prog: ProgramLike, cgroup: str | int | Any, *, attach_type: Any = None, link: bool = True,
                  flags: int = 0, multi: bool = False, override: bool = False,
                  replace: Any = None) -> CgroupLink:
    """Attach ``prog`` to a cgroup v2 directory (a path, an fd, or an object with ``.fd``).

    The attach type defaults to the program's expected_attach_type or its SEC() row
    (``cgroup_skb/egress``, ``cgroup/connect4``, ``sockops`` -> CGROUP_SOCK_OPS, ...);
    sections that name no hook (``cgroup/skb``) need ``attach_type=`` (an AttachType,
    or a name such as ``"egress"``). By default this is a bpf link (BPF_LINK_CREATE), as
    libbpf's bpf_program__attach_cgroup. ``link=False`` uses BPF_PROG_ATTACH with
    ``multi`` (BPF_F_ALLOW_MULTI), ``override`` (BPF_F_ALLOW_OVERRIDE) or neither, and
    ``replace=<program>`` to swap an attached program in place (implies multi); ``flags``
    adds raw BPF_F_* bits to either call.
    """
    at = cgroup_attach_type(attach_type) if attach_type is not None else _default_attach_type(prog)
    if not isinstance(flags, int) or isinstance(flags, bool) or flags < 0:
        raise OptionError(f"flags must be a non-negative int, not {flags!r}")
    if replace is not None:
        multi = True
    if multi and override:
        raise OptionError("multi=True and override=True conflict: the kernel runs either several "
                          "programs (BPF_F_ALLOW_MULTI) or one that descendants may override "
                          "(BPF_F_ALLOW_OVERRIDE)")
    if link and (override or replace is not None):
        raise OptionError("override= and replace= apply to BPF_PROG_ATTACH (link=False); a cgroup "
                          "link is always in multi mode and is replaced with Link.update()")
    _check_prog(prog, at)
    pfd = prog_fd(prog)
    rfd = prog_fd(replace) if replace is not None else None
    name = prog_label(prog)
    target = _open_target(cgroup, prog)
    label = target.label
    if link:
        try:
            lfd = _bpf.link_create(pfd, target.fd, at, flags)
        except SyscallError as e:
            err = _attach_error(e, prog, target.fd.fileno(), label, at, flags, link=True,
                                path=target.path)
            target.fd.close()
            raise err from e
        target.fd.close()  # the link holds the cgroup
        return CgroupLink(lfd, prog, attach_type=at, cgroup_path=target.path, target=label)
    aflags = flags | (BPF_F_ALLOW_MULTI if multi else 0) | (BPF_F_ALLOW_OVERRIDE if override else 0)
    if replace is not None:
        aflags |= BPF_F_REPLACE
    # everything the attachment needs is got before the attach, so nothing can fail after it
    dup: FD | None = None
    try:
        dup = FD(os.dup(pfd), "prog")
        pid = int(_bpf.prog_info(dup).id)
    except OSError as e:  # SyscallError included
        if dup is not None:
            dup.close()
        target.fd.close()
        raise AttachError(f"cannot take a reference to the program: {e}", program=name, cause=e) from None
    try:
        _bpf.prog_attach(pfd, target.fd, at, aflags, replace_prog_fd=rfd)
    except SyscallError as e:
        err = _attach_error(e, prog, target.fd.fileno(), label, at, aflags, replace=replace,
                            path=target.path)
        dup.close()
        target.fd.close()
        raise err from e
    return CgroupAttachment(prog, attach_type=at, cgroup_fd=target.fd, prog_fd_dup=dup, prog_id=pid,
                            flags=aflags, cgroup_path=target.path, target=label)
