"""BTF.ext: per-program func_info, line_info and CO-RE relocation records.

In the object file every record's ``insn_off`` is a *byte* offset into its ELF
section. :func:`parse_btf_ext` converts it to an *instruction index* (byte offset
// 8), which is what everything downstream works with: the kernel's
bpf_func_info/bpf_line_info for BPF_PROG_LOAD and libbpf's CO-RE engine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Any, NamedTuple

from .._record import Record
from ..errors import BTFError
from .spec import BTF, BTF_MAGIC

__all__ = [
    "BTFExt",
    "CoreRelo",
    "CoreReloKind",
    "FuncInfo",
    "LineInfo",
    "ext_strings",
    "pack_func_info",
    "pack_line_info",
    "parse_btf_ext",
    "write_btf_ext",
]

INSN_SIZE = 8
FUNC_INFO_SIZE = 8  # struct bpf_func_info
LINE_INFO_SIZE = 16  # struct bpf_line_info
CORE_RELO_SIZE = 16  # struct bpf_core_relo
_EXT_HEADER_MIN = 24  # up to line_info_len; core_relo_* came later
_EXT_HEADER_CORE = 32


class CoreReloKind(IntEnum):
    """enum bpf_core_relo_kind (include/uapi/linux/bpf.h)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


class FuncInfo(Record):
    """A function starts at instruction ``insn_off`` and has BTF FUNC ``type_id``."""

    __slots__ = ("insn_off", "type_id")
    insn_off: int  # instruction index within the ELF section
    type_id: int

    def __init__(self, insn_off: int, type_id: int) -> None:
        self.insn_off = insn_off
        self.type_id = type_id


class LineInfo(Record):
    """Instruction ``insn_off`` comes from ``file_name``:``line``:``col`` (source text ``line_text``)."""

    __slots__ = ("insn_off", "file_name_off", "line_off", "line", "col", "file_name", "line_text")
    insn_off: int  # instruction index within the ELF section
    file_name_off: int  # offsets into the object's BTF string section
    line_off: int
    line: int
    col: int
    file_name: str
    line_text: str

    def __init__(self, insn_off: int, file_name_off: int, line_off: int, line: int, col: int,
                 file_name: str = "", line_text: str = "") -> None:
        self.insn_off = insn_off
        self.file_name_off = file_name_off
        self.line_off = line_off
        self.line = line
        self.col = col
        self.file_name = file_name
        self.line_text = line_text

    @property
    def line_col(self) -> int:
        """The packed ``line << 10 | col`` as stored in the file."""
        return (self.line << 10) | self.col


class CoreRelo(Record):
    """One CO-RE relocation: patch instruction ``insn_off`` for ``access_str`` of ``type_id``."""

    __slots__ = ("insn_off", "type_id", "access_str", "kind", "access_str_off")
    insn_off: int  # instruction index within the ELF section
    type_id: int  # local (object BTF) root type id
    access_str: str  # e.g. "0:1:2"
    kind: CoreReloKind | int  # an int when the kind is newer than this library
    access_str_off: int

    def __init__(self, insn_off: int, type_id: int, access_str: str, kind: CoreReloKind | int,
                 access_str_off: int = 0) -> None:
        self.insn_off = insn_off
        self.type_id = type_id
        self.access_str = access_str
        self.kind = kind
        self.access_str_off = access_str_off


class BTFExt(Record):
    """Parsed BTF.ext, records grouped by ELF section name, in file order."""

    __slots__ = ("func_info", "line_info", "core_relos", "func_info_rec_size",
                 "line_info_rec_size", "core_relo_rec_size")
    func_info: dict[str, list[FuncInfo]]
    line_info: dict[str, list[LineInfo]]
    core_relos: dict[str, list[CoreRelo]]
    func_info_rec_size: int  # as found in the file
    line_info_rec_size: int
    core_relo_rec_size: int

    def __init__(self, func_info: dict[str, list[FuncInfo]] | None = None,
                 line_info: dict[str, list[LineInfo]] | None = None,
                 core_relos: dict[str, list[CoreRelo]] | None = None,
                 func_info_rec_size: int = FUNC_INFO_SIZE, line_info_rec_size: int = LINE_INFO_SIZE,
                 core_relo_rec_size: int = CORE_RELO_SIZE) -> None:
        self.func_info = {} if func_info is None else func_info
        self.line_info = {} if line_info is None else line_info
        self.core_relos = {} if core_relos is None else core_relos
        self.func_info_rec_size = func_info_rec_size
        self.line_info_rec_size = line_info_rec_size
        self.core_relo_rec_size = core_relo_rec_size


