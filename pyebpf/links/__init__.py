"""Links: attach loaded programs to kernel hooks; each Link owns its fds and detaches on close."""

from __future__ import annotations

from .autoattach import attach_program, auto_attach, skip_reason
from .base import AttachError, AttachSkipped, Link, LinkInfo, link_info
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

__all__ = [
    "AttachError",
    "AttachSkipped",
    "IterLink",
    "IterStream",
    "KprobeLink",
    "KprobeUnavailable",
    "Link",
    "LinkInfo",
    "PerfEventLink",
    "PerfEventLinks",
    "RawTracepointLink",
    "TracepointLink",
    "TracingLink",
    "attach_iter",
    "attach_kprobe",
    "attach_ksyscall",
    "attach_lsm",
    "attach_perf_event",
    "attach_program",
    "attach_raw_tracepoint",
    "attach_trace",
    "attach_tracepoint",
    "auto_attach",
    "link_info",
    "sample_software_event",
    "skip_reason",
    "tracepoint_id",
]
