"""A weak kfunc the kernel lacks, called without a guard.

By default pyebpf poisons the call as libbpf >= 1.2 does (an invalid helper call,
``call unknown#2002000000+idx``); with ``poison_unresolved_kfuncs = False`` it keeps
libbpf 1.1's ``call kfunc#0``, whose refusal names no instruction. Either way the
loader names the kfunc, the instruction and its source line, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_loader_failures import NoLeaks

import pyebpf
from pyebpf import insn as I
from pyebpf.errors import VerifierError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

OBJ = Path(__file__).resolve().parent.parent / "fixtures" / "unit" / "externs_weak_kfunc_unguarded.bpf.o"


def _check_explained(e: VerifierError) -> None:
    assert e.program == "call_missing"
    assert e.insn_index == 0
    assert e.source_line and "bpf_pyebpf_no_such_kfunc();" in e.source_line
    assert len(e.notes) == 1
    note = e.notes[0]
    assert note.startswith("instruction 0: <invalid kfunc call>")
    assert "kfunc 'bpf_pyebpf_no_such_kfunc' is referenced but wasn't resolved" in note
    assert "is a weak extern" in note
    assert "bpf_ksym_exists(bpf_pyebpf_no_such_kfunc)" in note
    assert "externs_weak_kfunc_unguarded.bpf.c:13" in note  # the source line
    assert "bpf_ksym_exists" in str(e)


def test_unguarded_missing_weak_kfunc_is_explained() -> None:
    guard = NoLeaks(OBJ)
    spec = pyebpf.ObjectSpec.from_file(OBJ)
    with pytest.raises(VerifierError) as ei:
        pyebpf.load(spec)
    e = ei.value
    # the only extern, so index 0: libbpf >= 1.2's poison value
    assert I.get(spec.programs["call_missing"].insns, 0) == I.Insn(0x85, 0, 0, 0, I.POISON_CALL_KFUNC_BASE)
    assert "invalid func unknown#2002000000" in e.log
    _check_explained(e)
    guard.check()


def test_unguarded_missing_weak_kfunc_libbpf_1_1_form_is_explained() -> None:
    guard = NoLeaks(OBJ)
    spec = pyebpf.ObjectSpec.from_file(OBJ)
    spec.poison_unresolved_kfuncs = False
    with pytest.raises(VerifierError) as ei:
        pyebpf.load(spec)
    e = ei.value
    call = I.get(spec.programs["call_missing"].insns, 0)
    assert (call.src, call.imm) == (I.BPF_PSEUDO_KFUNC_CALL, 0)
    assert "invalid kernel function call not eliminated" in e.log
    _check_explained(e)
    guard.check()
