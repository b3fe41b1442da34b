"""Kernel feature probes, cached per process (libbpf's ``kernel_supports(FEAT_*)``).

Each probe loads a tiny BTF blob, map or program and closes it at once; none
leaks an fd. Results are computed once per process, under a lock.
Program-type, map-type and helper probes follow libbpf_probes.c; they return a
:class:`Support` that is truthy when supported and carries the reason and the
kernel's errno when not.

The kernel under a test suite can change between runs (this machine's began refusing
arena maps and live-frame XDP test runs with EPERM one day): a refusal (EPERM, EINVAL,
E2BIG, EOPNOTSUPP, ENOTSUPP, or anything else a probe did not expect) is a cached
"not supported", never an exception. :func:`arena` and :func:`xdp_live_frames` exist
so tests can skip with the feature's name and errno.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._log import get_logger
from ._record import Frozen
from .errors import OptionError, PyebpfError, SyscallError, VerifierError
from .sys import bpf as B
from .sys.fd import FD
from .uapi import BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, AttachType, MapType, ProgType

if TYPE_CHECKING:
    from .btf.write import Features

__all__ = [
    "Support",
    "arena",
    "arg_ctx_tag",
    "array_mmap",
    "bpf_cookie",
    "btf",
    "btf_datasec",
    "btf_decl_tag",
    "btf_enum64",
    "btf_features",
    "btf_float",
    "btf_func",
    "btf_func_global",
    "btf_qmark_datasec",
    "btf_type_tag",
    "clear_cache",
    "exp_attach_type",
    "global_data",
    "has_memcg_account",
    "helper_supported",
    "kernel_supports",
    "ldimm64_full_range_off",
    "map_type_supported",
    "module_btf",
    "perf_link",
    "probe_read_kernel",
    "prog_bind_map",
    "prog_name",
    "prog_type_supported",
    "syscall_wrapper",
    "trampolines",
    "uprobe_multi_link",
    "xdp_live_frames",
]

_log = get_logger("pyebpf.features")

F = TypeVar("F", bound=Callable[..., Any])
_lock = threading.RLock()
_caches: list[Callable[[], None]] = []  # each probe cache's cache_clear


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A probe that cannot crash: a kernel refusal the probe itself did not expect
    (EPERM from a security policy, a new errno on a changed kernel, a missing file)
    becomes a cached "not supported" instead of an exception in the caller."""
    wants_support = fn.__annotations__.get("return") in ("Support", Support)

    @functools.wraps(fn)
    def guarded(*args: Any) -> Any:
        try:
            return fn(*args)
        except (OSError, PyebpfError) as e:
            err = getattr(e, "errno", 0) or 0
            _log.debug("feature probe %s%s failed: %s", fn.__name__, args or "", e)
            if wants_support:
                return Support(False, f"probe {fn.__name__} failed: {e}", err)
            return False

    return guarded


def _cached(fn: F) -> F:
    """functools.cache plus a lock, so each probe runs once even with threads; every
    failure of the probe itself is a (cached) "not supported", see :func:`_guarded`."""
    cached = functools.cache(_guarded(fn))

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        with _lock:
            return cached(*args)

    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    _caches.append(cached.cache_clear)
    return wrapper  # type: ignore[return-value]


def clear_cache() -> None:
    """Forget every probe result (tests; or after the process gains capabilities)."""
    with _lock:
        for clear in _caches:
            clear()


_set = object.__setattr__


class Support(Frozen):
    """A probe result: truthy when supported; ``reason`` says why not (or a caveat).

    ``errno`` is the kernel's refusal (EPERM, EINVAL, ...) when there was one, else 0,
    so a test can skip with ``f"{feature}: {errname}"``.
    """

    supported: bool
    reason: str
    errno: int

    def __init__(self, supported: bool, reason: str = "", errno: int = 0) -> None:
        _set(self, "supported", supported)
        _set(self, "reason", reason)
        _set(self, "errno", errno)

    def __bool__(self) -> bool:
        return self.supported

    @property
    def errname(self) -> str:
        """``"EPERM"`` etc. for :attr:`errno` ("" when there is none)."""
        return _errname(self.errno) if self.errno else ""


def _errname(err: int) -> str:
    return _errno.errorcode.get(err, {524: "ENOTSUPP"}.get(err, f"errno {err}"))


