"""Link: an attachment of a program that owns its kernel fds, plus LinkInfo and the attach errors."""

from __future__ import annotations

import ctypes
import errno as _errno
from enum import IntEnum
from typing import Any, Protocol, TypeVar

from .._log import get_logger
from .._record import Record
from ..errors import OptionError, PyebpfError, SyscallError
from ..sys import bpf as _bpf
from ..sys import perf as _perf
from ..sys.attrs import LinkInfo as _RawLinkInfo
from ..sys.fd import FD, Closing, require_kind
from ..uapi import AttachType, LinkType, ProgType

__all__ = [
    "AttachError",
    "AttachSkipped",
    "Link",
    "LinkInfo",
    "ProgramLike",
    "prog_fd",
    "prog_label",
]

_log = get_logger("pyebpf.links")


class AttachError(PyebpfError):
    """Attaching a program failed for a reason pyebpf can explain (missing target, no support)."""

    def __init__(self, message: str, *, program: str | None = None, cause: BaseException | None = None):
        self.program = program
        self.cause = cause
        super().__init__(f"{program}: {message}" if program else message)

    @property
    def errno(self) -> int | None:
        """The errno of the underlying syscall failure, if there was one."""
        return getattr(self.cause, "errno", None)


class AttachSkipped(PyebpfError):
    """A program is not auto-attachable (libbpf's rules); ``reason`` says why."""

    def __init__(self, reason: str, *, program: str | None = None):
        self.reason = reason
        self.program = program
        super().__init__(f"{program}: {reason}" if program else reason)


class ProgramLike(Protocol):
    """What attach functions need from a loaded program (pyebpf.program.Program satisfies it)."""

    name: str
    fd: FD
    type: ProgType | int
    expected_attach_type: AttachType | int | None
    spec: Any
    attach_btf_id: int | None


# a program given by reference: a Program (or another ProgramLike), its FD, or a raw fd
ProgRef = ProgramLike | FD | int


def prog_fd(prog: Any) -> int:
    """The raw fd of a program (a Program-like object, an FD, or an int)."""
    fd = getattr(prog, "fd", prog)
    try:
        return int(fd)
    except ValueError:
        raise AttachError("the program is closed", program=prog_label(prog)) from None


def prog_label(prog: Any) -> str | None:
    return getattr(prog, "name", None)


# --- LinkInfo ----------------------------------------------------------------------------------


class LinkInfo(Record):
    """What BPF_OBJ_GET_INFO_BY_FD reports about a link, with the per-type fields decoded."""

    type: LinkType | int
    id: int
    prog_id: int
    # per-type details: tp_name, attach_type, target_btf_id, target_obj_id, target_name, map_id,
    # perf_event_type, ... (only the ones the link type has)
    details: dict[str, Any]

    def __init__(self, type: LinkType | int, id: int, prog_id: int,
                 details: dict[str, Any] | None = None) -> None:
        self.type = type
        self.id = id
        self.prog_id = prog_id
        self.details = {} if details is None else details

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        t = self.type.name.lower() if isinstance(self.type, LinkType) else str(self.type)
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return f"LinkInfo(type={t}, id={self.id}, prog_id={self.prog_id}{extra})"


# enum bpf_perf_event_type
PERF_EVENT_TYPES = {1: "uprobe", 2: "uretprobe", 3: "kprobe", 4: "kretprobe", 5: "tracepoint",
                    6: "event"}


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "little")


def _u64(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 8], "little")


def _info_with_string(fd: int, ptr_off: int, len_off: int, size: int = 4096) -> tuple[bytes, str]:
    """Re-query link info with a string buffer at extra[ptr_off] (its length at extra[len_off])."""
    buf = ctypes.create_string_buffer(size)
    info = _RawLinkInfo()
    extra = bytearray(48)
    extra[ptr_off : ptr_off + 8] = ctypes.addressof(buf).to_bytes(8, "little")
    extra[len_off : len_off + 4] = size.to_bytes(4, "little")
    ctypes.memmove(info.extra, bytes(extra), 48)
    _bpf.obj_get_info_by_fd(fd, info)
    return bytes(info.extra), buf.value.decode("utf-8", "replace")


