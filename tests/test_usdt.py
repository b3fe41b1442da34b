"""USDT attach on the real kernel: fixtures/targets/usdt_target fires probes whose arguments
are constants, registers and memory operands of every size, a probe with a semaphore and
a probe with two sites; fixtures/unit/attach_usdt.bpf.o (built with libbpf's usdt.bpf.h)
records what bpf_usdt_arg_cnt()/bpf_usdt_arg()/bpf_usdt_cookie() return, for the tgids the
test puts into its `tgids` map only.

Every test checks that the uprobes it made are gone afterwards and that no fd leaked.
"""

from __future__ import annotations

import errno
import gc
import os
import struct
import subprocess
import time
from collections.abc import Iterator

import kobjects
import pytest
from nobody import run_as_nobody
from targets import private_target

import pyebpf
from pyebpf import ObjectSpec, features, links
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links import usdt as LU
from pyebpf.links.base import AttachError, AttachSkipped
from pyebpf.obj import usdt as U
from pyebpf.sys import bpf as B
from pyebpf.uapi import AttachType, LinkType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
THROW = os.path.join(FIX, "targets", "usdt_throw")

# The targets run from private copies (tests/targets.py says why).
_private_copy = private_target


TARGET = _private_copy("usdt_target")
NOPIE = _private_copy("usdt_target_nopie")
OBJ = os.path.join(FIX, "unit", "attach_usdt.bpf.o")
NOMAPS = os.path.join(FIX, "unit", "attach_usdt_nomaps.bpf.o")
COUNTERS = os.path.join(FIX, "unit", "attach_counters.bpf.o")
SIB_OBJ = os.path.join(FIX, "unit", "attach_usdt_sib_layout.bpf.o")

PROG_GENERIC, PROG_AUTO, PROG_LIB, PROG_SLEEPABLE = 1, 2, 3, 4
U64 = (1 << 64) - 1


def s64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


def wrap(v: int, bits: int, signed: bool) -> int:
    v &= (1 << bits) - 1
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


class Event:
    """One struct usdt_event record."""

    def __init__(self, b: bytes) -> None:
        self.tgid, self.prog, self.arg_cnt = struct.unpack_from("<IIi", b, 0)
        self.rets = struct.unpack_from("<12i", b, 12)
        (self.cookie,) = struct.unpack_from("<Q", b, 64)
        self.all_args = struct.unpack_from("<12q", b, 72)
        (self.ip,) = struct.unpack_from("<Q", b, 168)

    @property
    def args(self) -> tuple[int, ...]:
        return self.all_args[: max(self.arg_cnt, 0)]

    def __repr__(self) -> str:
        return f"Event(tgid={self.tgid}, prog={self.prog}, cnt={self.arg_cnt}, args={self.args}, cookie={self.cookie})"


class Target:
    """A running target: ``step(n)`` fires every probe once and returns its reply line."""

    def __init__(self, path: str = TARGET) -> None:
        self.p = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        assert line[:1] == ["ready"], line
        self.pid = int(line[1])
        self.lines = 0

    def step(self, n: int = 0) -> str:
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        self.lines += 1
        return self.p.stdout.readline().strip()

    def sema(self) -> int:
        reply = self.step(0)
        assert reply.startswith("sema="), reply
        return int(reply[5:])

    def close(self) -> None:
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()


def drain(rb: pyebpf.RingBuffer) -> list[Event]:
    out = []
    while True:
        got = [Event(bytes(r)) for r in rb.poll(timeout=0.05)]
        if not got:
            return out
        out += got


def allow(obj, *pids: int) -> None:
    for pid in pids:
        obj.maps["tgids"].update_bytes(struct.pack("<I", pid), struct.pack("<I", 1))


def uprobe_ids(link: LU.UsdtLink) -> list[int]:
    return [sub.id for sub in link.links if sub.id is not None]


def link_alive(link_id: int) -> bool:
    try:
        B.link_get_fd_by_id(link_id).close()
    except SyscallError as e:
        assert e.errno == errno.ENOENT
        return False
    return True


def wait_gone(ids: list[int], timeout: float = 10.0) -> list[int]:
    """Link ids still alive after ``timeout``. Other processes on this machine open new
    links by id for their own leak checks; a link they hold for a moment outlives our close."""
    end = time.monotonic() + timeout
    while True:
        left = [i for i in ids if link_alive(i)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.02)


