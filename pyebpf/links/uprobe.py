"""uprobe / uretprobe / uprobe_multi attach, as libbpf's bpf_program__attach_uprobe_opts and
bpf_program__attach_uprobe_multi do it.

A uprobe sits at a *file offset* of a binary. The first choice is the uprobe PMU:
perf_event_open(type from /sys/bus/event_source/devices/uprobe/type, config1 = pointer to the
path, config2 = offset, config bits 32..63 = the USDT semaphore (ref_ctr) offset, the bit from
format/retprobe for uretprobes). Without the PMU a legacy probe is written to tracefs
``uprobe_events`` and opened as a tracepoint; it is removed again on close. uprobe_multi puts
many offsets of one binary on one BPF link (BPF_LINK_CREATE with BPF_TRACE_UPROBE_MULTI).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import itertools
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .._log import get_logger
from .._record import Record
from ..errors import OptionError, PyebpfError, SyscallError
from ..obj.elfsym import (
    SymbolError,
    find_func_offset,
    find_func_offset_in_archive,
    resolve_func_offsets,
    resolve_pattern_offsets,
)
from ..obj.libpath import LibraryNotFound, resolve_binary
from ..sys import bpf as _bpf
from ..sys import perf as _perf
from ..sys.perf import PERF_FLAG_FD_CLOEXEC, PERF_TYPE_TRACEPOINT, PerfEventAttr, TracefsError
from ..uapi import BPF_F_UPROBE_MULTI_RETURN, AttachType, ProgType
from .base import AttachError, AttachSkipped, Link, ProgramLike, prog_fd, prog_label
from .perf_event import PerfEventLink, attach_perf_event, has_perf_link

__all__ = [
    "UprobeLink",
    "UprobeMultiLink",
    "UprobeTarget",
    "attach_uprobe",
    "attach_uprobe_multi",
    "auto_attach_uprobe",
    "auto_attach_uprobe_multi",
    "legacy_uprobe_event_name",
    "parse_func_offset",
    "parse_uprobe_multi_section",
    "parse_uprobe_section",
    "uprobe_perf_attr",
]

_log = get_logger("pyebpf.links")

PMU_DIR = "/sys/bus/event_source/devices"
MAX_EVENT_NAME_LEN = 64  # the kernel's limit on trace event names
REF_CTR_OFFSET_SHIFT = 32  # PERF_UPROBE_REF_CTR_OFFSET_SHIFT: the uprobe PMU's config:32-63


class UprobeLink(PerfEventLink):
    """A uprobe/uretprobe on one perf event (PMU or legacy tracefs event, removed on close)."""

    kind = "uprobe"
    path: str = ""
    offset: int = 0
    pid: int | None = None
    retprobe: bool = False
    legacy_event: str | None = None  # "group/name" in uprobe_events, for a legacy probe


class UprobeMultiLink(Link):
    """Many uprobes of one binary on one BPF link (BPF_TRACE_UPROBE_MULTI)."""

    kind = "uprobe_multi"
    path: str = ""
    offsets: tuple[int, ...] = ()
    funcs: tuple[str, ...] = ()
    pid: int | None = None
    retprobe: bool = False


# --- pure pieces (unit-tested without a kernel) -----------------------------------------------


def _c_long(text: str) -> int | None:
    """strtol(text, 0) over the whole string (C notation: 0x.., 0.., decimal, optional sign)."""
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return None
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        v = int(digits, 16)
    elif digits.startswith("0"):
        v = int(digits, 8)
    else:
        v = int(digits)
    return -v if m.group(1) == "-" else v


def parse_func_offset(func: str) -> tuple[str, int]:
    """``"name+0x10"`` -> ("name", 16); ``"name"`` -> ("name", 0) (libbpf's ``+%li`` suffix)."""
    name, plus, off = func.rpartition("+")
    if plus and name:
        v = _c_long(off)
        if v is not None:
            return name, v
    return func, 0


class UprobeTarget(Record):
    """What a ``uprobe/PATH:FUNC[+OFF]`` section names."""

    path: str
    func: str | None
    offset: int
    retprobe: bool

    def __init__(self, path: str, func: str | None, offset: int, retprobe: bool) -> None:
        self.path = path
        self.func = func
        self.offset = offset
        self.retprobe = retprobe


def _split_section(section: str) -> tuple[str, str | None, str | None]:
    # libbpf: sscanf(sec, "%m[^/]/%m[^:]:%m[^\n]") -> probe type, binary path, function
    ptype, slash, rest = section.partition("/")
    if not slash or not rest or rest.startswith(":"):
        return ptype, None, None
    path, colon, func = rest.partition(":")
    func = func.split("\n", 1)[0]
    if not colon or not func:
        return ptype, path, None
    return ptype, path, func


def parse_uprobe_section(section: str) -> UprobeTarget | None:
    """Parse ``uprobe[.s]/PATH:FUNC[+OFF]``, ``uretprobe[.s]/...`` or ``.../PATH:0x1234``.

    None for a bare ``uprobe``/``uprobe.s`` (valid, but nothing to auto-attach). Raises
    OptionError for a path with no ``:function``, or a uretprobe with an offset.
    """
    ptype, path, func = _split_section(section)
    if path is None:
        return None
    if func is None:
        raise OptionError(f"section {section!r} is missing the ':function[+offset]' part "
                          "(want uprobe/PATH:FUNC[+OFFSET] or uprobe/PATH:0xOFFSET)")
    name: str | None
    name, offset = parse_func_offset(func)
    raw = _c_long(name)
    if raw is not None:  # a raw file offset rather than a symbol
        name, offset = None, raw
    retprobe = ptype in ("uretprobe", "uretprobe.s")
    if retprobe and offset:
        raise OptionError(f"section {section!r}: uretprobes do not support an offset")
    return UprobeTarget(path, name, offset, retprobe)


def parse_uprobe_multi_section(section: str) -> tuple[str, str, bool, bool] | None:
    """``uprobe.multi/PATH:PATTERN`` (also uretprobe.multi, uprobe.session, ``.s``) ->
    (path, pattern, retprobe, session); None for a bare section. Raises OptionError if malformed."""
    ptype, path, pattern = _split_section(section)
    if path is None and "/" not in section:
        return None
    if path is None or pattern is None:
        raise OptionError(f"invalid format of section {section!r} (want {ptype}/PATH:PATTERN)")
    return path, pattern, ptype.startswith("uretprobe.multi"), ptype.startswith("uprobe.session")


_legacy_index = itertools.count()
_index_lock = threading.Lock()


def legacy_uprobe_event_name(path: str, offset: int, *, pid: int | None = None,
                             index: int | None = None) -> str:
    """A tracefs-safe, unique legacy event name: pyebpf_<pid>_<n>_<basename>_0x<offset>.

    libbpf's gen_uprobe_legacy_event_name() layout: the counter comes before the binary name,
    so names stay unique when cut to the kernel's 64-character limit.
    """
    if index is None:
        with _index_lock:
            index = next(_legacy_index)
    raw = f"pyebpf_{os.getpid() if pid is None else pid}_{index}_{os.path.basename(path)}_0x{offset:x}"
    return "".join(c if c.isalnum() else "_" for c in raw)[:MAX_EVENT_NAME_LEN - 1]


class ProbeAttr(Record):
    """A perf_event_attr for the uprobe PMU plus the path buffer config1 points at."""

    attr: PerfEventAttr
    path: ctypes.Array[ctypes.c_char]

    def __init__(self, attr: PerfEventAttr, path: ctypes.Array[ctypes.c_char]) -> None:
        self.attr = attr
        self.path = path


def uprobe_perf_attr(path: str, offset: int, *, retprobe: bool = False, ref_ctr_offset: int = 0,
                     pmu_type: int, retprobe_bit: int | None) -> ProbeAttr:
    """The attr libbpf's perf_event_open_probe() builds for a uprobe on ``path`` at ``offset``."""
    buf = ctypes.create_string_buffer(os.fsencode(path))
    attr = PerfEventAttr(type=pmu_type)
    if retprobe:
        if retprobe_bit is None:
            raise AttachError(f"the uprobe PMU has no retprobe format bit ({PMU_DIR}/uprobe/format/"
                              "retprobe); uretprobes are unavailable through it; try mode='legacy'")
        attr.config |= 1 << retprobe_bit
    if ref_ctr_offset:
        if not 0 <= ref_ctr_offset < 1 << 32:
            raise OptionError(f"ref_ctr_offset 0x{ref_ctr_offset:x} does not fit in 32 bits")
        attr.config |= ref_ctr_offset << REF_CTR_OFFSET_SHIFT
    attr.config1 = ctypes.addressof(buf)
    attr.config2 = offset
    return ProbeAttr(attr, buf)


# --- kernel side ------------------------------------------------------------------------------


def _check_prog(prog: Any, what: str) -> str | None:
    label = prog_label(prog)
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.KPROBE:
        name = getattr(ptype, "name", ptype)
        raise AttachError(f"a {what} needs a program of type KPROBE (SEC(\"uprobe/...\"), "
                          f"SEC(\"uretprobe/...\"), SEC(\"uprobe.multi/...\")), but this one is "
                          f"{name}", program=label)
    return label


def _resolve(binary: str, pid: int | None, label: str | None) -> str:
    if pid == 0:
        pid = os.getpid()  # "this process": its maps name the libraries it has loaded
    try:
        path = resolve_binary(binary, pid if pid and pid > 0 else None)
    except LibraryNotFound as e:
        raise AttachError(str(e), program=label, cause=e) from e
    # the kernel resolves a relative path against our cwd for the PMU; tracefs would not
    return path if path.startswith("/") else os.path.abspath(path)


def _func_offset(path: str, func: str, label: str | None) -> int:
    name, off = parse_func_offset(func)
    try:
        return find_func_offset(path, name) + off
    except SymbolError as e:
        raise AttachError(str(e), program=label, cause=e) from e


def _errno_hint(e: SyscallError, path: str) -> str:
    if e.errno in (_errno.EPERM, _errno.EACCES):
        return (" (no permission: uprobes need root, or CAP_PERFMON and CAP_BPF "
                "(CAP_SYS_ADMIN on older kernels), and read access to the binary)")
    if e.errno == _errno.ENOENT:
        return f" ({path} does not exist, as the kernel sees it)"
    if e.errno == _errno.EINVAL:
        return " (offset outside the file, or not at an instruction the kernel can probe)"
    return ""


def pmu_retprobe_bit(pmu_dir: str = PMU_DIR) -> int | None:
    try:
        with open(os.path.join(pmu_dir, "uprobe", "format", "retprobe")) as f:
            text = f.read().strip()
    except OSError:
        return None
    m = re.fullmatch(r"config:(\d+)", text)
    return int(m.group(1)) if m else None


def pmu_type(pmu_dir: str = PMU_DIR) -> int | None:
    try:
        with open(os.path.join(pmu_dir, "uprobe", "type")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _perf_pid_cpu(pid: int | None) -> tuple[int, int]:
    # libbpf: all processes is pid -1 on CPU 0 (a uprobe fires whatever CPU the task runs on)
    if pid is None or pid < 0:
        return -1, 0
    return pid, -1


def attach_uprobe(prog: ProgramLike, binary: str, func: str | None = None, *, pid: int | None = None,
                  retprobe: bool = False, offset: int = 0, cookie: int = 0,
                  ref_ctr_offset: int = 0, mode: str = "default",
                  pmu_dir: str = PMU_DIR, tracefs: str | None = None) -> UprobeLink:
    """Attach a uprobe (``retprobe``: uretprobe) to ``func`` (``"name"`` or ``"name+0x10"``)
    plus ``offset`` in ``binary`` (a path, a name searched as libbpf does, or libbpf's
    ``archive.zip!/member.so`` for an ELF stored uncompressed in a zip).

    ``func`` None: ``offset`` is a file offset. ``pid`` None: every process (0: this one).
    ``ref_ctr_offset``: file offset of a USDT semaphore the kernel increments while attached.
    ``mode``: "default" (PMU if present, else tracefs), "perf" (PMU + ioctl), "link" (PMU +
    bpf perf link), "legacy" (tracefs uprobe_events + ioctl), as libbpf's PROBE_ATTACH_MODE_*.
    """
    label = _check_prog(prog, "uprobe")
    if mode not in ("default", "legacy", "perf", "link"):
        raise OptionError(f"unknown uprobe attach mode {mode!r} (default, legacy, perf or link)")
    if not binary:
        raise OptionError("a uprobe needs a binary path or name")
    if offset < 0 or ref_ctr_offset < 0:
        raise OptionError("uprobe offsets cannot be negative")
    if not 0 <= cookie < 1 << 64 or offset >= 1 << 64:
        raise OptionError(f"cookie {cookie!r} / offset {offset!r} must fit in an unsigned 64-bit integer")
    archive, sep, member = binary.partition("!/")
    # libbpf's "archive.zip!/path/in/archive": probe the stored member inside the zip (without
    # a function, ``offset`` is an offset in the archive file, as in libbpf)
    if sep:
        if not member:
            raise OptionError(f"{binary!r} names no member after '!/'")
        path = _resolve(archive, pid, label)
    else:
        path = _resolve(binary, pid, label)
    file_off = offset
    if func is not None:
        if not func:
            raise OptionError("empty function name (pass None to probe a file offset)")
        if sep:
            name, delta = parse_func_offset(func)
            try:
                file_off += find_func_offset_in_archive(path, member, name) + delta
            except SymbolError as e:
                raise AttachError(str(e), program=label, cause=e) from e
        else:
            file_off += _func_offset(path, func, label)
    what = f"{'uretprobe' if retprobe else 'uprobe'} {path}:0x{file_off:x}" + (f" ({func})" if func else "")
    ptype = pmu_type(pmu_dir)
    legacy = ptype is None
    force_ioctl = False
    if mode == "legacy":
        legacy = force_ioctl = True
    elif mode == "perf":
        if legacy:
            raise AttachError(f"no uprobe PMU ({pmu_dir}/uprobe) for mode 'perf'", program=label)
        force_ioctl = True
    elif mode == "link" and (legacy or not has_perf_link()):
        raise AttachError("mode 'link' needs the uprobe PMU and bpf perf links", program=label)
    ppid, cpu = _perf_pid_cpu(pid)
    if not legacy:
        assert ptype is not None
        pa = uprobe_perf_attr(path, file_off, retprobe=retprobe, ref_ctr_offset=ref_ctr_offset,
                              pmu_type=ptype, retprobe_bit=pmu_retprobe_bit(pmu_dir))
        try:
            pe = _perf.perf_event_open(pa.attr, pid=ppid, cpu=cpu, group_fd=-1,
                                       flags=PERF_FLAG_FD_CLOEXEC)
        except SyscallError as e:
            raise AttachError(f"failed to create {what} perf event: {e}{_errno_hint(e, path)}",
                              program=label, cause=e) from e
        link = attach_perf_event(prog, pe, cookie=cookie, force_ioctl=force_ioctl,
                                 link_class=UprobeLink, target=what)
        assert isinstance(link, UprobeLink)
    else:
        link = _attach_legacy(prog, path, file_off, retprobe=retprobe, pid=ppid, cpu=cpu,
                              ref_ctr_offset=ref_ctr_offset, cookie=cookie,
                              force_ioctl=force_ioctl, what=what, tracefs=tracefs)
    link.path, link.offset, link.pid, link.retprobe = path, file_off, pid, retprobe
    return link


def _attach_legacy(prog: Any, path: str, offset: int, *, retprobe: bool, pid: int, cpu: int,
                   ref_ctr_offset: int, cookie: int, force_ioctl: bool, what: str,
                   tracefs: str | None) -> UprobeLink:
    label = prog_label(prog)
    group = "uretprobes" if retprobe else "uprobes"
    event = legacy_uprobe_event_name(path, offset)
    if " " in path or "\n" in path:
        raise AttachError(f"a legacy uprobe cannot name a path with white space: {path!r}",
                          program=label)
    try:
        if tracefs is not None:
            _perf.tracefs_path(tracefs)  # checked; the events files are under the one mounted
        _perf.add_uprobe_event(path, offset, retprobe=retprobe, name=event, group=group,
                               ref_ctr_offset=ref_ctr_offset)
    except (SyscallError, TracefsError) as e:
        hint = _errno_hint(e, path) if isinstance(e, SyscallError) else ""
        raise AttachError(f"failed to add legacy {what} to tracefs uprobe_events: {e}{hint}",
                          program=label, cause=e) from e

    def remove() -> None:
        _perf.remove_probe_event("uprobe", group, event)

    try:
        tp = _perf.tracepoint_id(group, event, tracefs=tracefs)
        attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, config=tp)
        try:
            pe = _perf.perf_event_open(attr, pid=pid, cpu=cpu, group_fd=-1,
                                       flags=PERF_FLAG_FD_CLOEXEC)
        except SyscallError as e:
            raise AttachError(f"failed to open legacy {what} event {group}/{event}: {e}"
                              f"{_errno_hint(e, path)}", program=label, cause=e) from e
        link = attach_perf_event(prog, pe, cookie=cookie, force_ioctl=force_ioctl,
                                 link_class=UprobeLink, target=what)
    except BaseException:
        try:
            remove()
        except PyebpfError as e:
            _log.debug("could not remove legacy uprobe %s: %s", event, e)
        raise
    assert isinstance(link, UprobeLink)
    link._cleanup = remove
    link.legacy_event = f"{group}/{event}"
    return link


# --- uprobe_multi -----------------------------------------------------------------------------


def _section_of(prog: Any) -> str:
    spec = getattr(prog, "spec", None)
    return getattr(spec, "section", "") or ""


def _u64s(name: str, vals: Sequence[int] | None, count: int) -> list[int] | None:
    if vals is None:
        return None
    out = list(vals)
    if len(out) != count:
        raise OptionError(f"{name} has {len(out)} entries for {count} probes")
    for v in out:
        if not isinstance(v, int) or not 0 <= v < 1 << 64:
            raise OptionError(f"{name}: {v!r} is not an unsigned 64-bit integer")
    return out


def attach_uprobe_multi(prog: ProgramLike, binary: str, pattern: str | None = None, *,
                        funcs: Sequence[str] | None = None, offsets: Sequence[int] | None = None,
                        ref_ctr_offsets: Sequence[int] | None = None,
                        cookies: Sequence[int] | Mapping[str, int] | None = None,
                        pid: int | None = None, retprobe: bool | None = None,
                        session: bool | None = None) -> UprobeMultiLink:
    """Attach one uprobe_multi link to many places of ``binary``: every function matching glob
    ``pattern``, or the functions ``funcs``, or the file ``offsets`` (exactly one of the three).

    ``cookies``/``ref_ctr_offsets`` go one per function/offset; with a pattern, ``cookies`` may
    be a mapping from function name to cookie (a pyebpf extension; libbpf allows none).
    ``retprobe``/``session`` default from the section (``uretprobe.multi``, ``uprobe.session``).
    ``pid`` None: every process (0: this one).
    """
    label = _check_prog(prog, "uprobe_multi")
    given = [x for x in (pattern, funcs, offsets) if x is not None]
    if len(given) != 1:
        raise OptionError("uprobe_multi needs exactly one of a pattern, funcs= or offsets=")
    if not binary:
        raise OptionError("uprobe_multi needs a binary path or name")
    section = _section_of(prog)
    eat = getattr(prog, "expected_attach_type", None)
    if session is None:
        session = section.startswith("uprobe.session") or eat == AttachType.TRACE_UPROBE_SESSION
    if retprobe is None:
        retprobe = section.startswith("uretprobe.multi")
    if session and retprobe:
        raise OptionError("a uprobe session program cannot also be a return probe")
    want = AttachType.TRACE_UPROBE_SESSION if session else AttachType.TRACE_UPROBE_MULTI
    if hasattr(prog, "expected_attach_type") and eat != want:
        # the kernel only says EINVAL; the load-time attach type is the usual cause
        raise AttachError(
            f"uprobe_multi needs a program loaded with expected attach type {want.name} (from a "
            f"SEC(\"{'uprobe.session' if session else 'uprobe.multi'}/...\") section), this one "
            f"was loaded with {getattr(eat, 'name', eat)} (section {section!r})", program=label)
    path = _resolve(binary, pid, label)
    names: list[str] = []
    try:
        if pattern is not None:
            if ref_ctr_offsets is not None:
                raise OptionError("ref_ctr_offsets cannot go with a pattern (pass offsets=)")
            if cookies is not None and not isinstance(cookies, Mapping):
                raise OptionError("with a pattern, cookies must map function names to cookies "
                                  "(the match order is not yours to know)")
            matches = resolve_pattern_offsets(path, pattern)
            if not matches:
                raise AttachError(f"no function in {path} matches pattern {pattern!r}",
                                  program=label)
            names = [m.name for m in matches]
            offs = [m.offset for m in matches]
            if isinstance(cookies, Mapping):
                unknown = set(cookies) - {m.name for m in matches} - {m.base for m in matches}
                if unknown:
                    raise OptionError(f"cookies name functions the pattern did not match: "
                                      f"{', '.join(sorted(unknown))}")
                cookies = [cookies.get(m.name, cookies.get(m.base, 0)) for m in matches]
        elif funcs is not None:
            names = list(funcs)
            if not names:
                raise OptionError("funcs= is empty")
            parts = [parse_func_offset(f) for f in names]
            offs = [o + d for o, (_, d) in zip(resolve_func_offsets(path, [n for n, _ in parts]),
                                                parts, strict=True)]
        else:
            assert offsets is not None
            offs = list(offsets)
            if not offs:
                raise OptionError("offsets= is empty")
    except SymbolError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if isinstance(cookies, Mapping):
        raise OptionError("cookies as a mapping need a pattern")
    n = len(offs)
    offs = _u64s("offsets", offs, n) or []
    refs = _u64s("ref_ctr_offsets", ref_ctr_offsets, n)
    cks = _u64s("cookies", cookies, n)
    flags = BPF_F_UPROBE_MULTI_RETURN if retprobe else 0
    # libbpf: 0 is this process, None/-1 every process (the kernel's 0)
    kpid = os.getpid() if pid == 0 else pid if pid is not None and pid > 0 else 0
    what = f"{'uretprobe' if retprobe else 'uprobe'}.multi {path} ({n} probe{'s' * (n != 1)})"
    try:
        fd = _bpf.link_create(prog_fd(prog), None, want, uprobe_multi={
            "path": path, "offsets": offs, "ref_ctr_offsets": refs, "cookies": cks,
            "flags": flags, "pid": kpid})
    except SyscallError as e:
        raise AttachError(f"failed to attach {what}: {e}{_multi_hint(e, path)}",
                          program=label, cause=e) from e
    link = UprobeMultiLink(fd, prog, target=what)
    link.path, link.offsets, link.funcs = path, tuple(offs), tuple(names)
    link.pid, link.retprobe = pid, bool(retprobe)
    return link


def _multi_hint(e: SyscallError, path: str) -> str:
    if e.errno in (_errno.EOPNOTSUPP, 524):
        return " (this kernel has no uprobe_multi links: use attach_uprobe once per function)"
    if e.errno == _errno.EINVAL:
        return (" (a bad offset, or the program was not loaded for uprobe_multi: it needs a "
                "SEC(\"uprobe.multi\") section)")
    if e.errno == _errno.ESRCH:
        return " (no such process)"
    return _errno_hint(e, path)


# --- auto-attach from SEC() names -------------------------------------------------------------


def auto_attach_uprobe(prog: Any, section: str, target: str | None = None) -> UprobeLink:
    """Attach from ``uprobe/PATH:FUNC[+OFF]``, ``uretprobe/...``, ``uprobe.s/...``,
    ``uretprobe.s/...`` or ``.../PATH:0xOFFSET`` (libbpf's attach_uprobe parsing).

    Raises AttachSkipped for a bare section, AttachError for a malformed one.
    """
    label = prog_label(prog)
    if "/" not in section and target:
        section = f"{section}/{target}"
    try:
        t = parse_uprobe_section(section)
    except OptionError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if t is None:
        raise AttachSkipped(f"SEC({section!r}) names no binary:function to attach to "
                            "(use SEC(\"uprobe/PATH:FUNC\") or attach_uprobe())", program=label)
    return attach_uprobe(prog, t.path, t.func, offset=t.offset, retprobe=t.retprobe)


def auto_attach_uprobe_multi(prog: Any, section: str, target: str | None = None) -> UprobeMultiLink:
    """Attach from ``uprobe.multi/PATH:PATTERN`` (also ``uretprobe.multi``, ``uprobe.session``,
    their ``.s`` forms) as libbpf's attach_uprobe_multi. AttachSkipped for a bare section."""
    label = prog_label(prog)
    if "/" not in section and target:
        section = f"{section}/{target}"
    try:
        parsed = parse_uprobe_multi_section(section)
    except OptionError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if parsed is None:
        raise AttachSkipped(f"SEC({section!r}) names no binary:pattern to attach to "
                            "(use SEC(\"uprobe.multi/PATH:PATTERN\") or attach_uprobe_multi())",
                            program=label)
    path, pattern, retprobe, session = parsed
    return attach_uprobe_multi(prog, path, pattern, retprobe=retprobe, session=session)
