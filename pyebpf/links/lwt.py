"""Lightweight tunnel hooks: lwt_in / lwt_out / lwt_xmit programs run for the packets of one
route, attached by adding that route with a BPF encap, as ``ip route add DEST dev DEV encap
bpf xmit obj FILE`` does (libbpf has no attach function for them).

The route is made over rtnetlink (pyebpf.sys.netlink) with RTA_ENCAP_TYPE =
LWTUNNEL_ENCAP_BPF and RTA_ENCAP holding LWT_BPF_IN/OUT/XMIT, each with the program fd and
a name. Closing the :class:`LwtRoute` deletes the route, and so does dropping it (like
every Link, it undoes its attachment when garbage-collected): keep it while the program
should run. The netlink socket is kept: it
belongs to the namespace the route lives in.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import socket
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import netlink as _nl
from ..sys import sock as _sock
from ..uapi import ProgType
from .base import AttachError, Link, ProgramLike, prog_fd, prog_label

__all__ = ["HOOKS", "LwtRoute", "attach_lwt", "parse_dest"]

# hook name -> (RTA_ENCAP nest type, program type the kernel demands there)
HOOKS = {
    "in": (_nl.LWT_BPF_IN, ProgType.LWT_IN),
    "out": (_nl.LWT_BPF_OUT, ProgType.LWT_OUT),
    "xmit": (_nl.LWT_BPF_XMIT, ProgType.LWT_XMIT),
}
_HOOK_OF_TYPE = {ptype: name for name, (_, ptype) in HOOKS.items()}


def parse_dest(dest: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The route's destination: "10.1.2.0/24", "10.1.2.3" (a /32), "fd00::/64", "default"."""
    if not isinstance(dest, str) or not dest:
        raise OptionError(f"route destination must be an address or prefix string, not {dest!r}")
    if dest == "default":
        return ipaddress.IPv4Network("0.0.0.0/0")
    try:
        return ipaddress.ip_network(dest, strict=True)
    except ValueError as e:
        raise OptionError(f"bad route destination {dest!r}: {e}") from None


def _hook_for(prog: Any, hook: str | None) -> tuple[str, int]:
    ptype = getattr(prog, "type", None)
    name = prog_label(prog)
    if ptype is not None and ptype not in _HOOK_OF_TYPE:
        extra = (" (seg6local programs attach through an SRv6 End.BPF route, not a BPF encap)"
                 if ptype == ProgType.LWT_SEG6LOCAL else "")
        raise AttachError(f"attach_lwt needs a lwt_in, lwt_out or lwt_xmit program, not a "
                          f"{getattr(ptype, 'name', ptype)} program{extra}", program=name)
    if hook is None:
        if ptype is None:
            raise OptionError("pass hook ('in', 'out' or 'xmit'): the program type is unknown")
        hook = _HOOK_OF_TYPE[ptype]
    key = hook.lower().removeprefix("lwt_") if isinstance(hook, str) else hook
    if key not in HOOKS:
        raise OptionError(f"unknown lwt hook {hook!r} (want 'in', 'out' or 'xmit')")
    nest, want = HOOKS[key]
    if ptype is not None and ptype != want:
        raise AttachError(f"a {ptype.name} program cannot run at the lwt {key} hook (it takes "
                          f"{want.name} programs); use hook={_HOOK_OF_TYPE[ptype]!r}", program=name)
    return key, nest


class LwtRoute(Link):
    """A route whose packets run an lwt program. ``fd`` is None; ``close()`` deletes the route."""

    kind = "lwt"

    def __init__(self, program: Any, nl: _nl.NetlinkSocket, dest: Any, ifindex: int, hook: str,
                 target: str) -> None:
        super().__init__(None, program, target=target)
        self._nl: _nl.NetlinkSocket | None = nl
        self.dest = dest
        self.ifindex = ifindex
        self.hook = hook

    @property
    def closed(self) -> bool:
        return self._nl is None

    no_link = "an lwt program is attached by a route, not a bpf link"

    def close(self) -> None:
        """Delete the route (RTM_DELROUTE); a route already gone is fine. Idempotent."""
        nl, self._nl = self._nl, None
        if nl is None:
            return
        try:
            nl.request(_route_msg(_nl.RTM_DELROUTE, _nl.NLM_F_REQUEST | _nl.NLM_F_ACK, self.dest,
                                  self.ifindex), f"delete lwt route {self.dest}")
        except SyscallError as e:
            if e.errno not in (_errno.ESRCH, _errno.ENOENT, _errno.ENODEV):  # deleted already
                raise
        finally:
            nl.close()


