"""The opensnoop tool, run as a user runs it: a separate process tracing other ones.

Each option is checked against what bcc's opensnoop prints for it. The traced activity
happens in child processes with known pids (the machine is shared: tests filter by
those pids, or by unique names in the paths), through the raw open, openat and
openat2 system calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pyebpf.btf.types import Kind
from pyebpf.obj.object import ObjectSpec
from pyebpf.tools import opensnoop as tool
from pyebpf.tools.opensnoop import HEADER, object_path

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

# syscall numbers of the three traced calls (no open(2) on arm64)
NR = {"x86_64": {"open": 2, "openat": 257, "openat2": 437},
      "aarch64": {"openat": 56, "openat2": 437}}.get(platform.machine(), {})

# A child that makes the system calls it is told to (one JSON command a line) and
# answers each with the result. argv[1] is a JSON setup: "uid" (drop to it), "unshare_mnt"
# (enter a new mount namespace), "comm" (rename itself).
CHILD = r"""
import ctypes, json, os, struct, sys, threading
NR = json.loads(sys.argv[2])
setup = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
if setup.get("unshare_mnt"):
    if libc.unshare(0x00020000) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
if setup.get("comm"):
    with open("/proc/self/comm", "w") as f:
        f.write(setup["comm"])
if "uid" in setup:
    os.setgroups([])
    os.setresgid(setup["uid"], setup["uid"], setup["uid"])
    os.setresuid(setup["uid"], setup["uid"], setup["uid"])

def call(cmd):
    if cmd.get("cwd"):
        os.chdir(cmd["cwd"])
    dfd = os.open(cmd["dir"], os.O_RDONLY | os.O_DIRECTORY) if cmd.get("dir") else -100
    path = cmd["path"].encode()
    flags, mode = cmd.get("flags", 0), cmd.get("mode", 0)
    op = cmd["op"]
    if op == "open":
        ret = libc.syscall(NR["open"], path, flags, mode)
    elif op == "openat":
        ret = libc.syscall(NR["openat"], dfd, path, flags, mode)
    else:
        how = ctypes.create_string_buffer(struct.pack("<QQQ", flags, mode, 0))
        ret = libc.syscall(NR["openat2"], dfd, path, how, ctypes.c_size_t(24))
    ret = ret if ret >= 0 else -ctypes.get_errno()
    if ret >= 0:
        os.close(ret)
    if dfd >= 0:
        os.close(dfd)
    return ret

sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    out = {"tid": threading.get_native_id()}
    if cmd.get("thread"):
        def body():
            out["tid"] = threading.get_native_id()
            out["ret"] = call(cmd)
        t = threading.Thread(target=body)
        t.start()
        t.join()
    else:
        out["ret"] = call(cmd)
    sys.stdout.write(json.dumps(out) + "\n"); sys.stdout.flush()
"""


class Child:
    """A traced process: ``do()`` makes one open-family system call in it."""

    def __init__(self, **setup: Any) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(setup),
                                      json.dumps(NR)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n", "traced child failed to start"
        self.pid = self.proc.pid
        with open(f"/proc/{self.pid}/comm") as f:
            self.comm = f.read().strip()

    def do(self, op: str, path: str, flags: int = os.O_RDONLY, mode: int = 0, *,
           dir: str | None = None, cwd: str | None = None, thread: bool = False
           ) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd = {"op": op, "path": path, "flags": flags, "mode": mode, "dir": dir, "cwd": cwd,
               "thread": thread}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "traced child died"
        result: dict[str, int] = json.loads(line)
        return result

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def child(**setup: Any) -> Iterator[Child]:
    c = Child(**setup)
    try:
        yield c
    finally:
        c.close()


class Snoop:
    """``python -m pyebpf.tools.opensnoop ARGS`` with its output read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pyebpf.tools.opensnoop", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd="/")
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        self.header = self.proc.stdout.readline().rstrip("\n")  # printed once attached
        if "PATH" not in self.header:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"opensnoop did not start: {err}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def until(self, needle: str, timeout: float = 20.0) -> list[str]:
        """The lines so far, once one containing ``needle`` was printed."""
        deadline = time.monotonic() + timeout
        while not any(needle in ln for ln in self.lines):
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{needle!r} never printed; got {self.lines}") from None
            if line is None:
                raise AssertionError(f"opensnoop ended before {needle!r}: {self.stop()}")
            self.lines.append(line)
        return self.lines

    def stop(self) -> str:
        """Ctrl-C; returns stderr. The exit status must be 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def snoop(*args: str) -> Iterator[Snoop]:
    s = Snoop(*args)
    try:
        yield s
    finally:
        s.kill()


def tagged(lines: list[str], tag: str) -> list[str]:
    return [ln for ln in lines if tag in ln]


def new_tag() -> str:
    return f"pyebpf-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def row(pid: int, comm: str, ret: int, path: str) -> str:
    """bcc's default line: "%-6d %-16s %4d %3d %s"."""
    fd, err = (ret, 0) if ret >= 0 else (-1, -ret)
    return f"{pid:<6} {comm:<16} {fd:>4} {err:>3} {path}"


