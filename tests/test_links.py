"""pyebpf.links: every tracing attach kind fires on the real kernel, plus pure tests of the
auto-attach rules, kprobe perf_event_attr bytes and legacy tracefs commands.

Kernel tests need root; they count only events of our own tgid (cfg[0]), use unique pin
names, and check that every fd and kernel link they made is gone afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import struct
import subprocess
import time
import uuid
from types import SimpleNamespace

import kobjects
import linkload
import pytest

import pyebpf
from pyebpf import ObjectSpec, links
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links import kprobe as K
from pyebpf.links.base import AttachError, AttachSkipped
from pyebpf.links.iter import iter_info
from pyebpf.obj.sections import attach_target, match_section
from pyebpf.sys import bpf as B
from pyebpf.sys import open_fd_count
from pyebpf.sys import perf as P
from pyebpf.uapi import AttachType, LinkType, ProgType

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")

SLOT_TP, SLOT_RAW_TP, SLOT_TP_BTF, SLOT_PERF, SLOT_RAW_TP_W, SLOT_XDP, SLOT_COOKIE = range(7)


def _proc_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _link_alive(link_id: int) -> bool:
    try:
        B.link_get_fd_by_id(link_id).close()
    except SyscallError as e:
        assert e.errno == errno.ENOENT
        return False
    return True


@pytest.fixture(scope="module")
def tracefs() -> str:
    if not ROOT:
        pytest.skip("needs root")
    try:
        return P.tracefs_path()
    except P.TracefsError:
        # the standard location; left mounted because other processes may start using it
        subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=True)
        P._tracefs = None
        return P.tracefs_path()


COUNTERS = os.path.join(linkload.UNIT, "attach_counters.bpf.o")


@pytest.fixture(scope="module")
def obj(tracefs):
    """attach_counters loaded by pyebpf.load; ``maps`` are the raw map fds, ``object`` the Object."""
    o = pyebpf.load(COUNTERS)
    B.map_update_elem(o.maps["cfg"].fd, b"\0\0\0\0", struct.pack("<I", os.getpid()))
    yield SimpleNamespace(programs=o.programs, maps={n: m.fd for n, m in o.maps.items()},
                          map_objects=o.maps, object=o)
    o.close()


@pytest.fixture
def clean(obj):
    """Zero the counters; afterwards, no new fds and every link the test recorded is gone."""
    for i in range(8):
        B.map_update_elem(obj.maps["counts"], struct.pack("<I", i), b"\0" * 8)
    ids: list[int] = []
    before = (open_fd_count(), _proc_fds())
    yield ids
    gc.collect()
    assert (open_fd_count(), _proc_fds()) == before
    assert [i for i in ids if _link_alive(i)] == []


def slot(obj, i: int) -> int:
    return struct.unpack("<Q", B.map_lookup_elem(obj.maps["counts"], struct.pack("<I", i), 8))[0]


# --- tracepoint ------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("force_ioctl", [False, True], ids=["perf_link", "ioctl"])
def test_tracepoint_fires(obj, clean, force_ioctl: bool) -> None:
    prog = obj.programs["count_openat"]
    with links.attach_tracepoint(prog, "syscalls", "sys_enter_openat", force_ioctl=force_ioctl) as link:
        assert isinstance(link, links.TracepointLink)
        assert link.perf_fd is not None and not link.perf_fd.closed
        if force_ioctl:
            assert link.fd is None and link.id is None
            with pytest.raises(AttachError, match="PERF_EVENT_IOC_SET_BPF"):
                link.info()
        else:
            info = link.info()
            assert info.type == LinkType.PERF_EVENT and info.id == link.id
            assert info.prog_id == B.prog_info(prog.fd).id
            assert info.perf_event_type == "tracepoint" and info.tp_name == "sys_enter_openat"
            clean.append(link.id)
        assert "sys_enter_openat" in repr(link)
        for _ in range(7):
            os.close(os.open("/dev/null", os.O_RDONLY))
        n = slot(obj, SLOT_TP)
    assert n == 7
    assert "closed" in repr(link)
    os.close(os.open("/dev/null", os.O_RDONLY))
    assert slot(obj, SLOT_TP) == 7  # detached


@needs_root
def test_tracepoint_auto_attach_and_string_forms(obj, clean) -> None:
    prog = obj.programs["count_openat"]
    for attach in (links.auto_attach, links.attach_program,
                   lambda p: links.attach_program(p, "syscalls/sys_enter_openat"),
                   lambda p: links.attach_tracepoint(p, "syscalls:sys_enter_openat")):
        link = attach(prog)
        clean.append(link.id)
        # the kernel keeps one instance of a program per tracepoint
        with pytest.raises(AttachError, match="already attached to this event"):
            links.attach_tracepoint(prog, "syscalls", "sys_enter_openat")
        link.close()


class KernelObjects:
    """Kernel programs/maps/links of ours created since the snapshot (tests/kobjects.py:
    the machine is shared, so only new ids bearing attach_counters' names count)."""

    def __init__(self) -> None:
        self.names = kobjects.object_names(ObjectSpec.from_file(COUNTERS))
        self.before = kobjects.snapshot()

    def check(self) -> None:
        gc.collect()
        left = kobjects.wait_no_new_named(self.before, self.names)
        assert left == {"prog": [], "map": [], "link": []}


@needs_root
def test_missing_tracepoint_is_clear(obj, clean, tracefs) -> None:
    prog = obj.programs["count_openat"]
    kernel = KernelObjects()
    with pytest.raises(P.TracefsError) as e:
        links.attach_tracepoint(prog, "syscalls", "sys_enter_pyebpf_nope")
    msg = str(e.value)
    assert "syscalls:sys_enter_pyebpf_nope does not exist" in msg
    assert f"{tracefs}/events/syscalls/sys_enter_pyebpf_nope/id" in msg
    with pytest.raises(P.TracefsError, match="no tracepoint category 'pyebpf_nope'"):
        links.attach_tracepoint(prog, "pyebpf_nope", "x")
    with pytest.raises(OptionError):
        links.attach_tracepoint(prog, "syscalls")
    kernel.check()


@needs_root
def test_tracefs_not_mounted_names_the_mount_command(obj, clean, tmp_path) -> None:
    with pytest.raises(P.TracefsError) as e:
        links.attach_tracepoint(obj.programs["count_openat"], "syscalls", "sys_enter_openat",
                                tracefs=str(tmp_path))
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in str(e.value)
    assert str(tmp_path) in str(e.value)


# --- raw_tp, raw_tp.w, tp_btf -------------------------------------------------------------------


@needs_root
def test_raw_tp_fires(obj, clean) -> None:
    prog = obj.programs["count_raw_sys_enter"]
    with links.auto_attach(prog) as link:
        assert isinstance(link, links.RawTracepointLink)
        clean.append(link.id)
        info = link.info()
        assert info.type == LinkType.RAW_TRACEPOINT and info.tp_name == "sys_enter"
        for _ in range(20):
            os.getppid()
        n = slot(obj, SLOT_RAW_TP)
    assert n >= 20


@needs_root
def test_raw_tp_missing_is_clear(obj, clean) -> None:
    with pytest.raises(AttachError, match="raw tracepoint 'pyebpf_nope' does not exist") as e:
        links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "pyebpf_nope")
    assert e.value.errno == errno.ENOENT


