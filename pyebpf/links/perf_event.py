"""Programs on perf events: attach to a given event, and sample a software event on every CPU."""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable, Iterator
from typing import Any

from .._log import get_logger
from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import perf as _perf
from ..sys.fd import FD, Closing
from ..sys.perf import (
    PERF_COUNT_SW_CPU_CLOCK,
    PERF_FLAG_FD_CLOEXEC,
    PERF_TYPE_SOFTWARE,
    PerfEventAttr,
)
from ..uapi import AttachType
from .base import AttachError, Link, ProgramLike, prog_fd, prog_label

__all__ = [
    "PerfEventLink",
    "PerfEventLinks",
    "attach_perf_event",
    "has_perf_link",
    "online_cpus",
    "sample_software_event",
]

_log = get_logger("pyebpf.links")

def has_perf_link() -> bool:
    """Whether BPF_LINK_CREATE(BPF_PERF_EVENT) exists (libbpf's FEAT_PERF_LINK; cached per process)."""
    from .. import features

    return features.perf_link()


class PerfEventLink(Link):
    """A program on one perf event. Owns the perf event fd and, with perf links, the link fd.

    Without perf links (PERF_EVENT_IOC_SET_BPF) ``fd`` is None and closing the perf event
    fd is what detaches the program.
    """

    kind = "perf_event"

    def close(self) -> None:
        """Disable the event, then close the perf event fd and the link fd (libbpf's order)."""
        pe = self.perf_fd
        if pe is not None and not pe.closed:
            try:
                _perf.perf_event_disable(pe)
            except SyscallError as e:  # the event may already be gone; closing still detaches
                _log.debug("PERF_EVENT_IOC_DISABLE on close failed: %s", e)
            pe.close()
        super().close()


def attach_perf_event(prog: ProgramLike, perf_fd: FD | int, *, cookie: int = 0, force_ioctl: bool = False,
                      link_class: type[PerfEventLink] = PerfEventLink,
                      target: str = "") -> PerfEventLink:
    """Attach ``prog`` to an open perf event; the returned link owns ``perf_fd`` (an FD or raw int).

    Uses BPF_LINK_CREATE(BPF_PERF_EVENT) when the kernel has perf links, else (or with
    ``force_ioctl``) PERF_EVENT_IOC_SET_BPF; then PERF_EVENT_IOC_ENABLE, as libbpf does.
    On failure ``perf_fd`` is closed.
    """
    pe = perf_fd if isinstance(perf_fd, FD) else FD(int(perf_fd), "perf_event")
    label = prog_label(prog)
    link_fd: FD | None = None
    try:
        pfd = prog_fd(prog)
        use_link = not force_ioctl and has_perf_link()
        if use_link:
            try:
                link_fd = _bpf.link_create(pfd, pe, AttachType.PERF_EVENT,
                                           perf_event_cookie=cookie if cookie else None)
            except SyscallError as e:
                if e.errno != _errno.EINVAL or cookie:
                    raise AttachError(f"cannot link to perf event{_tgt(target)}: {e}{_why(e)}",
                                      program=label, cause=e) from e
                # libbpf decides by feature probe only; an EINVAL here still deserves the old way
                _log.debug("LINK_CREATE(BPF_PERF_EVENT) gave EINVAL; using PERF_EVENT_IOC_SET_BPF")
                use_link = False
        if not use_link:
            if cookie:
                raise AttachError("a BPF cookie needs perf links (BPF_LINK_CREATE), "
                                  "which are not used here", program=label)
            try:
                _perf.perf_event_set_bpf(pe, pfd)
            except SyscallError as e:
                raise AttachError(f"PERF_EVENT_IOC_SET_BPF{_tgt(target)} failed: {e}{_why(e)}",
                                  program=label, cause=e) from e
        try:
            _perf.perf_event_enable(pe)
        except SyscallError as e:
            raise AttachError(f"PERF_EVENT_IOC_ENABLE{_tgt(target)} failed: {e}",
                              program=label, cause=e) from e
    except BaseException:
        if link_fd is not None:
            link_fd.close()
        pe.close()
        raise
    return link_class(link_fd, prog, perf_fd=pe, target=target)


def _tgt(target: str) -> str:
    return f" {target}" if target else ""


def _why(e: SyscallError) -> str:
    if e.errno == _errno.EEXIST:
        # perf_event_attach_bpf_prog refuses a second copy of a program on one tracepoint/probe
        return " (this program is already attached to this event: a tracepoint or probe runs " \
               "each program once)"
    return ""


def online_cpus() -> list[int]:
    """The online CPU numbers (/sys/devices/system/cpu/online, e.g. "0-3,6")."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        import os

        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class PerfEventLinks(Closing):
    """Several perf-event links (one per CPU) handled as one: close(), ``with``, iteration."""

    def __init__(self, links: list[PerfEventLink], target: str = "") -> None:
        self.links = links
        self.target = target

    def __iter__(self) -> Iterator[PerfEventLink]:
        return iter(self.links)

    def __len__(self) -> int:
        return len(self.links)

    def close(self) -> None:
        for link in self.links:
            link.close()

    @property
    def closed(self) -> bool:
        return all(link.closed for link in self.links)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.links)} cpus"
        return f"PerfEventLinks({self.target!r}, {state})"


def sample_software_event(prog: Any, *, freq: int | None = None, period: int | None = None,
                          config: int = PERF_COUNT_SW_CPU_CLOCK, type: int = PERF_TYPE_SOFTWARE,
                          cpus: Iterable[int] | None = None, pid: int = -1,
                          force_ioctl: bool = False) -> PerfEventLinks:
    """Run a perf_event program on a sampled event on every CPU (default: cpu-clock at ``freq`` Hz).

    Give either ``freq`` (samples per second) or ``period`` (events per sample); the default
    is 99 Hz. ``pid=-1`` samples every process (on each CPU in ``cpus``, default all online).
    """
    if freq is not None and period is not None:
        raise OptionError("give freq or period, not both")
    if freq is None and period is None:
        freq = 99
    if (freq is not None and freq <= 0) or (period is not None and period <= 0):
        raise OptionError("freq/period must be positive")
    cpu_list = list(online_cpus() if cpus is None else cpus)
    name = f"perf type {type} config {config}"
    links: list[PerfEventLink] = []
    try:
        for cpu in cpu_list:
            attr = PerfEventAttr(type=type, config=config)
            if freq is not None:
                attr.freq = 1
                attr.sample_freq = freq
            else:
                attr.sample_period = period or 0
            try:
                pe = _perf.perf_event_open(attr, pid=pid, cpu=cpu, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC)
            except SyscallError as e:
                hint = ""
                if e.errno == _errno.ENOENT and type == 0:
                    hint = " (no hardware PMU here, e.g. in a VM: use a software event such as cpu-clock)"
                raise AttachError(f"perf_event_open({name}) on CPU {cpu} failed: {e}{hint}",
                                  program=prog_label(prog), cause=e) from e
            links.append(attach_perf_event(prog, pe, force_ioctl=force_ioctl, target=f"{name} cpu {cpu}"))
    except BaseException:
        for link in links:
            link.close()
        raise
    return PerfEventLinks(links, name)