# Where the kernel has uprobe_multi links, USDT programs are loaded for one uprobe_multi
# link per attach, as libbpf >= 1.3 does (test_uprobe_multi_is_the_default below). Most tests
# here look at the per-site uprobes that kernels without them (and libbpf < 1.3) use, so they
# load as on such a kernel.
MULTI_TESTS = {"test_uprobe_multi_is_the_default"}


@pytest.fixture(autouse=True)
def per_site_uprobes(request, monkeypatch) -> None:
    if request.node.name not in MULTI_TESTS:
        monkeypatch.setattr(features, "uprobe_multi_link", lambda: False)


@pytest.fixture(scope="module")
def obj() -> Iterator[pyebpf.Object]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "uprobe_multi_link", lambda: False)
        o = pyebpf.load(OBJ)
    # warm the process-wide caches (kernel BTF, feature probes, uprobe PMU) once, so the
    # per-test fd accounting sees only what a test leaves behind
    o.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", "step").close()
    yield o
    o.close()


@pytest.fixture
def rb(obj) -> Iterator[pyebpf.RingBuffer]:
    with pyebpf.RingBuffer(obj.maps["events"]) as r:
        drain(r)
        yield r


@pytest.fixture
def target(obj) -> Iterator[Target]:
    t = Target()
    allow(obj, t.pid)
    yield t
    t.close()
    obj.maps["tgids"].delete(t.pid)


@pytest.fixture
def clean(obj) -> Iterator[list[int]]:
    """Collects uprobe link ids; afterwards they must be gone and no fd may have leaked."""
    ids: list[int] = []
    before = kobjects.fd_state()
    yield ids
    gc.collect()
    assert kobjects.fd_state() == before
    assert wait_gone(ids) == []


# --- arguments ------------------------------------------------------------------------------


def expected(probe: str, n: int, line: int) -> tuple[int, ...]:
    if probe == "consts":
        return (-5, 65000, -100000, 1234567890123, -42, 200)
    if probe == "regs":
        return (wrap(n, 8, True), wrap(n, 16, False), wrap(n, 32, True), s64(n),
                wrap(n, 8, False), s64(n))
    if probe == "mem":
        return (wrap(-n, 32, True), wrap(n + 1, 16, False), wrap(-(n & 0x7F), 8, True),
                s64(n * 1000), s64(n * 3))
    if probe == "step":
        return (line,)
    if probe == "noargs":
        return ()
    raise AssertionError(probe)


def test_arguments_position_dependent_target(obj, rb, clean) -> None:
    t = Target(NOPIE)
    try:
        allow(obj, t.pid)
        with obj.programs["usdt_generic"].attach_usdt(NOPIE, "usdt_test", "mem") as link:
            clean.extend(uprobe_ids(link))
            t.step(12345)
            assert [e.args for e in drain(rb)] == [expected("mem", 12345, 1)]
            assert t.sema() == 0
        with obj.programs["usdt_generic"].attach_usdt(NOPIE, "usdt_test", "sema") as link:
            clean.extend(uprobe_ids(link))
            assert t.sema() == 1
    finally:
        t.close()
        obj.maps["tgids"].delete(t.pid)


def test_arguments_every_operand_kind(obj, rb, target, clean) -> None:
    prog = obj.programs["usdt_generic"]
    names = ["consts", "regs", "mem", "step", "noargs"]
    ls = {n: prog.attach_usdt(TARGET, "usdt_test", n, cookie=1000 + i) for i, n in enumerate(names)}
    try:
        for link in ls.values():
            assert isinstance(link, LU.UsdtLink) and not link.multi and len(link.links) == 1
            clean.extend(uprobe_ids(link))
        for n in (-7, 300, (1 << 40) + 5, -(1 << 62) - 3, 0x7F):
            assert target.step(n).startswith("sema=")
            evs = drain(rb)
            assert len(evs) == len(names), evs
            by_cookie = {e.cookie: e for e in evs}
            for i, name in enumerate(names):
                e = by_cookie[1000 + i]
                assert (e.tgid, e.prog) == (target.pid, PROG_GENERIC)
                want = expected(name, n, target.lines)
                assert e.arg_cnt == len(want) and e.args == want, (name, n, e)
                # bpf_usdt_arg() past the last argument: -ENOENT and a zeroed result
                assert e.rets == (0,) * len(want) + (-errno.ENOENT,) * (12 - len(want))
                assert e.all_args[len(want):] == (0,) * (12 - len(want))
    finally:
        for link in ls.values():
            link.close()
    assert wait_gone(clean) == []
    target.step(1)
    assert drain(rb) == []


