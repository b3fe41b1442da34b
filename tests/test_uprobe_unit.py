"""Pure parts of uprobe support, no root needed: ELF function offsets (pyebpf.obj.elfsym),
binary/library resolution (pyebpf.obj.libpath), uprobe/kprobe_multi section parsing, legacy
event names, the uprobe PMU perf_event_attr, and kallsyms pattern matching."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest
from elftools.elf.elffile import ELFFile

from pyebpf.errors import OptionError
from pyebpf.links import kprobe as K
from pyebpf.links import uprobe as U
from pyebpf.obj import elfsym as E
from pyebpf.obj import libpath as L

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "..", "fixtures", "targets", "uprobe_target")
FUNCS = ("ut_add", "ut_mul", "ut_ret", "ut_str", "ut_versioned_old", "ut_versioned_new")


def _pyelftools_offsets(path: str) -> dict[str, int]:
    """name -> file offset computed independently through pyelftools' symbols and segments."""
    out = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_SYMTAB":
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] != "STT_FUNC" or not sym["st_value"]:
                    continue
                v = sym["st_value"]
                seg = next(s for s in loads if s["p_vaddr"] <= v < s["p_vaddr"] + s["p_memsz"])
                out[sym.name] = v - seg["p_vaddr"] + seg["p_offset"]
    return out


# --- elfsym against the committed target ------------------------------------------------------


def test_offsets_match_pyelftools() -> None:
    want = _pyelftools_offsets(TARGET)
    b = E.ElfBinary.from_file(TARGET)
    assert b.is_shared  # a PIE is ET_DYN
    for name in FUNCS:
        assert b.find(name) == want[name], name
    assert E.find_func_offset(TARGET, "ut_add") == want["ut_add"]
    assert E.resolve_func_offsets(TARGET, ["ut_ret", "ut_add"]) == [want["ut_ret"], want["ut_add"]]


def test_versioned_names() -> None:
    want = _pyelftools_offsets(TARGET)
    b = E.ElfBinary.from_file(TARGET)
    # the bare name is the default version (@@VER_2), never the hidden @VER_1
    assert b.find("ut_versioned") == want["ut_versioned_new"]
    assert b.find("ut_versioned@@VER_2") == want["ut_versioned_new"]
    assert b.find("ut_versioned@VER_2") == want["ut_versioned_new"]
    assert b.find("ut_versioned@VER_1") == want["ut_versioned_old"]
    dyn = {f.name for f in b.functions if f.table == ".dynsym"}
    assert {"ut_versioned@@VER_2", "ut_versioned@VER_1", "ut_add@@VER_1"} <= dyn
    with pytest.raises(E.SymbolError, match="ut_versioned@VER_9"):
        b.find("ut_versioned@VER_9")


def test_pattern_and_listing() -> None:
    want = _pyelftools_offsets(TARGET)
    got = E.resolve_pattern_offsets(TARGET, "ut_*")
    # one entry per function, aliases (the versioned names) folded into one
    assert sorted(s.offset for s in got) == sorted(want[n] for n in FUNCS)
    assert {s.name for s in E.resolve_pattern_offsets(TARGET, "ut_?u?")} == {"ut_mul"}
    assert E.resolve_pattern_offsets(TARGET, "no_such_*") == []
    names = {f.base for f in E.list_functions(TARGET)}
    assert set(FUNCS) | {"main"} <= names


def test_missing_function_names_function_and_file() -> None:
    with pytest.raises(E.SymbolError) as e:
        E.find_func_offset(TARGET, "ut_nope")
    assert "ut_nope" in str(e.value) and TARGET in str(e.value)
    assert e.value.symbol == "ut_nope" and e.value.path == TARGET
    with pytest.raises(E.SymbolError, match="ut_nope"):
        E.resolve_func_offsets(TARGET, ["ut_add", "ut_nope"])


def test_not_elf_and_missing_file(tmp_path) -> None:
    p = tmp_path / "text"
    p.write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(E.SymbolError, match="not an ELF file"):
        E.find_func_offset(str(p), "x")
    with pytest.raises(E.SymbolError, match="cannot read binary"):
        E.find_func_offset(str(tmp_path / "none"), "x")
    # truncated headers: a pyebpf error, never a struct.error
    with pytest.raises(E.SymbolError, match="malformed"):
        E.ElfBinary(open(TARGET, "rb").read()[:80], "cut")


