"""Loads that fail: the error is the clear one, and nothing is left behind.

After every failure: no new FD objects, no new process fds, and no new kernel
programs or maps carrying the object's names (other sessions share the machine,
so only ids that appeared during the test and bear our names count).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kobjects as K
import pytest

import pyebpf
from pyebpf.errors import (
    BTFError,
    ObjectError,
    OptionError,
    PyebpfError,
    SectionError,
    SyscallError,
    VerifierError,
)
from pyebpf.sys import bpf as B
from pyebpf.uapi import MapType

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")


@pytest.fixture
def pin_root() -> Iterator[str]:
    d = Path("/sys/fs/bpf") / f"pyebpf_fail_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)


class NoLeaks:
    """Snapshot before a failing load; ``check()`` asserts nothing of ours survived it."""

    def __init__(self, path: Path | str) -> None:
        # process-wide caches (the mmap'd kernel BTF, feature probes) are not leaks
        pyebpf.kernel_btf()
        from pyebpf.features import btf_features

        btf_features()
        self.names = K.object_names(pyebpf.ObjectSpec.from_file(path))
        self.fds = K.fd_state()
        self.before = K.snapshot()

    def check(self) -> None:
        assert K.fd_state() == self.fds
        left = K.wait_no_new_named(self.before, self.names)
        assert left == {"prog": [], "map": [], "link": []}


def test_verifier_rejection_poisoned_core_explained() -> None:
    path = FIXTURES / "core_fail.bpf.o"
    guard = NoLeaks(path)
    with pytest.raises(VerifierError) as exc:
        pyebpf.load(path)
    e = exc.value
    assert e.errno == errno.EINVAL and e.command == "BPF_PROG_LOAD"
    assert e.program == "core_unresolvable"
    # the complete log: it starts at the program's first instruction and ends with the summary
    assert e.log.rstrip().splitlines()[-1].startswith("processed ")
    assert "0: (85) call bpf_get_current_task" in e.log
    assert "invalid func unknown#195896080" in e.log
    assert e.log_true_size is None or e.log_true_size >= len(e.log)
    assert e.insn_index == 1
    assert e.source_line and "core_fail.bpf.c:20" in e.source_line
    note = "\n".join(e.notes)
    assert "CO-RE relocation #0" in note
    assert "task_struct___gone" in note and "state" in note
    assert "not found" in note
    text = str(e)
    assert "core_unresolvable" in text and "CO-RE" in text
    guard.check()


def test_unresolvable_core_is_explained_in_spec() -> None:
    # the same relocation, seen before load: CoreResult says why nothing matched
    spec = pyebpf.ObjectSpec.from_file(FIXTURES / "core_fail.bpf.o")
    spec.relocate()
    res = [c.result for c in spec.programs["core_unresolvable"].core_results]
    assert len(res) == 1 and res[0].poison
    assert any("field 'state' not found" in line for line in res[0].explain)


def test_trampoline_program_refused_clearly() -> None:
    path = FIXTURES / "sections_trampoline.bpf.o"
    guard = NoLeaks(path)
    with pytest.raises(SyscallError) as exc:
        pyebpf.load(path)
    e = exc.value
    assert e.errno == errno.EPERM
    assert "trampoline" in str(e)
    guard.check()


def test_unresolved_typed_ksym_rejected_and_rolled_back() -> None:
    path = FIXTURES / "externs_typed_ksym.bpf.o"
    guard = NoLeaks(path)
    with pytest.raises(VerifierError) as exc:
        pyebpf.load(path)
    assert exc.value.errno == errno.ENOENT
    assert "runqueues" in exc.value.log
    guard.check()


def test_unknown_section() -> None:
    from unitobj import unit_object

    path = unit_object("object_unknown_section")
    guard = NoLeaks(path)
    with pytest.raises(SectionError):
        pyebpf.load(path)
    guard.check()


def test_bad_pin_root_names_the_fix(tmp_path: Path) -> None:
    path = FIXTURES / "maps_btf.bpf.o"
    guard = NoLeaks(path)
    with pytest.raises(OptionError) as exc:
        pyebpf.load(path, pin_root=str(tmp_path))
    assert "mount -t bpf bpf /sys/fs/bpf" in str(exc.value)
    with pytest.raises(OptionError, match="does not exist"):
        pyebpf.load(path, pin_root=str(tmp_path / "missing"))
    guard.check()


def test_bad_btf_path_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    # a custom kernel BTF that cannot be used fails before anything is created
    path = FIXTURES / "opensnoop.bpf.o"
    gc.collect()  # earlier tests' garbage must not close fds between snapshot and check
    guard = NoLeaks(path)
    missing = tmp_path / "no-such-vmlinux"
    with pytest.raises(BTFError) as exc:
        pyebpf.load(path, btf_path=str(missing))
    assert isinstance(exc.value, PyebpfError)
    msg = str(exc.value)
    assert str(missing) in msg and "No such file or directory" in msg
    assert "/sys/kernel/btf/vmlinux" in msg  # names the running kernel's BTF as the fix
    garbage = tmp_path / f"garbage-{uuid.uuid4().hex[:8]}"
    garbage.write_bytes(b"not BTF at all " * 8)
    with pytest.raises(BTFError, match="bad BTF magic") as exc:
        pyebpf.load(path, btf_path=str(garbage))
    assert str(garbage) in str(exc.value)
    # the traceback pytest keeps holds the frame that mapped the garbage file (a mapping
    # holds an fd); an ``except`` block would drop it on exit, so drop it here too
    del exc
    gc.collect()
    guard.check()


def test_btf_path_without_kernel_types_rolls_back(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # valid BTF lacking the kernel's types: the maps get created, then CO-RE leaves the
    # programs poisoned, the verifier refuses them, and everything is rolled back
    from pyebpf.btf import kernel as kmod
    from pyebpf.btf.write import marshal

    monkeypatch.setattr(kmod, "_shared", dict(kmod._shared))  # forget the custom index after
    small = pyebpf.ObjectSpec.from_file(FIXTURES / "minimal.bpf.o").btf
    assert small is not None
    btf = tmp_path / "tiny-vmlinux"
    btf.write_bytes(marshal(small))
    pyebpf.kernel_btf(str(btf))  # indexed once per process, like vmlinux: not a leak
    path = FIXTURES / "opensnoop.bpf.o"
    guard = NoLeaks(path)
    with pytest.raises(VerifierError) as exc:
        pyebpf.load(path, btf_path=str(btf))
    e = exc.value
    assert e.program == "tracepoint__syscalls__sys_enter_openat"
    assert "failed to resolve CO-RE relocation" in str(e)
    assert "trace_event_raw_sys_enter" in str(e)
    guard.check()


def test_pinned_map_reused_then_incompatible_refused(pin_root: str) -> None:
    path = FIXTURES / "maps_btf.bpf.o"
    pin = os.path.join(pin_root, "pyebpf_fixture_pinned")
    with pyebpf.load(path, pin_root=pin_root) as first:
        first_id = first.maps["pyebpf_fixture_pinned"].id
        first.maps["pyebpf_fixture_pinned"][0] = 1234
    assert os.path.exists(pin)  # pins outlive the object, as in libbpf
    with pyebpf.load(path, pin_root=pin_root) as second:
        m = second.maps["pyebpf_fixture_pinned"]
        assert m.id == first_id and m[0] == 1234
        assert m.id in B.prog_map_ids(second.programs["use_maps"].fd)
    os.unlink(pin)
    # a stale pin with another value size: refused with the mismatch spelled out
    with B.map_create(MapType.ARRAY, 4, 16, 1, name="pyebpf_stale") as fd:
        B.obj_pin(fd, pin)
    guard = NoLeaks(path)
    with pytest.raises(ObjectError) as exc:
        pyebpf.load(path, pin_root=pin_root)
    msg = str(exc.value)
    assert "parameter mismatch" in msg and "value_size 16 (pinned) != 8 (object)" in msg
    assert f"rm {pin}" in msg
    guard.check()
    assert os.path.exists(pin)  # not ours to remove


def test_failure_after_pinning_removes_new_pins(pin_root: str) -> None:
    # a load that pins a map and then fails must not leave the new pin behind
    spec = pyebpf.ObjectSpec.from_file(FIXTURES / "maps_btf.bpf.o")
    spec.programs["use_maps"].insns[0:8] = bytes([0x85, 0, 0, 0, 0xFF, 0xFF, 0, 0])  # bad call
    spec.programs["use_maps"].orig_insns = bytes(spec.programs["use_maps"].insns)
    guard = NoLeaks(FIXTURES / "maps_btf.bpf.o")
    with pytest.raises(VerifierError):
        pyebpf.load(spec, pin_root=pin_root)
    assert os.listdir(pin_root) == []
    guard.check()


def test_map_create_failure_rolls_back() -> None:
    path = FIXTURES / "opensnoop.bpf.o"
    spec = pyebpf.ObjectSpec.from_file(path)
    spec.maps["events"].max_entries = 3  # ringbuf: not a power-of-2 page multiple -> rounded
    spec.maps["start"].key_size = 0  # a hash map with a 0-byte key: EINVAL
    guard = NoLeaks(path)
    with pytest.raises(SyscallError) as exc:
        pyebpf.load(spec)
    assert exc.value.command == "BPF_MAP_CREATE"
    guard.check()


def test_missing_kfunc_and_map_poison_explained() -> None:
    # the words libbpf's fixup_verifier_log gives, from a log with poisoned calls
    from pyebpf.loader import explain_verifier_error

    spec = pyebpf.ObjectSpec.from_file(FIXTURES / "externs.bpf.o")
    spec.relocate()  # line_info records of the final program
    prog = spec.programs["kfunc_acquire_release"]
    log = ("0: R1=ctx() R10=fp0\n"
           "7: (85) call unknown#2002000007\n"
           "invalid func unknown#2002000007\n"
           "8: (85) call unknown#2001000000\n"
           "processed 3 insns (limit 1000000)\n")
    e = VerifierError(errno.EINVAL, "BPF_PROG_LOAD", log=log, insn_index=7)
    explain_verifier_error(e, prog, spec)
    text = "\n".join(e.notes)
    assert "kfunc 'bpf_pyebpf_no_such_kfunc' is referenced but wasn't resolved" in text
    assert f"map {next(iter(spec.maps))!r} is referenced but wasn't created" in text
    assert e.program == "kfunc_acquire_release"
    assert e.source_line is not None  # nearest line_info record at or before insn 7


def test_leak_check_reports_an_object_this_process_holds() -> None:
    # the guard waits minutes only for objects no process holds (the kernel's deferred
    # frees); one we hold open is a leak, reported after the short timeout
    before = K.snapshot()
    name = f"pyebpf_lk{os.getpid() % 100000}"
    with B.map_create(MapType.ARRAY, 4, 4, 1, name=name) as fd:
        t = time.monotonic()
        left = K.wait_no_new_named(before, [name], timeout=0.2)
        assert left["map"] == [(B.map_info(fd).id, name)]
        assert time.monotonic() - t < 10
    assert K.wait_no_new_named(before, [name]) == {"prog": [], "map": [], "link": []}
