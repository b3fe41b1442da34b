"""Program run-time statistics (BPF_ENABLE_STATS).

The kernel counts ``run_cnt`` and ``run_time_ns`` of every program only while at
least one stats fd is open (or ``kernel.bpf_stats_enabled`` is set): timing each
run costs a little, so it is off by default. :func:`enable_stats` opens such an fd;
use it as a context manager and read the counters with ``Program.info()``::

    with pyebpf.enable_stats():
        ...  # let the programs run
        info = prog.info()
        print(info.run_cnt, info.run_time_ns)
"""

from __future__ import annotations

from .errors import OptionError, SyscallError
from .sys import bpf as _bpf
from .sys.fd import FD, Closing

__all__ = ["STATS_TYPES", "Stats", "enable_stats"]

# enum bpf_stats_type
STATS_TYPES = {"run_time": 0}


class Stats(Closing):
    """An open BPF_ENABLE_STATS fd: statistics stay on until :meth:`close` (or ``with`` exit)."""

    def __init__(self, fd: FD, kind: str) -> None:
        self.fd = fd
        self.kind = kind

    @property
    def closed(self) -> bool:
        return self.fd.closed

    def close(self) -> None:
        """Close the fd; the kernel stops counting once no stats fd is left."""
        self.fd.close()

    def __enter__(self) -> Stats:
        return self

    def __repr__(self) -> str:
        return f"Stats({self.kind!r}{', closed' if self.closed else ''})"


def enable_stats(kind: str | int = "run_time") -> Stats:
    """Turn on program statistics of ``kind`` (``"run_time"``: run_cnt and run_time_ns).

    Returns a :class:`Stats` that keeps them on while it is open; use it with ``with``.
    Needs CAP_SYS_ADMIN; the kernel refuses an unknown kind with EINVAL.
    """
    if isinstance(kind, str):
        if kind not in STATS_TYPES:
            raise OptionError(f"unknown statistics kind {kind!r}; known: "
                              f"{', '.join(sorted(STATS_TYPES))}")
        code, name = STATS_TYPES[kind], kind
    elif isinstance(kind, int) and not isinstance(kind, bool) and kind >= 0:
        code = kind
        name = next((k for k, v in STATS_TYPES.items() if v == kind), str(kind))
    else:
        raise OptionError(f"statistics kind must be a name or an int, not {kind!r}")
    try:
        fd = _bpf.enable_stats(code)
    except SyscallError as e:
        import errno as _errno

        if e.errno == _errno.EINVAL:
            e.hint = f"this kernel does not know statistics kind {name!r} (BPF_ENABLE_STATS type {code})"
        elif e.errno == _errno.EPERM:
            e.hint = "BPF_ENABLE_STATS needs CAP_SYS_ADMIN"
        raise
    return Stats(fd, name)

