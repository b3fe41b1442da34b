"""Network maps used by real programs: sockmap/sockhash verdicts on loopback TCP,
reuseport selection, cpumap/devmap/devmap_hash redirects of live XDP frames (into a
veth pair in a private network namespace) and an AF_XDP socket in an xskmap."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pyebpf
from pyebpf.errors import OptionError, SyscallError
from pyebpf.maps.map import map_class
from pyebpf.maps.netmaps import (
    CpuMap,
    CpuMapValue,
    DevMap,
    DevMapHash,
    DevMapValue,
    ReuseportSockArray,
    SockHash,
    SockMap,
    XskMap,
    socket_cookie,
)
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import AttachType, MapType

try:
    from tests.unitobj import unit_object
except ImportError:
    from unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf, netns)")

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
SO_ATTACH_REUSEPORT_EBPF = 52


@pytest.fixture
def net() -> Iterator[pyebpf.Object]:
    with pyebpf.load(unit_object("maps_net")) as obj:
        yield obj


def _wait(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cli, conn


def test_classes(net: pyebpf.Object) -> None:
    want = {"tx_dev": DevMap, "tx_hash": DevMapHash, "cpus": CpuMap, "xsks": XskMap,
            "sock_map": SockMap, "sock_hash": SockHash, "reuse": ReuseportSockArray}
    for name, cls in want.items():
        assert type(net.maps[name]) is cls, name
        assert map_class(net.maps[name].type) is cls


def test_sockmap_stream_verdict(net: pyebpf.Object) -> None:
    sm, prog = net.maps["sock_map"], net.programs["verdict"]
    sm.attach_program(prog)  # expected_attach_type from SEC("sk_skb/stream_verdict")
    srv, cli, conn = _tcp_pair()
    try:
        sm[0] = conn
        assert sm[0] == socket_cookie(conn) and sm.lookup(1) is None
        assert sm.ids() == {0: socket_cookie(conn)}
        cli.sendall(b"hello world")
        got = b""
        while len(got) < 11:
            got += conn.recv(100)
        assert got == b"hello world"  # SK_PASS: the data still arrives
        assert net.globals["verdict_bytes"] == 11 and net.globals["verdict_calls"] >= 1
        del sm[0]
        cli.sendall(b"xyz")
        assert conn.recv(100) == b"xyz"
        assert net.globals["verdict_bytes"] == 11  # out of the map: no verdict any more
        with open("/dev/null") as f, pytest.raises(SyscallError):
            sm[1] = f  # not a socket
        with pytest.raises(OptionError):
            sm[4] = conn  # past max_entries
    finally:
        sm.detach_program(prog)
        for s in (cli, conn, srv):
            s.close()


def test_sockhash_msg_verdict(net: pyebpf.Object) -> None:
    sh, prog = net.maps["sock_hash"], net.programs["on_msg"]
    sh.attach_program(prog, AttachType.SK_MSG_VERDICT)
    srv, cli, conn = _tcp_pair()
    try:
        sh[7] = cli
        assert sh[7] == socket_cookie(cli) and list(sh.keys()) == [7]
        cli.sendall(b"0123456789abc")
        got = b""
        while len(got) < 13:
            got += conn.recv(100)
        assert got == b"0123456789abc"
        assert net.globals["msg_bytes"] == 13
        assert sh.delete(7) and not sh.delete(7)
    finally:
        sh.detach_program(prog, AttachType.SK_MSG_VERDICT)
        for s in (cli, conn, srv):
            s.close()
    # closing a socket removes it from the map
    srv, cli, conn = _tcp_pair()
    sh[1] = conn
    conn.close()
    assert _wait(lambda: sh.lookup(1) is None)
    cli.close()
    srv.close()


def test_reuseport_select(net: pyebpf.Object) -> None:
    arr, prog = net.maps["reuse"], net.programs["select_sock"]
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            s.settimeout(2)
            socks.append(s)
        socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog.fd.fileno())
        arr[0], arr[1] = socks
        assert arr.ids() == {0: socket_cookie(socks[0]), 1: socket_cookie(socks[1])}
        addr = socks[0].getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for slot in (1, 0, 1):
                net.globals["reuse_slot"] = slot
                tx.sendto(b"slot%d" % slot, addr)
                assert socks[slot].recv(100) == b"slot%d" % slot
        assert net.globals["reuse_calls"] == 3
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lone:
            with pytest.raises(SyscallError):
                arr[2] = lone  # not bound: not in a reuseport group
    finally:
        for s in socks:
            s.close()
