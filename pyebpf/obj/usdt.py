"""USDT probes (SystemTap SDT notes) of a user-space ELF binary, read as libbpf's usdt.c does.

Pure: reads files, makes no syscalls. A probe ``provider:name`` is one or more
``.note.stapsdt`` notes, each giving the address of a NOP (the probe site), the
link-time address of ``.stapsdt.base`` (to undo prelink shifts), an optional semaphore
address and an argument string such as ``-4@%eax 8@-8(%rbp) -4@$5``.

- :func:`read_usdt_elf` reads the headers, PT_LOAD segments and notes of a binary.
- :func:`find_usdt_probes` / :func:`list_usdt_probes` resolve notes into file offsets
  (what a uprobe attaches to) and semaphore offsets (a uprobe's ``ref_ctr_offset``).
- :func:`parse_usdt_args` turns x86-64 operand strings into :class:`UsdtArg` specs.
- :func:`encode_usdt_spec` lays a spec out as ``struct __bpf_usdt_spec`` of
  ``<bpf/usdt.bpf.h>``: the libbpf 1.1 layout, or one read from the object's BTF.
"""

from __future__ import annotations

import enum
import os
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from .._record import Frozen, Record
from ..errors import ObjectError

__all__ = [
    "LIBBPF_1_1_LAYOUT",
    "MAX_ARGS",
    "ArgKind",
    "Segment",
    "SpecLayout",
    "UsdtArg",
    "UsdtElf",
    "UsdtError",
    "UsdtNote",
    "UsdtProbe",
    "decode_usdt_spec",
    "encode_usdt_spec",
    "find_usdt_probes",
    "list_usdt_probes",
    "parse_stapsdt_notes",
    "parse_usdt_arg",
    "parse_usdt_args",
    "pt_regs_offset",
    "read_usdt_elf",
    "resolve_notes",
    "spec_layout_from_btf",
    "vma_address",
    "vma_segments",
]

NOTE_SECTION = ".note.stapsdt"
BASE_SECTION = ".stapsdt.base"
NOTE_NAME = b"stapsdt"
NOTE_TYPE = 3
# BPF_USDT_MAX_ARG_CNT of usdt.bpf.h
MAX_ARGS = 12

ET_EXEC = 2
ET_DYN = 3
EM_X86_64 = 62
PT_LOAD = 1
PF_X = 1
SHT_NOTE = 7

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")
_U64 = (1 << 64) - 1
# bounds on what a header may make us read, so a corrupt file cannot ask for gigabytes
_MAX_HEADERS = 1 << 16
_MAX_NOTES_BYTES = 64 << 20


class UsdtError(ObjectError):
    """A binary's USDT notes are missing, malformed or use operands pyebpf cannot read."""


class ArgKind(enum.IntEnum):
    """``enum __bpf_usdt_arg_type`` of usdt.bpf.h (SIB needs the libbpf >= 1.7 header)."""

    CONST = 0
    REG = 1
    REG_DEREF = 2
    SIB = 3


# offsetof(struct pt_regs, reg) on x86-64, under every name an operand may use for it
_X86_64_REGS: dict[str, int] = {}
for _off, _names in (
    (128, ("rip", "eip")),
    (80, ("rax", "eax", "ax", "al")),
    (40, ("rbx", "ebx", "bx", "bl")),
    (88, ("rcx", "ecx", "cx", "cl")),
    (96, ("rdx", "edx", "dx", "dl")),
    (104, ("rsi", "esi", "si", "sil")),
    (112, ("rdi", "edi", "di", "dil")),
    (32, ("rbp", "ebp", "bp", "bpl")),
    (152, ("rsp", "esp", "sp", "spl")),
    (72, ("r8", "r8d", "r8w", "r8b")),
    (64, ("r9", "r9d", "r9w", "r9b")),
    (56, ("r10", "r10d", "r10w", "r10b")),
    (48, ("r11", "r11d", "r11w", "r11b")),
    (24, ("r12", "r12d", "r12w", "r12b")),
    (16, ("r13", "r13d", "r13w", "r13b")),
    (8, ("r14", "r14d", "r14w", "r14b")),
    (0, ("r15", "r15d", "r15w", "r15b")),
):
    for _n in _names:
        _X86_64_REGS[_n] = _off


