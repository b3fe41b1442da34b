"""BTF.ext parser tests: a clang-compiled fixture object, hand-built sections, malformed input."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st
from unitobj import unit_object, unit_source

from pyebpf.btf import formats
from pyebpf.btf.ext import (
    CORE_RELO_SIZE,
    BTFExt,
    CoreRelo,
    CoreReloKind,
    FuncInfo,
    LineInfo,
    ext_strings,
    pack_func_info,
    pack_line_info,
    parse_btf_ext,
    write_btf_ext,
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


# -- writer ------------------------------------------------------------------------------

FIXTURE_ROOT = Path(__file__).resolve().parent.parent / "fixtures"
EXT_FIXTURES = sorted(
    str(p.relative_to(FIXTURE_ROOT))
    for p in [*FIXTURE_ROOT.glob("*.bpf.o"), *(FIXTURE_ROOT / "unit").glob("*.bpf.o")]
)


def fixture_ext(rel: str) -> tuple[BTF, bytes] | None:
    with open(FIXTURE_ROOT / rel, "rb") as f:
        elf = ELFFile(f)
        ext = elf.get_section_by_name(".BTF.ext")
        if ext is None:
            return None
        return BTF.from_bytes(elf.get_section_by_name(".BTF").data()), ext.data()


def test_fixture_list_is_not_empty() -> None:
    assert len(EXT_FIXTURES) > 40 and any(f.startswith("unit/") for f in EXT_FIXTURES)


@pytest.mark.parametrize("rel", EXT_FIXTURES)
def test_writer_round_trips_every_fixture(rel: str) -> None:
    got = fixture_ext(rel)
    if got is None:
        return  # built without BTF.ext (e.g. the malformed-map objects)
    btf, data = got
    ext = parse_btf_ext(data, btf)
    out = write_btf_ext(ext, btf)
    assert parse_btf_ext(out, btf) == ext
    # the writer uses clang's layout, so clang's bytes come back unchanged
    assert out == data


def test_writer_with_string_mapping(clang_object: tuple[BTF, bytes]) -> None:
    # re-marshalled BTF (as for the kernel): every string goes through the new offsets
    btf, data = clang_object
    ext = parse_btf_ext(data, btf)
    names = set(ext.func_info) | set(ext.line_info) | set(ext.core_relos)
    access = {r.access_str for recs in ext.core_relos.values() for r in recs}
    raw, offs = marshal_with_offsets(btf, extra_strings=sorted(ext_strings(ext) | names | access))
    new_btf = BTF.from_bytes(raw)
    again = parse_btf_ext(write_btf_ext(ext, offs), new_btf)
    assert _strip_offsets(again) == _strip_offsets(ext)
    assert again.line_info[".text"][0].file_name_off == offs[ext.line_info[".text"][0].file_name]


def test_writer_hand_built_and_padding() -> None:
    btf, data = sample()
    ext = parse_btf_ext(data, btf)
    assert write_btf_ext(ext, btf) == data
    btf, data = sample(rec_pad=8)
    ext = parse_btf_ext(data, btf)
    assert write_btf_ext(ext, btf) == data  # wider records come back zero-padded


def test_writer_looks_up_offsets_of_in_memory_records() -> None:
    # records built in memory carry no string offsets: the writer finds them
    btf, _ = small_btf()
    ext = expected()
    again = parse_btf_ext(write_btf_ext(ext, btf), btf)
    assert _strip_offsets(again) == _strip_offsets(ext)
    assert again.line_info["sec"][0].file_name_off == btf.find_string("file.c")


def test_writer_empty_and_old_header() -> None:
    btf, o = small_btf()
    # nothing at all: func_info/line_info rec_size words keep the body non-empty
    assert parse_btf_ext(write_btf_ext(BTFExt(), btf), btf) == BTFExt()
    # a 24-byte header (no core_relo fields) is rewritten with the 32-byte one
    func = info_section(8, [(o["sec"], [struct.pack("<II", 0, 3)])])
    ext = parse_btf_ext(ext_blob(func, core=None), btf)
    out = write_btf_ext(ext, btf)
    assert struct.unpack_from("<I", out, 4)[0] == 32 and parse_btf_ext(out, btf) == ext


def test_writer_errors() -> None:
    btf, _ = small_btf()
    with pytest.raises(BTFError, match="not in the BTF string section"):
        write_btf_ext(BTFExt(func_info={"nope": [FuncInfo(0, 3)]}), btf)
    with pytest.raises(BTFError, match="has no offset"):
        write_btf_ext(BTFExt(func_info={"sec": [FuncInfo(0, 3)]}), {})
    with pytest.raises(BTFError, match="rec_size"):
        write_btf_ext(BTFExt(func_info_rec_size=10), btf)
    with pytest.raises(BTFError, match="out of range"):
        write_btf_ext(BTFExt(line_info={"sec": [LineInfo(0, 0, 0, 1, 1024, "file.c", "")]}), btf)
    with pytest.raises(BTFError, match="empty access string"):
        write_btf_ext(BTFExt(core_relos={"sec": [CoreRelo(0, 1, "", 0)]}), btf)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._0123456789", min_size=1, max_size=12)
_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                 max_size=20)
_u32 = st.integers(0, 0xFFFFFFFF)
_insn = st.integers(0, 0xFFFFFFFF // 8)


@st.composite
def _ext_and_btf(draw: st.DrawFn) -> tuple[BTFExt, BTF]:
    ntypes = draw(st.integers(1, 6))
    secs = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    sec = st.sampled_from(secs)

    def groups(rec: st.SearchStrategy) -> dict:
        return draw(st.dictionaries(sec, st.lists(rec, min_size=1, max_size=5), max_size=3))

    func = groups(st.builds(FuncInfo, _insn, _u32))
    line = groups(st.builds(LineInfo, _insn, st.just(0), st.just(0), st.integers(0, (1 << 22) - 1),
                            st.integers(0, 0x3FF), _texts, _texts))
    kinds = st.one_of(st.sampled_from(list(CoreReloKind)), _u32)
    access = st.text(alphabet="0123456789:", min_size=1, max_size=8)
    core = groups(st.builds(CoreRelo, _insn, st.integers(0, ntypes), access, kinds))
    sizes = [draw(st.sampled_from([base, base + 4, base + 8])) for base in (8, 16, 16)]
    ext = BTFExt(func, line, core, *sizes)
    strs = set(secs) | ext_strings(ext)
    strs |= {r.access_str for recs in core.values() for r in recs}
    types = [Void()] + [Int(f"t{i}", 4) for i in range(ntypes)]
    raw, _ = marshal_with_offsets(BTF(types), extra_strings=sorted(strs))
    btf = BTF.from_bytes(raw)
    # what a parse would have recorded: the offsets of the strings in this BTF
    for recs in line.values():
        for r in recs:
            r.file_name_off = btf.find_string(r.file_name) or 0
            r.line_off = btf.find_string(r.line_text) or 0
    for recs in core.values():
        for r in recs:
            r.access_str_off = btf.find_string(r.access_str) or 0
    if not core:
        ext.core_relo_rec_size = CORE_RELO_SIZE  # not written without records
    return ext, btf


@settings(max_examples=200, deadline=None)
@given(_ext_and_btf())
def test_writer_hypothesis_round_trip(case: tuple[BTFExt, BTF]) -> None:
    ext, btf = case
    out = write_btf_ext(ext, btf)
    parsed = parse_btf_ext(out, btf)
    assert parsed == ext
    assert write_btf_ext(parsed, btf) == out
