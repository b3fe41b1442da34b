"""``python -m pyebpf inspect OBJ``, run as a user runs it: a subprocess, output read back.

Only reads files (the object and the kernel's BTF), so it needs no root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import pyebpf
from pyebpf.btf.types import Kind

ROOT = Path(__file__).resolve().parent.parent
OPENSNOOP = ROOT / "fixtures" / "opensnoop.bpf.o"
VMLINUX = "/sys/kernel/btf/vmlinux"

needs_vmlinux = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="needs kernel BTF")

PROGRAMS = {
    "tracepoint__syscalls__sys_enter_openat": "tracepoint/syscalls/sys_enter_openat",
    "tracepoint__syscalls__sys_exit_openat": "tracepoint/syscalls/sys_exit_openat",
}
# "  prog insn N: <local spec> => <target spec>: old -> new"
RELO = re.compile(r"^  (\S+) insn (\d+): (.+) => (.+): (\d+) -> (\d+)$")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # this checkout's pyebpf, whatever the installed one is
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pyebpf", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def section(out: str, title: str) -> list[str]:
    """The lines of one block of the report (from its title to the next blank line)."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    block = []
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        block.append(ln)
    return block


def rows(out: str, title: str) -> dict[str, list[str]]:
    """A table block as {first column: all columns}, without its header."""
    return {r.split()[0]: r.split() for r in section(out, title)[1:]}


@pytest.fixture(scope="module")
def report() -> str:
    if not os.path.exists(VMLINUX):
        pytest.skip("needs kernel BTF")
    r = run_cli("inspect", str(OPENSNOOP))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


def test_header_names_the_object(report: str) -> None:
    first = report.splitlines()[0]
    assert str(OPENSNOOP) in first and "'opensnoop'" in first and "Dual BSD/GPL" in first


def test_programs_with_sections_and_types(report: str) -> None:
    progs = rows(report, "programs:")
    assert set(progs) == set(PROGRAMS)
    spec = pyebpf.ObjectSpec.from_file(OPENSNOOP)
    spec.relocate()
    for name, sec in PROGRAMS.items():
        _, section_, type_, _eat, target, insns, tag = progs[name]
        assert section_ == sec and type_ == "TRACEPOINT"
        assert target == sec.removeprefix("tracepoint/")
        assert int(insns) == spec.programs[name].insn_count
        assert tag == spec.programs[name].tag  # the relocated program's tag


def test_maps(report: str) -> None:
    maps = rows(report, "maps:")
    # NAME TYPE KEY VALUE MAX FLAGS PIN SECTION
    assert maps["events"][1:5] == ["RINGBUF", "0", "0", "262144"]
    assert maps["start"][1] == "HASH" and maps["start"][2] == "4"
    assert maps["opensnoo.rodata"][1] == "ARRAY" and maps["opensnoo.rodata"][-1] == ".rodata"


def test_rodata_globals(report: str) -> None:
    glob = rows(report, "globals:")
    for name in ("targ_pid", "targ_tgid", "targ_uid", "targ_failed"):
        # NAME MAP OFFSET SIZE INITIAL
        assert glob[name][1] == "opensnoo.rodata", glob[name]
        assert glob[name][4] == "0"
    assert glob["targ_tgid"][2:4] == ["4", "4"]
    assert glob["targ_failed"][3] == "1"


def test_core_relocations_and_what_they_resolved_to(report: str) -> None:
    block = section(report, "CO-RE relocations")
    title = next(ln for ln in report.splitlines() if ln.startswith("CO-RE relocations"))
    assert f"against {VMLINUX}" in title
    relos = [RELO.match(ln) for ln in block]
    assert relos and all(relos), block
    spec = pyebpf.ObjectSpec.from_file(OPENSNOOP)
    assert spec.btf_ext is not None
    assert len(relos) == sum(len(v) for v in spec.btf_ext.core_relos.values())  # all 8
    assert {m.group(1) for m in relos if m} == set(PROGRAMS)
    # every one resolved against a kernel type, none poisoned
    assert "poison" not in "\n".join(block) and "no matching target" not in "\n".join(block)
    # the task_struct.tgid read got the running kernel's offset of the field
    kb = pyebpf.kernel_btf()
    (tid,) = kb.find("task_struct", Kind.STRUCT)
    tgid = next(m for m in kb.type(tid).members if m.name == "tgid")
    hits = [m for m in relos if m and "struct task_struct.tgid" in m.group(4)]
    assert hits
    for m in hits:
        assert f"[{tid}] struct task_struct.tgid" in m.group(4)
        assert int(m.group(6)) == tgid.bit_offset // 8
    args1 = next(m for m in relos if m and "trace_event_raw_sys_enter.args[1]" in m.group(3))
    assert args1.group(1) == "tracepoint__syscalls__sys_enter_openat"


@needs_vmlinux
def test_verbose_explains_candidates() -> None:
    r = run_cli("inspect", "-v", str(OPENSNOOP))
    assert r.returncode == 0, r.stderr
    block = section(r.stdout, "CO-RE relocations")
    relo_lines = [i for i, ln in enumerate(block) if RELO.match(ln)]
    assert len(relo_lines) == 8
    # under each relocation: its local spec, then the candidates it was matched against
    for i in relo_lines:
        assert block[i + 1].strip().startswith("local: ")
        assert block[i + 2].strip().startswith("candidate [")
    assert any("candidate" in ln and "struct task_struct" in ln for ln in block)


def test_no_kernel_skips_relocation() -> None:
    r = run_cli("inspect", "--no-kernel", str(OPENSNOOP))
    assert r.returncode == 0, r.stderr
    assert "(not applied: --no-kernel)" in r.stdout and "8 records" in r.stdout
    assert "(not relocated)" in r.stdout


@pytest.mark.parametrize("kind", ["not_elf", "truncated", "missing", "directory"])
def test_bad_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"bad-{uuid.uuid4().hex[:8]}.bpf.o"
    if kind == "not_elf":
        bad.write_text("this is not an object file\n")
        want = "not an ELF file"
    elif kind == "truncated":
        bad.write_bytes(OPENSNOOP.read_bytes()[:200])  # a valid ELF header, nothing after
        want = "outside the file"
    elif kind == "missing":
        want = "No such file or directory"
    else:
        bad.mkdir()
        want = "Is a directory"
    r = run_cli("inspect", str(bad))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("pyebpf: error: ") and str(bad) in r.stderr, r.stderr
    assert want in r.stderr
    assert r.stdout == ""


def test_bad_btf_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-vmlinux"
    r = run_cli("inspect", "--btf", str(missing), str(OPENSNOOP))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("pyebpf: error: ") and str(missing) in r.stderr


def test_usage_error_exit_code() -> None:
    r = run_cli("inspect")  # no object given: argparse's usage error
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
