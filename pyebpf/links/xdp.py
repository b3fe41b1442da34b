"""XDP on a network interface: a bpf link (BPF_LINK_CREATE(BPF_XDP)) or netlink (IFLA_XDP).

libbpf's bpf_program__attach_xdp makes the link; bpf_xdp_attach/bpf_xdp_detach/
bpf_xdp_query are the netlink side. A link is updatable and pinnable and nothing
else can replace it while it lives; a netlink attachment stays until someone detaches
it, so :class:`XdpNetlinkLink` detaches on close, but only while its program is still
the attached one (libbpf's expected_prog_fd).
"""

from __future__ import annotations

import atexit
import errno as _errno
import os
import weakref
from typing import Any, cast

from .._log import get_logger
from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import netlink as _nl
from ..sys.fd import FD
from ..sys.netlink import (
    XDP_ATTACHED_DRV,
    XDP_ATTACHED_HW,
    XDP_ATTACHED_MULTI,
    XDP_ATTACHED_NONE,
    XDP_ATTACHED_SKB,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_MODES,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    NetlinkError,
    NetlinkSocket,
    XdpState,
)
from ..uapi import AttachType, LinkType, ProgType
from .base import AttachError, Link, ProgramLike, ProgRef, prog_fd, prog_label

__all__ = [
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_HW_MODE",
    "XDP_FLAGS_REPLACE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_UPDATE_IF_NOEXIST",
    "XdpInfo",
    "XdpLink",
    "XdpNetlinkLink",
    "NetlinkAttachment",
    "attach_xdp",
    "resolve_iface",
    "xdp_query",
]

_log = get_logger("pyebpf.links")

_MODES = {
    "skb": XDP_FLAGS_SKB_MODE, "generic": XDP_FLAGS_SKB_MODE,
    "drv": XDP_FLAGS_DRV_MODE, "native": XDP_FLAGS_DRV_MODE,
    "hw": XDP_FLAGS_HW_MODE, "offload": XDP_FLAGS_HW_MODE,
}
_MODE_NAME = {XDP_FLAGS_SKB_MODE: "skb", XDP_FLAGS_DRV_MODE: "drv", XDP_FLAGS_HW_MODE: "hw"}
_ATTACHED_NAME = {XDP_ATTACHED_NONE: None, XDP_ATTACHED_DRV: "drv", XDP_ATTACHED_SKB: "skb",
                  XDP_ATTACHED_HW: "hw", XDP_ATTACHED_MULTI: "multi"}
NET_PERM_HINT = ("attaching to a network interface needs CAP_NET_ADMIN (and CAP_BPF or "
                 "CAP_SYS_ADMIN): run as root or grant those capabilities")


def resolve_iface(iface: str | int, prog: Any = None, sock: NetlinkSocket | None = None) -> tuple[int, str]:
    """(ifindex, label) of an interface name or index in the current network namespace
    (the label is the name, or "ifindex N").

    An unknown name raises AttachError; an index is checked by the kernel when used.
    """
    if isinstance(iface, bool) or not isinstance(iface, (str, int)):
        raise OptionError(f"interface must be a name or an index, not {type(iface).__name__}")
    if isinstance(iface, int):
        if iface <= 0:
            raise OptionError(f"interface index must be positive, got {iface}")
        return iface, f"ifindex {iface}"
    try:
        return _nl.link_index(iface, sock), iface
    except NetlinkError as e:
        if e.errno == _errno.ENODEV:
            raise AttachError(
                f"no network interface named {iface!r} in this network namespace (see `ip link`; "
                "an interface in another namespace is reached by entering it first)",
                program=prog_label(prog), cause=e) from e
        raise AttachError(f"cannot look up interface {iface!r}: {e}", program=prog_label(prog),
                          cause=e) from e


def _mode_flags(mode: str | None) -> int:
    if mode is None:
        return 0
    try:
        return _MODES[mode.lower()]
    except (KeyError, AttributeError):
        raise OptionError(f"unknown XDP mode {mode!r}: use one of 'skb' (or 'generic'), "
                          "'drv' (or 'native'), 'hw' (or 'offload'), or None for the kernel's choice") from None


