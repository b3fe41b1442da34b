"""Test helper: two fresh network namespaces joined by a veth pair.

    with NetnsPair() as net:               # or the ``netns_pair`` pytest fixture
        net.ns["a"], net.ifname["b"], net.ifindex["b"], net.addr4["b"], net.addr6["b"]
        with net.enter("b"):               # this thread joins netns b, then goes back
            ...                            # socket.if_nametoindex, new sockets, attaches
        net.run("b", fn)                   # fn() on a short-lived thread inside netns b
        net.udp("a", "b", port=4242, count=5)   # -> datagrams that arrived at b

Side ``a`` holds interface ``ifname["a"]`` with 10.199.0.1/24 and fd99::1/64, side ``b``
the peer with .2 / ::2. Both ends are up with permanent neighbour entries, so no ARP or
neighbour discovery delays or adds packets to the first datagram. Namespace names hold
the pid and a random suffix (the machine is shared); everything is deleted on close.

Setup uses ``ip`` (iproute2): tests only, the library never shells out. Entering a
namespace uses setns(2) on /run/netns/NAME, not ``ip netns exec``, which remounts /sys
and hides /sys/fs/bpf.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")

MAC = {"a": "02:00:0a:c7:00:01", "b": "02:00:0a:c7:00:02"}
ADDR4 = {"a": "10.199.0.1", "b": "10.199.0.2"}
ADDR6 = {"a": "fd99::1", "b": "fd99::2"}


def _setns(fd: int) -> None:
    # os.setns is 3.12+; the machine runs 3.11
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


@contextlib.contextmanager
def enter_netns(name: str) -> Iterator[None]:
    """Move the calling thread into netns ``name`` (under /run/netns) and back afterwards."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(orig)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread that joined netns ``name``; its result or its exception."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            with enter_netns(name):
                out["v"] = fn()
        except BaseException as e:  # handed to the caller
            out["e"] = e

    t = threading.Thread(target=body, name=f"netns-{name}")
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


def unique_name(prefix: str = "pyebpf") -> str:
    """A name no concurrent test process will pick: prefix, our pid, a random suffix."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"


class NetnsPair:
    """Two namespaces ``a`` and ``b`` joined by a veth pair (see the module docstring)."""

    def __init__(self, prefix: str = "pyebpf", ipv6: bool = True) -> None:
        base = unique_name(prefix)
        self.ns: dict[str, str] = {"a": f"{base}_a", "b": f"{base}_b"}
        # interface names are private to each namespace, but unique ones read better in
        # error messages and cannot clash if a test moves an interface out
        tag = secrets.token_hex(3)
        self.ifname: dict[str, str] = {"a": f"pva{tag}", "b": f"pvb{tag}"}
        self.addr4: dict[str, str] = dict(ADDR4)
        self.addr6: dict[str, str] = dict(ADDR6) if ipv6 else {}
        self.mac: dict[str, str] = dict(MAC)
        self.ifindex: dict[str, int] = {}
        self._made: list[str] = []
        try:
            self._setup(ipv6)
        except BaseException:
            self.close()
            raise

    def _setup(self, ipv6: bool) -> None:
        for side in ("a", "b"):
            _ip("netns", "add", self.ns[side])
            self._made.append(self.ns[side])
        _ip("-n", self.ns["a"], "link", "add", self.ifname["a"], "address", self.mac["a"],
            "type", "veth", "peer", "name", self.ifname["b"], "address", self.mac["b"],
            "netns", self.ns["b"])
        for side, other in (("a", "b"), ("b", "a")):
            n, dev = self.ns[side], self.ifname[side]
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "addr", "add", f"{self.addr4[side]}/24", "dev", dev)
            _ip("-n", n, "neigh", "replace", self.addr4[other], "lladdr", self.mac[other],
                "dev", dev, "nud", "permanent")
            if ipv6:
                _ip("-n", n, "addr", "add", f"{self.addr6[side]}/64", "dev", dev, "nodad")
                _ip("-n", n, "neigh", "replace", self.addr6[other], "lladdr",
                    self.mac[other], "dev", dev, "nud", "permanent")
            _ip("-n", n, "link", "set", dev, "up")
        for side in ("a", "b"):
            self.ifindex[side] = in_netns(self.ns[side],
                                          lambda s=side: socket.if_nametoindex(self.ifname[s]))
        # veth reports carrier once both ends are up; wait so the first datagram is not lost
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all("LOWER_UP" in _ip("-n", self.ns[s], "link", "show", self.ifname[s])
                   for s in ("a", "b")):
                break
            time.sleep(0.02)

    def __repr__(self) -> str:
        return f"NetnsPair({self.ns['a']} {self.ifname['a']} <-> {self.ns['b']} {self.ifname['b']})"

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def other(self, side: str) -> str:
        return "b" if side == "a" else "a"

    def enter(self, side: str) -> contextlib.AbstractContextManager[None]:
        """``with net.enter("a"):`` runs the block in netns a, on the current thread."""
        return enter_netns(self.ns[side])

    def run(self, side: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread inside the namespace of ``side``."""
        return in_netns(self.ns[side], fn)

    def ip(self, side: str, *args: str) -> str:
        """``ip -n <ns of side> args...``; its stdout."""
        return _ip("-n", self.ns[side], *args)

    def socket(self, side: str, family: int = socket.AF_INET,
               kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket created inside ``side``'s namespace (it stays there once made)."""
        with self.enter(side):
            return socket.socket(family, kind)

    def udp(self, src: str, dst: str, port: int, count: int = 1, *, v6: bool = False,
            payload: bytes = b"pyebpf", timeout: float = 2.0, src_port: int = 0) -> int:
        """Send ``count`` datagrams from ``src`` to ``dst``'s address on ``port``; return
        how many arrived at a socket bound there (0 if a program dropped them)."""
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        addrs = self.addr6 if v6 else self.addr4
        with self.socket(dst, fam) as rx, self.socket(src, fam) as tx:
            rx.bind((addrs[dst], port))
            tx.bind((addrs[src], src_port))
            for _ in range(count):
                tx.sendto(payload, (addrs[dst], port))
            got = 0
            rx.settimeout(timeout)  # each datagram gets the whole timeout: a loaded machine is slow
            while got < count:
                try:
                    rx.recv(65536)
                except TimeoutError:
                    break
                got += 1
            return got

    def send_udp(self, src: str, dst: str, port: int, count: int = 1, *, v6: bool = False,
                 payload: bytes = b"pyebpf") -> None:
        """Send without a receiver (the destination answers with ICMP port unreachable)."""
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        addrs = self.addr6 if v6 else self.addr4
        with self.socket(src, fam) as tx:
            for _ in range(count):
                tx.sendto(payload, (addrs[dst], port))

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them)."""
        errors = []
        while self._made:
            name = self._made.pop()
            try:
                _ip("netns", "del", name)
            except RuntimeError as e:
                errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """A fresh NetnsPair, deleted after the test (checks /run/netns was cleaned up)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    pair = NetnsPair()
    try:
        yield pair
    finally:
        pair.close()
    for name in pair.ns.values():
        assert not os.path.exists(f"/run/netns/{name}"), name
