"""Read an eBPF ELF object (ELF64, little-endian, EM_BPF, ET_REL) into plain data.

The layout of a relocatable ELF64 file is small and fixed, so this module reads
the headers with :mod:`struct` directly instead of going through pyelftools:
that keeps a whole object parse well under a millisecond (pyelftools costs
~50 ms to import and ~3 ms to walk a small object), and every offset and count
can be checked against the data length before it is used, so corrupt input
raises :class:`~pyebpf.errors.ObjectError` instead of an arbitrary exception.
"""

from __future__ import annotations

import struct

from .._record import Record
from ..errors import ObjectError

# e_ident / header values
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_REL = 1
EM_BPF = 247

# section types
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_LLVM_ADDRSIG = 0x6FFF4C03

# section flags
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

# special section indexes
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

# symbol binding / type / visibility
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2
STV_PROTECTED = 3

# BPF relocation types
R_BPF_NONE = 0
R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4
R_BPF_64_32 = 10

# A SHT_NOBITS (.bss) section has no bytes in the file, so its size cannot be
# checked against the data length; the kernel refuses array values above
# KMALLOC_MAX_SIZE (4 MiB on x86-64) anyway, so 64 MiB rejects nothing loadable
# while keeping a corrupt header from making us allocate gigabytes.
MAX_NOBITS_SIZE = 64 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")
_RELA = struct.Struct("<QQq")


class Section(Record):
    """One ELF section header plus its bytes (``b""`` for SHT_NOBITS)."""

    index: int
    name: str
    type: int
    flags: int
    size: int
    data: bytes
    link: int
    info: int
    addralign: int
    entsize: int

    def __init__(self, index: int, name: str, type: int, flags: int, size: int, data: bytes,
                 link: int = 0, info: int = 0, addralign: int = 0, entsize: int = 0) -> None:
        self.index = index
        self.name = name
        self.type = type
        self.flags = flags
        self.size = size
        self.data = data
        self.link = link
        self.info = info
        self.addralign = addralign
        self.entsize = entsize

    @property
    def is_exec(self) -> bool:
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)


class Symbol(Record):
    """One ``.symtab`` entry."""

    index: int
    name: str
    value: int
    size: int
    bind: int
    type: int
    visibility: int
    shndx: int

    def __init__(self, index: int, name: str, value: int, size: int, bind: int, type: int,
                 visibility: int, shndx: int) -> None:
        self.index = index
        self.name = name
        self.value = value
        self.size = size
        self.bind = bind
        self.type = type
        self.visibility = visibility
        self.shndx = shndx


class Reloc(Record):
    """One REL entry: patch ``offset`` (inside the target section) with symbol ``sym``."""

    offset: int
    sym: int
    type: int

    def __init__(self, offset: int, sym: int, type: int) -> None:
        self.offset = offset
        self.sym = sym
        self.type = type


class ElfObject(Record):
    """The parts of an eBPF object file the object layer needs."""

    path: str | None
    sections: list[Section]
    symbols: list[Symbol]
    relocs: dict[int, list[Reloc]]
    symtab_index: int

    def __init__(self, path: str | None, sections: list[Section], symbols: list[Symbol],
                 relocs: dict[int, list[Reloc]] | None = None, symtab_index: int = 0) -> None:
        self.path = path
        self.sections = sections
        self.symbols = symbols
        self.relocs = {} if relocs is None else relocs
        self.symtab_index = symtab_index

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None


def _cstr(table: bytes, off: int, what: str, path: str | None) -> str:
    if off >= len(table):
        if off == 0:
            return ""
        raise ObjectError(f"{what}: string offset {off} outside string table", path=path)
    end = table.find(b"\0", off)
    if end < 0:
        raise ObjectError(f"{what}: unterminated string at offset {off}", path=path)
    return table[off:end].decode("utf-8", errors="replace")


