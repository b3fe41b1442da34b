"""attach_lwt: an lwt_xmit program counts the packets of a route with a BPF encap in a
private network namespace (IPv4 and IPv6), the route goes on close; errors; no leaks."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from netattach import ROOT, as_nobody, leak_check, load_sock, needs_root
from netns import NetnsPair

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links import lwt as L
from pyebpf.links.base import AttachError
from pyebpf.uapi import ProgType

PORT = 4343


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
    with NetnsPair() as pair:
        yield pair


def _ns(net: NetnsPair, side: str = "b") -> str:
    return f"/run/netns/{net.ns[side]}"


def _routes(net: NetnsPair, *args: str) -> str:
    return " ".join(net.ip("b", *args, "route").split())  # iproute2 pads with double spaces


# --- pure ----------------------------------------------------------------------------------------


def test_parse_dest() -> None:
    assert str(L.parse_dest("10.1.2.0/24")) == "10.1.2.0/24"
    assert str(L.parse_dest("10.1.2.3")) == "10.1.2.3/32"
    assert str(L.parse_dest("fd00::/64")) == "fd00::/64"
    assert str(L.parse_dest("default")) == "0.0.0.0/0"
    with pytest.raises(OptionError, match=r"bad route destination '10.1.2.3/24': 10.1.2.3/24 has host bits set"):
        L.parse_dest("10.1.2.3/24")
    with pytest.raises(OptionError, match="bad route destination 'nowhere'"):
        L.parse_dest("nowhere")
    with pytest.raises(OptionError, match="must be an address or prefix string"):
        L.parse_dest(None)  # type: ignore[arg-type]


def test_hook_checks() -> None:
    xmit = SimpleNamespace(name="x", type=ProgType.LWT_XMIT, fd=-1)
    with pytest.raises(AttachError, match=r"x: a LWT_XMIT program cannot run at the lwt in hook \(it takes "
                       r"LWT_IN programs\); use hook='xmit'"):
        L.attach_lwt(xmit, "10.0.0.0/8", dev="lo", hook="in")
    with pytest.raises(OptionError, match="unknown lwt hook 'egress'"):
        L.attach_lwt(xmit, "10.0.0.0/8", dev="lo", hook="egress")
    with pytest.raises(AttachError, match="needs a lwt_in, lwt_out or lwt_xmit program, not a LWT_SEG6LOCAL "
                       "program .seg6local programs attach through an SRv6 End.BPF route"):
        L.attach_lwt(SimpleNamespace(name="s", type=ProgType.LWT_SEG6LOCAL, fd=-1), "10.0.0.0/8", dev="lo")
    with pytest.raises(OptionError, match="dev must be an interface name or index"):
        L.attach_lwt(xmit, "10.0.0.0/8", dev="")
    with pytest.raises(OptionError, match="dev must be an interface name or index, not -1"):
        L.attach_lwt(xmit, "10.0.0.0/8", dev=-1)


# --- firing --------------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_xmit_counts_route_goes(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None, v6: bool) -> None:
    dest = (net.addr6 if v6 else net.addr4)["a"]
    prog = sock_obj.programs["lwt_count"]
    with L.attach_lwt(prog, dest, dev=net.ifname["b"], netns=_ns(net)) as route:
        assert isinstance(route, L.LwtRoute) and route.fd is None and route.hook == "xmit"
        shown = _routes(net, "-6") if v6 else _routes(net)
        assert f"{dest} encap bpf xmit lwt_count dev {net.ifname['b']}" in shown
        # b -> a goes through the route: the program counts, BPF_OK lets the packets on
        assert net.udp("b", "a", PORT, 3, v6=v6) == 3
        assert sock_obj.globals["lwt_calls"] == 3
        assert net.udp("a", "b", PORT, 2, v6=v6) == 2  # a's routes have no encap
        assert sock_obj.globals["lwt_calls"] == 3
        with pytest.raises(AttachError, match="an lwt program is attached by a route, not a bpf link"):
            route.info()
    assert route.closed
    assert "encap bpf" not in (_routes(net, "-6") if v6 else _routes(net))
    assert net.udp("b", "a", PORT, 2, v6=v6) == 2 and sock_obj.globals["lwt_calls"] == 3


@needs_root
def test_from_inside_by_ifindex(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog = sock_obj.programs["lwt_count"]
    route = net.run("b", lambda: L.attach_lwt(prog, "10.77.0.0/16", dev=net.ifindex["b"]))
    with route:
        assert "10.77.0.0/16 encap bpf xmit lwt_count" in _routes(net)
        with net.socket("b") as tx:  # no neighbour answers, but the xmit hook runs first
            tx.sendto(b"x", ("10.77.1.1", PORT))
        assert sock_obj.globals["lwt_calls"] == 1
    assert "10.77.0.0/16" not in _routes(net)


@needs_root
def test_route_deleted_by_someone_else(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    route = L.attach_lwt(sock_obj.programs["lwt_count"], "10.78.0.0/16", dev=net.ifname["b"],
                         netns=_ns(net))
    net.ip("b", "route", "del", "10.78.0.0/16")
    route.close()  # nothing left to delete: quiet
    assert route.closed


# --- errors --------------------------------------------------------------------------------------


@needs_root
def test_errors(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog, ns = sock_obj.programs["lwt_count"], _ns(net)
    with pytest.raises(AttachError, match=rf"lwt_count: no network interface 'nope0' in network "
                       rf"namespace {ns}") as ei:
        L.attach_lwt(prog, "10.79.0.0/16", dev="nope0", netns=ns)
    assert ei.value.errno == errno.ENODEV
    with L.attach_lwt(prog, "10.79.0.0/16", dev=net.ifname["b"], netns=ns):
        with pytest.raises(AttachError, match=r"a route to 10.79.0.0/16 already exists in network "
                           rf"namespace {ns}; delete it") as ei:
            L.attach_lwt(prog, "10.79.0.0/16", dev=net.ifname["b"], netns=ns)
        assert ei.value.errno == errno.EEXIST
    net.ip("b", "link", "set", net.ifname["b"], "down")
    with pytest.raises(AttachError, match=rf"interface '{net.ifname['b']}' is down") as ei:
        L.attach_lwt(prog, "10.79.0.0/16", dev=net.ifname["b"], netns=ns)
    assert ei.value.errno == errno.ENETDOWN
    with pytest.raises(AttachError, match="sock_filter: attach_lwt needs a lwt_in, lwt_out or lwt_xmit "
                       "program, not a SOCKET_FILTER program"):
        L.attach_lwt(sock_obj.programs["sock_filter"], "10.79.0.0/16", dev="lo")
    with pytest.raises(AttachError, match=r"cannot open network namespace /run/netns/pyebpf_gone"):
        L.attach_lwt(prog, "10.79.0.0/16", dev="lo", netns=f"pyebpf_gone_{os.getpid()}")


@needs_root
def test_no_permission(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog, name = sock_obj.programs["lwt_count"], net.ns["b"]

    def enter() -> None:  # as root, before dropping privileges: the child then acts in b
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        from pyebpf.sys.sock import setns
        setns(fd)
        os.close(fd)

    got = as_nobody(lambda: L.attach_lwt(prog, "10.80.0.0/16", dev=net.ifname["b"]), before=enter)
    assert got[:2] == ("error", "AttachError") and got[3] == errno.EPERM, got
    assert "lwt_count: no permission to add a route (RTM_NEWROUTE: EPERM): needs CAP_NET_ADMIN" in got[2]
    assert "10.80.0.0" not in _routes(net)
    assert socket.if_nametoindex("lo") == 1  # the parent stayed in its own namespace


@needs_root
def test_generic_attach_dispatch(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    with sock_obj.programs["lwt_count"].attach("10.81.0.0/16", dev=net.ifname["b"], netns=_ns(net)) as r:
        assert isinstance(r, L.LwtRoute) and "10.81.0.0/16 encap bpf xmit" in _routes(net)
    assert "10.81.0.0/16" not in _routes(net)