def requires(*ops: str) -> None:
    missing = [op for op in ops if op not in NR]
    if missing:
        pytest.skip(f"no syscall number for {missing} on {platform.machine()}")


# -- pure: no root ------------------------------------------------------------------------------

def test_event_header_matches_btf() -> None:
    spec = ObjectSpec.from_file(object_path())
    assert spec.btf is not None
    (tid,) = spec.btf.find("event", Kind.STRUCT)
    ev = spec.btf.type(tid)
    offsets = {m.name: m.bit_offset // 8 for m in ev.members}
    assert offsets["buf"] == HEADER.size
    assert [m.name for m in ev.members] == ["ts_ns", "pid", "tid", "uid", "ret", "flags", "mode",
                                             "path_depth", "path_status", "pad", "len", "comm",
                                             "buf"]
    assert offsets["comm"] == HEADER.size - 16


def test_tool_object_traces_the_three_syscalls() -> None:
    spec = ObjectSpec.from_file(object_path())
    # one enter program per syscall, one exit program the tool attaches to all three (with
    # or without the path walk of -F)
    assert {n: p.section for n, p in spec.programs.items()} == {
        **{f"tracepoint__syscalls__sys_enter_{sc}": f"tracepoint/syscalls/sys_enter_{sc}"
           for sc in tool.SYSCALLS},
        "handle_exit": "tracepoint/syscalls/sys_exit_openat",
        "handle_exit_full_path": "tracepoint/syscalls/sys_exit_openat"}
    # the corpus object the loader tests tabulate is a different, frozen one
    corpus = ObjectSpec.from_file(ROOT / "fixtures" / "opensnoop.bpf.o")
    assert set(corpus.programs) == {"tracepoint__syscalls__sys_enter_openat",
                                    "tracepoint__syscalls__sys_exit_openat"}
    ro = {v.name for v in spec.variables.values()}
    assert {"targ_uid", "targ_flags", "filter_cgroup", "filter_mntns"} <= ro


def _args(*argv: str) -> argparse.Namespace:
    return tool._parser().parse_args(list(argv))


def test_headers_are_bccs() -> None:
    assert tool.header(_args()) == "PID    COMM               FD ERR PATH"
    assert tool.header(_args("-t", "5")) == "TID    COMM               FD ERR PATH"
    assert tool.header(_args("-T", "-U", "-e")) == (
        "TIME(s)       UID   PID    COMM               FD ERR FLAGS    MODE PATH")


def _record(pid: int = 100, tid: int = 101, uid: int = 0, ret: int = 3, flags: int = 0,
            mode: int = 0, comm: bytes = b"cat", ts_ns: int = 5_000_000_000,
            names: tuple[bytes, ...] = (b"/etc/passwd",), status: int = 0) -> bytes:
    body = b"".join(n + b"\0" for n in names)
    return HEADER.pack(ts_ns, pid, tid, uid, ret, flags, mode, len(names) - 1, status, 0,
                       len(body), comm) + body


def test_lines_are_formatted_as_bcc_does() -> None:
    p = tool.Printer(_args())
    assert p.format(_record()) == b"100    cat                 3   0 /etc/passwd\n"
    assert p.format(_record(ret=-13)) == b"100    cat                -1  13 /etc/passwd\n"
    # -t prints the thread id; -U a 6-wide UID column without a separator, as bcc
    p = tool.Printer(_args("-t", "101", "-U"))
    assert p.format(_record(uid=65534)) == b"65534 101    cat                 3   0 /etc/passwd\n"
    # -T: seconds since the first event, from microseconds, "%-14.9f"
    p = tool.Printer(_args("-T"))
    first, second = p.format(_record(ts_ns=7_000_000_999)), p.format(_record(ts_ns=8_500_001_999))
    assert first is not None and first.startswith(b"0.000000000   100 ")
    assert second is not None and second.startswith(b"1.500001000   100 ")
    # -e: flags in octal; the mode only with O_CREAT or O_TMPFILE
    p = tool.Printer(_args("-e"))
    assert p.format(_record(flags=os.O_WRONLY | os.O_CREAT, mode=0o640)) == (
        b"100    cat                 3   0 00000101 0640 /etc/passwd\n")
    assert p.format(_record(flags=os.O_RDONLY | os.O_CLOEXEC)) == (
        b"100    cat                 3   0 02000000 n/a  /etc/passwd\n")
    assert p.format(_record(flags=os.O_TMPFILE | os.O_RDWR, mode=0)) == (
        b"100    cat                 3   0 %08o 0000 /etc/passwd\n" % (os.O_TMPFILE | os.O_RDWR))
    # -n is a substring match on the comm
    p = tool.Printer(_args("-n", "at"))
    assert p.format(_record()) is not None and p.format(_record(comm=b"ls")) is None
    assert p.printed == 1


def test_full_path_join() -> None:
    fp = tool.full_path
    assert fp(b"/abs", [b"ignored"], 0) == b"/abs"
    assert fp(b"a/b", [b"sub", b"tmp"], 0) == b"/tmp/sub/a/b"
    assert fp(b"x", [], 0) == b"/x"  # cwd is /
    assert fp(b"x", [b"d9", b"d8"], tool.PATH_TRUNCATED) == b"d8/d9/x"  # as libbpf-tools
    assert fp(b"x", [], tool.PATH_FAILED) == b"x"
    p = tool.Printer(_args("-F"))
    line = p.format(_record(names=(b"rel", b"sub", b"tmp")))
    assert line is not None and line.endswith(b" /tmp/sub/rel\n")
    p = tool.Printer(_args())
    line = p.format(_record(names=(b"rel", b"sub", b"tmp")))
    assert line is not None and line.endswith(b" rel\n")


def test_flag_filter_masks() -> None:
    assert tool.flag_filter(["O_WRONLY"]) == (os.O_WRONLY, False)
    assert tool.flag_filter(["O_WRONLY", "O_RDWR"]) == (os.O_WRONLY | os.O_RDWR, False)
    assert tool.flag_filter(["O_RDONLY"]) == (0, True)
    for bad in ("O_BOGUS", "WRONLY", "O_"):
        with pytest.raises(ValueError, match=f"Bad flag: {bad}"):
            tool.flag_filter([bad])


def test_uid_zero_is_root_not_no_filter() -> None:
    assert _args("-u", "0").uid == 0
    assert _args().uid is None
    assert _args("-u", "root").uid == 0
    assert _args("-b", "128").buffer_pages == 128 and _args().buffer_pages == 64


@pytest.mark.parametrize(("argv", "message"), [
    (["-u", "-1"], "invalid UID"),
    (["-u", "no-such-user-pyebpf"], "no user 'no-such-user-pyebpf'"),
    (["-b", "3"], "must be a power of two"),
    (["-b", "0"], "must be > 0"),
    (["-p", "abc"], "invalid PID: 'abc'"),
    (["-t", "0"], "invalid TID"),
    (["-d", "0"], "invalid duration"),
    (["-f", "O_BOGUS"], "Bad flag: O_BOGUS"),
])
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pyebpf.tools.opensnoop", *argv],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_help_lists_every_bcc_option() -> None:
    out = subprocess.run([sys.executable, "-m", "pyebpf.tools.opensnoop", "-h"],
                         capture_output=True, text=True, timeout=60).stdout
    for opt in ("-T", "--timestamp", "-U", "--print-uid", "-x", "--failed", "-p", "-t",
                "--cgroupmap", "--mntnsmap", "-u", "-d", "-n", "-e", "--extended_fields",
                "-f", "--flag_filter", "-F", "--full-path", "-b", "--buffer-pages"):
        assert re.search(rf"(^|[\s,\[]){re.escape(opt)}\b", out), opt
    assert "examples:" in out


# -- against the kernel -----------------------------------------------------------------------

@needs_root
def test_open_openat_openat2_all_show_up() -> None:
    requires("open", "openat", "openat2")
    tag = new_tag()
    missing = f"/nonexistent-{tag}"
    with child() as c, snoop("-p", str(c.pid)) as s:
        r_open = c.do("open", f"{missing}-open")
        r_openat = c.do("openat", "/proc/self/status")
        r_openat2 = c.do("openat2", f"{missing}-openat2")
        r_ok2 = c.do("openat2", "/proc/self/stat")
        c.do("openat", f"{missing}-end")
        lines = s.until(f"{missing}-end")
        s.stop()
    assert s.header == "PID    COMM               FD ERR PATH"
    assert r_open["ret"] == r_openat2["ret"] == -2 and r_openat["ret"] >= 0 <= r_ok2["ret"]
    want = [row(c.pid, c.comm, r_open["ret"], f"{missing}-open"),
            row(c.pid, c.comm, r_openat["ret"], "/proc/self/status"),
            row(c.pid, c.comm, r_openat2["ret"], f"{missing}-openat2"),
            row(c.pid, c.comm, r_ok2["ret"], "/proc/self/stat"),
            row(c.pid, c.comm, -2, f"{missing}-end")]
    assert lines == want  # -p: nothing from any other process


@needs_root
def test_uid_zero_selects_root() -> None:
    requires("openat")
    tag = new_tag()
    with child() as root, child(uid=65534) as nobody, \
            snoop("-u", "0", "-U") as only_root, snoop("-u", "65534", "-U") as only_nobody:
        nobody.do("openat", f"/nonexistent-{tag}-nobody")
        root.do("openat", f"/nonexistent-{tag}-root")
        nobody.do("openat", f"/nonexistent-{tag}-nobody-end")
        # each trace printed its own user's last open, so the other's would be there by now
        got_root = tagged(only_root.until(f"{tag}-root"), tag)
        got_nobody = tagged(only_nobody.until(f"{tag}-nobody-end"), tag)
        only_root.stop()
        only_nobody.stop()
    assert got_root == [f"{0:<6}" + row(root.pid, root.comm, -2, f"/nonexistent-{tag}-root")]
    assert got_nobody == [
        f"{65534:<6}" + row(nobody.pid, nobody.comm, -2, f"/nonexistent-{tag}-nobody"),
        f"{65534:<6}" + row(nobody.pid, nobody.comm, -2, f"/nonexistent-{tag}-nobody-end")]


@needs_root
def test_failed_only_and_ctrl_c_leaves_nothing_loaded() -> None:
    requires("openat")
    tag = new_tag()
    with child() as c, snoop("-x", "-p", str(c.pid)) as s:
        ids = _bpf_ids(s.proc.pid)
        # one enter program per syscall and the exit program; a link per tracepoint
        assert len(ids["prog_id"]) == len(tool._syscalls()) + 1
        assert len(ids["link_id"]) == 2 * len(tool._syscalls()) and ids["map_id"]
        c.do("openat", "/proc/self/status")
        c.do("openat", f"/nonexistent-{tag}")
        lines = s.until(tag)
        s.stop()
    assert lines == [row(c.pid, c.comm, -2, f"/nonexistent-{tag}")]
    _wait_gone(ids)


@needs_root
def test_extended_fields_show_flags_in_octal() -> None:
    requires("openat", "openat2")
    tag = new_tag()
    d = f"/tmp/{tag}"
    os.mkdir(d)
    try:
        with child() as c, snoop("-e", "-p", str(c.pid)) as s:
            flags_c = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            c.do("openat", f"{d}/created", flags_c, 0o640)
            c.do("openat", f"{d}/created", os.O_RDONLY | os.O_CLOEXEC, 0o777)  # mode ignored
            flags_2 = os.O_RDWR | os.O_CREAT | os.O_EXCL
            r2 = c.do("openat2", f"{d}/made-by-openat2", flags_2, 0o600)
            lines = s.until("made-by-openat2")
            s.stop()
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)
    assert s.header == "PID    COMM               FD ERR FLAGS    MODE PATH"
    assert r2["ret"] >= 0
    pre = f"{c.pid:<6} {c.comm:<16}"
    fds = [int(ln.split()[2]) for ln in lines]
    assert lines == [f"{pre} {fds[0]:>4}   0 {flags_c:08o} 0640 {d}/created",
                     f"{pre} {fds[1]:>4}   0 {os.O_RDONLY | os.O_CLOEXEC:08o} n/a  {d}/created",
                     f"{pre} {fds[2]:>4}   0 {flags_2:08o} 0600 {d}/made-by-openat2"]


