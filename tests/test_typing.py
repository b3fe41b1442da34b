"""pyebpf is typed for real: ``mypy --strict pyebpf`` is clean, and a typed use of the
public API (tests/typing/usage.py) checks with precise types, not ``Any``.

Needs no root and no kernel. Skips only when mypy is not installed (it is in the
``test`` extras).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "tests" / "typing" / "usage.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (pip install mypy; in the test extras)")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a private cache: no .mypy_cache left in the checkout, and no race with another run
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(cache: Path, *targets: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-color-output", "--no-error-summary",
         "--cache-dir", str(cache), *map(str, targets)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_pyebpf_is_clean(cache_dir: Path) -> None:
    r = _mypy(cache_dir, "pyebpf")
    assert r.returncode == 0, f"mypy --strict pyebpf:\n{r.stdout}{r.stderr}"


def test_public_api_is_precisely_typed(cache_dir: Path) -> None:
    r = _mypy(cache_dir, USAGE)
    # report only the snippet's own errors: pyebpf's are the test above's
    own = [ln for ln in r.stdout.splitlines() if ln.startswith("tests/typing/")]
    assert not own, "tests/typing/usage.py:\n" + "\n".join(own)
    assert r.returncode == 0 or not own, r.stderr


def test_misuse_in_the_snippet_is_caught(cache_dir: Path, tmp_path: Path) -> None:
    # the check has teeth: a wrong return type and a wrong option are both reported
    bad = tmp_path / "bad_usage.py"
    bad.write_text(
        "import pyebpf\n"
        "from typing import assert_type\n"
        "from pyebpf.links.tc import TcLink\n"
        "def f(p: pyebpf.Program) -> None:\n"
        "    assert_type(p.attach_xdp('lo'), TcLink)\n"
        "    p.attach_xdp('lo', no_such_option=1)\n"
        "    assert_type(pyebpf.load('x.o'), int)\n")
    r = _mypy(cache_dir, bad)
    out = r.stdout
    assert r.returncode != 0
    assert 'Expression is of type "XdpLink", not "TcLink"' in out, out
    assert 'Unexpected keyword argument "no_such_option"' in out, out
    assert 'Expression is of type "Object", not "int"' in out, out
