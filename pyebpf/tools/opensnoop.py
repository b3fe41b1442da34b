"""opensnoop: trace open(2), openat(2) and openat2(2) system-wide, like bcc's opensnoop.

Usage: python -m pyebpf.tools.opensnoop [-h] [-T] [-U] [-x] [-p PID] [-t TID]
           [--cgroupmap PATH] [--mntnsmap PATH] [-u UID] [-d DURATION] [-n NAME]
           [-e] [-f FLAG] [-F] [-b BUFFER_PAGES]

The options, columns and units are bcc's (tools/opensnoop.py). The CO-RE object
ships inside the package (opensnoop.bpf.o, built from
fixtures/src/tools/opensnoop.bpf.c); no compiler or kernel headers are needed.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

# struct event in fixtures/src/tools/opensnoop.bpf.c, up to its variable part ``buf``:
# u64 ts_ns; u32 pid, tid, uid; int ret, flags; u32 mode; u16 path_depth;
# u8 path_status, pad; u32 len; char comm[16]. A test checks it against the BTF.
HEADER = struct.Struct("<QIIIiiIHBBI16s")
PATH_OK, PATH_TRUNCATED, PATH_FAILED = 0, 1, 2

# the syscalls traced, each by its sys_enter_/sys_exit_ tracepoints
SYSCALLS = ("open", "openat", "openat2")
INVALID_UID = 0xFFFFFFFF  # (uid_t)-1: the "no uid filter" value; 0 is root
DEFAULT_PAGES = 64  # bcc's default ring buffer size

EXAMPLES = """examples:
    opensnoop                        # trace all open() syscalls
    opensnoop -T                     # include timestamps
    opensnoop -U                     # include UID
    opensnoop -x                     # only show failed opens
    opensnoop -p 181                 # only trace PID 181
    opensnoop -t 123                 # only trace TID 123
    opensnoop -u 1000                # only trace UID 1000 (-u 0: root)
    opensnoop -d 10                  # trace for 10 seconds only
    opensnoop -n main                # only print process names containing "main"
    opensnoop -e                     # show extended fields
    opensnoop -f O_WRONLY -f O_RDWR  # only print calls for writing
    opensnoop -F                     # show full path for an open file with relative path
    opensnoop --cgroupmap mappath    # only trace cgroups in this BPF map
    opensnoop --mntnsmap mappath     # only trace mount namespaces in the map
"""


def object_path() -> str:
    """Path of the shipped opensnoop CO-RE object."""
    # __file__, not importlib.resources: that import alone costs ~10 ms of start-up,
    # and the wheel installs as plain files.
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "opensnoop.bpf.o")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    # argparse's default formatter imports shutil (with bz2 and lzma, ~4 ms of start-up)
    # just to read the terminal width; os answers the same question.
    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(1).columns
        except (ValueError, OSError):
            width = 80
        super().__init__(prog, width=max(width - 2, 11))


def _positive(what: str) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what}: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"invalid {what}: {text!r} (must be > 0)")
        return v
    return conv


def _uid(text: str) -> int:
    """A numeric uid (0 is root) or a user name."""
    try:
        v = int(text, 10)
    except ValueError:
        import pwd

        try:
            return pwd.getpwnam(text).pw_uid
        except KeyError:
            raise argparse.ArgumentTypeError(f"invalid UID: no user {text!r}") from None
    if not 0 <= v < INVALID_UID:
        raise argparse.ArgumentTypeError(f"invalid UID: {text!r} (0 to {INVALID_UID - 1})")
    return v


def _duration(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"invalid duration: {text!r} (seconds, > 0)")
    return v


def _pages(text: str) -> int:
    v = _positive("number of pages")(text)
    if v & (v - 1):
        raise argparse.ArgumentTypeError(
            f"invalid buffer size: {v} pages (must be a power of two, e.g. 64)")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opensnoop", description="Trace open() syscalls",
                                formatter_class=_Formatter, epilog=EXAMPLES)
    p.add_argument("-T", "--timestamp", action="store_true", help="include timestamp on output")
    p.add_argument("-U", "--print-uid", action="store_true", help="print UID column")
    p.add_argument("-x", "--failed", action="store_true", help="only show failed opens")
    p.add_argument("-p", "--pid", type=_positive("PID"), help="trace this PID only")
    p.add_argument("-t", "--tid", type=_positive("TID"), help="trace this TID only")
    p.add_argument("--cgroupmap", metavar="CGROUPMAP",
                   help="trace cgroups in this BPF map only (a pinned hash map: "
                        "u64 cgroup id -> u64)")
    p.add_argument("--mntnsmap", metavar="MNTNSMAP",
                   help="trace mount namespaces in this BPF map only (a pinned hash map: "
                        "u64 mount namespace inode -> u32)")
    p.add_argument("-u", "--uid", type=_uid, help="trace this UID only (0 is root; a user name works too)")
    p.add_argument("-d", "--duration", type=_duration,
                   help="total duration of trace in seconds")
    p.add_argument("-n", "--name", help="only print process names containing this name")
    p.add_argument("-e", "--extended_fields", "--extended-fields", action="store_true",
                   dest="extended_fields", help="show extended fields")
    p.add_argument("-f", "--flag_filter", "--flag-filter", action="append", metavar="FLAG_FILTER",
                   dest="flag_filter", help="filter on flags argument (e.g., O_WRONLY)")
    p.add_argument("-F", "--full-path", action="store_true",
                   help="show full path for an open file with relative path")
    p.add_argument("-b", "--buffer-pages", type=_pages, default=DEFAULT_PAGES,
                   help="size of the ring buffer (must be a power of two number of pages "
                        "and defaults to 64)")
    return p


def flag_filter(names: list[str]) -> tuple[int, bool]:
    """The flag mask for ``-f`` names, and whether O_RDONLY was asked for.

    As in bcc, an open matches when its flags share a bit with the mask. O_RDONLY
    is 0, so bcc's test could never match it; here it matches opens whose access
    mode is read-only.
    """
    mask, rdonly = 0, False
    for name in names:
        value = getattr(os, name, None) if name.startswith("O_") else None
        if not isinstance(value, int):
            raise ValueError(f"Bad flag: {name} (an open flag such as O_WRONLY, O_CREAT)")
        if name == "O_RDONLY":
            rdonly = True
        mask |= value
    return mask, rdonly


def header(args: argparse.Namespace) -> str:
    """bcc's header line for these options."""
    h = ""
    if args.timestamp:
        h += f"{'TIME(s)':<14}"
    if args.print_uid:
        h += f"{'UID':<6}"
    h += f"{'TID' if args.tid else 'PID':<6} {'COMM':<16} {'FD':>4} {'ERR':>3} "
    if args.extended_fields:
        h += f"{'FLAGS':<8} {'MODE':<4} "
    return h + "PATH"


