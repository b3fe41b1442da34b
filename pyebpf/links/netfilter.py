"""Netfilter hooks: a BPF_PROG_TYPE_NETFILTER program linked to an nf hook (libbpf's
bpf_program__attach_netfilter).

The kernel attaches to the *caller's* network namespace; ``netns=`` (a pyebpf addition)
attaches in another one by making the link on a thread that entered it.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from ..errors import OptionError, SyscallError
from ..sys import bpf as _bpf
from ..sys import sock as _sock
from ..uapi import AttachType, ProgType
from .base import AttachError, Link, ProgramLike, prog_fd, prog_label

__all__ = [
    "BPF_F_NETFILTER_IP_DEFRAG",
    "HOOKS",
    "NF_IP_PRI_CONNTRACK_DEFRAG",
    "PROTOCOLS",
    "NetfilterLink",
    "attach_netfilter",
    "parse_hook",
    "parse_pf",
]

BPF_F_NETFILTER_IP_DEFRAG = 1 << 0
NF_IP_PRI_FIRST = -(1 << 31)
NF_IP_PRI_LAST = (1 << 31) - 1
NF_IP_PRI_CONNTRACK_DEFRAG = -400

# NFPROTO_* (include/uapi/linux/netfilter.h); the kernel links only ipv4 and ipv6
PROTOCOLS = {"unspec": 0, "inet": 1, "ipv4": 2, "arp": 3, "netdev": 5, "bridge": 7, "ipv6": 10}
_LINKABLE_PF = (2, 10)
# NF_INET_* hooks, by their C names and by iptables' chain names
HOOKS = {
    "pre_routing": 0, "prerouting": 0,
    "local_in": 1, "input": 1,
    "forward": 2,
    "local_out": 3, "output": 3,
    "post_routing": 4, "postrouting": 4,
}
_HOOK_NAMES = {0: "pre_routing", 1: "local_in", 2: "forward", 3: "local_out", 4: "post_routing"}
_PF_NAMES = {v: k for k, v in PROTOCOLS.items()}


def parse_pf(pf: str | int) -> int:
    """NFPROTO number of ``pf`` ("ipv4", "ipv6", "NFPROTO_IPV4", or a number)."""
    if isinstance(pf, bool) or not isinstance(pf, str | int):
        raise OptionError(f"netfilter pf must be a name or a number, not {pf!r}")
    if isinstance(pf, int):
        if not 0 <= pf < 1 << 32:
            raise OptionError(f"netfilter pf {pf} is out of range")
        return pf
    key = pf.lower().removeprefix("nfproto_")
    if key not in PROTOCOLS:
        raise OptionError(f"unknown netfilter protocol family {pf!r} (netfilter links take "
                          "'ipv4' or 'ipv6')")
    return PROTOCOLS[key]


def parse_hook(hook: str | int) -> int:
    """NF_INET_* number of ``hook`` ("local_in", "NF_INET_LOCAL_OUT", "prerouting", or a number)."""
    if isinstance(hook, bool) or not isinstance(hook, str | int):
        raise OptionError(f"netfilter hook must be a name or a number, not {hook!r}")
    if isinstance(hook, int):
        if not 0 <= hook < 1 << 32:
            raise OptionError(f"netfilter hook {hook} is out of range")
        return hook
    key = hook.lower().removeprefix("nf_inet_").replace("-", "_")
    if key not in HOOKS:
        raise OptionError(f"unknown netfilter hook {hook!r} (want one of pre_routing, local_in, "
                          "forward, local_out, post_routing)")
    return HOOKS[key]


class NetfilterLink(Link):
    """A netfilter program on one hook of one protocol family (not updatable: the kernel
    refuses BPF_LINK_UPDATE for these)."""

    kind = "netfilter"

    def __init__(self, fd: Any, program: Any, *, pf: int, hook: int, priority: int,
                 flags: int, target: str) -> None:
        super().__init__(fd, program, target=target)
        self.pf = pf
        self.hook = hook
        self.priority = priority
        self.flags = flags


def attach_netfilter(prog: ProgramLike, *, pf: str | int = "ipv4", hook: str | int = "local_in",
                     priority: int = 0, defrag: bool = False, flags: int = 0,
                     netns: Any = None) -> NetfilterLink:
    """Link a netfilter program to hook ``hook`` of family ``pf`` at ``priority``.

    ``defrag`` asks for defragmented IP packets (BPF_F_NETFILTER_IP_DEFRAG; needs a
    priority after conntrack's defragmentation, i.e. above -400). ``flags`` are further
    BPF_F_NETFILTER_* bits. ``netns`` (path, name, fd) attaches in that namespace
    instead of the caller's.
    """
    name = prog_label(prog)
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.NETFILTER:
        raise AttachError(f"attach_netfilter needs a netfilter program (SEC(\"netfilter\")), not a "
                          f"{getattr(ptype, 'name', ptype)} program", program=name)
    pfn, hookn = parse_pf(pf), parse_hook(hook)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise OptionError(f"netfilter priority must be an int, not {priority!r}")
    if not NF_IP_PRI_FIRST <= priority <= NF_IP_PRI_LAST:
        raise OptionError(f"netfilter priority {priority} does not fit a signed 32-bit int")
    if not isinstance(flags, int) or not 0 <= flags < 1 << 32:
        raise OptionError(f"netfilter flags must be a 32-bit unsigned int, not {flags!r}")
    nf_flags = flags | (BPF_F_NETFILTER_IP_DEFRAG if defrag else 0)
    pfd = prog_fd(prog)
    label = f"{_PF_NAMES.get(pfn, pfn)}/{_HOOK_NAMES.get(hookn, hookn)} priority {priority}"
    nsfd = None
    if netns is not None:
        from .netns import open_netns

        nsfd, nslabel = open_netns(netns, program=name)
        label += f" in {nslabel}"
    try:
        fd = _sock.run_in_netns(
            nsfd.fileno() if nsfd is not None else None,
            lambda: _bpf.link_create(pfd, None, AttachType.NETFILTER,
                                     netfilter=(pfn, hookn, priority, nf_flags)))
    except SyscallError as e:
        raise _explain(e, name, pfn, hookn, priority, nf_flags, label) from e
    finally:
        if nsfd is not None:
            nsfd.close()
    return NetfilterLink(fd, prog, pf=pfn, hook=hookn, priority=priority, flags=nf_flags,
                         target=label)


def _explain(e: SyscallError, name: str | None, pf: int, hook: int, priority: int, flags: int,
             label: str) -> AttachError:
    defrag = bool(flags & BPF_F_NETFILTER_IP_DEFRAG)
    err = e.errno
    if err == _errno.EAFNOSUPPORT:
        if pf in _LINKABLE_PF and defrag:
            msg = (f"this kernel has no IP defragmentation for {_PF_NAMES[pf]} "
                   "(CONFIG_NF_DEFRAG_IPV4/IPV6); attach without defrag=True")
        else:
            msg = (f"netfilter links take protocol family ipv4 or ipv6 only, not "
                   f"{_PF_NAMES.get(pf, pf)} (NFPROTO {pf})")
    elif err == _errno.EPROTO:
        msg = (f"netfilter hook {hook} does not exist for {_PF_NAMES.get(pf, pf)}: want "
               "pre_routing, local_in, forward, local_out or post_routing (0-4)")
    elif err == _errno.ERANGE:
        if defrag and priority <= NF_IP_PRI_CONNTRACK_DEFRAG:
            msg = (f"priority {priority} runs before IP defragmentation: with defrag=True the "
                   f"priority must be above {NF_IP_PRI_CONNTRACK_DEFRAG}")
        else:
            msg = (f"the kernel reserves netfilter priority {priority} (INT_MIN and INT_MAX "
                   "keep their place for netfilter's own first and last hooks); pick another")
    elif err == _errno.EOPNOTSUPP:
        msg = f"unknown netfilter link flags {flags:#x} (only BPF_F_NETFILTER_IP_DEFRAG exists)"
    elif err == _errno.EBUSY:
        msg = f"another hook already holds {label} exclusively; choose another priority"
    elif err == _errno.EPERM and e.command == "setns":
        msg = (f"no permission to enter the network namespace of {label} (setns: EPERM): "
               "netfilter links attach to the caller's namespace, and entering another one "
               "needs CAP_SYS_ADMIN")
    elif err == _errno.EPERM:
        msg = f"no permission to attach to netfilter {label}: needs CAP_NET_ADMIN and CAP_BPF (run as root)"
    elif err == _errno.EINVAL:
        msg = (f"the kernel refused the netfilter link ({label}): the program must be loaded with "
               "expected_attach_type BPF_NETFILTER (SEC(\"netfilter\")), and netfilter links need "
               "Linux 6.4+")
    else:
        msg = f"cannot attach to netfilter {label}: {e}"
    return AttachError(msg, program=name, cause=e)