def test_archive_member(tmp_path) -> None:
    import zipfile

    z = tmp_path / "app.apk"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("assets/readme.txt", "x" * 100, compress_type=zipfile.ZIP_DEFLATED)
        zf.write(TARGET, "lib/x86/uprobe_target", compress_type=zipfile.ZIP_STORED)
        zf.writestr("lib/packed.so", open(TARGET, "rb").read(), compress_type=zipfile.ZIP_DEFLATED)
    start, data = E.archive_member(str(z), "lib/x86/uprobe_target")
    assert data == open(TARGET, "rb").read()
    assert open(z, "rb").read()[start : start + 4] == b"\x7fELF"
    assert E.find_func_offset_in_archive(str(z), "lib/x86/uprobe_target", "ut_add") == \
        start + E.find_func_offset(TARGET, "ut_add")
    with pytest.raises(E.SymbolError, match="compressed"):
        E.archive_member(str(z), "lib/packed.so")
    with pytest.raises(E.SymbolError, match="no member 'nope'"):
        E.archive_member(str(z), "nope")
    with pytest.raises(E.SymbolError, match="cannot read archive"):
        E.archive_member(TARGET, "x")


# --- elfsym against synthetic ELF files --------------------------------------------------------


def _elf(syms: list[tuple[str, int, int, int, int]], *, etype: int = 3, dynsym: bool = False,
         vaddr: int = 0x400000, seg_off: int = 0x1000) -> bytes:
    """A minimal ELF64 with one PT_LOAD (vaddr -> seg_off) and one symbol table.

    syms: (name, value, type, bind, shndx)."""
    strtab = b"\0"
    offs = []
    for name, *_ in syms:
        offs.append(len(strtab))
        strtab += name.encode() + b"\0"
    symtab = bytes(24)
    for (_, value, typ, bind, shndx), no in zip(syms, offs, strict=True):
        symtab += struct.pack("<IBBHQQ", no, (bind << 4) | typ, 0, shndx, value, 16)
    shstr = b"\0.symtab\0.strtab\0.shstrtab\0.text\0"
    ehsize, phentsize, shentsize = 64, 56, 64
    body_off = ehsize + phentsize
    sym_off = body_off
    str_off = sym_off + len(symtab)
    shs_off = str_off + len(strtab)
    sh_off = (shs_off + len(shstr) + 7) & ~7
    eh = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), etype, 62, 1,
                     vaddr, ehsize, sh_off, 0, ehsize, phentsize, 1, shentsize, 5, 3)
    ph = struct.pack("<IIQQQQQQ", 1, 5, seg_off, vaddr, vaddr, 0x10000, 0x10000, 0x1000)
    sh = bytes(64)
    sh += struct.pack("<IIQQQQIIQQ", 1, 11 if dynsym else 2, 0, 0, sym_off, len(symtab), 2, 1, 8, 24)
    sh += struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0)
    sh += struct.pack("<IIQQQQIIQQ", 17, 3, 0, 0, shs_off, len(shstr), 0, 0, 1, 0)
    sh += struct.pack("<IIQQQQIIQQ", 27, 1, 6, vaddr, seg_off, 0x10000, 0, 0, 16, 0)
    data = eh + ph + symtab + strtab + shstr
    return data + bytes(sh_off - len(data)) + sh


FUNC, IFUNC, OBJECT = 2, 10, 1
GLOBAL, WEAK, LOCAL = 1, 2, 0


def test_synthetic_offsets_through_pt_load() -> None:
    b = E.ElfBinary(_elf([("f", 0x400010, FUNC, GLOBAL, 4), ("g", 0x400200, IFUNC, GLOBAL, 4),
                          ("obj", 0x400300, OBJECT, GLOBAL, 4), ("undef", 0, FUNC, GLOBAL, 0)]),
                    "synthetic")
    assert b.find("f") == 0x1010  # 0x400010 - vaddr 0x400000 + offset 0x1000
    assert b.find("g") == 0x1200  # STT_GNU_IFUNC counts as a function
    assert [f.ifunc for f in b.functions] == [False, True]
    for name in ("obj", "undef"):
        with pytest.raises(E.SymbolError, match="not found in synthetic"):
            b.find(name)