_E = TypeVar("_E", bound=IntEnum)


def _enum(cls: type[_E], v: int) -> _E | int:
    try:
        return cls(v)
    except ValueError:
        return v


def _attach_type(ex: bytes, off: int) -> AttachType | int:
    return _enum(AttachType, _u32(ex, off))


def _perf_event_details(n: int, ex: bytes, d: dict[str, Any]) -> None:
    # struct bpf_link_info.perf_event: u32 type, pad, then a union at +8
    pet = _u32(ex, 0)
    d["perf_event_type"] = PERF_EVENT_TYPES.get(pet, pet)
    if pet in (1, 2):  # uprobe: file_name, name_len, offset, cookie, ref_ctr_offset
        ex, d["file_name"] = _info_with_string(n, 8, 16)
        d["offset"], d["cookie"] = _u32(ex, 20), _u64(ex, 24)
        d["ref_ctr_offset"] = _u64(ex, 32)
    elif pet in (3, 4):  # kprobe: func_name, name_len, offset, addr, missed, cookie
        ex, d["func_name"] = _info_with_string(n, 8, 16)
        d["offset"], d["addr"] = _u32(ex, 20), _u64(ex, 24)
        d["missed"], d["cookie"] = _u64(ex, 32), _u64(ex, 40)
    elif pet == 5:  # tracepoint: tp_name, name_len, pad, cookie
        ex, d["tp_name"] = _info_with_string(n, 8, 16)
        d["cookie"] = _u64(ex, 24)
    elif pet == 6:  # plain perf event: config, type, cookie
        d["config"], d["event_type"], d["cookie"] = _u64(ex, 8), _u32(ex, 16), _u64(ex, 24)


def _details(n: int, ltype: LinkType | int, ex: bytes) -> dict[str, Any]:
    """The per-type part of struct bpf_link_info (the union after type/id/prog_id)."""
    d: dict[str, Any] = {}
    if ltype == LinkType.RAW_TRACEPOINT:
        ex, d["tp_name"] = _info_with_string(n, 0, 8)
        d["cookie"] = _u64(ex, 16)
    elif ltype == LinkType.TRACING:
        d["attach_type"] = _attach_type(ex, 0)
        d["target_obj_id"] = _u32(ex, 4)
        d["target_btf_id"] = _u32(ex, 8)
        d["cookie"] = _u64(ex, 16)
    elif ltype == LinkType.CGROUP:
        d["cgroup_id"], d["attach_type"] = _u64(ex, 0), _attach_type(ex, 8)
    elif ltype == LinkType.ITER:
        ex, d["target_name"] = _info_with_string(n, 0, 8)
        if _u32(ex, 12):  # map_id of bpf_map_elem/sockmap/sk_storage iterators
            d["map_id"] = _u32(ex, 12)
    elif ltype == LinkType.NETNS:
        d["netns_ino"], d["attach_type"] = _u32(ex, 0), _attach_type(ex, 4)
    elif ltype == LinkType.XDP:
        d["ifindex"] = _u32(ex, 0)
    elif ltype == LinkType.PERF_EVENT:
        _perf_event_details(n, ex, d)
    elif ltype == LinkType.KPROBE_MULTI:
        d["count"], d["flags"], d["missed"] = _u32(ex, 8), _u32(ex, 12), _u64(ex, 16)
    elif ltype == LinkType.STRUCT_OPS:
        d["map_id"] = _u32(ex, 0)
    elif ltype == LinkType.NETFILTER:
        d["pf"], d["hooknum"] = _u32(ex, 0), _u32(ex, 4)
        d["priority"] = int.from_bytes(ex[8:12], "little", signed=True)
        d["flags"] = _u32(ex, 12)
    elif ltype in (LinkType.TCX, LinkType.NETKIT):
        d["ifindex"], d["attach_type"] = _u32(ex, 0), _attach_type(ex, 4)
    elif ltype == LinkType.UPROBE_MULTI:
        # path, offsets, ref_ctr_offsets, cookies (pointers), path_size, count, flags, pid
        ex, d["path"] = _info_with_string(n, 0, 32)
        d["count"], d["flags"], d["pid"] = _u32(ex, 36), _u32(ex, 40), _u32(ex, 44)
    elif ltype == LinkType.SOCKMAP:
        d["map_id"], d["attach_type"] = _u32(ex, 0), _attach_type(ex, 4)
    return d


