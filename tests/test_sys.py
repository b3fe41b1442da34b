"""The syscall layer against the real kernel: attrs, maps, programs, errors, perf, tracefs, FDs."""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from pyebpf import insn as I
from pyebpf.errors import OptionError, PyebpfError, SyscallError, VerifierError
from pyebpf.sys import FD, open_fd_count
from pyebpf.sys import attrs as A
from pyebpf.sys import bpf as B
from pyebpf.sys import perf as P
from pyebpf.sys import syscall as S
from pyebpf.uapi import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_PREALLOC,
    BPF_NOEXIST,
    AttachType,
    LinkType,
    MapType,
    ProgType,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# --- tiny assembler for probe programs ---------------------------------------------------------


def ins(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map_fd(dst: int, fd: int) -> bytes:
    return ins(0x18, dst, 1, 0, fd) + ins(0)


RET0 = ins(0xB7) + ins(0x95)


def counter_prog(map_fd: int, tgid: int) -> bytes:
    """Increment array[0] (u64) when the current tgid is ``tgid``."""
    return b"".join([
        ins(0x85, imm=14),              # 0: call get_current_pid_tgid
        ins(0x77, 0, imm=32),           # 1: r0 >>= 32
        ins(0x55, 0, off=9, imm=tgid),  # 2: if r0 != tgid goto 12
        ins(0x62, 10, off=-4, imm=0),   # 3: *(u32 *)(r10 - 4) = 0
        ins(0xBF, 2, 10),               # 4: r2 = r10
        ins(0x07, 2, imm=-4),           # 5: r2 += -4
        ld_map_fd(1, map_fd),           # 6-7: r1 = map
        ins(0x85, imm=1),               # 8: call map_lookup_elem
        ins(0x15, 0, off=2, imm=0),     # 9: if r0 == 0 goto 12
        ins(0xB7, 1, imm=1),            # 10: r1 = 1
        ins(0xDB, 0, 1, 0, 0),          # 11: lock *(u64 *)(r0 + 0) += r1
        ins(0xB7, 0, imm=0),            # 12: r0 = 0
        ins(0x95),                      # 13: exit
    ])  # fmt: skip


def counter_map() -> tuple[FD, B.MapOps]:
    m = B.map_create(MapType.ARRAY, 4, 8, 1, name="t_counter")
    return m, B.MapOps(m, 4, 8)


def count(ops: B.MapOps) -> int:
    return struct.unpack("<Q", ops.lookup(b"\0\0\0\0"))[0]


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    gc.collect()
    before_objs, before_fds = open_fd_count(), nfds()
    yield
    gc.collect()
    assert open_fd_count() == before_objs
    assert nfds() == before_fds


# --- layouts -----------------------------------------------------------------------------------


def test_syscall_numbers():
    m = platform.machine()
    if m == "x86_64":
        assert (S.NR_BPF, S.NR_PERF_EVENT_OPEN) == (321, 298)
    elif m == "aarch64":
        assert (S.NR_BPF, S.NR_PERF_EVENT_OPEN) == (280, 241)


def _kernel_offsets(kb, type_id: int, base: int = 0, out: dict | None = None) -> dict[str, int]:
    """Byte offset of every named member of a struct/union, anonymous members flattened."""
    from pyebpf.btf.types import Struct, Union_

    out = {} if out is None else out
    t = kb.type(type_id)
    for m in t.members:
        off = base + m.bit_offset // 8
        mt = kb.type(m.type)
        if m.name:
            out.setdefault(m.name, off)
        elif isinstance(mt, (Struct, Union_)):
            _kernel_offsets(kb, m.type, off, out)
    return out


ATTR_MEMBERS = [  # union bpf_attr member index -> our struct
    (0, A.MapCreateAttr), (1, A.MapElemAttr), (2, A.BatchAttr), (3, A.ProgLoadAttr),
    (4, A.ObjPinAttr), (5, A.ProgAttachAttr), (6, A.TestRunAttr), (7, A.GetIdAttr),
    (8, A.InfoAttr), (9, A.ProgQueryAttr), (10, A.RawTracepointAttr), (11, A.BtfLoadAttr),
    (12, A.TaskFdQueryAttr), (13, A.LinkCreateAttr), (14, A.LinkUpdateAttr),
    (15, A.LinkDetachAttr), (16, A.EnableStatsAttr), (17, A.IterCreateAttr),
    (18, A.ProgBindMapAttr), (19, A.TokenCreateAttr), (20, A.ProgStreamReadAttr),
]  # fmt: skip


@pytest.fixture(scope="module")
def kbtf():
    from pyebpf.btf.kernel import kernel_btf

    return kernel_btf()


def test_attr_layouts_match_kernel_btf(kbtf):
    (uid,) = kbtf.find("bpf_attr")
    union = kbtf.type(uid)
    assert len(union.members) == len(ATTR_MEMBERS)
    for idx, cls in ATTR_MEMBERS:
        koffs = _kernel_offsets(kbtf, union.members[idx].type)
        for name, *_ in cls._fields_:
            if name in ("extra",) or name.startswith("_"):
                continue
            assert getattr(cls, name).offset == koffs[name], (cls.__name__, name)
        if cls is not A.LinkCreateAttr:
            last = cls._fields_[-1][0]
            assert cls.SIZE == getattr(cls, last).offset + getattr(cls, last).size
            assert cls.SIZE <= 168


@pytest.mark.parametrize("cls,name", [(A.ProgInfo, "bpf_prog_info"), (A.MapInfo, "bpf_map_info"),
                                      (A.BtfInfo, "bpf_btf_info"), (P.PerfEventAttr, "perf_event_attr")])
def test_info_layouts_match_kernel_btf(kbtf, cls, name):
    (tid,) = [i for i in kbtf.find(name) if kbtf.kind_of(i) == 4] or kbtf.find(name)[:1]
    t = kbtf.type(tid)
    assert ctypes.sizeof(cls) == t.size
    koffs = _kernel_offsets(kbtf, tid)
    for f in cls._fields_:
        if len(f) == 3 or f[0].startswith("_"):  # bitfields: ctypes packs them as C does
            continue
        assert getattr(cls, f[0]).offset == koffs[f[0]], (name, f[0])


# --- maps ----------------------------------------------------------------------------------------


BASIC_MAPS = [
    (MapType.HASH, 4, 8, 0), (MapType.ARRAY, 4, 8, 0), (MapType.PERCPU_HASH, 4, 8, 0),
    (MapType.PERCPU_ARRAY, 4, 8, 0), (MapType.LRU_HASH, 4, 8, 0), (MapType.LRU_PERCPU_HASH, 4, 8, 0),
    (MapType.LPM_TRIE, 8, 8, BPF_F_NO_PREALLOC), (MapType.QUEUE, 0, 8, 0), (MapType.STACK, 0, 8, 0),
    (MapType.BLOOM_FILTER, 0, 8, 0), (MapType.PROG_ARRAY, 4, 4, 0),
    (MapType.PERF_EVENT_ARRAY, 4, 4, 0), (MapType.STACK_TRACE, 4, 64, 0),
    (MapType.RINGBUF, 0, 0, 0),
]  # fmt: skip


@pytest.mark.parametrize("mt,ks,vs,flags", BASIC_MAPS, ids=lambda x: getattr(x, "name", None))
def test_create_basic_maps(mt, ks, vs, flags):
    entries = 4096 if mt == MapType.RINGBUF else 8
    with B.map_create(mt, ks, vs, entries, flags, name=f"t_{mt.name.lower()}") as m:
        info = B.map_info(m)
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (mt, ks, vs, entries)
        assert info.name == f"t_{mt.name.lower()}"[:15].encode()
        assert info.id > 0


def percpu_size(vs: int) -> int:
    return ((vs + 7) // 8 * 8) * B.possible_cpus()


@pytest.mark.parametrize("mt", [MapType.HASH, MapType.LRU_HASH, MapType.PERCPU_HASH])
def test_hash_ops(mt):
    vsz = percpu_size(8) if mt == MapType.PERCPU_HASH else 8
    with B.map_create(mt, 4, 8, 16, name="t_hash") as m:
        ops = B.MapOps(m, 4, vsz)
        k1, k2 = struct.pack("<I", 1), struct.pack("<I", 2)
        v = os.urandom(vsz)
        assert ops.lookup(k1) is None
        ops.update(k1, v)
        assert ops.lookup(k1) == v
        with pytest.raises(SyscallError) as ei:
            ops.update(k1, v, BPF_NOEXIST)
        assert ei.value.errno == errno.EEXIST and ei.value.command == "BPF_MAP_UPDATE_ELEM"
        with pytest.raises(SyscallError) as ei:
            ops.update(k2, v, BPF_EXIST)
        assert ei.value.errno == errno.ENOENT
        ops.update(k2, v, BPF_ANY)
        assert sorted(ops.keys()) == [k1, k2]
        assert ops.next_key(None) in (k1, k2)
        assert ops.delete(k1) is True
        assert ops.delete(k1) is False
        assert ops.lookup_and_delete(k2) == v
        # the plain function API agrees
        B.map_update_elem(m, k1, v)
        assert B.map_lookup_elem(m, k1, vsz) == v
        assert B.map_get_next_key(m, None, 4) == k1
        assert B.map_get_next_key(m, k1, 4) is None
        assert B.map_delete_elem(m, k1) and not B.map_delete_elem(m, k1)


def test_array_ops_and_errors():
    with B.map_create(MapType.ARRAY, 4, 8, 4, name="t_array") as m:
        ops = B.MapOps(m, 4, 8)
        assert ops.lookup(struct.pack("<I", 3)) == b"\0" * 8
        assert ops.lookup(struct.pack("<I", 4)) is None  # out of range: ENOENT
        ops.update(struct.pack("<I", 3), b"A" * 8)
        assert ops.lookup(struct.pack("<I", 3)) == b"A" * 8
        assert list(ops.keys()) == [struct.pack("<I", i) for i in range(4)]
        with pytest.raises(SyscallError) as ei:
            ops.delete(struct.pack("<I", 0))  # arrays cannot delete
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(ValueError):
            ops.lookup(b"\0" * 5)  # wrong key size never reaches the kernel
        ops.freeze()
        with pytest.raises(SyscallError) as ei:
            ops.update(struct.pack("<I", 0), b"B" * 8)
        assert ei.value.errno == errno.EPERM and "frozen" in ei.value.hint


def test_hash_full_gives_enospc_hint():
    with B.map_create(MapType.HASH, 4, 4, 2, name="t_full") as m:
        ops = B.MapOps(m, 4, 4)
        ops.update(b"\1\0\0\0", b"x" * 4)
        ops.update(b"\2\0\0\0", b"x" * 4)
        with pytest.raises(SyscallError) as ei:
            ops.update(b"\3\0\0\0", b"x" * 4)
        assert ei.value.errno == errno.E2BIG or ei.value.errno == errno.ENOSPC
        assert ei.value.hint


def test_queue_push_pop():
    with B.map_create(MapType.QUEUE, 0, 8, 4, name="t_queue") as m:
        ops = B.MapOps(m, 0, 8)
        ops.push(struct.pack("<Q", 11))
        ops.push(struct.pack("<Q", 22))
        assert ops.lookup(b"") == struct.pack("<Q", 11)  # peek
        assert ops.lookup_and_delete() == struct.pack("<Q", 11)
        assert ops.lookup_and_delete() == struct.pack("<Q", 22)
        assert ops.lookup_and_delete() is None


def test_batch_ops_on_hash():
    n = 100
    with B.map_create(MapType.HASH, 4, 8, 128, name="t_batch") as m:
        ops = B.MapOps(m, 4, 8)
        keys = b"".join(struct.pack("<I", i) for i in range(n))
        vals = b"".join(struct.pack("<Q", i * 7) for i in range(n))
        assert ops.update_batch(keys, vals) == n
        got = {}
        for ks, vs, cnt in ops.iter_batches(16):
            for i in range(cnt):
                got[ks[i * 4 : i * 4 + 4]] = vs[i * 8 : i * 8 + 8]
        assert got == {keys[i * 4 : i * 4 + 4]: vals[i * 8 : i * 8 + 8] for i in range(n)}
        half = keys[: 4 * (n // 2)]
        assert ops.delete_batch(half) == n // 2
        assert len(list(ops.keys())) == n - n // 2
        total = sum(cnt for _, _, cnt in ops.iter_batches(8, delete=True))
        assert total == n - n // 2
        assert ops.next_key(None) is None
        # a tiny batch count on a hash is ENOSPC only if one bucket overflows; the walker grows it
        n1, _, _, _ = ops.lookup_batch(None, 4)
        assert n1 == 0


def test_batch_ops_on_array():
    with B.map_create(MapType.ARRAY, 4, 4, 64, name="t_batcharr") as m:
        ops = B.MapOps(m, 4, 4)
        total = sum(cnt for _, _, cnt in ops.iter_batches(10))
        assert total == 64


# --- programs ----------------------------------------------------------------------------------


def test_prog_load_info_tag_and_test_run():
    insns = ins(0xB7, 0, imm=7) + ins(0x95)
    with B.prog_load(ProgType.SOCKET_FILTER, insns, name="t_sockf") as p:
        info = B.prog_info(p)
        assert info.type == ProgType.SOCKET_FILTER
        assert info.name == b"t_sockf"
        assert bytes(info.tag).hex() == I.tag(insns)
        retval, _, _, _ = B.prog_test_run(p, data_in=b"\0" * 64)
        assert retval == 7
        assert B.prog_map_ids(p) == []


def test_prog_map_ids_and_log_on_success():
    m, ops = counter_map()
    with m:
        r = B.prog_load_with_log(ProgType.TRACEPOINT, counter_prog(int(m), os.getpid()), log_level=2)
        with r.fd:
            assert "processed" in r.log
            assert B.prog_map_ids(r.fd) == [B.map_info(m).id]


REJECTED = ins(0x95)  # exit without setting r0: "R0 !read_ok"


def test_verifier_error_has_complete_log():
    with pytest.raises(VerifierError) as ei:
        B.prog_load(ProgType.SOCKET_FILTER, REJECTED, name="t_reject")
    e = ei.value
    assert e.errno == errno.EACCES and e.command == "BPF_PROG_LOAD"
    assert "R0 !read_ok" in e.log
    assert e.log_true_size == len(e.log.encode()) + 1  # the kernel counts the NUL
    assert e.insn_index == 0
    assert e.program == "t_reject"
    assert "verifier rejected" in str(e)


def test_verifier_log_grows_from_tiny_buffer(caplog):
    # a long-ish program gives a log longer than 128 bytes at level 2
    body = ins(0xB7, 1, imm=1) * 40
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        with pytest.raises(VerifierError) as ei:
            B.prog_load(ProgType.SOCKET_FILTER, body + REJECTED, log_level=2, log_size=128)
    e = ei.value
    loads = [r for r in caplog.records if "BPF_PROG_LOAD" in r.getMessage()]
    assert any("ENOSPC" in r.getMessage() for r in loads)  # it did have to grow
    assert e.log_true_size == len(e.log.encode()) + 1 > 128
    assert e.log.startswith("func#0") or e.log.startswith("0:")  # the head is there, not cut off
    assert "R0 !read_ok" in e.log
    assert e.insn_index == 40


def test_success_log_grows_too():
    r = B.prog_load_with_log(ProgType.SOCKET_FILTER, ins(0xB7, 1, imm=1) * 30 + RET0,
                             log_level=2, log_size=128)
    with r.fd:
        assert r.log_true_size == len(r.log.encode()) + 1 > 128
        assert r.log.rstrip().endswith("peak_states 0 mark_read 0") or "processed" in r.log


def test_poisoned_core_call_is_explained():
    insns = ins(0x85, imm=I.CORE_POISON_IMM) + RET0
    with pytest.raises(VerifierError) as ei:
        B.prog_load(ProgType.SOCKET_FILTER, insns)
    e = ei.value
    assert e.insn_index == 0
    assert any("poisoned CO-RE relocation" in n for n in e.notes)
    assert "CO-RE" in str(e)


def test_explain_log_kfunc_poison():
    log = "0: (85) call unknown#2002000003\ninvalid func unknown#2002000003\n"
    assert B.poisoned_calls(log) == [(0, 2002000003)]
    assert "kfunc extern #3" in B.explain_log(log)[0]


def test_fentry_eperm_hint():
    from pyebpf.features import trampolines

    if trampolines():
        pytest.skip("this kernel loads trampoline programs")
    with pytest.raises(SyscallError) as ei:
        B.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.TRACE_FENTRY,
                    attach_btf_id=1, name="t_fentry")
    e = ei.value
    assert e.errno == errno.EPERM
    assert "refuses BPF trampoline" in e.hint and "CAP_BPF" in e.hint
    assert "BPF_PROG_LOAD (t_fentry) failed: Operation not permitted (EPERM):" in str(e)


def test_plain_eperm_hint():
    assert "CAP_BPF" in S.errno_hint(errno.EPERM, S.Cmd.MAP_CREATE)
    assert "root" in B.prog_load_hint(errno.EPERM, ProgType.XDP, 0)
    assert "trampoline" not in B.prog_load_hint(errno.EPERM, ProgType.TRACING, AttachType.TRACE_RAW_TP)
    assert "trampoline" in B.prog_load_hint(errno.EPERM, ProgType.LSM, AttachType.LSM_MAC)


def test_e2big_hint():
    # non-zero bytes past the end of the kernel's union bpf_attr
    buf = (ctypes.c_uint8 * 256)()
    ctypes.memmove(buf, bytes(A.MapCreateAttr(map_type=2, key_size=4, value_size=4, max_entries=1)), 92)
    buf[250] = 1
    with pytest.raises(SyscallError) as ei:
        S.bpf(S.Cmd.MAP_CREATE, buf, 256)
    e = ei.value
    assert e.errno == errno.E2BIG and "non-zero bytes past" in e.hint
    assert str(e).startswith("BPF_MAP_CREATE failed: Argument list too long (E2BIG): ")


def test_map_create_einval_hint():
    with pytest.raises(SyscallError) as ei:
        B.map_create(MapType.HASH, 0, 4, 1)
    assert ei.value.errno == errno.EINVAL and "map attributes" in ei.value.hint


def test_insns_validation():
    with pytest.raises(OptionError):
        B.prog_load(ProgType.SOCKET_FILTER, b"\0" * 7)


def test_btf_load_and_error_log():
    from pyebpf.features import raw_btf

    with B.btf_load(raw_btf([1, 1 << 24, 4, (1 << 24) | 32], b"\0int\0")) as b:
        info = B.btf_info(b)
        assert info.btf_size > 24 and info.id > 0
        assert B.btf_data(b)[:2] == b"\x9f\xeb"
    with pytest.raises(VerifierError) as ei:  # INT with a name offset out of range
        B.btf_load(raw_btf([99, 1 << 24, 4, (1 << 24) | 32], b"\0int\0"))
    assert ei.value.command == "BPF_BTF_LOAD" and ei.value.log


# --- attach: raw tracepoint, perf events, links -------------------------------------------------


def test_raw_tracepoint_open_fires():
    m, ops = counter_map()
    with m, B.prog_load(ProgType.RAW_TRACEPOINT, counter_prog(int(m), os.getpid())) as p:
        with B.raw_tracepoint_open("sys_enter", p) as link:
            for _ in range(5):
                os.getpid()
            assert count(ops) >= 5
            li = B.link_info(link)
            assert li.type == LinkType.RAW_TRACEPOINT and li.prog_id == B.prog_info(p).id
        before = count(ops)
        os.getpid()
        assert count(ops) == before  # detached on close


def test_raw_tracepoint_missing():
    with B.prog_load(ProgType.RAW_TRACEPOINT, RET0) as p:
        with pytest.raises(SyscallError) as ei:
            B.raw_tracepoint_open("no_such_tp_xyz", p)
        assert ei.value.errno == errno.ENOENT and "raw tracepoint" in ei.value.hint


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cpu_clock_event() -> FD:
    attr = P.PerfEventAttr(type=P.PERF_TYPE_SOFTWARE, config=P.PERF_COUNT_SW_CPU_CLOCK,
                           sample_period=1000, freq=1)
    return P.perf_event_open(attr, pid=0, cpu=-1)


def test_perf_event_open_software_clock():
    with cpu_clock_event() as pe:
        assert pe.kind == "perf_event" and int(pe) > 2
        P.perf_event_disable(pe)
        P.perf_event_enable(pe)
        assert os.read(int(pe), 8)  # counting read works


def test_perf_event_hardware_enoent_hint():
    attr = P.PerfEventAttr(type=P.PERF_TYPE_HARDWARE, config=0)
    try:
        P.perf_event_open(attr, pid=0, cpu=-1).close()
    except SyscallError as e:
        assert e.command == "perf_event_open"
        if e.errno == errno.ENOENT:
            assert "hardware PMU" in e.hint
    else:
        pytest.skip("this machine has a hardware PMU")


@pytest.mark.parametrize("how", ["link", "ioctl"])
def test_perf_event_program_fires(how):
    m, ops = counter_map()
    with m, B.prog_load(ProgType.PERF_EVENT, counter_prog(int(m), os.getpid())) as p, cpu_clock_event() as pe:
        if how == "link":
            with B.link_create(p, pe, AttachType.PERF_EVENT) as link:
                busy(0.1)
                assert B.link_info(link).type == LinkType.PERF_EVENT
        else:
            P.perf_event_set_bpf(pe, p)
            P.perf_event_enable(pe)
            busy(0.1)
            P.perf_event_disable(pe)
        assert count(ops) > 10


def test_link_create_perf_event_with_cookie_size():
    # The attr tail is sized for what is used: perf_event cookie -> 16 + 8 bytes
    with B.prog_load(ProgType.PERF_EVENT, RET0) as p, cpu_clock_event() as pe:
        with B.link_create(p, pe, AttachType.PERF_EVENT, perf_event_cookie=0x1234):
            pass


def test_link_create_bad_fd():
    with B.prog_load(ProgType.TRACEPOINT, RET0) as p:
        with pytest.raises(SyscallError) as ei:
            B.link_create(p, -1, AttachType.PERF_EVENT)
        assert ei.value.errno == errno.EBADF and ei.value.command == "BPF_LINK_CREATE"


def test_ids_and_fd_by_id():
    with B.prog_load(ProgType.SOCKET_FILTER, RET0, name="t_byid") as p:
        pid = B.prog_info(p).id
        with B.prog_get_fd_by_id(pid) as p2:
            assert B.prog_info(p2).id == pid
        ids = []
        nxt = B.get_next_id(S.Cmd.PROG_GET_NEXT_ID, 0)
        while nxt is not None and len(ids) < 100000:
            ids.append(nxt)
            nxt = B.get_next_id(S.Cmd.PROG_GET_NEXT_ID, nxt)
        assert pid in ids
    with pytest.raises(SyscallError) as ei:
        B.map_get_fd_by_id(0xFFFFFFF0)
    assert ei.value.errno == errno.ENOENT


def test_iter_task():
    # iter/task program: just returns 0, reading the iterator gives empty output
    from pyebpf.btf.kernel import kernel_btf

    kb = kernel_btf()
    (btf_id,) = [i for i in kb.find("bpf_iter_task") if kb.kind_of(i) == 12]
    try:
        p = B.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.TRACE_ITER,
                        attach_btf_id=btf_id, name="t_iter")
    except SyscallError as e:
        pytest.skip(f"iter not loadable: {e}")
    with p, B.link_create(p, None, AttachType.TRACE_ITER) as link, B.iter_create(link) as it:
        assert os.read(int(it), 4096) == b""


# --- tracefs ---------------------------------------------------------------------------------


def test_tracefs_missing_names_the_fix(monkeypatch):
    monkeypatch.setattr(P, "_tracefs", None)
    monkeypatch.setattr(P, "_TRACEFS_CANDIDATES", ("/nonexistent/tracing",))
    with pytest.raises(P.TracefsError) as ei:
        P.tracepoint_id("syscalls", "sys_enter_openat")
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in str(ei.value)
    assert isinstance(ei.value, PyebpfError)


def test_tracepoint_bad_name():
    with pytest.raises(OptionError):
        P.tracepoint_id("../x", "y")


TRACEFS_SCRIPT = textwrap.dedent(
    """
    import os, struct, sys
    sys.path.insert(0, {root!r})
    import tests.test_sys as T
    from pyebpf.sys import bpf as B, perf as P
    from pyebpf.uapi import AttachType, ProgType
    tid = P.tracepoint_id("syscalls", "sys_enter_openat")
    assert tid > 0, tid
    try:
        P.tracepoint_id("syscalls", "sys_enter_no_such_call")
    except P.TracefsError as e:
        assert "has no tracepoint 'sys_enter_no_such_call'" in str(e), e
    else:
        raise AssertionError("no error")
    try:
        P.tracepoint_id("no_such_category", "x")
    except P.TracefsError as e:
        assert "no tracepoint category" in str(e), e
    for how in ("link", "ioctl"):
        m, ops = T.counter_map()
        p = B.prog_load(ProgType.TRACEPOINT, T.counter_prog(int(m), os.getpid()))
        attr = P.PerfEventAttr(type=P.PERF_TYPE_TRACEPOINT, config=tid, sample_period=1, wakeup_events=1)
        pe = P.perf_event_open(attr, pid=-1, cpu=0)
        if how == "link":
            link = B.link_create(p, pe, AttachType.PERF_EVENT)
        else:
            P.perf_event_set_bpf(pe, p); P.perf_event_enable(pe)
        for _ in range(3):
            os.close(os.open("/etc/hostname", os.O_RDONLY))
        n = T.count(ops)
        assert n >= 3, (how, n)
        if how == "link":
            link.close()
        pe.close(); p.close(); m.close()
    # legacy uprobe event: add, look up its id, remove
    group, ev = P.add_uprobe_event("/bin/true", 0x40)
    try:
        assert P.tracepoint_id(group, ev) > 0
    finally:
        P.remove_probe_event("uprobe", group, ev)
    try:
        P.tracepoint_id(group, ev)
    except P.TracefsError:
        pass
    else:
        raise AssertionError("uprobe event not removed")
    if not os.path.exists(os.path.join(P.tracefs_path(), "kprobe_events")):
        try:
            P.add_kprobe_event("do_nanosleep")
        except P.TracefsError as e:
            assert "CONFIG_KPROBE_EVENTS" in str(e), e
        else:
            raise AssertionError("kprobe event added without kprobe_events")
    print("OK", tid)
    """
)


def test_tracepoint_id_and_attach_in_private_mount_ns():
    """tracefs may not be mounted on the host: mount it in a private mount namespace."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = TRACEFS_SCRIPT.format(root=root)
    if P.fs_magic("/sys/kernel/tracing") == P.TRACEFS_MAGIC:
        cmd = [sys.executable, "-c", script]
    elif shutil.which("unshare"):
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tracefs tracefs /sys/kernel/tracing && exec "$0" -c "$1"', sys.executable, script]
    else:
        pytest.skip("tracefs not mounted and no unshare(1)")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK ")


def test_pmu_lookups():
    t = P.pmu_type("uprobe")
    if t is not None:
        assert t > 5
        assert P.pmu_retprobe_bit("uprobe") == 0
    assert P.pmu_type("no_such_pmu") is None
    assert P.pmu_retprobe_bit("no_such_pmu") is None


def test_unique_event_names():
    a = P.unique_event_name("pyebpf_uprobe", "/usr/lib/libc.so.6:0x10")
    b = P.unique_event_name("pyebpf_uprobe", "/usr/lib/libc.so.6:0x10")
    assert a != b and str(os.getpid()) in a
    assert all(c.isalnum() or c == "_" for c in a)


# --- bpffs -----------------------------------------------------------------------------------


def test_bpffs_checks():
    assert P.is_bpffs("/sys/fs/bpf")
    assert not P.is_bpffs("/tmp")
    assert not P.is_bpffs("/nonexistent/x")
    P.require_bpffs("/sys/fs/bpf")
    with pytest.raises(PyebpfError) as ei:
        P.require_bpffs("/tmp")
    assert "mount -t bpf bpf /sys/fs/bpf" in str(ei.value)


def test_pin_get_and_bad_pin_path():
    name = f"/sys/fs/bpf/pyebpf_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with B.map_create(MapType.ARRAY, 4, 4, 1, name="t_pin") as m:
        B.obj_pin(m, name)
        try:
            with B.obj_get(name) as m2:
                assert B.map_info(m2).id == B.map_info(m).id
        finally:
            os.unlink(name)
        with pytest.raises(SyscallError) as ei:
            B.obj_pin(m, f"/tmp/pyebpf_not_bpffs_{os.getpid()}")
        assert "mount -t bpf bpf /sys/fs/bpf" in ei.value.hint
        with pytest.raises(SyscallError) as ei:
            B.obj_get(name)
        assert ei.value.errno == errno.ENOENT


# --- logging, FDs, memlock --------------------------------------------------------------------


def test_debug_log_lines(caplog):
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        with B.map_create(MapType.HASH, 4, 4, 4, name="t_log") as m:
            ops = B.MapOps(m, 4, 4)
            ops.update(b"\1\0\0\0", b"abcd")
            ops.lookup(b"\1\0\0\0")
            ops.lookup(b"\2\0\0\0")
    msgs = [r.getMessage() for r in caplog.records if r.name == "pyebpf.sys"]
    assert any(s.startswith("bpf(BPF_MAP_CREATE, {map_type=HASH key_size=4 value_size=4 max_entries=4 map_name='t_log'}") for s in msgs)
    assert any("BPF_MAP_UPDATE_ELEM" in s and "key=01000000" in s for s in msgs)
    assert any("BPF_MAP_LOOKUP_ELEM" in s and "key=02000000" in s and s.endswith("-1") for s in msgs)


def test_debug_log_attach_type_zero_not_named_where_unset(caplog):
    """expected_attach_type=0 in BPF_PROG_LOAD means "unset", not CGROUP_INET_INGRESS (0)."""
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        with B.prog_load(ProgType.SOCKET_FILTER, RET0, name="t_log_eat"):
            pass
        with B.prog_load(ProgType.CGROUP_SKB, RET0, name="t_log_eat2",
                         expected_attach_type=AttachType.CGROUP_INET_EGRESS):
            pass
        # BPF_LINK_CREATE always means its attach_type: 0 keeps its name there
        with pytest.raises(SyscallError):
            B.link_create(-1, -1, AttachType.CGROUP_INET_INGRESS)
    msgs = [r.getMessage() for r in caplog.records if r.name == "pyebpf.sys"]
    plain = [s for s in msgs if "BPF_PROG_LOAD" in s and "t_log_eat'" in s]
    assert plain and all("expected_attach_type" not in s and "CGROUP_INET_INGRESS" not in s
                         for s in plain)
    assert any("BPF_PROG_LOAD" in s and "t_log_eat2" in s
               and "expected_attach_type=CGROUP_INET_EGRESS" in s for s in msgs)
    assert any("BPF_LINK_CREATE" in s and "attach_type=CGROUP_INET_INGRESS" in s for s in msgs)
    # the formatter itself, on bare attrs
    assert "expected_attach_type" not in S._fmt_attr(A.ProgLoadAttr(prog_type=ProgType.XDP))
    assert "attach_type=CGROUP_INET_INGRESS" in S._fmt_attr(A.ProgAttachAttr(attach_type=0))


def test_no_log_records_when_disabled(caplog):
    with caplog.at_level(logging.INFO, logger="pyebpf.sys"):
        with B.map_create(MapType.HASH, 4, 4, 4) as m:
            B.MapOps(m, 4, 4).lookup(b"\0" * 4)
    assert not [r for r in caplog.records if r.name == "pyebpf.sys"]


def test_fd_semantics():
    base = open_fd_count()
    r, w = os.pipe()
    os.close(w)
    fd = FD(r, "pipe")
    assert int(fd) == r and fd.fileno() == r and not fd.closed
    assert repr(fd) == f"<FD pipe {r}>"
    assert open_fd_count() == base + 1
    d = fd.dup()
    assert int(d) != r and open_fd_count() == base + 2
    fd.close()
    fd.close()  # idempotent
    assert fd.closed and repr(fd) == "<FD pipe closed>"
    with pytest.raises(ValueError):
        int(fd)
    with d:
        pass
    assert d.closed and open_fd_count() == base
    # garbage collection closes
    r2, w2 = os.pipe()
    os.close(w2)
    FD(r2)
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(r2)
    assert open_fd_count() == base


def test_fd_moves_off_stdio_numbers():
    saved = os.dup(0)
    try:
        os.close(0)
        r, w = os.pipe()  # takes fd 0
        assert r == 0
        fd = FD(r)
        assert int(fd) >= 3
        fd.close()
        os.close(w)
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_memcg_accounting_means_load_leaves_memlock_alone(monkeypatch, caplog):
    """libbpf's rule: bump RLIMIT_MEMLOCK only without FEAT_MEMCG_ACCOUNT. This 6.18
    kernel charges BPF memory to the memory cgroup, so load() must not touch the rlimit."""
    import resource

    import pyebpf
    import pyebpf.sys as psys
    from pyebpf.features import has_memcg_account

    assert has_memcg_account()  # 5.11+ (bpf_ktime_get_coarse_ns loads)
    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda *a: calls.append(a))
    monkeypatch.setattr(psys, "_bumped", False)  # as in a fresh process
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    fixture = os.path.join(os.path.dirname(__file__), "..", "fixtures", "minimal.bpf.o")
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        with pyebpf.load(fixture) as obj:
            assert obj.programs
    assert calls == []
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == limit
    # load() did consult the rule (it is not just skipped)
    assert any("RLIMIT_MEMLOCK left alone" in r.getMessage() for r in caplog.records)
    assert psys._bumped


def test_bump_memlock_rlimit_refused_returns_false(monkeypatch):
    """Without memcg accounting and without CAP_SYS_RESOURCE, setrlimit fails with EPERM:
    the bump reports False and never raises (map creation says ENOMEM if it matters)."""
    import resource

    import pyebpf.features as F
    import pyebpf.sys as psys

    def refuse(*a: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(F, "has_memcg_account", lambda: False)  # an old kernel
    monkeypatch.setattr(resource, "setrlimit", refuse)
    monkeypatch.setattr(psys, "_bumped", False)
    assert psys.bump_memlock_rlimit() is False
    assert psys._bumped is False  # a later call may try again

    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda *a: calls.append(a))
    assert psys.bump_memlock_rlimit() is True
    inf = resource.RLIM_INFINITY
    assert calls == [(resource.RLIMIT_MEMLOCK, (inf, inf))]
    assert psys.bump_memlock_rlimit() is True and len(calls) == 1  # once per process


def test_bump_memlock_rlimit_survives_a_broken_probe(monkeypatch):
    import resource

    import pyebpf.features as F
    import pyebpf.sys as psys

    def broken() -> bool:
        raise RuntimeError("probe broke")

    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(F, "has_memcg_account", broken)
    monkeypatch.setattr(resource, "setrlimit", lambda *a: calls.append(a))
    monkeypatch.setattr(psys, "_bumped", False)
    assert psys.bump_memlock_rlimit(1 << 30) is True
    assert calls == [(resource.RLIMIT_MEMLOCK, (1 << 30, 1 << 30))]


def test_syscall_error_is_oserror_and_pickles():
    import pickle

    e = SyscallError(errno.EPERM, "BPF_MAP_CREATE", "hint")
    assert isinstance(e, OSError) and isinstance(e, PyebpfError)
    assert e.errno == errno.EPERM
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) == "BPF_MAP_CREATE failed: Operation not permitted (EPERM): hint"
    v = VerifierError(13, "BPF_PROG_LOAD", "h", log="x\n", insn_index=3, program="p")
    v2 = pickle.loads(pickle.dumps(v))
    assert (v2.log, v2.insn_index, v2.program) == ("x\n", 3, "p")
    assert SyscallError(524, "BPF_PROG_TEST_RUN").errname == "ENOTSUPP"


def test_no_leaks_across_a_mixed_workload():
    before, fds = open_fd_count(), nfds()
    for _ in range(20):
        m = B.map_create(MapType.HASH, 4, 4, 4)
        p = B.prog_load(ProgType.SOCKET_FILTER, RET0)
        with pytest.raises(VerifierError):
            B.prog_load(ProgType.SOCKET_FILTER, REJECTED)
        m.close()
        del p
    gc.collect()
    assert open_fd_count() == before and nfds() == fds


def test_loader_hooks_for_source_line_and_explain():
    insns = ins(0xB7, 1, imm=1) + ins(0x85, imm=I.CORE_POISON_IMM) + RET0
    with pytest.raises(VerifierError) as ei:
        B.prog_load(ProgType.SOCKET_FILTER, insns, name="t_hooks",
                    source_line=lambda i: f"prog.c:{10 + i}",
                    explain=lambda i, imm: f"CO-RE relocation #0 at insn {i}: field x not found")
    e = ei.value
    assert e.insn_index == 1 and e.source_line == "prog.c:11"
    assert e.notes == ["CO-RE relocation #0 at insn 1: field x not found"]
    assert "source: prog.c:11" in str(e)


def test_explain_log_map_poison():
    log = "5: (85) call unknown#2001000002\ninvalid func unknown#2001000002\n"
    assert "map #2" in B.explain_log(log)[0]


def test_map_create_precondition_hints():
    with pytest.raises(SyscallError) as ei:
        B.map_create(MapType.TASK_STORAGE, 4, 8, 0, BPF_F_NO_PREALLOC)
    assert ei.value.errno == errno.EINVAL and "need BTF" in ei.value.hint
    with pytest.raises(SyscallError) as ei:
        B.map_create(MapType.LPM_TRIE, 8, 8, 1)
    assert "BPF_F_NO_PREALLOC" in ei.value.hint
    assert "struct_ops" in B.map_create_hint(errno.EINVAL, MapType.STRUCT_OPS, 0, 0)


def test_netfilter_hint():
    with pytest.raises(SyscallError) as ei:
        B.prog_load(ProgType.NETFILTER, RET0)
    assert "BPF_NETFILTER" in ei.value.hint


def test_mapops_for_fd_sizes_percpu_values():
    with B.map_create(MapType.PERCPU_ARRAY, 4, 4, 2) as m:
        ops = B.MapOps.for_fd(m)
        assert ops.value_size == 8 * B.possible_cpus()
        v = b"".join(struct.pack("<Q", i) for i in range(B.possible_cpus()))
        ops.update(b"\1\0\0\0", v)
        assert ops.lookup(b"\1\0\0\0") == v


def test_hash_matches_a_dict_model():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    op = st.tuples(st.sampled_from(["update", "delete", "lookup", "noexist", "exist"]),
                   st.integers(0, 15), st.binary(min_size=8, max_size=8))

    with B.map_create(MapType.HASH, 4, 8, 16, name="t_model") as m:
        ops = B.MapOps(m, 4, 8)

        @settings(max_examples=60, deadline=None)
        @given(st.lists(op, max_size=40))
        def run(seq):
            for k in list(ops.keys()):
                ops.delete(k)
            model: dict[bytes, bytes] = {}
            for name, ki, v in seq:
                k = struct.pack("<I", ki)
                if name == "update":
                    ops.update(k, v)
                    model[k] = v
                elif name == "delete":
                    assert ops.delete(k) == (model.pop(k, None) is not None)
                elif name == "lookup":
                    assert ops.lookup(k) == model.get(k)
                else:
                    flag = BPF_NOEXIST if name == "noexist" else BPF_EXIST
                    should = (k not in model) if name == "noexist" else (k in model)
                    try:
                        ops.update(k, v, flag)
                        assert should
                        model[k] = v
                    except SyscallError as e:
                        assert not should and e.errno in (errno.EEXIST, errno.ENOENT)
            assert sorted(ops.keys()) == sorted(model)
            got = {}
            for ks, vs, n in ops.iter_batches(4):
                got.update({ks[i * 4 : i * 4 + 4]: vs[i * 8 : i * 8 + 8] for i in range(n)})
            assert got == model

        run()


def test_prog_stream_read_empty():
    with B.prog_load(ProgType.SOCKET_FILTER, RET0) as p:
        try:
            assert B.prog_stream_read(p, 2) == b""
        except SyscallError as e:
            assert e.command == "BPF_PROG_STREAM_READ_BY_FD"


def test_perf_attr_union_aliases():
    a = P.PerfEventAttr(type=P.PERF_TYPE_SOFTWARE, sample_freq=99, freq=1, probe_offset=5, uprobe_path=7)
    assert (a.sample_period, a.config2, a.config1, a.size, a.freq) == (99, 5, 7, 136, 1)
    raw = bytes(a)
    assert struct.unpack_from("<IIQQ", raw) == (1, 136, 0, 99)
    assert struct.unpack_from("<Q", raw, 40)[0] == 1 << 10  # the freq bit


def test_eperm_hint_names_policy_when_caps_are_held(monkeypatch):
    # a root caller told to "run as root" learns nothing: name the policy instead
    monkeypatch.setattr(S, "_effective_caps", lambda: (1 << 39) | (1 << 21))
    hint = S.errno_hint(errno.EPERM, S.Cmd.PROG_LOAD)
    assert "already holds CAP_BPF" in hint and "security policy" in hint
    monkeypatch.setattr(S, "_effective_caps", lambda: 0)
    hint = S.errno_hint(errno.EPERM, S.Cmd.PROG_LOAD)
    assert hint.startswith("run as root") and "already holds" not in hint


def test_eperm_hint_reads_caps_of_a_child_that_dropped_them():
    # the capability set is read at the time of the error, not cached from the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(w, S.errno_hint(errno.EPERM, S.Cmd.PROG_LOAD).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        hint = f.read().decode()
    os.waitpid(pid, 0)
    assert hint.startswith("run as root") and "already holds" not in hint