def pt_regs_offset(reg: str) -> int:
    """offsetof(struct pt_regs, ``reg``) on x86-64 (``rax``, ``eax``, ``ax``, ``al``, ...)."""
    try:
        return _X86_64_REGS[reg]
    except KeyError:
        raise UsdtError(f"unrecognized x86-64 register '%{reg}' in a USDT argument") from None


class UsdtArg(Frozen):
    """One parsed USDT argument: where its value is and how wide it is.

    ``size`` is 1, 2, 4 or 8 bytes; ``signed`` says whether to sign-extend. CONST:
    ``val_off`` is the value. REG: the value is register ``reg``. REG_DEREF: it is in
    memory at ``reg + val_off``. SIB: at ``reg + idx_reg * scale + val_off``.
    """

    text: str
    kind: ArgKind
    size: int
    signed: bool
    val_off: int
    reg: str | None
    reg_off: int
    idx_reg: str | None
    idx_reg_off: int
    scale: int

    def __init__(self, text: str, kind: ArgKind, size: int, signed: bool, val_off: int = 0,
                 reg: str | None = None, reg_off: int = 0, idx_reg: str | None = None,
                 idx_reg_off: int = 0, scale: int = 1) -> None:
        for k, v in (("text", text), ("kind", kind), ("size", size), ("signed", signed),
                     ("val_off", val_off), ("reg", reg), ("reg_off", reg_off),
                     ("idx_reg", idx_reg), ("idx_reg_off", idx_reg_off), ("scale", scale)):
            object.__setattr__(self, k, v)

    @property
    def bitshift(self) -> int:
        """Bits to clear (and sign-extend from) to widen the value to 64 bits."""
        return 64 - 8 * self.size


# The operand grammar of libbpf's x86 parse_usdt_arg (sscanf patterns), as regexes.
# Tried in libbpf's order: SIB, deref with offset, deref without, register, constant.
_N = r"([+-]?\d+)"
_SIZE = r"\s*" + _N + r"\s*@\s*"
_SIB = re.compile(_SIZE + _N + r"?\s*\(\s*%([^,)]{1,15}?)\s*,\s*%([^,)]{1,15}?)\s*"
                  r"(?:,\s*" + _N + r"\s*)?\)\s*")
_DEREF = re.compile(_SIZE + _N + r"?\s*\(\s*%([^)]{1,15}?)\s*\)\s*")
_REG = re.compile(_SIZE + r"%(\S{1,15})\s*")
_CONST = re.compile(_SIZE + r"\$" + _N + r"\s*")
_SYMBOLIC = re.compile(_SIZE + r"([A-Za-z_.][\w.$@]*(?:[+-]\d+)?)\(")
_SCALES = {1: 0, 2: 1, 4: 2, 8: 3}


def _to_u64_range(v: int, text: str) -> int:
    if not -(1 << 63) <= v <= _U64:
        raise UsdtError(f"USDT argument '{text}': value {v} does not fit in 64 bits")
    return v