def _check_prog(prog: Any) -> None:
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.XDP:
        name = ptype.name.lower() if isinstance(ptype, ProgType) else str(ptype)
        raise AttachError(f"a {name} program cannot be attached to an interface's XDP hook: "
                          "it needs an XDP program (SEC(\"xdp\"))", program=prog_label(prog))
    eat = getattr(prog, "expected_attach_type", None)
    if eat in (AttachType.XDP_DEVMAP, AttachType.XDP_CPUMAP):
        raise AttachError(f"this XDP program was loaded for a {'devmap' if eat == AttachType.XDP_DEVMAP else 'cpumap'} "
                          "entry (SEC(\"xdp/devmap\"/\"xdp/cpumap\")) and cannot be attached to an "
                          "interface; store it in the map instead", program=prog_label(prog))


class XdpInfo(XdpState):
    """The XDP state of an interface (bpf_xdp_query): attach mode, program id per mode, and
    the driver's XDP features (NETDEV_XDP_ACT_* bits, 0 where the kernel cannot say)."""

    feature_flags: int
    zc_max_segs: int

    def __init__(self, ifindex: int, attach_mode: int = XDP_ATTACHED_NONE, prog_id: int = 0,
                 drv_prog_id: int = 0, skb_prog_id: int = 0, hw_prog_id: int = 0,
                 feature_flags: int = 0, zc_max_segs: int = 0) -> None:
        super().__init__(ifindex, attach_mode, prog_id, drv_prog_id, skb_prog_id, hw_prog_id)
        self.feature_flags = feature_flags
        self.zc_max_segs = zc_max_segs

    @classmethod
    def from_state(cls, s: XdpState, feature_flags: int = 0, zc_max_segs: int = 0) -> XdpInfo:
        return cls(s.ifindex, s.attach_mode, s.prog_id, s.drv_prog_id, s.skb_prog_id,
                   s.hw_prog_id, feature_flags, zc_max_segs)

    @property
    def features(self) -> list[str]:
        """The feature flags by name ("basic", "redirect", "rx-sg", ...)."""
        return [n for bit, n in _nl.NETDEV_XDP_ACT.items() if self.feature_flags & bit]

    @property
    def mode(self) -> str | None:
        """"skb", "drv", "hw", "multi" (several modes at once) or None (nothing attached)."""
        return _ATTACHED_NAME.get(self.attach_mode, str(self.attach_mode))

    @property
    def prog_ids(self) -> dict[str, int]:
        """The attached program id of each mode that has one."""
        ids = {"drv": self.drv_prog_id, "skb": self.skb_prog_id, "hw": self.hw_prog_id}
        return {k: v for k, v in ids.items() if v}

    def id_for(self, mode: str | None = None) -> int:
        """The program id in ``mode`` (None: the single attached program), 0 if none
        (bpf_xdp_query_id; with several modes in use a mode must be named)."""
        if mode is None:
            if self.attach_mode == XDP_ATTACHED_MULTI:
                raise OptionError("programs are attached in several XDP modes: name the mode")
            return self.prog_id
        return {XDP_FLAGS_SKB_MODE: self.skb_prog_id, XDP_FLAGS_DRV_MODE: self.drv_prog_id,
                XDP_FLAGS_HW_MODE: self.hw_prog_id}[_mode_flags(mode)]


def xdp_query(iface: str | int) -> XdpInfo:
    """The XDP programs attached to ``iface`` (a name or index in the current netns) and
    the driver's XDP features, like libbpf's bpf_xdp_query."""
    with NetlinkSocket() as s:
        ifindex, label = resolve_iface(iface, sock=s)
        try:
            state = _nl.xdp_query(ifindex, s)
        except NetlinkError as e:
            if e.errno == _errno.ENODEV:
                raise AttachError(f"no network interface {label} in this network namespace",
                                  cause=e) from e
            raise
    try:
        features = _nl.xdp_features(ifindex)
    except SyscallError as e:  # the features are extra information; the query stands without
        _log.debug("XDP features of ifindex %d unavailable: %s", ifindex, e)
        features = (0, 0)
    return XdpInfo.from_state(state, *features)


def _current(ifindex: int, sock: NetlinkSocket | None = None) -> XdpInfo | None:
    try:
        return XdpInfo.from_state(_nl.xdp_query(ifindex, sock))
    except SyscallError:
        return None


def _occupant(ifindex: int, mode_flags: int, sock: NetlinkSocket | None = None) -> tuple[str, int]:
    """Who holds the XDP hook now, for error messages: (description, program id or 0)."""
    cur = _current(ifindex, sock)
    if cur is None or cur.attach_mode == XDP_ATTACHED_NONE:
        return "another program", 0
    ids = cur.prog_ids
    if mode_flags and _MODE_NAME[mode_flags] in ids:
        m = _MODE_NAME[mode_flags]
        return f"program id {ids[m]} ({m} mode)", ids[m]
    if not ids:
        return "another program", 0
    return "program " + ", ".join(f"id {v} ({k} mode)" for k, v in ids.items()), next(iter(ids.values()))


