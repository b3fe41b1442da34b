"""Kernel feature probes: results on this kernel, caching, and no fd leaks."""

from __future__ import annotations

import errno
import gc
import logging
import os

import pytest

from pyebpf import features as F
from pyebpf.errors import SyscallError
from pyebpf.sys import open_fd_count
from pyebpf.uapi import MapType, ProgType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fresh():
    F.clear_cache()
    import pyebpf

    pyebpf.kernel_btf()  # the process-wide kernel BTF (some probes read it) is no leak
    gc.collect()
    before = (open_fd_count(), nfds())
    yield
    gc.collect()
    assert (open_fd_count(), nfds()) == before


def test_every_libbpf_feature_probe_runs_without_leaks(fresh):
    results = {name: F.kernel_supports(name) for name in F.FEATURES}
    assert all(isinstance(v, bool) for v in results.values())
    # what a 6.18 kernel has, whatever its configuration
    for name in ("PROG_NAME", "GLOBAL_DATA", "BTF", "BTF_FUNC", "BTF_GLOBAL_FUNC", "BTF_DATASEC",
                 "ARRAY_MMAP", "EXP_ATTACH_TYPE", "PROBE_READ_KERN", "PROG_BIND_MAP", "MODULE_BTF",
                 "BTF_FLOAT", "PERF_LINK", "BTF_DECL_TAG", "BTF_TYPE_TAG", "MEMCG_ACCOUNT",
                 "BPF_COOKIE", "BTF_ENUM64", "UPROBE_MULTI_LINK", "ARG_CTX_TAG", "BTF_QMARK_DATASEC"):
        assert results[name], name


def test_kernel_supports_names():
    assert F.kernel_supports("FEAT_BTF") == F.kernel_supports("btf")
    with pytest.raises(ValueError):
        F.kernel_supports("NO_SUCH_FEATURE")


def test_btf_features_for_the_sanitizer(fresh):
    from pyebpf.btf.write import Features

    f = F.btf_features()
    assert isinstance(f, Features)
    assert f == Features()  # a 6.18 kernel needs no BTF rewriting


def test_probes_are_cached(caplog):
    F.btf_float(), F.has_memcg_account(), F.prog_type_supported(ProgType.XDP)
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        for _ in range(3):
            assert F.btf_float()
            assert F.has_memcg_account()
            assert F.prog_type_supported(ProgType.XDP)
    assert not [r for r in caplog.records if r.name == "pyebpf.sys"]


def test_clear_cache_reprobes(caplog):
    F.array_mmap()
    F.clear_cache()
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        assert F.array_mmap()
    assert any("BPF_MAP_CREATE" in r.getMessage() for r in caplog.records)


def test_trampolines_reported_as_unsupported_here(fresh):
    t = F.trampolines()
    if t:
        pytest.skip("this kernel loads trampoline programs")
    assert "EPERM" in t.reason and "unsupported here" in t.reason
    lsm = F.prog_type_supported(ProgType.LSM)
    ext = F.prog_type_supported(ProgType.EXT)
    assert not lsm and not ext and "trampoline" in lsm.reason
    tracing = F.prog_type_supported(ProgType.TRACING)
    assert tracing and "tp_btf" in tracing.reason  # tp_btf and iter still work
    h = F.helper_supported(ProgType.LSM, 1)
    assert not h and "trampoline" in h.reason


@pytest.mark.parametrize("pt", [ProgType.SOCKET_FILTER, ProgType.KPROBE, ProgType.TRACEPOINT,
                                ProgType.XDP, ProgType.PERF_EVENT, ProgType.RAW_TRACEPOINT,
                                ProgType.CGROUP_SOCK_ADDR, ProgType.CGROUP_SOCKOPT, ProgType.SK_LOOKUP,
                                ProgType.SYSCALL, ProgType.NETFILTER, ProgType.STRUCT_OPS,
                                ProgType.SCHED_CLS, ProgType.FLOW_DISSECTOR])
def test_prog_types(pt):
    assert F.prog_type_supported(pt)