def _sub_sections(
    data: bytes, off: int, length: int, what: str, min_rec: int, btf: BTF
) -> tuple[int, list[tuple[str, int, int]]]:
    """Split one info sub-section into (section name, first record offset, count)."""
    if off % 4:
        raise BTFError(f".BTF.ext {what} section is not 4-byte aligned")
    if length < 4:
        raise BTFError(f".BTF.ext {what} section too short for rec_size")
    end = off + length
    (rec_size,) = struct.unpack_from("<I", data, off)
    if rec_size < min_rec or rec_size % 4:
        raise BTFError(f".BTF.ext {what}: bad rec_size {rec_size} (need >= {min_rec}, 4-aligned)")
    pos = off + 4
    out = []
    while pos < end:
        if pos + 8 > end:
            raise BTFError(f".BTF.ext {what}: truncated section header")
        name_off, num = struct.unpack_from("<II", data, pos)
        pos += 8
        if num == 0:
            raise BTFError(f".BTF.ext {what}: section with no records")
        if num * rec_size > end - pos:
            raise BTFError(f".BTF.ext {what}: {num} records run past the end")
        name = btf.string(name_off)
        if not name:
            raise BTFError(f".BTF.ext {what}: empty section name")
        out.append((name, pos, num))
        pos += num * rec_size
    return rec_size, out


def _insn(byte_off: int, what: str) -> int:
    if byte_off % INSN_SIZE:
        raise BTFError(f".BTF.ext {what}: insn_off {byte_off} is not a multiple of 8")
    return byte_off // INSN_SIZE


class _Header(NamedTuple):
    version: int
    flags: int
    hdr_len: int
    func_info_off: int
    func_info_len: int
    line_info_off: int
    line_info_len: int
    core_relo_off: int | None
    core_relo_len: int | None


def _parse_header(data: bytes, hdr_len: int) -> _Header:
    # Hand-written twin of formats.btf_ext_header (a test checks they agree):
    # importing construct costs ~12 ms, a fifth of a whole CLI run's budget.
    _magic, version, flags, _hl, fo, fl, lo, ll = struct.unpack_from("<HBBIIIII", data, 0)
    co = cl = None
    if hdr_len >= 32:
        co, cl = struct.unpack_from("<II", data, 24)
    return _Header(version, flags, hdr_len, fo, fl, lo, ll, co, cl)