def _holding_link(ifindex: int, prog_id: int) -> int | None:
    """The id of an XDP bpf link on ``ifindex`` running ``prog_id``, if there is one (an
    ifindex is per namespace, the program id narrows it down)."""
    from ..sys.syscall import Cmd

    cur = 0
    try:
        while (cur := _bpf.get_next_id(Cmd.LINK_GET_NEXT_ID, cur) or 0):
            try:
                with _bpf.link_get_fd_by_id(cur) as fd:
                    info = _bpf.link_info(fd)
                    if info.type == LinkType.XDP and info.prog_id == prog_id and \
                            int.from_bytes(bytes(info.extra)[:4], "little") == ifindex:
                        return cur
            except SyscallError:
                continue
    except SyscallError:
        pass
    return None


def _ifindex_missing(ifindex: int, sock: NetlinkSocket | None) -> bool:
    try:
        _nl.link_name(ifindex, sock)
    except NetlinkError as e:
        return e.errno == _errno.ENODEV
    return False


def _explain(e: SyscallError, prog: Any, label: str, ifindex: int, mode_flags: int,
             via_netlink: bool, replacing: bool, sock: NetlinkSocket | None = None) -> AttachError:
    err = e.errno
    mode = f"{_MODE_NAME[mode_flags]} mode" if mode_flags else "the default mode"
    extack = str(getattr(e, "extack", "") or "")
    said = f" (kernel: {extack})" if extack else ""
    if err == _errno.EINVAL and _ifindex_missing(ifindex, sock):
        err = _errno.ENODEV  # BPF_LINK_CREATE says EINVAL for an unknown ifindex
    if err == _errno.ENODEV:
        msg = f"no network interface {label} in this network namespace"
    elif err in (_errno.EPERM, _errno.EACCES):
        msg = f"no permission to attach XDP to {label}: {NET_PERM_HINT}"
    elif err == _errno.EOPNOTSUPP:
        msg = (f"the driver of {label} does not support XDP in {mode}{said}; generic XDP "
               "(mode='skb') works on every interface")
    elif err == _errno.EBUSY:
        who, cur_id = _occupant(ifindex, mode_flags, sock)
        link_id = _holding_link(ifindex, cur_id) if cur_id else None
        if link_id is not None or "BPF XDP link" in extack:
            held = f"bpf link id {link_id}" if link_id is not None else "a bpf link"
            msg = (f"the XDP hook of {label} is held by {held} running {who}{said}; nothing can "
                   "replace a link's program but the link itself: update that link "
                   "(Link.update) or close it")
        elif via_netlink:
            msg = (f"{label} already has an XDP {who} attached{said}; pass replace=<that program> "
                   "to swap it, or detach it first")
        else:
            msg = (f"{label} already has an XDP {who} attached through netlink{said}; a bpf link "
                   "cannot replace it: detach it first, or swap it with attach_xdp(..., "
                   "netlink=True, replace=<that program>)")
    elif err == _errno.EEXIST:
        who, _ = _occupant(ifindex, mode_flags, sock)
        if replacing:
            msg = (f"the XDP program attached to {label} is not the expected one (replace=): "
                   f"now {who}{said}")
        else:
            msg = (f"{label} has an XDP {who} attached{said}; native (drv) and generic (skb) "
                   "XDP cannot be active at the same time: detach it or use the same mode")
    elif err == _errno.EINVAL and mode_flags == XDP_FLAGS_HW_MODE:
        msg = (f"{label} cannot run XDP in hw (offload) mode{said}: that needs a NIC that "
               "offloads XDP and a program loaded for that device; use mode='drv' or 'skb'")
    elif err == _errno.EINVAL:
        msg = (f"the kernel refused to attach to {label} in {mode}{said} (EINVAL): the program "
               "may need a different flag (xdp.frags for a large MTU) or the mode flags are invalid")
    else:
        msg = f"attaching XDP to {label} failed: {e}"
    return AttachError(msg, program=prog_label(prog), cause=e)