@needs_root
def test_raw_tp_writable_fires(obj, clean) -> None:
    with links.auto_attach(obj.programs["count_test_finish"]) as link:
        clean.append(link.id)
        assert link.info().tp_name == "bpf_test_finish"
        retval = B.prog_test_run(obj.programs["xdp_pass"].fd, data_in=bytes(64), data_size_out=64)[0]
        assert retval == 2  # XDP_PASS
        assert slot(obj, SLOT_XDP) == 1 and slot(obj, SLOT_RAW_TP_W) == 1


@needs_root
@pytest.mark.parametrize("raw_open", [False, True], ids=["link_create", "raw_tracepoint_open"])
def test_tp_btf_fires(obj, clean, raw_open: bool) -> None:
    prog = obj.programs["count_btf_sys_enter"]
    with links.attach_program(prog, raw_tracepoint_open=raw_open) as link:
        assert isinstance(link, links.TracingLink)
        clean.append(link.id)
        info = link.info()
        assert info.prog_id == B.prog_info(prog.fd).id
        for _ in range(20):
            os.getppid()
        n = slot(obj, SLOT_TP_BTF)
    assert n >= 20


@needs_root
def test_trampoline_programs_refused_with_clear_error(tracefs) -> None:
    before = open_fd_count()
    path = os.path.join(linkload.ROOT, "fixtures", "sections_trampoline.bpf.o")
    names = list(ObjectSpec.from_file(path).programs)
    assert len(names) == 4
    for name in names:
        with pytest.raises(SyscallError) as e:
            linkload.load(path, [name])
        assert e.value.errno == errno.EPERM and e.value.command == "BPF_PROG_LOAD"
        assert "this kernel refuses BPF trampoline programs" in str(e.value)
    with pytest.raises(SyscallError) as e:
        pyebpf.load(path)
    assert e.value.errno == errno.EPERM and "refuses BPF trampoline programs" in e.value.hint
    gc.collect()
    assert open_fd_count() == before


