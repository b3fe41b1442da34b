"""BTF.ext parser tests: a clang-compiled fixture object, hand-built sections, malformed input."""

from __future__ import annotations

import struct

import pytest
from elftools.elf.elffile import ELFFile
from unitobj import unit_object, unit_source

from pyebpf.btf import formats
from pyebpf.btf.ext import (
    BTFExt,
    CoreRelo,
    CoreReloKind,
    FuncInfo,
    LineInfo,
    ext_strings,
    pack_func_info,
    pack_line_info,
    parse_btf_ext,
)
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import Func, FuncProto, Int, Struct, Void
from pyebpf.btf.write import marshal_with_offsets
from pyebpf.errors import BTFError

# fixtures/src/unit/btf_ext.bpf.c uses the compiler builtins directly (every CO-RE kind).
C_SOURCE = unit_source("btf_ext")


@pytest.fixture(scope="session")
def clang_object() -> tuple[BTF, bytes]:
    with open(unit_object("btf_ext"), "rb") as f:
        elf = ELFFile(f)
        btf = BTF.from_bytes(elf.get_section_by_name(".BTF").data())
        return btf, elf.get_section_by_name(".BTF.ext").data()


def test_clang_func_info(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    assert set(ext.func_info) == {".text", "tracepoint/x", "xdp"}
    names = {sec: [btf.type(r.type_id).name for r in recs] for sec, recs in ext.func_info.items()}
    assert names == {".text": ["sub"], "tracepoint/x": ["prog"], "xdp": ["xdp_prog"]}
    for recs in ext.func_info.values():
        assert recs[0].insn_off == 0  # instruction index, not bytes
        assert all(isinstance(btf.type(r.type_id), Func) for r in recs)
    assert ext.func_info_rec_size == 8 and ext.line_info_rec_size == 16


def test_clang_line_info(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    lines = ext.line_info["tracepoint/x"]
    assert lines[0].insn_off == 0 and lines[0].file_name.endswith("unit/btf_ext.bpf.c")
    assert "int prog(struct task *t)" in lines[0].line_text
    assert [r.insn_off for r in lines] == sorted(r.insn_off for r in lines)
    src = C_SOURCE.splitlines()
    for r in lines:
        assert r.line_col == (r.line << 10) | r.col
        # The recorded text is the source line (clang strips nothing but the newline).
        assert src[r.line - 1].strip() == r.line_text.strip()
        assert btf.string(r.line_off) == r.line_text
    assert ext.line_info["xdp"][0].line_text.startswith('SEC("xdp")')


def test_clang_core_relos(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    relos = ext.core_relos["tracepoint/x"]
    assert set(ext.core_relos) == {"tracepoint/x"}
    kinds = {r.kind for r in relos}
    assert kinds == set(CoreReloKind)  # every kind, TYPE_MATCHES = 12 included
    assert all(isinstance(r.kind, CoreReloKind) for r in relos)
    for r in relos:
        root = btf.type(r.type_id)
        if r.kind == CoreReloKind.TYPE_MATCHES:
            assert root.name == "task_t" and r.access_str == "0"
        elif r.kind in (CoreReloKind.ENUMVAL_EXISTS, CoreReloKind.ENUMVAL_VALUE):
            assert root.name == "state" and r.access_str == "1"
        else:
            assert root.name == "task"
        assert btf.string(r.access_str_off) == r.access_str
    by_kind = {r.kind: r for r in relos}
    assert by_kind[CoreReloKind.FIELD_BYTE_OFFSET].access_str == "0:0"
    assert by_kind[CoreReloKind.FIELD_BYTE_SIZE].access_str == "0:3"
    assert by_kind[CoreReloKind.FIELD_SIGNED].access_str == "0:1"
    assert len({r.insn_off for r in relos}) == len(relos)


def test_construct_description_agrees(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    hdr = formats.btf_ext_header.parse(data)
    body = data[hdr.hdr_len:]
    fi = formats.btf_ext_info_section(formats.btf_func_info).parse(
        body[hdr.func_info_off:hdr.func_info_off + hdr.func_info_len])
    assert {btf.string(s.sec_name_off): [(r.insn_off // 8, r.type_id) for r in s.records]
            for s in fi.sections} == {
        k: [(r.insn_off, r.type_id) for r in v] for k, v in ext.func_info.items()}
    li = formats.btf_ext_info_section(formats.btf_line_info).parse(
        body[hdr.line_info_off:hdr.line_info_off + hdr.line_info_len])
    assert sum(len(s.records) for s in li.sections) == sum(len(v) for v in ext.line_info.values())
    cr = formats.btf_ext_info_section(formats.btf_core_relo).parse(
        body[hdr.core_relo_off:hdr.core_relo_off + hdr.core_relo_len])
    assert [r.kind for s in cr.sections for r in s.records] == \
        [int(r.kind) for v in ext.core_relos.values() for r in v]


@pytest.mark.parametrize("hdr_len", [24, 32])
def test_hand_header_parse_agrees_with_construct(hdr_len: int) -> None:
    from pyebpf.btf.ext import _parse_header

    raw = struct.pack("<HBBIIIIIII", 0xEB9F, 1, 0, hdr_len, 0, 16, 16, 32, 48, 8)[:hdr_len]
    ours = _parse_header(raw, hdr_len)
    ref = formats.btf_ext_header.parse(raw)
    for name in ours._fields:
        assert getattr(ours, name) == ref[name], name


def test_pack_for_kernel(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    fi = pack_func_info(ext.func_info[".text"], insn_base=10)
    assert struct.unpack("<II", fi) == (10, ext.func_info[".text"][0].type_id)
    raw, offs = marshal_with_offsets(btf, extra_strings=sorted(ext_strings(ext)))
    again = BTF.from_bytes(raw)
    li = pack_line_info(ext.line_info["xdp"], offs)
    for (ins, fn, ln, lc), r in zip(struct.iter_unpack("<IIII", li), ext.line_info["xdp"],
                                     strict=True):
        assert ins == r.insn_off and lc == r.line_col
        assert again.string(fn) == r.file_name and again.string(ln) == r.line_text
    with pytest.raises(BTFError):
        pack_line_info(ext.line_info["xdp"], {})


# -- hand-built sections -----------------------------------------------------------------


def small_btf() -> tuple[BTF, dict[str, int]]:
    btf = BTF([Void(), Int("int", 4), FuncProto(1, []), Func("f", 2), Struct("s", 4, [])])
    raw, offs = marshal_with_offsets(btf, extra_strings=["sec", "file.c", "x = 1;", "0:0"])
    return BTF.from_bytes(raw), offs


def info_section(rec_size: int, secs: list[tuple[int, list[bytes]]]) -> bytes:
    out = struct.pack("<I", rec_size)
    for name_off, recs in secs:
        out += struct.pack("<II", name_off, len(recs)) + b"".join(recs)
    return out


def ext_blob(func: bytes = b"", line: bytes = b"", core: bytes | None = b"") -> bytes:
    hdr_len = 24 if core is None else 32
    fields = dict(magic=0xEB9F, version=1, flags=0, hdr_len=hdr_len,
                  func_info_off=0, func_info_len=len(func),
                  line_info_off=len(func), line_info_len=len(line),
                  core_relo_off=None if core is None else len(func) + len(line),
                  core_relo_len=None if core is None else len(core))
    return formats.btf_ext_header.build(fields) + func + line + (core or b"")


def sample(rec_pad: int = 0) -> tuple[BTF, bytes]:
    btf, o = small_btf()
    pad = bytes(rec_pad)
    func = info_section(8 + rec_pad, [(o["sec"], [struct.pack("<II", 16, 3) + pad])])
    line = info_section(16 + rec_pad, [(o["sec"], [
        struct.pack("<IIII", 0, o["file.c"], o["x = 1;"], 7 << 10 | 5) + pad,
        struct.pack("<IIII", 8, o["file.c"], o["x = 1;"], 8 << 10) + pad])])
    core = info_section(16 + rec_pad, [(o["sec"], [
        struct.pack("<IIII", 24, 4, o["0:0"], 0) + pad,
        struct.pack("<IIII", 32, 4, o["0:0"], 99) + pad])])
    return btf, ext_blob(func, line, core)


def expected() -> BTFExt:
    return BTFExt(
        func_info={"sec": [FuncInfo(2, 3)]},
        line_info={"sec": [LineInfo(0, 0, 0, 7, 5, "file.c", "x = 1;"),
                           LineInfo(1, 0, 0, 8, 0, "file.c", "x = 1;")]},
        core_relos={"sec": [CoreRelo(3, 4, "0:0", CoreReloKind.FIELD_BYTE_OFFSET),
                            CoreRelo(4, 4, "0:0", 99)]},
    )


def _strip_offsets(ext: BTFExt) -> tuple:
    return (
        ext.func_info,
        {k: [(r.insn_off, r.line, r.col, r.file_name, r.line_text) for r in v]
         for k, v in ext.line_info.items()},
        {k: [(r.insn_off, r.type_id, r.access_str, r.kind) for r in v]
         for k, v in ext.core_relos.items()},
    )


def test_hand_built() -> None:
    btf, data = sample()
    ext = parse_btf_ext(data, btf)
    assert _strip_offsets(ext) == _strip_offsets(expected())
    assert ext.core_relos["sec"][1].kind == 99  # unknown (future) kind kept as an int


def test_larger_rec_size_is_forward_compatible() -> None:
    btf, data = sample(rec_pad=8)
    ext = parse_btf_ext(data, btf)
    assert _strip_offsets(ext) == _strip_offsets(expected())
    assert (ext.func_info_rec_size, ext.line_info_rec_size, ext.core_relo_rec_size) == (16, 24, 24)


def test_smaller_or_unaligned_rec_size_rejected() -> None:
    btf, o = small_btf()
    for size in (4, 0, 10):
        func = info_section(size, [(o["sec"], [bytes(size)])])
        with pytest.raises(BTFError, match="rec_size"):
            parse_btf_ext(ext_blob(func), btf)
    line = info_section(12, [(o["sec"], [bytes(12)])])
    with pytest.raises(BTFError, match="rec_size"):
        parse_btf_ext(ext_blob(b"", line), btf)


def test_old_header_without_core_relos() -> None:
    btf, o = small_btf()
    func = info_section(8, [(o["sec"], [struct.pack("<II", 0, 3)])])
    ext = parse_btf_ext(ext_blob(func, core=None), btf)
    assert ext.func_info == {"sec": [FuncInfo(0, 3)]} and ext.core_relos == {}


def test_semantic_errors() -> None:
    btf, o = small_btf()
    cases = [
        ext_blob(info_section(8, [(o["sec"], [struct.pack("<II", 4, 3)])])),  # insn_off % 8
        ext_blob(info_section(8, [(o["sec"], [])])),  # num_info == 0
        ext_blob(info_section(8, [(0, [struct.pack("<II", 0, 3)])])),  # empty section name
        ext_blob(info_section(8, [(9999, [struct.pack("<II", 0, 3)])])),  # bad name offset
        ext_blob(core=info_section(16, [(o["sec"], [struct.pack("<IIII", 0, 99, o["0:0"], 0)])])),
        ext_blob(core=info_section(16, [(o["sec"], [struct.pack("<IIII", 0, 4, 0, 0)])])),
        b"\xeb\x9f" + ext_blob()[2:],  # big-endian magic
    ]
    for data in cases:
        with pytest.raises(BTFError):
            parse_btf_ext(data, btf)


def test_truncations_and_mutations_raise_only_btferror() -> None:
    btf, data = sample()
    for n in range(len(data)):
        with pytest.raises(BTFError):  # every cut lands inside a header, section or record
            parse_btf_ext(data[:n], btf)
    for i in range(len(data)):
        for v in (0x00, 0x01, 0x7F, 0xFF):
            mutated = bytearray(data)
            mutated[i] = v
            try:
                parse_btf_ext(bytes(mutated), btf)
            except BTFError:
                pass


def test_clang_ext_mutations_raise_only_btferror(clang_object: tuple[BTF, bytes]) -> None:
    btf, data = clang_object
    for i in range(0, len(data)):
        for v in (0x00, 0xFF, 0x03):
            mutated = bytearray(data)
            mutated[i] = v
            try:
                parse_btf_ext(bytes(mutated), btf)
            except BTFError:
                pass
    for n in range(0, len(data), 7):
        with pytest.raises(BTFError):
            parse_btf_ext(data[:n], btf)