def test_two_sites_one_probe(obj, rb, target, clean) -> None:
    prog = obj.programs["usdt_generic"]
    with prog.attach_usdt(TARGET, "usdt_test", "twice", cookie=U64) as link:
        clean.extend(uprobe_ids(link))
        assert len(link.probes) == 2 and len(link.links) == 2
        # the two sites have different argument strings: two spec ids
        assert len(set(link.spec_ids)) == 2
        target.step(-11)
        evs = drain(rb)
        assert sorted(e.args for e in evs) == [(1, 7), (2, -11)]
        assert {e.cookie for e in evs} == {U64}
        assert "2 sites via uprobes" in repr(link)
    assert link.closed and "closed" in repr(link)
    link.close()  # idempotent


def test_sleepable_bpf_usdt_macro(obj, rb, target, clean) -> None:
    with obj.programs["usdt_sleepable"].attach_usdt(TARGET, "usdt_test", "step") as link:
        clean.extend(uprobe_ids(link))
        target.step()
        target.step()
        evs = drain(rb)
    assert [(e.prog, e.arg_cnt, e.all_args[0]) for e in evs] == [
        (PROG_SLEEPABLE, 1, target.lines - 1), (PROG_SLEEPABLE, 1, target.lines)]


def test_pid_filter(obj, rb, clean) -> None:
    a, b = Target(), Target()
    try:
        allow(obj, a.pid, b.pid)
        prog = obj.programs["usdt_generic"]
        with prog.attach_usdt(TARGET, "usdt_test", "step", pid=a.pid) as link:
            clean.extend(uprobe_ids(link))
            assert link.pid == a.pid
            a.step()
            b.step()
            a.step()
            assert [e.tgid for e in drain(rb)] == [a.pid, a.pid]
        with prog.attach_usdt(TARGET, "usdt_test", "step") as link:
            clean.extend(uprobe_ids(link))
            a.step()
            b.step()
            assert sorted(e.tgid for e in drain(rb)) == sorted([a.pid, b.pid])
    finally:
        for t in (a, b):
            t.close()
            obj.maps["tgids"].delete(t.pid)


def test_semaphore(obj, rb, target, clean) -> None:
    prog = obj.programs["usdt_generic"]
    assert target.sema() == 0
    first = prog.attach_usdt(TARGET, "usdt_test", "sema", cookie=1)
    clean.extend(uprobe_ids(first))
    assert first.probes[0].sema_offset != 0
    assert first.links[0].info().ref_ctr_offset == first.probes[0].sema_offset
    assert target.sema() == 1
    # a second attachment shares the kernel's uprobe at that site: the semaphore stays
    # set until the last one goes
    second = obj.programs["usdt_sleepable"].attach_usdt(TARGET, "usdt_test", "sema", cookie=2)
    clean.extend(uprobe_ids(second))
    assert target.sema() == 1
    first.close()
    assert wait_gone(uprobe_ids(first)) == []
    assert target.sema() == 1
    evs = [e for e in drain(rb) if e.prog == PROG_GENERIC]
    assert len(evs) == 2 and all(e.args == (0,) and e.cookie == 1 for e in evs)
    second.close()
    assert wait_gone(uprobe_ids(second)) == []
    assert target.sema() == 0
    # a process started while attached sees the semaphore set too
    with prog.attach_usdt(TARGET, "usdt_test", "sema") as link:
        clean.extend(uprobe_ids(link))
        late = Target()
        try:
            assert late.sema() == 1
        finally:
            late.close()


def test_spec_ids_shared_and_reused(obj, target, clean) -> None:
    prog = obj.programs["usdt_generic"]
    a = prog.attach_usdt(TARGET, "usdt_test", "consts")
    b = prog.attach_usdt(TARGET, "usdt_test", "regs")
    clean.extend(uprobe_ids(a) + uprobe_ids(b))
    assert not set(a.spec_ids) & set(b.spec_ids)
    freed = a.spec_ids[0]
    a.close()
    with prog.attach_usdt(TARGET, "usdt_test", "mem", cookie=77) as c:
        clean.extend(uprobe_ids(c))
        assert c.spec_ids == [freed]  # the id a closed link gave back
        raw = obj.maps["__bpf_usdt_specs"].lookup_bytes(freed.to_bytes(4, "little"))
        mem = U.find_usdt_probes(TARGET, "usdt_test", "mem")[0]
        assert raw == U.encode_usdt_spec(mem.parse_args(), 77)
        # the spec id travels in the uprobe's BPF cookie
        info = c.links[0].info()
        assert info.type == LinkType.PERF_EVENT and info.perf_event_type == "uprobe"
        assert (info.file_name, info.offset, info.cookie, info.ref_ctr_offset) == (
            TARGET, mem.file_offset, freed, 0)
    b.close()


