"""Compile small BPF C snippets for tests (clang-19), skipping when clang is missing.

Deprecated: tests must not need a compiler.  Put the snippet in
fixtures/src/unit/<name>.bpf.c, run fixtures/build.sh, commit fixtures/unit/<name>.bpf.o
and load it with ``unitobj.unit_object(name)``.  Only tests/test_struct_ops_spec.py
still uses this module.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest


def compile_bpf(tmp_path: Path, source: str, name: str = "t", *, debug: bool = True) -> Path:
    """Compile ``source`` to ``tmp_path/name.bpf.o`` with ``clang-19 -O2 -target bpf``."""
    src = tmp_path / f"{name}.bpf.c"
    out = tmp_path / f"{name}.bpf.o"
    src.write_text(textwrap.dedent(source))
    cmd = ["clang-19", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out),
           "-I", f"/usr/include/{os.uname().machine}-linux-gnu"]
    if debug:
        cmd.insert(1, "-g")
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("clang-19 not installed")
    except subprocess.CalledProcessError as e:
        raise AssertionError(e.stderr) from None
    return out


def kernelref_module():
    """tests/kernelref.py, however pytest put tests/ on the path."""
    try:
        from tests import kernelref
    except ImportError:
        import kernelref  # type: ignore[no-redef]
    return kernelref
