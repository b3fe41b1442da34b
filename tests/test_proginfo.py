"""Program.info() decoded (pyebpf.proginfo) and program statistics (pyebpf.stats).

Kernel tests load fixtures/unit/proginfo_stats.bpf.o, a sys_enter_getppid tracepoint
program that counts only our own tgid, and check that every fd and kernel object they
made is gone afterwards.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time

import kobjects
import pytest
from unitobj import unit_object

import pyebpf
from pyebpf import insn as I
from pyebpf.errors import OptionError, PyebpfError
from pyebpf.proginfo import FuncInfo, LineInfo, ProgInfo, decode_prog_info
from pyebpf.stats import Stats, enable_stats
from pyebpf.sys.attrs import ProgInfo as RawProgInfo
from pyebpf.uapi import ProgType

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")
FIXTURE = unit_object("proginfo_stats")
PROG = "count_getppid"


# --- pure ---------------------------------------------------------------------------------------


def _raw(**kw: object) -> RawProgInfo:
    raw = RawProgInfo()
    raw.type = 5
    raw.id = 77
    raw.tag = (ctypes.c_uint8 * 8)(*bytes.fromhex("0123456789abcdef"))
    raw.name = b"my_prog"
    raw.xlated_prog_len = 24
    raw.jited_prog_len = 60
    raw.gpl_compatible = 1
    raw.run_cnt = 3
    raw.run_time_ns = 900
    raw.created_by_uid = 1000
    for k, v in kw.items():
        setattr(raw, k, v)
    return raw


def test_decode_prog_info_fields() -> None:
    info = decode_prog_info(_raw(), [4, 5])
    assert info.type is ProgType.TRACEPOINT
    assert (info.id, info.name, info.tag) == (77, "my_prog", "0123456789abcdef")
    assert info.map_ids == [4, 5] and info.insn_count == 3 and info.jited
    assert info.gpl_compatible is True and info.run_cnt == 3 and info.run_time_ns == 900
    # every field of struct bpf_prog_info except the pointers and counts of pointers
    skip = {"jited_prog_insns", "xlated_prog_insns", "nr_map_ids", "jited_ksyms",
            "jited_func_lens", "func_info", "line_info", "jited_line_info", "prog_tags"}
    raw_fields = {f[0] for f in RawProgInfo._fields_} - skip
    assert raw_fields <= set(ProgInfo._fields)
    # an unknown program type stays an int; equal records compare equal
    assert decode_prog_info(_raw(type=999)).type == 999
    assert decode_prog_info(_raw(), [4, 5]) == info
    assert decode_prog_info(_raw(run_cnt=4), [4, 5]) != info


def test_prog_info_repr_is_readable() -> None:
    r = repr(decode_prog_info(_raw(btf_id=9, nr_func_info=2, nr_line_info=11), [4]))
    assert r.startswith("ProgInfo(id=77, name='my_prog', type=tracepoint, tag=0123456789abcdef")
    for part in ("map_ids=[4]", "insns=3", "jited=60B", "run_cnt=3", "run_time_ns=900",
                 "btf_id=9 func_info=2 line_info=11", "uid=1000", "gpl"):
        assert part in r
    assert "\n" not in r and len(r) < 400


def test_arrays_of_a_detached_record_explain() -> None:
    info = decode_prog_info(_raw())
    with pytest.raises(PyebpfError, match=r"'my_prog' \(id 77\): its fd is closed.*Program.from_id"):
        info.xlated_bytes()
    # nothing to fetch: no syscall, no error
    assert decode_prog_info(_raw(xlated_prog_len=0)).xlated_insns() == []
    assert info.func_info() == [] and info.line_info() == []


def test_line_and_func_info_records() -> None:
    li = LineInfo(3, 10, 20, 42, 7, "a.c", "x = 1;")
    assert (li.line, li.col, li.file) == (42, 7, "a.c")
    assert "line=42" in repr(li)
    assert FuncInfo(0, 5, "main") == FuncInfo(0, 5, "main")


def test_enable_stats_bad_kind() -> None:
    with pytest.raises(OptionError, match=r"unknown statistics kind 'cycles'; known: run_time"):
        enable_stats("cycles")
    with pytest.raises(OptionError, match="a name or an int"):
        enable_stats(1.5)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="a name or an int"):
        enable_stats(-1)


# --- kernel -------------------------------------------------------------------------------------


@pytest.fixture
def leakcheck():
    names = kobjects.object_names(pyebpf.ObjectSpec.from_file(FIXTURE))
    pyebpf.kernel_btf()  # the process-wide kernel BTF keeps its file open: open it first
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    yield
    gc.collect()
    assert kobjects.fd_state() == fds
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


@pytest.fixture
def obj(leakcheck):
    with pyebpf.load(FIXTURE, globals={"target_tgid": os.getpid()}) as o:
        yield o


@needs_root
def test_stats_count_runs(obj) -> None:
    prog = obj.programs[PROG]
    before = prog.info()
    with enable_stats() as stats:
        assert isinstance(stats, Stats) and "run_time" in repr(stats)
        assert not stats.closed and stats.fd.kind == "stats"
        obj.attach()
        for _ in range(20):
            os.getppid()
        during = prog.info()
    assert stats.closed and "closed" in repr(stats)
    assert obj.maps["hits"][0] == 20
    # other processes' getppid calls run the program too (it filters inside), so at least 20
    assert during.run_cnt >= before.run_cnt + 20
    assert during.run_time_ns > before.run_time_ns
    # the id, name and tag do not move; the counters are fresh on each info()
    assert (during.id, during.name, during.tag) == (prog.id, PROG[:15], prog.tag)


@needs_root
def test_enable_stats_by_number(obj) -> None:
    with enable_stats(0) as stats:
        assert stats.kind == "run_time"


@needs_root
def test_info_fields_and_map_ids(obj) -> None:
    prog = obj.programs[PROG]
    info = prog.info()
    assert isinstance(info, ProgInfo)
    assert info.type is ProgType.TRACEPOINT and info.name == PROG
    assert info.id == prog.id and info.tag == prog.tag == obj.spec.programs[PROG].tag
    assert len(info.tag) == 16 and int(info.tag, 16) >= 0
    # the program uses hits, per_tid and .rodata (target_tgid)
    assert sorted(info.map_ids) == sorted(m.id for m in obj.maps.values())
    assert info.gpl_compatible and info.created_by_uid == 0
    assert info.verified_insns > 0 and info.btf_id > 0
    assert info.nr_func_info == 2 and info.nr_line_info > 5
    assert info.attach_btf_id == 0 and info.recursion_misses == 0
    assert abs(info.loaded_at - time.time()) < 600
    r = repr(info)
    assert r.startswith(f"ProgInfo(id={prog.id}, name='{PROG}', type=tracepoint, tag={prog.tag}")


@needs_root
def test_xlated_insns_decode(obj) -> None:
    prog = obj.programs[PROG]
    info = prog.info()
    raw = info.xlated_bytes()
    insns = info.xlated_insns()
    assert len(raw) == info.xlated_prog_len and len(insns) == info.insn_count == len(raw) // 8
    assert all(isinstance(i, I.Insn) for i in insns)
    assert insns[-1].code == I.BPF_JMP | I.BPF_EXIT
    # the kernel dumps each map reference as an ld_imm64 carrying the map's id
    refs = {i.imm for i in insns if i.is_ldimm64 and i.src in (I.BPF_PSEUDO_MAP_FD,
                                                                 I.BPF_PSEUDO_MAP_VALUE)}
    assert refs == set(info.map_ids)
    # the subprogram call is still there
    assert any(i.is_subprog_call for i in insns)


@needs_root
def test_jited_and_btf_info(obj) -> None:
    info = obj.programs[PROG].info()
    code = info.jited_bytes()
    assert len(code) == info.jited_prog_len > 0
    ksyms, lens = info.jited_ksyms(), info.jited_func_lens()
    assert len(ksyms) == len(lens) == 2 and sum(lens) == len(code)
    assert len(info.prog_tags()) == 2 and all(len(t) == 16 for t in info.prog_tags())
    funcs = info.func_info()
    assert [f.name for f in funcs] == ["count_getppid", "count_tid"] and funcs[0].insn_off == 0
    # the subprogram starts where the xlated call lands
    lines = info.line_info()
    assert len(lines) == info.nr_line_info
    assert all(li.file and li.file.endswith("proginfo_stats.bpf.c") for li in lines)
    assert any("bpf_get_current_pid_tgid" in (li.source or "") for li in lines)
    assert [li.insn_off for li in lines] == sorted(li.insn_off for li in lines)
    assert info.line_info(resolve=False)[0].file is None
    assert len(info.jited_line_info()) == info.nr_jited_line_info


@needs_root
def test_from_id_and_closed_program(obj) -> None:
    prog = obj.programs[PROG]
    with pyebpf.Program.from_id(prog.id) as again:
        assert again.name == PROG and again.tag == prog.tag and again.type is ProgType.TRACEPOINT
        info = again.info()
        assert info.map_ids and len(info.xlated_insns()) == info.insn_count
    with pytest.raises(PyebpfError, match="its fd is closed"):
        info.xlated_bytes()
    # repr of a Program still shows the decoded id and tag
    assert f"id={prog.id}, tag={prog.tag}" in repr(prog)


@needs_root
def test_unprivileged_reader_sees_no_code(obj) -> None:
    # Without CAP_BPF/CAP_PERFMON the kernel zeroes the instruction, JIT and BTF line counts
    # (bpf_prog_get_info_by_fd): the record then says so with empty arrays, not an error.
    from nobody import run_as_nobody

    prog = obj.programs[PROG]

    def child() -> tuple:
        i = prog.info()
        return (i.tag, i.map_ids, i.insn_count, i.xlated_insns(), i.jited_bytes(),
                i.jited_ksyms(), i.func_info(), i.line_info())

    status, value = run_as_nobody(child)
    assert status == "ok"
    assert value == (prog.tag, prog.info().map_ids, 0, [], b"", [], [], [])
