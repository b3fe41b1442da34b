"""Tracepoints, raw tracepoints, tp_btf and the trampoline kinds (fentry/fexit/fmod_ret/lsm/freplace)."""

from __future__ import annotations

import errno as _errno
from typing import Any, cast

from .._log import get_logger
from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import perf as _perf
from ..sys.perf import PERF_FLAG_FD_CLOEXEC, PERF_TYPE_TRACEPOINT, PerfEventAttr
from ..uapi import AttachType, ProgType
from .base import AttachError, Link, ProgramLike, prog_fd, prog_label
from .perf_event import PerfEventLink, attach_perf_event

__all__ = [
    "RawTracepointLink",
    "TracepointLink",
    "TracingLink",
    "attach_lsm",
    "attach_raw_tracepoint",
    "attach_trace",
    "attach_tracepoint",
    "tracefs_root",
    "tracepoint_id",
]

_log = get_logger("pyebpf.links")

MOUNT_HINT = _perf.MOUNT_HINT
tracefs_root = _perf.tracefs_path
tracepoint_id = _perf.tracepoint_id


class TracepointLink(PerfEventLink):
    """A program attached to a kernel tracepoint through a perf event."""

    kind = "tracepoint"


def attach_tracepoint(prog: ProgramLike, category: str, name: str | None = None, *,
                      cookie: int = 0, force_ioctl: bool = False,
                      tracefs: str | None = None) -> TracepointLink:
    """Attach ``prog`` to tracepoint ``category:name`` (``"category/name"`` also accepted).

    perf_event_open(PERF_TYPE_TRACEPOINT, id, pid=-1, cpu=0) then BPF_LINK_CREATE(BPF_PERF_EVENT),
    or PERF_EVENT_IOC_SET_BPF + ENABLE when the kernel has no perf links (or ``force_ioctl``).
    ``tracefs`` overrides the tracefs mount point.
    """
    if name is None:
        category, sep, name = category.partition("/")
        if not sep:
            category, sep, name = category.partition(":")
        if not sep:
            raise OptionError(f"tracepoint {category!r} must be 'category/name'")
    tp_id = tracepoint_id(category, name, tracefs=tracefs)
    # exactly libbpf's perf_event_open_tracepoint(): counting mode, all processes, CPU 0 (a
    # tracepoint event fires the program on every CPU regardless)
    attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, config=tp_id)
    try:
        pfd = _perf.perf_event_open(attr, pid=-1, cpu=0, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC)
    except SyscallError as e:
        raise AttachError(f"cannot open a perf event for tracepoint {category}:{name} (id {tp_id}): {e}",
                          program=prog_label(prog), cause=e) from e
    link = attach_perf_event(prog, pfd, cookie=cookie, force_ioctl=force_ioctl,
                             link_class=TracepointLink, target=f"{category}:{name}")
    return cast(TracepointLink, link)  # made by link_class


class RawTracepointLink(Link):
    """A raw_tp / raw_tp.w / tp_btf attachment made with BPF_RAW_TRACEPOINT_OPEN."""

    kind = "raw_tracepoint"


def attach_raw_tracepoint(prog: ProgramLike, name: str, *, cookie: int = 0) -> RawTracepointLink:
    """Attach a raw_tp (or raw_tp.w) program to raw tracepoint ``name`` (BPF_RAW_TRACEPOINT_OPEN).

    BPF_LINK_CREATE(BPF_TRACE_RAW_TP) is not used: kernels reject it for raw_tp programs (EINVAL).
    """
    if not name:
        raise OptionError("raw tracepoint name is empty")
    try:
        fd = _bpf.raw_tracepoint_open(name, prog_fd(prog), cookie)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            raise AttachError(f"raw tracepoint {name!r} does not exist in this kernel "
                              "(names are the TRACE_EVENT names, e.g. 'sys_enter', 'sched_switch')",
                              program=prog_label(prog), cause=e) from e
        raise
    return RawTracepointLink(fd, prog, target=name)