def _replace_fd(replace: Any) -> tuple[int, FD | None]:
    """(fd, owned FD to close) of the program named by ``replace``: a Program, a Link
    (its program), an FD, or an int program id."""
    if isinstance(replace, Link):
        replace = replace.program
        if replace is None:
            raise OptionError("replace=: this link does not know its program")
    if isinstance(replace, bool):
        raise OptionError("replace= takes a program, a link, an FD or a program id")
    if isinstance(replace, int):
        try:
            owned = _bpf.prog_get_fd_by_id(replace)
        except SyscallError as e:
            raise OptionError(f"replace=: no program with id {replace} ({e.errname})") from e
        return int(owned), owned
    if isinstance(replace, FD):
        return int(replace), None
    if hasattr(replace, "fd"):
        return prog_fd(replace), None
    raise OptionError(f"replace= takes a program, a link, an FD or a program id, not {type(replace).__name__}")


class XdpLink(Link):
    """An XDP program attached to an interface through a bpf link (updatable, pinnable)."""

    kind = "xdp"
    updatable = True

    def __init__(self, fd: FD | None, program: Any = None, *, ifindex: int = 0,
                 mode: str | None = None, target: str = "", **kw: Any) -> None:
        super().__init__(fd, program, target=target, **kw)
        self.ifindex = ifindex
        self.mode = mode

    @classmethod
    def from_pin(cls, path: str) -> XdpLink:
        """Open an XDP link pinned at ``path``; ``ifindex`` comes from the kernel."""
        link = cast(XdpLink, super().from_pin(path))
        try:
            link.ifindex = int(link.info().details.get("ifindex", 0))
        except SyscallError:
            pass
        return link


# Netlink attachments outlive the process unless someone undoes them. Live ones are
# undone at exit, before pyebpf.sys.fd's exit hook closes the fds they need (atexit runs
# hooks last-registered first), and only by the process that made them: a forked child
# exiting must not detach its parent's programs.
_live_netlink: weakref.WeakSet[Any] = weakref.WeakSet()


class NetlinkAttachment:
    """Mixin of the Link kinds that undo a netlink attachment on close (XDP, tc filters)."""

    _owner_pid = 0

    def _track(self) -> None:
        self._owner_pid = os.getpid()
        _live_netlink.add(self)

    def _abandon(self) -> None:
        """Release our fds and socket without touching the attachment (in a forked child)."""
        raise NotImplementedError

    def __del__(self) -> None:
        try:
            if self._owner_pid and self._owner_pid != os.getpid():
                self._abandon()
            else:
                self.close()  # type: ignore[attr-defined]
        except Exception:  # never raise from a finalizer
            pass


@atexit.register
def _undo_at_exit() -> None:
    pid = os.getpid()
    for att in list(_live_netlink):
        if att._owner_pid == pid:
            try:
                att.close()
            except Exception as e:  # keep going: the others still need undoing
                _log.debug("undoing %r at exit failed: %s", att, e)