def test_spec_ids_exhausted_rolls_back(clean) -> None:
    o = pyebpf.load(OBJ, max_entries={"__bpf_usdt_specs": 2})
    try:
        prog = o.programs["usdt_generic"]
        with prog.attach_usdt(TARGET, "usdt_test", "consts") as a:
            clean.extend(uprobe_ids(a))
            with pytest.raises(AttachError, match="all 2 USDT spec ids of this object are in use"):
                prog.attach_usdt(TARGET, "usdt_test", "twice")  # needs two
            # the id the failed attach took came back
            with prog.attach_usdt(TARGET, "usdt_test", "regs") as b:
                clean.extend(uprobe_ids(b))
                assert len(b.spec_ids) == 1
    finally:
        o.close()


def test_sib_operand(obj, clean) -> None:
    """usdt_test:sib's argument is arr[i] (-4@(%rdi,%rsi,4)). libbpf 1.1's usdt.bpf.h cannot
    read that; an object with the newer struct layout (and a reader for it) can."""
    with pytest.raises(AttachError, match="scale-index-base operand.*libbpf >= 1.7"):
        obj.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", "sib")
    with pyebpf.load(SIB_OBJ) as o:
        out = o.maps["out"]
        t = Target()
        try:
            out.update_bytes(struct.pack("<I", 2), struct.pack("<q", t.pid))
            with o.programs["usdt_sib"].attach_usdt(TARGET, "usdt_test", "sib") as link:
                clean.extend(uprobe_ids(link))
                for n in (-5, 100, 7, 1 << 40):
                    t.step(n)
                    got = struct.unpack("<q", out.lookup_bytes(struct.pack("<I", 0)))[0]
                    assert got == wrap(n, 32, True) + t.lines % 4
                assert struct.unpack("<q", out.lookup_bytes(struct.pack("<I", 1)))[0] == 4
        finally:
            t.close()


# --- auto-attach ------------------------------------------------------------------------------


def _spec_with_target(path: str = TARGET) -> ObjectSpec:
    spec = ObjectSpec.from_file(OBJ)
    p = spec.programs["usdt_auto"]
    p.section = f"usdt/{path}:usdt_test:step"
    p.attach_target = f"{path}:usdt_test:step"
    return spec


def test_auto_attach(clean) -> None:
    with pyebpf.load(_spec_with_target()) as o, pyebpf.RingBuffer(o.maps["events"]) as r:
        t = Target()
        try:
            allow(o, t.pid)
            link = links.auto_attach(o.programs["usdt_auto"])
            assert isinstance(link, LU.UsdtLink) and link.pid is None
            clean.extend(uprobe_ids(link))
            t.step()
            t.step()
            evs = drain(r)
            assert [(e.prog, e.args) for e in evs] == [(PROG_AUTO, (1,)), (PROG_AUTO, (2,))]
            link.close()
            # Program.attach(): the section's probe, or an explicit one
            with LU.auto_attach_usdt(o.programs["usdt_auto"], o.programs["usdt_auto"].spec.section,
                                     pid=t.pid, cookie=6) as link:
                clean.extend(uprobe_ids(link))
                assert link.pid == t.pid
                t.step()
                assert [(e.args, e.cookie) for e in drain(r)] == [((3,), 6)]
            with o.programs["usdt_generic"].attach(TARGET, "usdt_test", "step", cookie=7) as link:
                assert isinstance(link, LU.UsdtLink)
                clean.extend(uprobe_ids(link))
                t.step()
                assert [(e.prog, e.args, e.cookie) for e in drain(r)] == [(PROG_GENERIC, (4,), 7)]
            # a bare SEC("usdt") names no probe: skipped, as libbpf does
            with pytest.raises(AttachSkipped, match="names no"):
                links.auto_attach(o.programs["usdt_generic"])
            assert links.skip_reason(o.programs["usdt_generic"])
        finally:
            t.close()


