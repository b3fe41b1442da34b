"""A small NETLINK_ROUTE client: XDP on interfaces, clsact qdiscs, cls_bpf filters.

No dependency beyond the stdlib ``socket`` module. :class:`Message` builds a request
(fixed header + nested rtattrs), :class:`NetlinkSocket` sends it and collects the
replies (multipart dumps, echoes, the ACK). A failed request raises
:class:`NetlinkError` (a :class:`~pyebpf.errors.SyscallError`) with the errno, the
kernel's extended-ack message when it gives one, and a hint. Every request is traced at
DEBUG under ``pyebpf.sys`` like ``bpf()``.

A socket belongs to the network namespace it was created in: interface indices,
qdiscs and filters resolve there, whichever namespace the thread is in later. Links
that must undo a netlink attachment keep their socket for that reason.

Other rtnetlink requests build on the same pieces. A route with an LWT bpf encap::

    m = Message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                rtmsg(AF_INET, dst_len=24))
    m.add(RTA_DST, socket.inet_aton("10.1.2.0")).add_u32(RTA_OIF, ifindex)
    m.add_u16(RTA_ENCAP_TYPE, LWTUNNEL_ENCAP_BPF)
    with m.nest(RTA_ENCAP), m.nest(LWT_BPF_IN):
        m.add_u32(LWT_BPF_PROG_FD, prog_fd).add_str(LWT_BPF_PROG_NAME, "name")
    with NetlinkSocket() as s:
        s.request(m, "add route")
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import socket
import struct
from collections.abc import Iterator

from .._log import DEBUG
from .._record import Record
from ..errors import OptionError, SyscallError
from .netlink_msg import (  # re-exported: one import gives the whole client
    _IFINFO,
    _TCMSG,
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_CMD_GETFAMILY,
    ETH_P_ALL,
    GENL_ID_CTRL,
    IFLA_IFNAME,
    IFLA_XDP,
    IFLA_XDP_ATTACHED,
    IFLA_XDP_DRV_PROG_ID,
    IFLA_XDP_EXPECTED_FD,
    IFLA_XDP_FD,
    IFLA_XDP_FLAGS,
    IFLA_XDP_HW_PROG_ID,
    IFLA_XDP_PROG_ID,
    IFLA_XDP_SKB_PROG_ID,
    LWT_BPF_IN,
    LWT_BPF_OUT,
    LWT_BPF_PROG_FD,
    LWT_BPF_PROG_NAME,
    LWT_BPF_XMIT,
    LWTUNNEL_ENCAP_BPF,
    NETDEV_A_DEV_IFINDEX,
    NETDEV_A_DEV_XDP_FEATURES,
    NETDEV_A_DEV_XDP_ZC_MAX_SEGS,
    NETDEV_CMD_DEV_GET,
    NETDEV_XDP_ACT,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GENERIC,
    NETLINK_ROUTE,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_APPEND,
    NLM_F_CAPPED,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_ECHO,
    NLM_F_EXCL,
    NLM_F_MATCH,
    NLM_F_MULTI,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLM_F_ROOT,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSGERR_ATTR_MSG,
    NLMSGERR_ATTR_OFFS,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_ENCAP,
    RTA_ENCAP_TYPE,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_DELROUTE,
    RTM_DELTFILTER,
    RTM_GETLINK,
    RTM_GETQDISC,
    RTM_GETROUTE,
    RTM_GETTFILTER,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
    RTM_NEWTFILTER,
    RTM_SETLINK,
    RTN_UNICAST,
    RTPROT_BOOT,
    SOL_NETLINK,
    TC_H_CLSACT,
    TC_H_MIN_EGRESS,
    TC_H_MIN_INGRESS,
    TCA_BPF_FD,
    TCA_BPF_FLAG_ACT_DIRECT,
    TCA_BPF_FLAGS,
    TCA_BPF_FLAGS_GEN,
    TCA_BPF_ID,
    TCA_BPF_NAME,
    TCA_BPF_TAG,
    TCA_KIND,
    TCA_OPTIONS,
    XDP_ATTACHED_DRV,
    XDP_ATTACHED_HW,
    XDP_ATTACHED_MULTI,
    XDP_ATTACHED_NONE,
    XDP_ATTACHED_SKB,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_MODES,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    Attrs,
    Message,
    NlMsg,
    genlmsghdr,
    ifinfomsg,
    msg_name,
    parse_error,
    rtmsg,
    split_messages,
    tcmsg,
)
from .syscall import PERM_HINT, log

__all__ = [
    "Attrs",
    "CTRL_ATTR_FAMILY_ID",
    "CTRL_ATTR_FAMILY_NAME",
    "CTRL_CMD_GETFAMILY",
    "ETH_P_ALL",
    "GENL_ID_CTRL",
    "IFLA_IFNAME",
    "IFLA_XDP",
    "IFLA_XDP_ATTACHED",
    "IFLA_XDP_DRV_PROG_ID",
    "IFLA_XDP_EXPECTED_FD",
    "IFLA_XDP_FD",
    "IFLA_XDP_FLAGS",
    "IFLA_XDP_HW_PROG_ID",
    "IFLA_XDP_PROG_ID",
    "IFLA_XDP_SKB_PROG_ID",
    "LWTUNNEL_ENCAP_BPF",
    "LWT_BPF_IN",
    "LWT_BPF_OUT",
    "LWT_BPF_PROG_FD",
    "LWT_BPF_PROG_NAME",
    "LWT_BPF_XMIT",
    "Message",
    "NETDEV_A_DEV_IFINDEX",
    "NETDEV_A_DEV_XDP_FEATURES",
    "NETDEV_A_DEV_XDP_ZC_MAX_SEGS",
    "NETDEV_CMD_DEV_GET",
    "NETDEV_XDP_ACT",
    "NETLINK_CAP_ACK",
    "NETLINK_EXT_ACK",
    "NETLINK_GENERIC",
    "NETLINK_ROUTE",
    "NLA_F_NESTED",
    "NLA_F_NET_BYTEORDER",
    "NLA_TYPE_MASK",
    "NLMSGERR_ATTR_MSG",
    "NLMSGERR_ATTR_OFFS",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_NOOP",
    "NLM_F_ACK",
    "NLM_F_ACK_TLVS",
    "NLM_F_APPEND",
    "NLM_F_CAPPED",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "NLM_F_ECHO",
    "NLM_F_EXCL",
    "NLM_F_MATCH",
    "NLM_F_MULTI",
    "NLM_F_REPLACE",
    "NLM_F_REQUEST",
    "NLM_F_ROOT",
    "NetlinkError",
    "NetlinkSocket",
    "NlMsg",
    "Qdisc",
    "RTA_DST",
    "RTA_ENCAP",
    "RTA_ENCAP_TYPE",
    "RTA_GATEWAY",
    "RTA_OIF",
    "RTM_DELLINK",
    "RTM_DELQDISC",
    "RTM_DELROUTE",
    "RTM_DELTFILTER",
    "RTM_GETLINK",
    "RTM_GETQDISC",
    "RTM_GETROUTE",
    "RTM_GETTFILTER",
    "RTM_NEWLINK",
    "RTM_NEWQDISC",
    "RTM_NEWROUTE",
    "RTM_NEWTFILTER",
    "RTM_SETLINK",
    "RTN_UNICAST",
    "RTPROT_BOOT",
    "RT_SCOPE_UNIVERSE",
    "RT_TABLE_MAIN",
    "SOL_NETLINK",
    "TCA_BPF_FD",
    "TCA_BPF_FLAGS",
    "TCA_BPF_FLAGS_GEN",
    "TCA_BPF_FLAG_ACT_DIRECT",
    "TCA_BPF_ID",
    "TCA_BPF_NAME",
    "TCA_BPF_TAG",
    "TCA_KIND",
    "TCA_OPTIONS",
    "TC_H_CLSACT",
    "TC_H_MIN_EGRESS",
    "TC_H_MIN_INGRESS",
    "TcFilter",
    "XDP_ATTACHED_DRV",
    "XDP_ATTACHED_HW",
    "XDP_ATTACHED_MULTI",
    "XDP_ATTACHED_NONE",
    "XDP_ATTACHED_SKB",
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_HW_MODE",
    "XDP_FLAGS_MODES",
    "XDP_FLAGS_REPLACE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_UPDATE_IF_NOEXIST",
    "XdpState",
    "clsact_add",
    "clsact_del",
    "filter_add_bpf",
    "filter_del",
    "filter_list",
    "genl_family_id",
    "genlmsghdr",
    "ifinfomsg",
    "link_index",
    "link_name",
    "msg_name",
    "netlink_hint",
    "parse_error",
    "parse_filter",
    "parse_xdp",
    "qdisc_list",
    "rtmsg",
    "split_messages",
    "tc_parent",
    "tcmsg",
    "xdp_features",
    "xdp_query",
    "xdp_set",
]

# --- errors ------------------------------------------------------------------------------------


class NetlinkError(SyscallError):
    """A netlink request failed. ``extack`` is the kernel's own explanation (may be empty)."""

    def __init__(self, errno: int, command: str, hint: str = "", *, detail: str = "",
                 extack: str = "") -> None:
        super().__init__(errno, command, hint, detail=detail)
        self.extack = extack


