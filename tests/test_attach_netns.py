"""attach_netns: sk_lookup steering and a flow dissector firing for real traffic in private
network namespaces, through links (update, pin, detach) and BPF_PROG_ATTACH; errors."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import kobjects
import pytest
from netattach import ROOT, as_nobody, leak_check, load_sock, needs_root, pin_path
from netns import NetnsPair

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links import netns as N
from pyebpf.links.base import AttachError, Link
from pyebpf.uapi import AttachType, LinkType, ProgType

LOOKUP_PORT, TARGET_PORT, FLOW_PORT = 7777, 8888, 4242


@pytest.fixture(scope="module")
def sock_obj() -> Iterator[pyebpf.Object]:
    if not ROOT:
        pytest.skip("needs root")
    with load_sock() as o:
        yield o


@pytest.fixture
def leaks(sock_obj: pyebpf.Object) -> Iterator[None]:
    with leak_check(sock_obj):
        yield


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    if not ROOT:
        pytest.skip("needs root")
    with NetnsPair(ipv6=False) as pair:
        yield pair


def _ns(net: NetnsPair, side: str = "b") -> str:
    return f"/run/netns/{net.ns[side]}"


# --- pure: argument checks that need no kernel ---------------------------------------------------


def test_wrong_program_type_is_explained() -> None:
    fake = SimpleNamespace(name="xdp_prog", type=ProgType.XDP, fd=-1)
    with pytest.raises(AttachError, match=r"xdp_prog: attach_netns needs a sk_lookup or flow_dissector program, not a XDP"):
        N.attach_netns(fake, "/proc/self/ns/net")


def test_sk_lookup_has_no_prog_attach() -> None:
    fake = SimpleNamespace(name="lk", type=ProgType.SK_LOOKUP, fd=-1)
    with pytest.raises(AttachError, match="sk_lookup programs attach only through a bpf link"):
        N.attach_netns(fake, None, link=False)


def test_missing_netns_path() -> None:
    with pytest.raises(AttachError, match=r"cannot open network namespace /run/netns/pyebpf_none_\w+: "
                       r"No such file or directory \(named namespaces live in /run/netns"):
        N.open_netns(f"pyebpf_none_{os.getpid()}")


def test_not_a_netns() -> None:
    with pytest.raises(AttachError, match=r"/etc/hostname is not a network namespace"):
        N.open_netns("/etc/hostname")
    with pytest.raises(AttachError, match=r"/proc/self/ns/uts is not a network namespace"):
        N.open_netns("/proc/self/ns/uts")
    with pytest.raises(OptionError, match="netns must be a path"):
        N.open_netns(3.5)
    with pytest.raises(OptionError, match="unknown netns hook"):
        N.netns_prog_ids(None, "xdp")


def test_open_netns_forms() -> None:
    mine = os.stat("/proc/thread-self/ns/net").st_ino
    for arg in (None, "/proc/self/ns/net"):
        fd, _ = N.open_netns(arg)
        with fd:
            assert os.fstat(fd.fileno()).st_ino == mine
    raw = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        fd, label = N.open_netns(raw)
        with fd:  # a duplicate: the caller's fd stays its own
            assert fd.fileno() != raw and label == f"network namespace fd {raw}"
        os.fstat(raw)
    finally:
        os.close(raw)


# --- sk_lookup -----------------------------------------------------------------------------------


def _steer_setup(obj: pyebpf.Object, net: NetnsPair) -> socket.socket:
    rx = net.socket("b")
    rx.bind((net.addr4["b"], TARGET_PORT))
    rx.settimeout(2)
    obj.maps["lookup_socks"][0] = rx
    obj.globals["lookup_port"] = LOOKUP_PORT
    return rx


def _unsteer(obj: pyebpf.Object, rx: socket.socket) -> None:
    # closing the socket takes it out of the sockmap; deleting an empty slot is EINVAL
    obj.maps["lookup_socks"].delete(0)
    rx.close()


def _send(net: NetnsPair, n: int, tag: bytes = b"d") -> None:
    net.send_udp("a", "b", LOOKUP_PORT, n, payload=tag)


def _recv_all(rx: socket.socket, n: int, timeout: float = 2.0) -> list[bytes]:
    out = []
    rx.settimeout(timeout)
    for _ in range(n):
        try:
            out.append(rx.recv(100))
        except TimeoutError:
            break
        rx.settimeout(0.3)
    return out


@needs_root
def test_sk_lookup_link_steers_update_pin(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    rx = _steer_setup(sock_obj, net)
    steer, passthru = sock_obj.programs["lookup_steer"], sock_obj.programs["lookup_pass"]
    path = pin_path()
    try:
        with sock_obj.programs["lookup_steer"].attach_netns(_ns(net)) as link:
            assert isinstance(link, N.NetnsLink) and link.updatable
            info = link.info()
            assert info.type == LinkType.NETNS and info.prog_id == steer.id
            assert info.netns_ino == os.stat(_ns(net)).st_ino
            assert info.attach_type == AttachType.SK_LOOKUP
            assert N.netns_prog_ids(_ns(net), "sk_lookup") == [steer.id]
            _send(net, 3)
            assert _recv_all(rx, 3) == [b"d"] * 3  # sent to :7777, delivered on :8888
            assert sock_obj.globals["lookup_hits"] == 3

            link.update(passthru)  # BPF_LINK_UPDATE: nothing steers any more
            assert link.info().prog_id == passthru.id
            _send(net, 1)
            assert _recv_all(rx, 1, timeout=0.5) == []
            assert sock_obj.globals["lookup_passes"] == 1 and sock_obj.globals["lookup_hits"] == 3
            link.update(steer, old_prog=passthru)

            link.pin(path)
            link_id = link.id
        # closed, but the pin keeps it attached
        _send(net, 1, b"p")
        assert _recv_all(rx, 1) == [b"p"]
        with Link.from_pin(path) as pinned:
            assert pinned.id == link_id
            pinned.unpin()
            assert not os.path.exists(path)
        _send(net, 1, b"gone")
        assert _recv_all(rx, 1, timeout=0.5) == []
        assert N.netns_prog_ids(_ns(net), "sk_lookup") == []
    finally:
        if os.path.exists(path):
            os.unlink(path)
        _unsteer(sock_obj, rx)


@needs_root
def test_sk_lookup_detach_keeps_fd(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    rx = _steer_setup(sock_obj, net)
    try:
        with N.attach_netns(sock_obj.programs["lookup_steer"], net.ns["b"]) as link:  # a bare name
            link.detach()
            assert not link.closed
            _send(net, 1)
            assert _recv_all(rx, 1, timeout=0.5) == []
            assert N.netns_prog_ids(_ns(net), sock_obj.programs["lookup_steer"]) == []
    finally:
        _unsteer(sock_obj, rx)


@needs_root
def test_attach_in_own_netns_by_default(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog = sock_obj.programs["lookup_pass"]
    link = net.run("b", lambda: N.attach_netns(prog))  # None: the calling thread's namespace
    with link:
        assert link.info().netns_ino == os.stat(_ns(net)).st_ino
        assert "caller's network namespace" in link.target


# --- flow dissector ------------------------------------------------------------------------------


def _dissect_traffic(obj: pyebpf.Object, net: NetnsPair, n: int = 3) -> int:
    """Datagrams a->b that b's flow dissector saw (b has an ip rule on the UDP port, so its
    routing dissects each packet: fib rules with ipproto/dport match on flow keys)."""
    before = obj.globals["flow_port_hits"]
    assert net.udp("a", "b", FLOW_PORT, n) == n  # BPF_OK: the packets still arrive
    return int(obj.globals["flow_port_hits"] - before)


@pytest.fixture
def dissect_net(net: NetnsPair, sock_obj: pyebpf.Object, leaks: None) -> NetnsPair:
    net.ip("b", "rule", "add", "pref", "100", "ipproto", "udp", "dport", str(FLOW_PORT),
           "table", "main")
    sock_obj.globals["flow_port"] = FLOW_PORT
    return net


@needs_root
def test_flow_dissector_link_fires(sock_obj: pyebpf.Object, dissect_net: NetnsPair, leaks: None) -> None:
    net, prog = dissect_net, sock_obj.programs["dissect"]
    assert _dissect_traffic(sock_obj, net) == 0  # nothing attached yet
    with N.attach_netns(prog, _ns(net)) as link:
        assert link.info().attach_type == AttachType.FLOW_DISSECTOR
        assert N.netns_prog_ids(_ns(net), prog) == [prog.id]
        assert _dissect_traffic(sock_obj, net) >= 3
        # only one flow dissector per namespace, and links and PROG_ATTACH do not mix
        with pytest.raises(AttachError, match="a flow dissector is already attached there") as ei:
            N.attach_netns(prog, _ns(net), link=False)
        assert ei.value.errno == errno.EEXIST
        with pytest.raises(AttachError, match="already attached") as ei:
            N.attach_netns(prog, _ns(net))
    assert N.netns_prog_ids(_ns(net), prog) == []
    assert _dissect_traffic(sock_obj, net) == 0


@needs_root
def test_flow_dissector_prog_attach(sock_obj: pyebpf.Object, dissect_net: NetnsPair, leaks: None) -> None:
    net, prog = dissect_net, sock_obj.programs["dissect"]
    att = prog.attach_netns(_ns(net), link=False)
    try:
        assert isinstance(att, N.NetnsProgAttachment) and att.fd is None and not att.closed
        assert N.netns_prog_ids(_ns(net), "flow_dissector") == [prog.id]
        assert N.netns_prog_ids(None, "flow_dissector") == []  # the attach went to b, not here
        assert _dissect_traffic(sock_obj, net) >= 3
        with pytest.raises(AttachError, match="BPF_PROG_ATTACH and has no bpf link"):
            att.info()
        with pytest.raises(AttachError, match="has no bpf link"):
            att.pin(pin_path())
    finally:
        att.close()
    assert att.closed and "closed" in repr(att)
    att.close()  # idempotent
    assert N.netns_prog_ids(_ns(net), "flow_dissector") == []
    assert _dissect_traffic(sock_obj, net) == 0


@needs_root
def test_flow_dissector_test_run(sock_obj: pyebpf.Object) -> None:
    """The program's dissection itself, through BPF_PROG_TEST_RUN (flow keys come back)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, socket.inet_aton("10.0.0.1"),
                     socket.inet_aton("10.0.0.2"))
    udp = struct.pack("!HHHH", 1111, FLOW_PORT, 8, 0)
    frame = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + ip + udp
    r = sock_obj.programs["dissect"].test_run(frame)
    assert r.retval == 0  # BPF_OK
    keys = r.data_out  # the kernel returns struct bpf_flow_keys (56 bytes) as the output data
    assert len(keys) == 56
    nhoff, thoff = struct.unpack_from("<HH", keys, 0)
    ip_proto = keys[9]
    sport, dport = struct.unpack_from("!HH", keys, 12)
    assert (nhoff, thoff, ip_proto, sport, dport) == (14, 34, 17, 1111, FLOW_PORT)


