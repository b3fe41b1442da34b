"""attach_program / auto_attach: pick the attach function from a program's SEC() row, as libbpf.

libbpf's rules for auto-attach (bpf_object__attach_skeleton -> prog->sec_def->prog_attach_fn):
rows without a handler are skipped; handlers skip sections that name no target (bare
``tp``, ``raw_tp``, ``kprobe``, ``ksyscall``, ...); a malformed target is an error.
"""

from __future__ import annotations

from typing import Any

from ..errors import OptionError
from ..sys.fd import FD
from ..sys.perf import PerfEventAttr
from ..uapi import ProgType
from .base import AttachError, AttachSkipped, Link, prog_label
from .iter import MAP_TARGETS, attach_iter
from .kprobe import attach_kprobe, attach_ksyscall, parse_kprobe_target
from .perf_event import PerfEventLinks, attach_perf_event, sample_software_event
from .tracing import attach_lsm, attach_raw_tracepoint, attach_trace, attach_tracepoint

__all__ = ["attach_program", "auto_attach", "skip_reason"]

# handlers whose target string (after the section prefix) is parsed by their own module,
# as libbpf's attach_uprobe/attach_usdt/attach_*_multi parse theirs
_PARSED_BY_MODULE = {"uprobe", "uprobe_multi", "usdt", "kprobe_multi", "kprobe_session"}


def _section(prog: Any) -> tuple[str, Any, str | None]:
    spec = getattr(prog, "spec", None)
    if spec is None:
        return "", None, None
    return spec.section, spec.sec_def, spec.attach_target


def _plan(prog: Any, explicit: bool = False
          ) -> tuple[str | None, tuple[Any, ...], dict[str, Any], str | None]:
    """(handler, args, kwargs, skip reason) for auto-attaching ``prog`` from its section.

    Raises AttachError for a section whose target is malformed (libbpf fails those too).
    ``explicit``: the user asked for this attach, so the autoattach flag does not matter.
    """
    section, sd, target = _section(prog)
    spec = getattr(prog, "spec", None)
    name = prog_label(prog)
    if (not explicit and spec is not None and not getattr(spec, "autoattach", True)
            and sd is not None and sd.attach is not None):
        # only a section that has an auto-attach handler can have it disabled; for the
        # others the reason below (no handler) is the true one
        return None, (), {}, "auto-attach is disabled for this program"
    if spec is not None and not getattr(spec, "autoload", True):
        return None, (), {}, "the program is not loaded (autoload is off)"
    if sd is None:
        return None, (), {}, f"SEC({section!r}) is not a known section, nothing to attach"
    handler = sd.attach
    if handler is None:
        if sd.prog_type == ProgType.STRUCT_OPS:
            return None, (), {}, "struct_ops programs are attached through their struct_ops map"
        return None, (), {}, (f"SEC({section!r}) is not auto-attachable (libbpf has no attach "
                              "handler for it); attach it explicitly")
    if handler in _PARSED_BY_MODULE:
        if target is None:
            # libbpf's handlers return no link for a bare section: nothing to skip loudly
            return None, (), {}, (f"SEC({section!r}) names no target to attach to; attach it "
                                  "explicitly")
        return handler, (section, target), {}, None
    if handler == "tracepoint":
        if target is None:
            return None, (), {}, (f"SEC({section!r}) names no tracepoint (use "
                                  "SEC(\"tp/<category>/<name>\") or attach explicitly)")
        cat, sep, tp = target.partition("/")
        if not sep or not cat or not tp:
            raise AttachError(f"invalid section name {section!r}: want tp/<category>/<name>", program=name)
        return handler, (cat, tp), {}, None
    if handler == "raw_tp":
        if target is None:
            return None, (), {}, (f"SEC({section!r}) names no raw tracepoint (use "
                                  "SEC(\"raw_tp/<name>\") or attach explicitly)")
        return handler, (target,), {}, None
    if handler == "kprobe":
        if target is None:
            return None, (), {}, (f"SEC({section!r}) names no kernel function (use "
                                  "SEC(\"kprobe/<func>\") or attach explicitly)")
        retprobe = section.startswith("kretprobe/")
        func, off = parse_kprobe_target(target)
        if retprobe and off:
            raise AttachError("kretprobes do not support offset specification", program=name)
        return handler, (func, off, retprobe), {}, None
    if handler == "ksyscall":
        if target is None:
            return None, (), {}, (f"SEC({section!r}) names no syscall (use "
                                  "SEC(\"ksyscall/<syscall>\") or attach explicitly)")
        return handler, (target, section.startswith("kretsyscall/")), {}, None
    if handler == "iter":
        if target in MAP_TARGETS:
            return None, (), {}, (f"the {target} iterator needs a map; attach it with "
                                  "attach_iter(prog, map=...)")
        return handler, (), {}, None
    if handler in ("trace", "lsm"):
        return handler, (), {}, None
    return None, (), {}, f"no pyebpf attach handler {handler!r} for SEC({section!r})"


