"""Reference results from the system libbpf, obtained through bpftool.

bpftool 7.1 (libbpf 1.1) loads an object with ``prog loadall``, which pins
every program under a bpffs directory.  We read each pinned program's
kernel-reported tag and then remove the pins so nothing stays loaded.  Tests
compare these tags with the instructions pyebpf would submit: equal tags mean
equal relocated instructions (map fds and value offsets are zeroed by the
kernel before hashing, see KERNEL.md section 6).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")
BPFTOOL = os.environ.get("BPFTOOL", "bpftool")

_counter = itertools.count()


class BpftoolError(RuntimeError):
    """bpftool failed; ``stderr`` holds its (libbpf) diagnostics."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(f"{message}\n--- bpftool stderr ---\n{stderr}")
        self.stderr = stderr


def bpftool_available() -> bool:
    """True if bpftool is installed and we can use bpf(2) (i.e. root)."""
    return shutil.which(BPFTOOL) is not None and os.geteuid() == 0


def _ensure_bpffs() -> None:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[1] == str(BPFFS) and fields[2] == "bpf":
                return
    BPFFS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)


def _unique_dir() -> Path:
    # pid + counter + random: parallel sessions share /sys/fs/bpf.
    return BPFFS / f"pyebpf_ref_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:8]}"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BPFTOOL, *args], capture_output=True, text=True, timeout=120)


def _prog_exists(prog_id: int) -> bool:
    return _run(["-j", "prog", "show", "id", str(prog_id)]).returncode == 0


def _remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    for entry in pin_dir.iterdir():
        entry.unlink()
    pin_dir.rmdir()


def _object_map_names(obj_path: str | os.PathLike[str]) -> list[str]:
    """Names of the BTF-defined maps in an object (symbols in its .maps section)."""
    from elftools.elf.elffile import ELFFile

    with open(obj_path, "rb") as f:
        elf = ELFFile(f)
        idx = next((i for i, s in enumerate(elf.iter_sections()) if s.name == ".maps"), None)
        symtab = elf.get_section_by_name(".symtab")
        if idx is None or symtab is None:
            return []
        return [s.name for s in symtab.iter_symbols() if s.name and s["st_shndx"] == idx]


def wait_progs_gone(prog_ids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait until the kernel has freed the given programs; return those still alive.

    Programs are freed asynchronously (RCU) after their last pin goes away.
    """
    deadline = time.monotonic() + timeout
    alive = list(prog_ids)
    while alive:
        alive = [i for i in alive if _prog_exists(i)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return alive


def libbpf_progs(
    obj_path: str | os.PathLike[str], extra_args: list[str] | None = None
) -> dict[str, dict]:
    """Load ``obj_path`` with ``bpftool prog loadall`` and return bpftool's JSON per program.

    Keys are full program (function) names.  The kernel truncates names to 15
    characters, so we key on the pin file name, which libbpf derives from the
    full program name.  Every pin is removed before returning.
    Raises :class:`BpftoolError` (with bpftool's stderr) if loading fails.
    """
    _ensure_bpffs()
    pin_dir = _unique_dir()
    # Maps with LIBBPF_PIN_BY_NAME get pinned at BPFFS/<map name> (bpftool has
    # no option to change libbpf's pin root).  Remove only pins we created.
    by_name = [BPFFS / n for n in _object_map_names(obj_path)]
    preexisting = {p for p in by_name if p.exists()}
    cmd = ["prog", "loadall", str(obj_path), str(pin_dir), *(extra_args or [])]
    try:
        res = _run(cmd)
        if res.returncode != 0:
            raise BpftoolError(f"bpftool {' '.join(cmd)} failed (rc={res.returncode})", res.stderr)
        out: dict[str, dict] = {}
        for pin in sorted(pin_dir.iterdir()):
            show = _run(["-j", "prog", "show", "pinned", str(pin)])
            if show.returncode != 0:
                raise BpftoolError(f"bpftool prog show pinned {pin} failed", show.stderr)
            info = json.loads(show.stdout)
            kname = info.get("name", "")
            # Sanity check the mapping: kernel name is a prefix of the full name.
            if not pin.name.startswith(kname[:15]):
                raise BpftoolError(f"pin {pin.name!r} does not match program name {kname!r}", "")
            out[pin.name] = info
        return out
    finally:
        _remove_pins(pin_dir)
        for p in by_name:
            if p not in preexisting and p.exists():
                p.unlink()


def libbpf_tags(
    obj_path: str | os.PathLike[str], extra_args: list[str] | None = None
) -> dict[str, str]:
    """Map each program name in ``obj_path`` to the tag the kernel computed for libbpf's load."""
    return {name: info["tag"] for name, info in libbpf_progs(obj_path, extra_args).items()}


def bpftool_loads(obj_path: str | os.PathLike[str], extra_args: list[str] | None = None) -> bool:
    """True if bpftool (libbpf 1.1) can load every program of ``obj_path`` on this kernel."""
    try:
        libbpf_progs(obj_path, extra_args)
    except BpftoolError:
        return False
    return True


def leftover_pins() -> list[Path]:
    """Pin directories created by this process that still exist (should be empty)."""
    return sorted(BPFFS.glob(f"pyebpf_ref_{os.getpid()}_*"))