def parse_usdt_arg(s: str, index: int = 0) -> tuple[UsdtArg, int]:
    """Parse the first x86-64 operand of ``s``; returns it and the characters consumed."""
    m = _SIB.match(s)
    if m:
        size, off, reg, idx, scale = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
        sc = int(scale) if scale is not None else 1
        if sc not in _SCALES:
            raise UsdtError(f"USDT argument #{index} '{m.group(0).strip()}': scale {sc} is not "
                            "1, 2, 4 or 8")
        kind, val, idx_off = ArgKind.SIB, int(off or 0), pt_regs_offset(idx.strip())
    else:
        idx, idx_off, sc = None, 0, 1
        m = _DEREF.match(s)
        if m:
            size, off, reg = m.group(1), m.group(2), m.group(3)
            kind, val = ArgKind.REG_DEREF, int(off or 0)
        else:
            m = _REG.match(s)
            if m:
                size, reg = m.group(1), m.group(2)
                kind, val = ArgKind.REG, 0
            else:
                m = _CONST.match(s)
                if not m:
                    bad = s.split(None, 1)[0] if s.strip() else s
                    sym = _SYMBOLIC.match(s)
                    why = (" (a symbol-relative operand: libbpf cannot read those either; "
                           "build the target so the argument is in a register or on the stack)"
                           if sym else "")
                    raise UsdtError(f"unrecognized USDT argument #{index} spec '{bad}'{why}")
                size, reg = m.group(1), None
                kind, val = ArgKind.CONST, int(m.group(2))
    text = m.group(0).strip()
    val = _to_u64_range(val, text)
    nsize = int(size)
    if abs(nsize) not in (1, 2, 4, 8):
        raise UsdtError(f"USDT argument #{index} '{text}': unsupported size {abs(nsize)} "
                        "(1, 2, 4 or 8 bytes)")
    reg_name = reg.strip() if reg is not None else None
    reg_off = pt_regs_offset(reg_name) if reg_name is not None else 0
    arg = UsdtArg(text, kind, abs(nsize), nsize < 0, val, reg_name, reg_off,
                  idx.strip() if idx is not None else None, idx_off, sc)
    return arg, m.end()


def parse_usdt_args(s: str, *, probe: str = "") -> list[UsdtArg]:
    """Parse a note's whole argument string (``"-4@%eax 8@-8(%rbp)"``) into specs."""
    out: list[UsdtArg] = []
    pos = 0
    try:
        while pos < len(s) and s[pos:].strip():
            if len(out) >= MAX_ARGS:
                raise UsdtError(f"too many USDT arguments (more than {MAX_ARGS}) in '{s}'")
            arg, n = parse_usdt_arg(s[pos:], len(out))
            out.append(arg)
            pos += n
    except UsdtError as e:
        if probe:
            raise UsdtError(f"{probe}: {e}") from None
        raise
    return out


# --- struct __bpf_usdt_spec -------------------------------------------------------------------


class SpecLayout(Frozen):
    """Where usdt.bpf.h puts each field of ``struct __bpf_usdt_spec`` (bit offsets and widths).

    ``arg_fields`` maps each ``struct __bpf_usdt_arg_spec`` member to (bit offset, bits)
    inside one arg spec; ``idx_reg_off``/``scale_bitshift`` exist from libbpf 1.7 on.
    """

    size: int
    arg_size: int
    args_off: int
    max_args: int
    cookie_off: int
    cnt_off: int
    arg_fields: tuple[tuple[str, int, int], ...]
    sib: bool

    def __init__(self, size: int, arg_size: int, args_off: int, max_args: int, cookie_off: int,
                 cnt_off: int, arg_fields: Iterable[tuple[str, int, int]]) -> None:
        fields = tuple(arg_fields)
        names = {f[0] for f in fields}
        for k, v in (("size", size), ("arg_size", arg_size), ("args_off", args_off),
                     ("max_args", max_args), ("cookie_off", cookie_off), ("cnt_off", cnt_off),
                     ("arg_fields", fields),
                     ("sib", {"idx_reg_off", "scale_bitshift"} <= names)):
            object.__setattr__(self, k, v)

    def field(self, name: str) -> tuple[int, int] | None:
        for n, bit, bits in self.arg_fields:
            if n == name:
                return bit, bits
        return None


# the layout of libbpf 1.1's usdt.bpf.h (the installed one): 16-byte arg specs, 208 bytes
LIBBPF_1_1_LAYOUT = SpecLayout(
    size=208, arg_size=16, args_off=0, max_args=MAX_ARGS, cookie_off=192, cnt_off=200,
    arg_fields=(("val_off", 0, 64), ("arg_type", 64, 32), ("reg_off", 96, 16),
                ("arg_signed", 112, 8), ("arg_bitshift", 120, 8)),
)