def _auto_uprobe(prog: Any, section: str, target: str, **kw: Any) -> Link:
    from .uprobe import auto_attach_uprobe

    return auto_attach_uprobe(prog, section, target, **kw)


def _auto_uprobe_multi(prog: Any, section: str, target: str, **kw: Any) -> Link:
    from .uprobe import auto_attach_uprobe_multi

    return auto_attach_uprobe_multi(prog, section, target, **kw)


def _auto_usdt(prog: Any, section: str, target: str, **kw: Any) -> Link:
    from .usdt import auto_attach_usdt

    return auto_attach_usdt(prog, section, target, **kw)


def _auto_kprobe_multi(prog: Any, section: str, target: str, **kw: Any) -> Link:
    from .kprobe import auto_attach_kprobe_multi

    return auto_attach_kprobe_multi(prog, section, target, **kw)


_AUTO: dict[str, Any] = {
    "uprobe": _auto_uprobe,
    "uprobe_multi": _auto_uprobe_multi,
    "usdt": _auto_usdt,
    "kprobe_multi": _auto_kprobe_multi,
    "kprobe_session": _auto_kprobe_multi,
}

_HANDLERS = {
    **_AUTO,
    "tracepoint": attach_tracepoint,
    "raw_tp": attach_raw_tracepoint,
    "trace": attach_trace,
    "lsm": attach_lsm,
    "iter": attach_iter,
    "kprobe": attach_kprobe,
    "ksyscall": attach_ksyscall,
}


def skip_reason(prog: Any) -> str | None:
    """Why :func:`auto_attach` would skip ``prog`` (None if it would try to attach). No syscalls."""
    return _plan(prog)[3]


def auto_attach(prog: Any) -> Link:
    """Attach ``prog`` from its SEC() name following libbpf's auto-attach rules.

    Raises AttachSkipped (``.reason``) when libbpf would skip it, AttachError when attaching fails.
    """
    handler, args, kw, reason = _plan(prog)
    if handler is None:
        raise AttachSkipped(reason or "not auto-attachable", program=prog_label(prog))
    link: Link = _HANDLERS[handler](prog, *args, **kw)
    return link


# Program types that libbpf attaches only through an explicit bpf_program__attach_*():
# (module under pyebpf.links, function) taking (prog, *args, **kw).
_P = ProgType
_BY_TYPE: dict[int, tuple[str, str]] = {
    _P.XDP: ("xdp", "attach_xdp"),
    _P.SCHED_CLS: ("tc", "attach_tcx"),
    **{t: ("cgroup", "attach_cgroup") for t in (
        _P.CGROUP_SKB, _P.CGROUP_SOCK, _P.CGROUP_SOCK_ADDR, _P.SOCK_OPS, _P.CGROUP_DEVICE,
        _P.CGROUP_SYSCTL, _P.CGROUP_SOCKOPT)},
    _P.SK_LOOKUP: ("netns", "attach_netns"),
    _P.FLOW_DISSECTOR: ("netns", "attach_netns"),
    _P.NETFILTER: ("netfilter", "attach_netfilter"),
    _P.SOCKET_FILTER: ("socket", "attach_socket"),
    _P.SK_REUSEPORT: ("socket", "attach_socket"),
    _P.SK_MSG: ("socket", "attach_sockmap"),
    _P.SK_SKB: ("socket", "attach_sockmap"),
    **{t: ("lwt", "attach_lwt") for t in (_P.LWT_IN, _P.LWT_OUT, _P.LWT_XMIT, _P.LWT_SEG6LOCAL)},
}

# SEC() handlers whose explicit form takes a target in arguments
_EXPLICIT: dict[str, tuple[str, str]] = {
    "uprobe": ("uprobe", "attach_uprobe"),
    "uprobe_multi": ("uprobe", "attach_uprobe_multi"),
    "usdt": ("usdt", "attach_usdt"),
    "kprobe_multi": ("kprobe", "attach_kprobe_multi"),
    "kprobe_session": ("kprobe", "attach_kprobe_multi"),
}


def _lazy(module: str, func: str) -> Any:
    # hook modules are imported on first use: start-up pays only for what it attaches
    import importlib

    return getattr(importlib.import_module(f"{__package__}.{module}"), func)


