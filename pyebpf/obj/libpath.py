"""Find the file behind a binary or library name, as libbpf's ``resolve_full_path`` does, and more.

libbpf looks a name without a ``/`` up in ``LD_LIBRARY_PATH`` and the standard library
directories when it looks like a shared object (``.so`` or ``.so.``), else in ``PATH``.
pyebpf adds two sources libbpf lacks: the dynamic linker's cache (``/etc/ld.so.cache``,
parsed by hand) and, given a pid, the libraries mapped in that process
(``/proc/PID/maps``). The parsers take bytes/text and are pure.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping

from ..errors import PyebpfError

__all__ = [
    "LibraryNotFound",
    "arch_lib_dirs",
    "is_library_name",
    "parse_ld_so_cache",
    "parse_maps",
    "resolve_binary",
    "search_ld_so_cache",
    "search_maps",
    "search_path",
]

LD_SO_CACHE = "/etc/ld.so.cache"
_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_OLD_MAGIC = b"ld.so-1.7.0"
_NEW_HEADER = struct.Struct("<20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, ext
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
_OLD_ENTRY = struct.Struct("<iII")

# dl-cache.h: the ABI an entry was built for (the requirement byte of its flags)
FLAG_ELF_LIBC6 = 0x0003
FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
_ARCH_FLAGS = {
    "x86_64": 0x0300,  # FLAG_X8664_LIB64
    "aarch64": 0x0A00,  # FLAG_AARCH64_LIB64
    "ppc64": 0x0500, "ppc64le": 0x0500,  # FLAG_POWERPC_LIB64
    "s390x": 0x0400,  # FLAG_S390_LIB64
    "riscv64": 0x1000,  # FLAG_RISCV_FLOAT_ABI_DOUBLE (lp64d)
    "loongarch64": 0x1200,  # FLAG_LARCH_FLOAT_ABI_DOUBLE
}

# libbpf's arch_specific_lib_paths()
_ARCH_DIRS = {
    "x86_64": "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu",
    "i386": "/lib/i386-linux-gnu:/usr/lib/i386-linux-gnu",
    "i686": "/lib/i386-linux-gnu:/usr/lib/i386-linux-gnu",
    "aarch64": "/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu",
    "s390x": "/lib/s390x-linux-gnu:/usr/lib/s390x-linux-gnu",
    "ppc64le": "/lib/powerpc64le-linux-gnu:/usr/lib/powerpc64le-linux-gnu",
    "riscv64": "/lib/riscv64-linux-gnu:/usr/lib/riscv64-linux-gnu",
    "loongarch64": "/lib/loongarch64-linux-gnu:/usr/lib/loongarch64-linux-gnu",
}


class LibraryNotFound(PyebpfError):
    """A binary or library name could not be resolved to a file; ``searched`` lists where we looked."""

    def __init__(self, message: str, *, name: str, searched: list[str]):
        self.name = name
        self.searched = searched
        super().__init__(message)


def is_library_name(name: str) -> bool:
    """libbpf's test for a shared object: ends in ``.so`` or contains ``.so.``."""
    return name.endswith(".so") or ".so." in name


def arch_lib_dirs(machine: str | None = None) -> str:
    """The multiarch library directories for ``machine`` (``uname -m``), ":"-separated."""
    return _ARCH_DIRS.get(machine or os.uname().machine, "")


def search_path(name: str, dirs: Iterable[str | None], mode: int) -> tuple[str | None, list[str]]:
    """First ``dir/name`` accessible with ``mode`` over ":"-separated ``dirs``; (path, tried dirs)."""
    tried: list[str] = []
    for spec in dirs:
        if not spec:
            continue
        for d in spec.split(":"):
            if not d:
                continue
            tried.append(d)
            cand = f"{d}/{name}"
            # effective ids, as libbpf's faccessat(AT_EACCESS)
            if os.path.isfile(cand) and os.access(cand, mode, effective_ids=True):
                return cand, tried
    return None, tried


# --- /etc/ld.so.cache --------------------------------------------------------------------------


def parse_ld_so_cache(data: bytes) -> list[tuple[str, str, int]]:
    """(soname, path, flags) of every entry of an ld.so.cache image (new format, or old+new).

    Unknown or truncated input gives what could be read (possibly nothing), never an exception.
    """
    try:
        return _parse_cache(data)
    except (struct.error, ValueError, IndexError, OverflowError):
        return []