@needs_root
@pytest.mark.parametrize("kind", ["tracepoint", "raw_tp", "tp_btf", "tp_btf_raw_open"])
def test_bpf_cookie(obj, clean, kind: str) -> None:
    cookie = 0x1234_5678_9ABC_DEF0 + len(kind)
    if kind == "tracepoint":
        link = links.attach_program(obj.programs["cookie_tp"], cookie=cookie)
        assert link.info().cookie == cookie
    elif kind == "raw_tp":
        link = links.attach_program(obj.programs["cookie_raw_tp"], "sys_enter", cookie=cookie)
    else:
        link = links.attach_trace(obj.programs["cookie_tp_btf"], cookie=cookie,
                                  raw_tracepoint_open=kind == "tp_btf_raw_open")
    with link:
        clean.append(link.id)
        os.getppid()
        assert slot(obj, SLOT_COOKIE) == cookie


@needs_root
def test_cookie_needs_perf_link(obj, clean) -> None:
    with pytest.raises(AttachError, match="cookie needs perf links"):
        links.attach_tracepoint(obj.programs["cookie_tp"], "syscalls", "sys_enter_getppid",
                                cookie=1, force_ioctl=True)


# --- iterators ---------------------------------------------------------------------------------


@needs_root
def test_iter_task_stream_sees_our_pid(obj, clean) -> None:
    with links.auto_attach(obj.programs["dump_task"]) as link:
        assert isinstance(link, links.IterLink)
        clean.append(link.id)
        info = link.info()
        assert info.type == LinkType.ITER and info.target_name == "task"
        me = f"A {os.getpid()} {os.getpid()} "
        with link.open(text=True) as f:
            lines = [line.rstrip("\n") for line in f]
        assert any(line.startswith(me) for line in lines)
        assert all(line.startswith("A ") for line in lines)
        # every open() is a new run
        assert me in link.read_text()
        raw = link.read_all()
        assert isinstance(raw, bytes) and raw.count(b"\n") > 5


@needs_root
def test_iter_bpf_map_lists_our_maps(obj, clean) -> None:
    ids = {B.map_info(fd).id for fd in obj.maps.values()}
    with links.attach_program(obj.programs["dump_map"]) as link:
        clean.append(link.id)
        seen = {int(line.split()[0]) for line in link.read_text().splitlines()}
    assert ids <= seen


@pytest.fixture
def iter_elem(tracefs):
    """attach_iter_elem loaded, or a skip where this kernel refuses bpf_map_elem iterators."""
    try:
        o = pyebpf.load(os.path.join(linkload.UNIT, "attach_iter_elem.bpf.o"))
    except SyscallError as e:
        if e.errno != errno.EPERM:
            raise
        # refused before verification even as root (bpftool prog loadall gets the same EPERM)
        pytest.skip(f"this kernel refuses iter/bpf_map_elem programs: {e.hint}")
    yield o
    o.close()


@needs_root
def test_iter_map_elem_needs_and_takes_a_map(iter_elem, clean) -> None:
    prog = iter_elem.programs["dump_counts"]
    counts = iter_elem.maps["counts"]
    assert "needs a map" in links.skip_reason(prog)
    with pytest.raises(AttachSkipped, match="needs a map"):
        links.auto_attach(prog)
    with pytest.raises(AttachError, match=r"needs a map: attach_iter\(prog, map=...\)"):
        links.attach_iter(prog)
    assert iter_elem.attach() == {}
    assert "needs a map" in iter_elem.attach_skipped["dump_counts"]
    counts[6] = 4242
    with links.attach_iter(prog, map=counts) as link:
        clean.append(link.id)
        assert link.info().map_id == counts.id
        text = link.read_text()
    assert "6=4242\n" in text and text.count("\n") == 8


