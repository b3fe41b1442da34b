"""Stack trace maps and symbolization.

:class:`StackTrace` reads the stacks that ``bpf_get_stackid()`` stored: ``m[stack_id]``
is the list of instruction addresses, innermost first. :class:`KernelSymbols` resolves
kernel addresses through /proc/kallsyms (module names included), :class:`UserSymbols`
resolves a process's addresses through /proc/<pid>/maps and the ELF symbol tables of
the mapped files (read with pyelftools, cached per file).
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from .._record import Frozen
from ..errors import OptionError
from ..uapi import MapType
from .map import Map, register_map_class

__all__ = ["BuildIdFrame", "KernelSymbols", "StackTrace", "Symbol", "UserSymbols",
           "kernel_symbols"]

_BO = sys.byteorder
BPF_F_STACK_BUILD_ID = 1 << 5
_BUILD_ID_FRAME = 32  # struct bpf_stack_build_id: s32 status, u8 build_id[20], u64 offset|ip


class BuildIdFrame(NamedTuple):
    """One frame of a BPF_F_STACK_BUILD_ID stack: status 1 = (build_id, file offset),
    2 = a bare ip (no build id was found), 0 = empty."""

    status: int
    build_id: bytes
    offset_or_ip: int


@register_map_class(MapType.STACK_TRACE)
class StackTrace(Map):
    """BPF_MAP_TYPE_STACK_TRACE: ``m[stack_id]`` -> [address, ...] (innermost first, the
    unused tail dropped). Maps created with BPF_F_STACK_BUILD_ID give :class:`BuildIdFrame`
    lists instead."""

    _batchable = False

    @property
    def depth(self) -> int:
        """The deepest stack an entry can hold."""
        return self.value_size // (_BUILD_ID_FRAME if self.build_id else 8)

    @property
    def build_id(self) -> bool:
        return bool(self.flags & BPF_F_STACK_BUILD_ID)

    def encode_key(self, key: Any) -> bytes:
        if type(key) is int:
            if not 0 <= key < 1 << 32:
                raise OptionError(f"map {self.name!r}: stack id {key} out of range "
                                  "(a negative id is the error bpf_get_stackid returned)")
            return key.to_bytes(4, _BO)
        return super().encode_key(key)

    def decode_key(self, raw: bytes) -> Any:
        return int.from_bytes(raw, _BO)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        b = bytes(raw)
        if self.build_id:
            frames = []
            for status, bid, off in struct.iter_unpack("=i20sQ", b[: len(b) // 32 * 32]):
                if status == 0:
                    break
                frames.append(BuildIdFrame(status, bid, off))
            return frames
        n = len(b) // 8
        addrs = list(struct.unpack(f"={n}Q", b[: n * 8]))
        # the kernel zero-fills past the last frame
        while addrs and not addrs[-1]:
            addrs.pop()
        return addrs

    def stack(self, stack_id: int) -> list[Any]:
        """The frames of ``stack_id``; [] if absent."""
        frames: list[Any] = self.lookup(stack_id, [])
        return frames

    def symbolize(self, stack_id: int, *, pid: int | None = None) -> list[Symbol]:
        """Kernel symbols for ``stack_id``, or the user symbols of process ``pid``
        (build-id stacks: matched against the mapped files of ``pid``, default ours)."""
        frames = self.stack(stack_id)
        if self.build_id:
            us = UserSymbols("self" if pid is None else pid)
            return [us.resolve_build_id(f) for f in frames]
        if pid is None:
            return kernel_symbols().resolve_all(frames)
        return UserSymbols(pid).resolve_all(frames)


_set = object.__setattr__


class Symbol(Frozen):
    """Where an address lies: ``name+offset`` in ``module`` (kernel module, "" for the
    kernel image, or the mapped file's path). ``name`` is None if unresolved."""

    __slots__ = ("address", "name", "offset", "module")
    address: int
    name: str | None
    offset: int
    module: str

    def __init__(self, address: int, name: str | None, offset: int = 0, module: str = "") -> None:
        _set(self, "address", address)
        _set(self, "name", name)
        _set(self, "offset", offset)
        _set(self, "module", module)

    def __str__(self) -> str:
        where = f" [{self.module}]" if self.module else ""
        if self.name is None:
            return f"0x{self.address:x}{where}"
        return f"{self.name}+0x{self.offset:x}{where}"


# -- kernel ------------------------------------------------------------------------------------


class KernelSymbols:
    """Kernel symbols from /proc/kallsyms (root needed for real addresses), sorted for
    bisection. Rebuild with :meth:`reload` after modules or BPF programs change."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        self._addrs: list[int] = []
        self._names: list[str] = []
        self._mods: list[str] = []
        self.reload()

    def reload(self) -> None:
        rows: list[tuple[int, str, str]] = []
        with open(self.path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if not addr or parts[1] in (b"a", b"A", b"U"):  # absolute symbols aren't code
                continue
            mod = parts[3][1:-1].decode() if len(parts) > 3 else ""
            rows.append((addr, parts[2].decode(errors="replace"), mod))
        if not rows:
            raise OptionError(f"{self.path}: no symbol addresses (need root, or "
                              "kernel.kptr_restrict is hiding them)")
        rows.sort(key=lambda r: r[0])
        self._addrs = [r[0] for r in rows]
        self._names = [r[1] for r in rows]
        self._mods = [r[2] for r in rows]

    def __len__(self) -> int:
        return len(self._addrs)

    def resolve(self, address: int) -> Symbol:
        """The symbol at or before ``address``."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return Symbol(address, None)
        return Symbol(address, self._names[i], address - self._addrs[i], self._mods[i])

    def resolve_all(self, addresses: Iterable[int]) -> list[Symbol]:
        return [self.resolve(a) for a in addresses]

    def address_of(self, name: str) -> int | None:
        """The address of the first symbol called ``name`` (linear search)."""
        try:
            return self._addrs[self._names.index(name)]
        except ValueError:
            return None


_ksyms: KernelSymbols | None = None
_ksyms_lock = threading.Lock()


def kernel_symbols(*, reload: bool = False) -> KernelSymbols:
    """The shared :class:`KernelSymbols` (read once; ``reload=True`` re-reads kallsyms)."""
    global _ksyms
    with _ksyms_lock:
        if _ksyms is None:
            _ksyms = KernelSymbols()
        elif reload:
            _ksyms.reload()
        return _ksyms


# -- user space --------------------------------------------------------------------------------


class _ElfSymbols:
    """Function symbols of one ELF file, its PT_LOAD segments and its build id."""

    __slots__ = ("addrs", "build_id", "ends", "loads", "names")

    def __init__(self, path: str) -> None:
        from elftools.elf.elffile import ELFFile

        self.addrs: list[int] = []
        self.names: list[str] = []
        self.ends: list[int] = []
        self.loads: list[tuple[int, int, int]] = []  # (file offset, file size, vaddr)
        self.build_id = b""
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec["sh_type"] == "SHT_NOTE" and hasattr(sec, "iter_notes"):
                    for note in sec.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            self.build_id = bytes.fromhex(note["n_desc"])
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    self.loads.append((seg["p_offset"], seg["p_filesz"], seg["p_vaddr"]))
            fmt = ("<" if elf.little_endian else ">") + ("IBBHQQ" if elf.elfclass == 64 else "IIIBBH")
            rows: dict[int, tuple[int, str]] = {}
            for secname in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(secname)  # type: ignore[assignment]
                if sec is None or sec["sh_entsize"] == 0:
                    continue
                strtab = elf.get_section(sec["sh_link"]).data()
                for ent in struct.iter_unpack(fmt, sec.data()):
                    if elf.elfclass == 64:
                        name_off, info, _other, shndx, value, size = ent
                    else:
                        name_off, value, size, info, _other, shndx = ent
                    # code only: FUNC and GNU_IFUNC (data symbols would name junk frames)
                    if not value or not shndx or (info & 0xF) not in (2, 10):
                        continue
                    end = strtab.find(b"\0", name_off)
                    name = strtab[name_off:end].decode(errors="replace")
                    if name and value not in rows:  # the first name of an alias wins
                        rows[value] = (size, name)
        for value in sorted(rows):
            size, name = rows[value]
            self.addrs.append(value)
            self.ends.append(value + size)
            self.names.append(name)

    def vaddr(self, file_offset: int) -> int | None:
        for off, size, vaddr in self.loads:
            if off <= file_offset < off + max(size, 1):
                return file_offset - off + vaddr
        return None

    def lookup(self, vaddr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i < 0:
            return None
        # a sized symbol must contain the address; zero-sized ones (asm labels) may not
        if self.ends[i] > self.addrs[i] and vaddr >= self.ends[i]:
            return None
        return self.names[i], vaddr - self.addrs[i]


_elf_cache: dict[tuple[int, int, float], _ElfSymbols | None] = {}
_elf_lock = threading.Lock()


def _elf_symbols(path: str) -> _ElfSymbols | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_mtime)
    with _elf_lock:
        if key in _elf_cache:
            return _elf_cache[key]
    try:
        syms: _ElfSymbols | None = _ElfSymbols(path)
    except Exception:  # not an ELF file, or one pyelftools cannot read: no symbols
        syms = None
    with _elf_lock:
        _elf_cache[key] = syms
    return syms


class _Mapping(NamedTuple):
    start: int
    end: int
    offset: int
    path: str


class UserSymbols:
    """Symbolizes addresses of process ``pid`` (its mappings are read at construction;
    call :meth:`reload` after the process maps new code)."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self._maps: list[_Mapping] = []
        self._starts: list[int] = []
        self.reload()

    def reload(self) -> None:
        maps: list[_Mapping] = []
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "x" not in parts[1]:
                    continue
                path = parts[5].strip()
                if not path.startswith("/"):
                    continue  # anonymous, [vdso], [stack], ...
                lo, _, hi = parts[0].partition("-")
                maps.append(_Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), path))
        maps.sort()
        self._maps = maps
        self._starts = [m.start for m in maps]

    def mappings(self) -> Iterator[tuple[int, int, int, str]]:
        """(start, end, file offset, path) of every executable file mapping."""
        return iter(self._maps)

    def _file(self, path: str) -> str:
        # through the process's root, so processes in other mount namespaces resolve too
        if self.pid == "self":
            return path
        return f"/proc/{self.pid}/root{path}"

    def resolve(self, address: int) -> Symbol:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or address >= self._maps[i].end:
            return Symbol(address, None)
        m = self._maps[i]
        file_offset = address - m.start + m.offset
        syms = _elf_symbols(self._file(m.path))
        if syms is None:
            return Symbol(address, None, file_offset, m.path)
        vaddr = syms.vaddr(file_offset)
        hit = syms.lookup(vaddr) if vaddr is not None else None
        if hit is None:
            return Symbol(address, None, file_offset, m.path)
        return Symbol(address, hit[0], hit[1], m.path)

    def resolve_all(self, addresses: Iterable[int]) -> list[Symbol]:
        return [self.resolve(a) for a in addresses]

    def resolve_build_id(self, frame: BuildIdFrame) -> Symbol:
        """Symbolize a frame of a BPF_F_STACK_BUILD_ID stack: (build id, file offset) is
        matched against the build ids of this process's mapped files; a bare-ip frame
        resolves as an address. ``address`` of the result is the file offset."""
        if frame.status == 2:
            return self.resolve(frame.offset_or_ip)
        off = frame.offset_or_ip
        for m in self._maps:
            syms = _elf_symbols(self._file(m.path))
            # build ids are 20 bytes for SHA-1 notes; shorter ones are zero-padded
            if syms is None or not syms.build_id or \
                    frame.build_id[: len(syms.build_id)] != syms.build_id:
                continue
            vaddr = syms.vaddr(off)
            hit = syms.lookup(vaddr) if vaddr is not None else None
            if hit is not None:
                return Symbol(off, hit[0], hit[1], m.path)
            return Symbol(off, None, off, m.path)
        return Symbol(off, None, off, "")