def _refused(what: str, err: int) -> Support:
    """A 'not supported' result naming the kernel's errno."""
    return Support(False, f"{what} failed with {_errname(err)}", err)


# --- tiny encoders ---------------------------------------------------------------------------

_INSN = struct.Struct("<BBhi")


def _ins(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


MOV64_R0_0 = _ins(0xB7, 0, 0, 0, 0)
EXIT = _ins(0x95)


def _call(helper: int) -> bytes:
    return _ins(0x85, 0, 0, 0, helper)


def _ld_map_value(dst: int, map_fd: int, off: int) -> bytes:
    # ld_imm64 with src BPF_PSEUDO_MAP_VALUE: imm = map fd, second half's imm = value offset
    return _ins(0x18, dst, 2, 0, map_fd) + _ins(0, 0, 0, 0, off)


RET0 = MOV64_R0_0 + EXIT

BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_STRUCT = 1, 2, 4
BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR, BTF_KIND_DATASEC = 12, 13, 14, 15
BTF_KIND_FLOAT, BTF_KIND_DECL_TAG, BTF_KIND_TYPE_TAG, BTF_KIND_ENUM64 = 16, 17, 18, 19
BTF_INT_SIGNED = 1


def _info(kind: int, vlen: int = 0, kflag: int = 0) -> int:
    return (kflag << 31) | (kind << 24) | vlen


def _int(name_off: int, bits: int = 32, size: int = 4) -> list[int]:
    return [name_off, _info(BTF_KIND_INT), size, (BTF_INT_SIGNED << 24) | bits]


def raw_btf(types: list[int], strs: bytes) -> bytes:
    """A BTF blob: header, the given u32 type words, the string section."""
    tbytes = struct.pack(f"<{len(types)}I", *[t & 0xFFFFFFFF for t in types])
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(tbytes), len(tbytes), len(strs))
    return hdr + tbytes + strs


def _btf_loads(types: list[int], strs: bytes) -> bool:
    try:
        B.btf_load(raw_btf(types, strs), log_level=0).close()
        return True
    except SyscallError as e:
        _log.debug("BTF probe rejected: %s", e.errname)
        return False


# --- BTF kinds (the sanitizer's Features) ----------------------------------------------------


@_cached
def btf() -> bool:
    """Minimal BTF (an INT) loads."""
    return _btf_loads(_int(1), b"\0int\0")


@_cached
def btf_func() -> bool:
    """BTF_KIND_FUNC / FUNC_PROTO."""
    t = _int(1) + [0, _info(BTF_KIND_FUNC_PROTO, 1), 0, 7, 1, 5, _info(BTF_KIND_FUNC), 2]
    return _btf_loads(t, b"\0int\0x\0a\0")


@_cached
def btf_func_global() -> bool:
    """BTF_FUNC_GLOBAL linkage."""
    t = _int(1) + [0, _info(BTF_KIND_FUNC_PROTO, 1), 0, 7, 1, 5, _info(BTF_KIND_FUNC, 1), 2]
    return _btf_loads(t, b"\0int\0x\0a\0")


def _datasec(secname: bytes) -> bool:
    t = _int(0) + [1, _info(BTF_KIND_VAR), 1, 0] + [3, _info(BTF_KIND_DATASEC, 1), 4, 2, 0, 4]
    return _btf_loads(t, b"\0x\0" + secname + b"\0")


@_cached
def btf_datasec() -> bool:
    """BTF_KIND_VAR / DATASEC."""
    return _datasec(b".data")


@_cached
def btf_qmark_datasec() -> bool:
    """DATASEC names starting with '?'."""
    return _datasec(b"?.data")


@_cached
def btf_float() -> bool:
    """BTF_KIND_FLOAT."""
    return _btf_loads([1, _info(BTF_KIND_FLOAT), 4], b"\0float\0")


@_cached
def btf_decl_tag() -> bool:
    """BTF_KIND_DECL_TAG."""
    t = _int(0) + [1, _info(BTF_KIND_VAR), 1, 0] + [1, _info(BTF_KIND_DECL_TAG), 2, 0xFFFFFFFF]
    return _btf_loads(t, b"\0tag\0")


@_cached
def btf_type_tag() -> bool:
    """BTF_KIND_TYPE_TAG."""
    t = _int(0) + [1, _info(BTF_KIND_TYPE_TAG), 1] + [0, _info(BTF_KIND_PTR), 2]
    return _btf_loads(t, b"\0tag\0")