class XdpNetlinkLink(NetlinkAttachment, XdpLink):
    """An XDP program attached through netlink (no bpf link: ``fd`` is None).

    ``close()`` detaches it if it is still the attached program; ``update()`` swaps it
    atomically (XDP_FLAGS_REPLACE). It keeps its netlink socket so the detach happens
    in the network namespace of the attach, and a dup of the program fd as the
    expected program.
    """

    kind = "xdp(netlink)"

    def __init__(self, program: Any, *, sock: NetlinkSocket, prog: FD, ifindex: int,
                 mode_flags: int, target: str = "") -> None:
        super().__init__(None, program, ifindex=ifindex, mode=_MODE_NAME.get(mode_flags),
                         target=target)
        self._sock: NetlinkSocket | None = sock
        self._prog = prog
        self._mode_flags = mode_flags
        self._track()

    def _abandon(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._prog.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    no_link = ("this XDP program was attached through netlink, which makes no bpf link; "
               "attach with netlink=False for a pinnable link")

    @classmethod
    def from_pin(cls, path: str) -> XdpLink:
        """Netlink attachments are never pinned: opens ``path`` as an :class:`XdpLink`."""
        return XdpLink.from_pin(path)

    @classmethod
    def from_id(cls, link_id: int) -> XdpLink:
        """Netlink attachments have no id: opens ``link_id`` as an :class:`XdpLink`."""
        return XdpLink(_bpf.link_get_fd_by_id(link_id))

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Swap in ``new_prog`` if our program (or ``old_prog``) is still the attached one."""
        if self._sock is None:
            raise AttachError("cannot update: the XDP attachment is closed", program=prog_label(self.program))
        _check_prog(new_prog)
        expected, owned = _replace_fd(old_prog) if old_prog is not None else (int(self._prog), None)
        try:
            new_dup = FD(_dup(prog_fd(new_prog)), "prog")
            try:
                _nl.xdp_set(self.ifindex, int(new_dup), self._mode_flags, expected, self._sock)
            except SyscallError as e:
                new_dup.close()
                raise _explain(e, new_prog, self.target, self.ifindex, self._mode_flags, True,
                               True, self._sock) from e
        finally:
            if owned is not None:
                owned.close()
        self._prog.close()
        self._prog = new_dup
        self.program = new_prog

    def detach(self) -> None:
        """Detach now (same as close())."""
        self.close()

    def close(self) -> None:
        """Detach our program (only if it is still the attached one) and release the socket."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            _nl.xdp_set(self.ifindex, -1, self._mode_flags, int(self._prog), sock)
        except SyscallError as e:
            # EEXIST: someone replaced our program, so it is theirs to detach; ENODEV: the
            # interface (or its namespace) is gone, and our program with it
            if e.errno not in (_errno.EEXIST, _errno.ENODEV, _errno.EINVAL):
                _log.warning("detaching XDP from ifindex %d failed: %s", self.ifindex, e)
            else:
                _log.debug("XDP detach from ifindex %d skipped: %s", self.ifindex, e)
        finally:
            self._prog.close()
            sock.close()


def _dup(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def attach_xdp(prog: ProgramLike, iface: str | int, *, mode: str | None = None, netlink: bool = False,
               replace: Any = None, flags: int = 0) -> XdpLink:
    """Attach an XDP program to ``iface`` (name or index, in the current network namespace).

    ``mode``: "skb"/"generic", "drv"/"native", "hw"/"offload", or None (the kernel picks
    native when the driver has it, else generic). By default a bpf link
    (BPF_LINK_CREATE(BPF_XDP)): updatable, pinnable, detached on close. ``netlink=True``
    attaches through netlink (bpf_xdp_attach) with XDP_FLAGS_UPDATE_IF_NOEXIST, or, with
    ``replace`` (the program expected to be attached now: a Program, Link, FD or program
    id), with XDP_FLAGS_REPLACE; the returned link detaches on close only while its
    program is still the attached one. ``flags`` adds raw XDP_FLAGS_* bits.
    """
    _check_prog(prog)
    mflags = _mode_flags(mode)
    if flags & XDP_FLAGS_MODES and mflags and flags & XDP_FLAGS_MODES != mflags:
        raise OptionError(f"flags={flags:#x} names another XDP mode than mode={mode!r}")
    mflags |= flags & XDP_FLAGS_MODES
    if bin(mflags).count("1") > 1:
        raise OptionError(f"only one XDP mode may be set (flags={flags:#x})")
    fd = prog_fd(prog)
    if not netlink:
        if replace is not None:
            raise OptionError("replace= needs netlink=True: a bpf link never replaces another "
                              "program; to swap the program of an XDP link use Link.update")
        if flags & ~XDP_FLAGS_MODES:
            raise OptionError(f"a bpf link takes only XDP mode flags, not {flags & ~XDP_FLAGS_MODES:#x} "
                              "(UPDATE_IF_NOEXIST/REPLACE are netlink flags)")
        ifindex, label = resolve_iface(iface, prog)
        try:
            lfd = _bpf.link_create(fd, ifindex, AttachType.XDP, mflags)
        except SyscallError as e:
            raise _explain(e, prog, label, ifindex, mflags, False, False) from e
        return XdpLink(lfd, prog, ifindex=ifindex, mode=_MODE_NAME.get(mflags), target=label)

    sock = NetlinkSocket()
    owned: FD | None = None
    try:
        ifindex, label = resolve_iface(iface, prog, sock)
        nl_flags = mflags | (flags & ~XDP_FLAGS_MODES)
        expected: int | None = None
        if replace is not None:
            expected, owned = _replace_fd(replace)
            nl_flags |= XDP_FLAGS_REPLACE
        elif not nl_flags & XDP_FLAGS_REPLACE:
            nl_flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
        dup = FD(_dup(fd), "prog")
        try:
            _nl.xdp_set(ifindex, int(dup), nl_flags, expected, sock)
        except SyscallError as e:
            dup.close()
            raise _explain(e, prog, label, ifindex, mflags, True, replace is not None, sock) from e
    except BaseException:
        sock.close()
        raise
    finally:
        if owned is not None:
            owned.close()
    return XdpNetlinkLink(prog, sock=sock, prog=dup, ifindex=ifindex, mode_flags=mflags,
                          target=label)