@needs_root
def test_flag_filter() -> None:
    requires("openat")
    tag = new_tag()
    d = f"/tmp/{tag}"
    os.mkdir(d)
    try:
        with child() as c, snoop("-p", str(c.pid), "-f", "O_WRONLY") as wr, \
                snoop("-p", str(c.pid), "-f", "O_WRONLY", "-f", "O_RDWR") as writing, \
                snoop("-p", str(c.pid), "-f", "O_RDONLY") as rdonly, \
                snoop("-p", str(c.pid), "-f", "O_CREAT", "-e") as creat:
            c.do("openat", f"{d}/rd", os.O_RDONLY)
            c.do("openat", f"{d}/wr", os.O_WRONLY | os.O_CREAT, 0o600)
            c.do("openat", f"{d}/rw", os.O_RDWR | os.O_CREAT, 0o600)
            c.do("openat", f"{d}/end", os.O_RDWR | os.O_WRONLY | os.O_CREAT, 0o600)
            c.do("openat", f"{d}/rd-end", os.O_RDONLY)
            paths = {}
            for name, s in (("wr", wr), ("writing", writing), ("rdonly", rdonly),
                            ("creat", creat)):
                s.until("/rd-end" if name == "rdonly" else "/end")
                s.stop()
                paths[name] = [ln.rsplit(" ", 1)[1].rsplit("/", 1)[1] for ln in tagged(s.lines, tag)]
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)
    # as bcc: an open matches when its flags share a bit with one asked for
    assert paths["wr"] == ["wr", "end"]
    assert paths["writing"] == ["wr", "rw", "end"]
    assert paths["creat"] == ["wr", "rw", "end"]
    # O_RDONLY is 0: a read-only access mode matches (bcc's bit test never could)
    assert paths["rdonly"] == ["rd", "rd-end"]


