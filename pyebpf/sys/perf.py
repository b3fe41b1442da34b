"""perf_event_open(2), perf ioctls, tracefs (tracepoint ids, legacy probe events) and bpffs checks."""

from __future__ import annotations

import ctypes
import errno as _errno
import itertools
import os
import re
import threading
from ctypes import c_int32, c_uint16, c_uint32, c_uint64

from .._log import get_logger
from ..errors import OptionError, PyebpfError, SyscallError
from .fd import FD
from .syscall import ioctl, sys_perf_event_open

__all__ = [
    "BPF_FS_MAGIC",
    "PERF_COUNT_SW_BPF_OUTPUT",
    "PERF_COUNT_SW_CPU_CLOCK",
    "PERF_FLAG_FD_CLOEXEC",
    "PERF_TYPE_SOFTWARE",
    "PERF_TYPE_TRACEPOINT",
    "PerfEventAttr",
    "TracefsError",
    "add_kprobe_event",
    "add_uprobe_event",
    "bpffs_problem",
    "is_bpffs",
    "mount_tracefs",
    "perf_event_disable",
    "perf_event_enable",
    "perf_event_open",
    "perf_event_set_bpf",
    "pmu_retprobe_bit",
    "pmu_type",
    "remove_probe_event",
    "require_bpffs",
    "tracefs_path",
    "tracepoint_id",
]

_log = get_logger("pyebpf.sys")

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_TYPE_HW_CACHE = 3
PERF_TYPE_RAW = 4
PERF_TYPE_BREAKPOINT = 5

PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_COUNT_SW_PAGE_FAULTS = 2
PERF_COUNT_SW_CONTEXT_SWITCHES = 3
PERF_COUNT_SW_CPU_MIGRATIONS = 4
PERF_COUNT_SW_DUMMY = 9
PERF_COUNT_SW_BPF_OUTPUT = 10

PERF_SAMPLE_RAW = 1 << 10

PERF_FLAG_FD_NO_GROUP = 1 << 0
PERF_FLAG_FD_OUTPUT = 1 << 1
PERF_FLAG_PID_CGROUP = 1 << 2
PERF_FLAG_FD_CLOEXEC = 1 << 3

# _IO('$', n) and _IOW('$', n, u32) on x86_64/aarch64 (asm-generic ioctl encoding)
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_RESET = 0x2403
PERF_EVENT_IOC_SET_BPF = 0x40042408