@needs_root
def test_link_update_iter(obj, clean) -> None:
    a, b = obj.programs["dump_task"], obj.programs["dump_task_b"]
    with links.attach_iter(a) as link:
        clean.append(link.id)
        assert link.read_text().startswith("A ")
        link.update(b)
        assert link.program is b
        assert link.info().prog_id == B.prog_info(b.fd).id
        assert link.read_text().startswith("B ")
        with pytest.raises(SyscallError) as e:  # BPF_F_REPLACE with the wrong old program
            link.update(a, old_prog=a)
        assert e.value.errno == errno.EPERM
        link.update(a, old_prog=b)
        assert link.read_text().startswith("A ")


@needs_root
def test_link_update_refused_where_kernel_has_none(obj, clean) -> None:
    prog = obj.programs["count_raw_sys_enter"]
    with links.attach_raw_tracepoint(prog, "sys_enter") as link:
        clean.append(link.id)
        with pytest.raises(AttachError, match="does not allow replacing the program"):
            link.update(prog)


# --- perf_event --------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("force_ioctl", [False, True], ids=["perf_link", "ioctl"])
def test_perf_event_sampling_every_cpu(obj, clean, force_ioctl: bool) -> None:
    prog = obj.programs["count_perf"]
    cpus = links.perf_event.online_cpus()
    with links.sample_software_event(prog, freq=1000, force_ioctl=force_ioctl) as group:
        assert len(group) == len(cpus)
        if not force_ioctl:
            clean.extend(link.id for link in group)
            assert all(link.info().type == LinkType.PERF_EVENT for link in group)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass
        n = slot(obj, SLOT_PERF)
    assert n > 0
    assert group.closed


@needs_root
def test_perf_event_given_event(obj, clean) -> None:
    prog = obj.programs["count_perf"]
    attr = P.PerfEventAttr(type=P.PERF_TYPE_SOFTWARE, config=P.PERF_COUNT_SW_CPU_CLOCK)
    attr.freq = 1
    attr.sample_freq = 1000
    pfd = P.perf_event_open(attr, pid=os.getpid(), cpu=-1)
    with links.attach_program(prog, pfd) as link:
        clean.append(link.id)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            pass
        assert slot(obj, SLOT_PERF) > 0
    assert pfd.closed  # the link owned it


@needs_root
def test_perf_event_hardware_has_hint(obj, clean) -> None:
    try:
        group = links.sample_software_event(obj.programs["count_perf"], type=0, config=0, freq=10)
    except AttachError as e:
        assert e.errno == errno.ENOENT and "no hardware PMU" in str(e)
    else:  # a machine with a PMU
        group.close()


# --- pinning, GC, leaks ------------------------------------------------------------------------


@needs_root
def test_link_pin_unpin(obj, clean) -> None:
    path = f"/sys/fs/bpf/pyebpf_test_link_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    link = links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "sys_enter")
    link_id = link.id
    clean.append(link_id)
    try:
        link.pin(path)
        assert os.path.exists(path) and f"pinned={path}" in repr(link)
        link.close()
        assert _link_alive(link_id)  # the pin keeps it attached
        with links.Link.from_pin(path) as again:
            assert again.id == link_id and again.info().tp_name == "sys_enter"
        with links.Link.from_id(link_id) as again:
            assert again.info().prog_id == B.prog_info(obj.programs["count_raw_sys_enter"].fd).id
        n = slot(obj, SLOT_RAW_TP)
        os.getppid()
        assert slot(obj, SLOT_RAW_TP) > n
        with links.Link.from_pin(path) as again:
            again.unpin()
        assert not os.path.exists(path)
        link.unpin()  # nothing left to remove
    finally:
        if os.path.exists(path):
            os.unlink(path)
    gc.collect()
    assert not _link_alive(link_id)


@needs_root
def test_bad_pin_path(obj, clean) -> None:
    kernel = KernelObjects()
    bad = f"/tmp/pyebpf_not_bpffs_{uuid.uuid4().hex[:8]}"
    with links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "sys_enter") as link:
        clean.append(link.id)
        with pytest.raises(OptionError, match="mount -t bpf"):  # pyebpf.pin refuses it
            link.pin(bad)
        with pytest.raises(OptionError):
            link.pin("")
    assert not os.path.exists(bad)
    kernel.check()  # the link is gone with its fd: no pin kept it


