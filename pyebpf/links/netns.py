"""Network namespace hooks: sk_lookup and flow_dissector programs (libbpf's bpf_program__attach_netns).

A bpf link (BPF_LINK_CREATE with the namespace fd as target) is the default; it can be
updated, pinned and detached. ``link=False`` takes the legacy road of flow dissectors,
BPF_PROG_ATTACH, where the kernel attaches to *the caller's* namespace whatever fd is
passed, so pyebpf enters the target namespace on a helper thread for the attach and
again for the detach.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import sock as _sock
from ..sys.fd import FD
from ..uapi import AttachType, ProgType
from .base import AttachError, Link, ProgramLike, prog_fd, prog_label

__all__ = [
    "NetnsLink",
    "NetnsProgAttachment",
    "attach_netns",
    "netns_prog_ids",
    "open_netns",
]

_ATTACH = {ProgType.SK_LOOKUP: AttachType.SK_LOOKUP, ProgType.FLOW_DISSECTOR: AttachType.FLOW_DISSECTOR}


def open_netns(netns: Any, *, program: str | None = None) -> tuple[FD, str]:
    """An owned fd of the network namespace ``netns`` and a label for messages.

    ``netns``: None (the calling thread's namespace), a path (``/run/netns/NAME``,
    ``/proc/PID/ns/net``), a bare name (looked up under /run/netns as ``ip netns`` does),
    or an open fd (int, FD or an object with ``fileno()``), which is duplicated.
    Raises AttachError for a missing path or a file that is not a network namespace.
    """
    if netns is None:
        path = "/proc/thread-self/ns/net"
        label = "the caller's network namespace"
    elif isinstance(netns, str | bytes | os.PathLike):
        path = os.fsdecode(netns)
        if not path:
            raise OptionError("empty network namespace path")
        if "/" not in path:
            path = os.path.join("/run/netns", path)
        label = f"network namespace {path}"
    else:
        if hasattr(netns, "fileno"):
            num = netns.fileno()
        elif isinstance(netns, int) and not isinstance(netns, bool):
            num = netns
        else:
            raise OptionError(f"netns must be a path, a name, an fd or None, not {netns!r}")
        try:
            fd = FD(os.dup(num), "netns")
        except OSError as e:
            raise AttachError(f"network namespace fd {num} is not open ({e.strerror})",
                              program=program, cause=e) from None
        _check_netns(fd, f"fd {num}", program)
        return fd, f"network namespace fd {num}"
    try:
        fd = FD(os.open(path, os.O_RDONLY | os.O_CLOEXEC), "netns")
    except OSError as e:
        hint = (" (named namespaces live in /run/netns, created by `ip netns add NAME`)"
                if e.errno == _errno.ENOENT else "")
        raise AttachError(f"cannot open {label}: {e.strerror}{hint}", program=program,
                          cause=e) from None
    _check_netns(fd, path, program)
    return fd, label


def _check_netns(fd: FD, what: str, program: str | None) -> None:
    if _sock.netns_identity(fd.fileno()) is None:
        fd.close()
        raise AttachError(f"{what} is not a network namespace (want /run/netns/NAME or "
                          "/proc/PID/ns/net)", program=program)


def _attach_type(prog: Any) -> AttachType:
    ptype = getattr(prog, "type", None)
    at = _ATTACH.get(ptype)  # type: ignore[arg-type]
    if at is None:
        name = getattr(ptype, "name", ptype)
        raise AttachError(f"attach_netns needs a sk_lookup or flow_dissector program, not a "
                          f"{name} program (SEC(\"sk_lookup\") or SEC(\"flow_dissector\"))",
                          program=prog_label(prog))
    return at


class NetnsLink(Link):
    """A sk_lookup / flow_dissector program linked to a network namespace (updatable)."""

    kind = "netns"
    updatable = True


class NetnsProgAttachment(Link):
    """A flow dissector attached with BPF_PROG_ATTACH (no link fd); ``close()`` detaches it.

    Holds duplicates of the namespace and program fds: the kernel detaches from the
    caller's namespace and wants the attached program named.
    """

    kind = "netns_prog_attach"

    def __init__(self, program: Any, netns_fd: FD, prog_dup: FD, attach_type: AttachType,
                 target: str) -> None:
        super().__init__(None, program, target=target, extra_fds=(netns_fd, prog_dup))
        self._netns_fd = netns_fd
        self._prog_dup = prog_dup
        self.attach_type = attach_type

    @property
    def closed(self) -> bool:
        return self._prog_dup.closed

    no_link = ("this flow dissector was attached with BPF_PROG_ATTACH and has no bpf link "
               "(attach with link=True for one)")

    def close(self) -> None:
        """PROG_DETACH in the namespace it was attached to, then close the held fds; idempotent."""
        if self._prog_dup.closed:
            return
        try:
            ns, pfd, at = self._netns_fd.fileno(), self._prog_dup.fileno(), self.attach_type
            _sock.run_in_netns(ns, lambda: _bpf.prog_detach(0, at, pfd))
        except SyscallError as e:
            # ENOENT: someone detached it already (or replaced it); nothing of ours is left
            if e.errno != _errno.ENOENT:
                raise
        finally:
            super().close()


def attach_netns(prog: ProgramLike, netns: str | int | None = None, *,
                 link: bool = True) -> NetnsLink | NetnsProgAttachment:
    """Attach a sk_lookup or flow_dissector program to a network namespace.

    ``netns``: a path (``/run/netns/NAME``, ``/proc/PID/ns/net``), a name under /run/netns,
    an fd, or None for the calling thread's namespace. The attach type follows the program
    type. ``link=False`` uses BPF_PROG_ATTACH (flow dissectors only; the kernel refuses
    it for sk_lookup); closing the result detaches.
    """
    name = prog_label(prog)
    at = _attach_type(prog)
    if not link and at != AttachType.FLOW_DISSECTOR:
        raise AttachError("sk_lookup programs attach only through a bpf link (link=True); "
                          "BPF_PROG_ATTACH takes flow dissectors only", program=name)
    pfd = prog_fd(prog)
    nsfd, label = open_netns(netns, program=name)
    if link:
        try:
            fd = _bpf.link_create(pfd, nsfd, at)
        except SyscallError as e:
            raise _explain(e, prog, at, label, link=True) from e
        finally:
            nsfd.close()
        return NetnsLink(fd, prog, target=label)
    prog_dup: FD | None = None
    try:
        prog_dup = FD(os.dup(pfd), "prog")
        ns = nsfd.fileno()
        # the kernel takes the caller's namespace and wants target_fd 0 (EINVAL otherwise)
        _sock.run_in_netns(ns, lambda: _bpf.prog_attach(pfd, 0, at))
    except SyscallError as e:
        nsfd.close()
        if prog_dup is not None:
            prog_dup.close()
        raise _explain(e, prog, at, label, link=False) from e
    except BaseException:
        nsfd.close()
        if prog_dup is not None:
            prog_dup.close()
        raise
    return NetnsProgAttachment(prog, nsfd, prog_dup, at, label)


def _explain(e: SyscallError, prog: Any, at: AttachType, label: str, *, link: bool) -> AttachError:
    what = "flow dissector" if at == AttachType.FLOW_DISSECTOR else "sk_lookup program"
    how = "BPF_LINK_CREATE" if link else "BPF_PROG_ATTACH"
    if e.errno == _errno.EEXIST:
        msg = (f"cannot attach the {what} to {label}: a flow dissector is already attached there "
               "(or, for the root namespace, in some namespace; for another namespace, in the "
               "root one, which overrides all), or one was attached the other way "
               "(links and BPF_PROG_ATTACH do not mix)")
    elif e.errno == _errno.E2BIG:
        if at == AttachType.FLOW_DISSECTOR:
            msg = (f"cannot attach the flow dissector to {label}: a flow dissector link is already "
                   "attached there (the kernel allows one per namespace); update that link instead")
        else:
            msg = (f"cannot attach the sk_lookup program to {label}: the namespace already has "
                   "the most sk_lookup links the kernel allows (64)")
    elif e.errno == _errno.EPERM and e.command == "setns":
        msg = (f"no permission to enter {label} (setns: EPERM): BPF_PROG_ATTACH of a flow "
               "dissector acts on the caller's namespace, and entering another one needs "
               "CAP_SYS_ADMIN (run as root, or attach from inside it with netns=None)")
    elif e.errno == _errno.EPERM:
        msg = f"no permission to attach the {what} to {label} ({how}: EPERM): needs CAP_NET_ADMIN and CAP_BPF (run as root)"
    elif e.errno == _errno.EINVAL:
        msg = (f"the kernel refused to attach the {what} to {label} ({how}: EINVAL): the program "
               "must be loaded for this hook (its expected attach type), and the kernel needs "
               "netns links (5.7+; sk_lookup 5.9+)")
    else:
        msg = f"cannot attach the {what} to {label}: {e}"
    return AttachError(msg, program=prog_label(prog), cause=e)


def netns_prog_ids(netns: str | int | None, kind: Any) -> list[int]:
    """Ids of the programs attached to a namespace hook (BPF_PROG_QUERY).

    ``kind``: a program (its type picks the hook), an AttachType, "sk_lookup" or
    "flow_dissector".
    """
    if isinstance(kind, str):
        try:
            at = {"sk_lookup": AttachType.SK_LOOKUP, "flow_dissector": AttachType.FLOW_DISSECTOR}[kind]
        except KeyError:
            raise OptionError(f"unknown netns hook {kind!r} (sk_lookup, flow_dissector)") from None
    elif isinstance(kind, int):
        try:
            at = AttachType(kind)
        except ValueError:
            raise OptionError(f"unknown attach type {kind}") from None
    else:
        at = _attach_type(kind)
    fd, _ = open_netns(netns)
    with fd:
        return _bpf.prog_query(fd, at)[0]
