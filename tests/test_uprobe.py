"""uprobes, uretprobes, uprobe_multi and kprobe_multi on the real kernel.

Programs (fixtures/src/unit/attach_uprobe.bpf.c) count hits per (tgid, slot) only for the
tgids in their `watch` map, so other processes calling the same libc functions leave no
trace. The target (fixtures/targets/uprobe_target) runs commands read from stdin.
"""

from __future__ import annotations

import errno
import gc
import os
import struct
import subprocess
import sys
import uuid

import kobjects
import pytest
from targets import private_target

import pyebpf
from pyebpf import ObjectSpec
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links import kprobe as K
from pyebpf.links import uprobe as U
from pyebpf.links.base import AttachError, AttachSkipped
from pyebpf.obj import elfsym
from pyebpf.sys import bpf as B
from pyebpf.sys import perf as P
from pyebpf.uapi import LinkType

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.abspath(os.path.join(HERE, ".."))
OBJ = os.path.join(ROOT_DIR, "fixtures", "unit", "attach_uprobe.bpf.o")
TARGET = private_target("uprobe_target")  # tests/targets.py says why a copy

SLOT_ADD, SLOT_RET, SLOT_ARG, SLOT_COOKIE, SLOT_STR, SLOT_AUTO, SLOT_AUTO_RET, SLOT_AUTO_MULTI = range(8)
SLOT_SESSION, SLOT_MULTI, SLOT_MULTI_RET = 8, 16, 48

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class Target:
    """A running uprobe_target driven through its stdin."""

    def __init__(self) -> None:
        self.p = subprocess.Popen([TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ready"), line
        self.pid = self.p.pid

    def cmd(self, text: str) -> int:
        self.p.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.p.stdin.flush()  # type: ignore[union-attr]
        line = self.p.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ok "), line
        return int(line.split()[1])

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.write("q\n")  # type: ignore[union-attr]
                self.p.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def obj():
    o = pyebpf.load(OBJ)
    yield o
    o.close()


@pytest.fixture
def target(obj):
    t = Target()
    obj.maps["watch"][t.pid] = 1
    yield t
    t.close()
    obj.maps["watch"].delete(t.pid)


def _link_alive(link_id: int) -> bool:
    try:
        B.link_get_fd_by_id(link_id).close()
    except SyscallError as e:
        assert e.errno == errno.ENOENT
        return False
    return True


def _our_events() -> list[str]:
    tag = f"pyebpf_{os.getpid()}_"
    with open(os.path.join(P.tracefs_path(), "uprobe_events")) as f:
        return [ln for ln in f.read().splitlines() if tag in ln]


@pytest.fixture
def clean(obj):
    """Empty the result maps; afterwards no new fds, every recorded link id gone, and no
    legacy uprobe event of this process left in uprobe_events."""
    for name in ("hits", "vals", "strs"):
        obj.maps[name].clear()
    ids: list[int] = []
    before = kobjects.fd_state()
    yield ids
    gc.collect()
    assert kobjects.fd_state() == before
    assert [i for i in ids if _link_alive(i)] == []
    assert _our_events() == []


def hits(obj, pid: int, slot: int) -> int:
    raw = obj.maps["hits"].lookup_bytes(struct.pack("<II", pid, slot))
    return 0 if raw is None else struct.unpack("<Q", raw)[0]


def val(obj, pid: int, slot: int) -> int | None:
    raw = obj.maps["vals"].lookup_bytes(struct.pack("<II", pid, slot))
    return None if raw is None else struct.unpack("<q", raw)[0]


def off(name: str) -> int:
    return elfsym.find_func_offset(TARGET, name)


# --- uprobe / uretprobe ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "link", "perf"])
def test_uprobe_fires(obj, target, clean, mode: str) -> None:
    link = U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", mode=mode)
    with link:
        assert isinstance(link, U.UprobeLink) and link.kind == "uprobe"
        assert link.offset == off("ut_add") and link.path == TARGET and link.legacy_event is None
        if mode == "perf":
            assert link.fd is None  # PERF_EVENT_IOC_SET_BPF
        else:
            clean.append(link.id)
            info = link.info()
            assert info.type == LinkType.PERF_EVENT and info.perf_event_type == "uprobe"
            assert info.file_name == TARGET and info.offset == off("ut_add")
        target.cmd("c 5 7")
        target.cmd("c 1 2")
        assert hits(obj, target.pid, SLOT_ADD) == 2 and val(obj, target.pid, SLOT_ADD) == 3
    target.cmd("c 5 7")
    assert hits(obj, target.pid, SLOT_ADD) == 2  # detached


def test_uretprobe_sees_return_value(obj, target, clean) -> None:
    with U.attach_uprobe(obj.programs["ur_ret"], TARGET, "ut_ret", retprobe=True) as link:
        clean.append(link.id)
        assert link.info().perf_event_type == "uretprobe"
        target.cmd("c 10 0")
        assert hits(obj, target.pid, SLOT_RET) == 1 and val(obj, target.pid, SLOT_RET) == 31


def test_func_plus_offset_and_raw_offset(obj, target, clean) -> None:
    # ut_add+0x7 is its second instruction (`lea (%rdi,%rsi),%rax`): the arguments are still there
    with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add+0x7") as a, \
            U.attach_uprobe(obj.programs["u_arg"], TARGET, None, offset=off("ut_ret")) as b:
        clean += [a.id, b.id]
        assert a.offset == off("ut_add") + 7 and b.offset == off("ut_ret")
        target.cmd("c 20 22")
        assert hits(obj, target.pid, SLOT_ADD) == 1 and val(obj, target.pid, SLOT_ADD) == 42
        assert hits(obj, target.pid, SLOT_ARG) == 1 and val(obj, target.pid, SLOT_ARG) == 20
    # func + offset= adds up the same way
    with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", offset=7) as c:
        clean.append(c.id)
        assert c.offset == off("ut_add") + 7


def test_versioned_symbol(obj, target, clean) -> None:
    with U.attach_uprobe(obj.programs["u_arg"], TARGET, "ut_versioned@VER_1") as link:
        clean.append(link.id)
        assert link.offset == off("ut_versioned_old")
        target.cmd("c 3 4")
        assert hits(obj, target.pid, SLOT_ARG) == 1


def test_libc_by_library_name_with_cookie(obj, target, clean) -> None:
    link = U.attach_uprobe(obj.programs["u_cookie"], "libc.so.6", "getpid", cookie=0xC0FFEE,
                           pid=target.pid)
    with link:
        clean.append(link.id)
        assert link.path.startswith("/") and os.path.basename(link.path) == "libc.so.6"
        assert link.info().cookie == 0xC0FFEE
        for _ in range(3):
            assert target.cmd("p") == target.pid
        assert hits(obj, target.pid, SLOT_COOKIE) == 3
        assert val(obj, target.pid, SLOT_COOKIE) == 0xC0FFEE


def test_archive_member_offset(obj, clean, tmp_path) -> None:
    """libbpf's ``archive.zip!/member`` form: the probe goes into the archive file itself."""
    import zipfile

    z = tmp_path / f"app-{os.getpid()}.apk"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(TARGET, "lib/uprobe_target", compress_type=zipfile.ZIP_STORED)
    start, _ = elfsym.archive_member(str(z), "lib/uprobe_target")
    with U.attach_uprobe(obj.programs["u_arg"], f"{z}!/lib/uprobe_target", "ut_ret") as link:
        clean.append(link.id)
        assert link.path == str(z) and link.offset == start + off("ut_ret")
        info = link.info()
        assert info.file_name == str(z) and info.offset == start + off("ut_ret")
    with pytest.raises(AttachError, match="no member 'lib/other'"):
        U.attach_uprobe(obj.programs["u_arg"], f"{z}!/lib/other", "ut_ret")


def _sema_offset() -> int:
    """File offset of the target's ut_sema (through pyelftools, independent of pyebpf)."""
    from elftools.elf.elffile import ELFFile

    with open(TARGET, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("ut_sema")[0]
        v = sym["st_value"]
        seg = next(s for s in elf.iter_segments()
                   if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= v < s["p_vaddr"] + s["p_filesz"])
        return v - seg["p_vaddr"] + seg["p_offset"]


@pytest.mark.parametrize("mode", ["default", "legacy"])
def test_ref_ctr_offset_counts_in_semaphore(obj, target, clean, mode: str) -> None:
    """ref_ctr_offset (USDT semaphores): the kernel bumps the u16 there while attached."""
    assert target.cmd("k") == 0
    with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", ref_ctr_offset=_sema_offset(),
                         mode=mode) as link:
        if link.fd is not None:
            clean.append(link.id)
            assert link.info().ref_ctr_offset == _sema_offset()
        assert target.cmd("k") == 1
        target.cmd("c 1 2")
        assert hits(obj, target.pid, SLOT_ADD) == 1
    assert target.cmd("k") == 0
    with U.attach_uprobe_multi(obj.programs["um_cookie"], TARGET, offsets=[off("ut_mul")],
                               ref_ctr_offsets=[_sema_offset()]) as m:
        clean.append(m.id)
        assert target.cmd("k") == 1
    assert target.cmd("k") == 0


def test_library_found_through_proc_pid_maps(obj, clean) -> None:
    """A library name no search path knows, found among the files mapped in a process."""
    import ctypes

    me = os.getpid()
    lib, func, call = f"libpython{sys.version_info[0]}.{sys.version_info[1]}", "Py_GetVersion", \
        ctypes.pythonapi.Py_GetVersion
    with open(f"/proc/{me}/maps") as f:
        if f"/{lib}" not in f.read():  # an interpreter linked statically: use libc instead
            lib, func, call = "libc", "getppid", os.getppid
    with pytest.raises(AttachError, match=f"cannot find binary '{lib}'"):
        U.attach_uprobe(obj.programs["u_arg"], lib, func)  # not a .so name: PATH only
    obj.maps["watch"][me] = 1
    try:
        with U.attach_uprobe(obj.programs["u_arg"], lib, func, pid=me) as link:
            clean.append(link.id)
            assert os.path.basename(link.path).startswith(lib)
            call()
            assert hits(obj, me, SLOT_ARG) >= 1
    finally:
        obj.maps["watch"].delete(me)


def test_pid_filter(obj, target, clean) -> None:
    other = Target()
    obj.maps["watch"][other.pid] = 1
    try:
        with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", pid=target.pid) as link:
            clean.append(link.id)
            target.cmd("c 1 1")
            other.cmd("c 1 1")
            assert hits(obj, target.pid, SLOT_ADD) == 1
            assert hits(obj, other.pid, SLOT_ADD) == 0
        # pid None: every process
        with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add") as link:
            clean.append(link.id)
            other.cmd("c 1 1")
            assert hits(obj, other.pid, SLOT_ADD) == 1
    finally:
        other.close()


def test_sleepable_uprobe_copies_user_string(obj, target, clean) -> None:
    assert obj.programs["u_sleep"].spec.sec_def.flags  # uprobe.s: loaded sleepable
    with U.attach_uprobe(obj.programs["u_sleep"], TARGET, "ut_str") as link:
        clean.append(link.id)
        assert target.cmd("s hello uprobe") == len("hello uprobe")
        assert hits(obj, target.pid, SLOT_STR) == 1 and val(obj, target.pid, SLOT_STR) == 12
        assert obj.maps["strs"][target.pid].s == b"hello uprobe"


def test_legacy_tracefs_uprobe(obj, target, clean) -> None:
    link = U.attach_uprobe(obj.programs["ur_ret"], TARGET, "ut_ret", retprobe=True, mode="legacy")
    with link:
        assert link.fd is None and link.legacy_event is not None
        group, name = link.legacy_event.split("/")
        assert group == "uretprobes" and name.startswith(f"pyebpf_{os.getpid()}_")
        events = _our_events()
        assert len(events) == 1 and name in events[0] and events[0].startswith("r:")
        target.cmd("c 2 0")
        assert hits(obj, target.pid, SLOT_RET) == 1 and val(obj, target.pid, SLOT_RET) == 7
    assert _our_events() == []  # removed on close
    assert not os.path.exists(os.path.join(P.tracefs_path(), "events", group, name))


def test_without_pmu_default_falls_back_to_tracefs(obj, target, clean, tmp_path) -> None:
    """A kernel without the uprobe PMU (an empty PMU directory stands in for one)."""
    nopmu = str(tmp_path)
    with U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", pmu_dir=nopmu) as link:
        assert link.legacy_event is not None and len(_our_events()) == 1
        target.cmd("c 2 2")
        assert hits(obj, target.pid, SLOT_ADD) == 1
    assert _our_events() == []
    for mode in ("perf", "link"):
        with pytest.raises(AttachError, match="uprobe PMU"):
            U.attach_uprobe(obj.programs["u_add"], TARGET, "ut_add", pmu_dir=nopmu, mode=mode)


def test_legacy_with_pid_and_failure_leaves_no_event(obj, target, clean) -> None:
    with U.attach_uprobe(obj.programs["u_arg"], TARGET, "ut_mul", mode="legacy", pid=target.pid):
        target.cmd("c 9 1")
        assert hits(obj, target.pid, SLOT_ARG) == 1
    # the kernel refuses a probe past the end of the file: nothing may stay behind
    with pytest.raises(AttachError):
        U.attach_uprobe(obj.programs["u_arg"], TARGET, None, offset=1 << 30, mode="legacy")
    assert _our_events() == []


# --- uprobe_multi ------------------------------------------------------------------------------


def test_uprobe_multi_glob_with_cookies(obj, target, clean) -> None:
    link = U.attach_uprobe_multi(obj.programs["um_cookie"], TARGET, "ut_*",
                                 cookies={"ut_add": 1, "ut_mul": 2, "ut_ret": 3})
    with link:
        clean.append(link.id)
        assert isinstance(link, U.UprobeMultiLink) and not link.retprobe
        assert sorted(link.offsets) == sorted(off(n) for n in (
            "ut_add", "ut_mul", "ut_ret", "ut_str", "ut_versioned_old", "ut_versioned_new"))
        info = link.info()
        assert info.type == LinkType.UPROBE_MULTI and info.count == 6 and info.path == TARGET
        target.cmd("c 5 7")
        for cookie in (1, 2, 3):
            assert hits(obj, target.pid, SLOT_MULTI + cookie) == 1
            assert val(obj, target.pid, SLOT_MULTI + cookie) == 5
        assert hits(obj, target.pid, SLOT_MULTI) == 2  # the two ut_versioned_* without a cookie
    target.cmd("c 5 7")
    assert hits(obj, target.pid, SLOT_MULTI + 1) == 1


def test_uretprobe_multi_funcs_from_section(obj, target, clean) -> None:
    # the section (uretprobe.multi) makes it a return probe
    with U.attach_uprobe_multi(obj.programs["urm_ret"], TARGET, funcs=["ut_add", "ut_ret"],
                               cookies=[1, 2]) as link:
        clean.append(link.id)
        assert link.retprobe and link.info().flags == 1  # BPF_F_UPROBE_MULTI_RETURN
        target.cmd("c 4 5")
        assert val(obj, target.pid, SLOT_MULTI_RET + 1) == 9
        assert val(obj, target.pid, SLOT_MULTI_RET + 2) == 13


def test_uprobe_multi_offsets_pid_and_ref_ctr_shape(obj, target, clean) -> None:
    """The form USDT uses: raw offsets, cookies, a pid."""
    other = Target()
    obj.maps["watch"][other.pid] = 1
    try:
        with U.attach_uprobe_multi(obj.programs["um_cookie"], TARGET,
                                   offsets=[off("ut_mul"), off("ut_ret")], cookies=[4, 5],
                                   pid=target.pid) as link:
            clean.append(link.id)
            assert link.info().pid == target.pid
            target.cmd("c 6 1")
            other.cmd("c 6 1")
            assert hits(obj, target.pid, SLOT_MULTI + 4) == 1
            assert hits(obj, target.pid, SLOT_MULTI + 5) == 1
            assert hits(obj, other.pid, SLOT_MULTI + 4) == 0
    finally:
        other.close()


def test_uprobe_multi_pid_zero_is_this_process(obj, clean) -> None:
    me = os.getpid()
    obj.maps["watch"][me] = 1
    try:
        with U.attach_uprobe_multi(obj.programs["um_cookie"], "libc.so.6", funcs=["getppid"],
                                   cookies=[7], pid=0) as link:
            clean.append(link.id)
            assert link.info().pid == me
            os.getppid()
            assert hits(obj, me, SLOT_MULTI + 7) >= 1
    finally:
        obj.maps["watch"].delete(me)


def test_uprobe_session(obj, target, clean) -> None:
    prog = obj.programs["u_session"]
    try:
        link = U.attach_uprobe_multi(prog, TARGET, funcs=["ut_mul"], cookies=[9])
    except AttachError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP) and "uprobe.session" not in str(e):
            pytest.skip(f"kernel refuses uprobe sessions (BPF_TRACE_UPROBE_SESSION): {e.errno}")
        raise
    with link:
        clean.append(link.id)
        target.cmd("c 2 3")
        # entry returned 0, so the program ran at the return as well
        assert hits(obj, target.pid, SLOT_SESSION) == 2
        assert val(obj, target.pid, SLOT_SESSION) == 9
    with pytest.raises(OptionError, match="session program cannot also be a return probe"):
        U.attach_uprobe_multi(prog, TARGET, "ut_*", retprobe=True)


def test_uprobe_multi_errors(obj, clean) -> None:
    prog = obj.programs["um_cookie"]
    with pytest.raises(AttachError, match="no function in .*uprobe_target matches pattern 'zz_\\*'"):
        U.attach_uprobe_multi(prog, TARGET, "zz_*")
    with pytest.raises(AttachError, match="'ut_nope' not found in .*uprobe_target"):
        U.attach_uprobe_multi(prog, TARGET, funcs=["ut_add", "ut_nope"])
    with pytest.raises(OptionError, match="exactly one"):
        U.attach_uprobe_multi(prog, TARGET, "ut_*", offsets=[1])
    with pytest.raises(OptionError, match="2 entries for 1"):
        U.attach_uprobe_multi(prog, TARGET, funcs=["ut_add"], cookies=[1, 2])
    with pytest.raises(OptionError, match="map function names"):
        U.attach_uprobe_multi(prog, TARGET, "ut_*", cookies=[1])
    with pytest.raises(OptionError, match="did not match: nope"):
        U.attach_uprobe_multi(prog, TARGET, "ut_*", cookies={"nope": 1})
    # a plain uprobe program was not loaded for uprobe_multi
    with pytest.raises(AttachError, match="expected attach type TRACE_UPROBE_MULTI"):
        U.attach_uprobe_multi(obj.programs["u_arg"], TARGET, "ut_*")


# --- auto-attach -------------------------------------------------------------------------------


def test_auto_attach_from_sections(clean) -> None:
    """SEC("uprobe/libc.so.6:getpid"), SEC("uretprobe/libc.so.6:getpid") and
    SEC("uprobe.multi/libc.so.6:getppid") through pyebpf.load(...).attach()."""
    me = os.getpid()
    with pyebpf.load(OBJ) as o:
        o.maps["watch"][me] = 1
        made = o.attach()
        for name in ("auto_getpid", "auto_getpid_ret", "auto_multi"):
            assert name in made, (name, o.attach_skipped)
            if made[name].fd is not None:
                clean.append(made[name].id)
        assert isinstance(made["auto_getpid"], U.UprobeLink)
        assert isinstance(made["auto_multi"], U.UprobeMultiLink)
        for bare in ("u_add", "um_cookie", "km_entry"):
            assert bare in o.attach_skipped
        for _ in range(4):
            os.getpid()
        os.getppid()
        # the interpreter itself may call getpid too: at least ours
        assert hits(o, me, SLOT_AUTO) >= 4 and hits(o, me, SLOT_AUTO_RET) >= 4
        assert val(o, me, SLOT_AUTO_RET) == me
        assert hits(o, me, SLOT_AUTO_MULTI) >= 1
        for link in made.values():
            link.close()


def test_program_methods(obj, target, clean) -> None:
    """Program.attach_uprobe / attach_uprobe_multi / attach(binary, func) reach links.uprobe."""
    with obj.programs["u_add"].attach_uprobe(TARGET, "ut_add", mode="link") as a, \
            obj.programs["um_cookie"].attach_uprobe_multi(TARGET, "ut_mu?") as b, \
            obj.programs["ur_ret"].attach(TARGET, "ut_ret") as c:
        clean += [a.id, b.id, c.id]
        assert c.retprobe  # the section's flavour (uretprobe) is kept
        target.cmd("c 3 3")
        assert hits(obj, target.pid, SLOT_ADD) == 1 and val(obj, target.pid, SLOT_ADD) == 6
        assert hits(obj, target.pid, SLOT_MULTI) == 1 and val(obj, target.pid, SLOT_RET) == 10


def test_auto_attach_proc_self_exe_and_errors(obj, clean) -> None:
    prog = obj.programs["u_arg"]
    exe = os.path.realpath("/proc/self/exe")
    # the kernel resolves /proc/self/exe in our process: the interpreter's main()
    with U.auto_attach_uprobe(prog, "uprobe//proc/self/exe:main", None) as link:
        clean.append(link.id)
        assert link.path == "/proc/self/exe"
        assert link.offset == elfsym.find_func_offset(exe, "main")
        assert link.info().file_name in (exe, "/proc/self/exe")
    with U.auto_attach_uprobe(prog, f"uprobe/{TARGET}:0x{off('ut_ret'):x}", None) as link:
        clean.append(link.id)
        assert link.offset == off("ut_ret")
    with pytest.raises(AttachSkipped):
        U.auto_attach_uprobe(prog, "uprobe", None)
    with pytest.raises(AttachError, match="missing the ':function"):
        U.auto_attach_uprobe(prog, f"uprobe/{TARGET}", None)
    with pytest.raises(AttachError, match="uretprobes do not support an offset"):
        U.auto_attach_uprobe(obj.programs["ur_ret"], f"uretprobe/{TARGET}:ut_ret+4", None)
    with pytest.raises(AttachError, match="invalid format"):
        U.auto_attach_uprobe_multi(obj.programs["um_cookie"], f"uprobe.multi/{TARGET}", None)
    with pytest.raises(AttachSkipped):
        U.auto_attach_uprobe_multi(obj.programs["um_cookie"], "uprobe.multi", None)


# --- errors ------------------------------------------------------------------------------------


def test_unknown_function_names_function_and_file(obj, clean) -> None:
    with pytest.raises(AttachError) as e:
        U.attach_uprobe(obj.programs["u_arg"], TARGET, "ut_does_not_exist")
    assert "ut_does_not_exist" in str(e.value) and TARGET in str(e.value)
    assert e.value.program == "u_arg"
    with pytest.raises(AttachError, match="'nope_fn' not found in .*libc.so.6"):
        U.attach_uprobe(obj.programs["u_arg"], "libc.so.6", "nope_fn")


def test_missing_binary(obj, clean) -> None:
    missing = f"/nonexistent/{uuid.uuid4().hex}/bin"
    with pytest.raises(AttachError, match=f"binary {missing} does not exist"):
        U.attach_uprobe(obj.programs["u_arg"], missing, "main")
    with pytest.raises(AttachError, match="cannot find library 'libnope_pyebpf.so.9'"):
        U.attach_uprobe(obj.programs["u_arg"], "libnope_pyebpf.so.9", "f")
    with pytest.raises(AttachError, match="cannot find binary 'nope-pyebpf-tool' in PATH"):
        U.attach_uprobe_multi(obj.programs["um_cookie"], "nope-pyebpf-tool", "x*")


def test_wrong_program_type(obj, clean) -> None:
    prog = obj.programs["not_uprobe"]
    for call in (lambda: U.attach_uprobe(prog, TARGET, "ut_add"),
                 lambda: U.attach_uprobe_multi(prog, TARGET, "ut_*"),
                 lambda: K.attach_kprobe_multi(prog, "do_nanosleep")):
        with pytest.raises(AttachError, match="needs a program of type KPROBE.*TRACEPOINT"):
            call()


def test_bad_options(obj, clean) -> None:
    prog = obj.programs["u_arg"]
    with pytest.raises(OptionError, match="unknown uprobe attach mode"):
        U.attach_uprobe(prog, TARGET, "ut_add", mode="fast")
    with pytest.raises(OptionError, match="empty function name"):
        U.attach_uprobe(prog, TARGET, "")
    with pytest.raises(OptionError, match="negative"):
        U.attach_uprobe(prog, TARGET, None, offset=-1)
    with pytest.raises(OptionError, match="unsigned 64-bit"):
        U.attach_uprobe(prog, TARGET, "ut_add", cookie=-1)
    with pytest.raises(OptionError, match="unsigned 64-bit"):
        U.attach_uprobe_multi(obj.programs["um_cookie"], TARGET, funcs=["ut_add"], cookies=[1 << 64])
    with pytest.raises(AttachError, match="cookie needs perf links"):
        U.attach_uprobe(prog, TARGET, "ut_add", mode="perf", cookie=1)


def test_no_permission(obj, clean) -> None:
    """Attach in a child that dropped to nobody with no capabilities: a clear AttachError."""
    prog = obj.programs["u_arg"]
    multi = obj.programs["um_cookie"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)  # clears the capability sets
            out = []
            for call in (lambda: U.attach_uprobe(prog, TARGET, "ut_add"),
                         lambda: U.attach_uprobe_multi(multi, TARGET, "ut_*")):
                try:
                    call()
                    out.append("ATTACHED")
                except AttachError as e:
                    out.append(f"{e.errno}|{e}")
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    out.append(f"OTHER {type(e).__name__}: {e}")
            os.write(w, "\n".join(out).encode())
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"OTHER {e}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    lines = text.splitlines()
    assert len(lines) == 2, text
    err, _, msg = lines[0].partition("|")
    assert err in (str(errno.EPERM), str(errno.EACCES)), text
    assert "no permission" in msg and "CAP_PERFMON" in msg and "ut_add" in msg, text
    # BPF_LINK_CREATE(UPROBE_MULTI) checks no capability: with a program fd handed over by
    # a privileged loader the kernel lets an unprivileged process attach (6.18 does)
    err, _, msg = lines[1].partition("|")
    assert lines[1] == "ATTACHED" or (err in (str(errno.EPERM), str(errno.EACCES))
                                      and "no permission" in msg), text


# --- kprobe_multi ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [("km_entry", {}), ("km_ret", {}), ("km_session", {"session": True})])
def test_kprobe_multi_where_kernel_lacks_fprobe(obj, clean, name: str, kw: dict) -> None:
    prog = obj.programs[name]
    try:
        link = K.attach_kprobe_multi(prog, "do_nanosleep*", **kw)
    except AttachError as e:
        if e.errno not in (errno.EOPNOTSUPP, 524):
            raise
        msg = str(e)
        assert "cannot do kprobe_multi" in msg and "fprobe" in msg and "CONFIG_FPROBE" in msg
        assert "tracepoint" in msg and "attach_kprobe" in msg
        return
    with link:  # a kernel with fprobe: it attached
        assert isinstance(link, K.KprobeMultiLink)
        clean.append(link.id)
        assert link.info().type == LinkType.KPROBE_MULTI


def test_kprobe_multi_options_and_sections(obj, clean) -> None:
    prog = obj.programs["km_entry"]
    with pytest.raises(OptionError, match="not both"):
        K.attach_kprobe_multi(prog, "a*", syms=["x"])
    with pytest.raises(OptionError, match="syms= or addrs=, not both"):
        K.attach_kprobe_multi(prog, syms=["x"], addrs=[1])
    with pytest.raises(OptionError, match="needs a pattern"):
        K.attach_kprobe_multi(prog)
    with pytest.raises(OptionError, match="2 entries for 1"):
        K.attach_kprobe_multi(prog, syms=["do_nanosleep"], cookies=[1, 2])
    with pytest.raises(OptionError, match="cookies must be unsigned 64-bit"):
        K.attach_kprobe_multi(prog, syms=["do_nanosleep"], cookies=[-1])
    with pytest.raises(AttachError, match="no kernel function matches pattern 'zz_pyebpf_none\\*'"):
        K.attach_kprobe_multi(prog, "zz_pyebpf_none*")
    with pytest.raises(OptionError, match="session .*cannot also be a return probe"):
        K.attach_kprobe_multi(prog, "do_nanosleep", retprobe=True, session=True)
    with pytest.raises(AttachError, match="pattern is invalid"):
        K.auto_attach_kprobe_multi(prog, "kprobe.multi/!bad", None)
    with pytest.raises(AttachSkipped):
        K.auto_attach_kprobe_multi(prog, "kprobe.multi", None)
    try:
        K.auto_attach_kprobe_multi(obj.programs["km_ret"], "kretprobe.multi/do_nanosleep", None).close()
    except AttachError as e:
        assert "kretprobe.multi" in str(e) and e.errno in (errno.EOPNOTSUPP, 524)


# --- nothing left behind -----------------------------------------------------------------------


def test_many_cycles_leave_nothing(clean) -> None:
    names = kobjects.object_names(ObjectSpec.from_file(OBJ))
    before = kobjects.snapshot()
    t = Target()
    try:
        with pyebpf.load(OBJ) as o:
            o.maps["watch"][t.pid] = 1
            for i in range(5):
                mode = ("default", "legacy", "perf", "link", "default")[i]
                a = U.attach_uprobe(o.programs["u_add"], TARGET, "ut_add", mode=mode, pid=t.pid)
                m = U.attach_uprobe_multi(o.programs["um_cookie"], TARGET, "ut_*")
                t.cmd("c 1 1")
                a.close()
                m.close()
            with pytest.raises(AttachError):
                U.attach_uprobe(o.programs["u_add"], TARGET, "ut_nope")
            assert hits(o, t.pid, SLOT_ADD) == 5
    finally:
        t.close()
    gc.collect()
    left = kobjects.wait_no_new_named(before, names)
    assert left == {"prog": [], "map": [], "link": []}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
