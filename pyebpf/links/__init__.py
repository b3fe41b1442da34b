"""Links: attach loaded programs to kernel hooks; each Link owns its fds and detaches on close.

One module per hook. The tracing hooks are imported with the package; the others
(uprobe, usdt, xdp, tc, cgroup, netns, netfilter, socket, lwt, struct_ops) on first use
of one of their names (PEP 562), so start-up pays only for what a program attaches.
"""

from __future__ import annotations

from typing import Any

from .autoattach import attach_program, auto_attach, skip_reason
from .base import AttachError, AttachSkipped, Link, LinkInfo, ProgRef, link_info
from .iter import IterLink, IterStream, attach_iter
from .kprobe import KprobeLink, KprobeUnavailable, attach_kprobe, attach_ksyscall
from .perf_event import PerfEventLink, PerfEventLinks, attach_perf_event, sample_software_event
from .tracing import (
    RawTracepointLink,
    TracepointLink,
    TracingLink,
    attach_lsm,
    attach_raw_tracepoint,
    attach_trace,
    attach_tracepoint,
    tracepoint_id,
)

_LAZY = {
    "UprobeLink": "uprobe", "UprobeMultiLink": "uprobe", "attach_uprobe": "uprobe",
    "attach_uprobe_multi": "uprobe",
    "attach_kprobe_multi": "kprobe",
    "UsdtLink": "usdt", "attach_usdt": "usdt",
    "XdpLink": "xdp", "XdpNetlinkLink": "xdp", "XdpInfo": "xdp", "attach_xdp": "xdp",
    "xdp_query": "xdp",
    "TcxLink": "tc", "TcLink": "tc", "attach_tcx": "tc", "attach_tc": "tc", "tcx_query": "tc",
    "tc_query": "tc",
    "CgroupLink": "cgroup", "CgroupAttachment": "cgroup", "CgroupQuery": "cgroup",
    "attach_cgroup": "cgroup", "cgroup_query": "cgroup",
    "NetnsLink": "netns", "attach_netns": "netns", "netns_prog_ids": "netns",
    "NetfilterLink": "netfilter", "attach_netfilter": "netfilter",
    "SocketAttachment": "socket", "SockmapLink": "socket", "attach_socket": "socket",
    "attach_sockmap": "socket",
    "LwtRoute": "lwt", "attach_lwt": "lwt",
    "StructOpsLink": "struct_ops", "attach_struct_ops": "struct_ops",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyebpf.links' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AttachError",
    "AttachSkipped",
    "CgroupAttachment",
    "CgroupLink",
    "CgroupQuery",
    "IterLink",
    "IterStream",
    "KprobeLink",
    "KprobeUnavailable",
    "Link",
    "LinkInfo",
    "ProgRef",
    "LwtRoute",
    "NetfilterLink",
    "NetnsLink",
    "PerfEventLink",
    "PerfEventLinks",
    "RawTracepointLink",
    "SocketAttachment",
    "SockmapLink",
    "StructOpsLink",
    "TcLink",
    "TcxLink",
    "TracepointLink",
    "TracingLink",
    "UprobeLink",
    "UprobeMultiLink",
    "UsdtLink",
    "XdpInfo",
    "XdpLink",
    "XdpNetlinkLink",
    "attach_cgroup",
    "attach_iter",
    "attach_kprobe",
    "attach_kprobe_multi",
    "attach_ksyscall",
    "attach_lsm",
    "attach_lwt",
    "attach_netfilter",
    "attach_netns",
    "attach_perf_event",
    "attach_program",
    "attach_raw_tracepoint",
    "attach_socket",
    "attach_sockmap",
    "attach_struct_ops",
    "attach_tc",
    "attach_tcx",
    "attach_trace",
    "attach_tracepoint",
    "attach_uprobe",
    "attach_uprobe_multi",
    "attach_usdt",
    "attach_xdp",
    "auto_attach",
    "cgroup_query",
    "link_info",
    "netns_prog_ids",
    "sample_software_event",
    "skip_reason",
    "tc_query",
    "tcx_query",
    "tracepoint_id",
    "xdp_query",
]
