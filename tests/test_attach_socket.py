"""attach_socket / attach_sockmap: a socket filter counts and drops UDP datagrams, a
sk_reuseport program steers between a reuseport group, sk_msg and sk_skb programs run on a
TCP pair in a sockmap through a link and through BPF_PROG_ATTACH; errors; no leaks."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from netattach import (
    ROOT,
    as_nobody,
    leak_check,
    load_sock,
    needs_root,
    pin_path,
    recv_exact,
    reset_globals,
    tcp_pair,
)

import pyebpf
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links import socket as S
from pyebpf.links.base import AttachError, Link
from pyebpf.sys import sock as SS
from pyebpf.uapi import AttachType, LinkType, ProgType


@pytest.fixture(scope="module")
def sock_obj() -> Iterator[pyebpf.Object]:
    if not ROOT:
        pytest.skip("needs root")
    with load_sock() as o:
        yield o


@pytest.fixture(scope="module")
def other_obj() -> Iterator[pyebpf.Object]:
    """A second copy: its programs are the same kind, with their own counters (for update)."""
    if not ROOT:
        pytest.skip("needs root")
    with load_sock() as o:
        yield o


@pytest.fixture
def leaks(sock_obj: pyebpf.Object, other_obj: pyebpf.Object) -> Iterator[None]:
    reset_globals(other_obj)  # before either snapshot: the first access maps the data pages
    reset_globals(sock_obj)
    with leak_check(other_obj), leak_check(sock_obj):
        yield


def _udp_rx() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    return rx


def _send(to: socket.socket, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for p in payloads:
            tx.sendto(p, to.getsockname())


def _recv_n(rx: socket.socket, n: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    rx.settimeout(timeout)
    for _ in range(n):
        try:
            out.append(rx.recv(100))
        except TimeoutError:
            break
        rx.settimeout(0.3)
    return out


# --- pure ----------------------------------------------------------------------------------------


def test_sockmap_attach_types() -> None:
    msg = SimpleNamespace(name="m", type=ProgType.SK_MSG, expected_attach_type=None, spec=None)
    skb = SimpleNamespace(name="s", type=ProgType.SK_SKB, expected_attach_type=None, spec=None)
    parser = SimpleNamespace(name="p", type=ProgType.SK_SKB,
                             expected_attach_type=AttachType.SK_SKB_STREAM_PARSER, spec=None)
    assert S.sockmap_attach_type(msg) == AttachType.SK_MSG_VERDICT
    assert S.sockmap_attach_type(parser) == AttachType.SK_SKB_STREAM_PARSER
    assert S.sockmap_attach_type(skb, "stream_verdict") == AttachType.SK_SKB_STREAM_VERDICT
    assert S.sockmap_attach_type(skb, "BPF_SK_SKB_VERDICT") == AttachType.SK_SKB_VERDICT
    assert S.sockmap_attach_type(skb, 4) == AttachType.SK_SKB_STREAM_PARSER
    with pytest.raises(OptionError, match=r"s: SEC\(\"sk_skb\"\) does not say which hook; pass attach_type"):
        S.sockmap_attach_type(skb)
    with pytest.raises(AttachError, match="m: a SK_MSG program cannot attach to a sockmap as SK_SKB_STREAM_PARSER"):
        S.sockmap_attach_type(msg, "stream_parser")
    with pytest.raises(OptionError, match="unknown sockmap attach type 'parser'"):
        S.sockmap_attach_type(skb, "parser")
    with pytest.raises(OptionError, match="unknown sockmap attach type 9999"):
        S.sockmap_attach_type(skb, 9999)
    with pytest.raises(AttachError, match="x: attach_sockmap needs a sk_msg or sk_skb program, not a XDP program"):
        S.sockmap_attach_type(SimpleNamespace(name="x", type=ProgType.XDP))


def test_socket_argument_checks() -> None:
    xdp = SimpleNamespace(name="x", type=ProgType.XDP, fd=-1)
    with pytest.raises(AttachError, match=r"x: attach_socket needs a socket filter \(SEC\(\"socket\"\)\) "
                       "or sk_reuseport program, not a XDP program"):
        S.attach_socket(xdp, 0)
    filt = SimpleNamespace(name="f", type=ProgType.SOCKET_FILTER, fd=-1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.close()
    with pytest.raises(OptionError, match="is closed"):
        S.attach_socket(filt, s)
    with pytest.raises(OptionError, match="needs a socket or a socket fd"):
        S.attach_socket(filt, "eth0")
    with pytest.raises(AttachError, match="cannot be a socket filter"):
        S.attach_socket(SimpleNamespace(name="r", type=ProgType.SK_REUSEPORT, fd=-1), 0, reuseport=False)


# --- socket filter -------------------------------------------------------------------------------


@needs_root
def test_socket_filter_counts_drops_detaches(sock_obj: pyebpf.Object, leaks: None) -> None:
    g = sock_obj.globals
    with _udp_rx() as rx:
        att = sock_obj.programs["sock_filter"].attach_socket(rx)
        assert isinstance(att, S.SocketAttachment) and att.fd is None and att.kind == "socket_filter"
        _send(rx, [b"12345678"] * 4)
        assert _recv_n(rx, 4) == [b"12345678"] * 4
        assert g["filter_calls"] == 4 and g["filter_bytes"] == 4 * (8 + 8)  # UDP header + payload
        g["filter_drop"] = 1
        _send(rx, [b"dropped"] * 2)
        assert _recv_n(rx, 2, timeout=0.5) == []  # returned 0: the socket never sees them
        assert g["filter_calls"] == 6
        g["filter_drop"] = 0
        with pytest.raises(AttachError, match="a socket_filter attachment is a socket option, not a bpf link"):
            att.info()
        att.close()
        assert att.closed and rx.fileno() >= 0  # the user's socket stays open
        att.close()
        _send(rx, [b"after"])
        assert _recv_n(rx, 1) == [b"after"] and g["filter_calls"] == 6


@needs_root
def test_socket_filter_update(sock_obj: pyebpf.Object, other_obj: pyebpf.Object, leaks: None) -> None:
    with _udp_rx() as rx, S.attach_socket(sock_obj.programs["sock_filter"], rx.fileno()) as att:
        _send(rx, [b"a"])
        assert _recv_n(rx, 1) == [b"a"]
        att.update(other_obj.programs["sock_filter"], old_prog=sock_obj.programs["sock_filter"])
        _send(rx, [b"b", b"c"])
        assert _recv_n(rx, 2) == [b"b", b"c"]
        assert sock_obj.globals["filter_calls"] == 1 and other_obj.globals["filter_calls"] == 2
        with pytest.raises(AttachError, match="old_prog is not the attached program"):
            att.update(sock_obj.programs["sock_filter"], old_prog=sock_obj.programs["sock_filter"])


@needs_root
def test_closed_socket_is_left_alone(sock_obj: pyebpf.Object, leaks: None) -> None:
    """close() after the socket went: nothing to detach, and a new socket that got the same
    fd number keeps its own filter."""
    prog = sock_obj.programs["sock_filter"]
    rx = _udp_rx()
    stale = S.attach_socket(prog, rx.fileno())  # by number: no reference to the object
    num = rx.fileno()
    rx.close()
    with _udp_rx() as rx2:
        if rx2.fileno() != num:  # make the number collide on purpose
            os.dup2(rx2.fileno(), num)
            rx2.close()
            rx2 = socket.socket(fileno=num)
            rx2.settimeout(2)
        with S.attach_socket(prog, rx2):
            stale.close()  # a different socket lives under that number now: left alone
            _send(rx2, [b"x"])
            assert _recv_n(rx2, 1) == [b"x"] and sock_obj.globals["filter_calls"] == 1
    by_object = S.attach_socket(prog, _udp_rx())  # the socket object is collected at once
    by_object.close()
    assert by_object.closed


@needs_root
def test_socket_errors(sock_obj: pyebpf.Object, leaks: None) -> None:
    prog = sock_obj.programs["sock_filter"]
    with open("/dev/null") as f, pytest.raises(AttachError, match=rf"sock_filter: fd {f.fileno()} is not a socket") as ei:
        S.attach_socket(prog, f)
    assert ei.value.errno == errno.ENOTSOCK
    with _udp_rx() as rx:
        rx.setsockopt(socket.SOL_SOCKET, SS.SO_LOCK_FILTER, 1)
        with pytest.raises(AttachError, match=r"no permission to change the filter of socket fd \d+: "
                           r"its filter is locked \(SO_LOCK_FILTER\)") as ei:
            S.attach_socket(prog, rx)
        assert ei.value.errno == errno.EPERM
    with pytest.raises(AttachError, match="on_msg: attach_socket needs a socket filter"):
        sock_obj.programs["on_msg"].attach_socket(0)


@needs_root
def test_socket_filter_unprivileged(sock_obj: pyebpf.Object, leaks: None) -> None:
    """The kernel checks privilege at load: a handed-over socket filter attaches unprivileged."""
    prog = sock_obj.programs["sock_filter"]

    def child() -> str:
        with _udp_rx() as rx, S.attach_socket(prog, rx):
            _send(rx, [b"n"])
            return repr(_recv_n(rx, 1))

    assert as_nobody(child) == ("ok", repr("[b'n']"))


# --- sk_reuseport --------------------------------------------------------------------------------


@needs_root
def test_reuseport_steers(sock_obj: pyebpf.Object, leaks: None) -> None:
    g, arr = sock_obj.globals, sock_obj.maps["reuse_socks"]
    socks: list[socket.socket] = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            socks.append(s)
        att = S.attach_socket(sock_obj.programs["reuse_select"], socks[0])
        assert att.kind == "sk_reuseport" and att.reuseport
        arr[0], arr[1] = socks
        for slot in (1, 0, 1, 1):
            g["reuse_slot"] = slot
            _send(socks[0], [b"to%d" % slot])
            assert _recv_n(socks[slot], 1) == [b"to%d" % slot]
        assert g["reuse_calls"] == 4
        att.close()
        _send(socks[0], [b"hash"])
        assert g["reuse_calls"] == 4  # detached: the kernel's hash picks now
        assert sum(len(_recv_n(s, 1, timeout=0.3)) for s in socks) == 1
    finally:
        for s in socks:
            s.close()


@needs_root
def test_reuseport_needs_so_reuseport(sock_obj: pyebpf.Object, leaks: None) -> None:
    with _udp_rx() as rx, pytest.raises(AttachError, match=r"reuse_select: cannot attach a reuseport "
                                        r"program to socket fd \d+: set SO_REUSEPORT on the socket") as ei:
        S.attach_socket(sock_obj.programs["reuse_select"], rx)
    assert ei.value.errno == errno.EINVAL


# --- sockmap -------------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("link", [True, False], ids=["link", "prog_attach"])
def test_sk_skb_parser_verdict(sock_obj: pyebpf.Object, leaks: None, link: bool) -> None:
    g, sm = sock_obj.globals, sock_obj.maps["pair_socks"]
    srv, cli, conn = tcp_pair()
    atts: list[Link] = []
    try:
        atts.append(sock_obj.programs["on_parse"].attach_sockmap(sm, link=link))
        atts.append(S.attach_sockmap(sock_obj.programs["on_verdict"], sm.fd, link=link))
        if link:
            assert all(isinstance(a, S.SockmapLink) and a.updatable for a in atts)
            info = atts[0].info()
            assert info.type == LinkType.SOCKMAP and info.prog_id == sock_obj.programs["on_parse"].id
            assert info.map_id == sm.id and info.attach_type == AttachType.SK_SKB_STREAM_PARSER
        else:
            assert all(isinstance(a, S.SockmapProgAttachment) and a.fd is None for a in atts)
        sm[0] = conn
        cli.sendall(b"hello world")
        assert recv_exact(conn, 11) == b"hello world"  # SK_PASS: the data still arrives
        assert g["parser_calls"] >= 1 and g["verdict_calls"] >= 1 and g["verdict_bytes"] == 11
    finally:
        for a in atts:
            a.close()
        for s in (cli, conn, srv):
            s.close()
    assert all(a.closed for a in atts)
    # detached: a new socket in the map runs nothing
    srv, cli, conn = tcp_pair()
    with srv, cli, conn:
        sm[0] = conn
        cli.sendall(b"xyz")
        assert recv_exact(conn, 3) == b"xyz" and g["verdict_bytes"] == 11
        sm.delete(0)


@needs_root
@pytest.mark.parametrize("link", [True, False], ids=["link", "prog_attach"])
def test_sk_msg_counts(sock_obj: pyebpf.Object, other_obj: pyebpf.Object, leaks: None, link: bool) -> None:
    sm = sock_obj.maps["pair_socks"]
    srv, cli, conn = tcp_pair()
    path = pin_path()
    try:
        with sock_obj.programs["on_msg"].attach_sockmap(sm, link=link) as att:
            sm[1] = cli
            cli.sendall(b"0123456789abc")
            assert recv_exact(conn, 13) == b"0123456789abc"
            assert sock_obj.globals["msg_bytes"] == 13
            if link:
                # a socket keeps the programs it found when it joined the map: the new
                # program runs for sockets added after the update
                att.update(other_obj.programs["on_msg"])
                srv2, cli2, conn2 = tcp_pair()
                with srv2, cli2, conn2:
                    sm[2] = cli2
                    cli2.sendall(b"12345")
                    assert recv_exact(conn2, 5) == b"12345"
                    sm.delete(2)
                assert other_obj.globals["msg_bytes"] == 5 and sock_obj.globals["msg_bytes"] == 13
                att.pin(path)
                att.unpin()
            else:
                with pytest.raises(AttachError, match="BPF_PROG_ATTACH and has no bpf link"):
                    att.pin(path)
        sm.delete(1)
    finally:
        for s in (cli, conn, srv):
            s.close()
    assert not os.path.exists(path)


@needs_root
def test_sk_skb_verdict_only(sock_obj: pyebpf.Object, leaks: None) -> None:
    sm = sock_obj.maps["pair_socks"]
    srv, cli, conn = tcp_pair()
    try:
        with S.attach_sockmap(sock_obj.programs["on_skb_verdict"], sm, "verdict") as att:
            assert "sk_skb_verdict" in att.target
            sm[2] = conn
            cli.sendall(b"abcd")
            assert recv_exact(conn, 4) == b"abcd" and sock_obj.globals["verdict_bytes"] == 4
            sm.delete(2)
    finally:
        for s in (cli, conn, srv):
            s.close()


@needs_root
def test_sockmap_errors(sock_obj: pyebpf.Object, leaks: None) -> None:
    sm = sock_obj.maps["pair_socks"]
    with pytest.raises(AttachError, match="on_msg: sk_msg/sk_skb programs attach to a sockmap or "
                       "sockhash, not to a reuseport_sockarray map"):
        S.attach_sockmap(sock_obj.programs["on_msg"], sock_obj.maps["reuse_socks"])
    with pytest.raises(AttachError, match="sock_filter: attach_sockmap needs a sk_msg or sk_skb program"):
        sock_obj.programs["sock_filter"].attach_sockmap(sm)
    with pytest.raises(AttachError, match="on_verdict: a SK_SKB program cannot attach to a sockmap as SK_MSG_VERDICT"):
        S.attach_sockmap(sock_obj.programs["on_verdict"], sm, AttachType.SK_MSG_VERDICT)
    with open("/dev/null") as f, pytest.raises(AttachError, match=rf"fd {f.fileno()} is not an open BPF map"):
        S.attach_sockmap(sock_obj.programs["on_msg"], f.fileno())
    with pytest.raises(OptionError, match="needs a sockmap/sockhash Map or its fd"):
        S.attach_sockmap(sock_obj.programs["on_msg"], "pair_socks")
    # a link holds its hook: a second program is refused, either way; a BPF_PROG_ATTACH
    # program is simply replaced (by a link or another PROG_ATTACH), as the kernel has it
    with S.attach_sockmap(sock_obj.programs["on_msg"], sm, link=True):
        for second in (False, True):
            with pytest.raises(AttachError, match="the sockmap already has a SK_MSG_VERDICT program "
                               "attached") as ei:
                S.attach_sockmap(sock_obj.programs["on_msg"], sm, link=second)
            assert ei.value.errno == errno.EBUSY
    with S.attach_sockmap(sock_obj.programs["on_msg"], sm, link=False) as first:
        S.attach_sockmap(sock_obj.programs["on_msg"], sm, link=True).close()
    assert first.closed  # its PROG_DETACH found nothing left to detach (ENOENT), quietly


# --- the syscall layer and the generic attach ----------------------------------------------------


@needs_root
def test_sys_sock_errors_and_trace(sock_obj: pyebpf.Object, leaks: None,
                                   caplog: pytest.LogCaptureFixture) -> None:
    pfd = sock_obj.programs["sock_filter"].fd.fileno()
    with open("/dev/null") as f, pytest.raises(SyscallError) as ei:
        SS.attach_bpf(f.fileno(), pfd)
    e = ei.value
    assert (e.errno, e.command, e.detail) == (errno.ENOTSOCK, "setsockopt", "SO_ATTACH_BPF")
    assert str(e).endswith("the file descriptor is not a socket")
    with _udp_rx() as rx:
        with pytest.raises(SyscallError, match="no program is attached to this socket"):
            SS.detach_bpf(rx.fileno())
        with pytest.raises(SyscallError, match="not a BPF socket filter program"):
            SS.attach_bpf(rx.fileno(), sock_obj.programs["on_msg"].fd.fileno())
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            sock_obj.programs["sock_filter"].attach(rx).close()  # the generic attach picks attach_socket
    assert re.search(rf"setsockopt\(\d+, 1, SO_ATTACH_BPF, {pfd}\) = 0", caplog.text)
    assert re.search(r"setsockopt\(\d+, 1, SO_DETACH_BPF, 0\) = 0", caplog.text)


@needs_root
def test_generic_attach_dispatch(sock_obj: pyebpf.Object, leaks: None) -> None:
    sm = sock_obj.maps["pair_socks"]
    with sock_obj.programs["on_parse"].attach(sm) as link:
        assert isinstance(link, S.SockmapLink) and link.info().attach_type == AttachType.SK_SKB_STREAM_PARSER
    with sock_obj.programs["on_verdict"].attach(sm, link=False) as att:
        assert isinstance(att, S.SockmapProgAttachment)
