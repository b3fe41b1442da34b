"""A weak kfunc the kernel lacks, called without a guard: the verifier's refusal names no
instruction, so the loader finds the call, names the kfunc and its source line, and
leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_loader_failures import NoLeaks

import pyebpf
from pyebpf.errors import VerifierError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

OBJ = Path(__file__).resolve().parent.parent / "fixtures" / "unit" / "externs_weak_kfunc_unguarded.bpf.o"


def test_unguarded_missing_weak_kfunc_is_explained() -> None:
    guard = NoLeaks(OBJ)
    with pytest.raises(VerifierError) as ei:
        pyebpf.load(OBJ)
    e = ei.value
    assert "invalid kernel function call not eliminated" in e.log
    assert e.program == "call_missing"
    assert e.insn_index == 0
    assert e.source_line and "bpf_pyebpf_no_such_kfunc();" in e.source_line
    assert len(e.notes) == 1
    assert "kfunc 'bpf_pyebpf_no_such_kfunc' is a weak extern" in e.notes[0]
    assert "bpf_ksym_exists(bpf_pyebpf_no_such_kfunc)" in e.notes[0]
    assert "bpf_ksym_exists" in str(e)
    guard.check()