def _route_msg(msg_type: int, flags: int, dest: Any, ifindex: int) -> _nl.Message:
    fam = socket.AF_INET if dest.version == 4 else socket.AF_INET6
    m = _nl.Message(msg_type, flags, _nl.rtmsg(fam, dst_len=dest.prefixlen))
    if dest.prefixlen:
        m.add(_nl.RTA_DST, dest.network_address.packed)
    m.add_u32(_nl.RTA_OIF, ifindex)
    return m


def attach_lwt(prog: ProgramLike, dest: str, *, dev: str | int, hook: str | None = None,
               netns: Any = None) -> LwtRoute:
    """Add a route to ``dest`` through ``dev`` whose packets run ``prog`` (a BPF encap).

    ``hook`` ("in", "out", "xmit") defaults to the program type's. ``netns`` (a path, a
    name under /run/netns or an fd) adds the route in that namespace instead of the
    caller's; ``dev`` is looked up there. Closing the result deletes the route.
    """
    name = prog_label(prog)
    key, nest = _hook_for(prog, hook)
    net = parse_dest(dest)
    if (isinstance(dev, bool) or not isinstance(dev, str | int) or dev == ""
            or (isinstance(dev, int) and not 0 < dev < 1 << 31)):
        raise OptionError(f"dev must be an interface name or index, not {dev!r}")
    pfd = prog_fd(prog)
    nsfd = None
    where = ""
    if netns is not None:
        from .netns import open_netns

        nsfd, nslabel = open_netns(netns, program=name)
        where = f" in {nslabel}"
    try:
        # the socket is made inside the namespace and so acts there from any thread
        nl = _sock.run_in_netns(nsfd.fileno() if nsfd is not None else None, _nl.NetlinkSocket)
    except SyscallError as e:
        if e.errno == _errno.EPERM and e.command == "setns":
            raise AttachError(f"no permission to enter the namespace{where} (setns: EPERM): "
                              "needs CAP_SYS_ADMIN", program=name, cause=e) from e
        raise AttachError(f"cannot open a netlink socket{where}: {e}", program=name, cause=e) from e
    finally:
        if nsfd is not None:
            nsfd.close()
    try:
        ifindex = dev if isinstance(dev, int) else _nl.link_index(dev, nl)
        label = f"{net} dev {dev} encap bpf {key}{where}"
        m = _route_msg(_nl.RTM_NEWROUTE,
                       _nl.NLM_F_REQUEST | _nl.NLM_F_ACK | _nl.NLM_F_CREATE | _nl.NLM_F_EXCL,
                       net, ifindex)
        m.add_u16(_nl.RTA_ENCAP_TYPE, _nl.LWTUNNEL_ENCAP_BPF)
        with m.nest(_nl.RTA_ENCAP), m.nest(nest):
            m.add_u32(_nl.LWT_BPF_PROG_FD, pfd).add_str(_nl.LWT_BPF_PROG_NAME, (name or "pyebpf")[:255])
        nl.request(m, f"add route {label}")
    except SyscallError as e:
        nl.close()
        raise _explain(e, name, dev, net, where) from e
    except BaseException:
        nl.close()
        raise
    return LwtRoute(prog, nl, net, ifindex, key, label)


def _explain(e: SyscallError, name: str | None, dev: str | int, net: Any, where: str) -> AttachError:
    extack = getattr(e, "extack", "")
    said = f" (kernel says: {extack})" if extack else ""
    if e.errno == _errno.ENODEV:
        msg = f"no network interface {dev!r}{where or ' in this network namespace'}"
    elif e.errno == _errno.EEXIST:
        msg = f"a route to {net} already exists{where}; delete it or choose another destination"
    elif e.errno == _errno.EPERM:
        msg = f"no permission to add a route{where} (RTM_NEWROUTE: EPERM): needs CAP_NET_ADMIN (run as root)"
    elif e.errno == _errno.ENETDOWN:
        msg = f"interface {dev!r} is down{where}; bring it up before routing through it"
    elif e.errno == _errno.EOPNOTSUPP:
        msg = "this kernel cannot attach BPF to routes (CONFIG_LWTUNNEL_BPF is off)"
    elif e.errno == _errno.EINVAL:
        msg = (f"the kernel refused the route to {net} with a BPF encap{said}: check that the "
               "interface and the address family fit, and the program type matches the hook")
        said = ""
    else:
        msg = f"cannot add the lwt route to {net}: {e}"
        said = ""
    return AttachError(msg + said, program=name, cause=e)