BPF_FS_MAGIC = 0xCAFE4A11
TRACEFS_MAGIC = 0x74726163
DEBUGFS_MAGIC = 0x64626720


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr (PERF_ATTR_SIZE_VER8, 136 bytes); ``size`` is set for you."""

    _fields_ = [
        ("type", c_uint32),
        ("size", c_uint32),
        ("config", c_uint64),
        ("sample_period", c_uint64),  # also sample_freq
        ("sample_type", c_uint64),
        ("read_format", c_uint64),
        ("disabled", c_uint64, 1),
        ("inherit", c_uint64, 1),
        ("pinned", c_uint64, 1),
        ("exclusive", c_uint64, 1),
        ("exclude_user", c_uint64, 1),
        ("exclude_kernel", c_uint64, 1),
        ("exclude_hv", c_uint64, 1),
        ("exclude_idle", c_uint64, 1),
        ("mmap", c_uint64, 1),
        ("comm", c_uint64, 1),
        ("freq", c_uint64, 1),
        ("inherit_stat", c_uint64, 1),
        ("enable_on_exec", c_uint64, 1),
        ("task", c_uint64, 1),
        ("watermark", c_uint64, 1),
        ("precise_ip", c_uint64, 2),
        ("mmap_data", c_uint64, 1),
        ("sample_id_all", c_uint64, 1),
        ("exclude_host", c_uint64, 1),
        ("exclude_guest", c_uint64, 1),
        ("exclude_callchain_kernel", c_uint64, 1),
        ("exclude_callchain_user", c_uint64, 1),
        ("mmap2", c_uint64, 1),
        ("comm_exec", c_uint64, 1),
        ("use_clockid", c_uint64, 1),
        ("context_switch", c_uint64, 1),
        ("write_backward", c_uint64, 1),
        ("namespaces", c_uint64, 1),
        ("ksymbol", c_uint64, 1),
        ("bpf_event", c_uint64, 1),
        ("aux_output", c_uint64, 1),
        ("cgroup", c_uint64, 1),
        ("text_poke", c_uint64, 1),
        ("build_id", c_uint64, 1),
        ("inherit_thread", c_uint64, 1),
        ("remove_on_exec", c_uint64, 1),
        ("sigtrap", c_uint64, 1),
        ("_reserved_1", c_uint64, 26),
        ("wakeup_events", c_uint32),  # also wakeup_watermark
        ("bp_type", c_uint32),
        ("config1", c_uint64),  # also bp_addr, kprobe_func, uprobe_path
        ("config2", c_uint64),  # also bp_len, kprobe_addr, probe_offset
        ("branch_sample_type", c_uint64),
        ("sample_regs_user", c_uint64),
        ("sample_stack_user", c_uint32),
        ("clockid", c_int32),
        ("sample_regs_intr", c_uint64),
        ("aux_watermark", c_uint32),
        ("sample_max_stack", c_uint16),
        ("_reserved_2", c_uint16),
        ("aux_sample_size", c_uint32),
        ("aux_action", c_uint32),
        ("sig_data", c_uint64),
        ("config3", c_uint64),
    ]

    size: int  # a ctypes field (above); declared for the type checker

    def __init__(self, **kw: int):
        super().__init__(**kw)
        if not self.size:
            self.size = ctypes.sizeof(self)



def _alias(field: str) -> property:
    def get(self: ctypes.Structure) -> int:
        v: int = getattr(self, field)
        return v

    def put(self: ctypes.Structure, v: int) -> None:
        setattr(self, field, v)

    return property(get, put, doc=f"alias of {field} (a union member in C)")


# the C unions' other member names
for _name, _field in (("sample_freq", "sample_period"), ("wakeup_watermark", "wakeup_events"),
                      ("bp_addr", "config1"), ("kprobe_func", "config1"), ("uprobe_path", "config1"),
                      ("bp_len", "config2"), ("kprobe_addr", "config2"), ("probe_offset", "config2")):
    setattr(PerfEventAttr, _name, _alias(_field))


assert ctypes.sizeof(PerfEventAttr) == 136


def perf_event_open(attr: PerfEventAttr, pid: int = -1, cpu: int = 0, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> FD:
    """perf_event_open(2); returns the event FD (close-on-exec by default)."""
    return FD(sys_perf_event_open(attr, pid, cpu, group_fd, flags | PERF_FLAG_FD_CLOEXEC), "perf_event")


def perf_event_set_bpf(perf_fd: int | FD, prog_fd: int | FD) -> None:
    """PERF_EVENT_IOC_SET_BPF: attach a program to the event (the pre-bpf_link way)."""
    ioctl(int(perf_fd), PERF_EVENT_IOC_SET_BPF, int(prog_fd), name="PERF_EVENT_IOC_SET_BPF")


def perf_event_enable(perf_fd: int | FD) -> None:
    """PERF_EVENT_IOC_ENABLE."""
    ioctl(int(perf_fd), PERF_EVENT_IOC_ENABLE, 0, name="PERF_EVENT_IOC_ENABLE")


def perf_event_disable(perf_fd: int | FD) -> None:
    """PERF_EVENT_IOC_DISABLE."""
    ioctl(int(perf_fd), PERF_EVENT_IOC_DISABLE, 0, name="PERF_EVENT_IOC_DISABLE")


# --- statfs ------------------------------------------------------------------------------------


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type is the first long
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(None, use_errno=True)
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
_statfs.restype = ctypes.c_int


def fs_magic(path: str) -> int | None:
    """statfs(path).f_type, or None if the path does not exist / cannot be stat'ed."""
    buf = _Statfs()
    if _statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    magic: int = buf.f_type & 0xFFFFFFFF
    return magic


def is_bpffs(path: str) -> bool:
    """Whether ``path`` lives on a BPF filesystem (statfs magic 0xcafe4a11)."""
    return fs_magic(path) == BPF_FS_MAGIC


