"""pyebpf.links.xdp on the real kernel: XDP programs attached to one end of a veth pair
between two fresh network namespaces (tests/netns.py) count real UDP datagrams sent from
the other end. Bpf links and netlink, skb and drv modes, replace/update semantics,
queries, pins, every explained error, and no fd, link or attachment left behind."""

from __future__ import annotations

import atexit
import errno
import gc
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import kobjects
import pytest

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links.base import AttachError, Link
from pyebpf.links.xdp import XdpInfo, XdpLink, XdpNetlinkLink, attach_xdp, xdp_query
from pyebpf.sys import netlink as N
from pyebpf.uapi import LinkType

try:
    from tests.netns import NetnsPair
    from tests.nobody import run_as_nobody
    from tests.unitobj import unit_object
except ImportError:
    from netns import NetnsPair  # type: ignore[no-redef]
    from nobody import run_as_nobody  # type: ignore[no-redef]
    from unitobj import unit_object  # type: ignore[no-redef]

ROOT = os.geteuid() == 0

PORT = 4242
SLOT_A, SLOT_B = 0, 1


@pytest.fixture(scope="module")
def obj() -> Iterator[pyebpf.Object]:
    if not ROOT:
        pytest.skip("needs root (bpf, netns)")
    with pyebpf.load(unit_object("attach_net")) as o:
        o.globals["port"] = PORT
        yield o


@pytest.fixture
def net(obj: pyebpf.Object) -> Iterator[NetnsPair]:
    """A fresh veth pair; zeroed counters; afterwards no new fd or link of ours survives."""
    counts = obj.maps["counts"]
    for i in range(8):
        counts[i] = 0
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    with NetnsPair(prefix="pyebpfxdp") as pair:
        yield pair
        gc.collect()
        assert kobjects.fd_state() == fds
        deadline = time.monotonic() + 10
        while (left := kobjects.new_links(before, list(obj.programs))) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel releases a link after its last fd, sometimes deferred
        assert left == []
        with pair.enter("b"):  # the hook itself is clean again
            assert xdp_query(pair.ifname["b"]).attach_mode == 0