@needs_root
def test_full_path_for_relative_opens() -> None:
    requires("open", "openat", "openat2")
    tag = new_tag()
    d = f"/tmp/{tag}"
    os.makedirs(f"{d}/sub")
    try:
        with child() as c, snoop("-F", "-p", str(c.pid)) as full, \
                snoop("-p", str(c.pid)) as plain:
            c.do("open", "sub/by-open", cwd=d)
            c.do("openat", "by-openat", cwd=f"{d}/sub")
            c.do("openat", "../via-dirfd", dir=f"{d}/sub")   # relative to the dirfd, not cwd
            c.do("openat2", "by-openat2", dir=f"{d}/sub")
            c.do("openat", f"{d}/absolute")
            c.do("openat", "status", cwd="/proc/self")  # the cwd as the kernel knows it
            c.do("openat", "last", cwd="/")
            got = {}
            for name, s in (("full", full), ("plain", plain)):
                s.until(" last" if name == "plain" else "/last")
                s.stop()
                got[name] = [ln.split(None, 4)[4] for ln in s.lines]
    finally:
        os.rmdir(f"{d}/sub")
        os.rmdir(d)
    # (the child opens each directory fd first: the {d}/sub lines)
    assert got["full"] == [f"{d}/sub/by-open", f"{d}/sub/by-openat", f"{d}/sub",
                           f"{d}/sub/../via-dirfd", f"{d}/sub", f"{d}/sub/by-openat2",
                           f"{d}/absolute", f"/proc/{c.pid}/status", "/last"]
    assert got["plain"] == ["sub/by-open", "by-openat", f"{d}/sub", "../via-dirfd", f"{d}/sub",
                            "by-openat2", f"{d}/absolute", "status", "last"]


