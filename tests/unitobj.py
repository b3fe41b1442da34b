"""Committed single-purpose BPF objects (fixtures/unit), so tests need no compiler."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT_SRC = ROOT / "fixtures" / "src" / "unit"
UNIT_DIR = ROOT / "fixtures" / "unit"


def unit_object(name: str) -> Path:
    """``fixtures/unit/<name>.bpf.o``, built from ``fixtures/src/unit/<name>.bpf.c``.

    A missing object is a broken checkout, not a missing feature: fail, never skip.
    """
    path = UNIT_DIR / f"{name}.bpf.o"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run fixtures/build.sh and commit the object")
    return path


def unit_source(name: str) -> str:
    """The C source of ``unit_object(name)``."""
    return (UNIT_SRC / f"{name}.bpf.c").read_text()


def kernelref_module():
    """tests/kernelref.py, however pytest put tests/ on the path."""
    try:
        from tests import kernelref
    except ImportError:
        import kernelref  # type: ignore[no-redef]
    return kernelref
