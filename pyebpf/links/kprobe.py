"""kprobe / kretprobe / ksyscall attach, as libbpf's bpf_program__attach_kprobe_opts does it.

First choice is the kprobe PMU: perf_event_open(type from /sys/bus/event_source/devices/kprobe/type,
config1 = pointer to the function name, config2 = offset, config bit from format/retprobe for
return probes). Without the PMU, a legacy probe is written to tracefs kprobe_events and opened as
a tracepoint. The program then goes on the perf event like any other (see perf_event.py).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import itertools
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

from .._log import get_logger
from .._record import Record
from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import perf as _perf
from ..sys.perf import PERF_FLAG_FD_CLOEXEC, PERF_TYPE_TRACEPOINT, PerfEventAttr, TracefsError
from ..uapi import BPF_F_KPROBE_MULTI_RETURN, AttachType, ProgType
from .base import AttachError, AttachSkipped, Link, ProgramLike, prog_fd, prog_label
from .perf_event import PerfEventLink, attach_perf_event, has_perf_link
from .tracing import tracefs_root, tracepoint_id

__all__ = [
    "KprobeLink",
    "KprobeMultiLink",
    "KprobeUnavailable",
    "attach_kprobe",
    "attach_kprobe_multi",
    "attach_ksyscall",
    "auto_attach_kprobe_multi",
    "kallsyms_matching",
    "kprobe_perf_attr",
    "legacy_kprobe_add_command",
    "legacy_kprobe_event_name",
    "legacy_kprobe_remove_command",
    "parse_kallsyms",
    "parse_kprobe_multi_section",
    "parse_kprobe_target",
    "syscall_function",
]

_log = get_logger("pyebpf.links")

PMU_DIR = "/sys/bus/event_source/devices"
MAX_EVENT_NAME_LEN = 64  # the kernel's limit on trace event names

# libbpf's arch_specific_syscall_pfx(): syscall wrappers are named __<pfx>_sys_<name>
_SYSCALL_PFX = {
    "x86_64": "x64", "amd64": "x64", "i386": "ia32", "i686": "ia32", "s390x": "s390x",
    "s390": "s390", "armv7l": "arm", "arm": "arm", "aarch64": "arm64", "arm64": "arm64",
    "mips": "mips", "mips64": "mips", "riscv64": "riscv", "ppc": "powerpc", "ppc64": "powerpc64",
    "ppc64le": "powerpc64", "loongarch64": "loongarch",
}


class KprobeUnavailable(AttachError):
    """This kernel offers neither a kprobe PMU nor tracefs kprobe_events."""


class KprobeLink(PerfEventLink):
    """A kprobe/kretprobe attachment (PMU or legacy tracefs event, removed on close)."""

    kind = "kprobe"


# --- pure pieces (unit-tested without a kernel) -----------------------------------------------

_TARGET = re.compile(r"^([a-zA-Z0-9_.]+)(?:\+(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*))?")


def parse_kprobe_target(text: str) -> tuple[str, int]:
    """``"func"`` or ``"func+off"`` (offset in C notation, as libbpf's ``%li``) -> (func, offset)."""
    m = _TARGET.match(text)
    if not m:
        raise OptionError(f"kprobe name is invalid: {text!r}")
    off = m.group(2)
    if not off:
        return m.group(1), 0
    if off[:2].lower() == "0x":
        return m.group(1), int(off, 16)
    return m.group(1), int(off, 8) if off.startswith("0") else int(off)


class ProbeAttr(Record):
    """A perf_event_attr for the kprobe PMU plus the name buffer config1 points at."""

    attr: PerfEventAttr
    name: ctypes.Array[ctypes.c_char]

    def __init__(self, attr: PerfEventAttr, name: ctypes.Array[ctypes.c_char]) -> None:
        self.attr = attr
        self.name = name

    def bytes(self) -> bytes:
        return ctypes.string_at(ctypes.addressof(self.attr), ctypes.sizeof(self.attr))


def kprobe_perf_attr(func: str, offset: int = 0, *, retprobe: bool = False, pmu_type: int,
                     retprobe_bit: int | None) -> ProbeAttr:
    """The attr libbpf's perf_event_open_probe() builds for a kprobe on ``func+offset``."""
    name = ctypes.create_string_buffer(func.encode())
    attr = PerfEventAttr(type=pmu_type)
    if retprobe:
        if retprobe_bit is None:
            raise KprobeUnavailable("the kprobe PMU has no retprobe format bit "
                                    f"({PMU_DIR}/kprobe/format/retprobe); kretprobes are unavailable")
        attr.config |= 1 << retprobe_bit
    attr.config1 = ctypes.addressof(name)
    attr.config2 = offset
    return ProbeAttr(attr, name)


_legacy_index = itertools.count()
_index_lock = threading.Lock()


def legacy_kprobe_event_name(func: str, offset: int = 0, *, pid: int | None = None,
                             index: int | None = None) -> str:
    """A tracefs-safe, unique legacy event name: pyebpf_<pid>_<n>_<func>_0x<off>.

    libbpf's gen_probe_legacy_event_name() layout (counter before the function, so names
    stay unique when cut to the kernel's 64-character event name limit).
    """
    if index is None:
        with _index_lock:
            index = next(_legacy_index)
    raw = f"pyebpf_{os.getpid() if pid is None else pid}_{index}_{func}_0x{offset:x}"
    return "".join(c if c.isalnum() else "_" for c in raw)[:MAX_EVENT_NAME_LEN - 1]


def _group(retprobe: bool) -> str:
    return "kretprobes" if retprobe else "kprobes"


def legacy_kprobe_add_command(event: str, func: str, offset: int = 0, *, retprobe: bool = False) -> str:
    """The kprobe_events line that creates the probe: ``p:kprobes/<event> <func>+0x<off>``."""
    return f"{'r' if retprobe else 'p'}:{_group(retprobe)}/{event} {func}+0x{offset:x}"


def legacy_kprobe_remove_command(event: str, *, retprobe: bool = False) -> str:
    """The kprobe_events line that removes it: ``-:kprobes/<event>``."""
    return f"-:{_group(retprobe)}/{event}"


def syscall_prefix(machine: str | None = None) -> str | None:
    """The arch part of syscall wrapper names (``"x64"`` on x86_64), None if unknown."""
    return _SYSCALL_PFX.get((machine or os.uname().machine).lower())


def syscall_function(name: str, *, wrapper: bool, machine: str | None = None) -> str:
    """The kernel function libbpf's attach_ksyscall probes: ``__x64_sys_<name>``, else ``__se_sys_<name>``."""
    pfx = syscall_prefix(machine)
    if wrapper and pfx:
        # powerpc wrappers keep the plain name (libbpf special-cases it too)
        return f"sys_{name}" if pfx.startswith("powerpc") else f"__{pfx}_sys_{name}"
    return f"__se_sys_{name}"


# --- kernel side ------------------------------------------------------------------------------


def kprobe_pmu_type(pmu_dir: str = PMU_DIR) -> int | None:
    """The dynamic PMU type of the kprobe PMU, None when the kernel has none."""
    try:
        with open(os.path.join(pmu_dir, "kprobe", "type")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def kprobe_retprobe_bit(pmu_dir: str = PMU_DIR) -> int | None:
    try:
        with open(os.path.join(pmu_dir, "kprobe", "format", "retprobe")) as f:
            text = f.read().strip()
    except OSError:
        return None
    m = re.fullmatch(r"config:(\d+)", text)
    return int(m.group(1)) if m else None


def _events_file(tracefs: str | None) -> tuple[str | None, str]:
    """(path of kprobe_events or None, why not)."""
    try:
        base = tracefs_root(tracefs)
    except TracefsError as e:
        return None, str(e)
    path = os.path.join(base, "kprobe_events")
    if not os.path.exists(path):
        return None, f"{path} does not exist"
    return path, ""


def _unavailable(func: str, why_legacy: str, pmu_dir: str, program: str | None) -> KprobeUnavailable:
    return KprobeUnavailable(
        f"kprobes are unavailable on this kernel, cannot probe {func!r}: there is no kprobe PMU "
        f"({pmu_dir}/kprobe) and no legacy tracefs kprobe_events ({why_legacy}); the kernel was "
        "most likely built without CONFIG_KPROBES (or CONFIG_KPROBE_EVENTS); use a tracepoint, "
        "raw_tp or tp_btf program instead",
        program=program,
    )


def _write_kprobe_events(path: str, line: str) -> None:
    _log.debug("tracefs kprobe_events <- %r", line)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise SyscallError(e.errno or _errno.EIO, f"open {path}", "cannot open kprobe_events") from None
    try:
        os.write(fd, line.encode() + b"\n")
    except OSError as e:
        raise SyscallError(e.errno or _errno.EIO, "write kprobe_events",
                           f"the kernel refused {line!r} (no such function, or not probeable)") from None
    finally:
        os.close(fd)


def has_syscall_wrapper(*, pmu_dir: str = PMU_DIR, tracefs: str | None = None) -> bool:
    """libbpf's FEAT_SYSCALL_WRAPPER: does ``__<arch>_sys_bpf`` exist?

    libbpf probes it with a kprobe; when kprobes are unavailable /proc/kallsyms answers.
    """
    pfx = syscall_prefix()
    if not pfx:
        return False
    sym = syscall_function("bpf", wrapper=True)
    ptype = kprobe_pmu_type(pmu_dir)
    if ptype is not None:
        pa = kprobe_perf_attr(sym, 0, pmu_type=ptype, retprobe_bit=None)
        try:
            _perf.perf_event_open(pa.attr, pid=os.getpid(), cpu=-1).close()
            return True
        except SyscallError:
            return False
    path, _ = _events_file(tracefs)
    if path is not None:
        ev = legacy_kprobe_event_name(sym, 0)
        try:
            _write_kprobe_events(path, legacy_kprobe_add_command(ev, sym, 0))
        except SyscallError:
            return False
        try:
            _write_kprobe_events(path, legacy_kprobe_remove_command(ev))
        except SyscallError:
            pass
        return True
    needle = f" {sym}\n".encode()
    try:
        with open("/proc/kallsyms", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def attach_kprobe(prog: ProgramLike, func: str, offset: int = 0, retprobe: bool = False, *,
                  cookie: int = 0, mode: str = "default", pmu_dir: str = PMU_DIR,
                  tracefs: str | None = None) -> KprobeLink:
    """Attach a kprobe (or kretprobe) program to kernel function ``func`` at ``offset``.

    ``mode``: "default" (PMU if present, else legacy tracefs), "perf" (PMU, ioctl attach),
    "link" (PMU + bpf perf link), "legacy" (tracefs kprobe_events + ioctl), as libbpf's
    PROBE_ATTACH_MODE_*. Raises KprobeUnavailable when the kernel has no kprobes at all.
    """
    label = prog_label(prog)
    if not func:
        raise OptionError("kprobe needs a function name")
    if retprobe and offset:
        raise OptionError("kretprobes do not support an offset")
    if mode not in ("default", "legacy", "perf", "link"):
        raise OptionError(f"unknown kprobe attach mode {mode!r}")
    ptype = kprobe_pmu_type(pmu_dir)
    legacy = ptype is None
    force_ioctl = False
    if mode == "legacy":
        legacy = force_ioctl = True
    elif mode == "perf":
        if legacy:
            raise KprobeUnavailable(f"no kprobe PMU ({pmu_dir}/kprobe) for mode 'perf'", program=label)
        force_ioctl = True
    elif mode == "link" and (legacy or not has_perf_link()):
        raise KprobeUnavailable("mode 'link' needs the kprobe PMU and bpf perf links", program=label)
    what = f"{'kretprobe' if retprobe else 'kprobe'} {func}+0x{offset:x}"
    if not legacy:
        assert ptype is not None
        pa = kprobe_perf_attr(func, offset, retprobe=retprobe, pmu_type=ptype,
                              retprobe_bit=kprobe_retprobe_bit(pmu_dir))
        try:
            pe = _perf.perf_event_open(pa.attr, pid=-1, cpu=0, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC)
        except SyscallError as e:
            raise AttachError(f"failed to create {what} perf event: {e}", program=label, cause=e) from e
        return attach_perf_event(prog, pe, cookie=cookie, force_ioctl=force_ioctl,  # type: ignore[return-value]
                                 link_class=KprobeLink, target=what)
    path, why = _events_file(tracefs)
    if path is None:
        raise _unavailable(func, why, pmu_dir, label)
    event = legacy_kprobe_event_name(func, offset)
    try:
        _write_kprobe_events(path, legacy_kprobe_add_command(event, func, offset, retprobe=retprobe))
    except SyscallError as e:
        raise AttachError(f"failed to add legacy {what}: {e}", program=label, cause=e) from e

    def remove() -> None:
        _write_kprobe_events(path, legacy_kprobe_remove_command(event, retprobe=retprobe))

    try:
        tp = tracepoint_id(_group(retprobe), event, tracefs=tracefs)
        attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, config=tp)
        pe = _perf.perf_event_open(attr, pid=-1, cpu=0, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC)
        link = attach_perf_event(prog, pe, cookie=cookie, force_ioctl=force_ioctl,
                                 link_class=KprobeLink, target=what)
    except BaseException:
        try:
            remove()
        except SyscallError as e:
            _log.debug("could not remove legacy kprobe %s: %s", event, e)
        raise
    link._cleanup = remove
    return link  # type: ignore[return-value]


def attach_ksyscall(prog: ProgramLike, name: str, retprobe: bool = False, *, cookie: int = 0,
                    pmu_dir: str = PMU_DIR, tracefs: str | None = None) -> KprobeLink:
    """Attach to syscall ``name`` through its kernel wrapper (``__x64_sys_<name>`` etc.), as libbpf."""
    if not name:
        raise OptionError("ksyscall needs a syscall name")
    if pmu_dir == PMU_DIR and tracefs is None:
        from ..features import syscall_wrapper

        wrapper = syscall_wrapper()  # probed once per process
    else:
        wrapper = has_syscall_wrapper(pmu_dir=pmu_dir, tracefs=tracefs)
    func = syscall_function(name, wrapper=wrapper)
    if kprobe_pmu_type(pmu_dir) is None and _events_file(tracefs)[0] is None:
        # nothing could be attached anyway
        raise _unavailable(func, _events_file(tracefs)[1], pmu_dir, prog_label(prog))
    return attach_kprobe(prog, func, 0, retprobe, cookie=cookie, pmu_dir=pmu_dir, tracefs=tracefs)


# --- kprobe_multi / kprobe_session ------------------------------------------------------------


class KprobeMultiLink(Link):
    """Many kernel functions on one BPF link (BPF_TRACE_KPROBE_MULTI / BPF_TRACE_KPROBE_SESSION)."""

    kind = "kprobe_multi"
    syms: tuple[str, ...] = ()
    addrs: tuple[int, ...] = ()
    retprobe: bool = False
    session: bool = False


KALLSYMS = "/proc/kallsyms"
_NOT_FUNCTIONS = frozenset({"_text", "_stext", "_etext", "_sinittext", "_einittext"})
_MULTI_PATTERN = re.compile(r"[a-zA-Z0-9_.*?]+")


def parse_kallsyms(text: str) -> list[tuple[int, str, str, str | None]]:
    """(address, type letter, name, module or None) of each line of a /proc/kallsyms text."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        mod = parts[3].strip("[]") if len(parts) > 3 else None
        out.append((addr, parts[1], parts[2], mod))
    return out


def kallsyms_matching(pattern: str, text: str) -> list[str]:
    """Names of kernel text symbols in a kallsyms ``text`` matching glob ``pattern``, each once.

    What libbpf does when available_filter_functions cannot be read (here it is EPERM under
    lockdown), minus what can never be probed: text symbols (``t``/``T``) only, without the
    ``__pfx_`` padding symbols, the ``.cold`` split-off parts and the section markers.
    Without available_filter_functions a matched name may still be untraceable (notrace); the
    kernel then refuses the whole link with ESRCH.
    """
    # one regex over the whole text: ~10x faster than splitting 100k+ lines
    body = "".join(r"\S*" if c == "*" else r"\S" if c == "?" else re.escape(c) for c in pattern)
    rx = re.compile(r"^[0-9a-fA-F]+ [tT] (" + body + r")(?:[ \t]|$)", re.MULTILINE)
    seen: set[str] = set()
    out: list[str] = []
    for m in rx.finditer(text):
        name = m.group(1)
        if name in seen or name.startswith("__pfx_") or ".cold" in name or name in _NOT_FUNCTIONS:
            continue
        seen.add(name)
        out.append(name)
    return out


def parse_kprobe_multi_section(section: str) -> tuple[str, bool, bool] | None:
    """``kprobe.multi/PATTERN``, ``kretprobe.multi/PATTERN``, ``kprobe.session/PATTERN`` ->
    (pattern, retprobe, session); None for a bare section; OptionError if the pattern is bad."""
    for prefix, retprobe, session in (("kprobe.multi", False, False),
                                      ("kretprobe.multi", True, False),
                                      ("kprobe.session", False, True)):
        if section == prefix:
            return None
        if section.startswith(prefix + "/"):
            spec = section[len(prefix) + 1 :]
            # libbpf: sscanf(spec, "%m[a-zA-Z0-9_.*?]") takes the longest valid prefix
            m = _MULTI_PATTERN.match(spec)
            if not m:
                raise OptionError(f"kprobe multi pattern is invalid: {spec!r} (letters, digits, "
                                  "'_', '.', '*' and '?' only)")
            return m.group(0), retprobe, session
    raise OptionError(f"{section!r} is not a kprobe.multi, kretprobe.multi or kprobe.session section")


def attach_kprobe_multi(prog: ProgramLike, pattern: str | None = None, *, syms: Sequence[str] | None = None,
                        addrs: Sequence[int] | None = None, cookies: Sequence[int] | None = None,
                        retprobe: bool | None = None, session: bool = False) -> Link:
    """Attach one kprobe_multi link to many kernel functions: those matching glob ``pattern``
    (resolved from /proc/kallsyms), or ``syms``, or ``addrs``, with optional ``cookies``.

    ``retprobe`` defaults from the section (``kretprobe.multi``); ``session`` attaches a
    kprobe.session program. Needs a kernel with fprobe (CONFIG_FPROBE).
    """
    label = prog_label(prog)
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.KPROBE:
        raise AttachError(f"kprobe_multi needs a program of type KPROBE (SEC(\"kprobe.multi/...\")), "
                          f"but this one is {getattr(ptype, 'name', ptype)}", program=label)
    if pattern is not None and (syms is not None or addrs is not None or cookies is not None):
        raise OptionError("kprobe_multi takes a pattern, or syms=/addrs= (with cookies=), not both")
    if pattern is None and syms is None and addrs is None:
        raise OptionError("kprobe_multi needs a pattern, syms= or addrs=")
    if syms is not None and addrs is not None:
        raise OptionError("kprobe_multi takes syms= or addrs=, not both")
    spec = getattr(prog, "spec", None)
    section = getattr(spec, "section", "") or ""
    if retprobe is None:
        retprobe = section.startswith("kretprobe.multi")
    if retprobe and session:
        raise OptionError("a kprobe session program cannot also be a return probe")
    if pattern is not None:
        if not pattern:
            raise OptionError("empty kprobe_multi pattern")
        try:
            with open(KALLSYMS) as f:
                names = kallsyms_matching(pattern, f.read())
        except OSError as e:
            raise AttachError(f"cannot read {KALLSYMS} to resolve pattern {pattern!r}: {e}",
                              program=label, cause=e) from e
        if not names:
            raise AttachError(f"no kernel function matches pattern {pattern!r} "
                              f"(looked in {KALLSYMS})", program=label)
        sym_list: list[str] = names
        addr_list: list[int] = []
    else:
        sym_list = list(syms or [])
        addr_list = [int(a) for a in addrs or []]
        if not sym_list and not addr_list:
            raise OptionError("kprobe_multi needs at least one symbol or address")
    cnt = len(sym_list) or len(addr_list)
    cookie_list = list(cookies) if cookies is not None else []
    if cookies is not None and len(cookie_list) != cnt:
        raise OptionError(f"cookies has {len(cookie_list)} entries for {cnt} functions")
    for what_, vals in (("cookies", cookie_list), ("addrs", addr_list)):
        if any(not isinstance(v, int) or not 0 <= v < 1 << 64 for v in vals):
            raise OptionError(f"kprobe_multi {what_} must be unsigned 64-bit integers")
    attach_type = AttachType.TRACE_KPROBE_SESSION if session else AttachType.TRACE_KPROBE_MULTI
    flags = BPF_F_KPROBE_MULTI_RETURN if retprobe else 0
    what = (f"{'kprobe.session' if session else 'kretprobe.multi' if retprobe else 'kprobe.multi'} "
            f"on {cnt} function{'s' * (cnt != 1)}"
            + (f" ({pattern})" if pattern else f" ({', '.join(sym_list[:3])}{', ...' * (cnt > 3)})"
               if sym_list else ""))
    try:
        fd = _bpf.link_create(prog_fd(prog), None, attach_type, kprobe_multi={
            "flags": flags, "syms": sym_list, "addrs": addr_list, "cookies": cookie_list})
    except SyscallError as e:
        if e.errno in (_errno.EOPNOTSUPP, 524):
            msg = (f"cannot attach {what}: this kernel cannot do kprobe_multi (BPF_LINK_CREATE "
                   f"gave {e.errname}): it was built without fprobe (CONFIG_FPROBE). Use a "
                   "kprobe per function (attach_kprobe) where kprobes exist, fentry/fexit "
                   "programs, or a tracepoint / raw_tp / tp_btf program instead")
        else:
            msg = f"failed to attach {what}: {e}{_multi_hint(e)}"
        raise AttachError(msg, program=label, cause=e) from e
    link = KprobeMultiLink(fd, prog, target=what)
    link.syms, link.addrs = tuple(sym_list), tuple(addr_list)
    link.retprobe, link.session = bool(retprobe), session
    return link


def _multi_hint(e: SyscallError) -> str:
    if e.errno == _errno.ESRCH:
        return " (a function or address is not in the kernel, or cannot be probed)"
    if e.errno == _errno.EINVAL:
        return (" (a bad symbol or address, or the program was not loaded for kprobe_multi: "
                "it needs a SEC(\"kprobe.multi\") or SEC(\"kprobe.session\") section)")
    if e.errno in (_errno.EPERM, _errno.EACCES):
        return " (no permission: needs root, or CAP_PERFMON and CAP_BPF)"
    return ""


def auto_attach_kprobe_multi(prog: Any, section: str, target: str | None = None) -> Link:
    """Attach from ``kprobe.multi/PATTERN``, ``kretprobe.multi/PATTERN`` or ``kprobe.session/PATTERN``
    as libbpf's attach_kprobe_multi/attach_kprobe_session. AttachSkipped for a bare section."""
    label = prog_label(prog)
    if "/" not in section and target:
        section = f"{section}/{target}"
    try:
        parsed = parse_kprobe_multi_section(section)
    except OptionError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if parsed is None:
        raise AttachSkipped(f"SEC({section!r}) names no function pattern to attach to "
                            "(use SEC(\"kprobe.multi/PATTERN\") or attach_kprobe_multi())",
                            program=label)
    pattern, retprobe, session = parsed
    return attach_kprobe_multi(prog, pattern, retprobe=retprobe, session=session)