def bpffs_problem(path: str) -> str:
    """Why ``path`` cannot hold a pin ("" if its directory is on a bpffs)."""
    d = os.path.dirname(os.path.abspath(path)) or "/"
    if os.path.isdir(path):
        d = path
    if not os.path.exists(d):
        return f"directory {d} does not exist (create it on a bpffs; mount one with: mount -t bpf bpf /sys/fs/bpf)"
    if not is_bpffs(d):
        return f"{d} is not on a BPF filesystem; mount one with: mount -t bpf bpf /sys/fs/bpf"
    return ""


def require_bpffs(path: str = "/sys/fs/bpf") -> None:
    """Raise PyebpfError naming the mount command if ``path`` is not on a bpffs."""
    if not is_bpffs(path):
        raise PyebpfError(f"{path} is not a BPF filesystem; mount it with: mount -t bpf bpf /sys/fs/bpf")


# --- tracefs -----------------------------------------------------------------------------------


class TracefsError(PyebpfError):
    """tracefs is missing, or a tracepoint/probe event does not exist or cannot be created."""


_TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_tracefs: str | None = None


MOUNT_HINT = "mount it with: mount -t tracefs tracefs /sys/kernel/tracing"


def tracefs_path(root: str | None = None) -> str:
    """The tracefs directory: ``root`` if given (checked), else the mounted tracefs
    (/sys/kernel/tracing, or debugfs' tracing dir as a fallback)."""
    global _tracefs
    if root is not None:
        if fs_magic(root) == TRACEFS_MAGIC or os.path.isdir(os.path.join(root, "events")):
            return root
        raise TracefsError(f"tracefs is not mounted at {root} (no {root}/events); {MOUNT_HINT}")
    if _tracefs is not None:
        return _tracefs
    for p in _TRACEFS_CANDIDATES:
        if fs_magic(p) == TRACEFS_MAGIC or os.path.exists(os.path.join(p, "events")):
            _tracefs = p
            return p
    raise TracefsError(
        f"tracefs is not mounted (looked at /sys/kernel/tracing and /sys/kernel/debug/tracing); "
        f"{MOUNT_HINT}"
    )


def tracepoint_id(category: str, name: str, *, tracefs: str | None = None) -> int:
    """The perf event id of tracepoint ``category:name`` (tracefs events/<category>/<name>/id)."""
    if not category or not name or "/" in category or "/" in name or ".." in (category, name):
        raise OptionError(f"bad tracepoint name {category!r}:{name!r} (want category and name)")
    base = tracefs_path(tracefs)
    path = os.path.join(base, "events", category, name, "id")
    try:
        with open(path) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        if not os.path.isdir(os.path.join(base, "events", category)):
            why = f"there is no tracepoint category {category!r}"
        else:
            why = f"category {category!r} has no tracepoint {name!r}"
        raise TracefsError(
            f"tracepoint {category}:{name} does not exist: {path} is missing ({why}; "
            f"see {base}/available_events)"
        ) from None
    except (OSError, ValueError) as e:
        raise TracefsError(f"cannot read tracepoint id from {path}: {e}") from None


def pmu_type(pmu: str) -> int | None:
    """The dynamic PMU type of ``pmu`` ("kprobe", "uprobe"), or None if absent."""
    try:
        with open(f"/sys/bus/event_source/devices/{pmu}/type") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pmu_retprobe_bit(pmu: str) -> int | None:
    """The config bit for return probes ("config:0" in .../format/retprobe), or None."""
    try:
        with open(f"/sys/bus/event_source/devices/{pmu}/format/retprobe") as f:
            text = f.read().strip()
    except OSError:
        return None
    _, _, bit = text.partition(":")
    try:
        return int(bit)
    except ValueError:
        return None


_counter = itertools.count()
_counter_lock = threading.Lock()


def unique_event_name(prefix: str, target: str) -> str:
    """A tracefs-safe, process-unique event name, like libbpf's gen_probe_legacy_event_name."""
    with _counter_lock:
        n = next(_counter)
    clean = "".join(c if c.isalnum() else "_" for c in target)[:64]
    return f"{prefix}_{os.getpid()}_{clean}_{n}"