def _parse_cache(data: bytes) -> list[tuple[str, str, int]]:
    base = 0
    if data.startswith(_OLD_MAGIC):
        nlibs = struct.unpack_from("<I", data, 12)[0]
        end = 16 + nlibs * _OLD_ENTRY.size
        new = (end + 7) & ~7  # the new-format cache follows, 8-byte aligned
        if data[new : new + len(_NEW_MAGIC)] != _NEW_MAGIC:
            # old format only: string offsets count from the end of the entry table
            out = []
            for i in range(nlibs):
                flags, key, value = _OLD_ENTRY.unpack_from(data, 16 + i * _OLD_ENTRY.size)
                out.append((_str(data, end + key), _str(data, end + value), flags))
            return out
        base = new
    if data[base : base + len(_NEW_MAGIC)] != _NEW_MAGIC:
        return []
    _, nlibs, _, _, _ = _NEW_HEADER.unpack_from(data, base)
    out = []
    for i in range(nlibs):
        flags, key, value, _, _ = _NEW_ENTRY.unpack_from(data, base + _NEW_HEADER.size
                                                         + i * _NEW_ENTRY.size)
        # new-format string offsets count from the start of the new header
        out.append((_str(data, base + key), _str(data, base + value), flags))
    return out


def _str(data: bytes, off: int) -> str:
    if not 0 <= off < len(data):
        raise ValueError("string offset outside the cache")
    end = data.find(b"\0", off)
    return os.fsdecode(data[off : end if end >= 0 else len(data)])


def search_ld_so_cache(name: str, data: bytes, machine: str | None = None) -> str | None:
    """The path ld.so.cache ``data`` gives for soname ``name`` on ``machine`` (first match)."""
    want = _ARCH_FLAGS.get(machine or os.uname().machine)
    for soname, path, flags in parse_ld_so_cache(data):
        if soname != name or (flags & FLAG_TYPE_MASK) != FLAG_ELF_LIBC6:
            continue
        # an unknown machine takes any libc6 entry; a known one only its own ABI
        if want is None or (flags & FLAG_REQUIRED_MASK) == want:
            return path
    return None


# --- /proc/PID/maps ----------------------------------------------------------------------------


def parse_maps(text: str) -> list[tuple[int, int, str, int, str]]:
    """(start, end, perms, file offset, path) of each file-backed line of a /proc/PID/maps text."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        try:
            lo, _, hi = parts[0].partition("-")
            out.append((int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[5]))
        except ValueError:
            continue
    return out


def _lib_matches(base: str, name: str) -> bool:
    if base == name:
        return True
    # "libc" or "libc.so" names libc.so.6, "libfoo" names libfoo-2.1.so
    return base.startswith(name) and base[len(name) : len(name) + 1] in (".", "-")


def search_maps(name: str, text: str) -> str | None:
    """The path of the mapped file named ``name`` in a /proc/PID/maps text (exact basename first)."""
    paths = []
    for _, _, _, _, path in parse_maps(text):
        if path.endswith(" (deleted)"):
            continue
        if path not in paths:
            paths.append(path)
    for exact in (True, False):
        for path in paths:
            base = os.path.basename(path)
            if (base == name) if exact else _lib_matches(base, name):
                return path
    return None


# --- the resolver ------------------------------------------------------------------------------


def resolve_binary(name: str, pid: int | None = None, *, env: Mapping[str, str] | None = None,
                   ld_so_cache: str = LD_SO_CACHE) -> str:
    """A path for binary/library ``name``: as given if it has a ``/``, else searched like libbpf.

    Order: (with ``pid``) the files mapped in that process, then libbpf's search
    (``LD_LIBRARY_PATH``, /usr/lib64, /usr/lib and the multiarch dirs for ``.so`` names,
    ``PATH`` for others), then the ld.so cache. Raises LibraryNotFound naming what was tried.
    """
    if not name:
        raise LibraryNotFound("empty binary name", name=name, searched=[])
    if "/" in name:
        if not os.path.exists(name):
            raise LibraryNotFound(f"binary {name} does not exist", name=name, searched=[name])
        return name
    if env is None:
        env = os.environ
    searched: list[str] = []
    if pid is not None and pid > 0:
        maps = f"/proc/{pid}/maps"
        searched.append(maps)
        try:
            with open(maps) as f:
                found = search_maps(name, f.read())
        except OSError:
            found = None
        if found is not None:
            # the path is in that process's mount namespace; its root shows it from ours
            rooted = f"/proc/{pid}/root{found}"
            return found if os.path.exists(found) or not os.path.exists(rooted) else rooted
    lib = is_library_name(name)
    if lib:
        dirs = [env.get("LD_LIBRARY_PATH"), "/usr/lib64:/usr/lib", arch_lib_dirs()]
        found, tried = search_path(name, dirs, os.R_OK)
    else:
        found, tried = search_path(name, [env.get("PATH")], os.X_OK)
    searched += tried
    if found is not None:
        return found
    if lib:
        searched.append(ld_so_cache)
        try:
            with open(ld_so_cache, "rb") as f:
                found = search_ld_so_cache(name, f.read())
        except OSError:
            found = None
        if found is not None and os.path.exists(found):
            return found
    where = "LD_LIBRARY_PATH, the library directories and the ld.so cache" if lib else "PATH"
    raise LibraryNotFound(
        f"cannot find {'library' if lib else 'binary'} {name!r} in {where} (looked in "
        f"{', '.join(searched) or 'nothing'}); pass a full path", name=name, searched=searched)
