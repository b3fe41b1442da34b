"""Map specs from object files: BTF-defined .maps, legacy maps, global data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
CLANG = shutil.which("clang-19") or shutil.which("clang")


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


def compile_c(tmp_path: Path, src: str, name: str = "t") -> Path:
    if CLANG is None:
        pytest.skip("clang not installed")
    c = tmp_path / f"{name}.bpf.c"
    o = tmp_path / f"{name}.bpf.o"
    c.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n' + src)
    r = subprocess.run([CLANG, "-g", "-O2", "-target", "bpf", "-c", "-I/usr/include/x86_64-linux-gnu",
                        str(c), "-o", str(o)], capture_output=True, text=True)
    if r.returncode:
        pytest.fail(r.stderr)
    return o


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


def test_ringbuf_size_rounded_like_libbpf(tmp_path):
    o = compile_c(tmp_path, """
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 5000); } rb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 3 * 4096); } rb3 SEC(".maps");
char LICENSE[] SEC("license") = "GPL";
""")
    elf, btf = load(o)
    maps = parse_btf_maps(elf, btf)
    page = os.sysconf("SC_PAGE_SIZE")
    assert maps["rb"].max_entries == 2 * page if page == 4096 else maps["rb"].max_entries % page == 0
    assert maps["rb3"].max_entries == 4 * 4096


def test_opensnoop_maps():
    elf, btf = fixture("opensnoop.bpf.o")
    maps = parse_btf_maps(elf, btf)
    assert set(maps) >= {"start", "events"}


MALFORMED = {
    "no_type": ("struct { __uint(max_entries, 1); __type(key, int); __type(value, int); } m SEC(\".maps\");",
                "map type isn't specified"),
    "unknown_field": ("struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);"
                      " __uint(bogus, 3); } m SEC(\".maps\");", "unknown field 'bogus'"),
    "key_not_ptr": ("struct { __uint(type, BPF_MAP_TYPE_HASH); int key; } m SEC(\".maps\");",
                    "key spec is not PTR"),
    "uint_not_array": ("struct { int *type; } m SEC(\".maps\");", "expected ARRAY"),
    "uint_not_ptr": ("struct { int type; } m SEC(\".maps\");", "expected PTR"),
    "conflicting_key": ("struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, int);"
                        " __uint(key_size, 8); } m SEC(\".maps\");", "conflicting key size 4 != 8"),
    "values_not_mim": ("struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, int);"
                       " __array(values, int (void *)); } m SEC(\".maps\");",
                       "should be map-in-map or prog-array"),
    "values_not_last": ("struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); };"
                        " struct { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);"
                        " struct inner *values[0]; __uint(max_entries, 1); } m SEC(\".maps\");",
                        "'values' member should be last"),
    "bad_pinning": ("struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(pinning, 7); } m SEC(\".maps\");",
                    "invalid pinning value 7"),
    "inner_pinned": ("struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(pinning, 1); };"
                     " struct { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);"
                     " __array(values, struct inner); } m SEC(\".maps\");",
                     "map 'm.inner': inner def can't be pinned"),
    "prog_array_bad_values": ("struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY);"
                              " __array(values, int); } m SEC(\".maps\");",
                              "def is of unexpected kind"),
    "static_map": ("static struct { __uint(type, BPF_MAP_TYPE_ARRAY); } m SEC(\".maps\");"
                   " SEC(\"socket\") int f(void *c) { return bpf_map_lookup_elem(&m, &(int){0}) != 0; }",
                   "unsupported map linkage static"),
    "def_not_struct": ("int m SEC(\".maps\");", "unexpected def kind"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_btf_map_defs(tmp_path, case):
    src, msg = MALFORMED[case]
    o = compile_c(tmp_path, src + '\nchar LICENSE[] SEC("license") = "GPL";\n', case)
    elf, btf = load(o)
    with pytest.raises(ObjectError) as ei:
        parse_btf_maps(elf, btf)
    assert msg in str(ei.value)
    if "linkage" not in msg and "def kind" not in msg:
        assert "'m" in str(ei.value)


def test_relaxed_mode_ignores_unknown_fields(tmp_path):
    src, _ = MALFORMED["unknown_field"]
    o = compile_c(tmp_path, src + '\nchar LICENSE[] SEC("license") = "GPL";\n')
    elf, btf = load(o)
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


def test_legacy_maps_extra_fields(tmp_path):
    o = compile_c(tmp_path, """
struct bpf_elf_map { unsigned int type, key_size, value_size, max_entries, map_flags, id, pinning; };
struct bpf_elf_map SEC("maps") zero = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 2 };
struct bpf_elf_map SEC("maps") pinned = { .type = BPF_MAP_TYPE_HASH, .key_size = 4, .value_size = 8, .max_entries = 8, .pinning = 2 };
char LICENSE[] SEC("license") = "GPL";
""")
    elf, _ = load(o)
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


def test_hidden_globals_are_not_mmapable(tmp_path):
    o = compile_c(tmp_path, """
__attribute__((visibility("hidden"))) int hidden_only = 1;
SEC("socket") int f(void *c) { return hidden_only; }
char LICENSE[] SEC("license") = "GPL";
""", "hid")
    elf, btf = load(o)
    maps, variables = parse_global_data(elf, btf, "hid")
    assert maps["hid.data"].flags == 0
    assert variables["hidden_only"].linkage == 0


# -- arena globals -------------------------------------------------------------------------

ARENA_MAP = ("struct { __uint(type, 33); __uint(map_flags, 1024); __uint(max_entries, %d); }"
             " %s SEC(\".maps\");\n")
ARENA_VAR = ("int __attribute__((address_space(1))) avar = 5;\n"
             "SEC(\"syscall\") int f(void *c) { return avar; }\n")


def test_arena_globals(tmp_path):
    o = compile_c(tmp_path, ARENA_MAP % (2, "arena") + ARENA_VAR, "arena")
    elf, btf = load(o)
    if elf.section(".addr_space.1") is None:
        pytest.skip("compiler did not emit .addr_space.1")
    m = parse_btf_maps(elf, btf)["arena"]
    assert m.type == MapType.ARENA and m.flags == 1024
    assert m.extra["arena_data"][:4] == (5).to_bytes(4, "little")


@pytest.mark.parametrize("maps_src,msg", [
    ("", "ARENA map should be explicitly declared"),
    (ARENA_MAP % (1, "a1") + ARENA_MAP % (1, "a2"), "only single ARENA map"),
    (ARENA_MAP % (0, "arena"), "too small"),
])
def test_arena_errors(tmp_path, maps_src, msg):
    o = compile_c(tmp_path, maps_src + ARENA_VAR
                  + "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);"
                  " __type(key, int); __type(value, int); } plain SEC(\".maps\");\n", "arenaerr")
    elf, btf = load(o)
    if elf.section(".addr_space.1") is None:
        pytest.skip("compiler did not emit .addr_space.1")
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
