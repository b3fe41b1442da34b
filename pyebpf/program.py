"""Program: a BPF program loaded into the kernel (fd, id, tag, test_run, attach)."""

from __future__ import annotations

import os
import weakref
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

from ._record import Frozen
from .sys import bpf as _bpf
from .sys.fd import FD, require_kind
from .uapi import AttachType, ProgType

if TYPE_CHECKING:
    import builtins
    import socket
    from collections.abc import Mapping, Sequence
    from typing import Protocol

    from .links.base import Link
    from .links.cgroup import CgroupLink
    from .links.iter import IterLink
    from .links.lwt import LwtRoute
    from .links.netfilter import NetfilterLink
    from .links.netns import NetnsLink, NetnsProgAttachment
    from .links.perf_event import PerfEventLink, PerfEventLinks
    from .links.socket import SocketAttachment, SockmapLink, SockmapProgAttachment
    from .links.tc import TcLink, TcxLink
    from .links.tracing import RawTracepointLink, TracepointLink, TracingLink
    from .links.uprobe import UprobeLink, UprobeMultiLink
    from .links.usdt import UsdtLink
    from .links.xdp import XdpLink
    from .maps.map import Map
    from .obj.program import ProgramSpec
    from .object import Object
    from .proginfo import ProgInfo

    class _HasFd(Protocol):
        """Anything that holds an open fd in ``.fd`` (a cgroup wrapper, ...)."""

        @property
        def fd(self) -> FD | int: ...

    class _HasFileno(Protocol):
        """A socket-like object."""

        def fileno(self) -> int: ...

    # a cgroup v2 directory: a path, an open fd, or an object holding one
    _Cgroup = str | os.PathLike[str] | int | FD | _HasFd

__all__ = ["Program", "TestRunResult"]

_E = TypeVar("_E", bound=IntEnum)


_set = object.__setattr__


class TestRunResult(Frozen):
    """What BPF_PROG_TEST_RUN returned."""

    __test__ = False  # not a pytest test class

    retval: int
    duration_ns: int
    data_out: bytes
    ctx_out: bytes

    def __init__(self, retval: int, duration_ns: int, data_out: bytes, ctx_out: bytes) -> None:
        _set(self, "retval", retval)
        _set(self, "duration_ns", duration_ns)
        _set(self, "data_out", data_out)
        _set(self, "ctx_out", ctx_out)


def _enum(cls: type[_E], v: int) -> _E | int:
    try:
        return cls(v)
    except ValueError:
        return v