def test_synthetic_ambiguity_and_weak() -> None:
    two = E.ElfBinary(_elf([("dup", 0x400010, FUNC, GLOBAL, 4), ("dup", 0x400020, FUNC, LOCAL, 4)]),
                      "two.so")
    with pytest.raises(E.SymbolError, match="ambiguous function 'dup' in two.so"):
        two.find("dup")
    same = E.ElfBinary(_elf([("dup", 0x400010, FUNC, GLOBAL, 4), ("dup", 0x400010, FUNC, LOCAL, 4)]),
                       "same")
    assert same.find("dup") == 0x1010  # same address twice is one function
    weak_first = E.ElfBinary(_elf([("w", 0x400010, FUNC, WEAK, 4), ("w", 0x400040, FUNC, GLOBAL, 4)]))
    assert weak_first.find("w") == 0x1040  # the strong definition wins
    weak_last = E.ElfBinary(_elf([("w", 0x400040, FUNC, GLOBAL, 4), ("w", 0x400010, FUNC, WEAK, 4)]))
    assert weak_last.find("w") == 0x1040
    # many names at once obey the same rules
    assert weak_first.resolve(["w", "w"]) == [0x1040, 0x1040]


def test_synthetic_zero_address_and_names_in_symtab() -> None:
    b = E.ElfBinary(_elf([("z", 0, FUNC, GLOBAL, 4)], etype=2, vaddr=0, seg_off=0), "exe")
    with pytest.raises(E.SymbolError, match="address 0 in exe .*shared library path"):
        b.find("z")
    # .symtab spells versions into names: func@VER / func@@VER
    v = E.ElfBinary(_elf([("h@V1", 0x400010, FUNC, GLOBAL, 4), ("h@@V2", 0x400020, FUNC, GLOBAL, 4)]))
    assert v.find("h") == 0x1020 and v.find("h@V1") == 0x1010 and v.find("h@@V2") == 0x1020
    d = E.ElfBinary(_elf([("k", 0x400010, FUNC, GLOBAL, 4)], dynsym=True))
    assert d.functions[0].table == ".dynsym" and d.find("k") == 0x1010


@pytest.mark.parametrize("text,pattern,ok", [
    ("ut_add", "ut_*", True), ("ut_add", "*", True), ("", "*", True), ("ut_add", "ut_ad?", True),
    ("ut_add", "ut_a", False), ("ut_add", "*add", True), ("ut_add", "*x*", False),
    ("abcabc", "a*c", True), ("abcabd", "a*c", False), ("a[b]", "a[b]", True), ("ab", "a[b]", False),
])
def test_glob_match(text: str, pattern: str, ok: bool) -> None:
    assert E.glob_match(text, pattern) is ok


# --- libpath -----------------------------------------------------------------------------------


def _cache_new(entries: list[tuple[int, str, str]]) -> bytes:
    """A glibc-ld.so.cache1.1 image (string offsets from the start of the new header)."""
    head = 48
    table = head + 24 * len(entries)
    strs = b""
    ents = b""
    for flags, key, value in entries:
        k = table + len(strs)
        strs += key.encode() + b"\0"
        v = table + len(strs)
        strs += value.encode() + b"\0"
        ents += struct.pack("<iIIIQ", flags, k, v, 0, 0)
    hdr = struct.pack("<20sIIB3xI12x", b"glibc-ld.so.cache1.1", len(entries), len(strs), 2, 0)
    assert len(hdr) == head
    return hdr + ents + strs


def test_ld_so_cache_new_format() -> None:
    data = _cache_new([(0x0303, "libfoo.so.1", "/opt/x/libfoo.so.1"),
                       (0x0003, "libfoo.so.1", "/opt/i386/libfoo.so.1"),
                       (0x0a03, "libbar.so", "/opt/arm/libbar.so")])
    assert L.parse_ld_so_cache(data)[0] == ("libfoo.so.1", "/opt/x/libfoo.so.1", 0x0303)
    assert L.search_ld_so_cache("libfoo.so.1", data, "x86_64") == "/opt/x/libfoo.so.1"
    assert L.search_ld_so_cache("libbar.so", data, "x86_64") is None  # another ABI
    assert L.search_ld_so_cache("libbar.so", data, "aarch64") == "/opt/arm/libbar.so"
    assert L.search_ld_so_cache("libnone.so", data, "x86_64") is None