def test_auto_attach_bad_section() -> None:
    spec = ObjectSpec.from_file(OBJ)
    with pyebpf.load(spec) as o:
        prog = o.programs["usdt_auto"]
        with pytest.raises(AttachError, match=r"expected SEC\(\"usdt/<path>:<provider>:<name>\"\)"):
            LU.auto_attach_usdt(prog, "usdt/onlypath", "onlypath")
        with pytest.raises(AttachError, match="cannot find binary 'pyebpf-usdt-target'"):
            links.auto_attach(prog)  # the unedited placeholder path


def test_shared_library_by_name(clean) -> None:
    """libstdc++'s own libstdcxx:throw/catch probes, the library found by name."""
    try:
        U.find_usdt_probes("/lib/x86_64-linux-gnu/libstdc++.so.6", "libstdcxx", "throw")
    except (U.UsdtError, OSError) as e:
        pytest.skip(f"this system's libstdc++ has no USDT probes: {e}")
    with pyebpf.load(OBJ) as o, pyebpf.RingBuffer(o.maps["events"]) as r:
        t = Target(THROW)
        try:
            allow(o, t.pid)
            # SEC("usdt/libstdc++.so.6:libstdcxx:throw"): every process
            lib = links.auto_attach(o.programs["usdt_lib"])
            clean.extend(uprobe_ids(lib))
            assert lib.path.startswith("/") and "libstdc++.so.6" in lib.path
            # explicitly, for one process: the library is then looked up in its mappings
            catch = o.programs["usdt_generic"].attach_usdt("libstdc++.so.6", "libstdcxx", "catch",
                                                           pid=t.pid, cookie=9)
            clean.extend(uprobe_ids(catch))
            assert t.step(41) == "caught 41"
            evs = drain(r)
            throw = [e for e in evs if e.prog == PROG_LIB]
            caught = [e for e in evs if e.prog == PROG_GENERIC]
            assert len(throw) == 1 and throw[0].arg_cnt == 2 and all(throw[0].args)
            assert len(caught) == 1 and caught[0].cookie == 9 and caught[0].arg_cnt == 2
            lib.close()
            catch.close()
        finally:
            t.close()


