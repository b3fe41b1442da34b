"""Function symbols of user-space ELF binaries, and their file offsets (for uprobes).

libbpf's src/elf.c does this with libelf: ``elf_find_func_offset`` (one name, both
``.dynsym`` and ``.symtab``, versioned names, weak/global tie-breaking),
``elf_resolve_syms_offsets`` (many names at once) and ``elf_resolve_pattern_offsets``
(a glob, for uprobe_multi). This module does the same over the raw bytes with
:mod:`struct`, with no syscalls, so it is unit-testable without root.

A uprobe is placed at a *file offset*. A symbol's value is a virtual address; the
offset is ``st_value - p_vaddr + p_offset`` of the PT_LOAD segment that holds it (the
same number libbpf gets from the symbol's section header for any sane binary).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence

from .._record import Record
from ..errors import PyebpfError

__all__ = [
    "ElfBinary",
    "FuncSymbol",
    "SymbolError",
    "archive_member",
    "find_func_offset",
    "find_func_offset_in_archive",
    "glob_match",
    "list_functions",
    "resolve_func_offsets",
    "resolve_pattern_offsets",
]

ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB = 2
SHT_DYNSYM = 11
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERSYM = 0x6FFFFFFF
STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
VERSYM_HIDDEN = 0x8000
VERSYM_VERSION = 0x7FFF


class SymbolError(PyebpfError):
    """A symbol cannot be resolved in a binary (missing, ambiguous, or the file is not ELF)."""

    def __init__(self, message: str, *, symbol: str | None = None, path: str | None = None):
        self.symbol = symbol
        self.path = path
        super().__init__(message)


class FuncSymbol(Record):
    """A defined function symbol: name (with ``@VER``/``@@VER`` for versioned dynamic ones)."""

    name: str
    base: str  # the name without any version
    version: str | None
    default: bool  # not a hidden version (``@@VER`` or unversioned)
    value: int
    size: int
    bind: int
    offset: int  # file offset of the first instruction
    table: str  # ".symtab" or ".dynsym"
    # STT_GNU_IFUNC: the symbol is the resolver that picks an implementation at load time;
    # a uprobe there fires when the dynamic linker resolves it, not on calls (libbpf alike)
    ifunc: bool

    def __init__(self, name: str, base: str, version: str | None, default: bool, value: int,
                 size: int, bind: int, offset: int, table: str, ifunc: bool = False) -> None:
        self.name = name
        self.base = base
        self.version = version
        self.default = default
        self.value = value
        self.size = size
        self.bind = bind
        self.offset = offset
        self.table = table
        self.ifunc = ifunc


class _Segment(Record):
    vaddr: int
    memsz: int
    offset: int
    flags: int

    def __init__(self, vaddr: int, memsz: int, offset: int, flags: int) -> None:
        self.vaddr = vaddr
        self.memsz = memsz
        self.offset = offset
        self.flags = flags


def _cstr(data: bytes, off: int) -> str:
    if off < 0 or off >= len(data):
        return ""
    end = data.find(b"\0", off)
    return data[off : end if end >= 0 else len(data)].decode("utf-8", "replace")


class ElfBinary:
    """A user-space ELF file (executable, PIE or shared object) reduced to its function symbols."""

    def __init__(self, data: bytes, path: str = "<memory>") -> None:
        self.path = path
        try:
            self._parse(data)
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as e:
            raise SymbolError(f"{path}: malformed ELF file ({e})", path=path) from None

    @classmethod
    def from_file(cls, path: str) -> ElfBinary:
        """Read ``path`` (any readable ELF file)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SymbolError(f"cannot read binary {path}: {e.strerror or e}", path=path) from None
        return cls(data, path)

    # --- parsing -------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise SymbolError(f"{self.path} is not an ELF file", path=self.path)
        cls, enc = data[4], data[5]
        if enc not in (1, 2):
            raise SymbolError(f"{self.path}: unknown ELF data encoding {enc}", path=self.path)
        e = "<" if enc == 1 else ">"
        if cls == 2:
            ehdr = struct.unpack_from(e + "HHIQQQIHHHHHH", data, 16)
            phdr_fmt, shdr_fmt, sym_fmt = e + "IIQQQQQQ", e + "IIQQQQIIQQ", e + "IBBHQQ"
        elif cls == 1:
            ehdr = struct.unpack_from(e + "HHIIIIIHHHHHH", data, 16)
            phdr_fmt, shdr_fmt, sym_fmt = e + "IIIIIIII", e + "IIIIIIIIII", e + "IIIBBH"
        else:
            raise SymbolError(f"{self.path}: unknown ELF class {cls}", path=self.path)
        self.elf_type = ehdr[0]
        self.machine = ehdr[1]
        phoff, shoff = ehdr[4], ehdr[5]
        phentsize, phnum, shentsize, shnum = ehdr[8], ehdr[9], ehdr[10], ehdr[11]
        self.segments: list[_Segment] = []
        if phoff + phnum * phentsize > len(data) or shoff > len(data):
            raise ValueError("headers lie outside the file")
        for i in range(phnum if phoff else 0):
            p = struct.unpack_from(phdr_fmt, data, phoff + i * phentsize)
            if cls == 2:
                ptype, pflags, poff, pvaddr, _, _, pmemsz = p[:7]
            else:
                ptype, poff, pvaddr, _, _, pmemsz, pflags = p[:7]
            if ptype == PT_LOAD:
                self.segments.append(_Segment(pvaddr, pmemsz, poff, pflags))
        if shoff and shnum == 0:  # more than 0xff00 sections: the count is in section 0
            shnum = struct.unpack_from(shdr_fmt, data, shoff)[5]
        if shoff + shnum * shentsize > len(data):
            raise ValueError("section headers lie outside the file")
        shdrs = []
        for i in range(shnum if shoff else 0):
            s = struct.unpack_from(shdr_fmt, data, shoff + i * shentsize)
            # (type, addr, offset, size, link, entsize)
            shdrs.append((s[1], s[3], s[4], s[5], s[6], s[9]))

        def body(i: int) -> bytes:
            stype, _, off, size, _, _ = shdrs[i]
            if stype == 8:  # SHT_NOBITS
                return b""
            if off + size > len(data):
                raise ValueError(f"section {i} lies outside the file")
            return data[off : off + size]

        # .gnu.version_d: version index -> name
        self._verdefs: dict[int, str] = {}
        versym: bytes = b""
        for i, (stype, _, _, _, link, _) in enumerate(shdrs):
            if stype == SHT_GNU_VERDEF:
                self._verdefs = self._parse_verdef(body(i), body(link), e)
            elif stype == SHT_GNU_VERSYM:
                versym = body(i)
        self.functions: list[FuncSymbol] = []
        sym_size = struct.calcsize(sym_fmt)
        for table_type, table in ((SHT_DYNSYM, ".dynsym"), (SHT_SYMTAB, ".symtab")):
            for i, (stype, _, _, _, link, _) in enumerate(shdrs):
                if stype != table_type:
                    continue
                syms, strs = body(i), body(link)
                for n in range(len(syms) // sym_size):
                    fields = struct.unpack_from(sym_fmt, syms, n * sym_size)
                    if cls == 2:
                        name_off, info, _, shndx, value, size = fields
                    else:
                        name_off, value, size, info, _, shndx = fields
                    kind, bind = info & 0xF, info >> 4
                    if kind not in (STT_FUNC, STT_GNU_IFUNC) or shndx == SHN_UNDEF:
                        continue
                    raw = _cstr(strs, name_off)
                    if not raw:
                        continue
                    base, version, default = raw, None, True
                    if "@" in raw:  # .symtab spells versions into the name
                        base, _, rest = raw.partition("@")
                        default = rest.startswith("@")
                        version = rest.lstrip("@")
                    elif table_type == SHT_DYNSYM and versym and 2 * n + 2 <= len(versym):
                        ver = struct.unpack_from(e + "H", versym, 2 * n)[0]
                        vname = self._verdefs.get(ver & VERSYM_VERSION)
                        # index 1 is the file's own base version: not a symbol version
                        if vname is not None and (ver & VERSYM_VERSION) > 1:
                            version = vname
                            default = not ver & VERSYM_HIDDEN
                            raw = f"{base}@@{vname}" if default else f"{base}@{vname}"
                    self.functions.append(FuncSymbol(
                        raw, base, version, default, value, size, bind,
                        self._file_offset(value, shdrs, shndx), table, kind == STT_GNU_IFUNC))

    @staticmethod
    def _parse_verdef(verdef: bytes, strs: bytes, e: str) -> dict[int, str]:
        out: dict[int, str] = {}
        off = 0
        for _ in range(len(verdef) // 20 + 1):  # bounded walk over a linked list
            if off + 20 > len(verdef):
                break
            _, _, ndx, cnt, _, aux, nxt = struct.unpack_from(e + "HHHHIII", verdef, off)
            if cnt and off + aux + 8 <= len(verdef):
                name_off = struct.unpack_from(e + "I", verdef, off + aux)[0]
                out[ndx] = _cstr(strs, name_off)
            if not nxt:
                break
            off += nxt
        return out

    def _file_offset(self, value: int, shdrs: list[tuple[int, int, int, int, int, int]],
                     shndx: int) -> int:
        for seg in self.segments:
            if seg.vaddr <= value < seg.vaddr + seg.memsz:
                return value - seg.vaddr + seg.offset
        # no program headers (odd, but libbpf's way works without them): the symbol's section
        if shndx < len(shdrs) and shndx < SHN_LORESERVE:
            _, addr, off, _, _, _ = shdrs[shndx]
            return value - addr + off
        return value

    # --- queries -------------------------------------------------------------------------------

    @property
    def is_shared(self) -> bool:
        return bool(self.elf_type == ET_DYN)

    def find(self, name: str) -> int:
        """The file offset of function ``name`` (``func``, ``func@VER`` or ``func@@VER``)."""
        return self._find(name, self.functions)

    def _find(self, name: str, funcs: Sequence[FuncSymbol]) -> int:
        base, at, ver = name.partition("@")
        ver = ver.lstrip("@") if at else ""
        if not base:
            raise SymbolError(f"empty function name {name!r} for {self.path}", symbol=name,
                              path=self.path)
        for table in (".dynsym", ".symtab"):  # libbpf's order: a stripped binary has only .dynsym
            found: FuncSymbol | None = None
            for sym in funcs:
                if sym.table != table or sym.base != base:
                    continue
                if at:
                    if sym.version != ver:
                        continue
                elif not sym.default:
                    continue  # a bare name means the default version, never a hidden one
                if found is not None:
                    if sym.offset == found.offset:
                        continue
                    if found.bind != STB_WEAK and sym.bind != STB_WEAK:
                        raise SymbolError(
                            f"ambiguous function {name!r} in {self.path}: {found.name} at "
                            f"0x{found.offset:x} and {sym.name} at 0x{sym.offset:x}; name a "
                            "version (func@VERSION) or use a file offset",
                            symbol=name, path=self.path)
                    if sym.bind == STB_WEAK:
                        continue  # keep the strong one
                found = sym
            if found is not None:
                if found.offset == 0:
                    hint = ("should not be 0 in a shared library" if self.is_shared
                            else "try the shared library path instead")
                    raise SymbolError(f"function {name!r} has address 0 in {self.path} ({hint})",
                                      symbol=name, path=self.path)
                return found.offset
        raise SymbolError(f"function {name!r} not found in {self.path} (no STT_FUNC symbol of "
                          "that name in .dynsym or .symtab)", symbol=name, path=self.path)

    def resolve(self, names: Iterable[str]) -> list[int]:
        """File offsets of many functions at once, in the order given (all must exist)."""
        names = list(names)
        wanted = {n.partition("@")[0] for n in names}
        funcs = [f for f in self.functions if f.base in wanted]
        return [self._find(n, funcs) for n in names]

    def match(self, pattern: str) -> list[FuncSymbol]:
        """Functions whose name matches glob ``pattern`` (``*`` and ``?``), one per offset.

        As libbpf, .symtab is searched first and .dynsym only when .symtab matched nothing.
        Aliases (several names at one address) are kept once, so each function fires once.
        """
        out: list[FuncSymbol] = []
        for table in (".symtab", ".dynsym"):
            seen: set[int] = set()
            for sym in self.functions:
                if sym.table != table or sym.offset in seen:
                    continue
                if glob_match(sym.name, pattern) or (sym.name != sym.base and sym.default
                                                     and glob_match(sym.base, pattern)):
                    seen.add(sym.offset)
                    out.append(sym)
            if out:
                break
        return out


def glob_match(text: str, pattern: str) -> bool:
    """libbpf's glob_match(): ``*`` any run of characters, ``?`` one character, nothing else."""
    ti = pi = 0
    star_p = star_t = -1
    while ti < len(text):
        if pi < len(pattern) and (pattern[pi] == "?" or pattern[pi] == text[ti]):
            ti += 1
            pi += 1
        elif pi < len(pattern) and pattern[pi] == "*":
            star_p, star_t = pi, ti
            pi += 1
        elif star_p >= 0:
            star_t += 1
            ti = star_t
            pi = star_p + 1
        else:
            return False
    while pi < len(pattern) and pattern[pi] == "*":
        pi += 1
    return pi == len(pattern)


# --- module-level helpers (cached per file identity) --------------------------------------------

_cache: dict[tuple[str, int, int, int], ElfBinary] = {}


def _binary(path: str) -> ElfBinary:
    try:
        st = os.stat(path)
    except OSError as e:
        raise SymbolError(f"cannot read binary {path}: {e.strerror or e}", path=path) from None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    b = _cache.get(key)
    if b is None:
        b = ElfBinary.from_file(path)
        if len(_cache) > 16:
            _cache.clear()
        _cache[key] = b
    return b


def find_func_offset(path: str, name: str) -> int:
    """File offset of function ``name`` in the ELF file ``path`` (libbpf's elf_find_func_offset)."""
    return _binary(path).find(name)


def resolve_func_offsets(path: str, names: Iterable[str]) -> list[int]:
    """File offsets of functions ``names`` in ``path`` (libbpf's elf_resolve_syms_offsets)."""
    return _binary(path).resolve(names)


def resolve_pattern_offsets(path: str, pattern: str) -> list[FuncSymbol]:
    """Functions of ``path`` matching glob ``pattern`` (libbpf's elf_resolve_pattern_offsets)."""
    return _binary(path).match(pattern)


def archive_member(archive: str, member: str) -> tuple[int, bytes]:
    """(file offset, bytes) of ``member`` stored uncompressed in zip ``archive`` (an APK, say).

    libbpf's ``archive.zip!/lib/x.so`` form: a uprobe goes at the member's offset in the archive
    plus the function's offset in the member, so the member must be stored, not deflated.
    """
    import zipfile

    try:
        with zipfile.ZipFile(archive) as z:
            info = z.getinfo(member)
            if info.compress_type != zipfile.ZIP_STORED:
                raise SymbolError(f"{archive}!/{member} is compressed; uprobes need members "
                                  "stored uncompressed", path=archive)
            with open(archive, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise SymbolError(f"{archive}: bad local header for {member}", path=archive)
                name_len, extra_len = struct.unpack_from("<HH", local, 26)
                start = info.header_offset + 30 + name_len + extra_len
                f.seek(start)
                data = f.read(info.file_size)
    except KeyError:
        raise SymbolError(f"{archive} has no member {member!r}", path=archive) from None
    except (OSError, zipfile.BadZipFile) as e:
        raise SymbolError(f"cannot read archive {archive}: {e}", path=archive) from None
    return start, data


def find_func_offset_in_archive(archive: str, member: str, name: str) -> int:
    """File offset, within zip ``archive``, of function ``name`` of stored ELF ``member``."""
    start, data = archive_member(archive, member)
    return start + ElfBinary(data, f"{archive}!/{member}").find(name)


def list_functions(path: str) -> Iterator[FuncSymbol]:
    """Every defined function symbol of ``path`` (.dynsym first, then .symtab)."""
    return iter(_binary(path).functions)
