"""Pin paths: where maps, programs and links may be pinned, and mounting bpffs.

A pin is a file on a BPF filesystem (bpffs).  Every pin and unpin made by
pyebpf (``Map.pin``, ``Program.pin``, ``Link.pin`` and their ``unpin``) goes
through :func:`check_pin_path`, which refuses, with a :class:`PinPathError`
that says how to fix it:

- an empty path, a NUL byte, or a path ending in ``/``, ``.`` or ``..``;
- any ``..`` component, before anything is resolved (so
  ``/sys/fs/bpf/../../etc/x`` never reaches the kernel or ``unlink``);
- a parent directory that does not exist or is not on a bpffs (statfs magic
  ``0xcafe4a11``), after resolving symlinks with ``realpath``;
- a resolved path that is no longer under the bpffs mount the parent
  directory belongs to.

:func:`mount_bpffs` mounts a bpffs where one is missing, but only when the
caller passes ``consent=True``; :func:`ensure_bpffs` asks the user on a
terminal first (for command line tools).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import OptionError, PyebpfError

__all__ = [
    "BPF_FS_MAGIC",
    "DEFAULT_BPFFS",
    "PinPathError",
    "bpffs_mount_point",
    "check_pin_path",
    "ensure_bpffs",
    "is_bpffs",
    "mount_bpffs",
    "pin",
    "pin_fd",
    "unpin",
]

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"
_FIX = (f"pin under a BPF filesystem such as {DEFAULT_BPFFS} (mount one with "
        f"`mount -t bpf bpf {DEFAULT_BPFFS}` or pyebpf.pin.mount_bpffs(consent=True))")


class PinPathError(OptionError):
    """A pin path that is not, or might not be, inside a bpffs mount."""


def is_bpffs(path: str) -> bool:
    """Whether ``path`` exists and lives on a BPF filesystem (statfs magic 0xcafe4a11)."""
    from .sys.perf import fs_magic

    return fs_magic(path) == BPF_FS_MAGIC


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _bpffs_mounts() -> list[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        pre, sep, post = line.partition(" - ")
        fields = pre.split()
        if sep and len(fields) >= 5 and post.split(" ", 1)[0] == "bpf":
            mounts.append(_unescape(fields[4]))
    return mounts


def bpffs_mount_point(path: str) -> str | None:
    """The bpffs mount that holds the (resolved) directory ``path``, or None."""
    real = os.path.realpath(path)
    if not is_bpffs(real):
        return None
    best = None
    for mp in _bpffs_mounts():
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(best)):
            best = mp
    # statfs says bpffs but mountinfo is unreadable (no /proc): the directory itself
    return best if best is not None else real


def check_pin_path(path: str | os.PathLike[str]) -> str:
    """Validate a pin path; returns it resolved (``realpath`` of its directory + its name).

    Raises :class:`PinPathError` naming the fix when the path is not inside a bpffs mount.
    """
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise PinPathError(f"pin path must be a str, got {type(raw).__name__}")
    if not raw or "\0" in raw:
        raise PinPathError(f"invalid pin path {raw!r}; {_FIX}")
    parts = raw.split("/")
    if ".." in parts:
        raise PinPathError(f"pin path {raw!r} contains '..'; give a path inside the bpffs "
                           f"mount without parent references ({_FIX})")
    name = parts[-1]
    if name in ("", "."):
        raise PinPathError(f"pin path {raw!r} names a directory, not a pin file")
    parent = os.path.dirname(os.path.abspath(raw))
    real_parent = os.path.realpath(parent)
    if not os.path.isdir(real_parent):
        raise PinPathError(f"cannot pin at {raw!r}: directory {parent} does not exist; create "
                           f"it inside a BPF filesystem ({_FIX})")
    mount = bpffs_mount_point(real_parent)
    if mount is None:
        shown = parent if parent == real_parent else f"{parent} (-> {real_parent})"
        raise PinPathError(f"cannot pin at {raw!r}: {shown} is not on a BPF filesystem; {_FIX}")
    resolved = os.path.join(real_parent, name)
    root = mount.rstrip("/") + "/"
    if not resolved.startswith(root):
        raise PinPathError(f"pin path {raw!r} resolves to {resolved}, outside the bpffs "
                           f"mount {mount}")
    return resolved


def pin_fd(fd: Any, path: str | os.PathLike[str]) -> str:
    """BPF_OBJ_PIN ``fd`` (a map, program or link fd) at a checked ``path``; returns
    the resolved path pinned."""
    from .sys import bpf as _bpf

    resolved = check_pin_path(path)
    _bpf.obj_pin(fd, resolved)
    return resolved


def unpin(path: str | os.PathLike[str], *, missing_ok: bool = True) -> bool:
    """Remove the pin at a checked ``path``; False if there was none (``missing_ok``).

    Only files on a bpffs are ever removed."""
    resolved = check_pin_path(path)
    if os.path.isdir(resolved) and not os.path.islink(resolved):
        raise PinPathError(f"{os.fspath(path)!r} is a directory, not a pin")
    try:
        os.unlink(resolved)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    return True


def pin(obj: Any, path: str | os.PathLike[str]) -> None:
    """Pin a Map, Program or Link (anything with a ``pin`` method) at ``path``."""
    method = getattr(obj, "pin", None)
    if method is None:
        raise OptionError(f"cannot pin a {type(obj).__name__}: it has no pin() method")
    method(os.fspath(path))


# -- mounting -------------------------------------------------------------------------------


def mount_bpffs(path: str = DEFAULT_BPFFS, *, consent: bool, mode: int = 0o700) -> bool:
    """Mount a bpffs at ``path`` if none is there; True if it mounted one.

    Mounting changes the system, so it happens only with ``consent=True``
    (otherwise :class:`PinPathError` explains what would be done).  The
    directory is created (``mode``) if missing.  Needs CAP_SYS_ADMIN.
    """
    if is_bpffs(path):
        return False
    if not consent:
        raise PinPathError(f"no BPF filesystem at {path}; mounting one needs your consent: "
                           f"call pyebpf.pin.mount_bpffs({path!r}, consent=True) or run "
                           f"`mount -t bpf bpf {path}`")
    os.makedirs(path, mode=mode, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    libc.mount.restype = ctypes.c_int
    if libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise PyebpfError(f"mount -t bpf bpf {path} failed: {os.strerror(err)}"
                          + (" (needs CAP_SYS_ADMIN)" if err == 1 else ""))
    return True


def ensure_bpffs(path: str = DEFAULT_BPFFS, *, ask: Callable[[str], str] | None = None,
                 assume_yes: bool = False) -> bool:
    """For tools: make sure ``path`` is a bpffs, asking before mounting one.

    Returns True if a bpffs is (now) there.  ``ask`` (default: ``input`` when
    stdin is a terminal) gets the question; anything but y/yes declines.
    Without a terminal and without ``assume_yes``, raises :class:`PinPathError`.
    """
    if is_bpffs(path):
        return True
    if not assume_yes:
        if ask is None:
            if not sys.stdin.isatty():
                mount_bpffs(path, consent=False)  # raises with the fix
            ask = input
        answer = ask(f"{path} is not a BPF filesystem. Mount one there "
                     f"(mount -t bpf bpf {path})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return False
    mount_bpffs(path, consent=True)
    return True