@pytest.mark.parametrize("mt", [m for m in MapType if m != MapType.UNSPEC])
def test_map_types(mt, fresh):
    s = F.map_type_supported(mt)
    if mt == MapType.ARENA and not s:
        # measured OK here on 2026-11-25; refused with EPERM, even as root, since 2026-12
        assert "EPERM" in s.reason
        pytest.skip(f"this kernel refuses arena maps ({s.reason})")
    assert s, mt.name


def test_struct_ops_map_probed_as_libbpf():
    # libbpf_probe_bpf_map_type: vmlinux value type id 1 gets ENOTSUPP where struct_ops exist
    assert F.map_type_supported(MapType.STRUCT_OPS)


def test_map_type_unknown():
    s = F.map_type_supported(200)
    assert not s and "EINVAL" in s.reason


def test_helpers(fresh):
    assert F.helper_supported(ProgType.KPROBE, 1)  # map_lookup_elem
    assert F.helper_supported(ProgType.TRACEPOINT, 174)  # get_attach_cookie
    nope = F.helper_supported(ProgType.KPROBE, 99999)
    assert not nope and "does not know helper" in nope.reason
    # bpf_probe_write_user is refused under lockdown=integrity; the kernel log line says so
    w = F.helper_supported(ProgType.KPROBE, 36)
    if not w:
        assert "not allowed" in w.reason


def test_support_is_truthy():
    assert F.Support(True)
    assert not F.Support(False, "x")


# --- features the kernel may refuse from one build to the next -------------------------------


def test_xdp_live_frames_probe(fresh):
    s = F.xdp_live_frames()
    assert s is F.xdp_live_frames()  # cached
    if s:
        assert s.errno == 0 and s.errname == ""
        return
    # refused: the result names the feature and the kernel's errno, for a test's skip message
    assert s.errno in (errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP, 524, errno.E2BIG), s
    assert "BPF_F_TEST_XDP_LIVE_FRAMES" in s.reason and s.errname in s.reason


def test_arena_probe(fresh):
    s = F.arena()
    assert s is F.arena()
    assert bool(s) == bool(F.map_type_supported(MapType.ARENA))
    if not s:
        assert s.errno and s.errname in s.reason and "arena" in s.reason


def test_refusals_carry_errno():
    s = F.map_type_supported(200)
    assert s.errno == errno.EINVAL and s.errname == "EINVAL"
    assert F.Support(False, "x", 524).errname == "ENOTSUPP"
    assert F.Support(True).errname == ""


def test_a_probe_that_breaks_is_cached_as_unsupported(monkeypatch):
    """A kernel refusal a probe did not expect (here: EPERM from BPF_MAP_CREATE inside
    global_data's helper) must not escape to the caller, and is cached like any result."""
    calls = []

    def refuse(*a, **kw):
        calls.append(a)
        raise SyscallError(errno.EPERM, "BPF_PROG_LOAD")

    F.clear_cache()
    try:
        monkeypatch.setattr(F.B, "prog_load_with_log", refuse)
        monkeypatch.setattr(F.B, "prog_test_run", refuse)
        assert F.prog_name() is False
        live = F.xdp_live_frames()
        assert not live and live.errno == errno.EPERM
        h = F.helper_supported(ProgType.KPROBE, 1)
        assert not h and h.errno == errno.EPERM  # a refusal is not "assume supported"
        n = len(calls)
        assert F.prog_name() is False and not F.xdp_live_frames()
        assert len(calls) == n

        def crash(*a, **kw):
            raise FileNotFoundError(errno.ENOENT, "gone")

        monkeypatch.setattr(F.B, "btf_load", crash)
        assert F.module_btf() is False  # an unexpected OSError inside a probe
        monkeypatch.setattr(F.B, "map_create", crash)
        a = F.arena()
        assert not a and a.errno == errno.ENOENT
    finally:
        monkeypatch.undo()
        F.clear_cache()


