"""The SEC() table: which program type, attach type and flags a section name implies.

This mirrors libbpf's ``section_defs[]`` (libbpf master / bpf-next, late 2025),
row for row and in libbpf's order, because the first matching row wins.

Matching follows libbpf 1.x ``sec_def_matches()`` (the 0.x "sloppy prefix"
mode is gone):

* a prefix ending in ``/`` matches any name that starts with it
  (``"xdp.frags/devmap"`` style rows never end in ``/`` today, but the rule stays);
* a prefix ending in ``+`` matches the bare name or the name followed by ``/``:
  ``"kprobe+"`` matches ``kprobe`` and ``kprobe/do_sys_open`` but not ``kprobex``;
* anything else must match exactly.

A leading ``?`` (autoload off) is not part of the match; the caller strips it.

Differences from libbpf 1.1 (bpftool 7.1 on this machine) worth knowing:
1.1 has no ``tcx/*``, ``tc/ingress``/``tc/egress`` (1.1 maps plain ``tc`` only),
``netkit/*``, ``netfilter``, ``kprobe.session``, ``uprobe.multi*``,
``uprobe.session*``, ``*.s`` tracepoint rows, ``fsession*``,
``cgroup/*_unix``; its ``usdt`` row had no SEC_USDT flag.
"""

from __future__ import annotations

from enum import IntFlag

from .._record import Frozen
from ..uapi import AttachType, ProgType

__all__ = ["SECTION_DEFS", "SecDef", "SecFlag", "attach_target", "match_section"]


class SecFlag(IntFlag):
    """libbpf's ``enum sec_def_flags``."""

    NONE = 0
    # expected_attach_type may be dropped when the kernel does not know it
    EXP_ATTACH_OPT = 1
    # historical: attachable through BPF_PROG_ATTACH (libbpf_attach_type_by_name)
    ATTACHABLE = 2
    ATTACHABLE_OPT = ATTACHABLE | EXP_ATTACH_OPT
    # attach target is a BTF id (kernel function/tracepoint/LSM hook/iterator)
    ATTACH_BTF = 4
    # load with BPF_F_SLEEPABLE
    SLEEPABLE = 8
    # load with BPF_F_XDP_HAS_FRAGS
    XDP_FRAGS = 16
    # USDT: libbpf sets expected_attach_type=BPF_TRACE_UPROBE_MULTI when the
    # kernel supports uprobe_multi links (libbpf >= 1.3)
    USDT = 32


_set = object.__setattr__


class SecDef(Frozen):
    """One row of the SEC() table."""

    __slots__ = ("prefix", "prog_type", "attach_type", "flags", "attach")
    prefix: str
    prog_type: ProgType
    attach_type: AttachType | None  # expected_attach_type; None means not set (0)
    flags: SecFlag
    attach: str | None  # auto-attach handler name, None when not auto-attachable

    def __init__(self, prefix: str, prog_type: ProgType, attach_type: AttachType | None,
                 flags: SecFlag, attach: str | None) -> None:
        _set(self, "prefix", prefix)
        _set(self, "prog_type", prog_type)
        _set(self, "attach_type", attach_type)
        _set(self, "flags", flags)
        _set(self, "attach", attach)

    @property
    def base(self) -> str:
        """The prefix without its trailing ``+`` (what the section name starts with)."""
        return self.prefix[:-1] if self.prefix.endswith("+") else self.prefix

    @property
    def sleepable(self) -> bool:
        return bool(self.flags & SecFlag.SLEEPABLE)

    @property
    def attach_btf(self) -> bool:
        return bool(self.flags & SecFlag.ATTACH_BTF)

    @property
    def xdp_frags(self) -> bool:
        return bool(self.flags & SecFlag.XDP_FRAGS)

    def matches(self, sec_name: str) -> bool:
        """libbpf's ``sec_def_matches()``."""
        p = self.prefix
        if p.endswith("/"):
            return sec_name.startswith(p)
        if p.endswith("+"):
            base = p[:-1]
            if not sec_name.startswith(base):
                return False
            return len(sec_name) == len(base) or sec_name[len(base)] == "/"
        return sec_name == p