def _write_events(file: str, line: str) -> None:
    try:
        base = tracefs_path()
    except TracefsError:
        raise
    path = os.path.join(base, file)
    if not os.path.exists(path):
        raise TracefsError(
            f"{path} does not exist: this kernel has no legacy {file.split('_')[0]} support "
            "(CONFIG_KPROBE_EVENTS/CONFIG_UPROBE_EVENTS)"
        )
    _log.debug("tracefs %s <- %r", file, line)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise SyscallError(e.errno or _errno.EIO, f"open {path}", "cannot open tracefs events file") from None
    try:
        os.write(fd, line.encode() + b"\n")
    except OSError as e:
        raise SyscallError(e.errno or _errno.EIO, f"write {file}",
                           f"the kernel refused probe definition {line!r}") from None
    finally:
        os.close(fd)


# pyebpf's legacy event names carry the creating pid: pyebpf_<pid>_... or pyebpf_<kind>_<pid>_...
_OUR_EVENT = re.compile(r"^[pr](?::\S*)?:(\S+)/(pyebpf_(?:[a-z]+_)?(\d+)_\S*)\s", re.M)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_probe_events(kind: str) -> list[str]:
    """Remove pyebpf's legacy ``kind`` ("uprobe"/"kprobe") events whose creating process is gone.

    A tracefs probe event outlives the process that wrote it when that process is killed
    before its cleanup runs (SIGKILL): nothing in the kernel ties the event to a process.
    pyebpf names its events after the creating pid, so a later pyebpf process removes the
    orphans before it adds an event of its own. An event still in use (another pid
    namespace's live probe whose pid number means nothing here) is refused by the kernel
    with EBUSY and stays. Returns the events removed.
    """
    try:
        path = os.path.join(tracefs_path(), f"{kind}_events")
        with open(path) as f:
            text = f.read()
    except (OSError, TracefsError):
        return []
    removed = []
    for m in _OUR_EVENT.finditer(text):
        group, name, pid = m.group(1), m.group(2), int(m.group(3))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            _write_events(f"{kind}_events", f"-:{group}/{name}")
        except (SyscallError, TracefsError) as e:
            _log.debug("stale %s event %s/%s not removed: %s", kind, group, name, e)
            continue
        removed.append(f"{group}/{name}")
    return removed


def add_kprobe_event(func: str, offset: int = 0, *, retprobe: bool = False, name: str | None = None,
                     group: str = "pyebpf") -> tuple[str, str]:
    """Create a legacy kprobe in tracefs kprobe_events; returns (group, event name)."""
    sweep_stale_probe_events("kprobe")
    ev = name or unique_event_name("pyebpf_kretprobe" if retprobe else "pyebpf_kprobe", func)
    target = f"{func}+{offset}" if offset else func
    _write_events("kprobe_events", f"{'r' if retprobe else 'p'}:{group}/{ev} {target}")
    return group, ev


def add_uprobe_event(path: str, offset: int, *, retprobe: bool = False, name: str | None = None,
                     group: str = "pyebpf", ref_ctr_offset: int = 0) -> tuple[str, str]:
    """Create a legacy uprobe in tracefs uprobe_events; returns (group, event name)."""
    sweep_stale_probe_events("uprobe")
    ev = name or unique_event_name("pyebpf_uretprobe" if retprobe else "pyebpf_uprobe",
                                   f"{os.path.basename(path)}_{offset:x}")
    target = f"{path}:{offset:#x}"
    if ref_ctr_offset:
        target += f"({ref_ctr_offset:#x})"
    _write_events("uprobe_events", f"{'r' if retprobe else 'p'}:{group}/{ev} {target}")
    return group, ev


def remove_probe_event(kind: str, group: str, name: str) -> None:
    """Remove a legacy probe event (``kind`` is "kprobe" or "uprobe")."""
    _write_events(f"{kind}_events", f"-:{group}/{name}")


def mount_tracefs(path: str = "/sys/kernel/tracing") -> str:
    """Mount tracefs at ``path`` if it is not mounted there yet (needs root); returns the path.

    libbpf never mounts anything; this is for tools and tests that want a ready tracefs.
    """
    global _tracefs
    if fs_magic(path) == TRACEFS_MAGIC:
        return path
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", os.fsencode(path), b"tracefs", ctypes.c_ulong(0), None) != 0:
        err = ctypes.get_errno()
        raise SyscallError(err, "mount tracefs", f"could not mount tracefs at {path} "
                           "(needs root / CAP_SYS_ADMIN): mount -t tracefs tracefs /sys/kernel/tracing")
    _log.debug("mounted tracefs at %s", path)
    _tracefs = None
    return path
