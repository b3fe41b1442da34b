"""pyebpf.links.tc on the real kernel: tcx links and legacy cls_bpf filters on a veth pair
between two fresh network namespaces (tests/netns.py), counting real UDP datagrams.
Ordering (before/after), revisions, updates, pins, the clsact qdisc's life cycle,
every explained error, and no fd, link, filter or qdisc left behind."""

from __future__ import annotations

import errno
import gc
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import kobjects
import pytest

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links.base import AttachError
from pyebpf.links.tc import TcLink, TcxLink, attach_tc, attach_tcx, tc_query, tcx_query
from pyebpf.sys import netlink as N
from pyebpf.uapi import AttachType, LinkType

try:
    from tests.netns import NetnsPair
    from tests.nobody import run_as_nobody
    from tests.unitobj import unit_object
except ImportError:
    from netns import NetnsPair  # type: ignore[no-redef]
    from nobody import run_as_nobody  # type: ignore[no-redef]
    from unitobj import unit_object  # type: ignore[no-redef]

ROOT = os.geteuid() == 0

PORT = 4343
SLOT_TC_IN, SLOT_TC_OUT, SLOT_TC_IN2, SLOT_TC_PLAIN = 2, 3, 4, 5


@pytest.fixture(scope="module")
def obj() -> Iterator[pyebpf.Object]:
    if not ROOT:
        pytest.skip("needs root (bpf, netns)")
    with pyebpf.load(unit_object("attach_net")) as o:
        o.globals["port"] = PORT
        yield o


def _clean(net: NetnsPair, side: str) -> None:
    with net.enter(side):
        ifname = net.ifname[side]
        for d in ("ingress", "egress"):
            assert tcx_query(ifname, d)[:2] == ([], [])
        assert "clsact" not in qdiscs(net, side)


@pytest.fixture
def net(obj: pyebpf.Object) -> Iterator[NetnsPair]:
    """A fresh veth pair; zeroed counters; afterwards no new fd or link of ours survives
    and both interfaces are back to no tcx program and no clsact qdisc."""
    counts = obj.maps["counts"]
    for i in range(8):
        counts[i] = 0
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    with NetnsPair(prefix="pyebpftc") as pair:
        yield pair
        gc.collect()
        assert kobjects.fd_state() == fds
        deadline = time.monotonic() + 10
        while (left := kobjects.new_links(before, list(obj.programs))) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel releases a link after its last fd, sometimes deferred
        assert left == []
        _clean(pair, "a")
        _clean(pair, "b")


def qdiscs(net: NetnsPair, side: str) -> list[str]:
    with net.enter(side), N.NetlinkSocket() as s:
        return [q.kind for q in N.qdisc_list(net.ifindex[side], s)]


