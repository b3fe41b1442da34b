"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def test_minimal_prints_from_its_own_pid() -> None:
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "minimal.py"), "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Attached" in out
    # bpf_printk goes to the trace buffer; read it without consuming it (never trace_pipe)
    trace = Path("/sys/kernel/tracing/trace").read_text(errors="replace")
    assert f"BPF triggered from PID {proc.pid}." in trace


# -- the distributions and their console scripts ------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An sdist and a wheel built from the checkout with ``python -m build`` (the wheel
    from the sdist, so the sdist is shown to be complete)."""
    out = tmp_path_factory.mktemp("dist")
    # run from elsewhere: the checkout's own (ignored) build/ directory would shadow it
    have = subprocess.run([sys.executable, "-c", "import build.__main__"], cwd=out,
                          capture_output=True)
    if have.returncode:
        pytest.skip("python -m build is not installed (pip install build; test.sh does)")
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                       cwd=out, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = out.glob("pyebpf-*.tar.gz")
    (wheel,) = out.glob("pyebpf-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_is_the_library_without_tests(dists: dict[str, Path]) -> None:
    import tarfile

    with tarfile.open(dists["sdist"]) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert "LICENSE" in names and "pyproject.toml" in names and "README.md" in names
    assert "pyebpf/tools/opensnoop.bpf.o" in names and "pyebpf/py.typed" in names
    # tests need the fixtures and helpers of a checkout: none of them ships
    assert not [n for n in names if n.split("/")[0] in ("tests", "fixtures", "benchmarks")]


def test_wheel_contents_and_metadata(dists: dict[str, Path]) -> None:
    import zipfile

    with zipfile.ZipFile(dists["wheel"]) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "pyebpf/tools/opensnoop.bpf.o" in names and "pyebpf/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "fixtures/"))]
    assert "License-Expression: MIT" in meta
    assert "opensnoop = pyebpf.tools.opensnoop:main" in entry
    assert "pyebpf = pyebpf.__main__:main" in entry


def test_console_scripts_of_the_installed_wheel(dists: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target),
                        str(dists["wheel"])], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the installed copy, not the checkout: run from elsewhere, with only it on the path
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import pyebpf; print(pyebpf.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(target))
    for script, words in (("opensnoop", "usage: opensnoop"), ("pyebpf", "usage: pyebpf")):
        r = subprocess.run([str(target / "bin" / script), "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert words in r.stdout
    if os.geteuid() == 0:
        # the shipped object loads from the installed package
        r = subprocess.run([str(target / "bin" / "opensnoop"), "-d", "0.5", "-p", str(os.getpid())],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("PID")