def test_ld_so_cache_old_then_new_and_garbage() -> None:
    new = _cache_new([(0x0303, "libq.so.2", "/q/libq.so.2")])
    old_entries = 2
    old = b"ld.so-1.7.0\0" + struct.pack("<I", old_entries) + bytes(12 * old_entries)
    pad = bytes(((len(old) + 7) & ~7) - len(old))
    assert L.parse_ld_so_cache(old + pad + new) == [("libq.so.2", "/q/libq.so.2", 0x0303)]
    # old format alone: strings count from the end of the entry table
    strs = b"libo.so\0/o/libo.so\0"
    only_old = b"ld.so-1.7.0\0" + struct.pack("<I", 1) + struct.pack("<iII", 3, 0, 8) + strs
    assert L.parse_ld_so_cache(only_old) == [("libo.so", "/o/libo.so", 3)]
    for junk in (b"", b"glibc-ld.so.cache1.1", new[:60], b"\xff" * 100, new[:48] + bytes(30)):
        assert isinstance(L.parse_ld_so_cache(junk), list)


def test_real_ld_so_cache_knows_libc() -> None:
    if not os.path.exists("/etc/ld.so.cache"):
        pytest.skip("no /etc/ld.so.cache on this system")
    path = L.search_ld_so_cache("libc.so.6", open("/etc/ld.so.cache", "rb").read())
    assert path is not None and os.path.exists(path)


MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234   /usr/bin/app
7f0000000000-7f0000020000 r--p 00000000 08:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000020000-7f0000100000 r-xp 00020000 08:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 r-xp 00000000 08:01 77     /opt/lib/libfoo-2.1.so
7f0000300000-7f0000301000 r-xp 00000000 08:01 78     /tmp/libgone.so (deleted)
7f0000400000-7f0000401000 rw-p 00000000 00:00 0      [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0
bad line
"""


def test_maps_parsing_and_search() -> None:
    rows = L.parse_maps(MAPS)
    assert rows[1] == (0x7F0000000000, 0x7F0000020000, "r--p", 0,
                       "/usr/lib/x86_64-linux-gnu/libc.so.6")
    assert len(rows) == 5  # only file-backed lines
    assert L.search_maps("libc.so.6", MAPS) == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert L.search_maps("libc", MAPS) == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert L.search_maps("libfoo", MAPS) == "/opt/lib/libfoo-2.1.so"
    assert L.search_maps("app", MAPS) == "/usr/bin/app"
    assert L.search_maps("libgone.so", MAPS) is None
    assert L.search_maps("libl", MAPS) is None


def test_resolve_binary_like_libbpf(tmp_path) -> None:
    bindir, libdir = tmp_path / "bin", tmp_path / "lib"
    bindir.mkdir()
    libdir.mkdir()
    exe = bindir / "mytool"
    exe.write_bytes(b"")
    exe.chmod(0o755)
    noexec = bindir / "notexec"
    noexec.write_bytes(b"")
    noexec.chmod(0o644)
    lib = libdir / "libmine.so.3"
    lib.write_bytes(b"")
    env = {"PATH": f"/nonexistent::{bindir}", "LD_LIBRARY_PATH": str(libdir)}
    assert L.resolve_binary("mytool", env=env) == str(exe)
    assert L.resolve_binary("libmine.so.3", env=env) == str(lib)
    # a .so name is never looked for in PATH, nor a program in the library dirs
    with pytest.raises(L.LibraryNotFound) as e:
        L.resolve_binary("libmine.so.3", env={"PATH": str(libdir)}, ld_so_cache="/nonexistent")
    assert "libmine.so.3" in str(e.value) and "ld.so cache" in str(e.value)
    assert str(libdir) not in e.value.searched
    if os.geteuid() != 0:  # root passes any X_OK check on a file with an x bit only; here none
        with pytest.raises(L.LibraryNotFound):
            L.resolve_binary("notexec", env=env)
    with pytest.raises(L.LibraryNotFound, match="does not exist"):
        L.resolve_binary(str(tmp_path / "missing"))
    assert L.resolve_binary(str(exe)) == str(exe)
    with pytest.raises(L.LibraryNotFound, match="empty"):
        L.resolve_binary("")


def test_resolve_binary_from_ld_so_cache(tmp_path) -> None:
    lib = tmp_path / "libcached.so.7"
    lib.write_bytes(b"")
    cache = tmp_path / "ld.so.cache"
    req = {"x86_64": 0x0300, "aarch64": 0x0A00}.get(os.uname().machine, 0)
    cache.write_bytes(_cache_new([(0x0003 | req, "libcached.so.7", str(lib))]))
    assert L.resolve_binary("libcached.so.7", env={}, ld_so_cache=str(cache)) == str(lib)


def test_resolve_binary_from_own_maps() -> None:
    # this process has libc mapped: a bare "libc" only resolves through /proc/PID/maps
    path = L.resolve_binary("libc", pid=os.getpid(), env={})
    assert os.path.basename(path).startswith("libc") and E.find_func_offset(path, "getpid") > 0
    assert L.is_library_name("libc.so.6") and L.is_library_name("x.so")
    assert not L.is_library_name("libc") and not L.is_library_name("python3")


# --- uprobe / kprobe_multi pure pieces ---------------------------------------------------------


def test_parse_func_offset() -> None:
    assert U.parse_func_offset("f") == ("f", 0)
    assert U.parse_func_offset("f+0x10") == ("f", 16)
    assert U.parse_func_offset("f+16") == ("f", 16)
    assert U.parse_func_offset("f+010") == ("f", 8)
    assert U.parse_func_offset("f+zz") == ("f+zz", 0)
    assert U.parse_func_offset("+4") == ("+4", 0)


@pytest.mark.parametrize("section,want", [
    ("uprobe/libc.so.6:getpid", ("libc.so.6", "getpid", 0, False)),
    ("uretprobe/libc.so.6:getpid", ("libc.so.6", "getpid", 0, True)),
    ("uprobe.s//usr/bin/x:f+0x8", ("/usr/bin/x", "f", 8, False)),
    ("uretprobe.s//usr/bin/x:f", ("/usr/bin/x", "f", 0, True)),
    ("uprobe//proc/self/exe:main", ("/proc/self/exe", "main", 0, False)),
    ("uprobe/./bin:0x1234", ("./bin", None, 0x1234, False)),
    ("uprobe/bin:1234", ("bin", None, 1234, False)),
    ("uprobe/lib.so:f@@V_1", ("lib.so", "f@@V_1", 0, False)),
])
def test_parse_uprobe_section(section: str, want: tuple) -> None:
    t = U.parse_uprobe_section(section)
    assert t is not None and (t.path, t.func, t.offset, t.retprobe) == want


def test_parse_uprobe_section_bare_and_malformed() -> None:
    for bare in ("uprobe", "uretprobe.s", "uprobe/"):
        assert U.parse_uprobe_section(bare) is None
    for bad in ("uprobe/libc.so.6", "uprobe/libc.so.6:", "uretprobe/libc.so.6:f+4",
                "uretprobe/x:0x10"):
        with pytest.raises(OptionError):
            U.parse_uprobe_section(bad)


def test_parse_uprobe_multi_section() -> None:
    assert U.parse_uprobe_multi_section("uprobe.multi") is None
    assert U.parse_uprobe_multi_section("uprobe.multi/libc.so.6:get*") == \
        ("libc.so.6", "get*", False, False)
    assert U.parse_uprobe_multi_section("uretprobe.multi//bin/x:a?") == ("/bin/x", "a?", True, False)
    assert U.parse_uprobe_multi_section("uprobe.session.s/x:f") == ("x", "f", False, True)
    for bad in ("uprobe.multi/x", "uprobe.multi/x:", "uprobe.multi/:f"):
        with pytest.raises(OptionError, match="invalid format"):
            U.parse_uprobe_multi_section(bad)


def test_legacy_uprobe_event_name() -> None:
    n = U.legacy_uprobe_event_name("/usr/lib/libc.so.6", 0xD54E0, pid=42, index=3)
    assert n == "pyebpf_42_3_libc_so_6_0xd54e0"
    long = U.legacy_uprobe_event_name("/x/" + "a" * 200, 1, pid=1, index=1)
    assert len(long) < 64 and long.startswith("pyebpf_1_1_aaa")
    assert U.legacy_uprobe_event_name("/b", 1) != U.legacy_uprobe_event_name("/b", 1)


def test_uprobe_perf_attr() -> None:
    pa = U.uprobe_perf_attr("/bin/x", 0x1234, retprobe=True, ref_ctr_offset=0x40, pmu_type=8,
                            retprobe_bit=0)
    a = pa.attr
    assert a.type == 8 and a.size == 136 and a.config == 1 | (0x40 << 32)
    assert a.config2 == 0x1234 and ctypes.string_at(a.config1) == b"/bin/x"
    with pytest.raises(U.AttachError, match="retprobe"):
        U.uprobe_perf_attr("/bin/x", 0, retprobe=True, pmu_type=8, retprobe_bit=None)
    with pytest.raises(OptionError, match="32 bits"):
        U.uprobe_perf_attr("/bin/x", 0, ref_ctr_offset=1 << 33, pmu_type=8, retprobe_bit=0)


KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81001000 t __pfx_do_nanosleep
ffffffff81001010 t do_nanosleep
ffffffff81002000 T do_nanosleep_x
ffffffff81003000 D do_nanosleep_data
ffffffff81004000 t do_nanosleep.cold
ffffffff81005000 t do_nanosleep_mod\t[some_mod]
ffffffff81001010 t do_nanosleep
garbage
"""


def test_kallsyms_matching() -> None:
    rows = K.parse_kallsyms(KALLSYMS)
    assert rows[2] == (0xFFFFFFFF81001010, "t", "do_nanosleep", None)
    assert rows[6][3] == "some_mod"
    assert K.kallsyms_matching("do_nanosleep*", KALLSYMS) == \
        ["do_nanosleep", "do_nanosleep_x", "do_nanosleep_mod"]
    assert K.kallsyms_matching("_stext", KALLSYMS) == []
    assert K.kallsyms_matching("nothing*", KALLSYMS) == []


def test_parse_kprobe_multi_section() -> None:
    assert K.parse_kprobe_multi_section("kprobe.multi") is None
    assert K.parse_kprobe_multi_section("kretprobe.multi") is None
    assert K.parse_kprobe_multi_section("kprobe.session") is None
    assert K.parse_kprobe_multi_section("kprobe.multi/do_*") == ("do_*", False, False)
    assert K.parse_kprobe_multi_section("kretprobe.multi/a?b") == ("a?b", True, False)
    assert K.parse_kprobe_multi_section("kprobe.session/x.y") == ("x.y", False, True)
    # libbpf's %m[a-zA-Z0-9_.*?] takes the valid prefix
    assert K.parse_kprobe_multi_section("kprobe.multi/ab!c") == ("ab", False, False)
    with pytest.raises(OptionError, match="invalid"):
        K.parse_kprobe_multi_section("kprobe.multi/!x")


def test_corrupt_inputs_raise_only_pyebpf_errors() -> None:
    """Random byte flips and truncations of the target and of an ld.so.cache image: only
    SymbolError (or an empty cache listing), never struct.error/IndexError/OverflowError."""
    import random

    rnd = random.Random(7)
    elf = open(TARGET, "rb").read()
    for _ in range(400):
        b = bytearray(elf)
        for _ in range(rnd.randint(1, 12)):
            pos = rnd.randrange(0x40) if rnd.random() < 0.4 else rnd.randrange(len(b))
            b[pos] = rnd.randrange(256)
        if rnd.random() < 0.2:
            b = b[: rnd.randrange(len(b))]
        try:
            x = E.ElfBinary(bytes(b), "fuzz")
            x.match("ut_*")
            x.find("ut_add")
        except E.SymbolError:
            pass
    cache = _cache_new([(0x0303, f"lib{i}.so", f"/l/lib{i}.so") for i in range(20)])
    for _ in range(400):
        b = bytearray(cache)
        for _ in range(4):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        assert isinstance(L.parse_ld_so_cache(bytes(b)), list)