def full_path(fname: bytes, dirs: list[bytes], status: int) -> bytes:
    """The path a relative ``fname`` named: its directories (``dirs``, leaf first) joined.

    A walk that stopped early (too deep) gives the path without its leading '/', as
    libbpf-tools prints it; one that failed leaves the name as the process gave it.
    """
    if fname.startswith(b"/") or status == PATH_FAILED or not fname:
        return fname
    parts = [*reversed(dirs), fname]
    joined = b"/".join(parts)
    return joined if status == PATH_TRUNCATED else b"/" + joined


class Printer:
    """Formats events as bcc's opensnoop prints them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = args.name.encode() if args.name else b""
        self.initial_us = 0
        self.printed = 0

    def format(self, rec: bytes | memoryview) -> bytes | None:
        """One output line (with its newline) for a raw event, None if filtered out."""
        a = self.args
        (ts_ns, pid, tid, uid, ret, flags, mode, depth, status, _pad, length,
         comm) = HEADER.unpack_from(rec)
        ts_us = ts_ns // 1000  # bcc's events carry microseconds
        if not self.initial_us:
            self.initial_us = ts_us
        comm = comm.split(b"\0", 1)[0]
        if self.name and self.name not in comm:
            return None
        fd, err = (ret, 0) if ret >= 0 else (-1, -ret)
        line = b""
        if a.timestamp:
            line += b"%-14.9f" % ((ts_us - self.initial_us) / 1000000)
        if a.print_uid:
            line += b"%-6d" % uid
        line += b"%-6d %-16s %4d %3d " % (tid if a.tid else pid, comm, fd, err)
        if a.extended_fields:
            # without O_CREAT or O_TMPFILE the kernel ignores the mode (open(2))
            if mode == 0 and not flags & os.O_CREAT and \
                    (flags & os.O_TMPFILE) != os.O_TMPFILE:
                line += b"%08o n/a  " % flags
            else:
                line += b"%08o %04o " % (flags, mode)
        parts = bytes(rec[HEADER.size:HEADER.size + length]).split(b"\0")
        fname = parts[0]
        if a.full_path:
            fname = full_path(fname, parts[1:1 + depth], status)
        self.printed += 1
        return line + fname + b"\n"


def _syscalls() -> tuple[str, ...]:
    """The traced syscalls this kernel has tracepoints for (all of them when tracefs
    cannot tell: attaching then says what is wrong)."""
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        events = os.path.join(root, "events", "syscalls")
        if os.path.isdir(events):
            return tuple(sc for sc in SYSCALLS
                         if os.path.isdir(os.path.join(events, f"sys_enter_{sc}")))
    return SYSCALLS


@contextmanager
def _closing(links: list[Any]) -> Iterator[None]:
    """Detach ``links`` on exit, all at once: each tracepoint detach waits for an RCU grace
    period in the kernel, and in parallel threads those waits overlap."""
    try:
        yield
    finally:
        import threading

        errors: list[BaseException] = []

        def close(link: Any) -> None:
            try:
                link.close()
            except BaseException as e:  # re-raised below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=close, args=(link,)) for link in links]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def _pinned_set(obj: Any, slot_map: str, path: str, what: str) -> None:
    """Put the hash map pinned at ``path`` into slot 0 of ``slot_map``."""
    from pyebpf.errors import OptionError, PyebpfError
    from pyebpf.maps.map import Map

    try:
        pinned = Map.from_pin(path)
    except PyebpfError as e:
        raise OptionError(f"--{what} {path}: {e}") from e
    try:
        try:
            obj.maps[slot_map][0] = pinned
        except PyebpfError as e:
            inner = obj.maps[slot_map].spec.inner
            raise OptionError(
                f"--{what} {path}: the map there (type {pinned.type}, key {pinned.key_size} "
                f"bytes, value {pinned.value_size} bytes, flags {pinned.flags:#x}) cannot "
                f"be used: opensnoop needs a hash map with a {inner.key_size}-byte key and a "
                f"{inner.value_size}-byte value and no flags, as bcc makes ({e})") from e
    finally:
        pinned.close()


def run(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run opensnoop; returns the number of events printed."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        flags, rdonly = flag_filter(args.flag_filter or [])
    except ValueError as e:
        parser.error(str(e))
    from pyebpf.loader import load
    from pyebpf.maps.ringbuf import RingBuffer
    from pyebpf.obj.object import ObjectSpec

    spec = ObjectSpec.from_file(object_path())
    # open(2) is missing on arm64 and riscv, openat2(2) before 5.6: skip what the kernel lacks,
    # as libbpf-tools does
    syscalls = _syscalls()
    for sc in SYSCALLS:
        if sc not in syscalls:
            spec.programs[f"tracepoint__syscalls__sys_enter_{sc}"].autoload = False
    # one exit program for all three syscalls, in two variants: with the path walk (-F)
    # or without it (and without its CO-RE relocations: faster to load)
    exit_name = "handle_exit_full_path" if args.full_path else "handle_exit"
    spec.programs["handle_exit" if args.full_path else "handle_exit_full_path"].autoload = False
    # the container filters' maps exist only when asked for (the verifier drops their code)
    spec.maps["cgroup_filter"].autocreate = bool(args.cgroupmap)
    spec.maps["mntns_filter"].autocreate = bool(args.mntnsmap)
    spec.maps["events"].max_entries = args.buffer_pages * os.sysconf("SC_PAGE_SIZE")
    rodata = {
        "targ_tgid": args.pid or 0,
        "targ_pid": args.tid or 0,
        "targ_uid": INVALID_UID if args.uid is None else args.uid,
        "targ_failed": args.failed,
        "targ_flags": flags,
        "targ_rdonly": rdonly,
        "filter_cgroup": bool(args.cgroupmap),
        "filter_mntns": bool(args.mntnsmap),
    }
    deadline = time.monotonic() + args.duration if args.duration else None
    printer = Printer(args)
    bout = getattr(out, "buffer", None)

    def emit(data: bytes) -> None:
        if bout is not None:
            bout.write(data)
        else:
            out.write(data.decode(errors="replace"))

    with load(spec, globals=rodata) as obj:
        if args.cgroupmap:
            _pinned_set(obj, "cgroup_filter", args.cgroupmap, "cgroupmap")
        if args.mntnsmap:
            _pinned_set(obj, "mntns_filter", args.mntnsmap, "mntnsmap")
        links: list[Any] = []
        with RingBuffer(obj.maps["events"]) as rb, _closing(links):
            # one enter program per syscall; one exit program for all of them
            for sc in syscalls:
                enter = obj.programs[f"tracepoint__syscalls__sys_enter_{sc}"]
                links.append(enter.attach_tracepoint("syscalls", f"sys_enter_{sc}"))
                links.append(obj.programs[exit_name].attach_tracepoint("syscalls",
                                                                       f"sys_exit_{sc}"))
            emit(header(args).encode() + b"\n")
            (bout or out).flush()
            try:
                while deadline is None or time.monotonic() < deadline:
                    timeout = 0.25 if deadline is None else \
                        max(0.0, min(0.25, deadline - time.monotonic()))
                    for rec in rb.poll(timeout=timeout):
                        line = printer.format(rec)
                        if line is not None:
                            emit(line)
                    (bout or out).flush()
            finally:
                lost = int.from_bytes(obj.globals.get_bytes("dropped"), "little")
                if lost:
                    print(f"opensnoop: {lost} events lost: the ring buffer was full "
                          f"(raise -b, now {args.buffer_pages} pages)", file=sys.stderr)
    return printer.printed


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The ``opensnoop`` command: returns the exit status."""
    # SIGTERM ends the trace like Ctrl-C: the with-blocks detach and close everything.
    signal.signal(signal.SIGTERM, _interrupt)
    from pyebpf.errors import PyebpfError

    try:
        run(argv)
    except KeyboardInterrupt:
        return 0
    except PyebpfError as e:
        print(f"opensnoop: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout went away (e.g. `| head`): not an error for a tracing tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno == errno.EPIPE:
            return 0
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