def test_memlock_bump_never_fails(monkeypatch):
    """libbpf's memlock bump: a refused setrlimit (no CAP_SYS_RESOURCE) or a broken
    memcg probe is never fatal to a load."""
    import resource

    import pyebpf.sys as S

    def refuse(*a):
        raise PermissionError(errno.EPERM, "setrlimit")

    def broken():
        raise SyscallError(errno.EPERM, "BPF_PROG_LOAD")

    monkeypatch.setattr(S, "_bumped", False)
    monkeypatch.setattr(resource, "setrlimit", refuse)
    monkeypatch.setattr(F, "has_memcg_account", broken)
    assert S.bump_memlock_rlimit() is False
    monkeypatch.setattr(F, "has_memcg_account", lambda: False)
    assert S.bump_memlock_rlimit() is False


@pytest.mark.parametrize("err", [errno.EPERM, errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP, 524])
def test_every_probe_survives_a_refusing_kernel(monkeypatch, err):
    """A kernel build that refuses everything with ``err`` (as this one began refusing
    arena maps and live-frame test runs with EPERM): each probe answers "not supported",
    caches it, and raises nothing."""
    calls = []

    def refuse(*a, **kw):
        calls.append(1)
        raise SyscallError(err, "bpf")

    for fn in ("prog_load_with_log", "map_create", "btf_load", "link_create", "prog_test_run",
               "prog_bind_map", "obj_get_info_by_fd"):
        monkeypatch.setattr(F.B, fn, refuse)
    F.clear_cache()
    try:
        # SYSCALL_WRAPPER is not a bpf() probe (kprobe PMU, tracefs, kallsyms)
        names = [n for n in F.FEATURES if n != "SYSCALL_WRAPPER"]
        assert {n: F.kernel_supports(n) for n in names} == dict.fromkeys(names, False)
        for probe in (F.arena, F.xdp_live_frames):
            r = probe()
            assert not r and r.errno == err and r.errname in r.reason
        for r in (F.prog_type_supported(ProgType.XDP), F.map_type_supported(MapType.HASH),
                  F.helper_supported(ProgType.XDP, 1)):
            assert not r and r.errno == err, r
        n = len(calls)
        F.kernel_supports("BTF"), F.arena(), F.prog_type_supported(ProgType.XDP)
        assert len(calls) == n  # cached
    finally:
        monkeypatch.undo()
        F.clear_cache()


def test_syscall_wrapper_without_kprobes_asks_the_symbol_table(monkeypatch):
    """libbpf probes the wrapper with a kprobe; where there are none (this kernel) the
    kernel's BTF, then /proc/kallsyms, answer (README: a deliberate difference)."""
    from pyebpf.obj.externs import read_kallsyms, syscall_wrapper_symbol

    sym = syscall_wrapper_symbol()
    if sym is None:
        pytest.skip(f"no syscall wrappers on {os.uname().machine}")
    F.clear_cache()
    try:
        expected = sym in read_kallsyms({sym})
        monkeypatch.setattr(F, "_kprobes_present", lambda: False)
        assert F.syscall_wrapper() is expected
        # no kernel BTF: kallsyms alone
        import pyebpf.btf.kernel as K

        def gone(*a, **kw):
            raise FileNotFoundError(errno.ENOENT, "vmlinux")

        monkeypatch.setattr(K, "kernel_btf", gone)
        F.clear_cache()
        assert F.syscall_wrapper() is expected
        # with kprobes, libbpf's own probe (links.kprobe) decides
        import pyebpf.links.kprobe as KP

        monkeypatch.setattr(F, "_kprobes_present", lambda: True)
        monkeypatch.setattr(KP, "has_syscall_wrapper", lambda: "kprobe-probed")
        F.clear_cache()
        assert F.syscall_wrapper() == "kprobe-probed"
    finally:
        monkeypatch.undo()
        F.clear_cache()


def test_syscall_wrapper_symbol_names():
    from pyebpf.obj.externs import syscall_wrapper_symbol

    assert syscall_wrapper_symbol("x86_64") == "__x64_sys_bpf"
    assert syscall_wrapper_symbol("aarch64") == "__arm64_sys_bpf"
    assert syscall_wrapper_symbol("mips") is None