def eventually(cond: Any, timeout: float = 10.0) -> bool:
    """Poll ``cond()``: a closed link's fd is released when the last reference to its file
    goes, and another process reading our /proc/PID/fdinfo holds one for a moment."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def detached(ifname: str | int) -> bool:
    return eventually(lambda: xdp_query(ifname).prog_ids == {})


def count(obj: pyebpf.Object, slot: int) -> int:
    return int(obj.maps["counts"][slot])


def fire(net: NetnsPair, n: int = 5, v6: bool = False) -> None:
    """n datagrams a -> b; all must arrive (the programs pass everything)."""
    assert net.udp("a", "b", PORT, n, v6=v6) == n


# --- bpf links -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, shown", [("skb", "skb"), ("generic", "skb"), ("drv", "drv"),
                                         (None, "drv")])
def test_link_fires_in_each_mode(obj: pyebpf.Object, net: NetnsPair, mode: str | None,
                                 shown: str) -> None:
    prog = obj.programs["xdp_a"]
    ifname = net.ifname["b"]
    with net.enter("b"):
        link = prog.attach_xdp(ifname, mode=mode)
        try:
            assert type(link) is XdpLink and link.updatable and link.ifindex == net.ifindex["b"]
            assert link.mode == (None if mode is None else shown)
            q = xdp_query(ifname)
            assert isinstance(q, XdpInfo) and q.mode == shown and q.prog_ids == {shown: prog.id}
            assert q.prog_id == prog.id and q.id_for() == prog.id and q.id_for(shown) == prog.id
            assert q.id_for("hw") == 0 and q.ifindex == net.ifindex["b"]
            info = link.info()
            assert info.type == LinkType.XDP and info.prog_id == prog.id
            assert info.ifindex == net.ifindex["b"]
            fire(net, 5)
            fire(net, 3, v6=True)
            assert count(obj, SLOT_A) == 8
        finally:
            link.close()
        assert link.closed and detached(ifname)
        fire(net, 2)
        assert count(obj, SLOT_A) == 8  # detached: no longer counting


def test_attach_by_index_and_query_by_index(obj: pyebpf.Object, net: NetnsPair) -> None:
    with net.enter("b"), attach_xdp(obj.programs["xdp_a"], net.ifindex["b"], mode="skb") as link:
        assert xdp_query(net.ifindex["b"]).skb_prog_id == obj.programs["xdp_a"].id
        assert link.target == f"ifindex {net.ifindex['b']}"
        fire(net, 2)
        assert count(obj, SLOT_A) == 2


def test_query_reports_driver_features(obj: pyebpf.Object, net: NetnsPair) -> None:
    with N.NetlinkSocket(N.NETLINK_GENERIC) as s:
        if N.genl_family_id("netdev", s) is None:
            pytest.skip("kernel has no netdev generic netlink family (XDP features, Linux 6.3+)")
    with net.enter("b"):
        q = xdp_query(net.ifname["b"])
        # veth: native XDP, redirect target, multi-buffer frames
        assert {"basic", "redirect", "rx-sg"} <= set(q.features), q
        assert q.feature_flags & 1 and q.mode is None and q.prog_ids == {} and q.id_for() == 0
        assert xdp_query("lo").features == []  # no native XDP on loopback


def test_link_update_swaps_program(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    with net.enter("b"), attach_xdp(a, net.ifname["b"], mode="drv") as link:
        fire(net, 2)
        link.update(b)
        assert link.program is b and xdp_query(net.ifname["b"]).drv_prog_id == b.id
        fire(net, 3)
        assert (count(obj, SLOT_A), count(obj, SLOT_B)) == (2, 3)
        link.update(a, old_prog=b)  # BPF_F_REPLACE with the right old program
        assert xdp_query(net.ifname["b"]).drv_prog_id == a.id
        with pytest.raises(pyebpf.errors.SyscallError):
            link.update(b, old_prog=b)  # b is not the current program any more
        assert xdp_query(net.ifname["b"]).drv_prog_id == a.id


def test_pin_and_from_pin(obj: pyebpf.Object, net: NetnsPair) -> None:
    a = obj.programs["xdp_a"]
    path = f"/sys/fs/bpf/pyebpf_xdp_{os.getpid()}_{secrets.token_hex(4)}"
    with net.enter("b"):
        link = attach_xdp(a, net.ifname["b"], mode="skb")
        try:
            link.pin(path)
            link_id = link.id
        finally:
            link.close()
        try:
            # the pin keeps the attachment alive without any fd of ours
            assert xdp_query(net.ifname["b"]).skb_prog_id == a.id
            fire(net, 2)
            again = XdpLink.from_pin(path)
            assert isinstance(again, XdpLink) and again.id == link_id
            assert again.ifindex == net.ifindex["b"] and again.info().prog_id == a.id
            with XdpNetlinkLink.from_pin(path) as plain:  # netlink links are never pinned
                assert type(plain) is XdpLink and plain.id == link_id
            with XdpNetlinkLink.from_id(link_id) as plain:
                assert type(plain) is XdpLink and plain.info().prog_id == a.id
            again.unpin()
            again.close()
        finally:
            if os.path.exists(path):
                os.unlink(path)
        assert not os.path.exists(path)
        assert detached(net.ifname["b"])
        assert count(obj, SLOT_A) == 2


def test_link_holds_the_hook(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    with net.enter("b"), attach_xdp(a, net.ifname["b"], mode="skb") as link:
        for kw in ({}, {"netlink": True}, {"netlink": True, "replace": a}):
            with pytest.raises(AttachError) as ei:
                attach_xdp(b, net.ifname["b"], mode="skb", **kw)
            e = ei.value
            assert e.errno == errno.EBUSY and e.program == "xdp_b"
            assert f"held by bpf link id {link.id}" in str(e) and "Link.update" in str(e), e
        assert xdp_query(net.ifname["b"]).skb_prog_id == a.id


def test_native_and_generic_are_exclusive(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    with net.enter("b"), attach_xdp(a, net.ifname["b"], mode="skb"):
        for kw in ({}, {"netlink": True}):
            with pytest.raises(AttachError) as ei:
                attach_xdp(b, net.ifname["b"], mode="drv", **kw)
            assert ei.value.errno == errno.EEXIST
            msg = str(ei.value)
            assert "cannot be active at the same time" in msg and f"program id {a.id} (skb mode)" in msg


# --- netlink ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["skb", "drv"])
def test_netlink_fires_in_each_mode(obj: pyebpf.Object, net: NetnsPair, mode: str) -> None:
    a = obj.programs["xdp_a"]
    with net.enter("b"):
        link = a.attach_xdp(net.ifname["b"], mode=mode, netlink=True)
        try:
            assert type(link) is XdpNetlinkLink and link.fd is None and link.id is None
            assert not link.closed and link.mode == mode
            assert xdp_query(net.ifname["b"]).prog_ids == {mode: a.id}
            for what in (lambda: link.pin("/sys/fs/bpf/x"), link.info):
                with pytest.raises(AttachError, match="attached through netlink"):
                    what()
            fire(net, 4)
            assert count(obj, SLOT_A) == 4
            assert "xdp(netlink)" in repr(link)
        finally:
            link.close()
        assert link.closed and xdp_query(net.ifname["b"]).prog_ids == {}
        link.close()  # idempotent


def test_netlink_close_in_another_namespace(obj: pyebpf.Object, net: NetnsPair) -> None:
    """The detach goes to the namespace of the attach, wherever close() runs."""
    with net.enter("b"):
        link = attach_xdp(obj.programs["xdp_a"], net.ifname["b"], mode="skb", netlink=True)
    link.close()  # back in the test's own namespace
    with net.enter("b"):
        assert xdp_query(net.ifname["b"]).prog_ids == {}


def test_netlink_replace(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    ifname = net.ifname["b"]
    with net.enter("b"):
        la = attach_xdp(a, ifname, mode="skb", netlink=True)
        try:
            with pytest.raises(AttachError) as ei:  # UPDATE_IF_NOEXIST
                attach_xdp(b, ifname, mode="skb", netlink=True)
            assert ei.value.errno == errno.EBUSY
            msg = str(ei.value)
            assert f"program id {a.id} (skb mode)" in msg and "replace=" in msg
            assert "XDP program already attached" in msg  # the kernel's extended ack
            lb = attach_xdp(b, ifname, mode="skb", netlink=True, replace=a)
            try:
                assert xdp_query(ifname).skb_prog_id == b.id
                fire(net, 3)
                assert (count(obj, SLOT_A), count(obj, SLOT_B)) == (0, 3)
                la.close()  # a is no longer attached: closing its link leaves b alone
                assert xdp_query(ifname).skb_prog_id == b.id
                # replace= also takes a program id and a link
                lc = attach_xdp(a, ifname, mode="skb", netlink=True, replace=b.id)
                assert xdp_query(ifname).skb_prog_id == a.id
                ld = attach_xdp(b, ifname, mode="skb", netlink=True, replace=lc)
                assert xdp_query(ifname).skb_prog_id == b.id
                lc.close()
                ld.close()
                assert xdp_query(ifname).prog_ids == {}
            finally:
                lb.close()
        finally:
            la.close()


def test_netlink_replace_expects_the_current_program(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    with net.enter("b"), attach_xdp(a, net.ifname["b"], mode="drv", netlink=True):
        with pytest.raises(AttachError) as ei:
            attach_xdp(b, net.ifname["b"], mode="drv", netlink=True, replace=b)
        assert ei.value.errno == errno.EEXIST
        msg = str(ei.value)
        assert "not the expected one" in msg and f"program id {a.id}" in msg
        assert "Active program does not match expected" in msg
        assert xdp_query(net.ifname["b"]).drv_prog_id == a.id


def test_netlink_update(obj: pyebpf.Object, net: NetnsPair) -> None:
    a, b = obj.programs["xdp_a"], obj.programs["xdp_b"]
    with net.enter("b"):
        link = attach_xdp(a, net.ifname["b"], mode="skb", netlink=True)
        try:
            link.update(b)
            assert link.program is b and xdp_query(net.ifname["b"]).skb_prog_id == b.id
            fire(net, 2)
            assert count(obj, SLOT_B) == 2
            with pytest.raises(AttachError, match="not the expected one"):
                link.update(a, old_prog=a)
        finally:
            link.close()  # detaches b, the program it now owns
        assert xdp_query(net.ifname["b"]).prog_ids == {}


# --- errors ----------------------------------------------------------------------------------


def test_missing_interface(obj: pyebpf.Object, net: NetnsPair) -> None:
    a = obj.programs["xdp_a"]
    with net.enter("b"):
        for kw in ({}, {"netlink": True}):
            with pytest.raises(AttachError) as ei:
                attach_xdp(a, f"nope{os.getpid() % 10000}", **kw)
            assert ei.value.errno == errno.ENODEV
            assert "no network interface named" in str(ei.value)
            with pytest.raises(AttachError) as ei:
                attach_xdp(a, 0x7FFFFF, **kw)
            assert ei.value.errno in (errno.ENODEV, errno.EINVAL)
            assert f"no network interface ifindex {0x7FFFFF}" in str(ei.value)
        # the peer's name exists only in the other namespace
        with pytest.raises(AttachError, match="no network interface named"):
            attach_xdp(a, net.ifname["a"])
        with pytest.raises(AttachError, match="no network interface"):
            xdp_query("nope")
        with pytest.raises(AttachError, match="no network interface"):
            xdp_query(0x7FFFFF)


def test_wrong_program_type(obj: pyebpf.Object, net: NetnsPair) -> None:
    with net.enter("b"):
        for kw in ({}, {"netlink": True}):
            with pytest.raises(AttachError) as ei:
                attach_xdp(obj.programs["tc_in"], net.ifname["b"], **kw)
            assert ei.value.program == "tc_in"
            assert "sched_cls program cannot be attached" in str(ei.value)
            assert "needs an XDP program" in str(ei.value)


def test_mode_unsupported_by_driver(obj: pyebpf.Object, net: NetnsPair) -> None:
    a = obj.programs["xdp_a"]
    with net.enter("b"):
        for kw in ({}, {"netlink": True}):
            with pytest.raises(AttachError) as ei:  # loopback has no native XDP
                attach_xdp(a, "lo", mode="drv", **kw)
            assert ei.value.errno == errno.EOPNOTSUPP
            assert "does not support XDP in drv mode" in str(ei.value)
            with pytest.raises(AttachError) as ei:  # veth offloads nothing
                attach_xdp(a, net.ifname["b"], mode="hw", **kw)
            assert "hw (offload) mode" in str(ei.value)
        # generic XDP works anywhere, loopback included
        with attach_xdp(a, "lo", mode="skb"):
            assert xdp_query("lo").skb_prog_id == a.id
        assert detached("lo")


def test_no_permission(obj: pyebpf.Object, net: NetnsPair) -> None:
    """A netlink attach needs CAP_NET_ADMIN. BPF_LINK_CREATE checks no capability: holding
    the program fd (loaded by root) is the permission, so the link attach works as uid 65534."""
    a = obj.programs["xdp_a"]

    def attach(**kw: Any) -> Any:
        def body() -> Any:
            with attach_xdp(a, net.ifname["b"], mode="skb", **kw) as link:
                return link.info().prog_id
        return body

    with net.enter("b"):  # the forked child starts in this namespace
        status, detail = run_as_nobody(attach(netlink=True))
        assert status == "error", detail
        name, msg, err = detail
        assert name == "AttachError" and err == errno.EPERM, detail
        assert "no permission to attach XDP" in msg and "CAP_NET_ADMIN" in msg
        assert xdp_query(net.ifname["b"]).prog_ids == {}
        assert run_as_nobody(attach()) == ("ok", a.id)
        assert detached(net.ifname["b"])


def test_bad_options(obj: pyebpf.Object, net: NetnsPair) -> None:
    a = obj.programs["xdp_a"]
    ifname = net.ifname["b"]
    with net.enter("b"):
        with pytest.raises(OptionError, match="unknown XDP mode"):
            attach_xdp(a, ifname, mode="turbo")
        with pytest.raises(OptionError, match="needs netlink=True"):
            attach_xdp(a, ifname, replace=a)
        with pytest.raises(OptionError, match="only XDP mode flags"):
            attach_xdp(a, ifname, flags=1)
        with pytest.raises(OptionError, match="another XDP mode"):
            attach_xdp(a, ifname, mode="skb", flags=4)
        with pytest.raises(OptionError, match="only one XDP mode"):
            attach_xdp(a, ifname, flags=6)
        with pytest.raises(OptionError, match="name or an index"):
            attach_xdp(a, 1.5)  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="positive"):
            attach_xdp(a, -3)
        with pytest.raises(OptionError, match="replace= takes"):
            attach_xdp(a, ifname, netlink=True, replace="xdp_b")
        with pytest.raises(OptionError, match="no program with id"):
            attach_xdp(a, ifname, netlink=True, replace=0x7FFFFFF0)
        assert xdp_query(ifname).prog_ids == {}


def test_link_base_class_round_trip(obj: pyebpf.Object, net: NetnsPair) -> None:
    """A generic Link opened by id sees the same XDP link (Link.info details)."""
    with net.enter("b"), attach_xdp(obj.programs["xdp_a"], net.ifname["b"]) as link:
        with Link.from_id(link.id) as same:
            assert same.info().ifindex == net.ifindex["b"]


# --- life cycle of netlink attachments ---------------------------------------------------------


def test_netlink_attachment_undone_by_garbage_collection(obj: pyebpf.Object, net: NetnsPair) -> None:
    with net.enter("b"):
        attach_xdp(obj.programs["xdp_a"], net.ifname["b"], mode="skb", netlink=True)  # dropped at once
        gc.collect()
        assert xdp_query(net.ifname["b"]).prog_ids == {}


def test_netlink_attachment_undone_at_exit(obj: pyebpf.Object, net: NetnsPair) -> None:
    """A process that exits without closing leaves no XDP program or tc filter behind."""
    script = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import pyebpf
from netns import enter_netns
from pyebpf.links.xdp import attach_xdp
from pyebpf.links.tc import attach_tc
obj = pyebpf.load({str(unit_object("attach_net"))!r})
with enter_netns({net.ns["b"]!r}):
    keep = [attach_xdp(obj.programs["xdp_a"], {net.ifname["b"]!r}, mode="skb", netlink=True),
            attach_tc(obj.programs["tc_in"], {net.ifname["b"]!r})]
print(keep[0].program.id, flush=True)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().isdigit()
    with net.enter("b"):
        assert xdp_query(net.ifname["b"]).prog_ids == {}
        from pyebpf.links.tc import tc_query

        assert tc_query(net.ifname["b"]) == []


def test_forked_child_exit_leaves_parent_attachment(obj: pyebpf.Object, net: NetnsPair) -> None:
    a = obj.programs["xdp_a"]
    with net.enter("b"), attach_xdp(a, net.ifname["b"], mode="skb", netlink=True):
        pid = os.fork()
        if pid == 0:  # child: run the exit hooks as a normal exit would, then leave
            code = 0
            try:
                atexit._run_exitfuncs()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert xdp_query(net.ifname["b"]).skb_prog_id == a.id


# --- pure parts (no root) --------------------------------------------------------------------


def test_xdp_info_views() -> None:
    from pyebpf.links.xdp import _mode_flags

    assert [_mode_flags(m) for m in ("skb", "generic", "DRV", "native", "hw", "offload", None)] == \
        [2, 2, 4, 4, 8, 8, 0]
    with pytest.raises(OptionError):
        _mode_flags("fast")
    one = XdpInfo(3, N.XDP_ATTACHED_SKB, 7, skb_prog_id=7, feature_flags=1 | 32)
    assert one.mode == "skb" and one.prog_ids == {"skb": 7} and one.id_for() == 7
    assert one.id_for("generic") == 7 and one.id_for("drv") == 0
    assert one.features == ["basic", "rx-sg"]
    multi = XdpInfo(3, N.XDP_ATTACHED_MULTI, 0, drv_prog_id=5, hw_prog_id=6)
    assert multi.mode == "multi" and multi.prog_ids == {"drv": 5, "hw": 6}
    with pytest.raises(OptionError, match="several XDP modes"):
        multi.id_for()
    assert XdpInfo(3).mode is None and XdpInfo(3).prog_ids == {} and XdpInfo(3).features == []
    assert XdpInfo.from_state(N.XdpState(3, 2, 7, 0, 7, 0), 1, 0) == one.__class__(3, 2, 7, 0, 7, 0, 1, 0)