def eventually(cond: Any, timeout: float = 10.0) -> bool:
    """Poll ``cond()``: a closed link's fd is released when the last reference to its file
    goes, and another process reading our /proc/PID/fdinfo holds one for a moment."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def tcx_ids(ifname: str | int, direction: str = "ingress") -> list[int]:
    return tcx_query(ifname, direction)[0]


def count(obj: pyebpf.Object, slot: int) -> int:
    return int(obj.maps["counts"][slot])


def fire(net: NetnsPair, n: int = 5, v6: bool = False) -> None:
    assert net.udp("a", "b", PORT, n, v6=v6) == n


# --- tcx -------------------------------------------------------------------------------------


def test_tcx_ingress_and_egress(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    with net.enter("b"):
        lin = p["tc_in"].attach_tcx(net.ifname["b"])  # direction from SEC("tc/ingress")
    with net.enter("a"):
        lout = attach_tcx(p["tc_out"], net.ifname["a"])  # SEC("tc/egress")
    try:
        assert type(lin) is TcxLink and lin.updatable and lin.direction == "ingress"
        assert lout.direction == "egress" and lout.ifindex == net.ifindex["a"]
        info = lin.info()
        assert info.type == LinkType.TCX and info.prog_id == p["tc_in"].id
        assert info.ifindex == net.ifindex["b"] and info.attach_type == AttachType.TCX_INGRESS
        assert lout.info().attach_type == AttachType.TCX_EGRESS
        with net.enter("b"):
            progs, links, rev = tcx_query(net.ifname["b"], "ingress")
            assert (progs, links) == ([p["tc_in"].id], [lin.id]) and rev >= 2
            assert tcx_query(net.ifindex["b"], "egress")[:2] == ([], [])
        fire(net, 5)
        fire(net, 2, v6=True)
        assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_OUT)) == (7, 7)
    finally:
        lin.close()
        lout.close()
    assert net.run("b", lambda: eventually(lambda: tcx_ids(net.ifname["b"]) == []))
    assert net.run("a", lambda: eventually(lambda: tcx_ids(net.ifname["a"], "egress") == []))
    fire(net, 1)
    assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_OUT)) == (7, 7)


def test_tcx_before_after_ordering(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    ifname = net.ifname["b"]
    links: list[TcxLink] = []
    with net.enter("b"):
        try:
            links.append(attach_tcx(p["tc_in"], ifname))
            links.append(attach_tcx(p["tc_in2"], ifname, before=links[0]))  # a Link: BPF_F_LINK
            assert tcx_query(ifname, "ingress")[0] == [p["tc_in2"].id, p["tc_in"].id]
            links.append(attach_tcx(p["tc_plain"], ifname, "ingress", after=p["tc_in2"]))  # a Program
            assert tcx_query(ifname, "ingress")[0] == [p["tc_in2"].id, p["tc_plain"].id, p["tc_in"].id]
            links.append(attach_tcx(p["tc_out"], ifname, "ingress", before=True))  # first
            ids, link_ids, _ = tcx_query(ifname, "ingress")
            assert ids == [p["tc_out"].id, p["tc_in2"].id, p["tc_plain"].id, p["tc_in"].id]
            assert link_ids == [links[3].id, links[1].id, links[2].id, links[0].id]
            # by program id (BPF_F_ID), and last
            links.pop(2).close()
            assert eventually(lambda: p["tc_plain"].id not in tcx_ids(ifname))
            links.append(attach_tcx(p["tc_plain"], ifname, "ingress", after=True))
            assert tcx_query(ifname, "ingress")[0][-1] == p["tc_plain"].id
            links.pop().close()
            assert eventually(lambda: p["tc_plain"].id not in tcx_ids(ifname))
            links.append(attach_tcx(p["tc_plain"], ifname, "ingress", before=p["tc_in"].id))
            assert tcx_query(ifname, "ingress")[0] == [p["tc_out"].id, p["tc_in2"].id,
                                                       p["tc_plain"].id, p["tc_in"].id]
            # every program returns TC_ACT_UNSPEC, so each one hands the packet on
            fire(net, 3)
            assert [count(obj, s) for s in (SLOT_TC_OUT, SLOT_TC_IN2, SLOT_TC_PLAIN, SLOT_TC_IN)] == [3] * 4
        finally:
            for link in links:
                link.close()


def test_tcx_update(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    with net.enter("b"), attach_tcx(p["tc_in"], net.ifname["b"]) as link:
        rev = tcx_query(net.ifname["b"], "ingress")[2]
        link.update(p["tc_plain"])
        progs, _, rev2 = tcx_query(net.ifname["b"], "ingress")
        assert progs == [p["tc_plain"].id] and rev2 > rev
        fire(net, 2)
        assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_PLAIN)) == (0, 2)


def test_tcx_expected_revision(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    ifname = net.ifname["b"]
    with net.enter("b"):
        rev = tcx_query(ifname, "ingress")[2]
        with attach_tcx(p["tc_in"], ifname, expected_revision=rev):
            with pytest.raises(AttachError) as ei:  # the hook moved on since rev
                attach_tcx(p["tc_in2"], ifname, expected_revision=rev)
            assert ei.value.errno == errno.ESTALE
            assert f"expected_revision={rev} does not match" in str(ei.value)
            assert f"({rev + 1})" in str(ei.value)
            now = tcx_query(ifname, "ingress")[2]
            with attach_tcx(p["tc_in2"], ifname, expected_revision=now):
                assert len(tcx_query(ifname, "ingress")[0]) == 2


def test_tcx_pin_and_from_pin(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    path = f"/sys/fs/bpf/pyebpf_tcx_{os.getpid()}_{secrets.token_hex(4)}"
    with net.enter("b"):
        link = attach_tcx(p["tc_in"], net.ifname["b"])
        try:
            link.pin(path)
        finally:
            link.close()
        try:
            fire(net, 2)
            assert count(obj, SLOT_TC_IN) == 2  # the pin keeps it attached
            again = TcxLink.from_pin(path)
            assert isinstance(again, TcxLink) and again.direction == "ingress"
            assert again.ifindex == net.ifindex["b"] and again.info().prog_id == p["tc_in"].id
            again.unpin()
            again.close()
        finally:
            if os.path.exists(path):
                os.unlink(path)
        assert eventually(lambda: tcx_ids(net.ifname["b"]) == [])


def test_tcx_errors(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    ifname = net.ifname["b"]
    with net.enter("b"):
        with attach_tcx(p["tc_in"], ifname):
            with pytest.raises(AttachError) as ei:
                attach_tcx(p["tc_in"], ifname)
            assert ei.value.errno == errno.EEXIST and "already attached" in str(ei.value)
            with pytest.raises(AttachError) as ei:  # tc_in2 is not on the hook
                attach_tcx(p["tc_plain"], ifname, "ingress", before=p["tc_in2"])
            assert ei.value.errno == errno.ENOENT
            assert "given as before=/after= is not attached" in str(ei.value)
        with pytest.raises(AttachError) as ei:
            attach_tcx(p["xdp_a"], ifname, "ingress")
        assert "xdp program cannot be attached" in str(ei.value) and ei.value.program == "xdp_a"
        with pytest.raises(AttachError) as ei:
            attach_tcx(p["tc_in"], f"nope{os.getpid() % 10000}")
        assert ei.value.errno == errno.ENODEV and "no network interface named" in str(ei.value)
        with pytest.raises(AttachError) as ei:
            attach_tcx(p["tc_in"], 0x7FFFFF)
        assert ei.value.errno == errno.ENODEV and "no network interface ifindex" in str(ei.value)
        with pytest.raises(OptionError, match="names none"):
            attach_tcx(p["tc_plain"], ifname)  # SEC("tc") has no direction
        with pytest.raises(OptionError, match="'ingress' or 'egress'"):
            attach_tcx(p["tc_in"], ifname, "sideways")
        with pytest.raises(OptionError, match="not both"):
            attach_tcx(p["tc_in"], ifname, before=True, after=True)
        with pytest.raises(OptionError, match="before=/after= take"):
            attach_tcx(p["tc_in"], ifname, before="tc_in2")
        with pytest.raises(AttachError, match="no network interface"):
            tcx_query("nope", "ingress")


def test_tcx_link_needs_only_the_program_fd(obj: pyebpf.Object, net: NetnsPair) -> None:
    """BPF_LINK_CREATE checks no capability: the program fd root loaded is the permission."""
    p = obj.programs

    def body() -> Any:
        with attach_tcx(p["tc_in"], net.ifname["b"]) as link:
            return link.info().prog_id

    with net.enter("b"):
        assert run_as_nobody(body) == ("ok", p["tc_in"].id)
        assert eventually(lambda: tcx_ids(net.ifname["b"]) == [])


# --- legacy cls_bpf --------------------------------------------------------------------------


def test_tc_filters_fire_and_go(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    with net.enter("b"):
        tin = p["tc_in"].attach_tc(net.ifname["b"])  # Program.attach_tc: direction from SEC()
    with net.enter("a"):
        tout = p["tc_out"].attach_tc(net.ifname["a"])
    try:
        assert type(tin) is TcLink and tin.fd is None and tin.created_qdisc and not tin.closed
        assert (tin.direction, tout.direction) == ("ingress", "egress")
        assert tin.handle and tin.priority and tin.filter.prog_id == p["tc_in"].id
        assert "clsact" in qdiscs(net, "b") and "clsact" in qdiscs(net, "a")
        with net.enter("b"):
            (f,) = tc_query(net.ifname["b"], "ingress")
            assert (f.handle, f.priority, f.prog_id, f.kind) == (tin.handle, tin.priority, p["tc_in"].id, "bpf")
            assert f.name == f"tc_in:[{p['tc_in'].id}]" and f.direct_action and len(f.tag) == 16
            assert tc_query(net.ifname["b"], "egress") == []
        with net.enter("a"):
            assert [f.prog_id for f in tc_query(net.ifname["a"], "egress")] == [p["tc_out"].id]
        fire(net, 4)
        fire(net, 2, v6=True)
        assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_OUT)) == (6, 6)
        for what in (lambda: tin.pin("/sys/fs/bpf/x"), tin.info):
            with pytest.raises(AttachError, match="legacy tc filter has no bpf link"):
                what()
    finally:
        tin.close()
        tout.close()
    assert tin.closed
    with net.enter("b"):
        assert tc_query(net.ifname["b"], "ingress") == []  # no clsact any more: nothing listed
    fire(net, 1)
    assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_OUT)) == (6, 6)


def test_tc_keeps_a_qdisc_it_did_not_create(obj: pyebpf.Object, net: NetnsPair) -> None:
    subprocess.run(["tc", "-n", net.ns["b"], "qdisc", "add", "dev", net.ifname["b"], "clsact"],
                   check=True)
    with net.enter("b"):
        with attach_tc(obj.programs["tc_in"], net.ifname["b"]) as link:
            assert not link.created_qdisc
            fire(net, 1)
        assert tc_query(net.ifname["b"]) == [] and "clsact" in qdiscs(net, "b")
        with N.NetlinkSocket() as s:
            N.clsact_del(net.ifindex["b"], s)


@pytest.mark.parametrize("first", [0, 1])
def test_tc_qdisc_goes_with_our_last_filter(obj: pyebpf.Object, net: NetnsPair, first: int) -> None:
    p = obj.programs
    with net.enter("b"):
        links = [attach_tc(p["tc_in"], net.ifname["b"]),
                 attach_tc(p["tc_out"], net.ifname["b"], "egress")]
        assert [lk.created_qdisc for lk in links] == [True, True]  # the second shares ownership
        links[first].close()
        assert "clsact" in qdiscs(net, "b")  # the other filter still needs it
        links[1 - first].close()
        assert "clsact" not in qdiscs(net, "b")


def test_tc_handle_priority_and_replace(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    ifname = net.ifname["b"]
    with net.enter("b"):
        link = attach_tc(p["tc_in"], ifname, handle=7, priority=3)
        try:
            assert (link.handle, link.priority) == (7, 3)
            with pytest.raises(AttachError) as ei:
                attach_tc(p["tc_in2"], ifname, handle=7, priority=3)
            assert ei.value.errno == errno.EEXIST
            assert "handle 0x7 and priority 3 already exists" in str(ei.value)
            assert "replace=True" in str(ei.value)
            other = attach_tc(p["tc_in2"], ifname, handle=8, priority=3)
            with attach_tc(p["tc_plain"], ifname, handle=7, priority=3, replace=True) as rep:
                assert rep.filter.prog_id == p["tc_plain"].id
                assert sorted((f.handle, f.prog_id) for f in tc_query(ifname)) == [
                    (7, p["tc_plain"].id), (8, p["tc_in2"].id)]
                fire(net, 2)
                assert [count(obj, s) for s in (SLOT_TC_IN, SLOT_TC_IN2, SLOT_TC_PLAIN)] == [0, 2, 2]
            # closing the replacing link deleted filter 7; the original's close finds it gone
            assert [f.handle for f in tc_query(ifname)] == [8]
            other.close()
            # as in libbpf, replace=True creates the filter when there is none to replace
            with attach_tc(p["tc_in"], ifname, handle=9, priority=4, replace=True):
                assert [(f.handle, f.priority) for f in tc_query(ifname)] == [(9, 4)]
        finally:
            link.close()


def test_tc_update(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    with net.enter("b"), attach_tc(p["tc_in"], net.ifname["b"]) as link:
        link.update(p["tc_plain"])
        assert link.program is p["tc_plain"] and link.filter.prog_id == p["tc_plain"].id
        assert [f.prog_id for f in tc_query(net.ifname["b"])] == [p["tc_plain"].id]
        fire(net, 2)
        assert (count(obj, SLOT_TC_IN), count(obj, SLOT_TC_PLAIN)) == (0, 2)
        with pytest.raises(AttachError, match="cannot be attached"):
            link.update(p["xdp_a"])
        with pytest.raises(AttachError, match=f"does not run program id {p['tc_in'].id}"):
            link.update(p["tc_in2"], old_prog=p["tc_in"])
        link.update(p["tc_in2"], old_prog=p["tc_plain"].id)
        assert [f.prog_id for f in tc_query(net.ifname["b"])] == [p["tc_in2"].id]
        with pytest.raises(OptionError, match="old_prog="):
            link.update(p["tc_in"], old_prog="tc_in2")


def test_tc_errors(obj: pyebpf.Object, net: NetnsPair) -> None:
    p = obj.programs
    ifname = net.ifname["b"]
    with net.enter("b"):
        with pytest.raises(AttachError) as ei:
            attach_tc(p["xdp_a"], ifname)
        assert "xdp program cannot be attached as a tc filter" in str(ei.value)
        with pytest.raises(AttachError) as ei:
            attach_tc(p["tc_in"], f"nope{os.getpid() % 10000}")
        assert ei.value.errno == errno.ENODEV and "no network interface named" in str(ei.value)
        with pytest.raises(AttachError) as ei:
            attach_tc(p["tc_in"], 0x7FFFFF)
        assert ei.value.errno == errno.ENODEV and "no network interface ifindex" in str(ei.value)
        with pytest.raises(OptionError, match="priority"):
            attach_tc(p["tc_in"], ifname, priority=0x10000)
        with pytest.raises(OptionError, match="handle"):
            attach_tc(p["tc_in"], ifname, handle=-1)
        with pytest.raises(OptionError, match="needs the handle and priority"):
            attach_tc(p["tc_in"], ifname, replace=True)
        with pytest.raises(OptionError, match="'ingress' or 'egress'"):
            attach_tc(p["tc_in"], ifname, "up")
        with pytest.raises(AttachError, match="no network interface"):
            tc_query("nope")
        assert tc_query(ifname, "egress") == []
        with pytest.raises(AttachError, match="legacy tc filters have no bpf link"):
            TcLink.from_pin("/sys/fs/bpf/anything")
        with pytest.raises(AttachError, match="find them with tc_query"):
            TcLink.from_id(1)
    assert "clsact" not in qdiscs(net, "b")  # failed attaches left nothing


def test_tc_failed_filter_removes_the_qdisc_it_made(obj: pyebpf.Object, net: NetnsPair) -> None:
    from types import SimpleNamespace

    from pyebpf.uapi import ProgType

    xdp = obj.programs["xdp_a"]
    # claims to be a classifier, hands the kernel an XDP program: the filter add fails
    # after the clsact qdisc was created
    liar = SimpleNamespace(name="liar", type=ProgType.SCHED_CLS, fd=xdp.fd, id=xdp.id,
                           expected_attach_type=None, spec=None)
    with net.enter("b"):
        with pytest.raises(AttachError) as ei:
            attach_tc(liar, net.ifname["b"])
        assert ei.value.errno == errno.EINVAL and ei.value.program == "liar"
        assert "must be a loaded sched_cls program" in str(ei.value)
    assert "clsact" not in qdiscs(net, "b")


def test_tc_no_permission(obj: pyebpf.Object, net: NetnsPair) -> None:
    def body() -> Any:
        with attach_tc(obj.programs["tc_in"], net.ifname["b"]):
            return None

    with net.enter("b"):
        status, detail = run_as_nobody(body)
    assert status == "error", detail
    name, msg, err = detail
    assert name == "AttachError" and err == errno.EPERM, detail
    assert "no permission to add a tc filter" in msg and "CAP_NET_ADMIN" in msg


# --- pure parts (no root) --------------------------------------------------------------------


def test_direction_and_anchor_rules() -> None:
    from types import SimpleNamespace

    from pyebpf.links.tc import BPF_F_AFTER, BPF_F_BEFORE, BPF_F_ID, _anchor, _direction
    from pyebpf.sys.fd import FD

    sec = lambda s, eat=None: SimpleNamespace(spec=SimpleNamespace(section=s),  # noqa: E731
                                              expected_attach_type=eat)
    assert _direction(sec("tcx/egress"), None, None) == "egress"
    assert _direction(sec("tc", AttachType.TCX_INGRESS), None, None) == "ingress"
    assert _direction(sec("tc/ingress"), "EGRESS", None) == "egress"  # explicit wins
    assert _direction(sec("tc"), None, "ingress") == "ingress"
    assert _direction(sec("tc"), AttachType.TCX_EGRESS, None) == "egress"
    with pytest.raises(OptionError, match="names none"):
        _direction(sec("classifier"), None, None)
    assert _anchor(None, None) == (0, 0)
    assert _anchor(True, None) == (BPF_F_BEFORE, 0) and _anchor(None, True) == (BPF_F_AFTER, 0)
    assert _anchor(42, None) == (BPF_F_BEFORE | BPF_F_ID, 42)
    fd = FD(os.open("/dev/null", os.O_RDONLY))
    try:
        assert _anchor(None, fd) == (BPF_F_AFTER, int(fd))
        assert _anchor(None, SimpleNamespace(fd=fd)) == (BPF_F_AFTER, int(fd))
    finally:
        fd.close()
    for bad in ((1, 2), (False, None), (-1, None), ("x", None)):
        with pytest.raises(OptionError):
            _anchor(*bad)