@_cached
def btf_enum64() -> bool:
    """BTF_KIND_ENUM64."""
    return _btf_loads([1, _info(BTF_KIND_ENUM64), 8], b"\0enum64\0")


def btf_features() -> Features:
    """The probed :class:`pyebpf.btf.write.Features` for BTF sanitizing."""
    from .btf.write import Features

    return Features(
        has_func=btf_func(),
        has_func_global=btf_func_global(),
        has_datasec=btf_datasec(),
        has_float=btf_float(),
        has_decl_tag=btf_decl_tag(),
        has_type_tag=btf_type_tag(),
        has_enum64=btf_enum64(),
        has_qmark_datasec=btf_qmark_datasec(),
    )


# --- programs and maps (libbpf FEAT_*) -------------------------------------------------------


def _try_prog(prog_type: int, insns: bytes, **kw: Any) -> tuple[FD | None, int, str]:
    """Load a probe program: (fd or None, errno, log). The caller closes the fd."""
    try:
        r = B.prog_load_with_log(prog_type, insns, **kw)
        return r.fd, 0, r.log
    except VerifierError as e:
        return None, e.errno, e.log
    except SyscallError as e:
        return None, e.errno, ""


def _loads(prog_type: int, insns: bytes, **kw: Any) -> bool:
    fd, err, _ = _try_prog(prog_type, insns, **kw)
    if fd is not None:
        fd.close()
        return True
    return False


@_cached
def prog_name() -> bool:
    """FEAT_PROG_NAME: programs can be named."""
    return _loads(ProgType.SOCKET_FILTER, RET0, name="libbpf_nametest")


@_cached
def global_data() -> bool:
    """FEAT_GLOBAL_DATA: array map + ld_imm64 BPF_PSEUDO_MAP_VALUE."""
    try:
        m = B.map_create(MapType.ARRAY, 4, 32, 1, name="pyebpf_global")
    except SyscallError:
        return False
    with m:
        insns = _ld_map_value(1, int(m), 16) + _ins(0x7A, 1, 0, 0, 42) + RET0
        return _loads(ProgType.SOCKET_FILTER, insns)


@_cached
def array_mmap() -> bool:
    """FEAT_ARRAY_MMAP: BPF_F_MMAPABLE arrays."""
    try:
        B.map_create(MapType.ARRAY, 4, 4, 1, BPF_F_MMAPABLE, name="pyebpf_mmap").close()
        return True
    except SyscallError:
        return False


@_cached
def exp_attach_type() -> bool:
    """FEAT_EXP_ATTACH_TYPE: BPF_PROG_LOAD knows expected_attach_type."""
    return _loads(ProgType.CGROUP_SOCK, RET0, expected_attach_type=AttachType.CGROUP_INET_SOCK_CREATE)


@_cached
def probe_read_kernel() -> bool:
    """FEAT_PROBE_READ_KERN: bpf_probe_read_kernel() helper."""
    insns = (_ins(0xBF, 1, 10) + _ins(0x07, 1, 0, 0, -8) + _ins(0xB7, 2, 0, 0, 8)
             + _ins(0xB7, 3, 0, 0, 0) + _call(113) + EXIT)
    return _loads(ProgType.TRACEPOINT, insns)


@_cached
def prog_bind_map() -> bool:
    """FEAT_PROG_BIND_MAP."""
    try:
        m = B.map_create(MapType.ARRAY, 4, 32, 1, name="pyebpf_det_bind")
    except SyscallError:
        return False
    with m:
        fd, _, _ = _try_prog(ProgType.SOCKET_FILTER, RET0)
        if fd is None:
            return False
        with fd:
            try:
                B.prog_bind_map(fd, m)
                return True
            except SyscallError:
                return False


@_cached
def module_btf() -> bool:
    """FEAT_MODULE_BTF: bpf_btf_info has name/name_len."""
    import ctypes

    from .sys.attrs import BtfInfo

    try:
        fd = B.btf_load(raw_btf(_int(1), b"\0int\0"))
    except SyscallError:
        return False
    with fd:
        name = ctypes.create_string_buffer(16)
        info = BtfInfo(name=ctypes.addressof(name), name_len=16)
        try:
            B.obj_get_info_by_fd(fd, info)
            return True
        except SyscallError:
            return False