_REQUIRED_ARG_FIELDS = ("val_off", "arg_type", "reg_off", "arg_signed", "arg_bitshift")


def _put_bits(buf: bytearray, bit: int, bits: int, value: int) -> None:
    """Store ``value`` in ``bits`` bits at bit ``bit`` of ``buf`` (little-endian bitfields)."""
    start, end = bit // 8, (bit + bits + 7) // 8
    word = int.from_bytes(buf[start:end], "little")
    shift = bit - start * 8
    mask = ((1 << bits) - 1) << shift
    word = (word & ~mask) | ((value << shift) & mask)
    buf[start:end] = word.to_bytes(end - start, "little")


def _get_bits(buf: bytes, bit: int, bits: int) -> int:
    start, end = bit // 8, (bit + bits + 7) // 8
    return (int.from_bytes(buf[start:end], "little") >> (bit - start * 8)) & ((1 << bits) - 1)


def encode_usdt_spec(args: Sequence[UsdtArg], cookie: int = 0,
                     layout: SpecLayout = LIBBPF_1_1_LAYOUT) -> bytes:
    """The bytes of ``struct __bpf_usdt_spec`` for ``args`` and the USDT ``cookie``."""
    if len(args) > layout.max_args:
        raise UsdtError(f"{len(args)} USDT arguments, the object's usdt.bpf.h holds "
                        f"{layout.max_args}")
    buf = bytearray(layout.size)
    for i, a in enumerate(args):
        if a.kind == ArgKind.SIB and not layout.sib:
            raise UsdtError(f"USDT argument #{i} '{a.text}' is a scale-index-base operand; "
                            "the object was built with a usdt.bpf.h that cannot read those "
                            "(libbpf >= 1.7 headers can)")
        base = (layout.args_off + i * layout.arg_size) * 8
        values = {"val_off": a.val_off & _U64, "arg_type": int(a.kind),
                  "reg_off": a.reg_off & 0xFFFF, "arg_signed": int(a.signed),
                  "arg_bitshift": a.bitshift, "idx_reg_off": a.idx_reg_off,
                  "scale_bitshift": _SCALES[a.scale]}
        for name, bit, bits in layout.arg_fields:
            if name in values:
                _put_bits(buf, base + bit, bits, values[name])
    buf[layout.cookie_off:layout.cookie_off + 8] = (cookie & _U64).to_bytes(8, "little")
    buf[layout.cnt_off:layout.cnt_off + 2] = len(args).to_bytes(2, "little")
    return bytes(buf)


def decode_usdt_spec(data: bytes, layout: SpecLayout = LIBBPF_1_1_LAYOUT
                     ) -> tuple[list[dict[str, int]], int]:
    """Inverse of :func:`encode_usdt_spec`: (per-argument field dicts, cookie)."""
    if len(data) < layout.size:
        raise UsdtError(f"a USDT spec is {layout.size} bytes, got {len(data)}")
    cnt = int.from_bytes(data[layout.cnt_off:layout.cnt_off + 2], "little", signed=True)
    cookie = int.from_bytes(data[layout.cookie_off:layout.cookie_off + 8], "little")
    out = []
    for i in range(max(0, min(cnt, layout.max_args))):
        base = (layout.args_off + i * layout.arg_size) * 8
        out.append({name: _get_bits(data, base + bit, bits) for name, bit, bits in layout.arg_fields})
    return out, cookie


