"""pyebpf.sys.netlink: message encoding and reply parsing (pure, no root), then a few
requests against the real kernel (root): interface lookups, extended-ack errors, the
DEBUG trace, clsact qdisc and cls_bpf filter round trips in a private namespace."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

import pytest

from pyebpf.errors import OptionError
from pyebpf.sys import netlink as N
from pyebpf.sys.netlink import Attrs, Message, NetlinkError, NlMsg

try:
    from tests.netns import NetnsPair
except ImportError:
    from netns import NetnsPair  # type: ignore[no-redef]

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


class Recorder:
    """Stands in for NetlinkSocket to capture what a helper would send (encoding tests)."""

    def __init__(self, replies: list[NlMsg] | None = None) -> None:
        self.sent: list[Message] = []
        self.replies = replies or []

    def request(self, msg: Message, what: str = "", *, hint: str | None = None) -> list[NlMsg]:
        self.sent.append(msg)
        return self.replies


def _nlmsg(mtype: int, flags: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 0) + payload


# --- encoding ----------------------------------------------------------------------------------


def test_message_header_and_attrs_are_aligned() -> None:
    m = Message(N.RTM_SETLINK, N.NLM_F_REQUEST | N.NLM_F_ACK, N.ifinfomsg(7))
    m.add_u8(1, 0xAB).add_str(3, "eth0").add_u32(4, 0x01020304)
    wire = m.encode(seq=9, pid=0)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", wire)
    assert (length, mtype, flags, seq, pid) == (len(wire), N.RTM_SETLINK, 5, 9, 0)
    assert wire[16:32] == struct.pack("=BxHiII", 0, 0, 7, 0, 0)
    # u8: len 5, padded to 8; string "eth0\0": len 9, padded to 12; u32: len 8
    assert wire[32:40] == struct.pack("=HH", 5, 1) + b"\xab\0\0\0"
    assert wire[40:52] == struct.pack("=HH", 9, 3) + b"eth0\0\0\0\0"
    assert wire[52:60] == struct.pack("=HH", 8, 4) + struct.pack("=I", 0x01020304)
    assert len(wire) == 60 and len(wire) % 4 == 0


def test_nested_attrs_get_their_length_and_flag() -> None:
    m = Message(N.RTM_SETLINK, N.NLM_F_REQUEST, N.ifinfomsg(3))
    with m.nest(N.IFLA_XDP):
        m.add_s32(N.IFLA_XDP_FD, -1)
        with m.nest(9):
            m.add_u16(1, 0xBEEF)
    body = m.encode()[16 + 16:]
    outer_len, outer_type = struct.unpack_from("=HH", body)
    assert outer_type == N.IFLA_XDP | N.NLA_F_NESTED and outer_len == len(body) == 4 + 8 + 4 + 8
    a = Attrs.parse(body)
    assert N.IFLA_XDP in a  # flag bits are masked off for lookup
    x = a.nested(N.IFLA_XDP)
    assert struct.unpack("=i", x[N.IFLA_XDP_FD])[0] == -1
    assert x.nested(9).uint(1) == 0xBEEF


def test_attrs_parse_tolerates_truncation_and_keeps_order() -> None:
    good = struct.pack("=HH", 8, 1) + struct.pack("=I", 5) + struct.pack("=HH", 6, 2) + b"ab\0\0"
    a = Attrs.parse(good + struct.pack("=HH", 40, 3) + b"xx")  # last one claims more than there is
    assert [t for t, _ in a.items] == [1, 2]
    assert a.uint(1) == 5 and a[2] == b"ab" and 3 not in a
    assert a.string(2) == "ab" and a.uint(99, 7) == 7 and a.get(99) is None
    assert Attrs.parse(b"").items == [] and Attrs.parse(struct.pack("=HH", 2, 1)).items == []


def test_xdp_set_encodes_like_bpf_xdp_attach() -> None:
    rec = Recorder()
    N.xdp_set(4, 11, N.XDP_FLAGS_SKB_MODE, expected_fd=12, sock=rec)  # type: ignore[arg-type]
    (m,) = rec.sent
    assert m.type == N.RTM_SETLINK and m.flags == N.NLM_F_REQUEST | N.NLM_F_ACK
    assert m.header == N.ifinfomsg(4)
    x = Attrs.parse(bytes(m.body), 16).nested(N.IFLA_XDP)
    assert struct.unpack("=i", x[N.IFLA_XDP_FD])[0] == 11
    assert struct.unpack("=i", x[N.IFLA_XDP_EXPECTED_FD])[0] == 12
    assert x.uint(N.IFLA_XDP_FLAGS) == N.XDP_FLAGS_SKB_MODE | N.XDP_FLAGS_REPLACE
    # a plain detach carries no flags and no expected fd
    rec = Recorder()
    N.xdp_set(4, -1, sock=rec)  # type: ignore[arg-type]
    x = Attrs.parse(bytes(rec.sent[0].body), 16).nested(N.IFLA_XDP)
    assert [t for t, _ in x.items] == [N.IFLA_XDP_FD]


def test_cls_bpf_filter_encoding_and_echo_parsing() -> None:
    echo_payload = N.tcmsg(5, handle=1, parent=N.tc_parent("egress"),
                           info=(49152 << 16) | socket.htons(N.ETH_P_ALL))
    opts = Message(0, 0)
    opts.add_str(N.TCA_KIND, "bpf")
    with opts.nest(N.TCA_OPTIONS):
        opts.add_u32(N.TCA_BPF_ID, 77).add_str(N.TCA_BPF_NAME, "p:[77]")
        opts.add_u32(N.TCA_BPF_FLAGS, N.TCA_BPF_FLAG_ACT_DIRECT)
        opts.add(N.TCA_BPF_TAG, bytes.fromhex("0102030405060708"))
    echo = NlMsg(N.RTM_NEWTFILTER, 0, 1, echo_payload + bytes(opts.body))
    rec = Recorder([echo])
    f = N.filter_add_bpf(5, N.tc_parent("egress"), 9, name="p:[77]", sock=rec)  # type: ignore[arg-type]
    (m,) = rec.sent
    assert m.type == N.RTM_NEWTFILTER
    assert m.flags == N.NLM_F_REQUEST | N.NLM_F_ACK | N.NLM_F_ECHO | N.NLM_F_CREATE | N.NLM_F_EXCL
    fam, idx, handle, parent, info = struct.unpack("=BxxxiIII", m.header)
    assert (idx, handle, parent) == (5, 0, 0xFFFFFFF3)
    assert info == socket.htons(N.ETH_P_ALL)  # priority 0: the kernel picks
    a = Attrs.parse(bytes(m.body), 20)
    assert a.string(N.TCA_KIND) == "bpf"
    o = a.nested(N.TCA_OPTIONS)
    assert o.uint(N.TCA_BPF_FD) == 9 and o.string(N.TCA_BPF_NAME) == "p:[77]"
    assert o.uint(N.TCA_BPF_FLAGS) == N.TCA_BPF_FLAG_ACT_DIRECT
    assert f == N.TcFilter(5, 0xFFFFFFF3, 1, 49152, N.ETH_P_ALL, "bpf", 77, "p:[77]", True,
                           "0102030405060708")
    # replace keeps the handle/priority and swaps EXCL for REPLACE
    rec = Recorder()
    N.filter_add_bpf(5, N.tc_parent("ingress"), 9, name="x", handle=3, priority=7,
                     replace=True, direct_action=False, sock=rec)  # type: ignore[arg-type]
    (m,) = rec.sent
    assert m.flags & N.NLM_F_REPLACE and not m.flags & N.NLM_F_EXCL
    assert struct.unpack("=BxxxiIII", m.header)[2:] == (3, 0xFFFFFFF2, 7 << 16 | socket.htons(3))
    assert N.TCA_BPF_FLAGS not in Attrs.parse(bytes(m.body), 20).nested(N.TCA_OPTIONS)


def test_dump_header_entries_are_not_filters() -> None:
    # a dump interleaves one message per priority without a handle
    hdr = NlMsg(N.RTM_NEWTFILTER, N.NLM_F_MULTI, 1, N.tcmsg(5, parent=1, info=1 << 16)
                + bytes(Message(0, 0).add_str(N.TCA_KIND, "bpf").body))
    assert N.parse_filter(hdr) is None
    assert N.parse_filter(NlMsg(N.RTM_NEWQDISC, 0, 1, N.tcmsg(5, handle=1))) is None


def test_clsact_qdisc_messages() -> None:
    rec = Recorder()
    N.clsact_del(3, sock=rec)  # type: ignore[arg-type]
    (m,) = rec.sent
    assert m.type == N.RTM_DELQDISC
    assert struct.unpack("=BxxxiIII", m.header) == (0, 3, 0xFFFF0000, 0xFFFFFFF1, 0)
    assert Attrs.parse(bytes(m.body), 20).string(N.TCA_KIND) == "clsact"
    assert N.tc_parent("ingress") == 0xFFFFFFF2 and N.tc_parent("egress") == 0xFFFFFFF3
    with pytest.raises(OptionError):
        N.tc_parent("sideways")


def test_route_with_lwt_encap_builds_on_message() -> None:
    m = Message(N.RTM_NEWROUTE, N.NLM_F_REQUEST | N.NLM_F_ACK | N.NLM_F_CREATE | N.NLM_F_EXCL,
                N.rtmsg(socket.AF_INET, dst_len=24))
    m.add(N.RTA_DST, socket.inet_aton("10.1.2.0")).add_u32(N.RTA_OIF, 4)
    m.add_u16(N.RTA_ENCAP_TYPE, N.LWTUNNEL_ENCAP_BPF)
    with m.nest(N.RTA_ENCAP), m.nest(N.LWT_BPF_IN):
        m.add_u32(N.LWT_BPF_PROG_FD, 8).add_str(N.LWT_BPF_PROG_NAME, "lwt")
    assert len(m.header) == 12
    a = Attrs.parse(bytes(m.body), 12)
    assert a[N.RTA_DST] == bytes([10, 1, 2, 0]) and a.uint(N.RTA_ENCAP_TYPE) == 6
    inner = a.nested(N.RTA_ENCAP).nested(N.LWT_BPF_IN)
    assert inner.uint(N.LWT_BPF_PROG_FD) == 8 and inner.string(N.LWT_BPF_PROG_NAME) == "lwt"


def test_generic_netlink_request_encoding() -> None:
    m = Message(N.GENL_ID_CTRL, N.NLM_F_REQUEST | N.NLM_F_ACK,
                N.genlmsghdr(N.CTRL_CMD_GETFAMILY, 2), name="CTRL_CMD_GETFAMILY")
    m.add_str(N.CTRL_ATTR_FAMILY_NAME, "netdev")
    wire = m.encode(seq=3)
    assert struct.unpack_from("=HH", wire, 4) == (N.GENL_ID_CTRL, N.NLM_F_REQUEST | N.NLM_F_ACK)
    assert wire[16:20] == bytes([N.CTRL_CMD_GETFAMILY, 2, 0, 0])
    assert Attrs.parse(wire, 20).string(N.CTRL_ATTR_FAMILY_NAME) == "netdev"
    assert m.describe().startswith("CTRL_CMD_GETFAMILY flags=REQUEST|ACK")


# --- replies and errors ------------------------------------------------------------------------


def test_split_messages_handles_padding_and_truncation() -> None:
    data = _nlmsg(16, 2, 1, b"abc") + b"\0" + _nlmsg(3, 2, 1, b"\0\0\0\0") + b"\x10\0"
    msgs = N.split_messages(data)
    assert [(m.type, m.payload) for m in msgs] == [(16, b"abc"), (3, b"\0\0\0\0")]
    assert N.split_messages(b"") == [] and N.split_messages(b"\xff" * 15) == []


def _error_payload(err: int, orig: bytes, tlvs: Message | None) -> bytes:
    return struct.pack("=i", -err) + orig + (bytes(tlvs.body) if tlvs else b"")


def test_parse_error_reads_the_extended_ack() -> None:
    orig = Message(N.RTM_SETLINK, 5, N.ifinfomsg(1)).add_u32(1, 2).encode(seq=4)
    tlv = Message(0, 0).add_str(N.NLMSGERR_ATTR_MSG, "XDP program already attached")
    tlv.add_u32(N.NLMSGERR_ATTR_OFFS, 32)
    capped = NlMsg(N.NLMSG_ERROR, N.NLM_F_ACK_TLVS | N.NLM_F_CAPPED, 4,
                   _error_payload(errno.EBUSY, orig[:16], tlv))
    assert N.parse_error(capped) == (errno.EBUSY, "XDP program already attached", 32)
    # without NETLINK_CAP_ACK the whole request is echoed before the TLVs
    full = NlMsg(N.NLMSG_ERROR, N.NLM_F_ACK_TLVS, 4, _error_payload(errno.EBUSY, orig, tlv))
    assert N.parse_error(full)[:2] == (errno.EBUSY, "XDP program already attached")
    plain = NlMsg(N.NLMSG_ERROR, 0, 4, _error_payload(errno.ENODEV, orig, None))
    assert N.parse_error(plain) == (errno.ENODEV, "", None)
    ack = NlMsg(N.NLMSG_ERROR, N.NLM_F_CAPPED, 4, _error_payload(0, orig[:16], None))
    assert N.parse_error(ack)[0] == 0
    assert N.parse_error(NlMsg(N.NLMSG_ERROR, 0, 1, b"\0"))[0] == errno.EPROTO


def test_netlink_error_names_command_detail_extack_and_hint() -> None:
    e = NetlinkError(errno.EBUSY, "RTM_SETLINK", "kernel says: busy; hint", detail="attach XDP",
                     extack="busy")
    assert isinstance(e, OSError) and e.errno == errno.EBUSY and e.extack == "busy"
    assert str(e) == "RTM_SETLINK (attach XDP) failed: Device or resource busy (EBUSY): kernel says: busy; hint"
    assert "CAP_NET_ADMIN" in N.netlink_hint(errno.EPERM, N.RTM_SETLINK)


def test_describe_renders_request_for_the_trace() -> None:
    m = Message(N.RTM_NEWTFILTER, N.NLM_F_REQUEST | N.NLM_F_ACK | N.NLM_F_CREATE | N.NLM_F_EXCL,
                N.tcmsg(3, parent=0xFFFFFFF2))
    m.add_str(N.TCA_KIND, "bpf")
    with m.nest(N.TCA_OPTIONS):
        m.add_u32(N.TCA_BPF_FD, 9).add(N.TCA_BPF_TAG, b"\x01\x02\x03")
    d = m.describe()
    assert d.startswith("RTM_NEWTFILTER flags=REQUEST|ACK|EXCL|CREATE ifindex=3")
    assert "parent=0xfffffff2" in d and "1:'bpf'" in d and "2:{6:9 10:010203}" in d
    assert "DUMP" in Message(N.RTM_GETLINK, N.NLM_F_REQUEST | N.NLM_F_DUMP).describe()


def test_message_refuses_oversized_attrs() -> None:
    with pytest.raises(OptionError):
        Message(1, 0).add(1, bytes(70000))
    with pytest.raises(OptionError):
        Message(1, 0).add(0x10000)
    m = Message(1, 0)
    with pytest.raises(OptionError), m.nest(1):
        for _ in range(20):
            m.add(2, bytes(4000))


# --- the real kernel ---------------------------------------------------------------------------


@needs_root
def test_interface_lookups_and_enodev() -> None:
    with N.NetlinkSocket() as s:
        assert N.link_index("lo", s) == socket.if_nametoindex("lo")
        assert N.link_name(socket.if_nametoindex("lo"), s) == "lo"
        with pytest.raises(NetlinkError) as ei:
            N.link_index(f"nx{os.getpid() % 100000}", s)
        assert ei.value.errno == errno.ENODEV and "no network interface" in str(ei.value)
        with pytest.raises(NetlinkError) as ei:
            N.link_index("x" * 20, s)  # longer than IFNAMSIZ: cannot exist
        assert ei.value.errno == errno.ENODEV
        with pytest.raises(NetlinkError):
            N.link_name(0x7FFFFFF0, s)
        assert repr(s).startswith("<NetlinkSocket ")
    assert s.closed and repr(s) == "<NetlinkSocket closed>"
    with pytest.raises(NetlinkError, match="closed"):
        s.request(Message(N.RTM_GETLINK, N.NLM_F_REQUEST | N.NLM_F_ACK, N.ifinfomsg(1)))


@needs_root
def test_xdp_features_of_an_interface() -> None:
    with N.NetlinkSocket(N.NETLINK_GENERIC) as s:
        if N.genl_family_id("netdev", s) is None:
            pytest.skip("kernel has no netdev generic netlink family (XDP features, Linux 6.3+)")
        assert N.genl_family_id("nlctrl", s) == N.GENL_ID_CTRL
        assert N.genl_family_id(f"nope{os.getpid()}", s) is None
    with NetlinkPairScope() as net, net.enter("a"):
        flags, _zc = N.xdp_features(net.ifindex["a"])
        assert flags & 1  # NETDEV_XDP_ACT_BASIC: veth runs XDP natively
        with pytest.raises(NetlinkError) as ei:
            N.xdp_features(0x7FFFFF)
        assert ei.value.errno == errno.ENODEV and ei.value.command == "NETDEV_CMD_DEV_GET"


@needs_root
def test_kernel_extack_message_and_debug_trace(caplog: pytest.LogCaptureFixture) -> None:
    with NetlinkPairScope() as net, net.enter("a"), N.NetlinkSocket() as s:
        idx = net.ifindex["a"]
        m = Message(N.RTM_NEWQDISC, N.NLM_F_REQUEST | N.NLM_F_ACK | N.NLM_F_CREATE | N.NLM_F_EXCL,
                    N.tcmsg(idx, parent=0xFFFFFFFF))
        m.add_str(N.TCA_KIND, f"nope{os.getpid() % 1000}")
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            # an unknown qdisc kind: the kernel explains in its extended ack
            with pytest.raises(NetlinkError) as ei:
                s.request(m, "add a qdisc of no known kind")
            assert N.xdp_query(idx, s).attach_mode == N.XDP_ATTACHED_NONE
        e = ei.value
        assert e.errno and e.extack, e
        assert f"kernel says: {e.extack}" in str(e) and e.command == "RTM_NEWQDISC"
        assert "(add a qdisc of no known kind)" in str(e)
        lines = [r.getMessage() for r in caplog.records if r.name == "pyebpf.sys"]
        assert any(line.startswith("netlink(RTM_NEWQDISC") and f"({e.extack})" in line
                   for line in lines), lines
        assert any("RTM_GETLINK" in line and "= 0" in line for line in lines), lines


@needs_root
def test_clsact_and_filter_round_trip() -> None:
    import pyebpf

    try:
        from tests.unitobj import unit_object
    except ImportError:
        from unitobj import unit_object  # type: ignore[no-redef]

    with pyebpf.load(unit_object("attach_net")) as obj, NetlinkPairScope() as net, net.enter("a"), \
            N.NetlinkSocket() as s:
        idx = net.ifindex["a"]
        prog = obj.programs["tc_in"]
        assert N.clsact_add(idx, s) is True
        assert N.clsact_add(idx, s) is False  # already there
        assert [q.kind for q in N.qdisc_list(idx, s)].count("clsact") == 1
        f = N.filter_add_bpf(idx, N.tc_parent("ingress"), int(prog.fd), name="tc_in:[x]",
                             priority=5, sock=s)
        assert (f.handle, f.priority, f.prog_id, f.kind, f.direct_action) == (1, 5, prog.id, "bpf", True)
        assert N.filter_list(idx, N.tc_parent("ingress"), s) == [f]
        assert N.filter_list(idx, N.tc_parent("egress"), s) == []
        with pytest.raises(NetlinkError) as ei:
            N.filter_add_bpf(idx, N.tc_parent("ingress"), int(prog.fd), name="again", handle=1,
                             priority=5, sock=s)
        assert ei.value.errno == errno.EEXIST
        N.filter_del(idx, f.parent, f.handle, f.priority, sock=s)
        assert N.filter_list(idx, N.tc_parent("ingress"), s) == []
        with pytest.raises(NetlinkError) as ei:
            N.filter_del(idx, f.parent, f.handle, f.priority, sock=s)
        assert ei.value.errno in (errno.ENOENT, errno.EINVAL)
        N.clsact_del(idx, s)
        assert "clsact" not in [q.kind for q in N.qdisc_list(idx, s)]
        with pytest.raises(NetlinkError) as ei:
            N.clsact_del(idx, s)
        assert ei.value.errno in (errno.ENOENT, errno.EINVAL)


def NetlinkPairScope() -> NetnsPair:  # noqa: N802 - reads as a class at the call sites
    if not ROOT:
        pytest.skip("needs root")
    return NetnsPair(prefix="pyebpfnl", ipv6=False)


@needs_root
def test_netns_helper_enters_restores_and_cleans_up() -> None:
    """tests/netns.py itself: unique names, setns in and back, ifindexes, deletion."""
    own = os.readlink("/proc/thread-self/ns/net")
    net = NetlinkPairScope()
    try:
        assert all(str(os.getpid()) in n for n in net.ns.values()) and net.ns["a"] != net.ns["b"]
        with net.enter("a"):
            inside = os.readlink("/proc/thread-self/ns/net")
            assert inside != own and socket.if_nametoindex(net.ifname["a"]) == net.ifindex["a"]
            with net.enter("b"):  # nesting returns to a, not to the original
                assert socket.if_nametoindex(net.ifname["b"]) == net.ifindex["b"]
            assert os.readlink("/proc/thread-self/ns/net") == inside
        assert os.readlink("/proc/thread-self/ns/net") == own
        assert net.run("b", lambda: socket.if_nametoindex(net.ifname["b"])) == net.ifindex["b"]
        with pytest.raises(OSError):
            net.run("a", lambda: socket.if_nametoindex(net.ifname["b"]))  # only in b
        assert net.udp("a", "b", 4000, 3) == 3
        net.send_udp("b", "a", 4001, 1)  # nobody listens: still no error for the sender
    finally:
        net.close()
    assert not any(os.path.exists(f"/run/netns/{n}") for n in net.ns.values())
    net.close()  # idempotent
