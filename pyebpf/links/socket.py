"""Socket hooks: socket filters and sk_reuseport programs on a socket (setsockopt), and
sk_msg / sk_skb programs on a sockmap or sockhash (libbpf's bpf_program__attach_sockmap).

A socket attachment holds no reference to the user's socket: it remembers the fd number
and the socket's inode, and ``close()`` detaches only if that fd still names the same
socket, so a closed socket (which took its filter with it) is left alone. Like every
Link, an attachment that is dropped is closed by garbage collection: keep it while the
program should stay attached.
"""

from __future__ import annotations

import errno as _errno
import os
import weakref
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import sock as _sock
from ..sys.fd import FD
from ..uapi import AttachType, MapType, ProgType
from .base import AttachError, Link, ProgramLike, ProgRef, prog_fd, prog_label

__all__ = [
    "SockmapLink",
    "SockmapProgAttachment",
    "SocketAttachment",
    "attach_socket",
    "attach_sockmap",
    "sockmap_attach_type",
]


def _sock_fd(sock: Any) -> int:
    if isinstance(sock, bool):
        raise OptionError(f"not a socket: {sock!r}")
    if isinstance(sock, int):
        return sock
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise OptionError(f"attach_socket needs a socket or a socket fd, not {sock!r}")
    try:
        n = int(fileno())
    except (OSError, ValueError) as e:
        raise OptionError(f"the socket {sock!r} is closed") from e
    if n < 0:
        raise OptionError(f"the socket {sock!r} is closed")
    return n


class SocketAttachment(Link):
    """A socket filter (SO_ATTACH_BPF) or reuseport program (SO_ATTACH_REUSEPORT_EBPF) on a
    socket. No bpf link: ``fd`` is None; ``close()`` detaches if the socket is still open
    and never closes the socket; ``update(prog)`` swaps the program in place (the kernel
    replaces a socket's program atomically)."""

    kind = "socket_filter"
    updatable = True

    def __init__(self, program: Any, sock: Any, sock_fd: int, identity: tuple[int, int],
                 *, reuseport: bool) -> None:
        super().__init__(None, program, target=f"socket fd {sock_fd}")
        self.reuseport = reuseport
        if reuseport:
            self.kind = "sk_reuseport"
        self.sock_fd = sock_fd
        self._identity = identity
        try:
            self._sock_ref: Any = weakref.ref(sock) if not isinstance(sock, int) else None
        except TypeError:  # an object without weakref support: fall back to the fd number
            self._sock_ref = None
        self._attached = True

    @property
    def closed(self) -> bool:
        return not self._attached

    def _live_fd(self) -> int | None:
        """The socket's fd if it is still open and still the same socket, else None."""
        if self._sock_ref is not None:
            s = self._sock_ref()
            if s is None:
                return None
            try:
                n = int(s.fileno())
            except (OSError, ValueError):
                return None
            if n < 0:
                return None
        else:
            n = self.sock_fd
        return n if _sock.file_identity(n) == self._identity else None

    def _need_link_fd(self, what: str) -> FD:
        raise AttachError(f"cannot {what}: a {self.kind} attachment is a socket option, not a "
                          "bpf link", program=prog_label(self.program))

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Replace the socket's program with ``new_prog`` (same kind) by attaching it again."""
        if not self._attached:
            raise AttachError("cannot update: the attachment is closed", program=prog_label(self.program))
        if old_prog is not None and \
                _bpf.prog_info(prog_fd(old_prog)).id != _bpf.prog_info(prog_fd(self.program)).id:
            raise AttachError("cannot update: old_prog is not the attached program",
                              program=prog_label(self.program))
        n = self._live_fd()
        if n is None:
            raise AttachError("cannot update: the socket is closed", program=prog_label(self.program))
        _check_type(new_prog, self.reuseport)
        _setsockopt_attach(new_prog, n, self.reuseport)
        self.program = new_prog

    def close(self) -> None:
        """Detach from the socket if it is still open (the socket itself stays open); idempotent."""
        if not self._attached:
            return
        self._attached = False
        n = self._live_fd()
        if n is None:
            return  # the socket went, and its program with it
        try:
            if self.reuseport:
                _sock.detach_reuseport_bpf(n)
            else:
                _sock.detach_bpf(n)
        except SyscallError as e:
            # ENOENT: detached by someone else already; nothing of ours is left
            if e.errno != _errno.ENOENT:
                raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.sock_fd}"
        return f"SocketAttachment({self.kind}, prog={prog_label(self.program)}, {state})"