class TracingLink(Link):
    """A tp_btf/fentry/fexit/fmod_ret/freplace/lsm link (target fixed at load by attach_btf_id)."""

    kind = "tracing"


_RAW_TP_FALLBACK = {AttachType.TRACE_RAW_TP, AttachType.LSM_MAC, AttachType.TRACE_FENTRY,
                    AttachType.TRACE_FEXIT, AttachType.MODIFY_RETURN}


def _btf_link(prog: Any, attach_type: int, cookie: int, target_fd: int | None = None,
              target_btf_id: int = 0, raw_tracepoint_open: bool = False) -> TracingLink:
    pfd = prog_fd(prog)
    target = getattr(getattr(prog, "spec", None), "attach_target", None) or ""
    if raw_tracepoint_open:
        if target_fd or target_btf_id:
            raise OptionError("BPF_RAW_TRACEPOINT_OPEN cannot re-target a program")
        try:
            return TracingLink(_bpf.raw_tracepoint_open(None, pfd, cookie), prog, target=target)
        except SyscallError as e:
            raise AttachError(f"cannot attach: {e}", program=prog_label(prog), cause=e) from e
    try:
        fd = _bpf.link_create(pfd, target_fd, attach_type, target_btf_id=target_btf_id,
                              tracing_cookie=cookie if cookie else None)
    except SyscallError as e:
        # libbpf's bpf_link_create: kernels before 5.x lack LINK_CREATE for these kinds; they
        # take BPF_RAW_TRACEPOINT_OPEN with no name instead (nothing else may be asked for)
        if (e.errno != _errno.EINVAL or target_fd or target_btf_id or cookie
                or attach_type not in _RAW_TP_FALLBACK):
            raise AttachError(f"cannot attach: {e}", program=prog_label(prog), cause=e) from e
        _log.debug("LINK_CREATE(%s) gave EINVAL; retrying with RAW_TRACEPOINT_OPEN(NULL)", attach_type)
        fd = _bpf.raw_tracepoint_open(None, pfd)
    return TracingLink(fd, prog, target=target)


def _expected(prog: Any) -> int:
    eat = getattr(prog, "expected_attach_type", None)
    if eat is None:
        spec = getattr(prog, "spec", None)
        eat = getattr(spec, "expected_attach_type", None)
    return int(eat or 0)


def attach_trace(prog: ProgramLike, *, cookie: int = 0, target_prog: Any = None,
                 target_btf_id: int = 0, raw_tracepoint_open: bool = False) -> TracingLink:
    """Attach a tp_btf/fentry/fexit/fmod_ret (or freplace) program to the target it was loaded for.

    BPF_LINK_CREATE with the program's expected attach type, falling back to
    BPF_RAW_TRACEPOINT_OPEN(name=NULL) on EINVAL as libbpf does (``raw_tracepoint_open``
    forces the latter). For freplace, ``target_prog``/``target_btf_id`` re-target the extension.
    """
    ptype = getattr(prog, "type", None)
    if ptype == ProgType.EXT:
        tfd = prog_fd(target_prog) if target_prog is not None else None
        return _btf_link(prog, 0, cookie, tfd, target_btf_id, raw_tracepoint_open)
    if ptype not in (ProgType.TRACING, ProgType.LSM, None):
        raise OptionError(f"attach_trace needs a tracing program, not {ptype!r}")
    return _btf_link(prog, _expected(prog), cookie, raw_tracepoint_open=raw_tracepoint_open)


def attach_lsm(prog: ProgramLike, *, cookie: int = 0) -> TracingLink:
    """Attach a BPF LSM program to the hook it was loaded for (BPF_LINK_CREATE(BPF_LSM_MAC))."""
    return _btf_link(prog, _expected(prog) or AttachType.LSM_MAC, cookie)