def read_elf(data: bytes, path: str | None = None) -> ElfObject:
    """Parse ``data`` as a BPF relocatable object.

    Raises :class:`ObjectError` for anything that is not a well-formed
    ELF64 little-endian EM_BPF ET_REL file.
    """
    data = bytes(data)
    size = len(data)
    if size < _EHDR.size or data[:4] != b"\x7fELF":
        raise ObjectError("not an ELF file", path=path)
    (ident, e_type, e_machine, _ver, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize,
     _phnum, e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(data, 0)
    if ident[4] != ELFCLASS64:
        raise ObjectError("not a 64-bit ELF file", path=path)
    if ident[5] != ELFDATA2LSB:
        raise ObjectError("not a little-endian ELF file (big-endian BPF is unsupported)", path=path)
    if e_machine != EM_BPF:
        raise ObjectError(f"ELF machine is {e_machine}, expected EM_BPF ({EM_BPF})", path=path)
    if e_type != ET_REL:
        raise ObjectError(f"ELF type is {e_type}, expected ET_REL (relocatable object)",
                          path=path)
    if e_shoff == 0:
        raise ObjectError("ELF file has no section headers", path=path)
    if e_shentsize != _SHDR.size:
        raise ObjectError(f"bad section header size {e_shentsize}", path=path)

    shnum = e_shnum
    shstrndx = e_shstrndx
    if e_shoff + _SHDR.size > size:
        raise ObjectError("section header table outside the file", path=path)
    if shnum == 0 or shstrndx == SHN_XINDEX:
        # extended numbering: the real values live in section header 0
        _n, _t, _f, _a, _o, sz0, link0, _i, _al, _es = _SHDR.unpack_from(data, e_shoff)
        if shnum == 0:
            shnum = sz0
        if shstrndx == SHN_XINDEX:
            shstrndx = link0
    if shnum == 0 or e_shoff + shnum * _SHDR.size > size:
        raise ObjectError("section header table outside the file", path=path)

    raw: list[tuple[int, int, int, int, int, int, int, int, int, int]] = []
    for i in range(shnum):
        raw.append(_SHDR.unpack_from(data, e_shoff + i * _SHDR.size))

    def sec_bytes(i: int) -> bytes:
        _n, typ, _f, _a, off, sz, *_ = raw[i]
        if typ == SHT_NOBITS or typ == SHT_NULL:
            return b""
        if off > size or sz > size - off:
            raise ObjectError(f"section #{i} data (offset {off}, size {sz}) outside the file",
                              path=path)
        return data[off:off + sz]

    if shstrndx >= shnum:
        raise ObjectError(f"section name table index {shstrndx} out of range", path=path)
    shstr = sec_bytes(shstrndx)

    sections: list[Section] = []
    for i, (name_off, typ, flags, _addr, _off, sz, link, info, align, entsize) in enumerate(raw):
        name = _cstr(shstr, name_off, f"section #{i} name", path) if i else ""
        if typ == SHT_NOBITS and sz > MAX_NOBITS_SIZE:
            raise ObjectError(f"SHT_NOBITS section of {sz} bytes is too large", path=path,
                              section=name)
        body = sec_bytes(i)
        sections.append(Section(i, name, typ, flags, sz if typ == SHT_NOBITS else len(body),
                                body, link, info, align, entsize))

    symtab_idx = 0
    for sec in sections:
        if sec.type == SHT_SYMTAB:
            if symtab_idx:
                raise ObjectError("multiple symbol tables", path=path)
            symtab_idx = sec.index
    symbols: list[Symbol] = []
    if symtab_idx:
        symtab = sections[symtab_idx]
        if symtab.entsize not in (0, _SYM.size):
            raise ObjectError(f"bad symbol entry size {symtab.entsize}", path=path,
                              section=symtab.name)
        if symtab.link >= len(sections) or sections[symtab.link].type != SHT_STRTAB:
            raise ObjectError("symbol table has no string table", path=path, section=symtab.name)
        strtab = sections[symtab.link].data
        nsyms = len(symtab.data) // _SYM.size
        for i, (nm, st_info, st_other, shndx, value, sz) in enumerate(
                _SYM.iter_unpack(symtab.data[:nsyms * _SYM.size])):
            symbols.append(Symbol(i, _cstr(strtab, nm, f"symbol #{i} name", path), value, sz,
                                  st_info >> 4, st_info & 0xF, st_other & 0x3, shndx))

    relocs: dict[int, list[Reloc]] = {}
    for sec in sections:
        if sec.type not in (SHT_REL, SHT_RELA):
            continue
        if sec.info == 0 or sec.info >= len(sections):
            raise ObjectError(f"relocation section targets invalid section #{sec.info}",
                              path=path, section=sec.name)
        if sec.link != symtab_idx or not symtab_idx:
            raise ObjectError("relocation section does not use the symbol table", path=path,
                              section=sec.name)
        st = _REL if sec.type == SHT_REL else _RELA
        if len(sec.data) % st.size:
            raise ObjectError("relocation section size is not a multiple of the entry size",
                              path=path, section=sec.name)
        out = relocs.setdefault(sec.info, [])
        for ent in st.iter_unpack(sec.data):
            r_info = ent[1]
            sym = r_info >> 32
            if sym >= len(symbols):
                raise ObjectError(f"relocation references symbol #{sym} out of range",
                                  path=path, section=sec.name)
            out.append(Reloc(ent[0], sym, r_info & 0xFFFFFFFF))

    return ElfObject(path, sections, symbols, relocs, symtab_idx)