def test_system_python_line_probe(clean) -> None:
    """Debian's python3 has USDT probes guarded by semaphores: python:line runs only while
    its semaphore is set, so events prove the ref_ctr offset was right."""
    try:
        (probe,) = U.find_usdt_probes("/usr/bin/python3", "python", "line")
    except (U.UsdtError, OSError, ValueError) as e:
        pytest.skip(f"/usr/bin/python3 has no python:line USDT probe: {e}")
    assert probe.sema_addr
    code = ("import sys\ndef hello(x):\n    return x\nprint('ready', flush=True)\n"
            "for line in sys.stdin:\n    hello(line)\n    print('ok', flush=True)\n")
    with pyebpf.load(OBJ) as o, pyebpf.RingBuffer(o.maps["events"]) as r:
        p = subprocess.Popen(["/usr/bin/python3", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            allow(o, p.pid)
            # by name: found in the process's mappings (python3 -> python3.X)
            with o.programs["usdt_generic"].attach_usdt("python3", "python", "line",
                                                        pid=p.pid) as link:
                clean.extend(uprobe_ids(link))
                p.stdin.write("x\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "ok"
                evs = drain(r)

                def cstr(addr: int) -> bytes:
                    with open(f"/proc/{p.pid}/mem", "rb") as f:
                        f.seek(addr)
                        return f.read(64).split(b"\0")[0]

                # (filename, function, line number) of every line Python ran
                seen = [(cstr(e.args[0]), cstr(e.args[1]), e.args[2]) for e in evs
                        if e.arg_cnt == 3]
            assert (b"<string>", b"hello", 3) in seen and (b"<string>", b"<module>", 6) in seen
        finally:
            p.stdin.close()
            p.wait()
            p.stdout.close()


# --- uprobe_multi and the no-cookie (ip map) mode ---------------------------------------------


def test_uprobe_multi_is_the_default(clean) -> None:
    if not features.uprobe_multi_link():
        pytest.skip("the kernel has no uprobe_multi links (BPF_TRACE_UPROBE_MULTI probe failed)")
    with pyebpf.load(OBJ) as o, pyebpf.RingBuffer(o.maps["events"]) as r:
        prog = o.programs["usdt_generic"]
        assert prog.expected_attach_type == AttachType.TRACE_UPROBE_MULTI
        t = Target()
        try:
            allow(o, t.pid)
            link = prog.attach_usdt(TARGET, "usdt_test", "twice", cookie=5)
            assert link.multi and len(link.links) == 1 and len(link.probes) == 2
            info = link.info()
            clean.append(info.id)
            assert info.type == LinkType.UPROBE_MULTI
            assert (info.path, info.count, info.pid) == (TARGET, 2, 0)
            t.step(3)
            assert sorted(e.args for e in drain(r)) == [(1, 7), (2, 3)]
            link.close()
            with prog.attach_usdt(TARGET, "usdt_test", "sema", pid=t.pid) as sema:
                clean.append(sema.info().id)
                assert sema.info().pid == t.pid
                assert t.sema() == 1
            assert wait_gone(clean) == []
            assert t.sema() == 0
        finally:
            t.close()


@pytest.fixture
def no_cookies(monkeypatch):
    """Make pyebpf believe the kernel has no BPF cookies (as on kernels before 5.15)."""
    monkeypatch.setattr(features, "bpf_cookie", lambda: False)


def test_ip_map_mode(no_cookies, clean) -> None:
    with pyebpf.load(OBJ) as o, pyebpf.RingBuffer(o.maps["events"]) as r:
        assert LU._kconfig_cookie(o) is False
        prog = o.programs["usdt_generic"]
        ip_map = o.maps["__bpf_usdt_ip_to_spec_id"]
        t = Target()
        try:
            allow(o, t.pid)
            # a PIE target's addresses are only known per process
            with pytest.raises(AttachError, match="pass pid="):
                prog.attach_usdt(TARGET, "usdt_test", "twice")
            assert ip_map.count() == 0
            link = prog.attach_usdt(TARGET, "usdt_test", "twice", pid=t.pid, cookie=3)
            clean.extend(uprobe_ids(link))
            entries = {int.from_bytes(k, "little"): int.from_bytes(v, "little")
                       for k, v in ip_map.items(raw=True)}
            assert sorted(entries.values()) == sorted(link.spec_ids)
            t.step(8)
            evs = drain(r)
            assert sorted(e.args for e in evs) == [(1, 7), (2, 8)]
            # the BPF side found each spec by the probed address
            assert {e.ip for e in evs} == set(entries)
            assert {e.cookie for e in evs} == {3}
            # the same sites again in this object: the addresses collide
            with pytest.raises(AttachError, match="IP collision"):
                prog.attach_usdt(TARGET, "usdt_test", "twice", pid=t.pid)
            assert ip_map.count() == 2
            link.close()
            assert ip_map.count() == 0
        finally:
            t.close()
        # a position-dependent executable has fixed addresses: every process works
        t = Target(NOPIE)
        try:
            allow(o, t.pid)
            with prog.attach_usdt(NOPIE, "usdt_test", "regs") as link:
                clean.extend(uprobe_ids(link))
                (key,) = [int.from_bytes(k, "little") for k in ip_map.keys_bytes()]
                assert key == link.probes[0].abs_ip == link.probes[0].loc_addr
                t.step(-3)
                assert [(e.ip, e.args) for e in drain(r)] == [(key, expected("regs", -3, 1))]
            assert ip_map.count() == 0
        finally:
            t.close()


def test_kconfig_without_cookie_on_cookie_kernel(monkeypatch, clean) -> None:
    """The object was built to read spec ids by address while the kernel has cookies
    (what an extern bug would cause): attach fills the ip map and still sets cookies."""
    monkeypatch.setattr(features, "bpf_cookie", lambda: False)
    o = pyebpf.load(OBJ)
    monkeypatch.undo()
    try:
        if not features.bpf_cookie():
            pytest.skip("the kernel has no BPF cookies (bpf_get_attach_cookie probe failed)")
        with pyebpf.RingBuffer(o.maps["events"]) as r:
            t = Target()
            try:
                allow(o, t.pid)
                with o.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", "regs",
                                                            pid=t.pid) as link:
                    clean.extend(uprobe_ids(link))
                    assert o.maps["__bpf_usdt_ip_to_spec_id"].count() == 1
                    t.step(-2)
                    assert [e.args for e in drain(r)] == [expected("regs", -2, 1)]
            finally:
                t.close()
    finally:
        o.close()


# --- errors -----------------------------------------------------------------------------------


def test_unknown_probe_lists_what_exists(obj, clean) -> None:
    prog = obj.programs["usdt_generic"]
    with pytest.raises(AttachError) as ei:
        prog.attach_usdt(TARGET, "usdt_test", "nosuch")
    msg = str(ei.value)
    assert msg.startswith("usdt_generic: ") and "no USDT probe usdt_test:nosuch" in msg
    assert "usdt_test:consts" in msg and "usdt_test:twice" in msg
    with pytest.raises(AttachError, match="no USDT probe other:step"):
        prog.attach_usdt(TARGET, "other", "step")


def test_binary_errors(obj, clean) -> None:
    prog = obj.programs["usdt_generic"]
    with pytest.raises(AttachError, match=r"no USDT notes: the binary has no \.note\.stapsdt"):
        prog.attach_usdt("true", "p", "n")  # found on PATH, has no probes
    with pytest.raises(AttachError, match="does not exist"):
        prog.attach_usdt("/nonexistent/pyebpf/bin", "p", "n")
    with pytest.raises(AttachError, match="cannot find library 'libpyebpf-nope.so'"):
        prog.attach_usdt("libpyebpf-nope.so", "p", "n")
    with pytest.raises(AttachError, match="ELF type 1 is not supported"):
        prog.attach_usdt(OBJ, "p", "n")
    with pytest.raises(OptionError):
        prog.attach_usdt(TARGET, "", "step")
    with pytest.raises(OptionError, match="64-bit"):
        prog.attach_usdt(TARGET, "usdt_test", "step", cookie=1 << 64)


def test_program_without_usdt_maps(clean) -> None:
    with pyebpf.load(NOMAPS) as o:
        with pytest.raises(AttachError, match=r"no __bpf_usdt_specs and no "
                           r"__bpf_usdt_ip_to_spec_id map: .*include <bpf/usdt.bpf.h>"):
            o.programs["usdt_nomaps"].attach_usdt(TARGET, "usdt_test", "step")


def test_wrong_program_type(clean) -> None:
    with pyebpf.load(COUNTERS) as o:
        prog = o.programs["count_openat"]
        with pytest.raises(AttachError, match="USDT needs a program of type KPROBE .* TRACEPOINT"):
            LU.attach_usdt(prog, TARGET, "usdt_test", "step")


def test_program_without_object(obj, clean) -> None:
    prog = pyebpf.Program.from_id(obj.programs["usdt_generic"].id)
    try:
        with pytest.raises(AttachError, match="needs the Object that loaded the program"):
            LU.attach_usdt(prog, TARGET, "usdt_test", "step")
    finally:
        prog.close()


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh_object", "used_object"])
def test_no_permission(fresh: bool, clean) -> None:
    with pyebpf.load(OBJ) as o:
        prog = o.programs["usdt_generic"]
        if not fresh:  # the per-object state exists already; the map write is refused
            prog.attach_usdt(TARGET, "usdt_test", "step").close()
        status, detail = run_as_nobody(lambda: LU.attach_usdt(prog, TARGET, "usdt_test", "step"))
        assert status == "error", detail
        name, msg, err = detail
        assert name == "AttachError" and "no permission" in msg, msg
        assert err in (errno.EPERM, errno.EACCES)


def test_pin_refused(obj, target, clean) -> None:
    with obj.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", "step") as link:
        clean.extend(uprobe_ids(link))
        with pytest.raises(AttachError, match="cannot be pinned"):
            link.pin("/sys/fs/bpf/never")
        with pytest.raises(AttachError, match="has no single bpf link"):
            link.info()


# --- leaks ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("obj")  # caches warmed
def test_object_leaves_nothing_behind() -> None:
    spec = _spec_with_target()
    names = kobjects.object_names(spec)
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    o = pyebpf.load(spec)
    t = Target()
    try:
        allow(o, t.pid)
        held = [o.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", n)
                for n in ("twice", "sema", "mem")]
        held.append(links.auto_attach(o.programs["usdt_auto"]))
        assert t.sema() == 1
        for link in held:
            ids = [sub.id for sub in link.links]
            link.close()
            assert wait_gone(ids) == []
        assert t.sema() == 0
    finally:
        t.close()
        o.close()
    del o
    gc.collect()
    assert kobjects.fd_state() == fds
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