def _check_type(prog: Any, reuseport: bool | None) -> bool:
    """Whether ``prog`` goes through SO_ATTACH_REUSEPORT_EBPF; AttachError for other types."""
    ptype = getattr(prog, "type", None)
    if ptype == ProgType.SK_REUSEPORT:
        if reuseport is False:
            raise AttachError("a sk_reuseport program cannot be a socket filter (reuseport=False)",
                              program=prog_label(prog))
        return True
    if ptype == ProgType.SOCKET_FILTER or ptype is None:
        return bool(reuseport)
    raise AttachError(f"attach_socket needs a socket filter (SEC(\"socket\")) or sk_reuseport "
                      f"program, not a {getattr(ptype, 'name', ptype)} program",
                      program=prog_label(prog))


def _setsockopt_attach(prog: Any, n: int, reuseport: bool) -> None:
    pfd = prog_fd(prog)
    opt = "SO_ATTACH_REUSEPORT_EBPF" if reuseport else "SO_ATTACH_BPF"
    try:
        if reuseport:
            _sock.attach_reuseport_bpf(n, pfd)
        else:
            _sock.attach_bpf(n, pfd)
    except SyscallError as e:
        if e.errno == _errno.ENOTSOCK:
            msg = f"fd {n} is not a socket"
        elif e.errno == _errno.EBADF:
            msg = f"fd {n} is not open"
        elif e.errno == _errno.EPERM and not reuseport:
            msg = (f"no permission to change the filter of socket fd {n}: its filter is locked "
                   "(SO_LOCK_FILTER)")
        elif e.errno == _errno.EINVAL and reuseport:
            msg = (f"cannot attach a reuseport program to socket fd {n}: set SO_REUSEPORT on the "
                   "socket (before bind) first")
        else:
            msg = f"cannot attach to socket fd {n} ({opt}): {e}"
        raise AttachError(msg, program=prog_label(prog), cause=e) from e


def attach_socket(prog: ProgramLike, sock: Any, *, reuseport: bool | None = None) -> SocketAttachment:
    """Attach a socket filter (SO_ATTACH_BPF) or sk_reuseport program
    (SO_ATTACH_REUSEPORT_EBPF) to ``sock`` (a socket object or an fd).

    ``reuseport=True`` (a pyebpf addition) makes a socket filter program the reuseport
    selector, which the kernel also allows (its return value picks the socket index).
    Closing the result detaches; it never closes the socket.
    """
    use_reuseport = _check_type(prog, reuseport)
    n = _sock_fd(sock)
    ident = _sock.file_identity(n)
    if ident is None:
        raise AttachError(f"socket fd {n} is not open", program=prog_label(prog))
    _setsockopt_attach(prog, n, use_reuseport)
    return SocketAttachment(prog, sock, n, ident, reuseport=use_reuseport)


# --- sockmap / sockhash ------------------------------------------------------------------------