@needs_root
def test_detach_and_ioctl_mode_limits(obj, clean) -> None:
    with links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "sys_enter") as link:
        clean.append(link.id)
        with pytest.raises(AttachError, match="cannot force-detach a raw_tracepoint link"):
            link.detach()
    with links.attach_tracepoint(obj.programs["count_openat"], "syscalls", "sys_enter_openat",
                                 force_ioctl=True) as link:
        with pytest.raises(AttachError, match="has no bpf link"):
            link.pin("/sys/fs/bpf/pyebpf_never")
        with pytest.raises(AttachError, match="has no bpf link"):
            link.update(obj.programs["count_openat"])


@needs_root
def test_gc_detaches(obj, clean) -> None:
    link = links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "sys_enter")
    link_id = link.id
    clean.append(link_id)
    del link
    gc.collect()
    assert not _link_alive(link_id)


@needs_root
def test_object_attach_uses_auto_attach(clean) -> None:
    with pyebpf.load(COUNTERS) as o:
        made = o.attach()
        clean.extend(link.id for link in made.values())
        assert set(made) == {"count_openat", "count_raw_sys_enter", "count_btf_sys_enter",
                             "count_test_finish", "dump_task", "dump_task_b", "dump_map",
                             "cookie_tp", "cookie_raw_tp", "cookie_tp_btf"}
        assert set(o.attach_skipped) == {"count_perf", "xdp_pass"}


@needs_root
def test_many_cycles_leave_nothing(obj, clean) -> None:
    for _ in range(20):
        for link in (links.auto_attach(obj.programs["count_openat"]),
                     links.auto_attach(obj.programs["count_raw_sys_enter"]),
                     links.auto_attach(obj.programs["count_btf_sys_enter"]),
                     links.auto_attach(obj.programs["dump_map"])):
            clean.append(link.id)
            link.close()
    tp = links.attach_tracepoint(obj.programs["count_openat"], "syscalls", "sys_enter_openat",
                                 force_ioctl=True)
    tp.close()


# --- kprobes on this kernel -------------------------------------------------------------------

no_kprobes = pytest.mark.skipif(
    os.path.exists("/sys/bus/event_source/devices/kprobe"), reason="this kernel has kprobes"
)


@pytest.fixture(scope="module")
def kprobe_obj(tracefs):
    """sections.bpf.o: kprobe programs load here (uprobes need the type) but cannot attach."""
    with pyebpf.load(os.path.join(linkload.ROOT, "fixtures", "sections.bpf.o")) as o:
        yield o


@needs_root
@no_kprobes
def test_kprobe_unavailable_is_clear(kprobe_obj) -> None:
    before = (open_fd_count(), _proc_fds())
    for name, call in [
        ("s_kprobe", lambda p: links.attach_kprobe(p, "do_nanosleep")),
        ("s_kretprobe", lambda p: links.attach_kprobe(p, "do_nanosleep", retprobe=True)),
        ("s_kprobe", links.auto_attach),
        ("s_kretprobe", links.attach_program),
        ("s_ksyscall", links.auto_attach),
        ("s_ksyscall", lambda p: links.attach_ksyscall(p, "openat")),
    ]:
        with pytest.raises(links.KprobeUnavailable) as e:
            call(kprobe_obj.programs[name])
        msg = str(e.value)
        assert "kprobes are unavailable" in msg and "CONFIG_KPROBES" in msg
        assert "kprobe_events" in msg and "/sys/bus/event_source/devices/kprobe" in msg
    # Object.attach fails as libbpf's skeleton attach does, and closes what it had attached
    with pytest.raises(links.KprobeUnavailable):
        kprobe_obj.attach()
    assert kprobe_obj.links == {}
    gc.collect()
    assert (open_fd_count(), _proc_fds()) == before


# --- pure: kprobe attr bytes, legacy commands, names ---------------------------------------


def test_kprobe_perf_attr_bytes() -> None:
    pa = K.kprobe_perf_attr("do_nanosleep", 0x10, retprobe=True, pmu_type=6, retprobe_bit=0)
    raw = pa.bytes()
    assert len(raw) == 136
    typ, size, config = struct.unpack_from("<IIQ", raw, 0)
    assert (typ, size, config) == (6, 136, 1)
    config1, config2 = struct.unpack_from("<QQ", raw, 56)
    assert ctypes.string_at(config1) == b"do_nanosleep"
    assert config2 == 0x10
    # everything else zero (no freq, no flags, pid/cpu are syscall arguments)
    rest = bytearray(raw)
    rest[0:16] = bytes(16)
    rest[56:72] = bytes(16)
    assert rest == bytes(136)
    entry = K.kprobe_perf_attr("vfs_read", pmu_type=7, retprobe_bit=None).bytes()
    assert struct.unpack_from("<IIQ", entry, 0) == (7, 136, 0)
    assert struct.unpack_from("<Q", entry, 64)[0] == 0
    bit5 = K.kprobe_perf_attr("f", retprobe=True, pmu_type=6, retprobe_bit=5).bytes()
    assert struct.unpack_from("<Q", bit5, 8)[0] == 1 << 5
    with pytest.raises(links.KprobeUnavailable, match="retprobe"):
        K.kprobe_perf_attr("f", retprobe=True, pmu_type=6, retprobe_bit=None)