@_cached
def perf_link() -> bool:
    """FEAT_PERF_LINK: BPF_LINK_CREATE on perf events (EBADF for fd -1 means supported)."""
    fd, _, _ = _try_prog(ProgType.TRACEPOINT, RET0)
    if fd is None:
        return False
    with fd:
        try:
            B.link_create(fd, -1, AttachType.PERF_EVENT).close()
            return True  # cannot happen with fd -1, but it would mean support
        except SyscallError as e:
            return e.errno == _errno.EBADF


@_cached
def has_memcg_account() -> bool:
    """FEAT_MEMCG_ACCOUNT: BPF memory is charged to memcg (proxy: bpf_ktime_get_coarse_ns, 5.11)."""
    return _loads(ProgType.SOCKET_FILTER, _call(160) + EXIT)


@_cached
def bpf_cookie() -> bool:
    """FEAT_BPF_COOKIE: bpf_get_attach_cookie() from tracepoint programs."""
    return _loads(ProgType.TRACEPOINT, _call(174) + EXIT)


@_cached
def uprobe_multi_link() -> bool:
    """FEAT_UPROBE_MULTI_LINK, including the pid-filtering fix (as libbpf checks)."""
    fd, _, _ = _try_prog(ProgType.KPROBE, RET0, expected_attach_type=AttachType.TRACE_UPROBE_MULTI)
    if fd is None:
        return False
    with fd:
        for pid, want in ((0, _errno.EBADF), (0xFFFFFFFF, _errno.EINVAL)):
            try:
                B.link_create(fd, -1, AttachType.TRACE_UPROBE_MULTI,
                              uprobe_multi={"path": "/", "offsets": [0], "pid": pid}).close()
                return False
            except SyscallError as e:
                if e.errno != want:
                    return False
        return True


@_cached
def arg_ctx_tag() -> bool:
    """FEAT_ARG_CTX_TAG: kernel-side __arg_ctx decl tags on global subprog args."""
    strs = b"\0a\0b\0arg:ctx\0"
    t = (_int(1)
         + [0, _info(BTF_KIND_PTR), 0]
         + [0, _info(BTF_KIND_FUNC_PROTO, 1), 1, 1, 2]
         + [1, _info(BTF_KIND_FUNC, 0, 0) | 1, 3]
         + [0, _info(BTF_KIND_FUNC_PROTO, 1), 1, 3, 2]
         + [3, _info(BTF_KIND_FUNC) | 1, 5]
         + [5, _info(BTF_KIND_DECL_TAG), 6, 0])
    try:
        btf_fd = B.btf_load(raw_btf(t, strs))
    except SyscallError:
        return False
    with btf_fd:
        insns = _ins(0x85, 0, 1, 0, 1) + EXIT + _call(173) + EXIT
        func_info = struct.pack("<IIII", 0, 4, 2, 6)
        return _loads(ProgType.KPROBE, insns, name="det_arg_ctx", prog_btf_fd=btf_fd,
                      func_info=func_info, func_info_rec_size=8, kern_version=_kernel_version())


@_cached
def ldimm64_full_range_off() -> bool:
    """FEAT_LDIMM64_FULL_RANGE_OFF: map value offsets beyond 1 << 29 reach the verifier."""
    try:
        m = B.map_create(MapType.ARRAY, 4, 1, 1, name="arr")
    except SyscallError:
        return False
    with m:
        fd, _, text = _try_prog(ProgType.TRACEPOINT, _ld_map_value(1, int(m), 1 << 30) + EXIT,
                                name="global_reloc", log_level=1)
        if fd is not None:
            fd.close()
            return False
        if "direct value offset of" in text:
            return False
        return "invalid access to map value pointer" in text


