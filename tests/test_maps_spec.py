"""Map specs from object files: BTF-defined .maps, legacy maps, global data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unitobj import unit_object

from pyebpf.btf.spec import BTF
from pyebpf.errors import ObjectError
from pyebpf.obj.elf import read_elf
from pyebpf.obj.maps import (
    internal_map_name,
    object_name,
    parse_btf_maps,
    parse_global_data,
    parse_legacy_maps,
)
from pyebpf.obj.spec import PinType
from pyebpf.uapi import BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG, MapType

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def load(path: Path | str):
    data = Path(path).read_bytes()
    elf = read_elf(data, str(path))
    sec = elf.section(".BTF")
    return elf, (BTF.from_bytes(sec.data) if sec else None)


def fixture(name: str):
    p = FIX / name
    if not p.exists():
        pytest.skip(f"fixture {name} missing")
    return load(p)


# -- BTF-defined maps ---------------------------------------------------------------------


def test_btf_maps_fixture_every_attribute():
    elf, btf = fixture("maps_btf.bpf.o")
    maps = parse_btf_maps(elf, btf)
    h = maps["hash_map"]
    assert (h.type, h.key_size, h.value_size, h.max_entries, h.flags) == (
        MapType.HASH, 4, 8, 128, BPF_F_NO_PREALLOC)
    assert btf.type(h.btf_key_type_id).name in ("__u32", "u32")
    assert h.section == ".maps" and h.extra["kernel_name"] == "hash_map"

    a = maps["array_sized"]
    assert (a.type, a.key_size, a.value_size, a.max_entries) == (MapType.ARRAY, 4, 24, 16)
    assert a.btf_key_type_id == 0 and a.btf_value_type_id == 0

    assert maps["lpm_map"].key_size == 8
    assert maps["bloom_map"].map_extra == 3 and maps["bloom_map"].key_size == 0
    assert maps["lru_map"].numa_node == 0
    assert maps["pyebpf_fixture_pinned"].pinning is PinType.BY_NAME
    assert maps["hash_map"].pinning is PinType.NONE
    assert maps["ringbuf"].max_entries == 4096
    assert maps["perf_events"].max_entries == 0  # libbpf fills in nr CPUs at create time


@pytest.mark.parametrize("node", [1, 3, 0x7FFFFFFF])
def test_btf_maps_nonzero_numa_node(node: int):
    # no fixture declares __uint(numa_node, N) with N != 0 (maps_btf's lru_map uses 0),
    # so rewrite lru_map's attribute in memory: __uint(numa_node, N) is `int (*numa_node)[N]`
    from pyebpf.btf.types import Array, Ptr, Struct

    elf, btf = fixture("maps_btf.bpf.o")
    (st,) = [t for t in btf if isinstance(t, Struct)
             and any(m.name == "numa_node" for m in t.members)]
    member = next(m for m in st.members if m.name == "numa_node")
    old = btf.type(btf.type(member.type).type)
    assert isinstance(old, Array) and old.nelems == 0
    # a fresh array/pointer pair: the old array type is shared with other zero attributes
    member.type = btf.add(Ptr(btf.add(Array(old.type, old.index_type, node))))
    maps = parse_btf_maps(elf, btf)
    assert maps["lru_map"].numa_node == node
    assert all(m.numa_node == 0 for name, m in maps.items() if name != "lru_map")


def test_btf_maps_map_in_map_and_prog_array():
    elf, btf = fixture("maps_btf.bpf.o")
    maps = parse_btf_maps(elf, btf)
    outer = maps["outer_array"]
    assert outer.type == MapType.ARRAY_OF_MAPS and outer.value_size == 4
    assert outer.inner is not None
    assert outer.inner.name == "outer_array.inner"
    assert (outer.inner.type, outer.inner.key_size, outer.inner.value_size,
            outer.inner.max_entries) == (MapType.ARRAY, 4, 4, 1)
    assert outer.init_slots == {0: "inner_a", 2: "inner_b"}
    oh = maps["outer_hash"]
    assert oh.inner is not None and (oh.inner.type, oh.inner.value_size) == (MapType.HASH, 8)
    assert oh.init_slots == {}
    jt = maps["jump_table"]
    assert jt.type == MapType.PROG_ARRAY and jt.value_size == 4
    assert jt.init_slots == {1: "tail_target_a", 3: "tail_target_b"}


def test_btf_maps_order_follows_section_offsets():
    elf, btf = fixture("maps_btf.bpf.o")
    maps = parse_btf_maps(elf, btf)
    offs = [m.extra["btf_var_offset"] for m in maps.values()]
    assert offs == sorted(offs)


def test_ringbuf_size_rounded_like_libbpf():
    # rb asks for 5000 bytes, rb3 for 3 * 4096
    elf, btf = load(unit_object("maps_ringbuf"))
    maps = parse_btf_maps(elf, btf)
    page = os.sysconf("SC_PAGE_SIZE")
    assert maps["rb"].max_entries == 2 * page if page == 4096 else maps["rb"].max_entries % page == 0
    assert maps["rb3"].max_entries == 4 * 4096


def test_opensnoop_maps():
    elf, btf = fixture("opensnoop.bpf.o")
    maps = parse_btf_maps(elf, btf)
    assert set(maps) >= {"start", "events"}


# case -> libbpf's message; the map definitions are in
# fixtures/src/unit/maps_malformed_<case>.bpf.c.
MALFORMED = {
    "no_type": "map type isn't specified",
    "unknown_field": "unknown field 'bogus'",
    "key_not_ptr": "key spec is not PTR",
    "uint_not_array": "expected ARRAY",
    "uint_not_ptr": "expected PTR",
    "conflicting_key": "conflicting key size 4 != 8",
    "values_not_mim": "should be map-in-map or prog-array",
    "values_not_last": "'values' member should be last",
    "bad_pinning": "invalid pinning value 7",
    "inner_pinned": "map 'm.inner': inner def can't be pinned",
    "prog_array_bad_values": "def is of unexpected kind",
    "static_map": "unsupported map linkage static",
    "def_not_struct": "unexpected def kind",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_btf_map_defs(case):
    msg = MALFORMED[case]
    elf, btf = load(unit_object(f"maps_malformed_{case}"))
    with pytest.raises(ObjectError) as ei:
        parse_btf_maps(elf, btf)
    assert msg in str(ei.value)
    if "linkage" not in msg and "def kind" not in msg:
        assert "'m" in str(ei.value)


def test_relaxed_mode_ignores_unknown_fields():
    elf, btf = load(unit_object("maps_malformed_unknown_field"))
    assert parse_btf_maps(elf, btf, strict=False)["m"].type == MapType.ARRAY


def test_maps_without_btf_is_an_error(tmp_path):
    elf, _ = fixture("maps_btf.bpf.o")
    with pytest.raises(ObjectError):
        parse_btf_maps(elf, None)


def test_bad_relocation_into_maps(tmp_path):
    elf, btf = fixture("maps_btf.bpf.o")
    idx = elf.section(".maps").index
    rel = elf.relocs[idx][0]
    rel.offset = 10**6
    with pytest.raises(ObjectError, match="cannot find map"):
        parse_btf_maps(elf, btf)
    rel.offset = 0
    rel.sym = 10**6
    with pytest.raises(ObjectError, match="bad symbol index"):
        parse_btf_maps(elf, btf)


# -- legacy maps ---------------------------------------------------------------------------


def test_legacy_maps_fixture():
    elf, _ = fixture("maps_legacy.bpf.o")
    maps = parse_legacy_maps(elf)
    assert list(maps) == ["legacy_hash", "legacy_array"]
    h = maps["legacy_hash"]
    assert (h.type, h.key_size, h.value_size, h.max_entries, h.flags) == (MapType.HASH, 4, 8, 64, 0)
    assert maps["legacy_array"].extra["sec_offset"] == 20
    assert maps["legacy_array"].section == "maps"


def test_legacy_maps_extra_fields():
    # iproute2's struct bpf_elf_map: 28-byte definitions, "pinned" has pinning = 2
    elf, _ = load(unit_object("maps_legacy_extra"))
    with pytest.raises(ObjectError, match="non-zero options"):
        parse_legacy_maps(elf)
    maps = parse_legacy_maps(elf, strict=False)
    assert maps["zero"].max_entries == 2 and "legacy_extra" not in maps["zero"].extra
    assert maps["pinned"].extra["legacy_extra"] == bytes(4) + (2).to_bytes(4, "little")


def test_legacy_maps_bad_size(tmp_path):
    elf, _ = fixture("maps_legacy.bpf.o")
    sec = elf.section("maps")
    sec.size -= 1
    with pytest.raises(ObjectError, match="unable to determine map definition size"):
        parse_legacy_maps(elf)


# -- global data ---------------------------------------------------------------------------


@pytest.mark.parametrize("obj,real,expected", [
    ("my_object_name", ".rodata", "my_objec.rodata"),
    ("my_object_name", ".data", "my_objec.data"),
    ("my_object_name", ".bss", "my_objec.bss"),
    ("my_object_name", ".kconfig", "my_obje.kconfig"),
    ("opensnoop", ".rodata", "opensnoo.rodata"),
    ("x", ".rodata", "x.rodata"),
    ("abc", ".rodata.abracadabra", ".rodata.abracad"),
    ("abc", ".data.foo", ".data.foo"),
    ("abc", ".rodata.str1.1", ".rodata.str1.1"),
    ("my-obj", ".bss", "my_obj.bss"),
    ("a", ".data.x-y", ".data.x_y"),
])
def test_internal_map_name(obj, real, expected):
    assert internal_map_name(obj, real) == expected
    assert len(internal_map_name(obj, real)) <= 15


def test_object_name():
    assert object_name("/x/opensnoop.bpf.o") == "opensnoop"
    assert object_name("a_very_long_object_name.bpf.o") == "a_very_long_obj"
    assert object_name("noext") == "noext"


def test_global_data_fixture_matches_libbpf():
    elf, btf = fixture("globals.bpf.o")
    maps, variables = parse_global_data(elf, btf, "globals")
    # names and order as libbpf 1.1's skeleton (bpftool gen skeleton) shows them
    assert list(maps) == ["globals.data", "globals.rodata", ".data.foo", ".rodata.bar",
                          ".rodata.str1.1", "globals.bss"]
    d, ro, bss = maps["globals.data"], maps["globals.rodata"], maps["globals.bss"]
    for m in maps.values():
        assert (m.type, m.key_size, m.max_entries) == (MapType.ARRAY, 4, 1)
        assert m.data is not None and len(m.data) == m.value_size
        assert m.value_size == elf.section(m.section).size
    assert d.flags == BPF_F_MMAPABLE and d.section == ".data"
    assert ro.flags == BPF_F_RDONLY_PROG | BPF_F_MMAPABLE
    assert bss.flags == BPF_F_MMAPABLE and bytes(bss.data) == bytes(bss.value_size)
    # no DATASEC for string literals: not mmapable, no BTF value type
    s = maps[".rodata.str1.1"]
    assert s.flags == BPF_F_RDONLY_PROG and s.btf_value_type_id == 0
    assert maps[".data.foo"].extra["kernel_name"] == ".data.foo"
    assert ro.btf_value_type_id and btf.type(ro.btf_value_type_id).name == ".rodata"

    v = variables["data_int"]
    assert (v.map_name, v.offset, v.size) == ("globals.data", 0, 4)
    assert v.value == (7).to_bytes(4, "little")
    assert variables["ro_int"].value == (42).to_bytes(4, "little")
    assert variables["data_arr"].offset == 8
    assert variables["static_counter"].linkage == 0
    assert variables["foo_int"].map_name == ".data.foo"
    assert variables["bss_arr"].value == bytes(32)
    # writing through the variable changes the map's initial data
    variables["ro_int"].value = (5).to_bytes(4, "little")
    assert ro.data[0:4] == (5).to_bytes(4, "little")
    # every variable lies inside its map
    for var in variables.values():
        assert var.offset + var.size <= maps[var.map_name].value_size


def test_global_data_without_btf():
    elf, _ = fixture("globals.bpf.o")
    maps, variables = parse_global_data(elf, None, "globals")
    assert variables == {}
    assert maps["globals.data"].flags == 0
    assert maps["globals.rodata"].flags == BPF_F_RDONLY_PROG


def test_hidden_globals_are_not_mmapable():
    elf, btf = load(unit_object("maps_hidden_global"))
    maps, variables = parse_global_data(elf, btf, "hid")
    assert maps["hid.data"].flags == 0
    assert variables["hidden_only"].linkage == 0


# -- arena globals -------------------------------------------------------------------------

def test_arena_globals():
    # fixtures/src/unit/maps_arena.bpf.c: a two-page arena map and `int __arena avar = 5`
    elf, btf = load(unit_object("maps_arena"))
    assert elf.section(".addr_space.1") is not None
    m = parse_btf_maps(elf, btf)["arena"]
    assert m.type == MapType.ARENA and m.flags == 1024
    assert m.extra["arena_data"][:4] == (5).to_bytes(4, "little")


@pytest.mark.parametrize("case,msg", [
    ("undeclared", "ARENA map should be explicitly declared"),
    ("two", "only single ARENA map"),
    ("small", "too small"),
])
def test_arena_errors(case, msg):
    # an arena global and a plain array map, with no / two / a zero-page arena map
    elf, btf = load(unit_object(f"maps_arena_{case}"))
    assert elf.section(".addr_space.1") is not None
    with pytest.raises(ObjectError, match=msg):
        parse_btf_maps(elf, btf)


# -- robustness: corrupted BTF never escapes as anything but ObjectError ------------------


def test_corrupted_map_btf_raises_object_error():
    import random

    from pyebpf.btf.types import Struct

    rng = random.Random(1234)
    for _ in range(300):
        elf, btf = fixture("maps_btf.bpf.o")
        structs = [t for t in btf if isinstance(t, Struct) and t.members]
        st = rng.choice(structs)
        m = rng.choice(st.members)
        choice = rng.randrange(3)
        if choice == 0:
            m.type = rng.randrange(-3, len(btf) + 5)
        elif choice == 1:
            m.name = rng.choice(["", "values", "key", "type", "pinning", "zzz"])
        else:
            st.size = rng.randrange(0, 1 << 20)
        try:
            parse_btf_maps(elf, btf)
            parse_global_data(elf, btf, "x")
        except ObjectError:
            pass