def parse_btf_ext(data: bytes | bytearray | memoryview, btf: BTF) -> BTFExt:
    """Parse a ``.BTF.ext`` section; strings are resolved in ``btf`` (the object's BTF).

    Records larger than known (a newer format) are accepted and their extra bytes
    skipped; smaller ones are rejected. Every ``insn_off`` becomes an instruction index.
    """
    data = bytes(data)
    if len(data) < 4:
        raise BTFError(".BTF.ext too short for a header")
    magic = int.from_bytes(data[:2], "little")
    if magic != BTF_MAGIC:
        if magic == 0x9FEB:
            raise BTFError("big-endian BTF.ext not supported")
        raise BTFError(f"bad .BTF.ext magic {magic:#06x}")
    if len(data) < _EXT_HEADER_MIN:
        raise BTFError(".BTF.ext too short for a header")
    (hdr_len,) = struct.unpack_from("<I", data, 4)
    if hdr_len < _EXT_HEADER_MIN or hdr_len > len(data):
        raise BTFError(f"bad .BTF.ext header length {hdr_len}")
    hdr = _parse_header(data, hdr_len)
    if hdr.version != 1:
        raise BTFError(f"unsupported .BTF.ext version {hdr.version}")
    if hdr.flags:
        raise BTFError(f"unsupported .BTF.ext flags {hdr.flags:#x}")
    body = len(data) - hdr.hdr_len
    if body == 0:
        raise BTFError(".BTF.ext has no data")  # libbpf rejects this too
    ext = BTFExt()

    def section(off: int | None, length: int | None) -> tuple[int, int] | None:
        if not length:
            return None
        assert off is not None
        if off + length > body:
            raise BTFError(".BTF.ext info section out of bounds")
        return hdr.hdr_len + off, length

    sec = section(hdr.func_info_off, hdr.func_info_len)
    if sec:
        rec, subs = _sub_sections(data, *sec, "func_info", FUNC_INFO_SIZE, btf)
        ext.func_info_rec_size = rec
        for name, pos, num in subs:
            lst = ext.func_info.setdefault(name, [])
            for k in range(num):
                off, tid = struct.unpack_from("<II", data, pos + k * rec)
                lst.append(FuncInfo(_insn(off, "func_info"), tid))

    sec = section(hdr.line_info_off, hdr.line_info_len)
    if sec:
        rec, subs = _sub_sections(data, *sec, "line_info", LINE_INFO_SIZE, btf)
        ext.line_info_rec_size = rec
        s = btf.string
        for name, pos, num in subs:
            lst2 = ext.line_info.setdefault(name, [])
            for k in range(num):
                off, fn, ln, lc = struct.unpack_from("<IIII", data, pos + k * rec)
                lst2.append(LineInfo(_insn(off, "line_info"), fn, ln, lc >> 10, lc & 0x3FF,
                                     s(fn), s(ln)))

    if hdr.hdr_len >= _EXT_HEADER_CORE:
        sec = section(hdr.core_relo_off, hdr.core_relo_len)
        if sec:
            rec, subs = _sub_sections(data, *sec, "core_relo", CORE_RELO_SIZE, btf)
            ext.core_relo_rec_size = rec
            ntypes = len(btf)
            for name, pos, num in subs:
                lst3 = ext.core_relos.setdefault(name, [])
                for k in range(num):
                    off, tid, aoff, kind = struct.unpack_from("<IIII", data, pos + k * rec)
                    if tid >= ntypes:
                        raise BTFError(f".BTF.ext core_relo: type id {tid} out of range")
                    access = btf.string(aoff)
                    if not access:
                        raise BTFError(".BTF.ext core_relo: empty access string")
                    try:
                        k_: CoreReloKind | int = CoreReloKind(kind)
                    except ValueError:
                        k_ = kind
                    lst3.append(CoreRelo(_insn(off, "core_relo"), tid, access, k_, aoff))
    return ext


def write_btf_ext(ext: BTFExt, strings: BTF | Mapping[str, int]) -> bytes:
    """Serialise ``ext`` as a ``.BTF.ext`` section, laid out as clang does.

    ``strings`` gives the string offsets that section names, line_info file names and
    source lines, and CO-RE access strings refer to: a :class:`BTF` (offsets into its
    string section; a record's own offset is kept when it still names the same
    string there) or a mapping from string to offset, e.g. the offsets returned by
    :func:`pyebpf.btf.write.marshal_with_offsets`. Records wider than the known
    layout (``*_rec_size``) are zero-padded. Sections with no records are left out:
    the format has no way to say "no records" (the parser rejects them).
    """
    if isinstance(strings, BTF):
        btf = strings

        def off(s: str, stored: int = -1) -> int:
            if stored >= 0:
                try:
                    if btf.string(stored) == s:
                        return stored
                except BTFError:
                    pass  # out of range in this table: look the string up instead
            found = btf.find_string(s)
            if found is None:
                raise BTFError(f".BTF.ext string {s!r} is not in the BTF string section")
            return found
    else:
        table = strings

        def off(s: str, stored: int = -1) -> int:
            try:
                return table[s]
            except KeyError:
                raise BTFError(f".BTF.ext string {s!r} has no offset") from None

    def info(what: str, groups: Mapping[str, list[Any]], rec_size: int, min_rec: int,
             pack: Callable[[Any], bytes]) -> bytes:
        if rec_size < min_rec or rec_size % 4:
            raise BTFError(f".BTF.ext {what}: bad rec_size {rec_size} "
                           f"(need >= {min_rec}, 4-aligned)")
        pad = bytes(rec_size - min_rec)
        out = bytearray(struct.pack("<I", rec_size))
        for name, recs in groups.items():
            if not recs:
                continue
            if not name:
                raise BTFError(f".BTF.ext {what}: empty section name")
            out += struct.pack("<II", off(name), len(recs))
            for r in recs:
                out += pack(r) + pad
        return bytes(out)

    def byte_off(insn: int, what: str) -> int:
        if not 0 <= insn * INSN_SIZE <= 0xFFFFFFFF:
            raise BTFError(f".BTF.ext {what}: insn_off {insn} out of range")
        return insn * INSN_SIZE

    def func(r: FuncInfo) -> bytes:
        return struct.pack("<II", byte_off(r.insn_off, "func_info"), r.type_id)

    def line(r: LineInfo) -> bytes:
        if not 0 <= r.col <= 0x3FF or not 0 <= r.line < 1 << 22:
            raise BTFError(f".BTF.ext line_info: line {r.line} col {r.col} out of range")
        return struct.pack("<IIII", byte_off(r.insn_off, "line_info"),
                           off(r.file_name, r.file_name_off), off(r.line_text, r.line_off),
                           r.line_col)

    def core(r: CoreRelo) -> bytes:
        if not r.access_str:
            raise BTFError(".BTF.ext core_relo: empty access string")
        return struct.pack("<IIII", byte_off(r.insn_off, "core_relo"), r.type_id,
                           off(r.access_str, r.access_str_off), int(r.kind))

    try:
        fi = info("func_info", ext.func_info, ext.func_info_rec_size, FUNC_INFO_SIZE, func)
        li = info("line_info", ext.line_info, ext.line_info_rec_size, LINE_INFO_SIZE, line)
        cr = b""
        if any(ext.core_relos.values()):
            cr = info("core_relo", ext.core_relos, ext.core_relo_rec_size, CORE_RELO_SIZE, core)
    except struct.error as e:
        raise BTFError(f".BTF.ext field out of range: {e}") from None
    # clang's layout: func_info, then line_info, then core_relo, back to back; an
    # absent core_relo section has length 0 at the end of line_info
    hdr = struct.pack("<HBBIIIIIII", BTF_MAGIC, 1, 0, _EXT_HEADER_CORE, 0, len(fi), len(fi),
                      len(li), len(fi) + len(li), len(cr))
    return hdr + fi + li + cr