@needs_root
def test_tid_and_timestamps() -> None:
    requires("openat")
    tag = new_tag()
    with child() as c:
        # find the thread id the child's worker threads get: one thread is made per call,
        # so trace the main thread, and check a worker thread's open does not show
        with snoop("-t", str(c.pid), "-T") as s:
            r_thread = c.do("openat", f"/nonexistent-{tag}-thread", thread=True)
            c.do("openat", f"/nonexistent-{tag}-a")
            time.sleep(0.01)
            c.do("openat", f"/nonexistent-{tag}-b")
            lines = s.until(f"{tag}-b")
            s.stop()
    assert r_thread["tid"] != c.pid
    assert s.header == "TIME(s)       TID    COMM               FD ERR PATH"
    assert len(lines) == 2 and all(f"{c.pid:<6} {c.comm:<16}" in ln for ln in lines)
    times = [ln[:14] for ln in lines]
    assert times[0] == "0.000000000   "
    t1 = float(times[1])
    assert re.fullmatch(r"\d+\.\d{6}000 *", times[1]) and 0.005 < t1 < 5  # microseconds


@needs_root
def test_buffer_pages_sizes_the_ring_buffer() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    for argv, pages in (([], 64), (["-b", "8"], 8), (["--buffer-pages", "256"], 256)):
        with snoop(*argv, "-p", "1") as s:
            # the ring buffer's map (BPF_MAP_TYPE_RINGBUF), however many fds reach it
            rings = {info["map_id"]: int(info["max_entries"]) for info in _fdinfos(s.proc.pid)
                     if info.get("map_type") == "27"}
            s.stop()
        assert list(rings.values()) == [pages * page], argv