_SOCKMAP_TYPES = {
    "stream_parser": AttachType.SK_SKB_STREAM_PARSER,
    "sk_skb_stream_parser": AttachType.SK_SKB_STREAM_PARSER,
    "stream_verdict": AttachType.SK_SKB_STREAM_VERDICT,
    "sk_skb_stream_verdict": AttachType.SK_SKB_STREAM_VERDICT,
    "verdict": AttachType.SK_SKB_VERDICT,
    "sk_skb_verdict": AttachType.SK_SKB_VERDICT,
    "msg": AttachType.SK_MSG_VERDICT,
    "sk_msg": AttachType.SK_MSG_VERDICT,
    "sk_msg_verdict": AttachType.SK_MSG_VERDICT,
}
_FOR_TYPE = {
    ProgType.SK_MSG: (AttachType.SK_MSG_VERDICT,),
    ProgType.SK_SKB: (AttachType.SK_SKB_STREAM_PARSER, AttachType.SK_SKB_STREAM_VERDICT,
                      AttachType.SK_SKB_VERDICT),
}


def sockmap_attach_type(prog: Any, attach_type: Any = None) -> AttachType:
    """The sockmap attach type for ``prog``: ``attach_type`` (an AttachType, a number or a
    name like "stream_parser", "stream_verdict", "verdict", "msg"), else the program's
    expected attach type from its SEC() row. AttachError when it does not fit the program."""
    name = prog_label(prog)
    ptype = getattr(prog, "type", None)
    allowed = _FOR_TYPE.get(ptype)  # type: ignore[arg-type]
    if ptype is not None and allowed is None:
        raise AttachError(f"attach_sockmap needs a sk_msg or sk_skb program, not a "
                          f"{getattr(ptype, 'name', ptype)} program", program=name)
    if attach_type is None:
        eat = getattr(prog, "expected_attach_type", None)
        if eat is None:
            eat = getattr(getattr(prog, "spec", None), "expected_attach_type", None)
        if eat is None:
            if ptype == ProgType.SK_MSG:
                return AttachType.SK_MSG_VERDICT
            raise OptionError(f"{name}: SEC(\"sk_skb\") does not say which hook; pass attach_type "
                              "('stream_parser', 'stream_verdict' or 'verdict')")
        attach_type = eat
    if isinstance(attach_type, str):
        key = attach_type.lower().removeprefix("bpf_")
        at = _SOCKMAP_TYPES.get(key)
        if at is None:
            raise OptionError(f"unknown sockmap attach type {attach_type!r} (want stream_parser, "
                              "stream_verdict, verdict or msg)")
    else:
        try:
            at = AttachType(int(attach_type))
        except (TypeError, ValueError):
            raise OptionError(f"unknown sockmap attach type {attach_type!r}") from None
    if allowed is not None and at not in allowed:
        want = ", ".join(a.name for a in allowed)
        raise AttachError(f"a {ptype.name} program cannot attach to a sockmap as {at.name} (it "  # type: ignore[union-attr]
                          f"takes {want})", program=name)
    if allowed is None and at not in _SOCKMAP_TYPES.values():
        raise OptionError(f"{at.name} is not a sockmap attach type")
    return at


def _map_fd(sockmap: Any, program: str | None) -> int:
    fd = getattr(sockmap, "fd", sockmap)
    if isinstance(fd, bool):
        raise OptionError(f"not a sockmap: {sockmap!r}")
    try:
        n = int(fd)
    except (TypeError, ValueError):
        raise OptionError(f"attach_sockmap needs a sockmap/sockhash Map or its fd, not {sockmap!r}"
                          ) from None
    try:
        info = _bpf.map_info(n)
    except SyscallError as e:
        raise AttachError(f"fd {n} is not an open BPF map ({e.errname})", program=program,
                          cause=e) from e
    if info.type not in (MapType.SOCKMAP, MapType.SOCKHASH):
        try:
            tname = MapType(info.type).name.lower()
        except ValueError:
            tname = str(info.type)
        raise AttachError(f"sk_msg/sk_skb programs attach to a sockmap or sockhash, not to a "
                          f"{tname} map", program=program)
    return n


class SockmapLink(Link):
    """A sk_msg/sk_skb program linked to a sockmap (BPF_LINK_CREATE, Linux 6.10+); updatable."""

    kind = "sockmap"
    updatable = True


