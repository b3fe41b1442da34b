"""The running kernel's data that externs resolve against: its config (``CONFIG_*``),
``/proc/kallsyms`` and its version code (libbpf's ``get_kernel_version()``).

Pure: files are read, no syscall is made. :mod:`pyebpf.obj.externs` re-exports these.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from ..errors import ExternError

__all__ = [
    "kernel_version_code",
    "parse_kallsyms",
    "parse_kconfig",
    "read_kallsyms",
    "read_kconfig",
]


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a kernel config, as libbpf reads them (other lines ignored).

    A ``CONFIG_`` line without ``=`` or without a value is an error, as in libbpf.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ExternError(f"failed to parse kconfig line {line!r}: no separator")
        if not value:
            raise ExternError(f"failed to parse kconfig line {line!r}: no value")
        out.setdefault(name, value)
    return out


def read_kconfig(paths: Iterable[str] | None = None) -> dict[str, str]:
    """The running kernel's config: ``/boot/config-$(uname -r)``, else ``/proc/config.gz``
    (libbpf's order; both may be gzip-compressed or plain). ExternError when neither exists."""
    if paths is None:
        paths = (f"/boot/config-{os.uname().release}", "/proc/config.gz")
    for p in paths:
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if raw[:2] == b"\x1f\x8b":
            import gzip  # here, not at the top: only .kconfig externs need it

            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise ExternError(f"{p}: corrupt gzip data: {e}") from None
        return parse_kconfig(raw.decode("utf-8", "replace"))
    raise ExternError("failed to open system Kconfig (/boot/config-*, /proc/config.gz)")


def parse_kallsyms(text: str | bytes, names: set[str] | None = None) -> dict[str, int]:
    """Name -> address from ``/proc/kallsyms`` text (libbpf ``kallsyms_cb`` rules).

    A ``.llvm.<hash>`` suffix of a data ('d') symbol is dropped. With ``names``, only
    those are kept and a name with two different addresses raises ExternError (libbpf:
    "resolution is ambiguous"); without, the first address wins.
    """
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if names is not None:
        return _find_kallsyms(raw, names)
    out: dict[str, int] = {}
    for line in raw.splitlines():
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) != 1:
            if fields:
                raise ExternError(f"failed to read kallsyms entry {line.decode(errors='replace')!r}")
            continue
        try:
            addr = int(fields[0], 16)
        except ValueError:
            raise ExternError(
                f"failed to read kallsyms entry {line.decode(errors='replace')!r}") from None
        name = fields[2].decode(errors="replace")
        if fields[1] == b"d":
            i = name.find(".llvm.")
            if i >= 0:
                name = name[:i]
        out.setdefault(name, addr)
    return out


def _find_kallsyms(raw: bytes, names: set[str]) -> dict[str, int]:
    # The file has ~120k lines and an extern object needs a handful of names:
    # searching the bytes for each name is ~50x faster than parsing every line.
    out: dict[str, int] = {}
    for name in names:
        needle = b" " + name.encode()
        pos = raw.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            nxt = raw[end:end + 1]
            llvm = raw.startswith(b".llvm.", end)
            if nxt in (b"\n", b"\t", b"") or llvm:
                line_start = raw.rfind(b"\n", 0, pos) + 1
                head = raw[line_start:pos].split()
                if (len(head) == 2 and len(head[1]) == 1 and (not llvm or head[1] == b"d")):
                    try:
                        addr = int(head[0], 16)
                    except ValueError:
                        addr = None
                    if addr is not None:
                        prev = out.get(name)
                        if prev is None:
                            out[name] = addr
                        elif prev != addr:
                            raise ExternError(f"extern (ksym) '{name}': resolution is ambiguous: "
                                              f"0x{prev:x} or 0x{addr:x}", name=name)
            pos = raw.find(needle, end)
    return out


def read_kallsyms(names: set[str] | None = None, path: str = "/proc/kallsyms") -> dict[str, int]:
    """:func:`parse_kallsyms` of the running kernel (addresses are 0 unless root)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ExternError(f"failed to open {path}: {e}") from None
    return parse_kallsyms(raw, names)


def _kv(major: int, minor: int, patch: int) -> int:
    return (major << 16) + (minor << 8) + min(patch, 255)


def kernel_version_code(release: str | None = None, version: str | None = None,
                        version_signature: str | None = None) -> int:
    """``LINUX_KERNEL_VERSION`` as libbpf's ``get_kernel_version()`` computes it.

    Ubuntu: from ``/proc/version_signature`` ("Ubuntu 5.4.0-42.46-generic 5.4.44");
    Debian: from ``uname -v`` ("... Debian 4.19.260-1 ..."); otherwise ``uname -r``.
    The patch level saturates at 255. 0 when nothing parses. Arguments override the
    running system's values (for tests).
    """
    if version_signature is None:
        try:
            with open("/proc/version_signature", encoding="utf-8", errors="replace") as f:
                version_signature = f.read()
        except OSError:
            version_signature = ""
    m = re.match(r"\s*\S+\s+\S+\s+(\d+)\.(\d+)\.(\d+)", version_signature)
    if m:
        return _kv(*(int(x) for x in m.groups()))
    uts = os.uname()
    version = uts.version if version is None else version
    i = version.find("Debian ")
    if i >= 0:
        m = re.match(r"Debian (\d+)\.(\d+)\.(\d+)", version[i:])
        if m:
            return _kv(*(int(x) for x in m.groups()))
    release = uts.release if release is None else release
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", release)
    return _kv(*(int(x) for x in m.groups())) if m else 0