# opens ``count`` missing files through openat as fast as Python can
BURST = r"""
import ctypes, sys
libc = ctypes.CDLL(None)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    libc.syscall(int(sys.argv[3]), -100, b"%s-%d" % (sys.argv[1].encode(), i), 0, 0)
"""


@needs_root
def test_small_buffer_counts_what_it_drops() -> None:
    requires("openat")
    tag = new_tag()
    count = 20000
    burst = subprocess.Popen([sys.executable, "-c", BURST, f"/nonexistent-{tag}", str(count),
                              str(NR["openat"])], stdin=subprocess.PIPE, text=True)
    try:
        with snoop("-b", "1", "-p", str(burst.pid)) as s:  # one page: ~60 events
            assert burst.stdin is not None
            burst.stdin.write("go\n")
            burst.stdin.close()
            assert burst.wait(timeout=60) == 0
            time.sleep(0.5)
            err = s.stop()
    finally:
        burst.kill()
        burst.wait()
    printed = len(tagged(s.lines, tag))
    m = re.search(r"opensnoop: (\d+) events lost: the ring buffer was full \(raise -b, now 1 "
                  r"pages\)", err)
    lost = int(m.group(1)) if m else 0
    # every open is either printed or counted as lost
    assert printed + lost == count, (printed, lost, err)


@needs_root
def test_duration_ends_the_trace() -> None:
    t = time.monotonic()
    with snoop("-d", "1", "-p", "1") as s:
        attached = time.monotonic()
        s.proc.wait(timeout=30)
        ended = time.monotonic()
        s.stop()
    assert 0.9 < ended - attached < 1.0 + 5, (attached - t, ended - attached)


@needs_root
def test_comm_filter() -> None:
    requires("openat")
    tag = new_tag()
    name = "pyebpf_cat_" + uuid.uuid4().hex[:4]  # 15 chars: all of it fits in comm
    with child(comm=name) as match, child() as other, snoop("-n", name[3:]) as s:
        other.do("openat", f"/nonexistent-{tag}-other")
        match.do("openat", f"/nonexistent-{tag}-match")
        lines = tagged(s.until(f"{tag}-match"), tag)
        s.stop()
    assert lines == [row(match.pid, name, -2, f"/nonexistent-{tag}-match")]


# -- --cgroupmap / --mntnsmap -----------------------------------------------------------------

@contextmanager
def _pinned_hash(value_size: int) -> Iterator[tuple[str, Callable[[int], None]]]:
    """A hash map (u64 key) pinned under a unique name, as bcc's tools make them."""
    from pyebpf.maps.map import Map
    from pyebpf.sys import bpf as B
    from pyebpf.uapi import MapType

    path = f"/sys/fs/bpf/pyebpf_opensnoop_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with B.map_create(MapType.HASH, 8, value_size, 1024, name="pyebpf_set") as fd:
        B.obj_pin(fd, path)
    m = Map.from_pin(path)

    def add(key: int) -> None:
        m.ops.update(key.to_bytes(8, "little"), (1).to_bytes(value_size, "little"), 0)
    try:
        yield path, add
    finally:
        m.close()
        os.unlink(path)


