"""tc programs on a network interface: tcx links (BPF_LINK_CREATE(BPF_TCX_*), the mprog
API of Linux 6.6+) and legacy cls_bpf direct-action filters under a clsact qdisc (netlink).

libbpf's bpf_program__attach_tcx makes the link; bpf_tc_hook_create/destroy and
bpf_tc_attach/detach/query are the netlink side. A tcx link is updatable and pinnable;
programs on one hook run in order (placed with ``before``/``after``) and each one's
TC_ACT_UNSPEC return hands the packet to the next. A legacy filter has no bpf link:
:class:`TcLink` deletes its own filter on close, and the clsact qdisc too when this
process created it and no filter is left under it.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import threading
from typing import Any, cast

from .._log import get_logger
from ..errors import OptionError, SyscallError
from ..sys import attrs as _A
from ..sys import bpf as _bpf
from ..sys import netlink as _nl
from ..sys.fd import FD
from ..sys.netlink import ETH_P_ALL, NetlinkError, NetlinkSocket, TcFilter
from ..sys.syscall import Cmd, bpf
from ..uapi import AttachType, ProgType
from .base import AttachError, Link, ProgramLike, ProgRef, prog_fd, prog_label
from .xdp import NET_PERM_HINT, NetlinkAttachment, resolve_iface

__all__ = [
    "BPF_F_AFTER",
    "BPF_F_BEFORE",
    "BPF_F_ID",
    "BPF_F_LINK",
    "ETH_P_ALL",
    "TcFilter",
    "TcLink",
    "TcxLink",
    "attach_tc",
    "attach_tcx",
    "tc_query",
    "tcx_query",
]

_log = get_logger("pyebpf.links")

# mprog placement flags (uapi bpf.h)
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13

_TCX = {"ingress": AttachType.TCX_INGRESS, "egress": AttachType.TCX_EGRESS}
_DIR_OF = {AttachType.TCX_INGRESS: "ingress", AttachType.TCX_EGRESS: "egress"}


def _check_prog(prog: Any, hook: str) -> None:
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.SCHED_CLS:
        name = ptype.name.lower() if isinstance(ptype, ProgType) else str(ptype)
        raise AttachError(f"a {name} program cannot be attached as {hook}: it needs a tc "
                          "classifier program (SEC(\"tc\"), SEC(\"tcx/ingress\"), ...)",
                          program=prog_label(prog))


def _direction(prog: Any, direction: str | None, default: str | None) -> str:
    """'ingress' or 'egress': as given, else from the program's expected attach type or
    SEC() name (tc/ingress, tcx/egress, ...), else ``default``."""
    if direction is not None:
        d = _DIR_OF.get(direction, direction) if isinstance(direction, int) else str(direction).lower()
        if d not in _TCX:
            raise OptionError(f"tc direction must be 'ingress' or 'egress', not {direction!r}")
        return d
    eat = getattr(prog, "expected_attach_type", None)
    if eat in _DIR_OF:
        return _DIR_OF[eat]
    section = getattr(getattr(prog, "spec", None), "section", "") or ""
    for d in _TCX:
        if section.endswith("/" + d):
            return d
    if default is not None:
        return default
    raise OptionError(f"no tc direction: the program's section {section!r} names none; pass "
                      "direction='ingress' or 'egress'")


# --- tcx -------------------------------------------------------------------------------------


class TcxLink(Link):
    """A tc program attached to an interface hook through a tcx link (updatable, pinnable)."""

    kind = "tcx"
    updatable = True

    def __init__(self, fd: FD | None, program: Any = None, *, ifindex: int = 0,
                 direction: str | None = None, target: str = "", **kw: Any) -> None:
        super().__init__(fd, program, target=target, **kw)
        self.ifindex = ifindex
        self.direction = direction

    @classmethod
    def from_pin(cls, path: str) -> TcxLink:
        """Open a tcx link pinned at ``path``; ifindex and direction come from the kernel."""
        link = cast(TcxLink, super().from_pin(path))
        try:
            d = link.info().details
            link.ifindex = int(d.get("ifindex", 0))
            link.direction = _DIR_OF.get(d.get("attach_type"))  # type: ignore[arg-type]
        except SyscallError:
            pass
        return link


def _anchor(before: Any, after: Any) -> tuple[int, int]:
    """(flags, relative fd or id) for the mprog placement given by before/after."""
    if before is not None and after is not None:
        raise OptionError("give before= or after=, not both")
    anchor = before if before is not None else after
    if anchor is None:
        return 0, 0
    flags = BPF_F_BEFORE if before is not None else BPF_F_AFTER
    if anchor is True:  # first / last
        return flags, 0
    if isinstance(anchor, bool):
        raise OptionError("before=/after= take True, a program, a link, an FD or a program id")
    if isinstance(anchor, Link):
        return flags | BPF_F_LINK, int(anchor._need_link_fd("place a program relative to it"))
    if isinstance(anchor, int):
        if anchor <= 0:
            raise OptionError(f"program id must be positive, got {anchor}")
        return flags | BPF_F_ID, anchor
    if isinstance(anchor, FD):
        return flags, int(anchor)
    if hasattr(anchor, "fd"):
        return flags, prog_fd(anchor)
    raise OptionError(f"before=/after= take True, a program, a link, an FD or a program id, "
                      f"not {type(anchor).__name__}")


def _tcx_error(e: SyscallError, prog: Any, label: str, direction: str, ifindex: int,
               anchored: bool, expected_revision: int) -> AttachError:
    err = e.errno
    hook = f"{label} tcx {direction}"
    if err == _errno.ENODEV:
        msg = f"no network interface {label} in this network namespace"
    elif err in (_errno.EPERM, _errno.EACCES):
        msg = f"no permission to attach to {hook}: {NET_PERM_HINT}"
    elif err == _errno.EEXIST:
        msg = (f"this program is already attached to {hook} (a program runs once per hook); "
               "attach another program or update the existing link")
    elif err == _errno.ENOENT and anchored:
        msg = f"the program or link given as before=/after= is not attached to {hook} (see tcx_query)"
    elif err == _errno.ESTALE:
        now: int | str
        try:
            now = tcx_query(ifindex, direction)[2]
        except (SyscallError, AttachError):
            now = "unknown"
        msg = (f"expected_revision={expected_revision} does not match {hook}'s revision ({now}): "
               "the hook changed since it was queried; query again (tcx_query) and retry")
    elif err == _errno.ERANGE:
        msg = f"{hook} already holds the maximum number of programs"
    elif err == _errno.EINVAL:
        msg = f"the kernel refused to attach to {hook} (EINVAL): {e.hint}"
    else:
        msg = f"attaching to {hook} failed: {e}"
    return AttachError(msg, program=prog_label(prog), cause=e)


def attach_tcx(prog: ProgramLike, iface: str | int, direction: str | None = None, *, before: Any = None,
               after: Any = None, expected_revision: int = 0) -> TcxLink:
    """Attach a tc program to ``iface``'s tcx ``direction`` hook (BPF_LINK_CREATE(BPF_TCX_*)).

    ``direction`` defaults to the program's (SEC("tcx/ingress"), "tc/egress", or its
    expected attach type). ``before``/``after`` place it relative to a Program, a Link
    (BPF_F_LINK) or a program id (BPF_F_ID) already on the hook; True means first/last.
    ``expected_revision`` (non-zero) makes the attach fail (ESTALE) if the hook changed
    since :func:`tcx_query` reported that revision.
    """
    _check_prog(prog, "a tcx program")
    d = _direction(prog, direction, None)
    flags, relative = _anchor(before, after)
    ifindex, label = resolve_iface(iface, prog)
    try:
        lfd = _bpf.link_create(prog_fd(prog), ifindex, _TCX[d], flags, relative_fd=relative,
                               expected_revision=expected_revision)
    except SyscallError as e:
        raise _tcx_error(e, prog, label, d, ifindex, bool(flags), expected_revision) from e
    return TcxLink(lfd, prog, ifindex=ifindex, direction=d, target=f"{label}/{d}")


def tcx_query(iface: str | int, direction: str) -> tuple[list[int], list[int], int]:
    """The tcx ``direction`` hook of ``iface``: (program ids in run order, the link id of
    each (0 for a BPF_PROG_ATTACH program), revision) through BPF_PROG_QUERY."""
    d = _direction(None, direction, None)
    ifindex, label = resolve_iface(iface)
    cap = 64
    while True:
        progs = (ctypes.c_uint32 * cap)()
        links = (ctypes.c_uint32 * cap)()
        a = _A.ProgQueryAttr(target_fd=ifindex, attach_type=_TCX[d], prog_ids=ctypes.addressof(progs),
                             prog_cnt=cap, link_ids=ctypes.addressof(links))
        try:
            bpf(Cmd.PROG_QUERY, a, _A.ProgQueryAttr.SIZE, detail=f"tcx {d} of {label}")
        except SyscallError as e:
            if e.errno == _errno.ENOSPC and a.prog_cnt > cap:
                cap = a.prog_cnt
                continue
            if e.errno == _errno.ENODEV:
                raise AttachError(f"no network interface {label} in this network namespace",
                                  cause=e) from e
            raise
        n = min(a.prog_cnt, cap)
        return list(progs[:n]), list(links[:n]), int(a.revision)


# --- legacy cls_bpf through netlink ------------------------------------------------------------

# clsact qdiscs this process created and still has filters under: (netns inode, ifindex)
# -> number of our live TcLinks there. The last of them removes the qdisc if it is empty.
_owned: dict[tuple[int, int], int] = {}
_owned_lock = threading.Lock()


def _netns_ino() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class TcLink(NetlinkAttachment, Link):
    """A cls_bpf direct-action filter under a clsact qdisc (no bpf link: ``fd`` is None).

    ``close()`` deletes this filter; the qdisc goes too when this process created it
    and no filter of any kind is left under it. ``update()`` replaces the filter's
    program in place. The netlink socket of the attach is kept, so both happen in the
    network namespace of the attach.
    """

    kind = "tc"

    def __init__(self, program: Any, *, sock: NetlinkSocket, filter: TcFilter, direction: str,
                 owner_key: tuple[int, int] | None, target: str = "") -> None:
        super().__init__(None, program, target=target)
        self._sock: NetlinkSocket | None = sock
        self.filter = filter
        self.ifindex = filter.ifindex
        self.direction = direction
        self.handle = filter.handle
        self.priority = filter.priority
        self._owner_key = owner_key
        self._track()

    def _abandon(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def created_qdisc(self) -> bool:
        """Whether this process created the clsact qdisc this filter sits under."""
        return self._owner_key is not None

    no_link = "a legacy tc filter has no bpf link; attach with attach_tcx for a pinnable link"

    @classmethod
    def from_pin(cls, path: str) -> Link:
        """A legacy tc filter is never pinned: refuses with AttachError."""
        raise AttachError(f"cannot open {path} as a tc filter: legacy tc filters have no bpf "
                          "link to pin; use Link.from_pin or TcxLink.from_pin")

    @classmethod
    def from_id(cls, link_id: int) -> Link:
        """A legacy tc filter has no link id: refuses with AttachError."""
        raise AttachError(f"cannot open link id {link_id} as a tc filter: legacy tc filters "
                          "have no bpf link; find them with tc_query")

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Replace the filter's program (same handle and priority; NLM_F_REPLACE).

        With ``old_prog`` (a program or program id), only if the filter runs it now:
        netlink has no compare-and-swap for filters, so this is checked just before.
        """
        if self._sock is None:
            raise AttachError("cannot update: the tc filter is closed", program=prog_label(self.program))
        _check_prog(new_prog, "a tc filter")
        f = self.filter
        if old_prog is not None:
            want = old_prog if isinstance(old_prog, int) else getattr(old_prog, "id", None)
            if not isinstance(want, int) or isinstance(want, bool):
                raise OptionError("old_prog= takes a program or a program id")
            now = [g.prog_id for g in _nl.filter_list(f.ifindex, f.parent, self._sock)
                   if (g.handle, g.priority) == (f.handle, f.priority)]
            if now != [want]:
                raise AttachError(f"tc filter {f.handle:#x} prio {f.priority} on {self.target} does "
                                  f"not run program id {want} (now: {now[0] if now else 'no filter'})",
                                  program=prog_label(new_prog))
        try:
            self.filter = _nl.filter_add_bpf(f.ifindex, f.parent, prog_fd(new_prog),
                                             name=_filter_name(new_prog), handle=f.handle,
                                             priority=f.priority, protocol=f.protocol,
                                             replace=True, sock=self._sock)
        except SyscallError as e:
            raise AttachError(f"replacing the program of tc filter {f.handle:#x} prio {f.priority} "
                              f"on {self.target} failed: {e}", program=prog_label(new_prog),
                              cause=e) from e
        self.program = new_prog

    def detach(self) -> None:
        """Delete the filter now (same as close())."""
        self.close()

    def close(self) -> None:
        """Delete our filter, then the clsact qdisc if we made it and it is empty."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        f = self.filter
        try:
            _nl.filter_del(f.ifindex, f.parent, f.handle, f.priority, f.protocol, sock)
        except SyscallError as e:
            # ENOENT/EINVAL: already deleted (or the qdisc with it); ENODEV: interface gone
            level = _log.debug if e.errno in (_errno.ENOENT, _errno.EINVAL, _errno.ENODEV) else _log.warning
            level("deleting tc filter %#x prio %d on ifindex %d failed: %s", f.handle, f.priority,
                  f.ifindex, e)
        try:
            if self._owner_key is not None:
                _release_qdisc(self._owner_key, sock)
        finally:
            sock.close()


def _release_qdisc(key: tuple[int, int], sock: NetlinkSocket) -> None:
    with _owned_lock:
        left = _owned.get(key, 0) - 1
        if left > 0:
            _owned[key] = left
            return
        _owned.pop(key, None)
        ifindex = key[1]
        try:
            remaining = [f for d in _TCX for f in _nl.filter_list(ifindex, _nl.tc_parent(d), sock)]
            if remaining:
                _log.debug("clsact on ifindex %d kept: %d filters left", ifindex, len(remaining))
                return
            _nl.clsact_del(ifindex, sock)
        except SyscallError as e:
            _log.debug("removing our clsact qdisc from ifindex %d failed: %s", ifindex, e)


def _filter_name(prog: Any) -> str:
    # libbpf names a filter "<prog name>:[<prog id>]"; tc shows it
    name = prog_label(prog) or "prog"
    try:
        pid = prog.id
    except (AttributeError, SyscallError, ValueError):
        return name
    return f"{name}:[{pid}]"


def _tc_error(e: SyscallError, prog: Any, label: str, direction: str, handle: int,
              priority: int, replace: bool) -> AttachError:
    err = e.errno
    where = f"{label} tc {direction}"
    extack = str(getattr(e, "extack", "") or "")
    said = f" (kernel: {extack})" if extack else ""
    if err == _errno.ENODEV:
        msg = f"no network interface {label} in this network namespace"
    elif err in (_errno.EPERM, _errno.EACCES):
        msg = f"no permission to add a tc filter on {where}: {NET_PERM_HINT}"
    elif err == _errno.EEXIST:
        msg = (f"a filter with handle {handle:#x} and priority {priority} already exists on "
               f"{where}{said}; pass replace=True to swap its program, or another handle")
    elif err == _errno.ENOENT and replace:
        msg = f"no filter with handle {handle:#x} and priority {priority} on {where} to replace{said}"
    elif err == _errno.EINVAL:
        msg = (f"the kernel refused the tc filter on {where}{said} (EINVAL): the program fd must "
               "be a loaded sched_cls program, and no filter of another kind or protocol may "
               f"use priority {priority or '(kernel-chosen)'} there (see tc_query)")
    else:
        msg = f"adding a tc filter on {where} failed: {e}"
    return AttachError(msg, program=prog_label(prog), cause=e)


def attach_tc(prog: ProgramLike, iface: str | int, direction: str | None = "ingress", *, handle: int = 0,
              priority: int = 0, replace: bool = False) -> TcLink:
    """Attach a tc program as a cls_bpf direct-action filter on ``iface`` (bpf_tc_attach).

    Creates the clsact qdisc if missing (bpf_tc_hook_create). ``direction`` None takes the
    program's (SEC("tc/egress"), ...), else ingress. ``handle``/``priority`` 0 let the
    kernel choose (the link reports the chosen ones); ``replace`` swaps the program of the
    filter with that handle and priority (both required), or creates it if there is none,
    as libbpf's bpf_tc_attach with BPF_TC_F_REPLACE does.
    """
    _check_prog(prog, "a tc filter")
    d = _direction(prog, direction, "ingress")
    if not 0 <= priority <= 0xFFFF:
        raise OptionError(f"tc priority must be in 0..65535, got {priority}")
    if not 0 <= handle <= 0xFFFFFFFF:
        raise OptionError(f"tc handle must be a 32-bit value, got {handle}")
    if replace and not (handle and priority):
        raise OptionError("replace=True needs the handle and priority of the filter to replace")
    fd = prog_fd(prog)
    sock = NetlinkSocket()
    key: tuple[int, int] | None = None
    try:
        ifindex, label = resolve_iface(iface, prog, sock)
        try:
            created = _nl.clsact_add(ifindex, sock)
        except SyscallError as e:
            raise _tc_error(e, prog, label, d, handle, priority, replace) from e
        ns_key = (_netns_ino(), ifindex)
        with _owned_lock:
            if created or ns_key in _owned:
                key = ns_key
                _owned[key] = _owned.get(key, 0) + 1
        try:
            filt = _nl.filter_add_bpf(ifindex, _nl.tc_parent(d), fd, name=_filter_name(prog),
                                      handle=handle, priority=priority, replace=replace, sock=sock)
        except SyscallError as e:
            raise _tc_error(e, prog, label, d, handle, priority, replace) from e
    except BaseException:
        try:
            if key is not None:
                _release_qdisc(key, sock)
        finally:
            sock.close()
        raise
    return TcLink(prog, sock=sock, filter=filt, direction=d, owner_key=key, target=f"{label}/{d}")


def tc_query(iface: str | int, direction: str = "ingress") -> list[TcFilter]:
    """The filters under ``iface``'s clsact ``direction`` (handle, priority, kind, and for
    cls_bpf the program id, name, direct-action flag and tag); [] without a clsact qdisc."""
    d = _direction(None, direction, None)
    with NetlinkSocket() as s:
        ifindex, label = resolve_iface(iface, sock=s)
        try:
            return _nl.filter_list(ifindex, _nl.tc_parent(d), s)
        except NetlinkError as e:
            if e.errno == _errno.ENODEV:
                raise AttachError(f"no network interface {label} in this network namespace",
                                  cause=e) from e
            if e.errno in (_errno.EINVAL, _errno.ENOENT):  # no clsact qdisc to list under
                return []
            raise

