"""Program: a BPF program loaded into the kernel (fd, id, tag, test_run, attach)."""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any

from ._record import Frozen
from .sys import bpf as _bpf
from .sys.fd import FD
from .uapi import AttachType, ProgType

if TYPE_CHECKING:
    from .obj.program import ProgramSpec
    from .proginfo import ProgInfo

__all__ = ["Program", "TestRunResult"]


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


def _enum(cls: Any, v: int | None) -> Any:
    if v is None:
        return None
    try:
        return cls(v)
    except ValueError:
        return v


class Program:
    """A loaded program. Owns its fd: ``close()``, ``with`` or garbage collection closes it."""

    def __init__(self, fd: FD, *, name: str, type: int, expected_attach_type: int | None = None,
                 spec: ProgramSpec | None = None, attach_btf_id: int | None = None,
                 obj: Any = None, log: str = "") -> None:
        self.fd = fd
        self.name = name
        self.type: ProgType | int = _enum(ProgType, type)
        self.expected_attach_type: AttachType | int | None = _enum(AttachType, expected_attach_type)
        self.spec = spec
        self.attach_btf_id = attach_btf_id
        self._obj = weakref.ref(obj) if obj is not None else None
        self.log = log  # the verifier log when a log level was requested
        self.pin_path: str | None = None
        self._info: ProgInfo | None = None

    @classmethod
    def from_fd(cls, fd: FD | int, *, name: str | None = None) -> Program:
        """Wrap an open program fd (an int is duplicated, an FD is taken over)."""
        from .proginfo import prog_info

        owned = fd if isinstance(fd, FD) else FD(os.dup(int(fd)), "prog")
        try:
            info = prog_info(owned)
        except BaseException:
            owned.close()
            raise
        p = cls(owned, name=name or info.name, type=info.type,
                attach_btf_id=info.attach_btf_id or None)
        p._info = info
        return p

    @classmethod
    def from_pin(cls, path: str) -> Program:
        """Open the program pinned at ``path``."""
        p = cls.from_fd(_bpf.obj_get(path, kind="prog"))
        p.pin_path = path
        return p

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        """Open the program with kernel id ``prog_id``."""
        return cls.from_fd(_bpf.prog_get_fd_by_id(prog_id))

    @property
    def object(self) -> Any:
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

    def attach(self, *args: Any, **kw: Any) -> Any:
        """Attach (see :func:`pyebpf.links.attach_program`); returns a Link."""
        from .links import attach_program  # type: ignore[attr-defined]

        return attach_program(self, *args, **kw)

    # --- attach, one method per hook (libbpf's bpf_program__attach_* family) ----------------
    # Each is thin: the work is in pyebpf.links.<hook>, one module per hook.

    def attach_tracepoint(self, category: str, name: str | None = None, **opts: Any) -> Any:
        """Attach to tracepoint ``category:name`` (perf event + bpf link)."""
        from .links.tracing import attach_tracepoint

        return attach_tracepoint(self, category, name, **opts)

    def attach_raw_tracepoint(self, name: str, **opts: Any) -> Any:
        """Attach a raw_tp program to raw tracepoint ``name``."""
        from .links.tracing import attach_raw_tracepoint

        return attach_raw_tracepoint(self, name, **opts)

    def attach_trace(self, **opts: Any) -> Any:
        """Attach a tp_btf/fentry/fexit/fmod_ret/freplace program to its load-time target."""
        from .links.tracing import attach_trace

        return attach_trace(self, **opts)

    def attach_perf_event(self, perf_fd: Any, **opts: Any) -> Any:
        """Attach to an open perf event fd; the link takes the fd over."""
        from .links.perf_event import attach_perf_event

        return attach_perf_event(self, perf_fd, **opts)

    def attach_uprobe(self, binary: str, func: str | None = None, *, pid: int | None = None,
                      retprobe: bool = False, offset: int = 0, cookie: int = 0,
                      **opts: Any) -> Any:
        """Attach a uprobe (``retprobe``: uretprobe) to ``func`` (+``offset``) in ``binary``,
        a path or a library name; ``func`` None means ``offset`` is a file offset."""
        from .links.uprobe import attach_uprobe

        return attach_uprobe(self, binary, func, pid=pid, retprobe=retprobe, offset=offset,
                             cookie=cookie, **opts)

    def attach_uprobe_multi(self, binary: str, pattern: str | None = None, **opts: Any) -> Any:
        """Attach one uprobe_multi link to every function of ``binary`` matching the glob
        ``pattern`` (or to ``funcs=``/``offsets=``), with optional ``cookies=``."""
        from .links.uprobe import attach_uprobe_multi

        return attach_uprobe_multi(self, binary, pattern, **opts)

    def attach_usdt(self, binary: str, provider: str, name: str, *, pid: int | None = None,
                    cookie: int = 0, **opts: Any) -> Any:
        """Attach to USDT probe ``provider:name`` in ``binary`` (a program using usdt.bpf.h)."""
        from .links.usdt import attach_usdt

        return attach_usdt(self, binary, provider, name, pid=pid, cookie=cookie, **opts)

    def attach_xdp(self, iface: str | int, **opts: Any) -> Any:
        """Attach an XDP program to interface ``iface`` (name or index)."""
        from .links.xdp import attach_xdp

        return attach_xdp(self, iface, **opts)

    def attach_tcx(self, iface: str | int, direction: str | None = None, **opts: Any) -> Any:
        """Attach a tc program to ``iface`` through a tcx link (``"ingress"``/``"egress"``)."""
        from .links.tc import attach_tcx

        return attach_tcx(self, iface, direction, **opts)

    def attach_tc(self, iface: str | int, direction: str | None = None, **opts: Any) -> Any:
        """Attach a tc program as a legacy cls_bpf direct-action filter (netlink)."""
        from .links.tc import attach_tc

        return attach_tc(self, iface, direction, **opts)

    def attach_cgroup(self, cgroup: str | int | Any, **opts: Any) -> Any:
        """Attach to a cgroup v2 (path or fd); the attach type comes from SEC() by default."""
        from .links.cgroup import attach_cgroup

        return attach_cgroup(self, cgroup, **opts)

    def attach_netns(self, netns: str | int | None = None, **opts: Any) -> Any:
        """Attach an sk_lookup or flow_dissector program to a network namespace."""
        from .links.netns import attach_netns

        return attach_netns(self, netns, **opts)

    def attach_netfilter(self, **opts: Any) -> Any:
        """Attach a netfilter program (``pf``, ``hook``, ``priority``, ``flags``)."""
        from .links.netfilter import attach_netfilter

        return attach_netfilter(self, **opts)

    def attach_socket(self, sock: Any, **opts: Any) -> Any:
        """Attach a socket filter (or sk_reuseport program) to a Python socket."""
        from .links.socket import attach_socket

        return attach_socket(self, sock, **opts)

    def attach_sockmap(self, sockmap: Any, attach_type: Any = None, **opts: Any) -> Any:
        """Attach an sk_msg/sk_skb program to a sockmap or sockhash."""
        from .links.socket import attach_sockmap

        return attach_sockmap(self, sockmap, attach_type, **opts)

    def attach_lwt(self, dest: str, *, dev: str | int, **opts: Any) -> Any:
        """Attach an lwt_in/out/xmit program by adding a route to ``dest`` via ``dev`` with a
        BPF encap; closing the returned LwtRoute deletes the route."""
        from .links.lwt import attach_lwt

        return attach_lwt(self, dest, dev=dev, **opts)

    def attach_iter(self, map: Any = None, **opts: Any) -> Any:
        """Create an iterator link (``map=``, ``cgroup=``/``order=``, ``tid=``/``pid=``)."""
        from .links.iter import attach_iter

        return attach_iter(self, map, **opts)

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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, ProgType) else str(self.type)
        if self.fd.closed:
            return f"Program({self.name!r}, {t}, closed)"
        try:
            return f"Program({self.name!r}, {t}, id={self.id}, tag={self.tag})"
        except Exception:  # repr must not raise
            return f"Program({self.name!r}, {t}, fd={self.fd.fileno()})"
