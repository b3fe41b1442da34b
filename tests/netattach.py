"""Shared helpers of the network attach tests (test_attach_netns/netfilter/socket/lwt.py):
the attach_sock fixture object, a leak check and an unprivileged child to show EPERM."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import kobjects
import pytest

import pyebpf

try:
    from tests.unitobj import unit_object
except ImportError:
    from unitobj import unit_object  # type: ignore[no-redef]

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")
NOBODY = 65534


def load_sock() -> pyebpf.Object:
    return pyebpf.load(unit_object("attach_sock"))


def prog_names(obj: pyebpf.Object) -> list[str]:
    return list(obj.programs)


def reset_globals(obj: pyebpf.Object) -> None:
    for name in obj.globals:
        obj.globals.set_bytes(name, bytes(len(obj.globals.get_bytes(name))))


@contextlib.contextmanager
def leak_check(obj: pyebpf.Object) -> Iterator[None]:
    """No new pyebpf FD, process fd or link of ``obj``'s programs survives the block;
    ``obj``'s globals start at zero."""
    reset_globals(obj)
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    yield
    gc.collect()
    assert kobjects.fd_state() == fds
    deadline = time.monotonic() + 10
    while (left := kobjects.new_links(before, prog_names(obj))) and time.monotonic() < deadline:
        time.sleep(0.05)  # link release runs after the last fd goes, sometimes deferred
    assert left == []


def as_nobody(fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> Any:
    """``fn()`` in a forked child that dropped to uid/gid 65534 and every capability; its
    result, or the exception it raised (as ``("error", type name, message, errno)``).
    ``before()`` runs in the child while it is still root (e.g. to enter a namespace)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                if before is not None:
                    before()
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)  # leaving uid 0 drops every capability
                out: Any = ("ok", repr(fn()))
            except BaseException as e:  # reported to the parent
                out = ("error", type(e).__name__, str(e), getattr(e, "errno", None))
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def pin_path() -> str:
    return f"/sys/fs/bpf/pyebpf_E_{os.getpid()}_{secrets.token_hex(4)}"


def tcp_pair(make: Callable[[], socket.socket] | None = None,
             addr: str = "127.0.0.1") -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, client, accepted) over loopback."""
    srv = make() if make else socket.socket()
    srv.bind((addr, 0))
    srv.listen()
    cli = make() if make else socket.socket()
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    for s in (cli, conn):
        s.settimeout(3)
    return srv, cli, conn


def recv_exact(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got