class SockmapProgAttachment(Link):
    """A sk_msg/sk_skb program attached to a sockmap with BPF_PROG_ATTACH (no link fd).

    Holds duplicates of the map and program fds, which BPF_PROG_DETACH needs; ``close()``
    detaches.
    """

    kind = "sockmap_prog_attach"

    def __init__(self, program: Any, map_dup: FD, prog_dup: FD, attach_type: AttachType,
                 target: str) -> None:
        super().__init__(None, program, target=target, extra_fds=(map_dup, prog_dup))
        self._map_dup = map_dup
        self._prog_dup = prog_dup
        self.attach_type = attach_type

    @property
    def closed(self) -> bool:
        return self._prog_dup.closed

    no_link = ("this program was attached to the sockmap with BPF_PROG_ATTACH and has no bpf "
               "link (attach with link=True for one)")

    def close(self) -> None:
        """BPF_PROG_DETACH from the map, then close the held fds; idempotent."""
        if self._prog_dup.closed:
            return
        try:
            _bpf.prog_detach(self._map_dup, self.attach_type, self._prog_dup)
        except SyscallError as e:
            if e.errno != _errno.ENOENT:  # detached or replaced by someone else already
                raise
        finally:
            super().close()


def attach_sockmap(prog: ProgramLike, sockmap: Any, attach_type: Any = None, *,
                   link: bool = True) -> SockmapLink | SockmapProgAttachment:
    """Attach a sk_msg or sk_skb program to a sockmap/sockhash (a Map or a map fd).

    ``attach_type`` defaults to the SEC() row's (sk_msg, sk_skb/stream_parser,
    sk_skb/stream_verdict, sk_skb/verdict). ``link=True`` makes a bpf link whose target
    is the map (Linux 6.10+); ``link=False`` uses BPF_PROG_ATTACH and closing detaches.
    """
    name = prog_label(prog)
    at = sockmap_attach_type(prog, attach_type)
    mfd = _map_fd(sockmap, name)
    pfd = prog_fd(prog)
    target = f"sockmap fd {mfd} {at.name.lower()}"
    if link:
        try:
            return SockmapLink(_bpf.link_create(pfd, mfd, at), prog, target=target)
        except SyscallError as e:
            raise _explain_sockmap(e, name, at, link=True) from e
    map_dup = FD(os.dup(mfd), "map")
    prog_dup: FD | None = None
    try:
        prog_dup = FD(os.dup(pfd), "prog")
        _bpf.prog_attach(pfd, mfd, at)
    except BaseException as e:
        map_dup.close()
        if prog_dup is not None:
            prog_dup.close()
        if isinstance(e, SyscallError):
            raise _explain_sockmap(e, name, at, link=False) from e
        raise
    return SockmapProgAttachment(prog, map_dup, prog_dup, at, target)


def _explain_sockmap(e: SyscallError, name: str | None, at: AttachType, *, link: bool) -> AttachError:
    how = "BPF_LINK_CREATE" if link else "BPF_PROG_ATTACH"
    if e.errno in (_errno.EBUSY, _errno.EEXIST):
        msg = (f"the sockmap already has a {at.name} program attached ({how}: {e.errname}); "
               "detach it first or update its link")
    elif e.errno == _errno.EPERM:
        msg = f"no permission to attach to the sockmap ({how}: EPERM): needs CAP_NET_ADMIN and CAP_BPF (run as root)"
    elif e.errno == _errno.EINVAL and link:
        msg = ("the kernel refused a sockmap link (BPF_LINK_CREATE: EINVAL): sockmap links need "
               "Linux 6.10+ (use link=False for BPF_PROG_ATTACH), and the program must be loaded "
               f"for {at.name}")
    elif e.errno == _errno.EINVAL:
        msg = f"the kernel refused {at.name} on this map ({how}: EINVAL): check the program type"
    else:
        msg = f"cannot attach to the sockmap as {at.name}: {e}"
    return AttachError(msg, program=name, cause=e)