def spec_layout_from_btf(btf: Any) -> SpecLayout | None:
    """The layout of ``struct __bpf_usdt_spec`` as the object's BTF declares it, or None
    if the BTF lacks it (``btf``: a :class:`pyebpf.btf.spec.BTF`)."""
    try:
        spec_t = _find_struct(btf, "__bpf_usdt_spec")
        arg_t = _find_struct(btf, "__bpf_usdt_arg_spec")
        if spec_t is None or arg_t is None:
            return None
        members = {m.name: m for m in spec_t.members}
        if not {"args", "usdt_cookie", "arg_cnt"} <= members.keys():
            return None
        args_type = btf.type(_skip_mods(btf, members["args"].type))
        nelems = getattr(args_type, "nelems", None)
        if nelems is None:
            return None
        fields = []
        for m in arg_t.members:
            bits = m.bitfield_size or 8 * _sizeof(btf, m.type)
            fields.append((m.name, m.bit_offset, bits))
        if not set(_REQUIRED_ARG_FIELDS) <= {f[0] for f in fields}:
            return None
        return SpecLayout(size=spec_t.size, arg_size=arg_t.size,
                          args_off=members["args"].bit_offset // 8, max_args=nelems,
                          cookie_off=members["usdt_cookie"].bit_offset // 8,
                          cnt_off=members["arg_cnt"].bit_offset // 8, arg_fields=fields)
    except (LookupError, AttributeError, TypeError, ValueError):
        return None


def _find_struct(btf: Any, name: str) -> Any:
    for tid in btf.find(name):
        t = btf.type(tid)
        if getattr(t, "members", None) is not None and type(t).__name__ == "Struct":
            return t
    return None


def _skip_mods(btf: Any, tid: int) -> int:
    for _ in range(32):
        t = btf.type(tid)
        if type(t).__name__ in ("Typedef", "Const", "Volatile", "Restrict", "TypeTag"):
            tid = t.type
        else:
            return tid
    return tid


def _sizeof(btf: Any, tid: int) -> int:
    t = btf.type(_skip_mods(btf, tid))
    size = getattr(t, "size", None)
    if size is None:
        raise ValueError(f"type #{tid} has no size")
    return int(size)


# --- ELF notes and segments -------------------------------------------------------------------


class UsdtNote(Record):
    """One ``.note.stapsdt`` note as written by the compiler (addresses unadjusted)."""

    provider: str
    name: str
    args: str
    loc_addr: int
    base_addr: int
    sema_addr: int

    def __init__(self, provider: str, name: str, args: str, loc_addr: int, base_addr: int,
                 sema_addr: int) -> None:
        self.provider = provider
        self.name = name
        self.args = args
        self.loc_addr = loc_addr
        self.base_addr = base_addr
        self.sema_addr = sema_addr


class Segment(Record):
    """A loadable segment: virtual range [start, end) backed by the file at ``offset``."""

    start: int
    end: int
    offset: int
    is_exec: bool

    def __init__(self, start: int, end: int, offset: int, is_exec: bool) -> None:
        self.start = start
        self.end = end
        self.offset = offset
        self.is_exec = is_exec


class UsdtElf(Record):
    """What USDT attach needs from a binary: its type, loadable segments and notes."""

    path: str
    elf_type: int
    machine: int
    segments: list[Segment]
    base_addr: int
    notes: list[UsdtNote]

    def __init__(self, path: str, elf_type: int, machine: int, segments: list[Segment],
                 base_addr: int, notes: list[UsdtNote]) -> None:
        self.path = path
        self.elf_type = elf_type
        self.machine = machine
        self.segments = segments
        self.base_addr = base_addr
        self.notes = notes

    @property
    def is_shared(self) -> bool:
        """ET_DYN (a shared library or a PIE executable)."""
        return self.elf_type == ET_DYN


class UsdtProbe(Record):
    """One probe site, resolved: ``abs_ip`` is the (prelink-adjusted) virtual address,
    ``file_offset`` where a uprobe goes, ``sema_offset`` the semaphore's file offset
    (the uprobe's ``ref_ctr_offset``; 0 without a semaphore)."""

    provider: str
    name: str
    args: str
    loc_addr: int
    base_addr: int
    sema_addr: int
    abs_ip: int
    file_offset: int
    sema_offset: int

    def __init__(self, provider: str, name: str, args: str, loc_addr: int, base_addr: int,
                 sema_addr: int, abs_ip: int, file_offset: int, sema_offset: int) -> None:
        self.provider = provider
        self.name = name
        self.args = args
        self.loc_addr = loc_addr
        self.base_addr = base_addr
        self.sema_addr = sema_addr
        self.abs_ip = abs_ip
        self.file_offset = file_offset
        self.sema_offset = sema_offset

    @property
    def qualname(self) -> str:
        return f"{self.provider}:{self.name}"

    def parse_args(self) -> list[UsdtArg]:
        """The parsed argument specs (raises UsdtError for operands libbpf cannot read)."""
        return parse_usdt_args(self.args, probe=self.qualname)


def parse_stapsdt_notes(data: bytes, *, path: str | None = None) -> list[UsdtNote]:
    """Parse the bytes of a ``.note.stapsdt`` section (ELF64 notes) into :class:`UsdtNote`."""
    out: list[UsdtNote] = []
    off, n = 0, len(data)
    while off + _NHDR.size <= n:
        namesz, descsz, ntype = _NHDR.unpack_from(data, off)
        name_off = off + _NHDR.size
        desc_off = name_off + ((namesz + 3) & ~3)
        end = desc_off + ((descsz + 3) & ~3)
        if desc_off + descsz > n:
            raise UsdtError(f"USDT note at offset {off} runs past the section end",
                            path=path, section=NOTE_SECTION)
        name = data[name_off:name_off + namesz].rstrip(b"\0")
        if name != NOTE_NAME or ntype != NOTE_TYPE:
            raise UsdtError(f"note at offset {off} is not a stapsdt note (name {name!r}, "
                            f"type {ntype})", path=path, section=NOTE_SECTION)
        out.append(_parse_desc(data[desc_off:desc_off + descsz], off, path))
        off = end
    if off < n and data[off:].strip(b"\0"):
        raise UsdtError(f"trailing bytes after the last note (offset {off})",
                        path=path, section=NOTE_SECTION)
    return out


def _parse_desc(desc: bytes, off: int, path: str | None) -> UsdtNote:
    # 3 addresses, then provider\0 name\0 args\0 (the minimum is three empty strings)
    if len(desc) < 24 + 3:
        raise UsdtError(f"USDT note at offset {off} is too short ({len(desc)} bytes)",
                        path=path, section=NOTE_SECTION)
    loc, base, sema = struct.unpack_from("<QQQ", desc, 0)
    parts = desc[24:].split(b"\0")
    # split of "p\0n\0a\0" gives [p, n, a, ...]: all three must be terminated
    if len(parts) < 4 or not parts[1]:
        raise UsdtError(f"USDT note at offset {off} lacks a provider, name or argument string",
                        path=path, section=NOTE_SECTION)
    provider, name, args = (p.decode("utf-8", "replace") for p in parts[:3])
    if args.startswith(":"):  # libbpf treats a leading ':' as no arguments
        args = ""
    return UsdtNote(provider, name, args, loc, base, sema)


def _pread(f: Any, off: int, size: int, what: str, path: str) -> bytes:
    # header values are untrusted: check them against the file before seeking
    if off < 0 or size < 0 or off + size > os.fstat(f.fileno()).st_size:
        raise UsdtError(f"{what} (offset {off}, {size} bytes) lies outside the file", path=path)
    f.seek(off)
    data: bytes = f.read(size)
    if len(data) != size:
        raise UsdtError(f"{what} (offset {off}, {size} bytes) lies outside the file", path=path)
    return data


def read_usdt_elf(path: str) -> UsdtElf:
    """Read the ELF header, PT_LOAD segments, ``.stapsdt.base`` and USDT notes of ``path``.

    Raises UsdtError if the file is not a 64-bit little-endian ET_EXEC/ET_DYN ELF or has no
    ``.note.stapsdt`` section, OSError if it cannot be read.
    """
    with open(path, "rb") as f:
        hdr = f.read(_EHDR.size)
        if len(hdr) < _EHDR.size or hdr[:4] != b"\x7fELF":
            raise UsdtError("not an ELF file", path=path)
        (ident, e_type, machine, _v, _entry, phoff, shoff, _fl, _eh, phentsize, phnum,
         shentsize, shnum, shstrndx) = _EHDR.unpack(hdr)
        if ident[4] != 2:
            raise UsdtError("not a 64-bit ELF file (32-bit binaries are not supported)", path=path)
        if ident[5] != 1:
            raise UsdtError("ELF endianness does not match the host (little-endian)", path=path)
        if e_type not in (ET_EXEC, ET_DYN):
            raise UsdtError(f"ELF type {e_type} is not supported: only executables (ET_EXEC) "
                            "and shared objects (ET_DYN) carry USDT probes", path=path)
        segments = _read_segments(f, path, phoff, phentsize, phnum)
        secs = _read_sections(f, path, shoff, shentsize, shnum, shstrndx)
    notes_sec = secs.get(NOTE_SECTION)
    if notes_sec is None:
        raise UsdtError(f"no USDT notes: the binary has no {NOTE_SECTION} section (was it "
                        "built with <sys/sdt.h> probes?)", path=path)
    if notes_sec[0] != SHT_NOTE:
        raise UsdtError(f"{NOTE_SECTION} is not a SHT_NOTE section", path=path)
    base = secs.get(BASE_SECTION)
    notes = parse_stapsdt_notes(notes_sec[3], path=path)
    return UsdtElf(path, e_type, machine, segments, base[1] if base else 0, notes)


def _read_segments(f: Any, path: str, phoff: int, phentsize: int, phnum: int) -> list[Segment]:
    if phnum and phentsize != _PHDR.size:
        raise UsdtError(f"bad program header size {phentsize}", path=path)
    if phnum > _MAX_HEADERS:
        raise UsdtError(f"{phnum} program headers", path=path)
    raw = _pread(f, phoff, phnum * _PHDR.size, "program header table", path) if phnum else b""
    segs = [Segment(vaddr, vaddr + memsz, offset, bool(flags & PF_X))
            for ptype, flags, offset, vaddr, _pa, _fs, memsz, _al in _PHDR.iter_unpack(raw)
            if ptype == PT_LOAD]
    if not segs:
        raise UsdtError("no PT_LOAD program headers", path=path)
    segs.sort(key=lambda s: s.start)
    return segs


def _read_sections(f: Any, path: str, shoff: int, shentsize: int, shnum: int, shstrndx: int
                   ) -> dict[str, tuple[int, int, int, bytes]]:
    """name -> (type, addr, size, bytes) for the sections USDT needs (bytes of the notes only)."""
    if shoff == 0:
        raise UsdtError("the binary has no section headers", path=path)
    if shentsize != _SHDR.size:
        raise UsdtError(f"bad section header size {shentsize}", path=path)
    if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering: real values in header 0
        _n, _t, _f, _a, _o, sz0, link0, *_ = _SHDR.unpack(
            _pread(f, shoff, _SHDR.size, "section header 0", path))
        shnum = shnum or sz0
        shstrndx = link0 if shstrndx == 0xFFFF else shstrndx
    if shnum > _MAX_HEADERS or shstrndx >= shnum:
        raise UsdtError("corrupt section header table", path=path)
    raw = list(_SHDR.iter_unpack(_pread(f, shoff, shnum * _SHDR.size, "section header table",
                                        path)))
    _n, _t, _f, _a, str_off, str_size, *_ = raw[shstrndx]
    if str_size > _MAX_NOTES_BYTES:
        raise UsdtError("section name table too large", path=path)
    names = _pread(f, str_off, str_size, "section name table", path)
    out: dict[str, tuple[int, int, int, bytes]] = {}
    for name_off, typ, _flags, addr, off, size, *_ in raw:
        end = names.find(b"\0", name_off)
        if name_off >= len(names) or end < 0:
            continue
        name = names[name_off:end].decode("latin-1")
        if name in out or name not in (NOTE_SECTION, BASE_SECTION):
            continue
        body = b""
        if name == NOTE_SECTION:
            if size > _MAX_NOTES_BYTES:
                raise UsdtError(f"{NOTE_SECTION} of {size} bytes is too large", path=path)
            body = _pread(f, off, size, NOTE_SECTION, path)
        out[name] = (typ, addr, size, body)
    return out


def _find_seg(segs: Sequence[Segment], addr: int) -> Segment | None:
    for s in segs:
        if s.start <= addr < s.end:
            return s
    return None


def resolve_notes(elf: UsdtElf, provider: str | None = None, name: str | None = None
                  ) -> list[UsdtProbe]:
    """Turn the notes of ``elf`` (those of ``provider``/``name`` when given) into probes with
    file offsets, as libbpf's collect_usdt_targets does; raises UsdtError when a site or
    semaphore lies in no suitable segment."""
    out = []
    for note in elf.notes:
        if (provider is not None and note.provider != provider) or (
                name is not None and note.name != name):
            continue
        what = f"{note.provider}:{note.name}"
        # prelink moves sections but not the notes; .stapsdt.base tells by how much.
        # libbpf applies the shift to the probe address only, not to the semaphore.
        abs_ip = note.loc_addr
        if elf.base_addr and note.base_addr:
            abs_ip = (abs_ip + elf.base_addr - note.base_addr) & _U64
        seg = _find_seg(elf.segments, abs_ip)
        if seg is None:
            raise UsdtError(f"{what}: no loadable segment holds the probe address {abs_ip:#x}",
                            path=elf.path)
        if not seg.is_exec:
            raise UsdtError(f"{what}: the probe address {abs_ip:#x} is in a non-executable "
                            f"segment [{seg.start:#x}, {seg.end:#x})", path=elf.path)
        file_offset = abs_ip - seg.start + seg.offset
        sema_offset = 0
        if note.sema_addr:
            sseg = _find_seg(elf.segments, note.sema_addr)
            if sseg is None:
                raise UsdtError(f"{what}: no loadable segment holds the semaphore at "
                                f"{note.sema_addr:#x}", path=elf.path)
            if sseg.is_exec:
                raise UsdtError(f"{what}: the semaphore at {note.sema_addr:#x} is in an "
                                "executable segment", path=elf.path)
            sema_offset = note.sema_addr - sseg.start + sseg.offset
        out.append(UsdtProbe(note.provider, note.name, note.args, note.loc_addr, note.base_addr,
                             note.sema_addr, abs_ip, file_offset, sema_offset))
    return out


def list_usdt_probes(path: str | UsdtElf) -> list[UsdtProbe]:
    """Every USDT probe site of a binary, resolved (one entry per site, in note order)."""
    elf = path if isinstance(path, UsdtElf) else read_usdt_elf(path)
    return resolve_notes(elf)


def find_usdt_probes(path: str | UsdtElf, provider: str, name: str) -> list[UsdtProbe]:
    """The sites of probe ``provider:name``; UsdtError naming the probes that exist if none."""
    elf = path if isinstance(path, UsdtElf) else read_usdt_elf(path)
    found = resolve_notes(elf, provider, name)
    if not found:
        have = sorted({f"{n.provider}:{n.name}" for n in elf.notes})
        shown = ", ".join(have[:40]) + (f", ... ({len(have)} in all)" if len(have) > 40 else "")
        raise UsdtError(f"no USDT probe {provider}:{name}; the binary has: {shown or 'none'}",
                        path=elf.path)
    return found


def vma_segments(maps_text: str, path: str) -> list[Segment]:
    """Executable mappings of ``path`` in a ``/proc/PID/maps`` text, as Segments whose
    ``offset`` is the file offset of ``start`` (libbpf's parse_vma_segs)."""
    out = []
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[5].strip() != path:
            continue
        try:
            lo, hi = (int(x, 16) for x in parts[0].split("-", 1))
            off = int(parts[2], 16)
        except ValueError:
            continue
        if len(parts[1]) > 2 and parts[1][2] == "x":
            out.append(Segment(lo, hi, off, True))
    out.sort(key=lambda s: s.start)
    return out


def vma_address(segs: Sequence[Segment], file_offset: int) -> int | None:
    """The run-time address of ``file_offset`` in a mapping from :func:`vma_segments`."""
    for s in segs:
        if s.offset <= file_offset < s.offset + (s.end - s.start):
            return s.start - s.offset + file_offset
    return None

