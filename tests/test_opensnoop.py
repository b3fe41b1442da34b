"""The opensnoop tool, run as a user runs it: a separate process tracing another one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from pyebpf.btf.types import Kind
from pyebpf.obj.object import ObjectSpec
from pyebpf.tools.opensnoop import EVENT, object_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

CHILD = r"""
import os, sys
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    path = line.strip()
    if not path:
        break
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        pass
    sys.stdout.write("done\n"); sys.stdout.flush()
"""


def _prog_ids() -> set[int]:
    from pyebpf.sys.bpf import get_next_id
    from pyebpf.sys.syscall import Cmd

    ids, cur = set(), 0
    while (nxt := get_next_id(Cmd.PROG_GET_NEXT_ID, cur)) is not None:
        ids.add(nxt)
        cur = nxt
    return ids


def _start_opensnoop(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "pyebpf.tools.opensnoop", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    header = proc.stdout.readline()  # printed once the programs are attached
    assert "PID" in header and "PATH" in header, proc.stderr.read() if proc.stderr else header
    return proc


def _child() -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _open_in(child: subprocess.Popen[str], path: str) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(path + "\n")
    child.stdin.flush()
    assert child.stdout.readline() == "done\n"


def test_event_layout_matches_btf() -> None:
    spec = ObjectSpec.from_file(object_path())
    assert spec.btf is not None
    (tid,) = spec.btf.find("event", Kind.STRUCT)
    assert spec.btf.type(tid).size == EVENT.size


def test_shipped_object_is_the_fixture() -> None:
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "opensnoop.bpf.o"
    assert Path(object_path()).read_bytes() == fixture.read_bytes()


def test_traces_another_process_by_pid() -> None:
    child = _child()
    tag = uuid.uuid4().hex
    with tempfile.NamedTemporaryFile(prefix=f"pyebpf-{tag}-") as existing:
        missing = f"/nonexistent-pyebpf-{tag}"
        snoop = _start_opensnoop("-p", str(child.pid), "-d", "3")
        try:
            _open_in(child, existing.name)
            _open_in(child, missing)
            out, err = snoop.communicate(timeout=30)
        finally:
            snoop.kill()
            child.kill()
            child.wait()
    assert snoop.returncode == 0, err
    lines = [ln.split(None, 4) for ln in out.splitlines() if tag in ln]
    # PID COMM FD ERR PATH, and only the child's opens (-p)
    assert [(int(p), path) for p, _c, _fd, _e, path in lines] == [
        (child.pid, existing.name), (child.pid, missing)]
    (_, _, fd_ok, err_ok, _), (_, _, fd_bad, err_bad, _) = lines
    assert int(fd_ok) >= 0 and int(err_ok) == 0
    assert int(fd_bad) == -1 and int(err_bad) == 2  # ENOENT


def test_failed_only_and_ctrl_c_detaches_everything() -> None:
    child = _child()
    tag = uuid.uuid4().hex
    before = _prog_ids()
    snoop = _start_opensnoop("-x", "-p", str(child.pid))
    try:
        during = _prog_ids() - before
        assert len(during) >= 2  # the two tracepoint programs (other sessions may add more)
        with tempfile.NamedTemporaryFile(prefix=f"pyebpf-{tag}-") as existing:
            _open_in(child, existing.name)
            _open_in(child, f"/nonexistent-pyebpf-{tag}")
            time.sleep(0.6)  # two poll periods
        snoop.send_signal(signal.SIGINT)
        out, err = snoop.communicate(timeout=30)
    finally:
        snoop.kill()
        child.kill()
        child.wait()
    assert snoop.returncode == 0, err
    assert "Traceback" not in err
    paths = [ln.split(None, 4)[4] for ln in out.splitlines() if tag in ln]
    assert paths == [f"/nonexistent-pyebpf-{tag}"]
    deadline = time.monotonic() + 5
    while during & _prog_ids() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees programs shortly after their last fd closes
    assert not (during & _prog_ids()), "opensnoop left programs loaded after Ctrl-C"


# Renames itself (comm, via /proc/self/comm), then opens argv[2]: the positive case of -n.
RENAMED_OPEN = r"""
import os, sys
with open("/proc/self/comm", "w") as f:
    f.write(sys.argv[1])
try:
    os.close(os.open(sys.argv[2], os.O_RDONLY))
except OSError:
    pass
"""


def test_comm_filter() -> None:
    tag = uuid.uuid4().hex
    name = "pyebpf_cat_" + tag[:4]  # 15 chars: the whole of it fits in comm
    matching = f"/nonexistent-pyebpf-{tag}-match"
    other = f"/nonexistent-pyebpf-{tag}-other"
    snoop = _start_opensnoop("-n", name, "-d", "2")
    try:
        # a process whose comm does not match must not show up
        subprocess.run(["cat", other], capture_output=True)
        # one whose comm is NAME must: otherwise an opensnoop printing nothing passes
        renamed = subprocess.Popen([sys.executable, "-c", RENAMED_OPEN, name, matching])
        assert renamed.wait(timeout=30) == 0
        out, err = snoop.communicate(timeout=30)
    finally:
        snoop.kill()
    assert snoop.returncode == 0, err
    assert other not in out
    lines = [ln.split(None, 4) for ln in out.splitlines() if tag in ln]
    assert len(lines) == 1, out
    pid, comm, fd, errno_, path = lines[0]
    assert (int(pid), comm, path) == (renamed.pid, name, matching)
    assert int(fd) == -1 and int(errno_) == 2  # ENOENT
