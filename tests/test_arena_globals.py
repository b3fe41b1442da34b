"""``__arena`` globals (section ``.addr_space.1``) relocated into the object's ARENA map.

Pure: no root, no kernel. The expected values are libbpf's (>= 1.4, with the
"globals at the end of the arena" change), reasoned from its code:

* ``init_arena_map_data``: ``mmap_sz = page * max_entries`` (``bpf_map_mmap_sz`` for an
  ARENA), ``data_alloc_sz = roundup(data_sz, page)``, ``arena_data_off = mmap_sz -
  data_alloc_sz``; E2BIG when the data does not fit.
* ``bpf_program__record_reloc``: a relocation against ``arena_data_shndx`` is RELO_DATA
  against ``arena_map_idx`` with ``sym_off = st_value + arena_data_off``.
* ``bpf_object__relocate_data``: ``insn[0].src_reg = BPF_PSEUDO_MAP_VALUE``,
  ``insn[0].imm = map fd``, ``insn[1].imm = insn[0].imm + sym_off``.

The loader's half (mmap the arena, copy the initial data to ``arena_data_off``) is
checked here with a stand-in Arena: this machine's kernel refuses ARENA map creation
(EPERM), so it cannot run for real.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import pytest
from unitobj import unit_object, unit_source

from pyebpf import ObjectSpec
from pyebpf import insn as I
from pyebpf.errors import ObjectError
from pyebpf.obj.maps import ARENA_SECTION, arena_data_offset
from pyebpf.obj.program import MapRef, MapRefKind, RelocType
from pyebpf.obj.reloc import RelocContext, record_reloc
from pyebpf.uapi import MapType

PAGE = mmap.PAGESIZE


def libbpf_arena_off(max_entries: int, data_sz: int) -> int:
    """libbpf's arena_data_off, written out independently of pyebpf's."""
    mmap_sz = PAGE * max_entries
    alloc = -(-data_sz // PAGE) * PAGE
    assert alloc <= mmap_sz
    return mmap_sz - alloc


def open_arena(name: str = "maps_arena") -> ObjectSpec:
    return ObjectSpec.from_file(unit_object(name))


def test_fixture_is_what_the_tests_assume() -> None:
    src = unit_source("maps_arena")
    assert "__uint(max_entries, 2)" in src and "address_space(1))) avar = 5" in src
    spec = open_arena()
    sec = spec.elf.section(ARENA_SECTION)
    assert sec is not None and bytes(sec.data) == (5).to_bytes(4, "little")


def test_open_records_a_data_reloc_against_the_arena() -> None:
    # this raised "bad map relo against 'avar' in section '.addr_space.1'" before
    spec = open_arena()
    arena = spec.maps["arena"]
    assert arena.type == MapType.ARENA and arena.max_entries == 2
    assert arena.extra["arena_data"] == (5).to_bytes(4, "little")
    (r,) = spec.programs["f"].relocs
    assert (r.type, r.insn_idx, r.target, r.symbol) == (RelocType.DATA, 0, "arena", "avar")
    assert r.sym_off == 0  # avar's offset in .addr_space.1; the arena offset comes later


def test_relocated_ldimm64_points_into_the_arena() -> None:
    spec = open_arena()
    spec.relocate()
    p = spec.programs["f"]
    want = libbpf_arena_off(2, 4) + 0  # + avar's st_value
    assert want == PAGE  # two pages, the globals take the last one
    assert p.map_refs == [MapRef(0, "arena", MapRefKind.VALUE, want)]
    ld, hi = I.get(p.insns, 0), I.get(p.insns, 1)
    assert ld.code == I.LD_IMM64 and ld.src == I.BPF_PSEUDO_MAP_VALUE and ld.imm == 0
    assert hi.code == 0 and hi.imm == want
    # the rest of the program is untouched
    assert p.insns[16:] == bytearray(p.orig_insns[16:])


@pytest.mark.parametrize("pages", [1, 2, 3, 16, 1024])
def test_offset_follows_max_entries_edits(pages: int) -> None:
    # max_entries is editable until load: relocations and the loader's copy both use it
    spec = open_arena()
    arena = spec.maps["arena"]
    arena.max_entries = pages
    assert arena_data_offset(arena) == libbpf_arena_off(pages, 4) == (pages - 1) * PAGE
    spec.relocate()
    assert I.get(spec.programs["f"].insns, 1).imm == (pages - 1) * PAGE


def test_shrinking_the_arena_below_its_data_fails_at_relocate() -> None:
    spec = open_arena()
    spec.maps["arena"].max_entries = 0
    with pytest.raises(ObjectError, match="too small"):
        spec.relocate()


def test_addend_in_insn0_is_kept() -> None:
    # static __arena variables are referenced through the section symbol, with the
    # variable's offset as the ld_imm64 addend (insn[0].imm): libbpf adds sym_off to it
    spec = open_arena()
    p = spec.programs["f"]
    code = bytearray(p.orig_insns)
    struct.pack_into("<i", code, 4, 12)
    p.orig_insns = bytes(code)
    spec.relocate()
    assert I.get(p.insns, 1).imm == 12 + PAGE
    assert I.get(p.insns, 0).imm == 0
    assert p.map_refs[0].offset == 12 + PAGE


def test_bigger_data_takes_more_pages() -> None:
    spec = open_arena()
    arena = spec.maps["arena"]
    arena.max_entries = 8
    arena.extra["arena_data"] = bytes(PAGE + 1)  # two pages' worth
    assert arena_data_offset(arena) == libbpf_arena_off(8, PAGE + 1) == 6 * PAGE


def test_autocreate_off_poisons_the_load() -> None:
    spec = open_arena()
    spec.maps["arena"].autocreate = False
    spec.relocate()
    p = spec.programs["f"]
    assert p.map_refs == []
    for k in (0, 1):
        ins = I.get(p.insns, k)
        assert ins.code == I.BPF_JMP | I.BPF_CALL
        assert ins.imm == I.POISON_LDIMM64_MAP_BASE + list(spec.maps).index("arena")


@pytest.mark.parametrize("case,msg", [
    ("undeclared", "ARENA map should be explicitly declared"),
    ("two", "only single ARENA map"),
    ("small", "too small"),
])
def test_object_errors(case: str, msg: str) -> None:
    # maps_arena_undeclared: __arena data and a plain array, no arena map: libbpf's
    # -ENOENT at open; _two: -EINVAL; _small: a zero-page arena, -E2BIG
    with pytest.raises(ObjectError, match=msg):
        open_arena(f"maps_arena_{case}")


def test_no_maps_section_at_all() -> None:
    # rename ".maps" (same length; section name and BTF DATASEC) so the object has
    # __arena data and no .maps section: libbpf never reaches its "should be
    # explicitly declared" check there
    data = Path(unit_object("maps_arena_undeclared")).read_bytes()
    assert data.count(b"\0.maps\0") == 2
    data = data.replace(b"\0.maps\0", b"\0.mapz\0")
    with pytest.raises(ObjectError, match="explicitly declared"):
        ObjectSpec.from_bytes(data, name="x")


def test_record_reloc_without_arena_map() -> None:
    spec = open_arena()
    elf = spec.elf
    sec = elf.section(ARENA_SECTION)
    assert sec is not None
    ctx = RelocContext(elf, spec.text_shndx, 0, 0, arena_shndx=sec.index, arena_map=None)
    sym = next(s for s in elf.symbols if s.name == "avar")
    with pytest.raises(ObjectError, match="explicitly declared"):
        record_reloc(ctx, spec.programs["f"], 0, sym)


def test_loader_copies_initial_data_to_the_arena_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # the loader's step, with Arena.write/memory stubbed (no kernel arena here)
    from pyebpf.loader import _Loader
    from pyebpf.maps.arena import Arena

    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(Arena, "write", lambda self, off, data: writes.append((off, data)))
    spec = open_arena()
    arena = spec.maps["arena"]
    arena.max_entries = 4
    fake = Arena.__new__(Arena)
    _Loader._init_arena(None, arena, fake)  # type: ignore[arg-type]
    assert writes == [(3 * PAGE, (5).to_bytes(4, "little"))]