_P = ProgType
_A = AttachType
_F = SecFlag


def _d(prefix: str, pt: ProgType, at: AttachType | None, fl: SecFlag,
       attach: str | None = None) -> SecDef:
    return SecDef(prefix, pt, at, fl, attach)


SECTION_DEFS: tuple[SecDef, ...] = (
    _d("socket", _P.SOCKET_FILTER, None, _F.NONE),
    _d("sk_reuseport/migrate", _P.SK_REUSEPORT, _A.SK_REUSEPORT_SELECT_OR_MIGRATE, _F.ATTACHABLE),
    _d("sk_reuseport", _P.SK_REUSEPORT, _A.SK_REUSEPORT_SELECT, _F.ATTACHABLE),
    _d("kprobe+", _P.KPROBE, None, _F.NONE, "kprobe"),
    _d("uprobe+", _P.KPROBE, None, _F.NONE, "uprobe"),
    _d("uprobe.s+", _P.KPROBE, None, _F.SLEEPABLE, "uprobe"),
    _d("kretprobe+", _P.KPROBE, None, _F.NONE, "kprobe"),
    _d("uretprobe+", _P.KPROBE, None, _F.NONE, "uprobe"),
    _d("uretprobe.s+", _P.KPROBE, None, _F.SLEEPABLE, "uprobe"),
    _d("kprobe.multi+", _P.KPROBE, _A.TRACE_KPROBE_MULTI, _F.NONE, "kprobe_multi"),
    _d("kretprobe.multi+", _P.KPROBE, _A.TRACE_KPROBE_MULTI, _F.NONE, "kprobe_multi"),
    _d("kprobe.session+", _P.KPROBE, _A.TRACE_KPROBE_SESSION, _F.NONE, "kprobe_session"),
    _d("uprobe.multi+", _P.KPROBE, _A.TRACE_UPROBE_MULTI, _F.NONE, "uprobe_multi"),
    _d("uretprobe.multi+", _P.KPROBE, _A.TRACE_UPROBE_MULTI, _F.NONE, "uprobe_multi"),
    _d("uprobe.session+", _P.KPROBE, _A.TRACE_UPROBE_SESSION, _F.NONE, "uprobe_multi"),
    _d("uprobe.multi.s+", _P.KPROBE, _A.TRACE_UPROBE_MULTI, _F.SLEEPABLE, "uprobe_multi"),
    _d("uretprobe.multi.s+", _P.KPROBE, _A.TRACE_UPROBE_MULTI, _F.SLEEPABLE, "uprobe_multi"),
    _d("uprobe.session.s+", _P.KPROBE, _A.TRACE_UPROBE_SESSION, _F.SLEEPABLE, "uprobe_multi"),
    _d("ksyscall+", _P.KPROBE, None, _F.NONE, "ksyscall"),
    _d("kretsyscall+", _P.KPROBE, None, _F.NONE, "ksyscall"),
    _d("usdt+", _P.KPROBE, None, _F.USDT, "usdt"),
    _d("usdt.s+", _P.KPROBE, None, _F.USDT | _F.SLEEPABLE, "usdt"),
    # tc/ingress and tc/egress are aliases of the tcx rows
    _d("tc/ingress", _P.SCHED_CLS, _A.TCX_INGRESS, _F.NONE),
    _d("tc/egress", _P.SCHED_CLS, _A.TCX_EGRESS, _F.NONE),
    _d("tcx/ingress", _P.SCHED_CLS, _A.TCX_INGRESS, _F.NONE),
    _d("tcx/egress", _P.SCHED_CLS, _A.TCX_EGRESS, _F.NONE),
    _d("tc", _P.SCHED_CLS, None, _F.NONE),
    _d("classifier", _P.SCHED_CLS, None, _F.NONE),
    _d("action", _P.SCHED_ACT, None, _F.NONE),
    _d("netkit/primary", _P.SCHED_CLS, _A.NETKIT_PRIMARY, _F.NONE),
    _d("netkit/peer", _P.SCHED_CLS, _A.NETKIT_PEER, _F.NONE),
    _d("tracepoint+", _P.TRACEPOINT, None, _F.NONE, "tracepoint"),
    _d("tp+", _P.TRACEPOINT, None, _F.NONE, "tracepoint"),
    _d("tracepoint.s+", _P.TRACEPOINT, None, _F.SLEEPABLE, "tracepoint"),
    _d("tp.s+", _P.TRACEPOINT, None, _F.SLEEPABLE, "tracepoint"),
    _d("raw_tracepoint+", _P.RAW_TRACEPOINT, None, _F.NONE, "raw_tp"),
    _d("raw_tp+", _P.RAW_TRACEPOINT, None, _F.NONE, "raw_tp"),
    _d("raw_tracepoint.s+", _P.RAW_TRACEPOINT, None, _F.SLEEPABLE, "raw_tp"),
    _d("raw_tp.s+", _P.RAW_TRACEPOINT, None, _F.SLEEPABLE, "raw_tp"),
    _d("raw_tracepoint.w+", _P.RAW_TRACEPOINT_WRITABLE, None, _F.NONE, "raw_tp"),
    _d("raw_tp.w+", _P.RAW_TRACEPOINT_WRITABLE, None, _F.NONE, "raw_tp"),
    _d("tp_btf+", _P.TRACING, _A.TRACE_RAW_TP, _F.ATTACH_BTF, "trace"),
    _d("tp_btf.s+", _P.TRACING, _A.TRACE_RAW_TP, _F.ATTACH_BTF | _F.SLEEPABLE, "trace"),
    _d("fentry+", _P.TRACING, _A.TRACE_FENTRY, _F.ATTACH_BTF, "trace"),
    _d("fmod_ret+", _P.TRACING, _A.MODIFY_RETURN, _F.ATTACH_BTF, "trace"),
    _d("fexit+", _P.TRACING, _A.TRACE_FEXIT, _F.ATTACH_BTF, "trace"),
    _d("fentry.s+", _P.TRACING, _A.TRACE_FENTRY, _F.ATTACH_BTF | _F.SLEEPABLE, "trace"),
    _d("fmod_ret.s+", _P.TRACING, _A.MODIFY_RETURN, _F.ATTACH_BTF | _F.SLEEPABLE, "trace"),
    _d("fexit.s+", _P.TRACING, _A.TRACE_FEXIT, _F.ATTACH_BTF | _F.SLEEPABLE, "trace"),
    _d("fsession+", _P.TRACING, _A.TRACE_FSESSION, _F.ATTACH_BTF, "trace"),
    _d("fsession.s+", _P.TRACING, _A.TRACE_FSESSION, _F.ATTACH_BTF | _F.SLEEPABLE, "trace"),
    _d("freplace+", _P.EXT, None, _F.ATTACH_BTF, "trace"),
    _d("lsm+", _P.LSM, _A.LSM_MAC, _F.ATTACH_BTF, "lsm"),
    _d("lsm.s+", _P.LSM, _A.LSM_MAC, _F.ATTACH_BTF | _F.SLEEPABLE, "lsm"),
    _d("lsm_cgroup+", _P.LSM, _A.LSM_CGROUP, _F.ATTACH_BTF),
    _d("iter+", _P.TRACING, _A.TRACE_ITER, _F.ATTACH_BTF, "iter"),
    _d("iter.s+", _P.TRACING, _A.TRACE_ITER, _F.ATTACH_BTF | _F.SLEEPABLE, "iter"),
    _d("syscall", _P.SYSCALL, None, _F.SLEEPABLE),
    _d("xdp.frags/devmap", _P.XDP, _A.XDP_DEVMAP, _F.XDP_FRAGS),
    _d("xdp/devmap", _P.XDP, _A.XDP_DEVMAP, _F.ATTACHABLE),
    _d("xdp.frags/cpumap", _P.XDP, _A.XDP_CPUMAP, _F.XDP_FRAGS),
    _d("xdp/cpumap", _P.XDP, _A.XDP_CPUMAP, _F.ATTACHABLE),
    _d("xdp.frags", _P.XDP, _A.XDP, _F.XDP_FRAGS),
    _d("xdp", _P.XDP, _A.XDP, _F.ATTACHABLE_OPT),
    _d("perf_event", _P.PERF_EVENT, None, _F.NONE),
    _d("lwt_in", _P.LWT_IN, None, _F.NONE),
    _d("lwt_out", _P.LWT_OUT, None, _F.NONE),
    _d("lwt_xmit", _P.LWT_XMIT, None, _F.NONE),
    _d("lwt_seg6local", _P.LWT_SEG6LOCAL, None, _F.NONE),
    _d("sockops", _P.SOCK_OPS, _A.CGROUP_SOCK_OPS, _F.ATTACHABLE_OPT),
    _d("sk_skb/stream_parser", _P.SK_SKB, _A.SK_SKB_STREAM_PARSER, _F.ATTACHABLE_OPT),
    _d("sk_skb/stream_verdict", _P.SK_SKB, _A.SK_SKB_STREAM_VERDICT, _F.ATTACHABLE_OPT),
    _d("sk_skb/verdict", _P.SK_SKB, _A.SK_SKB_VERDICT, _F.ATTACHABLE_OPT),
    _d("sk_skb", _P.SK_SKB, None, _F.NONE),
    _d("sk_msg", _P.SK_MSG, _A.SK_MSG_VERDICT, _F.ATTACHABLE_OPT),
    _d("lirc_mode2", _P.LIRC_MODE2, _A.LIRC_MODE2, _F.ATTACHABLE_OPT),
    _d("flow_dissector", _P.FLOW_DISSECTOR, _A.FLOW_DISSECTOR, _F.ATTACHABLE_OPT),
    _d("cgroup_skb/ingress", _P.CGROUP_SKB, _A.CGROUP_INET_INGRESS, _F.ATTACHABLE_OPT),
    _d("cgroup_skb/egress", _P.CGROUP_SKB, _A.CGROUP_INET_EGRESS, _F.ATTACHABLE_OPT),
    _d("cgroup/skb", _P.CGROUP_SKB, None, _F.NONE),
    _d("cgroup/sock_create", _P.CGROUP_SOCK, _A.CGROUP_INET_SOCK_CREATE, _F.ATTACHABLE),
    _d("cgroup/sock_release", _P.CGROUP_SOCK, _A.CGROUP_INET_SOCK_RELEASE, _F.ATTACHABLE),
    _d("cgroup/sock", _P.CGROUP_SOCK, _A.CGROUP_INET_SOCK_CREATE, _F.ATTACHABLE_OPT),
    _d("cgroup/post_bind4", _P.CGROUP_SOCK, _A.CGROUP_INET4_POST_BIND, _F.ATTACHABLE),
    _d("cgroup/post_bind6", _P.CGROUP_SOCK, _A.CGROUP_INET6_POST_BIND, _F.ATTACHABLE),
    _d("cgroup/bind4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET4_BIND, _F.ATTACHABLE),
    _d("cgroup/bind6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET6_BIND, _F.ATTACHABLE),
    _d("cgroup/connect4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET4_CONNECT, _F.ATTACHABLE),
    _d("cgroup/connect6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET6_CONNECT, _F.ATTACHABLE),
    _d("cgroup/connect_unix", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UNIX_CONNECT, _F.ATTACHABLE),
    _d("cgroup/sendmsg4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UDP4_SENDMSG, _F.ATTACHABLE),
    _d("cgroup/sendmsg6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UDP6_SENDMSG, _F.ATTACHABLE),
    _d("cgroup/sendmsg_unix", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UNIX_SENDMSG, _F.ATTACHABLE),
    _d("cgroup/recvmsg4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UDP4_RECVMSG, _F.ATTACHABLE),
    _d("cgroup/recvmsg6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UDP6_RECVMSG, _F.ATTACHABLE),
    _d("cgroup/recvmsg_unix", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UNIX_RECVMSG, _F.ATTACHABLE),
    _d("cgroup/getpeername4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET4_GETPEERNAME, _F.ATTACHABLE),
    _d("cgroup/getpeername6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET6_GETPEERNAME, _F.ATTACHABLE),
    _d("cgroup/getpeername_unix", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UNIX_GETPEERNAME, _F.ATTACHABLE),
    _d("cgroup/getsockname4", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET4_GETSOCKNAME, _F.ATTACHABLE),
    _d("cgroup/getsockname6", _P.CGROUP_SOCK_ADDR, _A.CGROUP_INET6_GETSOCKNAME, _F.ATTACHABLE),
    _d("cgroup/getsockname_unix", _P.CGROUP_SOCK_ADDR, _A.CGROUP_UNIX_GETSOCKNAME, _F.ATTACHABLE),
    _d("cgroup/sysctl", _P.CGROUP_SYSCTL, _A.CGROUP_SYSCTL, _F.ATTACHABLE),
    _d("cgroup/getsockopt", _P.CGROUP_SOCKOPT, _A.CGROUP_GETSOCKOPT, _F.ATTACHABLE),
    _d("cgroup/setsockopt", _P.CGROUP_SOCKOPT, _A.CGROUP_SETSOCKOPT, _F.ATTACHABLE),
    _d("cgroup/dev", _P.CGROUP_DEVICE, _A.CGROUP_DEVICE, _F.ATTACHABLE_OPT),
    # struct_ops programs are attached through their struct_ops map, not per program
    _d("struct_ops+", _P.STRUCT_OPS, None, _F.NONE),
    _d("struct_ops.s+", _P.STRUCT_OPS, None, _F.SLEEPABLE),
    _d("sk_lookup", _P.SK_LOOKUP, _A.SK_LOOKUP, _F.ATTACHABLE),
    _d("netfilter", _P.NETFILTER, _A.NETFILTER, _F.NONE),
)

# Exact-match rows by name, for the common case of a name with no '/'.
_cache: dict[str, SecDef | None] = {}


def match_section(sec_name: str) -> SecDef | None:
    """The first SEC() row matching ``sec_name`` (libbpf ``find_sec_def()``), or None.

    ``sec_name`` must already have a leading ``?`` removed.
    """
    try:
        return _cache[sec_name]
    except KeyError:
        pass
    found = None
    for d in SECTION_DEFS:
        if d.matches(sec_name):
            found = d
            break
    if len(_cache) < 4096:
        _cache[sec_name] = found
    return found


def attach_target(sec_def: SecDef, sec_name: str) -> str | None:
    """What follows the prefix in ``sec_name``: ``"syscalls/sys_enter_openat"`` for
    ``tp/syscalls/sys_enter_openat``, ``"/proc/self/exe:func"`` for
    ``uprobe//proc/self/exe:func``. None for a bare or exact-match name.

    This is the string libbpf's attach handlers parse (and, for SEC_ATTACH_BTF rows,
    the BTF name libbpf looks up: everything after the first ``/``).
    """
    p = sec_def.prefix
    if p.endswith("/"):
        rest = sec_name[len(p):]
        return rest if sec_name.startswith(p) else None
    if p.endswith("+"):
        base = p[:-1]
        if sec_name == base or not sec_name.startswith(base + "/"):
            return None
        return sec_name[len(base) + 1:]
    return None