class Program:
    """A loaded program. Owns its fd: ``close()``, ``with`` or garbage collection closes it.

    ``type`` is a :class:`~pyebpf.uapi.ProgType`, or the plain int when the kernel reports
    a type newer than pyebpf knows (a program opened by id, pin or fd): typed
    ``ProgType | int`` so that such a program still opens. ``expected_attach_type`` is
    likewise an :class:`~pyebpf.uapi.AttachType`, an int, or None.
    """

    def __init__(self, fd: FD, *, name: str, type: int, expected_attach_type: int | None = None,
                 spec: ProgramSpec | None = None, attach_btf_id: int | None = None,
                 obj: Object | None = None, log: str = "") -> None:
        self.fd = fd
        self.name = name
        self.type: ProgType | int = _enum(ProgType, type)
        self.expected_attach_type: AttachType | int | None = (
            None if expected_attach_type is None else _enum(AttachType, expected_attach_type))
        self.spec = spec
        self.attach_btf_id = attach_btf_id
        self._obj: weakref.ref[Object] | None = weakref.ref(obj) if obj is not None else None
        self.log = log  # the verifier log when a log level was requested
        self.pin_path: str | None = None
        self._info: ProgInfo | None = None

    @classmethod
    def from_fd(cls, fd: FD | int, *, name: str | None = None,
                source: str | None = None) -> Program:
        """Wrap an open program fd (an int is duplicated, an FD is taken over once this
        succeeds). An fd of another kind (a map, a link) raises OptionError naming it."""
        from .proginfo import prog_info

        owned = fd if isinstance(fd, FD) else FD(os.dup(int(fd)), "prog")
        try:
            require_kind(owned, "prog", source=source,
                         hint="open a map with pyebpf.Map.from_fd()/from_pin(), a link "
                              "with pyebpf.Link.from_pin()")
            info = prog_info(owned)
        except BaseException:
            if owned is not fd:  # our duplicate; an FD given to us is not taken on failure
                owned.close()
            raise
        p = cls(owned, name=name or info.name, type=info.type,
                attach_btf_id=info.attach_btf_id or None)
        p._info = info
        return p

    @classmethod
    def from_pin(cls, path: str) -> Program:
        """Open the program pinned at ``path``."""
        fd = _bpf.obj_get(path, kind="prog")
        try:
            p = cls.from_fd(fd, source=f"the pin {path}")
        except BaseException:
            fd.close()
            raise
        p.pin_path = path
        return p

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        """Open the program with kernel id ``prog_id``."""
        fd = _bpf.prog_get_fd_by_id(prog_id)
        try:
            return cls.from_fd(fd)
        except BaseException:
            fd.close()
            raise

    @property
    def object(self) -> Object | None:
        """The :class:`pyebpf.object.Object` that loaded this program (None if gone)."""
        return self._obj() if self._obj is not None else None

    def info(self) -> ProgInfo:
        """BPF_OBJ_GET_INFO_BY_FD, fresh, decoded (:class:`pyebpf.proginfo.ProgInfo`):
        type, id, tag, name, map_ids, run_cnt/run_time_ns, BTF ids, ...; its methods
        fetch the translated and JIT-ed instructions, func_info and line_info."""
        from .proginfo import prog_info

        self._info = prog_info(self.fd)
        return self._info

    def _cached_info(self) -> ProgInfo:
        # id and tag never change after load: one query serves both
        if self._info is None:
            return self.info()
        return self._info

    @property
    def id(self) -> int:
        """The kernel's program id."""
        return self._cached_info().id

    @property
    def tag(self) -> str:
        """The kernel's program tag (16 hex digits)."""
        return self._cached_info().tag

    def test_run(self, data_in: bytes = b"", ctx_in: bytes | None = None, repeat: int = 0, *,
                 data_size_out: int | None = None, ctx_size_out: int = 0,
                 flags: int = 0, cpu: int = 0, batch_size: int = 0) -> TestRunResult:
        """BPF_PROG_TEST_RUN. ``data_size_out`` defaults to room for the input plus 256
        bytes (none without input); ``ctx_size_out`` to 0. ``repeat`` 0 runs once (raw_tp
        and syscall programs refuse any other value). For a syscall program, ``ctx_out``
        is the context as the program left it."""
        if self.type == ProgType.SYSCALL and ctx_in and not data_in:
            return self._run_syscall(bytes(ctx_in))
        dout = data_size_out if data_size_out is not None else (len(data_in) + 256 if data_in else 0)
        retval, duration, d, c = _bpf.prog_test_run(
            self.fd, data_in=data_in, data_size_out=dout, ctx_in=ctx_in or b"",
            ctx_size_out=ctx_size_out, repeat=repeat, flags=flags, cpu=cpu, batch_size=batch_size)
        return TestRunResult(retval, duration, d, c)

    def _run_syscall(self, ctx: bytes) -> TestRunResult:
        # the kernel writes a syscall program's context back into ctx_in: return it as ctx_out
        import ctypes

        from .sys import attrs as A
        from .sys.syscall import Cmd, bpf

        buf = (ctypes.c_char * len(ctx)).from_buffer_copy(ctx)
        a = A.TestRunAttr(prog_fd=int(self.fd), ctx_size_in=len(ctx), ctx_in=ctypes.addressof(buf))
        bpf(Cmd.PROG_TEST_RUN, a, A.TestRunAttr.SIZE, detail=f"program {self.name!r}")
        return TestRunResult(a.retval, a.duration, b"", buf.raw)

    def attach(self, *args: Any, **kw: Any) -> Link | PerfEventLinks:
        """Attach (see :func:`pyebpf.links.attach_program`); returns a Link (a
        :class:`~pyebpf.links.perf_event.PerfEventLinks` for a per-CPU perf_event program)."""
        from .links import attach_program

        return attach_program(self, *args, **kw)

    # --- attach, one method per hook (libbpf's bpf_program__attach_* family) ----------------
    # Each is thin: the work is in pyebpf.links.<hook>, one module per hook, imported on first
    # use so that loading an object does not import every hook. The keyword options mirror
    # the pyebpf.links.<hook>.attach_<kind> function's.

    def attach_tracepoint(self, category: str, name: str | None = None, *, cookie: int = 0,
                          force_ioctl: bool = False, tracefs: str | None = None) -> TracepointLink:
        """Attach to tracepoint ``category:name`` (perf event + bpf link)."""
        from .links.tracing import attach_tracepoint

        return attach_tracepoint(self, category, name, cookie=cookie, force_ioctl=force_ioctl,
                                 tracefs=tracefs)

    def attach_raw_tracepoint(self, name: str, *, cookie: int = 0) -> RawTracepointLink:
        """Attach a raw_tp program to raw tracepoint ``name``."""
        from .links.tracing import attach_raw_tracepoint

        return attach_raw_tracepoint(self, name, cookie=cookie)

    def attach_trace(self, *, cookie: int = 0, target_prog: Program | FD | int | None = None,
                     target_btf_id: int = 0, raw_tracepoint_open: bool = False) -> TracingLink:
        """Attach a tp_btf/fentry/fexit/fmod_ret/freplace program to its load-time target."""
        from .links.tracing import attach_trace

        return attach_trace(self, cookie=cookie, target_prog=target_prog,
                            target_btf_id=target_btf_id, raw_tracepoint_open=raw_tracepoint_open)

    def attach_perf_event(self, perf_fd: FD | int, *, cookie: int = 0,
                          force_ioctl: bool = False) -> PerfEventLink:
        """Attach to an open perf event fd; the link takes the fd over."""
        from .links.perf_event import attach_perf_event

        return attach_perf_event(self, perf_fd, cookie=cookie, force_ioctl=force_ioctl)

    def attach_uprobe(self, binary: str, func: str | None = None, *, pid: int | None = None,
                      retprobe: bool = False, offset: int = 0, cookie: int = 0,
                      ref_ctr_offset: int = 0, mode: str = "default",
                      pmu_dir: str = "/sys/bus/event_source/devices",
                      tracefs: str | None = None) -> UprobeLink:
        """Attach a uprobe (``retprobe``: uretprobe) to ``func`` (+``offset``) in ``binary``,
        a path or a library name; ``func`` None means ``offset`` is a file offset."""
        from .links.uprobe import attach_uprobe

        return attach_uprobe(self, binary, func, pid=pid, retprobe=retprobe, offset=offset,
                             cookie=cookie, ref_ctr_offset=ref_ctr_offset, mode=mode,
                             pmu_dir=pmu_dir, tracefs=tracefs)

    def attach_uprobe_multi(self, binary: str, pattern: str | None = None, *,
                            funcs: Sequence[str] | None = None,
                            offsets: Sequence[int] | None = None,
                            ref_ctr_offsets: Sequence[int] | None = None,
                            cookies: Sequence[int] | Mapping[str, int] | None = None,
                            pid: int | None = None, retprobe: bool | None = None,
                            session: bool | None = None) -> UprobeMultiLink:
        """Attach one uprobe_multi link to every function of ``binary`` matching the glob
        ``pattern`` (or to ``funcs=``/``offsets=``), with optional ``cookies=``."""
        from .links.uprobe import attach_uprobe_multi

        return attach_uprobe_multi(self, binary, pattern, funcs=funcs, offsets=offsets,
                                   ref_ctr_offsets=ref_ctr_offsets, cookies=cookies, pid=pid,
                                   retprobe=retprobe, session=session)

    def attach_usdt(self, binary: str, provider: str, name: str, *, pid: int | None = None,
                    cookie: int = 0) -> UsdtLink:
        """Attach to USDT probe ``provider:name`` in ``binary`` (a program using usdt.bpf.h)."""
        from .links.usdt import attach_usdt

        return attach_usdt(self, binary, provider, name, pid=pid, cookie=cookie)

    def attach_xdp(self, iface: str | int, *, mode: str | None = None, netlink: bool = False,
                   replace: Program | Link | FD | int | None = None, flags: int = 0) -> XdpLink:
        """Attach an XDP program to interface ``iface`` (name or index); ``netlink=True``
        gives an :class:`~pyebpf.links.xdp.XdpNetlinkLink`, itself an XdpLink."""
        from .links.xdp import attach_xdp

        return attach_xdp(self, iface, mode=mode, netlink=netlink, replace=replace, flags=flags)

    def attach_tcx(self, iface: str | int, direction: str | None = None, *,
                   before: Program | Link | int | bool | None = None,
                   after: Program | Link | int | bool | None = None,
                   expected_revision: int = 0) -> TcxLink:
        """Attach a tc program to ``iface`` through a tcx link (``"ingress"``/``"egress"``)."""
        from .links.tc import attach_tcx

        return attach_tcx(self, iface, direction, before=before, after=after,
                          expected_revision=expected_revision)

    def attach_tc(self, iface: str | int, direction: str | None = None, *, handle: int = 0,
                  priority: int = 0, replace: bool = False) -> TcLink:
        """Attach a tc program as a legacy cls_bpf direct-action filter (netlink)."""
        from .links.tc import attach_tc

        return attach_tc(self, iface, direction, handle=handle, priority=priority,
                         replace=replace)

    def attach_cgroup(self, cgroup: _Cgroup, *, attach_type: AttachType | int | str | None = None,
                      link: bool = True, flags: int = 0, multi: bool = False,
                      override: bool = False, replace: Program | FD | int | None = None
                      ) -> CgroupLink:
        """Attach to a cgroup v2 (path, fd, or an object with ``.fd``); the attach type comes
        from SEC() by default. ``link=False`` gives a
        :class:`~pyebpf.links.cgroup.CgroupAttachment`, itself a CgroupLink."""
        from .links.cgroup import attach_cgroup

        return attach_cgroup(self, cgroup, attach_type=attach_type, link=link, flags=flags,
                             multi=multi, override=override, replace=replace)

    def attach_netns(self, netns: str | int | None = None, *,
                     link: bool = True) -> NetnsLink | NetnsProgAttachment:
        """Attach an sk_lookup or flow_dissector program to a network namespace."""
        from .links.netns import attach_netns

        return attach_netns(self, netns, link=link)

    def attach_netfilter(self, *, pf: str | int = "ipv4", hook: str | int = "local_in",
                         priority: int = 0, defrag: bool = False, flags: int = 0,
                         netns: str | int | None = None) -> NetfilterLink:
        """Attach a netfilter program (``pf``, ``hook``, ``priority``, ``flags``)."""
        from .links.netfilter import attach_netfilter

        return attach_netfilter(self, pf=pf, hook=hook, priority=priority, defrag=defrag,
                                flags=flags, netns=netns)

    def attach_socket(self, sock: socket.socket | int | _HasFileno, *,
                      reuseport: bool | None = None) -> SocketAttachment:
        """Attach a socket filter (or sk_reuseport program) to a Python socket (or an fd)."""
        from .links.socket import attach_socket

        return attach_socket(self, sock, reuseport=reuseport)

    def attach_sockmap(self, sockmap: Map | FD | int, attach_type: AttachType | int | str | None = None,
                       *, link: bool = True) -> SockmapLink | SockmapProgAttachment:
        """Attach an sk_msg/sk_skb program to a sockmap or sockhash."""
        from .links.socket import attach_sockmap

        return attach_sockmap(self, sockmap, attach_type, link=link)

    def attach_lwt(self, dest: str, *, dev: str | int, hook: str | None = None,
                   netns: str | int | None = None) -> LwtRoute:
        """Attach an lwt_in/out/xmit program by adding a route to ``dest`` via ``dev`` with a
        BPF encap; closing the returned LwtRoute deletes the route."""
        from .links.lwt import attach_lwt

        return attach_lwt(self, dest, dev=dev, hook=hook, netns=netns)

    def attach_iter(self, map: Map | FD | int | None = None, *, cgroup: _Cgroup | None = None,
                    cgroup_fd: int | None = None, cgroup_id: int = 0, order: int | str = 0,
                    tid: int = 0, pid: int = 0, pid_fd: int = 0) -> IterLink:
        """Create an iterator link (``map=``, ``cgroup=``/``order=``, ``tid=``/``pid=``)."""
        from .links.iter import attach_iter

        return attach_iter(self, map, cgroup=cgroup, cgroup_fd=cgroup_fd, cgroup_id=cgroup_id,
                           order=order, tid=tid, pid=pid, pid_fd=pid_fd)

    def pin(self, path: str) -> None:
        """Pin the program at ``path``, which must be inside a bpffs (:mod:`pyebpf.pin`)."""
        from .pin import pin_fd

        pin_fd(self.fd, path)
        self.pin_path = path

    def unpin(self) -> None:
        """Remove the pin made by :meth:`pin` (or found by :meth:`from_pin`)."""
        if self.pin_path:
            from .pin import unpin

            unpin(self.pin_path)
            self.pin_path = None

    @property
    def closed(self) -> bool:
        return self.fd.closed

    def close(self) -> None:
        """Close the fd (the program stays loaded while links or pins hold it)."""
        self.fd.close()

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: builtins.object) -> None:
        self.close()

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, ProgType) else str(self.type)
        if self.fd.closed:
            return f"Program({self.name!r}, {t}, closed)"
        try:
            return f"Program({self.name!r}, {t}, id={self.id}, tag={self.tag})"
        except Exception:  # repr must not raise
            return f"Program({self.name!r}, {t}, fd={self.fd.fileno()})"
