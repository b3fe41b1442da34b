"""Tests for the lazy kernel BTF index (pyebpf.btf.kernel)."""

from __future__ import annotations

import mmap
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyebpf.btf import kernel as kmod
from pyebpf.btf.kernel import DEFAULT_PATH, KernelBTF, cache_dir, kernel_btf
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import BTFView, Kind, essential_name
from pyebpf.errors import BTFError

HAVE_VMLINUX = os.path.exists(DEFAULT_PATH)
needs_vmlinux = pytest.mark.skipif(not HAVE_VMLINUX, reason="no /sys/kernel/btf/vmlinux")

COMMON_NAMES = [
    "task_struct", "trace_event_raw_sys_enter", "sk_buff", "file", "inode", "mm_struct",
    "cred", "pt_regs", "bpf_map", "xdp_md", "sock", "net_device", "path", "dentry",
    "super_block", "pid_t", "u32", "int", "vm_area_struct", "list_head",
]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own cache dir: never touch the user's ~/.cache."""
    monkeypatch.setenv("PYEBPF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def eager() -> BTF:
    """The whole vmlinux BTF parsed eagerly by pyebpf.btf.spec (the reference)."""
    return BTF.from_bytes(Path(DEFAULT_PATH).read_bytes())


@pytest.fixture(scope="module")
def lazy() -> KernelBTF:
    return KernelBTF.open(DEFAULT_PATH, cache=False)


@pytest.fixture(scope="module")
def tabled() -> KernelBTF:
    """An instance whose lookups use the crc32 name table (the cached path)."""
    btf = KernelBTF.open(DEFAULT_PATH, cache=False)
    btf._cache_ok = True  # pretend a cache took writes: lookups build the table
    assert btf._use_table()
    return btf


@pytest.fixture(params=["search", "table"])
def looker(request) -> KernelBTF:
    """Both name lookup paths: string search (no cache) and the name table (cache)."""
    return request.getfixturevalue("lazy" if request.param == "search" else "tabled")


@pytest.fixture(scope="module")
def bpftool_names() -> dict[int, tuple[str, str]]:
    """id -> (KIND, name) as printed by `bpftool btf dump` (an independent parser)."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed")
    out = subprocess.run(["bpftool", "btf", "dump", "file", DEFAULT_PATH],
                         capture_output=True, text=True, check=True).stdout
    line = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'", re.M)
    return {int(m[1]): (m[2], m[3]) for m in line.finditer(out)}


# -- vmlinux against references -----------------------------------------------------------


@needs_vmlinux
def test_protocol_and_len(lazy, eager):
    assert isinstance(lazy, BTFView)
    assert len(lazy) == len(eager)
    assert lazy.start_id == 1
    assert list(lazy.own_ids()) == list(range(1, len(eager)))


@needs_vmlinux
def test_random_types_equal_eager(lazy, eager):
    rng = random.Random(1234)
    n = len(eager)
    ids = [0, 1, 2, n - 1, n - 2] + rng.sample(range(1, n), 600)
    for tid in ids:
        assert lazy.type(tid) == eager.type(tid), tid
        assert lazy.kind_of(tid) == eager.type(tid).kind
        assert lazy.name_of(tid) == eager.type(tid).name


@needs_vmlinux
def test_every_kind_equals_eager(lazy, eager):
    """At least a few records of every kind present decode identically."""
    seen: dict[int, int] = {}
    for tid in range(1, len(eager)):
        k = eager.type(tid).kind
        if seen.get(k, 0) < 5:
            seen[k] = seen.get(k, 0) + 1
            assert lazy.type(tid) == eager.type(tid)
    assert Kind.STRUCT in seen and Kind.FUNC_PROTO in seen and Kind.ENUM in seen


@needs_vmlinux
def test_names_and_kinds_vs_bpftool(lazy, bpftool_names):
    assert len(bpftool_names) == len(lazy) - 1
    rng = random.Random(99)
    for tid in rng.sample(sorted(bpftool_names), 400):
        kind, name = bpftool_names[tid]
        assert lazy.name_of(tid) == ("" if name == "(anon)" else name)
        assert Kind(lazy.kind_of(tid)).name == kind


@needs_vmlinux
def test_type_is_memoized(lazy):
    tid = lazy.find("task_struct", Kind.STRUCT)[0]
    assert lazy.type(tid) is lazy.type(tid)
    assert lazy.type(0).kind == Kind.UNKN


@needs_vmlinux
def test_find_known_names(looker, eager):
    lazy = looker
    (ts,) = lazy.find("task_struct", Kind.STRUCT)
    assert lazy.type(ts).name == "task_struct" and lazy.type(ts).size > 1000
    assert lazy.find("trace_event_raw_sys_enter") == eager.find("trace_event_raw_sys_enter")
    assert lazy.find("trace_event_raw_sys_enter", Kind.STRUCT)
    assert lazy.find("no_such_type_in_any_kernel_xyz") == []
    assert lazy.find("") == []
    for name in COMMON_NAMES:
        assert lazy.find(name) == eager.find(name), name
        for kind in (Kind.STRUCT, Kind.TYPEDEF, Kind.FWD):
            assert lazy.find(name, kind) == eager.find(name, kind), (name, kind)
        assert lazy.candidates(name) == eager.candidates(name), name


@needs_vmlinux
def test_find_random_names_equal_eager(looker, eager):
    lazy = looker
    rng = random.Random(7)
    names = sorted({eager.type(t).name for t in rng.sample(range(1, len(eager)), 300)} - {""})
    for name in names:
        assert lazy.find(name) == eager.find(name), name
        assert lazy.candidates(essential_name(name)) == \
            eager.candidates(essential_name(name)), name


@needs_vmlinux
def test_flavoured_names_equal_eager(looker, eager):
    """Every kernel type with ___ in its name is a candidate of its essential name."""
    lazy = looker
    flavoured = {t.name for t in (eager.type(i) for i in range(1, len(eager)))
                 if "___" in t.name}
    for name in sorted(flavoured):
        ess = essential_name(name)
        assert lazy.candidates(ess) == eager.candidates(ess), name
        assert lazy.find(name) == eager.find(name), name
    assert flavoured
    assert lazy.candidates("a___b") == [] == eager.candidates("a___b")


@needs_vmlinux
def test_string_and_raw(lazy, eager):
    raw = lazy.raw
    assert len(raw) == os.path.getsize(DEFAULT_PATH)
    assert struct.unpack_from("<H", raw)[0] == 0xEB9F
    assert raw.readonly
    assert lazy.string(0) == ""
    assert lazy.strings_len == eager.strings_len
    tid = lazy.find("task_struct")[0]
    name_off = struct.unpack_from("<I", raw, 24 + lazy._offsets[tid - 1] * 4)[0]
    assert lazy.string(name_off) == "task_struct"
    with pytest.raises(BTFError):
        lazy.string(lazy.strings_len)
    with pytest.raises(BTFError):
        lazy.string(-1)


@needs_vmlinux
def test_out_of_range_ids(lazy):
    for bad in (-1, len(lazy), len(lazy) + 10, 1 << 40):
        with pytest.raises(BTFError):
            lazy.type(bad)
        with pytest.raises(BTFError):
            lazy.kind_of(bad)
        with pytest.raises(BTFError):
            lazy.name_of(bad)


@needs_vmlinux
def test_sysfs_file_is_mmapped():
    btf = KernelBTF.open(cache=False)
    assert isinstance(btf._data, mmap.mmap)
    assert "KernelBTF" in repr(btf)


@needs_vmlinux
def test_read_fallback_when_mmap_fails(monkeypatch, lazy):
    def no_mmap(*a, **k):
        raise OSError(19, "No such device")

    monkeypatch.setattr(kmod.mmap, "mmap", no_mmap)
    btf = KernelBTF.open(cache=False)
    assert isinstance(btf._data, bytes)
    tid = btf.find("task_struct", Kind.STRUCT)[0]
    assert btf.type(tid) == lazy.type(tid)


# -- on-disk cache -----------------------------------------------------------------------


@pytest.fixture
def vmlinux_copy(tmp_path) -> Path:
    if not HAVE_VMLINUX:
        pytest.skip("no /sys/kernel/btf/vmlinux")
    p = tmp_path / "vmlinux.btf"
    p.write_bytes(Path(DEFAULT_PATH).read_bytes())
    return p


class WalkCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = kmod._walk

        def counting(words):
            self.calls += 1
            return real(words)

        monkeypatch.setattr(kmod, "_walk", counting)


def cache_files() -> list[Path]:
    d = Path(cache_dir())
    return sorted(d.iterdir()) if d.exists() else []


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PYEBPF_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("PYEBPF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == str(tmp_path / "x" / "pyebpf")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_dir() == str(tmp_path / "h" / ".cache" / "pyebpf")


def test_cache_hit(vmlinux_copy, monkeypatch):
    walks = WalkCounter(monkeypatch)
    cold = KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1
    (cf,) = cache_files()
    assert cf.suffix == ".idx"
    warm = KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1  # served from the cache
    assert warm._offsets == cold._offsets
    assert warm._table is None  # the name table is only built on the first lookup
    tid = warm.find("task_struct", Kind.STRUCT)[0]
    assert warm._table is not None and warm._names is None  # no string search needed
    # The lookup added the name table to the cache: the next process gets it for free.
    third = KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1
    assert third._table == warm._table
    assert third.find("task_struct", Kind.STRUCT) == [tid]
    assert third.candidates("task_struct") == cold.candidates("task_struct")
    assert third.type(tid) == cold.type(tid)
    assert not [f for f in cache_files() if f.name.endswith(".tmp")]


def test_cache_stale_after_touch(vmlinux_copy, monkeypatch):
    walks = WalkCounter(monkeypatch)
    KernelBTF.open(str(vmlinux_copy))
    st0 = vmlinux_copy.stat()
    os.utime(vmlinux_copy, ns=(st0.st_atime_ns, st0.st_mtime_ns + 1_000_000))
    KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 2
    KernelBTF.open(str(vmlinux_copy))  # the rewritten cache is valid again
    assert walks.calls == 2


def test_cache_stale_same_stat_different_content(vmlinux_copy, monkeypatch):
    """A file rewritten in place with its mtime restored must not reuse the cache."""
    walks = WalkCounter(monkeypatch)
    good = KernelBTF.open(str(vmlinux_copy))
    st0 = vmlinux_copy.stat()
    data = bytearray(vmlinux_copy.read_bytes())
    # Swap two type records' order at the start of the section: different offsets.
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", data, 4)
    data[hdr_len + type_off:hdr_len + type_off + 8] = b"\xff" * 8
    with open(vmlinux_copy, "r+b") as f:
        f.write(data)
    os.utime(vmlinux_copy, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    assert vmlinux_copy.stat().st_mtime_ns == st0.st_mtime_ns
    with pytest.raises(BTFError):
        KernelBTF.open(str(vmlinux_copy))  # walked (not cached), and the walk sees garbage
    assert walks.calls == 2
    assert good.find("task_struct")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "flipped", "header"])
def test_cache_corrupt_falls_back(vmlinux_copy, monkeypatch, damage):
    ref = KernelBTF.open(str(vmlinux_copy))
    ref.find("task_struct")  # the cache now holds the name table too
    (cf,) = cache_files()
    blob = bytearray(cf.read_bytes())
    if damage == "garbage":
        blob = bytearray(os.urandom(len(blob)))
    elif damage == "truncated":
        blob = blob[:len(blob) // 2]
    elif damage == "empty":
        blob = bytearray()
    elif damage == "flipped":
        blob[len(blob) // 3] ^= 0x40
    elif damage == "header":  # claims a huge count but keeps the checksum field
        struct.pack_into("<I", blob, 56, 0xFFFFFFFF)
    cf.write_bytes(bytes(blob))
    walks = WalkCounter(monkeypatch)
    btf = KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1
    assert btf._offsets == ref._offsets
    assert btf.find("task_struct") == ref.find("task_struct")
    KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1  # repaired


def test_cache_valid_checksum_but_wrong_offsets(vmlinux_copy, monkeypatch):
    """A cache whose payload is self-consistent yet does not fit the file is rejected."""
    ref = KernelBTF.open(str(vmlinux_copy))
    (cf,) = cache_files()
    blob = bytearray(cf.read_bytes())
    h = kmod._CACHE_HEADER.size
    struct.pack_into("<I", blob, len(blob) - 4, ref._offsets[-1] + 3)  # last offset moved
    fields = list(kmod._CACHE_HEADER.unpack_from(blob))
    fields[-1] = __import__("zlib").crc32(blob[h:])
    kmod._CACHE_HEADER.pack_into(blob, 0, *fields)
    cf.write_bytes(bytes(blob))
    walks = WalkCounter(monkeypatch)
    btf = KernelBTF.open(str(vmlinux_copy))
    assert walks.calls == 1
    assert btf._offsets == ref._offsets


def test_cache_unwritable_dir_is_skipped(vmlinux_copy, monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("PYEBPF_CACHE_DIR", str(blocker / "sub"))
    btf = KernelBTF.open(str(vmlinux_copy))
    assert btf.find("task_struct")
    assert btf._table is None  # no cache: lookups search instead of building the table
    assert blocker.read_text() == "x"


def test_cache_disabled(vmlinux_copy):
    KernelBTF.open(str(vmlinux_copy), cache=False).find("task_struct")
    assert cache_files() == []


# -- synthetic BTF (including split) -----------------------------------------------------


class Blob:
    """A tiny BTF writer for tests: records as u32 words plus a string table."""

    def __init__(self, strings_start: int = 0, own_empty: bool = True):
        self.words: list[int] = []
        self.strs = bytearray(b"\0" if own_empty else b"")
        self.start = strings_start

    def s(self, text: str) -> int:
        off = self.strs.find(text.encode() + b"\0")
        if off < 0 or (off and self.strs[off - 1] != 0):
            off = len(self.strs)
            self.strs += text.encode() + b"\0"
        return self.start + off

    def rec(self, name_off: int, kind: int, vlen: int, size_type: int, *extra: int,
            kflag: bool = False) -> None:
        self.words += [name_off, (kflag << 31) | (kind << 24) | vlen, size_type, *extra]

    def bytes(self) -> bytes:
        types = struct.pack(f"<{len(self.words)}I", *self.words)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                          len(self.strs))
        return hdr + types + bytes(self.strs)


def make_base() -> Blob:
    b = Blob()
    b.strs += b"xfoo\0"  # "foo" at offset 2 is the tail of "xfoo" (no NUL before it)
    foo_tail = 2
    b.rec(b.s("int"), Kind.INT, 0, 4, (1 << 24) | 32)                           # 1
    b.rec(foo_tail, Kind.STRUCT, 1, 4, b.s("a"), 1, 0)                          # 2 foo
    b.rec(0, Kind.PTR, 0, 2)                                                    # 3
    b.rec(b.s("foo___v2"), Kind.STRUCT, 2, 8, b.s("a"), 1, 0, b.s("b"), 1, 32)  # 4
    b.rec(b.s("e"), Kind.ENUM, 2, 4, b.s("E_A"), 0, b.s("E_B"), 7)              # 5
    b.rec(b.s("xfoo"), Kind.TYPEDEF, 0, 2)                                      # 6 xfoo
    b.rec(b.s("fn_t"), Kind.FUNC_PROTO, 1, 1, b.s("p"), 3)                      # 7
    return b


def make_split(base: Blob) -> Blob:
    sp = Blob(strings_start=len(base.strs), own_empty=False)
    first = 8
    sp.rec(sp.s("bar"), Kind.STRUCT, 2, 8, base.s("a"), 1, 0, sp.s("m"), 2, 32)   # 8
    sp.rec(2, Kind.TYPEDEF, 0, first)               # 9 "foo" via the base's tail string
    sp.rec(sp.s("foo___split"), Kind.STRUCT, 0, 0)  # 10
    sp.rec(sp.s("baz"), Kind.UNION, 1, 4, sp.s("u"), 1, 0)                      # 11
    sp.rec(base.s("int"), Kind.TYPEDEF, 0, 1)       # 12 "int" again, base string
    sp.rec(0, Kind.PTR, 0, 11)                      # 13
    return sp


@pytest.fixture
def synthetic(tmp_path) -> tuple[Path, Path]:
    base = make_base()
    split = make_split(base)
    bp, sp = tmp_path / "base.btf", tmp_path / "split.btf"
    bp.write_bytes(base.bytes())
    sp.write_bytes(split.bytes())
    return bp, sp


@pytest.mark.parametrize("cached", [False, True])
def test_split_btf(synthetic, cached):
    bp, sp = synthetic
    for _ in range(2 if cached else 1):  # second round comes from the cache
        base = KernelBTF.open(str(bp), cache=cached)
        split = KernelBTF.open(str(sp), base=base, cache=cached)
        base.find("foo")
        split.find("foo")
    ebase = BTF.from_bytes(bp.read_bytes())
    esplit = BTF.from_bytes(sp.read_bytes(), base=ebase)
    assert len(base) == 8 and len(split) == 14 == len(esplit)
    assert split.start_id == 8 and list(split.own_ids()) == list(range(8, 14))
    for tid in range(len(esplit)):
        assert split.type(tid) == esplit.type(tid), tid
        assert split.name_of(tid) == esplit.type(tid).name
        assert split.kind_of(tid) == esplit.type(tid).kind
    assert split.type(8).members[0].name == "a"  # member name from the base's strings
    assert split.type(8).members[1].name == "m"
    assert base.find("foo") == [2]
    assert split.find("foo") == [2, 9] == esplit.find("foo")
    assert split.find("foo", Kind.STRUCT) == [2]
    assert split.find("int") == [1, 12]
    assert split.find("xfoo") == [6]
    assert split.find("bar") == [8] and base.find("bar") == []
    assert split.candidates("foo") == [2, 4, 9, 10]
    assert base.candidates("foo") == [2, 4] == ebase.candidates("foo")
    assert split.candidates("fo") == []
    assert split.strings_len == esplit.strings_len
    assert split.string(len(make_base().strs)) == "bar"
    with pytest.raises(BTFError):
        split.type(14)
    with pytest.raises(BTFError):
        split.string(split.strings_len)


def test_synthetic_truncated_and_unknown_kind(tmp_path):
    b = make_base()
    good = b.bytes()
    p = tmp_path / "x.btf"
    # record runs past the end: shrink type_len by one word
    bad = bytearray(good)
    type_len = struct.unpack_from("<I", bad, 12)[0]
    struct.pack_into("<II", bad, 12, type_len - 4, type_len - 4)
    p.write_bytes(bytes(bad))
    with pytest.raises(BTFError, match="truncated"):
        KernelBTF.open(str(p), cache=False)
    bad = bytearray(good)
    struct.pack_into("<I", bad, 24 + 4, 25 << 24)  # kind 25 on the first record
    p.write_bytes(bytes(bad))
    with pytest.raises(BTFError, match="unknown BTF kind 25"):
        KernelBTF.open(str(p), cache=False)
    for blob, what in ((b"", "short"), (b"\xeb\x9f" + good[2:], "big-endian"),
                       (b"\x00\x00" + good[2:], "magic"), (good[:30], "bounds")):
        p.write_bytes(blob)
        with pytest.raises(BTFError, match=what):
            KernelBTF.open(str(p))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_blob_raises_only_btferror(tmp_path, data):
    blob = bytearray(make_base().bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    p = tmp_path / "fuzz.btf"
    p.write_bytes(bytes(blob))
    try:
        btf = KernelBTF.open(str(p), cache=data.draw(st.booleans()))
    except BTFError:
        return
    for tid in range(len(btf)):
        try:
            btf.type(tid)
            btf.name_of(tid)
        except BTFError:
            pass
    for name in ("foo", "int", "a", ""):
        btf.find(name)
        btf.candidates(name)


# -- errors and sharing --------------------------------------------------------------------


def test_missing_file_error(tmp_path):
    missing = str(tmp_path / "nope" / "vmlinux")
    with pytest.raises(BTFError) as ei:
        KernelBTF.open(missing)
    assert "CONFIG_DEBUG_INFO_BTF=y" in str(ei.value) and missing in str(ei.value)
    assert ei.value.path == missing
    with pytest.raises(BTFError):
        kernel_btf(missing)


def test_missing_default_path_message(monkeypatch):
    real_open = os.open

    def fake_open(path, *a, **k):
        if path == DEFAULT_PATH:
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(path, *a, **k)

    monkeypatch.setattr(kmod.os, "open", fake_open)
    with pytest.raises(BTFError, match=r"CONFIG_DEBUG_INFO_BTF=y.*path="):
        KernelBTF.open()


def test_kernel_btf_shared_and_thread_safe(synthetic, monkeypatch):
    bp, _ = synthetic
    opens = []
    real = KernelBTF.open.__func__

    def counting(cls, *a, **k):
        opens.append(a)
        return real(cls, *a, **k)

    monkeypatch.setattr(KernelBTF, "open", classmethod(counting))
    monkeypatch.setattr(kmod, "_shared", {})
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(kernel_btf(str(bp)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opens) == 1
    assert all(r is results[0] for r in results) and len(results) == 8
    assert kernel_btf(str(bp)) is results[0]


@needs_vmlinux
def test_kernel_btf_default(monkeypatch):
    monkeypatch.setattr(kmod, "_shared", {})
    a = kernel_btf()
    assert a is kernel_btf(DEFAULT_PATH) and a.find("task_struct")


@needs_vmlinux
def test_table_entries_are_verified():
    """crc32 collisions and bogus (e.g. stale) table entries never leak into results."""
    import zlib
    from array import array

    btf = KernelBTF.open(cache=False)
    real = btf.find("task_struct")
    h = zlib.crc32(b"task_struct") << kmod._IDX_BITS
    bogus = [h | 0, h | 5, h | kmod._IDX_MASK]  # wrong types and an index past the end
    btf._table = array("Q", sorted(bogus + [h | (real[0] - 1)]))
    assert btf.find("task_struct") == real
    assert btf.candidates("task_struct") == real
    assert btf.find("pid_t") == []  # not in this (tiny) table at all


def test_split_cache_depends_on_base(synthetic, tmp_path, monkeypatch):
    bp, sp = synthetic
    walks = WalkCounter(monkeypatch)
    base = KernelBTF.open(str(bp))
    KernelBTF.open(str(sp), base=base).find("bar")
    assert walks.calls == 2
    KernelBTF.open(str(sp), base=base)
    assert walks.calls == 2  # cached
    other = make_base()
    other.rec(other.s("extra_name"), Kind.INT, 0, 4, 32)
    bp2 = tmp_path / "base2.btf"
    bp2.write_bytes(other.bytes())
    KernelBTF.open(str(sp), base=KernelBTF.open(str(bp2), cache=False))
    assert walks.calls == 4  # base2 uncached + split re-walked: its base changed


def test_file_identity(monkeypatch, tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    st = f.stat()
    assert kmod._file_identity(str(f), st) == (3, st.st_mtime_ns, st.st_ino, st.st_dev)
    # sysfs: keyed on the kernel build, not on inode times
    a = kmod._file_identity("/sys/kernel/btf/vmlinux", st)
    assert a[0] == 3 and a[2:] == (0, 0)
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, real.release, real.version + "x",
                            real.machine))
    monkeypatch.setattr(kmod.os, "uname", lambda: fake)
    assert kmod._file_identity("/sys/kernel/btf/vmlinux", st) != a


@needs_vmlinux
def test_sysfs_cache_roundtrip(monkeypatch):
    walks = WalkCounter(monkeypatch)
    KernelBTF.open().find("task_struct")
    btf = KernelBTF.open()
    assert walks.calls == 1 and btf._table is not None


def test_kernel_btf_module_path_gets_vmlinux_base(synthetic, tmp_path, monkeypatch):
    """kernel_btf('/sys/kernel/btf/<module>') opens split BTF on the shared vmlinux."""
    bp, sp = synthetic
    sysdir = tmp_path / "sys_btf"
    sysdir.mkdir()
    (sysdir / "vmlinux").write_bytes(bp.read_bytes())
    (sysdir / "mymod").write_bytes(sp.read_bytes())
    monkeypatch.setattr(kmod, "_SYS_BTF_DIR", str(sysdir))
    monkeypatch.setattr(kmod, "DEFAULT_PATH", str(sysdir / "vmlinux"))
    monkeypatch.setattr(kmod, "_shared", {})
    mod = kernel_btf(str(sysdir / "mymod"))
    assert mod.base is kernel_btf()
    assert mod.find("bar") == [8] and mod.candidates("foo") == [2, 4, 9, 10]


def test_empty_type_section(tmp_path):
    b = Blob()
    p = tmp_path / "empty.btf"
    p.write_bytes(b.bytes())
    for cache in (False, True, True):
        btf = KernelBTF.open(str(p), cache=cache)
        assert len(btf) == 1 and list(btf.own_ids()) == []
        assert btf.find("x") == [] and btf.candidates("x") == []
        assert btf.type(0).kind == Kind.UNKN
        with pytest.raises(BTFError):
            btf.type(1)


def test_concurrent_cache_writers(vmlinux_copy):
    """Several processes racing to build the same cache all succeed; the result is valid."""
    code = ("import sys; from pyebpf.btf.kernel import KernelBTF; "
            "b = KernelBTF.open(sys.argv[1]); print(b.find('task_struct'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(vmlinux_copy)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    assert [f.suffix for f in cache_files()] == [".idx"]  # no temp files left
    btf = KernelBTF.open(str(vmlinux_copy))
    assert btf._table is not None and str(btf.find("task_struct")) == outs[0]