def test_kprobe_pmu_discovery(tmp_path) -> None:
    (tmp_path / "kprobe" / "format").mkdir(parents=True)
    (tmp_path / "kprobe" / "type").write_text("6\n")
    (tmp_path / "kprobe" / "format" / "retprobe").write_text("config:0\n")
    assert K.kprobe_pmu_type(str(tmp_path)) == 6
    assert K.kprobe_retprobe_bit(str(tmp_path)) == 0
    assert K.kprobe_pmu_type(str(tmp_path / "none")) is None


def test_legacy_kprobe_commands() -> None:
    name = K.legacy_kprobe_event_name("do_sys.open", 0x1f, pid=123, index=4)
    assert name == "pyebpf_123_4_do_sys_open_0x1f"
    assert K.legacy_kprobe_add_command(name, "do_sys.open", 0x1f) == \
        "p:kprobes/pyebpf_123_4_do_sys_open_0x1f do_sys.open+0x1f"
    assert len(K.legacy_kprobe_event_name("x" * 200, pid=1, index=1)) == 63
    assert K.legacy_kprobe_add_command("ev", "vfs_read", retprobe=True) == "r:kretprobes/ev vfs_read+0x0"
    assert K.legacy_kprobe_remove_command("ev") == "-:kprobes/ev"
    assert K.legacy_kprobe_remove_command("ev", retprobe=True) == "-:kretprobes/ev"
    a, b = K.legacy_kprobe_event_name("f"), K.legacy_kprobe_event_name("f")
    assert a != b and a.startswith(f"pyebpf_{os.getpid()}_") and a.endswith("_f_0x0")


def test_legacy_kprobe_flow_writes_and_removes(tmp_path) -> None:
    """Without a PMU, attach writes the probe to kprobe_events, and removes it when it fails."""
    (tmp_path / "events").mkdir()
    events = tmp_path / "kprobe_events"
    events.write_text("")
    prog = SimpleNamespace(name="p", fd=123456, spec=None)
    with pytest.raises(P.TracefsError, match="does not exist"):
        links.attach_kprobe(prog, "vfs_read", 8, pmu_dir=str(tmp_path / "nopmu"), tracefs=str(tmp_path))
    add, remove = events.read_text().splitlines()
    ev = add.split()[0].split("/")[1]
    assert add == f"p:kprobes/{ev} vfs_read+0x8"
    assert remove == f"-:kprobes/{ev}"


def test_no_kprobe_support_message(tmp_path) -> None:
    (tmp_path / "events").mkdir()
    prog = SimpleNamespace(name="p", fd=123456, spec=None)
    with pytest.raises(links.KprobeUnavailable) as e:
        links.attach_kprobe(prog, "vfs_read", pmu_dir=str(tmp_path), tracefs=str(tmp_path))
    assert "CONFIG_KPROBES" in str(e.value) and str(tmp_path / "kprobe_events") in str(e.value)


def test_kprobe_target_parsing_and_syscall_names() -> None:
    assert K.parse_kprobe_target("do_nanosleep") == ("do_nanosleep", 0)
    assert K.parse_kprobe_target("do_nanosleep+0x10") == ("do_nanosleep", 16)
    assert K.parse_kprobe_target("f.isra.0+12") == ("f.isra.0", 12)
    assert K.parse_kprobe_target("f+010") == ("f", 8)
    with pytest.raises(OptionError):
        K.parse_kprobe_target("+1")
    assert K.syscall_function("openat", wrapper=True, machine="x86_64") == "__x64_sys_openat"
    assert K.syscall_function("openat", wrapper=True, machine="aarch64") == "__arm64_sys_openat"
    assert K.syscall_function("openat", wrapper=False, machine="x86_64") == "__se_sys_openat"
    assert K.syscall_function("openat", wrapper=True, machine="ppc64le") == "sys_openat"
    with pytest.raises(OptionError):
        links.attach_kprobe(SimpleNamespace(name="p", fd=1), "f", 4, retprobe=True)