def link_info(fd: int | FD) -> LinkInfo:
    """Decode BPF_OBJ_GET_INFO_BY_FD for a link fd: the common part and the per-type details."""
    raw = _bpf.link_info(fd)
    ltype: LinkType | int = _enum(LinkType, raw.type)
    try:
        d = _details(int(fd), ltype, bytes(raw.extra))
    except SyscallError as e:  # older kernels reject some name queries; the common part is enough
        _log.debug("link info details unavailable: %s", e)
        d = {}
    return LinkInfo(ltype, raw.id, raw.prog_id, d)


# --- Link --------------------------------------------------------------------------------------


class Link(Closing):
    """A program attachment. Owns its fds (the bpf link fd and/or a perf event fd).

    ``close()`` detaches (the kernel drops the attachment when the last fd goes, unless
    the link is pinned); garbage collection and ``with`` do the same.
    """

    kind = "link"
    # whether the kernel implements BPF_LINK_UPDATE for this kind of link
    updatable = False

    def __init__(self, fd: FD | None, program: Any = None, *, perf_fd: FD | None = None,
                 target: str = "", extra_fds: tuple[FD, ...] = (),
                 cleanup: Any = None) -> None:
        self.fd = fd
        self.perf_fd = perf_fd
        self.program = program
        self.target = target
        self._extra_fds = list(extra_fds)
        self._cleanup = cleanup  # callable run once after the fds close (e.g. remove a tracefs event)
        self.pinned_path: str | None = None
        self._id: int | None = None
        self._closed = False

    @property
    def id(self) -> int | None:
        """The kernel link id (None for a perf-event attachment made with PERF_EVENT_IOC_SET_BPF)."""
        if self._id is None and self.fd is not None and not self.fd.closed:
            self._id = _bpf.link_info(self.fd).id
        return self._id

    @property
    def closed(self) -> bool:
        fds = [f for f in (self.fd, self.perf_fd) if f is not None]
        if not fds:  # an attachment without fds (netlink, PROG_ATTACH, setsockopt)
            return self._closed
        return all(f.closed for f in fds)

    # what an attachment without a bpf link says when asked to pin, update, ... (after
    # "cannot <what>: "); kinds that never have one set their own
    no_link = ("this attachment has no bpf link (it was attached with PERF_EVENT_IOC_SET_BPF: "
               "asked for, or the kernel lacks perf links)")

    def _need_link_fd(self, what: str) -> FD:
        if self.fd is None:
            raise AttachError(
                f"cannot {what}: {self.no_link}",
                program=prog_label(self.program),
            )
        if self.fd.closed:
            raise AttachError(f"cannot {what}: the link is closed", program=prog_label(self.program))
        return self.fd

    def info(self) -> LinkInfo:
        """The kernel's view of this link (type, id, prog id and per-type details)."""
        return link_info(self._need_link_fd("query link info"))

    def pin(self, path: str) -> None:
        """Pin the link at ``path`` on a bpffs; it then outlives this process."""
        fd = self._need_link_fd("pin")
        if not path:
            raise OptionError("empty pin path")
        from ..pin import pin_fd

        pin_fd(fd, path)
        self.pinned_path = path

    def unpin(self) -> None:
        """Remove the pin created by :meth:`pin` (the link stays attached while this object lives)."""
        if self.pinned_path is None:
            return
        from ..pin import unpin

        unpin(self.pinned_path)
        self.pinned_path = None

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        """Swap in ``new_prog`` (BPF_LINK_UPDATE); with ``old_prog`` only if it is the current one.

        The kernel allows this for iterator, cgroup, XDP, tcx, netns and struct_ops links, not
        for tracepoint/raw_tp/tracing/perf-event links (those raise AttachError).
        """
        fd = self._need_link_fd("update")
        try:
            _bpf.link_update(fd, prog_fd(new_prog),
                             old_prog_fd=prog_fd(old_prog) if old_prog is not None else None)
        except SyscallError as e:
            if e.errno in (_errno.EOPNOTSUPP, _errno.EINVAL) and not self.updatable:
                raise AttachError(
                    f"the kernel does not allow replacing the program of a {self.kind} link "
                    f"(BPF_LINK_UPDATE: {e.errname}); detach and attach the new program instead",
                    program=prog_label(self.program), cause=e,
                ) from e
            raise
        self.program = new_prog

    def detach(self) -> None:
        """Detach now (BPF_LINK_DETACH) while keeping the fd, e.g. a pinned link another process holds.

        Tracepoint, raw_tp, tracing and iterator links have no forced detach in the kernel
        (AttachError); closing every fd and removing the pin detaches those.
        """
        fd = self._need_link_fd("detach")
        try:
            _bpf.link_detach(fd)
        except SyscallError as e:
            if e.errno == _errno.EOPNOTSUPP:
                raise AttachError(
                    f"the kernel cannot force-detach a {self.kind} link (BPF_LINK_DETACH: "
                    "EOPNOTSUPP); close it and remove its pin instead",
                    program=prog_label(self.program), cause=e,
                ) from e
            raise

    @classmethod
    def from_pin(cls, path: str) -> Link:
        """Open the link pinned at ``path`` (BPF_OBJ_GET); closing it leaves the pin, ``unpin()`` removes it."""
        fd = _bpf.obj_get(path, kind="link")
        try:
            require_kind(fd, "link", source=f"the pin {path}",
                         hint="open a program with pyebpf.Program.from_pin(), a map with "
                              "pyebpf.Map.from_pin()")
        except BaseException:
            fd.close()
            raise
        link = cls(fd)
        link.target = path
        link.pinned_path = path
        return link

    @classmethod
    def from_id(cls, link_id: int) -> Link:
        """Open the link with kernel id ``link_id`` (BPF_LINK_GET_FD_BY_ID)."""
        return cls(_bpf.link_get_fd_by_id(link_id))

    def close(self) -> None:
        """Close every fd this link owns (detaching it unless pinned); idempotent."""
        self._closed = True
        for f in (self.fd, self.perf_fd, *self._extra_fds):
            if f is not None:
                f.close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            try:
                cleanup()
            except Exception as e:  # cleanup of a tracefs event must not mask the close
                _log.debug("link cleanup failed: %s", e)

    def __repr__(self) -> str:
        prog = prog_label(self.program)
        parts = [self.kind]
        if self.target:
            parts.append(repr(self.target))
        if prog:
            parts.append(f"prog={prog}")
        if self.closed:
            parts.append("closed")
        else:
            if self.fd is not None:
                parts.append(f"id={self._id if self._id is not None else self.id}")
            if self.perf_fd is not None:
                parts.append(f"perf_fd={self.perf_fd.fileno()}")
            if self.pinned_path:
                parts.append(f"pinned={self.pinned_path}")
        return f"{type(self).__name__}({', '.join(parts)})"


# re-exported for the attach modules
TracefsError = _perf.TracefsError