@needs_root
def test_cgroupmap_traces_only_listed_cgroups() -> None:
    requires("openat")
    from cgroups import scratch_cgroup

    tag = new_tag()
    with scratch_cgroup("opensnoop") as cg, _pinned_hash(8) as (pin, add):
        add(os.stat(cg).st_ino)  # a cgroup v2 id is its directory's inode number
        with child() as inside, child() as outside:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(inside.pid))
            with snoop("--cgroupmap", pin) as s:
                outside.do("openat", f"/nonexistent-{tag}-outside")
                inside.do("openat", f"/nonexistent-{tag}-inside")
                lines = tagged(s.until(f"{tag}-inside"), tag)
                s.stop()
    assert lines == [row(inside.pid, inside.comm, -2, f"/nonexistent-{tag}-inside")]


@needs_root
def test_mntnsmap_traces_only_listed_mount_namespaces() -> None:
    requires("openat")
    tag = new_tag()
    with _pinned_hash(4) as (pin, add), child(unshare_mnt=True) as inside, child() as outside:
        add(os.stat(f"/proc/{inside.pid}/ns/mnt").st_ino)
        assert os.stat(f"/proc/{outside.pid}/ns/mnt").st_ino != \
            os.stat(f"/proc/{inside.pid}/ns/mnt").st_ino
        with snoop("--mntnsmap", pin) as s:
            outside.do("openat", f"/nonexistent-{tag}-outside")
            inside.do("openat", f"/nonexistent-{tag}-inside")
            lines = tagged(s.until(f"{tag}-inside"), tag)
            s.stop()
    assert lines == [row(inside.pid, inside.comm, -2, f"/nonexistent-{tag}-inside")]


@needs_root
def test_container_map_errors_are_clear() -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyebpf.tools.opensnoop", "-d", "1", *argv],
                              capture_output=True, text=True, timeout=60)
    missing = f"/sys/fs/bpf/pyebpf_opensnoop_{os.getpid()}_missing"
    r = run("--cgroupmap", missing)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--cgroupmap {missing}" in r.stderr and "No such file" in r.stderr, r.stderr
    with _pinned_hash(4) as (pin, _add):  # a u32 value: bcc's mntns map, not a cgroup map
        r = run("--cgroupmap", pin)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--cgroupmap {pin}" in r.stderr and "8-byte key and a 8-byte value" in r.stderr, \
        r.stderr


# -- helpers -------------------------------------------------------------------------------------

def _fdinfos(pid: int) -> list[dict[str, str]]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fields = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
        except FileNotFoundError:
            continue
        out.append({k.strip(): v.strip() for k, v in fields.items()})
    return out


def _bpf_ids(pid: int) -> dict[str, set[int]]:
    """The ids of the programs, maps and links the process holds fds of."""
    ids: dict[str, set[int]] = {"prog_id": set(), "map_id": set(), "link_id": set()}
    for info in _fdinfos(pid):
        if "link_id" in info:  # a link's fdinfo names its program too
            ids["link_id"].add(int(info["link_id"]))
        elif "prog_id" in info:
            ids["prog_id"].add(int(info["prog_id"]))
        elif "map_id" in info:
            ids["map_id"].add(int(info["map_id"]))
    return ids


def _wait_gone(ids: dict[str, set[int]]) -> None:
    from pyebpf.sys import bpf as B
    from pyebpf.sys.syscall import Cmd

    cmds = {"prog_id": Cmd.PROG_GET_NEXT_ID, "map_id": Cmd.MAP_GET_NEXT_ID,
            "link_id": Cmd.LINK_GET_NEXT_ID}
    deadline = time.monotonic() + 10
    while True:
        left = {}
        for k, want in ids.items():
            have, cur = set(), 0
            while (nxt := B.get_next_id(cmds[k], cur)) is not None:
                have.add(nxt)
                cur = nxt
            if want & have:
                left[k] = want & have
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"opensnoop left kernel objects behind: {left}")
        time.sleep(0.05)  # the kernel frees objects shortly after their last fd closes

