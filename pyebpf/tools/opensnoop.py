"""opensnoop: trace openat(2) system-wide, like bcc's and libbpf-tools' opensnoop.

Usage: python -m pyebpf.tools.opensnoop [-p PID] [-t TID] [-u UID] [-x] [-n NAME] [-d SECONDS]

The CO-RE object ships inside the package (opensnoop.bpf.o, built from
fixtures/src/opensnoop.bpf.c); no compiler or kernel headers are needed.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import struct
import sys
import time
from typing import TextIO

# struct event in opensnoop.bpf.c: u64 ts_ns; u32 pid, tid, ppid, uid; int ret, flags;
# u32 mode; char comm[16]; char fname[255] (padded to 8 bytes). A test checks this
# against the object's BTF.
EVENT = struct.Struct("<QIIIIiiI16s255s5x")


def object_path() -> str:
    """Path of the shipped opensnoop CO-RE object."""
    # __file__, not importlib.resources: that import alone costs ~10 ms of start-up,
    # and the wheel installs as plain files.
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "opensnoop.bpf.o")


def _formatter(prog: str) -> argparse.HelpFormatter:
    # argparse's default formatter imports shutil (with bz2 and lzma, ~4 ms of start-up)
    # just to read the terminal width; os answers the same question.
    try:
        width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (ValueError, OSError, AttributeError):
        width = 80
    return argparse.HelpFormatter(prog, width=max(width - 2, 11))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opensnoop", description="Trace openat() syscalls.",
                                formatter_class=_formatter)
    p.add_argument("-p", "--pid", type=int, default=0, help="trace this process (tgid) only")
    p.add_argument("-t", "--tid", type=int, default=0, help="trace this thread only")
    p.add_argument("-u", "--uid", type=int, default=0, help="trace this user id only")
    p.add_argument("-x", "--failed", action="store_true", help="show only failed opens")
    p.add_argument("-n", "--name", default="", help="only processes whose comm contains NAME")
    p.add_argument("-d", "--duration", type=float, default=0.0,
                   help="total duration of the trace, in seconds")
    p.add_argument("-T", "--timestamp", action="store_true", help="print a timestamp column")
    return p


def run(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run opensnoop; returns the number of events printed."""
    args = _parser().parse_args(argv)
    import pyebpf

    rodata = {
        "targ_tgid": args.pid,
        "targ_pid": args.tid,
        "targ_uid": args.uid,
        "targ_failed": args.failed,
    }
    name = args.name.encode()
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    printed = 0
    start_ns = 0
    with pyebpf.load(object_path(), globals=rodata) as obj, \
            pyebpf.RingBuffer(obj.maps["events"]) as rb:
        obj.attach()
        header = f"{'PID':<7} {'COMM':<16} {'FD':>4} {'ERR':>3} PATH\n"
        out.write(("TIME(s)  " if args.timestamp else "") + header)
        out.flush()
        while deadline is None or time.monotonic() < deadline:
            timeout = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            for rec in rb.poll(timeout=timeout):
                ts, pid, _tid, _ppid, _uid, ret, _flags, _mode, comm, fname = EVENT.unpack_from(rec)
                comm = comm.split(b"\0", 1)[0]
                if name and name not in comm:
                    continue
                fd, err = (ret, 0) if ret >= 0 else (-1, -ret)
                path = fname.split(b"\0", 1)[0].decode(errors="replace")
                line = f"{pid:<7} {comm.decode(errors='replace'):<16} {fd:>4} {err:>3} {path}\n"
                if args.timestamp:
                    start_ns = start_ns or ts
                    line = f"{(ts - start_ns) / 1e9:<8.3f} " + line
                out.write(line)
                printed += 1
            out.flush()
    return printed


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
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
