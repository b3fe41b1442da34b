"""Netlink message encoding and decoding (pure: no sockets, no syscalls).

:class:`Message` builds a request (fixed header + nested rtattrs), :class:`Attrs` reads
attributes back, :func:`split_messages` and :func:`parse_error` take replies apart. The
rtnetlink constants the XDP, tc and route helpers of :mod:`pyebpf.sys.netlink` use are
here too. Unit-tested without root (tests/test_netlink.py).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import socket
import struct
from collections.abc import Iterator

from .._record import Record
from ..errors import OptionError

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
    "NlMsg",
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
    "genlmsghdr",
    "ifinfomsg",
    "msg_name",
    "parse_error",
    "rtmsg",
    "split_messages",
    "tcmsg",
]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# nlmsghdr flags
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
# flags of an NLMSG_ERROR reply
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# if_link.h
IFLA_IFNAME = 3
IFLA_XDP = 43
IFLA_XDP_FD, IFLA_XDP_ATTACHED, IFLA_XDP_FLAGS, IFLA_XDP_PROG_ID = 1, 2, 3, 4
IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID, IFLA_XDP_HW_PROG_ID, IFLA_XDP_EXPECTED_FD = 5, 6, 7, 8
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
XDP_FLAGS_MODES = XDP_FLAGS_SKB_MODE | XDP_FLAGS_DRV_MODE | XDP_FLAGS_HW_MODE
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)

# rtnetlink.h / pkt_sched.h / pkt_cls.h
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_FLAGS_GEN, TCA_BPF_TAG, TCA_BPF_ID = 6, 7, 8, 9, 10, 11
TCA_BPF_FLAG_ACT_DIRECT = 1 << 0
TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS, TC_H_MIN_EGRESS = 0xFFF2, 0xFFF3
ETH_P_ALL = 0x0003

# generic netlink: the controller, and the netdev family (XDP features, bpf_xdp_query)
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX, NETDEV_A_DEV_XDP_FEATURES, NETDEV_A_DEV_XDP_ZC_MAX_SEGS = 1, 3, 4
NETDEV_XDP_ACT = {1: "basic", 2: "redirect", 4: "ndo-xmit", 8: "xsk-zerocopy", 16: "hw-offload",
                  32: "rx-sg", 64: "ndo-xmit-sg"}

# routes, for LWT bpf encaps (see the module docstring)
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_ENCAP_TYPE, RTA_ENCAP = 1, 4, 5, 21, 22
LWTUNNEL_ENCAP_BPF = 6
LWT_BPF_IN, LWT_BPF_OUT, LWT_BPF_XMIT = 1, 2, 3
LWT_BPF_PROG_FD, LWT_BPF_PROG_NAME = 1, 2
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTA = struct.Struct("=HH")  # rtattr / nlattr: len, type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_TCMSG = struct.Struct("=BxxxiIII")  # tcmsg: family, ifindex, handle, parent, info
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg

_MSG_NAMES = {
    RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK", RTM_GETLINK: "RTM_GETLINK",
    RTM_SETLINK: "RTM_SETLINK", RTM_NEWROUTE: "RTM_NEWROUTE", RTM_DELROUTE: "RTM_DELROUTE",
    RTM_GETROUTE: "RTM_GETROUTE", RTM_NEWQDISC: "RTM_NEWQDISC", RTM_DELQDISC: "RTM_DELQDISC",
    RTM_GETQDISC: "RTM_GETQDISC", RTM_NEWTFILTER: "RTM_NEWTFILTER",
    RTM_DELTFILTER: "RTM_DELTFILTER", RTM_GETTFILTER: "RTM_GETTFILTER",
}


def _align(n: int) -> int:
    return (n + 3) & ~3


def msg_name(msg_type: int) -> str:
    return _MSG_NAMES.get(msg_type, f"RTM_{msg_type}")


# --- fixed headers -----------------------------------------------------------------------------


def ifinfomsg(index: int = 0, family: int = socket.AF_UNSPEC, *, type: int = 0, flags: int = 0,
              change: int = 0) -> bytes:
    """struct ifinfomsg."""
    return _IFINFO.pack(family, type, index, flags, change)


def tcmsg(ifindex: int, *, handle: int = 0, parent: int = 0, info: int = 0,
          family: int = socket.AF_UNSPEC) -> bytes:
    """struct tcmsg (``info`` is priority << 16 | protocol in network order for filters)."""
    return _TCMSG.pack(family, ifindex, handle, parent, info)


def genlmsghdr(cmd: int, version: int = 1) -> bytes:
    """struct genlmsghdr."""
    return struct.pack("=BBH", cmd, version, 0)


def rtmsg(family: int, *, dst_len: int = 0, src_len: int = 0, tos: int = 0,
          table: int = RT_TABLE_MAIN, protocol: int = RTPROT_BOOT, scope: int = RT_SCOPE_UNIVERSE,
          type: int = RTN_UNICAST, flags: int = 0) -> bytes:
    """struct rtmsg, with the defaults ``ip route add`` uses for a unicast route."""
    return _RTMSG.pack(family, dst_len, src_len, tos, table, protocol, scope, type, flags)


# --- building ----------------------------------------------------------------------------------


class Message:
    """One request: a message type, flags, a fixed header and rtattrs (nesting with :meth:`nest`);
    ``name`` names it in traces and errors (default: the rtnetlink RTM_* name).

    The ``add*`` methods return the message, so calls chain.
    """

    def __init__(self, msg_type: int, flags: int, header: bytes = b"", *,
                 name: str | None = None) -> None:
        self.type = msg_type
        # for traces and errors; message types of other netlink protocols reuse rtnetlink's numbers
        self.name = name or msg_name(msg_type)
        self.flags = flags
        self.header = bytes(header)
        self.body = bytearray(self.header)
        while len(self.body) % 4:
            self.body.append(0)

    def add(self, attr_type: int, data: bytes = b"") -> Message:
        """An attribute with raw payload ``data`` (padded to 4 bytes)."""
        if not 0 <= attr_type <= 0xFFFF or _RTA.size + len(data) > 0xFFFF:
            raise OptionError(f"netlink attribute {attr_type} does not fit ({len(data)} bytes)")
        self.body += _RTA.pack(_RTA.size + len(data), attr_type) + data
        self.body += bytes(_align(len(data)) - len(data))
        return self

    def add_u8(self, attr_type: int, v: int) -> Message:
        return self.add(attr_type, struct.pack("=B", v))

    def add_u16(self, attr_type: int, v: int) -> Message:
        return self.add(attr_type, struct.pack("=H", v))

    def add_u32(self, attr_type: int, v: int) -> Message:
        return self.add(attr_type, struct.pack("=I", v))

    def add_s32(self, attr_type: int, v: int) -> Message:
        return self.add(attr_type, struct.pack("=i", v))

    def add_u64(self, attr_type: int, v: int) -> Message:
        return self.add(attr_type, struct.pack("=Q", v))

    def add_str(self, attr_type: int, s: str | bytes) -> Message:
        """A NUL-terminated string."""
        b = s.encode() if isinstance(s, str) else bytes(s)
        return self.add(attr_type, b + b"\0")

    @contextlib.contextmanager
    def nest(self, attr_type: int) -> Iterator[Message]:
        """``with m.nest(IFLA_XDP): m.add_s32(...)``: attributes added inside are nested."""
        start = len(self.body)
        self.body += _RTA.pack(0, attr_type | NLA_F_NESTED)
        yield self
        size = len(self.body) - start
        if size > 0xFFFF:
            raise OptionError(f"nested netlink attribute {attr_type} too large ({size} bytes)")
        self.body[start : start + _RTA.size] = _RTA.pack(size, attr_type | NLA_F_NESTED)

    def encode(self, seq: int = 0, pid: int = 0) -> bytes:
        """The wire bytes: nlmsghdr + body."""
        return _HDR.pack(_HDR.size + len(self.body), self.type, self.flags, seq, pid) + bytes(self.body)

    def describe(self) -> str:
        """The request for the DEBUG trace: type, flags, header fields, attributes."""
        attrs = Attrs.parse(bytes(self.body), _align(len(self.header)))
        return f"{self.name} flags={_flag_names(self.flags)} {_hdr_repr(self.type, self.header)}{attrs.render()}"


def _flag_names(flags: int) -> str:
    names = [n for bit, n in ((NLM_F_REQUEST, "REQUEST"), (NLM_F_ACK, "ACK"), (NLM_F_ECHO, "ECHO"))
             if flags & bit]
    if flags & NLM_F_DUMP == NLM_F_DUMP:
        names.append("DUMP")
    else:
        names += [n for bit, n in ((NLM_F_REPLACE, "REPLACE"), (NLM_F_EXCL, "EXCL"),
                                   (NLM_F_CREATE, "CREATE"), (NLM_F_APPEND, "APPEND")) if flags & bit]
    return "|".join(names) or "0"


def _hdr_repr(msg_type: int, header: bytes) -> str:
    try:
        if len(header) == _IFINFO.size and RTM_NEWLINK <= msg_type <= RTM_SETLINK:
            fam, _t, idx, _f, _c = _IFINFO.unpack(header)
            return f"ifindex={idx} family={fam}"
        if len(header) == _TCMSG.size and RTM_NEWQDISC <= msg_type <= RTM_GETTFILTER + 3:
            fam, idx, handle, parent, info = _TCMSG.unpack(header)
            return f"ifindex={idx} handle={handle:#x} parent={parent:#x} info={info:#x}"
    except struct.error:
        pass
    return f"hdr={header.hex()}" if header else ""


# --- parsing -----------------------------------------------------------------------------------


class Attrs:
    """Parsed rtattrs: ``attrs[type]`` is the payload of the last attribute of that type
    (flag bits masked off); ``items`` keeps them all in order."""

    __slots__ = ("items", "_by_type")

    def __init__(self, items: list[tuple[int, bytes]]) -> None:
        self.items = items
        self._by_type = {t & NLA_TYPE_MASK: v for t, v in items}

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> Attrs:
        """Attributes from ``buf[offset:]``; a truncated trailing attribute is ignored."""
        items: list[tuple[int, bytes]] = []
        n = len(buf)
        while offset + _RTA.size <= n:
            length, atype = _RTA.unpack_from(buf, offset)
            if length < _RTA.size or offset + length > n:
                break
            items.append((atype, buf[offset + _RTA.size : offset + length]))
            offset += _align(length)
        return cls(items)

    def __contains__(self, attr_type: int) -> bool:
        return attr_type in self._by_type

    def __getitem__(self, attr_type: int) -> bytes:
        return self._by_type[attr_type]

    def get(self, attr_type: int, default: bytes | None = None) -> bytes | None:
        return self._by_type.get(attr_type, default)

    def uint(self, attr_type: int, default: int = 0) -> int:
        """An unsigned integer attribute of 1, 2, 4 or 8 bytes (host order)."""
        v = self._by_type.get(attr_type)
        if v is None or len(v) not in (1, 2, 4, 8):
            return default
        return int.from_bytes(v, "little" if _LE else "big")

    def string(self, attr_type: int, default: str = "") -> str:
        v = self._by_type.get(attr_type)
        return default if v is None else v.split(b"\0", 1)[0].decode("utf-8", "replace")

    def nested(self, attr_type: int) -> Attrs:
        """The attributes inside a nested attribute (empty if it is absent)."""
        return Attrs.parse(self._by_type.get(attr_type, b""))

    def render(self) -> str:
        """Compact text for the DEBUG trace: `` {43:{1:7 3:2} 3:'eth0'}`` ("" when empty)."""
        return f" {self._render()}" if self.items else ""

    def _render(self) -> str:
        parts = []
        for t, v in self.items:
            if t & NLA_F_NESTED:
                parts.append(f"{t & NLA_TYPE_MASK}:{Attrs.parse(v)._render()}")
            elif len(v) >= 2 and v.endswith(b"\0") and b"\0" not in v[:-1] and v[:-1].isascii() \
                    and v[:-1].decode().isprintable():
                parts.append(f"{t}:{v[:-1].decode()!r}")
            elif len(v) in (1, 2, 4, 8):
                x = int.from_bytes(v, "little" if _LE else "big")
                parts.append(f"{t}:{x:#x}" if x > 0xFFFF else f"{t}:{x}")
            else:
                parts.append(f"{t}:{v.hex()}")
        return "{" + " ".join(parts) + "}"

    def __repr__(self) -> str:
        return f"Attrs({self.render().strip()})"


_LE = struct.pack("=H", 1) == b"\x01\0"


class NlMsg(Record):
    """One reply message: its type, flags and payload (fixed header + attributes)."""

    type: int
    flags: int
    seq: int
    payload: bytes

    def __init__(self, type: int, flags: int, seq: int, payload: bytes) -> None:
        self.type = type
        self.flags = flags
        self.seq = seq
        self.payload = payload

    def attrs(self, header_size: int) -> Attrs:
        """The attributes after a fixed header of ``header_size`` bytes."""
        return Attrs.parse(self.payload, _align(header_size))


def split_messages(data: bytes) -> list[NlMsg]:
    """The messages of one netlink datagram; a truncated tail is dropped."""
    out = []
    off, n = 0, len(data)
    while off + _HDR.size <= n:
        length, mtype, flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size or off + length > n:
            break
        out.append(NlMsg(mtype, flags, seq, data[off + _HDR.size : off + length]))
        off += _align(length)
    return out


def parse_error(msg: NlMsg) -> tuple[int, str, int | None]:
    """(errno, extended-ack message, bad attribute offset) of an NLMSG_ERROR (errno 0: an ACK)."""
    p = msg.payload
    if len(p) < 4:
        return _errno.EPROTO, "truncated NLMSG_ERROR", None
    err = -struct.unpack_from("=i", p)[0]
    text, offs = "", None
    if msg.flags & NLM_F_ACK_TLVS and len(p) >= 4 + _HDR.size:
        orig_len = _HDR.unpack_from(p, 4)[0]
        # the request is echoed whole on errors unless capped (NETLINK_CAP_ACK)
        tlv = 4 + (_HDR.size if msg.flags & NLM_F_CAPPED or err == 0 else _align(orig_len))
        a = Attrs.parse(p, tlv)
        text = a.string(NLMSGERR_ATTR_MSG)
        if NLMSGERR_ATTR_OFFS in a:
            offs = a.uint(NLMSGERR_ATTR_OFFS)
    return err, text, offs