def netlink_hint(err: int, msg_type: int) -> str:
    """What ``err`` usually means for a request of ``msg_type``."""
    if err == _errno.EPERM:
        return "changing network configuration needs CAP_NET_ADMIN; " + PERM_HINT
    if err == _errno.ENODEV:
        return "no network interface with that name or index in this network namespace"
    if err == _errno.ENOENT:
        if msg_type in (RTM_DELTFILTER, RTM_GETTFILTER, RTM_NEWTFILTER):
            return "no such filter, or no clsact qdisc on the interface"
        if msg_type in (RTM_DELQDISC, RTM_GETQDISC):
            return "no such qdisc on the interface"
        return "not found"
    if err == _errno.EEXIST:
        if msg_type == RTM_SETLINK:
            return "an XDP program is already attached (or the expected program is not the current one)"
        return "it already exists"
    if err == _errno.EBUSY:
        return "busy: another program or a bpf link holds the hook"
    if err == _errno.EOPNOTSUPP:
        return "the interface's driver or the kernel does not support this"
    if err == _errno.EINVAL:
        return "the kernel rejected the request's attributes"
    if err == _errno.ENOBUFS:
        return "the netlink socket's receive buffer overflowed"
    return ""


# --- the socket --------------------------------------------------------------------------------


class NetlinkSocket:
    """A NETLINK_ROUTE socket in the current thread's network namespace."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        except OSError as e:
            err = e.errno or _errno.EIO
            raise NetlinkError(err, "socket(AF_NETLINK)", netlink_hint(err, 0)) from None
        try:
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                try:
                    s.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:  # old kernels: plain errors without a message
                    pass
            s.bind((0, 0))
        except BaseException:
            s.close()
            raise
        self._sock: socket.socket | None = s
        self._seq = itertools.count(1)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        if self._sock is None:
            raise NetlinkError(_errno.EBADF, "netlink", "the netlink socket is closed")
        return self._sock.fileno()

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            s.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<NetlinkSocket {'closed' if self._sock is None else self._sock.fileno()}>"

    def _recv(self, s: socket.socket) -> bytes:
        # peek the size first (MSG_TRUNC returns the datagram's real length on netlink):
        # a datagram larger than the buffer would be cut short
        n = s.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        return s.recv(max(n, 16))

    def request(self, msg: Message, what: str = "", *, hint: str | None = None) -> list[NlMsg]:
        """Send ``msg``, return the replies (dump parts, echoes), raise :class:`NetlinkError`.

        A dump (NLM_F_DUMP) ends at NLMSG_DONE and is restarted if the kernel says it
        was interrupted by a concurrent change; other requests end at their ACK.
        """
        for _attempt in range(5):
            replies, interrupted = self._request_once(msg, what, hint)
            if not interrupted:
                return replies
            log.debug("netlink %s: dump interrupted by a concurrent change, restarting", msg.name)
        return replies

    def _request_once(self, msg: Message, what: str, hint: str | None) -> tuple[list[NlMsg], bool]:
        s = self._sock
        if s is None:
            raise NetlinkError(_errno.EBADF, msg.name, "the netlink socket is closed",
                               detail=what)
        seq = next(self._seq)
        dump = msg.flags & NLM_F_DUMP == NLM_F_DUMP
        data = msg.encode(seq)
        try:
            s.send(data)
        except OSError as e:
            self._fail(e.errno or _errno.EIO, "", msg, what, hint)
        replies: list[NlMsg] = []
        interrupted = False
        while True:
            try:
                chunk = self._recv(s)
            except OSError as e:
                self._fail(e.errno or _errno.EIO, "", msg, what, hint)
            for m in split_messages(chunk):
                if m.seq != seq:
                    continue  # a stale reply to an earlier request on this socket
                if m.flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if m.type == NLMSG_ERROR:
                    err, text, _offs = parse_error(m)
                    if err:
                        self._fail(err, text, msg, what, hint)
                    self._trace(msg, what, f"0 ({len(replies)} replies){_said(text)}")
                    return replies, interrupted
                if m.type == NLMSG_DONE:
                    err = -struct.unpack_from("=i", m.payload)[0] if len(m.payload) >= 4 else 0
                    if err > 0:
                        self._fail(err, parse_error(NlMsg(m.type, m.flags, m.seq, m.payload))[1],
                                   msg, what, hint)
                    self._trace(msg, what, f"{len(replies)} messages")
                    return replies, interrupted
                if m.type == NLMSG_NOOP:
                    continue
                replies.append(m)
                if not dump and not msg.flags & NLM_F_ACK and not m.flags & NLM_F_MULTI:
                    self._trace(msg, what, "1 reply")
                    return replies, interrupted

    def _trace(self, msg: Message, what: str, result: str) -> None:
        if log.isEnabledFor(DEBUG):
            log.debug("netlink(%s%s) = %s", msg.describe(), f" [{what}]" if what else "", result)

    def _fail(self, err: int, text: str, msg: Message, what: str, hint: str | None) -> None:
        if log.isEnabledFor(DEBUG):
            self._trace(msg, what, f"-1 {_errno.errorcode.get(err, err)}{_said(text)}")
        h = netlink_hint(err, msg.type) if hint is None else hint
        if text:
            h = f"kernel says: {text}" + (f"; {h}" if h else "")
        raise NetlinkError(err, msg.name, h, detail=what, extack=text)


def _said(text: str) -> str:
    return f" ({text})" if text else ""


@contextlib.contextmanager
def _socket(sock: NetlinkSocket | None) -> Iterator[NetlinkSocket]:
    if sock is not None:
        yield sock
        return
    with NetlinkSocket() as s:
        yield s


# --- interfaces --------------------------------------------------------------------------------


IFNAMSIZ = 16


def _getlink(index: int, name: str | None, sock: NetlinkSocket | None, what: str) -> NlMsg:
    m = Message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, ifinfomsg(index))
    if name is not None:
        m.add_str(IFLA_IFNAME, name)
    with _socket(sock) as s:
        replies = [r for r in s.request(m, what) if r.type == RTM_NEWLINK]
    if not replies:
        raise NetlinkError(_errno.ENODEV, "RTM_GETLINK", netlink_hint(_errno.ENODEV, RTM_GETLINK),
                           detail=what)
    return replies[0]


def link_index(name: str, sock: NetlinkSocket | None = None) -> int:
    """The ifindex of interface ``name`` (ENODEV NetlinkError if there is none)."""
    what = f"interface {name!r}"
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or "\0" in name:
        # no interface can have this name; the kernel would only say EINVAL
        raise NetlinkError(_errno.ENODEV, "RTM_GETLINK", "not a valid interface name", detail=what)
    r = _getlink(0, name, sock, what)
    if len(r.payload) < _IFINFO.size:
        raise NetlinkError(_errno.EPROTO, "RTM_GETLINK", "truncated reply", detail=what)
    ifindex: int = _IFINFO.unpack_from(r.payload)[2]
    return ifindex


def link_name(ifindex: int, sock: NetlinkSocket | None = None) -> str:
    """The name of the interface with index ``ifindex``."""
    r = _getlink(ifindex, None, sock, f"ifindex {ifindex}")
    return r.attrs(_IFINFO.size).string(IFLA_IFNAME)


# --- XDP ---------------------------------------------------------------------------------------


class XdpState(Record):
    """What IFLA_XDP reports for an interface (bpf_xdp_query): the attach mode and the
    program id per mode (0: none). ``prog_id`` is the one program when a single mode is used."""

    ifindex: int
    attach_mode: int
    prog_id: int
    drv_prog_id: int
    skb_prog_id: int
    hw_prog_id: int

    def __init__(self, ifindex: int, attach_mode: int = XDP_ATTACHED_NONE, prog_id: int = 0,
                 drv_prog_id: int = 0, skb_prog_id: int = 0, hw_prog_id: int = 0) -> None:
        self.ifindex = ifindex
        self.attach_mode = attach_mode
        self.prog_id = prog_id
        self.drv_prog_id = drv_prog_id
        self.skb_prog_id = skb_prog_id
        self.hw_prog_id = hw_prog_id


def xdp_set(ifindex: int, prog_fd: int, flags: int = 0, expected_fd: int | None = None,
            sock: NetlinkSocket | None = None) -> None:
    """Attach (``prog_fd`` >= 0) or detach (-1) the XDP program of ``ifindex`` (bpf_xdp_attach).

    ``expected_fd`` (sets XDP_FLAGS_REPLACE): act only if that program is the current one.
    """
    m = Message(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifinfomsg(ifindex))
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    with m.nest(IFLA_XDP):
        m.add_s32(IFLA_XDP_FD, prog_fd)
        if flags & XDP_FLAGS_REPLACE:
            m.add_s32(IFLA_XDP_EXPECTED_FD, -1 if expected_fd is None else expected_fd)
        if flags:
            m.add_u32(IFLA_XDP_FLAGS, flags)
    verb = "attach XDP program" if prog_fd >= 0 else "detach XDP program"
    with _socket(sock) as s:
        s.request(m, f"{verb} on ifindex {ifindex}")


def parse_xdp(ifindex: int, link_attrs: Attrs) -> XdpState:
    """XdpState from the attributes of an RTM_NEWLINK message."""
    x = link_attrs.nested(IFLA_XDP)
    return XdpState(ifindex, x.uint(IFLA_XDP_ATTACHED), x.uint(IFLA_XDP_PROG_ID),
                    x.uint(IFLA_XDP_DRV_PROG_ID), x.uint(IFLA_XDP_SKB_PROG_ID),
                    x.uint(IFLA_XDP_HW_PROG_ID))


def xdp_query(ifindex: int, sock: NetlinkSocket | None = None) -> XdpState:
    """The XDP programs attached to ``ifindex``."""
    r = _getlink(ifindex, None, sock, f"query XDP on ifindex {ifindex}")
    return parse_xdp(ifindex, r.attrs(_IFINFO.size))


def genl_family_id(name: str, sock: NetlinkSocket) -> int | None:
    """The id of generic netlink family ``name`` (``sock`` a NETLINK_GENERIC socket);
    None if the kernel has no such family."""
    m = Message(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, genlmsghdr(CTRL_CMD_GETFAMILY, 2),
                name="CTRL_CMD_GETFAMILY")
    m.add_str(CTRL_ATTR_FAMILY_NAME, name)
    try:
        replies = sock.request(m, f"generic netlink family {name!r}")
    except NetlinkError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    for r in replies:
        fid = r.attrs(4).uint(CTRL_ATTR_FAMILY_ID)
        if fid:
            return fid
    return None


def xdp_features(ifindex: int) -> tuple[int, int]:
    """(NETDEV_XDP_ACT_* feature flags, zero-copy max segments) of ``ifindex`` from the
    netdev generic netlink family, as bpf_xdp_query reports them; (0, 0) on kernels
    without that family (before 6.3)."""
    with NetlinkSocket(NETLINK_GENERIC) as s:
        fid = genl_family_id("netdev", s)
        if fid is None:
            return 0, 0
        m = Message(fid, NLM_F_REQUEST | NLM_F_ACK, genlmsghdr(NETDEV_CMD_DEV_GET),
                    name="NETDEV_CMD_DEV_GET")
        m.add_u32(NETDEV_A_DEV_IFINDEX, ifindex)
        for r in s.request(m, f"XDP features of ifindex {ifindex}"):
            a = r.attrs(4)
            return a.uint(NETDEV_A_DEV_XDP_FEATURES), a.uint(NETDEV_A_DEV_XDP_ZC_MAX_SEGS)
    return 0, 0


# --- tc: clsact qdisc and cls_bpf filters ------------------------------------------------------


def tc_parent(direction: str) -> int:
    """The clsact parent handle of ``"ingress"`` or ``"egress"``."""
    minor = {"ingress": TC_H_MIN_INGRESS, "egress": TC_H_MIN_EGRESS}.get(direction)
    if minor is None:
        raise OptionError(f"tc direction must be 'ingress' or 'egress', not {direction!r}")
    return (TC_H_CLSACT & 0xFFFF0000) | minor


def _clsact_msg(msg_type: int, flags: int, ifindex: int) -> Message:
    m = Message(msg_type, flags, tcmsg(ifindex, handle=TC_H_CLSACT & 0xFFFF0000, parent=TC_H_CLSACT))
    return m.add_str(TCA_KIND, "clsact")


def clsact_add(ifindex: int, sock: NetlinkSocket | None = None) -> bool:
    """Add a clsact qdisc to ``ifindex``; False (no change) if one is already there."""
    m = _clsact_msg(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ifindex)
    with _socket(sock) as s:
        try:
            s.request(m, f"add clsact qdisc to ifindex {ifindex}")
        except NetlinkError as e:
            if e.errno == _errno.EEXIST:
                return False
            raise
    return True


def clsact_del(ifindex: int, sock: NetlinkSocket | None = None) -> None:
    """Remove the clsact qdisc of ``ifindex`` (and with it every tc filter under it)."""
    m = _clsact_msg(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, ifindex)
    with _socket(sock) as s:
        s.request(m, f"delete clsact qdisc of ifindex {ifindex}")


class Qdisc(Record):
    """One qdisc of an interface."""

    ifindex: int
    kind: str
    handle: int
    parent: int

    def __init__(self, ifindex: int, kind: str, handle: int, parent: int) -> None:
        self.ifindex = ifindex
        self.kind = kind
        self.handle = handle
        self.parent = parent


def qdisc_list(ifindex: int, sock: NetlinkSocket | None = None) -> list[Qdisc]:
    """The qdiscs of ``ifindex`` (the kernel dumps all interfaces; the others are dropped)."""
    m = Message(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, tcmsg(ifindex))
    with _socket(sock) as s:
        replies = s.request(m, f"list qdiscs of ifindex {ifindex}")
    out = []
    for r in replies:
        if r.type != RTM_NEWQDISC or len(r.payload) < _TCMSG.size:
            continue
        _fam, idx, handle, parent, _info = _TCMSG.unpack_from(r.payload)
        if idx == ifindex:
            out.append(Qdisc(idx, r.attrs(_TCMSG.size).string(TCA_KIND), handle, parent))
    return out


class TcFilter(Record):
    """A tc filter as the kernel reports it (cls_bpf fields filled for ``kind == "bpf"``)."""

    ifindex: int
    parent: int
    handle: int
    priority: int
    protocol: int
    kind: str
    prog_id: int
    name: str
    direct_action: bool
    tag: str

    def __init__(self, ifindex: int, parent: int, handle: int, priority: int, protocol: int,
                 kind: str, prog_id: int = 0, name: str = "", direct_action: bool = False,
                 tag: str = "") -> None:
        self.ifindex = ifindex
        self.parent = parent
        self.handle = handle
        self.priority = priority
        self.protocol = protocol
        self.kind = kind
        self.prog_id = prog_id
        self.name = name
        self.direct_action = direct_action
        self.tag = tag


def parse_filter(msg: NlMsg) -> TcFilter | None:
    """A TcFilter from an RTM_NEWTFILTER message; None for the per-priority header entries
    a dump interleaves (they carry no handle)."""
    if msg.type != RTM_NEWTFILTER or len(msg.payload) < _TCMSG.size:
        return None
    _fam, idx, handle, parent, info = _TCMSG.unpack_from(msg.payload)
    if not handle:
        return None
    a = msg.attrs(_TCMSG.size)
    opts = a.nested(TCA_OPTIONS)
    tag = opts.get(TCA_BPF_TAG)
    return TcFilter(idx, parent, handle, info >> 16, socket.ntohs(info & 0xFFFF), a.string(TCA_KIND),
                    opts.uint(TCA_BPF_ID), opts.string(TCA_BPF_NAME),
                    bool(opts.uint(TCA_BPF_FLAGS) & TCA_BPF_FLAG_ACT_DIRECT),
                    tag.hex() if tag else "")


def _filter_info(priority: int, protocol: int) -> int:
    return (priority & 0xFFFF) << 16 | socket.htons(protocol)


def filter_add_bpf(ifindex: int, parent: int, prog_fd: int, *, name: str, handle: int = 0,
                   priority: int = 0, protocol: int = ETH_P_ALL, direct_action: bool = True,
                   replace: bool = False, sock: NetlinkSocket | None = None) -> TcFilter:
    """Add (or with ``replace`` replace) a cls_bpf filter; the kernel's echo tells the
    handle and priority it chose when they were 0."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE
    flags |= NLM_F_REPLACE if replace else NLM_F_EXCL
    m = Message(RTM_NEWTFILTER, flags,
                tcmsg(ifindex, handle=handle, parent=parent, info=_filter_info(priority, protocol)))
    m.add_str(TCA_KIND, "bpf")
    with m.nest(TCA_OPTIONS):
        m.add_u32(TCA_BPF_FD, prog_fd).add_str(TCA_BPF_NAME, name)
        if direct_action:
            m.add_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)
    with _socket(sock) as s:
        replies = s.request(m, f"{'replace' if replace else 'add'} bpf filter on ifindex {ifindex}")
    for r in replies:
        f = parse_filter(r)
        if f is not None:
            return f
    # no echo (a kernel that does not echo to the requester): report what was asked
    return TcFilter(ifindex, parent, handle, priority, protocol, "bpf", 0, name, direct_action)


def filter_del(ifindex: int, parent: int, handle: int, priority: int, protocol: int = ETH_P_ALL,
               sock: NetlinkSocket | None = None) -> None:
    """Delete one filter, named by handle and priority (bpf_tc_detach)."""
    m = Message(RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK,
                tcmsg(ifindex, handle=handle, parent=parent, info=_filter_info(priority, protocol)))
    with _socket(sock) as s:
        s.request(m, f"delete filter {handle:#x} prio {priority} on ifindex {ifindex}")


def filter_list(ifindex: int, parent: int, sock: NetlinkSocket | None = None) -> list[TcFilter]:
    """Every filter under ``parent`` of ``ifindex`` (all kinds; bpf ones decoded)."""
    m = Message(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, tcmsg(ifindex, parent=parent))
    with _socket(sock) as s:
        replies = s.request(m, f"list filters of ifindex {ifindex} parent {parent:#x}")
    return [f for f in map(parse_filter, replies) if f is not None]