def pack_func_info(records: Iterable[FuncInfo], insn_base: int = 0,
                   type_id: Callable[[int], int] | None = None) -> bytes:
    """Kernel ``bpf_func_info`` array (insn_off in instructions) for BPF_PROG_LOAD.

    ``insn_base`` is added to each insn_off (a subprogram's position in the final
    program); ``type_id`` remaps type ids when the loaded BTF renumbered them.
    """
    out = bytearray()
    try:
        for r in records:
            out += struct.pack("<II", r.insn_off + insn_base,
                               type_id(r.type_id) if type_id else r.type_id)
    except struct.error:
        raise _outside("func_info", records, insn_base) from None
    return bytes(out)


def _outside(what: str, records: Iterable[Any], insn_base: int) -> BTFError:
    # libbpf copies the run of records between the first and the last one inside the
    # program, so a record out of order in a corrupt .BTF.ext can land before the
    # program's start (a negative offset here; a huge one in libbpf, which the kernel
    # refuses)
    bad = next((r.insn_off + insn_base for r in records
                if not 0 <= r.insn_off + insn_base <= 0xFFFFFFFF), None)
    return BTFError(f".BTF.ext {what}: a record for instruction {bad} lies outside its "
                    "program (records out of order in .BTF.ext?)")


def pack_line_info(records: Iterable[LineInfo], str_off: Mapping[str, int],
                   insn_base: int = 0) -> bytes:
    """Kernel ``bpf_line_info`` array for BPF_PROG_LOAD.

    ``str_off`` maps file names and source lines to their offsets in the BTF loaded
    into the kernel (see :func:`pyebpf.btf.write.marshal_with_offsets`).
    """
    out = bytearray()
    try:
        for r in records:
            out += struct.pack("<IIII", r.insn_off + insn_base, str_off[r.file_name],
                               str_off[r.line_text], r.line_col)
    except KeyError as e:
        raise BTFError(f"line_info string {e} missing from the loaded BTF") from None
    except struct.error:
        raise _outside("line_info", records, insn_base) from None
    return bytes(out)


def ext_strings(ext: BTFExt) -> set[str]:
    """Strings the line_info records need in the BTF given to the kernel."""
    out: set[str] = set()
    for recs in ext.line_info.values():
        for r in recs:
            out.add(r.file_name)
            out.add(r.line_text)
    return out