# --- errors with the kernel ----------------------------------------------------------------------


@needs_root
def test_wrong_type_real_program(sock_obj: pyebpf.Object, leaks: None) -> None:
    with pytest.raises(AttachError, match="sock_filter: attach_netns needs a sk_lookup or flow_dissector "
                       "program, not a SOCKET_FILTER program"):
        sock_obj.programs["sock_filter"].attach_netns(None)


def _capeff() -> str:
    with open("/proc/self/status") as f:
        return f.read().split("CapEff:")[1].split()[0]


@needs_root
def test_unprivileged(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    """The kernel checks privilege when a program loads, not when a program fd someone
    handed over is linked to a namespace; the legacy flow dissector attach must enter the
    namespace, and setns needs CAP_SYS_ADMIN."""
    ns = _ns(net)
    assert as_nobody(_capeff) == ("ok", repr("0" * 16))
    lookup, dissect = sock_obj.programs["lookup_pass"], sock_obj.programs["dissect"]
    assert as_nobody(lambda: N.attach_netns(lookup, ns).close() or "linked") == ("ok", "'linked'")
    got = as_nobody(lambda: N.attach_netns(dissect, ns, link=False))
    assert got[:2] == ("error", "AttachError") and got[3] == errno.EPERM, got
    assert f"dissect: no permission to enter network namespace {ns} (setns: EPERM)" in got[2]
    assert "CAP_SYS_ADMIN" in got[2]
    assert N.netns_prog_ids(ns, "flow_dissector") == []


@needs_root
def test_no_leftovers_after_close() -> None:
    """A fresh object attached both ways and closed leaves no program, map or link behind."""
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    with NetnsPair(ipv6=False) as net, load_sock() as obj:
        names = list(obj.programs) + list(obj.maps)
        link = N.attach_netns(obj.programs["lookup_steer"], _ns(net))
        att = N.attach_netns(obj.programs["dissect"], _ns(net), link=False)
        link.close()
        att.close()
    assert kobjects.fd_state() == fds
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


@needs_root
def test_generic_attach_dispatch(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog = sock_obj.programs["lookup_pass"]
    with prog.attach(_ns(net)) as link:  # sk_lookup: the generic attach goes to attach_netns
        assert isinstance(link, N.NetnsLink) and link.info().prog_id == prog.id