def attach_program(prog: Any, *args: Any, **kw: Any) -> Link | PerfEventLinks:
    """Attach ``prog``: from its SEC() name, or to the target given in ``args``/``kw``.

    tracepoint: ``("cat", "name")`` or ``("cat/name",)``; raw_tp: ``("name",)``;
    kprobe: ``(func, offset=0, retprobe=False)``; ksyscall: ``(name, retprobe=False)``;
    uprobe: ``(binary, func)``; usdt: ``(binary, provider, name)``;
    iter: ``(map=..., tid=..., cgroup_fd=...)``; perf_event programs: a perf fd or a
    PerfEventAttr (with ``pid``/``cpu``), or ``freq=``/``period=`` to sample on every CPU;
    tp_btf/fentry/fexit/fmod_ret/freplace/lsm take no target (it was fixed at load).
    Programs that libbpf never auto-attaches take their target here: xdp and tc an
    interface (tc through a tcx link), cgroup programs a cgroup, sk_lookup/flow_dissector
    a network namespace (default: our own), socket filters a socket, sk_msg/sk_skb a
    sockmap, netfilter its hook options, lwt a route.
    """
    section, sd, target = _section(prog)
    ptype = getattr(prog, "type", None)
    handler = sd.attach if sd is not None else None
    if ptype == ProgType.PERF_EVENT or (sd is not None and sd.prog_type == ProgType.PERF_EVENT):
        return _attach_perf_program(prog, *args, **kw)
    if ptype == ProgType.STRUCT_OPS:
        raise AttachError("struct_ops programs are attached through their struct_ops map: "
                          "Object.attach_struct_ops(map_name) or Object.attach()",
                          program=prog_label(prog))
    if handler is None and ptype in _BY_TYPE:
        return _lazy(*_BY_TYPE[ptype])(prog, *args, **kw)  # type: ignore[no-any-return]
    if handler is None and ptype is not None:
        handler = {ProgType.TRACEPOINT: "tracepoint", ProgType.RAW_TRACEPOINT: "raw_tp",
                   ProgType.RAW_TRACEPOINT_WRITABLE: "raw_tp", ProgType.LSM: "lsm",
                   ProgType.KPROBE: "kprobe", ProgType.EXT: "trace"}.get(ptype)
        if ptype == ProgType.TRACING:
            from ..uapi import AttachType

            eat = getattr(prog, "expected_attach_type", None)
            handler = "iter" if eat == AttachType.TRACE_ITER else "trace"
    if handler is None or handler not in _HANDLERS:
        raise AttachError(f"pyebpf.links cannot attach SEC({section!r}) programs "
                          f"(type {getattr(ptype, 'name', ptype)})", program=prog_label(prog))
    if args and handler in _EXPLICIT:
        if handler == "uprobe" and "retprobe" not in kw:
            kw["retprobe"] = section.startswith("uretprobe")
        return _lazy(*_EXPLICIT[handler])(prog, *args, **kw)  # type: ignore[no-any-return]
    if not args and handler in ("tracepoint", "raw_tp", "kprobe", "ksyscall", *_EXPLICIT):
        # the target comes from the section name; keyword options (cookie, ...) still apply
        h, pargs, pkw, reason = _plan(prog, explicit=True)
        if h is None:
            raise AttachError(f"{reason}; pass the attach target explicitly", program=prog_label(prog))
        if "retprobe" in kw and h in ("kprobe", "ksyscall"):
            pargs = pargs[:-1]
        return _HANDLERS[h](prog, *pargs, **{**pkw, **kw})  # type: ignore[no-any-return]
    # an explicit target keeps the section's entry/return flavour unless told otherwise
    if handler == "kprobe" and "retprobe" not in kw and len(args) < 3:
        kw["retprobe"] = section.startswith("kretprobe")
    elif handler == "ksyscall" and "retprobe" not in kw and len(args) < 2:
        kw["retprobe"] = section.startswith("kretsyscall")
    return _HANDLERS[handler](prog, *args, **kw)  # type: ignore[no-any-return]


def _attach_perf_program(prog: Any, event: Any = None, *, pid: int = -1, cpu: int = 0,
                         **kw: Any) -> Link | PerfEventLinks:
    from ..sys import perf as _perf

    if event is None:
        if not ({"freq", "period", "config", "type", "cpus"} & kw.keys()):
            raise OptionError("a perf_event program needs a perf event: pass a perf fd, a "
                              "PerfEventAttr, or freq=/period= to sample on every CPU")
        return sample_software_event(prog, pid=pid, **kw)
    if isinstance(event, PerfEventAttr):
        fd = _perf.perf_event_open(event, pid=pid, cpu=cpu)
        return attach_perf_event(prog, fd, **kw)
    if isinstance(event, FD | int):
        return attach_perf_event(prog, event, **kw)
    raise OptionError(f"cannot attach a perf_event program to {event!r}")