def test_iter_info_bytes() -> None:
    assert iter_info() == b""
    assert iter_info(map=7) == struct.pack("<I", 7)
    assert iter_info(map=SimpleNamespace(fd=9)) == struct.pack("<I", 9)
    assert iter_info(cgroup_fd=5, order=2) == struct.pack("<IIQ", 2, 5, 0)
    assert iter_info(tid=42) == struct.pack("<III", 42, 0, 0)
    with pytest.raises(OptionError):
        iter_info(map=1, tid=2)


# --- pure: libbpf's auto-attach rules ---------------------------------------------------------


def _fake(section: str, **kw) -> SimpleNamespace:
    sd = match_section(section)
    spec = SimpleNamespace(section=section, sec_def=sd, attach_target=attach_target(sd, section) if sd else None,
                           autoattach=kw.pop("autoattach", True), autoload=True)
    return SimpleNamespace(name="prog", fd=-1, spec=spec, type=sd.prog_type if sd else None,
                           expected_attach_type=sd.attach_type if sd else None, attach_btf_id=None)


@pytest.mark.parametrize("section, fragment", [
    ("tp", "names no tracepoint"),
    ("tracepoint", "names no tracepoint"),
    ("raw_tp", "names no raw tracepoint"),
    ("raw_tracepoint.w", "names no raw tracepoint"),
    ("kprobe", "names no kernel function"),
    ("kretprobe", "names no kernel function"),
    ("ksyscall", "names no syscall"),
    ("uprobe", "names no target"),
    ("perf_event", "not auto-attachable"),
    ("xdp", "not auto-attachable"),
    ("socket", "not auto-attachable"),
    ("struct_ops/init", "struct_ops map"),
    ("iter/bpf_map_elem", "needs a map"),
])
def test_skip_reasons(section: str, fragment: str) -> None:
    prog = _fake(section)
    assert fragment in links.skip_reason(prog)
    with pytest.raises(AttachSkipped) as e:
        links.auto_attach(prog)
    assert fragment in e.value.reason and e.value.program == "prog"


@pytest.mark.parametrize("section", [
    "tp/syscalls/sys_enter_openat", "tracepoint/sched/sched_switch", "raw_tp/sys_enter",
    "raw_tp.w/bpf_test_finish", "tp_btf/sys_enter", "fentry/do_nanosleep", "fexit/vfs_read",
    "fmod_ret/security_file_open", "lsm/file_open", "iter/task", "kprobe/do_nanosleep",
    "kretprobe/do_nanosleep", "ksyscall/openat", "kretsyscall/openat",
    "uprobe//bin/true:main", "uretprobe/libc.so.6:getpid", "usdt/libc.so.6:libc:setjmp",
    "uprobe.multi//bin/true:ma*", "kprobe.multi/do_*",
])
def test_auto_attachable(section: str) -> None:
    assert links.skip_reason(_fake(section)) is None


def test_autoattach_off_and_malformed_targets() -> None:
    assert "disabled" in links.skip_reason(_fake("tp/a/b", autoattach=False))
    # a section with no auto-attach handler says so, whatever its autoattach flag
    assert "not auto-attachable" in links.skip_reason(_fake("xdp", autoattach=False))
    with pytest.raises(AttachError, match="want tp/<category>/<name>"):
        links.skip_reason(_fake("tp/justone"))
    with pytest.raises(AttachError, match="kretprobes do not support offset"):
        links.auto_attach(_fake("kretprobe/f+4"))
    with pytest.raises(AttachError, match="pass the attach target explicitly"):
        links.attach_program(_fake("tp"))
    with pytest.raises(AttachError, match="pass the attach target explicitly"):
        links.attach_program(_fake("kprobe"), cookie=3)


def test_section_table_attach_names_are_handled() -> None:
    from pyebpf.links.autoattach import _HANDLERS
    from pyebpf.obj.sections import SECTION_DEFS

    names = {d.attach for d in SECTION_DEFS if d.attach}
    assert names <= set(_HANDLERS)
    assert ProgType.TRACING == match_section("iter/task").prog_type
    assert match_section("iter/task").attach_type == AttachType.TRACE_ITER
