"""Scratch cgroup v2 directories for attach tests, and running code inside one.

The machine is shared: every cgroup made here has a unique name (this pid and a random
suffix) and is removed afterwards. Work that must be seen by cgroup programs runs in a
forked child that first moves itself into the scratch cgroup, so only its activity
counts; the child reports its result (or its exception) back through a pipe.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_mounted: str | None = None  # a cgroup2 mount this module made (when none existed)


def cgroup2_root() -> str:
    """Where cgroup v2 is mounted (from /proc/mounts): /sys/fs/cgroup, or .../unified on
    a hybrid v1/v2 layout. With none, one is mounted under a temp dir (kept for the process)."""
    global _mounted
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return parts[1].replace("\\040", " ")
    if _mounted is None:
        d = tempfile.mkdtemp(prefix="pyebpf_cgroup2_")
        subprocess.run(["mount", "-t", "cgroup2", "none", d], check=True)
        _mounted = d
    return _mounted


def unique_name(tag: str = "cg") -> str:
    return f"pyebpf_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def rmdir(path: str, timeout: float = 5.0) -> None:
    """Remove a cgroup directory, waiting while a reaped child still populates it (EBUSY)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def scratch_cgroup(tag: str = "cg", parent: str | None = None) -> Iterator[str]:
    """A new, uniquely named, empty cgroup v2 directory; removed (with any children) on exit."""
    path = os.path.join(parent or cgroup2_root(), unique_name(tag))
    os.mkdir(path)
    try:
        yield path
    finally:
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
            rmdir(dirpath)


def run_in_cgroup(path: str, fn: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Run ``fn()`` in a forked child that first joined the cgroup at ``path``; return what
    it returned (it must pickle). An exception in the child is raised here as RuntimeError
    with the child's traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            signal.alarm(max(1, int(timeout)))  # a hung child dies, and the parent's read ends
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException:
                payload = pickle.dumps((False, traceback.format_exc()))
                code = 1
            with os.fdopen(w, "wb") as out:
                out.write(payload)
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as inp:
            data = inp.read()
    finally:
        _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child in {path} died without a result (wait status {status:#x})")
    ok, value = pickle.loads(data)
    if not ok:
        raise RuntimeError(f"child in {path} failed:\n{value}")
    return value
