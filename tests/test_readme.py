"""Every code block of README.md runs.

Each fenced block is extracted. ``python`` blocks run as a script in a subprocess (this
interpreter, the checkout first on ``PYTHONPATH``); ``sh`` blocks run with bash, with
``python`` on the ``PATH`` meaning this interpreter. Both run as root against the real
kernel, from the checkout's top directory, and each in a fresh network namespace of its
own (``unshare --net``, loopback up), so that the network examples can attach to ``lo``
without touching the machine's interfaces; the namespace goes with the block's process.

A block that must not run (it installs packages, runs for long, or changes a real
interface) starts with the line ``# not run by tests/test_readme.py: <why>``; such
blocks are few and short, and the unit tests below check both.

After each block the kernel objects it made (programs, maps and links named after the
fixtures it loads) must be gone, as must its pins and cgroups (named ``pyebpf-readme-*``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "# not run by tests/test_readme.py:"
RUNNABLE = {"python", "sh"}


class Block(NamedTuple):
    line: int  # line of the opening fence, 1-based
    lang: str
    text: str

    @property
    def skipped(self) -> bool:
        return self.text.startswith(MARKER)

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of the README, in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m and m.group(1):
            start, lang, body = i + 1, m.group(1), []
            i += 1
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"README.md:{start}: unclosed code block")
            out.append(Block(start, lang, "\n".join(body) + "\n"))
        i += 1
    return out


ALL = blocks()


# -- pure checks -----------------------------------------------------------------------------


def test_parser_finds_blocks_and_languages() -> None:
    text = "x\n```python\nprint(1)\n```\n\n```sh\n# not run by tests/test_readme.py: no\nls\n```\n"
    got = blocks(text)
    assert [(b.line, b.lang, b.skipped) for b in got] == [(2, "python", False), (6, "sh", True)]
    assert got[0].text == "print(1)\n"


def test_every_block_is_runnable_or_marked() -> None:
    assert len(ALL) >= 10
    for b in ALL:
        assert b.lang in RUNNABLE, f"README.md:{b.line}: block language {b.lang!r} is not run"
        if b.skipped:
            reason = b.text.splitlines()[0][len(MARKER):].strip()
            assert reason, f"README.md:{b.line}: the marker must say why the block is not run"
            # a block kept out of the test stays a short list of commands
            assert len(b.text.splitlines()) <= 7, f"README.md:{b.line}: skipped block too long"
        else:
            assert MARKER not in b.text, f"README.md:{b.line}: the marker must be the first line"
    skipped = [b for b in ALL if b.skipped]
    assert len(skipped) <= 3, [b.id for b in skipped]


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python"], ids=lambda b: b.id)
def test_python_blocks_compile(block: Block) -> None:
    compile(block.text, f"README.md:{block.line}", "exec")


def test_fixtures_named_in_readme_exist() -> None:
    text = README.read_text()
    paths = set(re.findall(r"(?:fixtures|examples|scripts|benchmarks)/[\w./-]+\.(?:o|py|sh|c)\b", text))
    paths |= set(re.findall(r"fixtures/targets/\w+", text))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing


def test_readme_says_what_is_there() -> None:
    text = README.read_text()
    assert "(soon)" not in text
    # the attach table names every Program.attach_* method
    import pyebpf.program

    methods = [m for m in dir(pyebpf.program.Program) if m.startswith("attach_")]
    assert len(methods) >= 17
    for m in methods + ["attach_struct_ops", "xdp_query", "tcx_query", "tc_query",
                        "cgroup_query", "netns_prog_ids", "enable_stats", "codec_for",
                        "poll_async", '"pyebpf.sys"']:
        assert m in text, m


# -- running them -----------------------------------------------------------------------------


def _python_dir(tmp: Path) -> Path:
    """A directory whose ``python`` is this interpreter."""
    d = tmp / "bin"
    d.mkdir()
    (d / "python").symlink_to(sys.executable)
    return d


def _leftovers() -> list[str]:
    return sorted(glob.glob("/sys/fs/bpf/pyebpf-readme-*") + [
        p for root in _cgroup2_roots() for p in glob.glob(os.path.join(root, "pyebpf-readme-*"))])


def _cgroup2_roots() -> list[str]:
    from pyebpf.links.cgroup import cgroup2_mounts

    return cgroup2_mounts()


def _object_names(block: Block) -> list[str]:
    from kobjects import object_names

    import pyebpf

    names: list[str] = []
    for rel in sorted(set(re.findall(r"fixtures/[\w./-]+\.bpf\.o", block.text))):
        names += object_names(pyebpf.ObjectSpec.from_file(str(ROOT / rel)))
    return names


@pytest.mark.skipif(os.geteuid() != 0, reason="the README's examples load BPF programs: needs root")
@pytest.mark.parametrize("block", [b for b in ALL if not b.skipped], ids=lambda b: b.id)
def test_block_runs(block: Block, tmp_path: Path) -> None:
    from kobjects import snapshot, wait_no_new_named

    for tool in ("unshare", "ip"):
        assert shutil.which(tool), f"{tool} is needed to run README blocks in a fresh netns"
    script = tmp_path / ("block.py" if block.lang == "python" else "block.sh")
    script.write_text(block.text)
    runner = [sys.executable] if block.lang == "python" else ["bash", "-eo", "pipefail"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(_python_dir(tmp_path)), env.get("PATH", "")])
    names = _object_names(block)
    before_files = _leftovers()
    before = snapshot()
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           *runner, str(script)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, (f"README.md:{block.line} failed ({r.returncode}):\n"
                               f"--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    assert "Traceback" not in r.stderr, r.stderr
    if block.lang == "python" and "print(" in block.text:
        assert r.stdout.strip(), f"README.md:{block.line} printed nothing"
    assert _leftovers() == before_files
    if names:
        left = wait_no_new_named(before, names, timeout=10.0, kernel_timeout=60.0)
        assert not any(left.values()), f"README.md:{block.line} left kernel objects: {left}"
