"""SEC() table: libbpf's section_defs rows and matching rules."""

from __future__ import annotations

import pytest

from pyebpf.obj.sections import SECTION_DEFS, SecFlag, attach_target, match_section
from pyebpf.uapi import AttachType as A
from pyebpf.uapi import MapType
from pyebpf.uapi import ProgType as P

F = SecFlag

# name -> (prog type, expected attach type, flags, attach target, handler)
CASES = [
    ("tp/syscalls/sys_enter_openat", P.TRACEPOINT, None, F.NONE, "syscalls/sys_enter_openat", "tracepoint"),
    ("tracepoint/sched/sched_process_exec", P.TRACEPOINT, None, F.NONE, "sched/sched_process_exec", "tracepoint"),
    ("tracepoint", P.TRACEPOINT, None, F.NONE, None, "tracepoint"),
    ("tp.s/syscalls/sys_enter_read", P.TRACEPOINT, None, F.SLEEPABLE, "syscalls/sys_enter_read", "tracepoint"),
    ("raw_tp/sys_enter", P.RAW_TRACEPOINT, None, F.NONE, "sys_enter", "raw_tp"),
    ("raw_tracepoint/sys_enter", P.RAW_TRACEPOINT, None, F.NONE, "sys_enter", "raw_tp"),
    ("raw_tp.w/bpf_test_finish", P.RAW_TRACEPOINT_WRITABLE, None, F.NONE, "bpf_test_finish", "raw_tp"),
    ("raw_tracepoint.w/x", P.RAW_TRACEPOINT_WRITABLE, None, F.NONE, "x", "raw_tp"),
    ("tp_btf/sched_switch", P.TRACING, A.TRACE_RAW_TP, F.ATTACH_BTF, "sched_switch", "trace"),
    ("fentry/do_nanosleep", P.TRACING, A.TRACE_FENTRY, F.ATTACH_BTF, "do_nanosleep", "trace"),
    ("fexit/vfs_read", P.TRACING, A.TRACE_FEXIT, F.ATTACH_BTF, "vfs_read", "trace"),
    ("fentry.s/do_sys_open", P.TRACING, A.TRACE_FENTRY, F.ATTACH_BTF | F.SLEEPABLE, "do_sys_open", "trace"),
    ("fmod_ret/security_file_open", P.TRACING, A.MODIFY_RETURN, F.ATTACH_BTF, "security_file_open", "trace"),
    ("freplace/handler", P.EXT, None, F.ATTACH_BTF, "handler", "trace"),
    ("lsm/file_open", P.LSM, A.LSM_MAC, F.ATTACH_BTF, "file_open", "lsm"),
    ("lsm.s/bprm_check_security", P.LSM, A.LSM_MAC, F.ATTACH_BTF | F.SLEEPABLE, "bprm_check_security", "lsm"),
    ("lsm_cgroup/socket_bind", P.LSM, A.LSM_CGROUP, F.ATTACH_BTF, "socket_bind", None),
    ("iter/task", P.TRACING, A.TRACE_ITER, F.ATTACH_BTF, "task", "iter"),
    ("iter.s/task", P.TRACING, A.TRACE_ITER, F.ATTACH_BTF | F.SLEEPABLE, "task", "iter"),
    ("kprobe/do_unlinkat", P.KPROBE, None, F.NONE, "do_unlinkat", "kprobe"),
    ("kretprobe/do_unlinkat", P.KPROBE, None, F.NONE, "do_unlinkat", "kprobe"),
    ("kprobe", P.KPROBE, None, F.NONE, None, "kprobe"),
    ("ksyscall/openat", P.KPROBE, None, F.NONE, "openat", "ksyscall"),
    ("kretsyscall/openat", P.KPROBE, None, F.NONE, "openat", "ksyscall"),
    ("kprobe.multi/do_*", P.KPROBE, A.TRACE_KPROBE_MULTI, F.NONE, "do_*", "kprobe_multi"),
    ("kretprobe.multi/vfs_*", P.KPROBE, A.TRACE_KPROBE_MULTI, F.NONE, "vfs_*", "kprobe_multi"),
    ("kprobe.session/bpf_fentry_test*", P.KPROBE, A.TRACE_KPROBE_SESSION, F.NONE, "bpf_fentry_test*", "kprobe_session"),
    ("uprobe//proc/self/exe:func", P.KPROBE, None, F.NONE, "/proc/self/exe:func", "uprobe"),
    ("uprobe/libc.so.6:malloc", P.KPROBE, None, F.NONE, "libc.so.6:malloc", "uprobe"),
    ("uretprobe//bin/bash:readline", P.KPROBE, None, F.NONE, "/bin/bash:readline", "uprobe"),
    ("uprobe.s//bin/bash:readline", P.KPROBE, None, F.SLEEPABLE, "/bin/bash:readline", "uprobe"),
    ("uprobe", P.KPROBE, None, F.NONE, None, "uprobe"),
    ("uprobe.multi//bin/bash:read*", P.KPROBE, A.TRACE_UPROBE_MULTI, F.NONE, "/bin/bash:read*", "uprobe_multi"),
    ("uretprobe.multi.s/x:y", P.KPROBE, A.TRACE_UPROBE_MULTI, F.SLEEPABLE, "x:y", "uprobe_multi"),
    ("uprobe.session/x:y", P.KPROBE, A.TRACE_UPROBE_SESSION, F.NONE, "x:y", "uprobe_multi"),
    ("usdt/./prog:provider:name", P.KPROBE, None, F.USDT, "./prog:provider:name", "usdt"),
    ("usdt", P.KPROBE, None, F.USDT, None, "usdt"),
    ("usdt.s/a:b:c", P.KPROBE, None, F.USDT | F.SLEEPABLE, "a:b:c", "usdt"),
    ("xdp", P.XDP, A.XDP, F.ATTACHABLE_OPT, None, None),
    ("xdp.frags", P.XDP, A.XDP, F.XDP_FRAGS, None, None),
    ("xdp/devmap", P.XDP, A.XDP_DEVMAP, F.ATTACHABLE, None, None),
    ("xdp.frags/devmap", P.XDP, A.XDP_DEVMAP, F.XDP_FRAGS, None, None),
    ("xdp/cpumap", P.XDP, A.XDP_CPUMAP, F.ATTACHABLE, None, None),
    ("xdp.frags/cpumap", P.XDP, A.XDP_CPUMAP, F.XDP_FRAGS, None, None),
    ("tc", P.SCHED_CLS, None, F.NONE, None, None),
    ("classifier", P.SCHED_CLS, None, F.NONE, None, None),
    ("action", P.SCHED_ACT, None, F.NONE, None, None),
    ("tcx/ingress", P.SCHED_CLS, A.TCX_INGRESS, F.NONE, None, None),
    ("tcx/egress", P.SCHED_CLS, A.TCX_EGRESS, F.NONE, None, None),
    ("tc/ingress", P.SCHED_CLS, A.TCX_INGRESS, F.NONE, None, None),
    ("netkit/primary", P.SCHED_CLS, A.NETKIT_PRIMARY, F.NONE, None, None),
    ("netkit/peer", P.SCHED_CLS, A.NETKIT_PEER, F.NONE, None, None),
    ("netfilter", P.NETFILTER, A.NETFILTER, F.NONE, None, None),
    ("socket", P.SOCKET_FILTER, None, F.NONE, None, None),
    ("sk_reuseport", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT, F.ATTACHABLE, None, None),
    ("sk_reuseport/migrate", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT_OR_MIGRATE, F.ATTACHABLE, None, None),
    ("sk_lookup", P.SK_LOOKUP, A.SK_LOOKUP, F.ATTACHABLE, None, None),
    ("syscall", P.SYSCALL, None, F.SLEEPABLE, None, None),
    ("perf_event", P.PERF_EVENT, None, F.NONE, None, None),
    ("sockops", P.SOCK_OPS, A.CGROUP_SOCK_OPS, F.ATTACHABLE_OPT, None, None),
    ("sk_skb/stream_parser", P.SK_SKB, A.SK_SKB_STREAM_PARSER, F.ATTACHABLE_OPT, None, None),
    ("sk_skb/stream_verdict", P.SK_SKB, A.SK_SKB_STREAM_VERDICT, F.ATTACHABLE_OPT, None, None),
    ("sk_skb/verdict", P.SK_SKB, A.SK_SKB_VERDICT, F.ATTACHABLE_OPT, None, None),
    ("sk_skb", P.SK_SKB, None, F.NONE, None, None),
    ("sk_msg", P.SK_MSG, A.SK_MSG_VERDICT, F.ATTACHABLE_OPT, None, None),
    ("flow_dissector", P.FLOW_DISSECTOR, A.FLOW_DISSECTOR, F.ATTACHABLE_OPT, None, None),
    ("lirc_mode2", P.LIRC_MODE2, A.LIRC_MODE2, F.ATTACHABLE_OPT, None, None),
    ("lwt_in", P.LWT_IN, None, F.NONE, None, None),
    ("lwt_seg6local", P.LWT_SEG6LOCAL, None, F.NONE, None, None),
    ("cgroup_skb/ingress", P.CGROUP_SKB, A.CGROUP_INET_INGRESS, F.ATTACHABLE_OPT, None, None),
    ("cgroup_skb/egress", P.CGROUP_SKB, A.CGROUP_INET_EGRESS, F.ATTACHABLE_OPT, None, None),
    ("cgroup/skb", P.CGROUP_SKB, None, F.NONE, None, None),
    ("cgroup/sock", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE, F.ATTACHABLE_OPT, None, None),
    ("cgroup/sock_create", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE, F.ATTACHABLE, None, None),
    ("cgroup/sock_release", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_RELEASE, F.ATTACHABLE, None, None),
    ("cgroup/post_bind4", P.CGROUP_SOCK, A.CGROUP_INET4_POST_BIND, F.ATTACHABLE, None, None),
    ("cgroup/bind6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_BIND, F.ATTACHABLE, None, None),
    ("cgroup/connect4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_CONNECT, F.ATTACHABLE, None, None),
    ("cgroup/connect6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_CONNECT, F.ATTACHABLE, None, None),
    ("cgroup/connect_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_CONNECT, F.ATTACHABLE, None, None),
    ("cgroup/sendmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_SENDMSG, F.ATTACHABLE, None, None),
    ("cgroup/recvmsg_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_RECVMSG, F.ATTACHABLE, None, None),
    ("cgroup/getpeername6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETPEERNAME, F.ATTACHABLE, None, None),
    ("cgroup/getsockname_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETSOCKNAME, F.ATTACHABLE, None, None),
    ("cgroup/sysctl", P.CGROUP_SYSCTL, A.CGROUP_SYSCTL, F.ATTACHABLE, None, None),
    ("cgroup/getsockopt", P.CGROUP_SOCKOPT, A.CGROUP_GETSOCKOPT, F.ATTACHABLE, None, None),
    ("cgroup/setsockopt", P.CGROUP_SOCKOPT, A.CGROUP_SETSOCKOPT, F.ATTACHABLE, None, None),
    ("cgroup/dev", P.CGROUP_DEVICE, A.CGROUP_DEVICE, F.ATTACHABLE_OPT, None, None),
    ("struct_ops/tcp_init", P.STRUCT_OPS, None, F.NONE, "tcp_init", None),
    ("struct_ops", P.STRUCT_OPS, None, F.NONE, None, None),
    ("struct_ops.s/dispatch", P.STRUCT_OPS, None, F.SLEEPABLE, "dispatch", None),
    # the remaining rows, checked against libbpf's section_defs (SEC_DEF lines quoted
    # in the comments; flags SEC_NONE = F.NONE)
    # SEC_DEF("uretprobe.s+", KPROBE, 0, SEC_SLEEPABLE, attach_uprobe)
    ("uretprobe.s//bin/bash:readline", P.KPROBE, None, F.SLEEPABLE, "/bin/bash:readline", "uprobe"),
    # SEC_DEF("uretprobe.multi+", KPROBE, BPF_TRACE_UPROBE_MULTI, SEC_NONE, attach_uprobe_multi)
    ("uretprobe.multi//bin/bash:read*", P.KPROBE, A.TRACE_UPROBE_MULTI, F.NONE, "/bin/bash:read*", "uprobe_multi"),
    # SEC_DEF("uprobe.multi.s+", KPROBE, BPF_TRACE_UPROBE_MULTI, SEC_SLEEPABLE, attach_uprobe_multi)
    ("uprobe.multi.s/x:y", P.KPROBE, A.TRACE_UPROBE_MULTI, F.SLEEPABLE, "x:y", "uprobe_multi"),
    # SEC_DEF("uprobe.session.s+", KPROBE, BPF_TRACE_UPROBE_SESSION, SEC_SLEEPABLE, attach_uprobe_multi)
    ("uprobe.session.s/x:y", P.KPROBE, A.TRACE_UPROBE_SESSION, F.SLEEPABLE, "x:y", "uprobe_multi"),
    # SEC_DEF("tc/egress", SCHED_CLS, BPF_TCX_EGRESS, SEC_NONE) /* alias for tcx */
    ("tc/egress", P.SCHED_CLS, A.TCX_EGRESS, F.NONE, None, None),
    # sleepable tracepoints (bpf-next, late 2025): the corpus held no libbpf source with
    # these rows, so they are checked against their non-sleepable rows plus SEC_SLEEPABLE
    ("tracepoint.s/syscalls/sys_enter_read", P.TRACEPOINT, None, F.SLEEPABLE, "syscalls/sys_enter_read", "tracepoint"),
    ("raw_tracepoint.s/sys_enter", P.RAW_TRACEPOINT, None, F.SLEEPABLE, "sys_enter", "raw_tp"),
    ("raw_tp.s/sys_enter", P.RAW_TRACEPOINT, None, F.SLEEPABLE, "sys_enter", "raw_tp"),
    ("tp_btf.s/sched_switch", P.TRACING, A.TRACE_RAW_TP, F.ATTACH_BTF | F.SLEEPABLE, "sched_switch", "trace"),
    # SEC_DEF("fmod_ret.s+", TRACING, BPF_MODIFY_RETURN, SEC_ATTACH_BTF | SEC_SLEEPABLE, attach_trace)
    ("fmod_ret.s/security_file_open", P.TRACING, A.MODIFY_RETURN, F.ATTACH_BTF | F.SLEEPABLE, "security_file_open", "trace"),
    # SEC_DEF("fexit.s+", TRACING, BPF_TRACE_FEXIT, SEC_ATTACH_BTF | SEC_SLEEPABLE, attach_trace)
    ("fexit.s/vfs_read", P.TRACING, A.TRACE_FEXIT, F.ATTACH_BTF | F.SLEEPABLE, "vfs_read", "trace"),
    # SEC_DEF("fsession+", TRACING, BPF_TRACE_FSESSION, SEC_ATTACH_BTF, attach_trace)
    ("fsession/do_nanosleep", P.TRACING, A.TRACE_FSESSION, F.ATTACH_BTF, "do_nanosleep", "trace"),
    # SEC_DEF("fsession.s+", TRACING, BPF_TRACE_FSESSION, SEC_ATTACH_BTF | SEC_SLEEPABLE, attach_trace)
    ("fsession.s/do_nanosleep", P.TRACING, A.TRACE_FSESSION, F.ATTACH_BTF | F.SLEEPABLE, "do_nanosleep", "trace"),
    # SEC_DEF("lwt_out", LWT_OUT, 0, SEC_NONE), SEC_DEF("lwt_xmit", LWT_XMIT, 0, SEC_NONE)
    ("lwt_out", P.LWT_OUT, None, F.NONE, None, None),
    ("lwt_xmit", P.LWT_XMIT, None, F.NONE, None, None),
    # SEC_DEF("cgroup/post_bind6", CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND, SEC_ATTACHABLE)
    ("cgroup/post_bind6", P.CGROUP_SOCK, A.CGROUP_INET6_POST_BIND, F.ATTACHABLE, None, None),
    # SEC_DEF("cgroup/<op>", CGROUP_SOCK_ADDR, BPF_CGROUP_<ATTACH>, SEC_ATTACHABLE)
    ("cgroup/bind4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_BIND, F.ATTACHABLE, None, None),
    ("cgroup/sendmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_SENDMSG, F.ATTACHABLE, None, None),
    ("cgroup/sendmsg_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_SENDMSG, F.ATTACHABLE, None, None),
    ("cgroup/recvmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_RECVMSG, F.ATTACHABLE, None, None),
    ("cgroup/recvmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_RECVMSG, F.ATTACHABLE, None, None),
    ("cgroup/getpeername4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETPEERNAME, F.ATTACHABLE, None, None),
    ("cgroup/getpeername_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETPEERNAME, F.ATTACHABLE, None, None),
    ("cgroup/getsockname4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETSOCKNAME, F.ATTACHABLE, None, None),
    ("cgroup/getsockname6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETSOCKNAME, F.ATTACHABLE, None, None),
]


@pytest.mark.parametrize("name,ptype,atype,flags,target,handler", CASES, ids=[c[0] for c in CASES])
def test_known_sections(name, ptype, atype, flags, target, handler):
    d = match_section(name)
    assert d is not None, name
    assert d.prog_type == ptype
    assert d.attach_type == atype
    assert d.flags == flags
    assert attach_target(d, name) == target
    assert d.attach == handler


UNKNOWN = [
    "", "foo", "kprobex", "kprobe_foo", "tpx/a/b", "tp_btfx", "xdp_devmap", "xdp/other",
    "xdp.frag", "tracepoints/a/b", "cgroup/connect", "cgroup/unknown", "sk_skb/other",
    "cgroup_skb", "tcx", "tcx/other", "netkit", "?tp/a/b", ".text", "license", "maps",
    ".maps", "socket/x", "syscall/x", "lsmx/file_open", "iterator/task", "usdtx",
]


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_sections(name):
    assert match_section(name) is None


def test_first_match_wins_and_plus_boundary():
    # "uprobe.s+" must not be shadowed by "uprobe+": '.' is not a '/' separator
    assert match_section("uprobe.s/x:y").prefix == "uprobe.s+"
    assert match_section("uprobe.multi/x:y").prefix == "uprobe.multi+"
    assert match_section("raw_tp.w/x").prefix == "raw_tp.w+"
    assert match_section("kretprobe.multi/x").prefix == "kretprobe.multi+"
    # exact rows do not match longer names
    assert match_section("xdp/devmap/extra") is None
    assert match_section("sk_lookup/x") is None


def test_every_row_has_a_value_check():
    # each SECTION_DEFS row is matched by at least one CASES entry above
    covered = {match_section(c[0]).prefix for c in CASES}
    assert [d.prefix for d in SECTION_DEFS if d.prefix not in covered] == []


def test_table_is_complete():
    prefixes = [d.prefix for d in SECTION_DEFS]
    assert len(prefixes) == len(set(prefixes))
    assert len(SECTION_DEFS) == 110  # bpf-next libbpf, late 2025
    for must in ("ksyscall+", "kprobe.multi+", "kprobe.session+", "uprobe.multi+",
                 "uprobe.session+", "usdt+", "tcx/ingress", "netkit/peer", "netfilter",
                 "struct_ops.s+", "lsm_cgroup+", "iter.s+", "sk_lookup", "syscall",
                 "xdp.frags/devmap", "cgroup/getsockname_unix"):
        assert must in prefixes
    # every attach-btf row is a '+' row, so a target follows a '/'
    for d in SECTION_DEFS:
        if d.attach_btf:
            assert d.prefix.endswith("+")


def test_uapi_known_values():
    assert P.XDP == 6
    assert P.NETFILTER == 32
    assert A.TCX_INGRESS == 46
    assert A.TRACE_UPROBE_SESSION == 57
    assert MapType.ARENA == 33
    assert MapType.RINGBUF == 27
    assert MapType(19) is MapType.CGROUP_STORAGE


def test_uapi_matches_running_kernel_btf():
    """The enums agree with the running kernel's own BTF (when readable)."""
    import os

    path = "/sys/kernel/btf/vmlinux"
    if not os.access(path, os.R_OK):
        pytest.skip("no kernel BTF")
    from pyebpf.btf.spec import BTF
    from pyebpf.btf.types import Kind

    btf = BTF.from_bytes(open(path, "rb").read())
    for cname, enum, strip in (("bpf_prog_type", P, "BPF_PROG_TYPE_"),
                               ("bpf_attach_type", A, "BPF_"),
                               ("bpf_map_type", MapType, "BPF_MAP_TYPE_")):
        (tid,) = btf.find(cname, Kind.ENUM)
        for v in btf.type(tid).values:
            if v.name.startswith("__MAX"):
                continue
            assert enum[v.name[len(strip):]] == v.value, v.name