def _kprobes_present() -> bool:
    """A kprobe PMU or tracefs kprobe_events: what libbpf's wrapper probe needs."""
    return (os.path.exists("/sys/bus/event_source/devices/kprobe/type")
            or any(os.path.exists(f"{d}/kprobe_events")
                   for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")))


@_cached
def syscall_wrapper() -> bool:
    """FEAT_SYSCALL_WRAPPER: syscalls are __<arch>_sys_* wrappers. Probed with a kprobe as
    libbpf does; where kprobes are unavailable (libbpf would then say no), the kernel's
    symbols answer: its BTF (cached, cheap), then /proc/kallsyms."""
    if _kprobes_present():
        from .links.kprobe import has_syscall_wrapper  # the one implementation, kprobe-side

        return has_syscall_wrapper()
    from .obj.externs import syscall_wrapper_symbol

    sym = syscall_wrapper_symbol()
    if sym is None:
        return False
    try:
        from .btf.kernel import kernel_btf
        from .btf.types import Kind

        if kernel_btf().find(sym, Kind.FUNC):
            return True
    except (OSError, PyebpfError) as e:
        _log.debug("no kernel BTF for the syscall wrapper probe (%s); reading kallsyms", e)
    from .obj.kdata import read_kallsyms

    try:
        return sym in read_kallsyms({sym})
    except PyebpfError:
        return False


@_cached
def trampolines() -> Support:
    """Whether trampoline programs (fentry/fexit/fmod_ret/lsm/freplace) can be loaded at all.

    Probed as libbpf probes BPF_PROG_TYPE_TRACING: fentry with attach_btf_id 1
    must fail EINVAL (verification reached). This kernel answers EPERM instead.
    """
    fd, err, _ = _try_prog(ProgType.TRACING, RET0, expected_attach_type=AttachType.TRACE_FENTRY,
                           attach_btf_id=1)
    if fd is not None:
        fd.close()
        return Support(True)
    if err == _errno.EINVAL:
        return Support(True)
    if err == _errno.EPERM:
        return Support(False, "this kernel refuses BPF trampolines: fentry/fexit/fmod_ret/lsm/freplace "
                              "loads fail with EPERM before verification (unsupported here)", err)
    return _refused("probe load", err)


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
_ETH_FRAME = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + bytes(50)  # 64-byte Ethernet frame


@_cached
def xdp_live_frames() -> Support:
    """Whether BPF_PROG_TEST_RUN runs XDP programs on live frames (BPF_F_TEST_XDP_LIVE_FRAMES).

    Runs an XDP_DROP program once on one frame, so nothing reaches any stack. A kernel
    without the flag answers EINVAL; this machine's kernel has refused it with EPERM
    since 2026-12-07. ``errno`` carries the refusal.
    """
    fd, err, _ = _try_prog(ProgType.XDP, _ins(0xB7, 0, 0, 0, 1) + EXIT, name="pyebpf_live")
    if fd is None:
        return _refused("XDP probe program load", err)
    with fd:
        try:
            B.prog_test_run(fd, data_in=_ETH_FRAME, repeat=1, flags=BPF_F_TEST_XDP_LIVE_FRAMES)
        except SyscallError as e:
            return _refused("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES", e.errno)
    return Support(True)


@_cached
def arena() -> Support:
    """Whether arena maps (BPF_MAP_TYPE_ARENA, 6.9+) can be created and mmap'ed.

    This machine's kernel has refused arena creation with EPERM since 2026-12-07;
    ``errno`` carries the refusal (EINVAL on kernels without arenas).
    """
    page = os.sysconf("SC_PAGESIZE")
    try:
        m = B.map_create(MapType.ARENA, 0, 0, 1, BPF_F_MMAPABLE, name="pyebpf_arena")
    except SyscallError as e:
        return _refused("arena map create", e.errno)
    with m:
        import mmap

        try:
            mem = mmap.mmap(int(m), page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            return _refused("arena mmap", e.errno or 0)
        mem.close()  # pages are only allocated on first touch; mapping is what can be refused
    return Support(True)


FEATURES: dict[str, Callable[[], Any]] = {
    "PROG_NAME": prog_name,
    "GLOBAL_DATA": global_data,
    "BTF": btf,
    "BTF_FUNC": btf_func,
    "BTF_GLOBAL_FUNC": btf_func_global,
    "BTF_DATASEC": btf_datasec,
    "ARRAY_MMAP": array_mmap,
    "EXP_ATTACH_TYPE": exp_attach_type,
    "PROBE_READ_KERN": probe_read_kernel,
    "PROG_BIND_MAP": prog_bind_map,
    "MODULE_BTF": module_btf,
    "BTF_FLOAT": btf_float,
    "PERF_LINK": perf_link,
    "BTF_DECL_TAG": btf_decl_tag,
    "BTF_TYPE_TAG": btf_type_tag,
    "MEMCG_ACCOUNT": has_memcg_account,
    "BPF_COOKIE": bpf_cookie,
    "BTF_ENUM64": btf_enum64,
    "SYSCALL_WRAPPER": syscall_wrapper,
    "UPROBE_MULTI_LINK": uprobe_multi_link,
    "ARG_CTX_TAG": arg_ctx_tag,
    "BTF_QMARK_DATASEC": btf_qmark_datasec,
    "LDIMM64_FULL_RANGE_OFF": ldimm64_full_range_off,
}


def kernel_supports(feat: str) -> bool:
    """libbpf's kernel_supports(FEAT_<feat>), e.g. kernel_supports("BTF_FUNC")."""
    name = feat.upper().removeprefix("FEAT_")
    try:
        return bool(FEATURES[name]())
    except KeyError:
        raise OptionError(f"unknown feature {feat!r}; known: {', '.join(FEATURES)}") from None


# --- libbpf_probes.c: program types, map types, helpers ---------------------------------------


def _kernel_version() -> int:
    rel = os.uname().release.split("-")[0].split(".")
    nums = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in (rel + ["0", "0"])[:3]]
    return (nums[0] << 16) | (nums[1] << 8) | min(nums[2], 255)


def _prog_opts(prog_type: int) -> tuple[dict[str, Any], int]:
    """Load options that make a minimal program of ``prog_type`` valid; plus the errno expected."""
    kw: dict[str, Any] = {}
    exp_err = 0
    if prog_type == ProgType.CGROUP_SOCK_ADDR:
        kw["expected_attach_type"] = AttachType.CGROUP_INET4_CONNECT
    elif prog_type == ProgType.CGROUP_SOCKOPT:
        kw["expected_attach_type"] = AttachType.CGROUP_GETSOCKOPT
    elif prog_type == ProgType.SK_LOOKUP:
        kw["expected_attach_type"] = AttachType.SK_LOOKUP
    elif prog_type == ProgType.KPROBE:
        kw["kern_version"] = _kernel_version()
    elif prog_type == ProgType.LIRC_MODE2:
        kw["expected_attach_type"] = AttachType.LIRC_MODE2
    elif prog_type == ProgType.TRACING:
        kw.update(expected_attach_type=AttachType.TRACE_FENTRY, attach_btf_id=1)
        exp_err = _errno.EINVAL
    elif prog_type == ProgType.EXT:
        kw.update(attach_btf_id=1)
        exp_err = _errno.EINVAL
    elif prog_type == ProgType.LSM:
        kw.update(expected_attach_type=AttachType.LSM_MAC, attach_btf_id=1)
        exp_err = _errno.EINVAL
    elif prog_type == ProgType.STRUCT_OPS:
        kw.update(attach_btf_id=1)
        exp_err = 524  # ENOTSUPP
    elif prog_type == ProgType.SYSCALL:
        kw["prog_flags"] = 1 << 4  # BPF_F_SLEEPABLE
    elif prog_type == ProgType.NETFILTER:
        kw["expected_attach_type"] = AttachType.NETFILTER
    return kw, exp_err


_TRAMPOLINE_TYPES = (ProgType.TRACING, ProgType.EXT, ProgType.LSM)
# errnos that refuse a probe outright (policy, missing support), unlike a verifier
# rejection (EACCES/EINVAL with a log) that a helper probe expects
_POLICY_REFUSALS = frozenset((_errno.EPERM, _errno.EOPNOTSUPP, 524, _errno.E2BIG))


@_cached
def prog_type_supported(prog_type: int) -> Support:
    """Whether programs of ``prog_type`` load (libbpf_probe_bpf_prog_type).

    For TRACING, LSM and EXT an EPERM means "unsupported here" (this kernel
    refuses trampolines); TRACING still counts as supported when its
    non-trampoline form (tp_btf) reaches the verifier.
    """
    kw, exp_err = _prog_opts(prog_type)
    fd, err, _ = _try_prog(prog_type, RET0, **kw)
    if fd is not None:
        fd.close()
        return Support(True)
    if exp_err and err == exp_err:
        return Support(True)
    if err == _errno.EPERM and prog_type in _TRAMPOLINE_TYPES:
        why = trampolines().reason or "EPERM"
        if prog_type == ProgType.TRACING:
            fd2, err2, _ = _try_prog(prog_type, RET0, expected_attach_type=AttachType.TRACE_RAW_TP,
                                     attach_btf_id=1)
            if fd2 is not None:
                fd2.close()
            if fd2 is not None or err2 == _errno.EINVAL:
                return Support(True, "only tp_btf/iter/struct_ops forms: " + why)
        return Support(False, why, err)
    return _refused("probe load", err)


def _local_storage_btf() -> FD:
    # [1] int, [2] struct bpf_spin_lock { int val; }, [3] struct val { int cnt; struct bpf_spin_lock l; }
    strs = b"\0bpf_spin_lock\0val\0cnt\0l\0"
    t = (_int(0)
         + [1, _info(BTF_KIND_STRUCT, 1), 4, 15, 1, 0]
         + [15, _info(BTF_KIND_STRUCT, 2), 8, 19, 1, 0, 23, 2, 32])
    return B.btf_load(raw_btf(t, strs))


@_cached
def map_type_supported(map_type: int) -> Support:
    """Whether maps of ``map_type`` can be created (libbpf_probe_bpf_map_type)."""
    key, value, entries, flags = 4, 4, 1, 0
    extra: dict[str, Any] = {}
    closers: list[FD] = []
    exp_err = 0
    mt = map_type
    try:
        if mt == MapType.LPM_TRIE:
            key, value, flags = 8, 8, BPF_F_NO_PREALLOC
        elif mt == MapType.STACK_TRACE:
            value = 8
        elif mt in (MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE, MapType.CGRP_STORAGE):
            try:
                bfd = _local_storage_btf()
            except SyscallError as e:
                return Support(False, f"needs BTF, which failed to load ({e.errname})", e.errno)
            closers.append(bfd)
            value, entries, flags = 8, 0, BPF_F_NO_PREALLOC
            extra.update(btf_fd=bfd, btf_key_type_id=1, btf_value_type_id=3)
        elif mt in (MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER):
            key = 0
        elif mt in (MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE):
            key, entries = 16, 0
        elif mt in (MapType.RINGBUF, MapType.USER_RINGBUF):
            key, value, entries = 0, 0, os.sysconf("SC_PAGESIZE")
        elif mt == MapType.ARENA:
            key, value, entries, flags = 0, 0, 1, BPF_F_MMAPABLE
        elif mt in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
            try:
                inner = B.map_create(MapType.ARRAY, 4, 4, 1, name="pyebpf_inner")
            except SyscallError as e:
                return Support(False, f"inner array map failed ({e.errname})", e.errno)
            closers.append(inner)
            extra["inner_map_fd"] = inner
        elif mt == MapType.STRUCT_OPS:
            # as libbpf: an invalid vmlinux value type id reaches the struct_ops code,
            # which answers ENOTSUPP (524); a kernel without struct_ops maps says EINVAL
            extra["btf_vmlinux_value_type_id"] = 1
            exp_err = 524
        try:
            B.map_create(mt, key, value, entries, flags, **extra).close()
            return Support(True)
        except SyscallError as e:
            if exp_err and e.errno == exp_err:
                return Support(True)
            return _refused("map create", e.errno)
    finally:
        for c in closers:
            c.close()


@_cached
def helper_supported(prog_type: int, helper_id: int) -> Support:
    """Whether programs of ``prog_type`` may call helper ``helper_id`` (libbpf_probe_bpf_helper).

    The probe program fails verification for other reasons; only the log lines
    naming an unknown or forbidden helper mean "unsupported".
    """
    kw, _ = _prog_opts(prog_type)
    if prog_type in _TRAMPOLINE_TYPES or prog_type == ProgType.STRUCT_OPS:
        tr = trampolines()
        if not tr and prog_type != ProgType.TRACING:
            return Support(False, tr.reason)
        # The attach target is checked before the program body, as libbpf notes (EOPNOTSUPP).
        return Support(False, "cannot probe helpers for this program type without a real attach target")
    fd, err, text = _try_prog(prog_type, _call(helper_id) + EXIT, log_level=1, **kw)
    if fd is not None:
        fd.close()
        return Support(True)
    if "invalid func " in text or "unknown func " in text:
        return Support(False, f"the kernel does not know helper #{helper_id}")
    if "program of this type cannot use helper " in text:
        return Support(False, f"helper #{helper_id} is not allowed in this program type")
    if err in _POLICY_REFUSALS or not text:
        # a refusal before or instead of verification says nothing about the helper,
        # and "supported" would be a guess: report the refusal
        return _refused("probe load", err)
    return Support(True)
