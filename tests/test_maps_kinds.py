"""Data map kinds on the real kernel (fixtures/unit/maps_kinds.bpf.o): hash, LRU hash,
array (mmap'd and not), per-CPU hash/array with values from a program run on each CPU,
LPM trie, queue, stack, bloom filter, arena; BTF-typed values (hypothesis round trip),
user types, batch ops and their fallback, Map.from_pin/from_id of a map another process
created, and fd hygiene."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyebpf
from pyebpf import features
from pyebpf.errors import OptionError, SyscallError
from pyebpf.maps.arena import Arena
from pyebpf.maps.array import Array, PerCpuArray
from pyebpf.maps.hash import HashMap, LruHashMap, LruPerCpuHash, PerCpuHash
from pyebpf.maps.lpm import LpmKey, LpmTrie
from pyebpf.maps.map import Map, cstr
from pyebpf.maps.queue import BloomFilter, Queue, Stack
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, MapType

try:
    from tests.unitobj import unit_object
except ImportError:
    from unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

ROOT = Path(__file__).resolve().parent.parent
OBJ = unit_object("maps_kinds")
BPF_F_TEST_RUN_ON_CPU = 1
NCPU = B.possible_cpus()


@pytest.fixture(scope="module")
def obj() -> Iterator[pyebpf.Object]:
    o = pyebpf.load(OBJ)
    yield o
    o.close()


@pytest.fixture
def pin_path() -> Iterator[str]:
    p = f"/sys/fs/bpf/pyebpf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield p
    if os.path.exists(p):
        os.unlink(p)


def _online_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def test_each_kind_gets_its_class(obj: pyebpf.Object) -> None:
    want = {"k_hash": HashMap, "k_lru": LruHashMap, "k_array": Array, "k_mmap": Array,
            "k_pchash": PerCpuHash, "k_lpchash": LruPerCpuHash, "k_pcarray": PerCpuArray,
            "k_lpm": LpmTrie, "k_queue": Queue, "k_stack": Stack, "k_bloom": BloomFilter}
    for name, cls in want.items():
        m = obj.maps[name]
        assert type(m) is cls, name
        assert repr(m).startswith(f"{cls.__name__}({name!r}, type=")
    assert isinstance(obj.maps["k_lru"], HashMap)  # LRU is a hash map too
    assert obj.maps["k_mmap"].mmapped and not obj.maps["k_array"].mmapped


def test_hash_struct_values_through_btf(obj: pyebpf.Object) -> None:
    h = obj.maps["k_hash"]
    h.clear()
    h[1] = {"a": -5, "b": 1 << 63, "name": "hi", "arr": (1, 2, 65535), "color": 7,
            "lo": 5, "hi": 31, "neg": -128}
    v = h[1]
    assert (v.a, v.b, v.name, v.arr, v.lo, v.hi, v.neg) == (-5, 1 << 63, b"hi", (1, 2, 65535),
                                                           5, 31, -128)
    assert v.color.name == "KBLUE" and v.color == 7
    assert cstr(v.name) == "hi" and cstr(b"ab\0cd") == "ab"
    assert "krec(" in repr(v) and "KBLUE" in repr(v)
    h[2] = v._replace(a=9)
    assert h[2].a == 9 and h[2].name == b"hi"
    raw = h.lookup(1, raw=True)
    assert len(raw) == h.value_size and h.decode_value(raw) == v
    with pytest.raises(OptionError):
        h[3] = {"lo": 8}  # 3-bit bitfield
    with pytest.raises(OptionError):
        h[3] = {"name": "123456789"}  # char[8]
    assert h.lookup(3) is None
    h.clear()


def test_lru_evicts(obj: pyebpf.Object) -> None:
    lru = obj.maps["k_lru"]
    for i in range(400):
        lru[i] = i
    n = len(list(lru.keys()))
    assert 0 < n <= 128 + 2 * NCPU  # LRU lists are per-CPU: a few extra may linger
    assert lru[399] == 399
    lru.clear()


def test_array_struct_values(obj: pyebpf.Object) -> None:
    a = obj.maps["k_array"]
    assert len(a) == 8
    assert a[3].a == 0 and a[3].name == b""
    a[3] = {"a": 1, "name": b"abc"}
    assert a[3].name == b"abc"
    assert dict(a.items())[3].a == 1
    assert list(a.keys()) == list(range(8))
    a.clear()
    assert a[3].a == 0


def test_mmap_array_shared_with_program(obj: pyebpf.Object) -> None:
    m = obj.maps["k_mmap"]
    touch = obj.programs["touch"]
    m[0] = 21  # through the mmap, no syscall
    touch.test_run(ctx_in=bytes(8))
    assert m[1] == 42  # the program's write, seen through the mmap
    assert m.ops.lookup((1).to_bytes(4, sys.byteorder)) == (42).to_bytes(8, sys.byteorder)
    m.ops.update((0).to_bytes(4, sys.byteorder), (1000).to_bytes(8, sys.byteorder))
    assert m[0] == 1000 and m.lookup(0) == 1000  # a syscall write seen through the mmap
    assert m.lookup(0, raw=True) == (1000).to_bytes(8, sys.byteorder)
    mv = m.memory
    assert int.from_bytes(mv[0:8], sys.byteorder) == 1000
    mv.release()
    assert dict(m.items())[0] == 1000
    m.with_types(value="=q")  # user types apply to mmap'd reads too
    m[2] = -1
    assert m[2] == -1 and m.lookup(2) == -1
    m.with_types(value="=Q")
    assert m[2] == (1 << 64) - 1
    m.clear()
    assert m[0] == 0 and m[1] == 0
    obj.programs["touch"]  # the queue got a push; drain it for the queue test
    obj.maps["k_queue"].clear()


def test_percpu_values_from_program_on_each_cpu(obj: pyebpf.Object) -> None:
    pca, pch = obj.maps["k_pcarray"], obj.maps["k_pchash"]
    pca.clear()
    pch.clear()
    bump = obj.programs["bump"]
    cpus = _online_cpus()
    for cpu in cpus:
        for _ in range(cpu + 1):
            bump.test_run(flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpu)
    v = pca[0]
    assert isinstance(v, list) and len(v) == NCPU
    assert [v[c] for c in cpus] == [c + 1 for c in cpus]
    total = sum(c + 1 for c in cpus)
    assert pca.sum(0) == total and pca.max(0) == max(cpus) + 1
    assert pca.min(0) == min(v) and pca.average(0) == total / NCPU
    assert pch.sum(7) == total and pch.total() == total
    assert pch.lookup_batch() == {7: v}
    with pytest.raises(KeyError):
        pch.sum(8)
    # user space writes one value per CPU, or one for all
    pca[1] = list(range(NCPU))
    assert pca[1] == list(range(NCPU))
    pca[2] = 5
    assert pca[2] == [5] * NCPU and pca.sum(2) == 5 * NCPU
    # 4-byte values are padded to 8 bytes per CPU in the kernel's buffer
    lp = obj.maps["k_lpchash"]
    lp[1] = [0xFFFFFFFF] * NCPU
    lp[2] = 3
    assert lp[1] == [0xFFFFFFFF] * NCPU and lp.sum(2) == 3 * NCPU
    assert lp.lookup(1, raw=True) == ((0xFFFFFFFF).to_bytes(4, sys.byteorder) + bytes(4)) * NCPU
    assert lp.lookup_batch() == {1: [0xFFFFFFFF] * NCPU, 2: [3] * NCPU}
    lp.clear()


def test_lpm_trie_longest_prefix(obj: pyebpf.Object) -> None:
    t = obj.maps["k_lpm"]
    t.clear()
    t[LpmTrie.key(8, "10.0.0.0")] = 8
    t[(16, ipaddress.ip_address("10.1.0.0"))] = 16
    t["10.1.2.0/24"] = 24
    assert t["10.1.2.3"] == 24 and t["10.1.9.9"] == 16 and t["10.9.9.9"] == 8
    assert t.lookup("11.0.0.1") is None and "11.0.0.1" not in t
    key, value = t.longest_match("10.1.200.1")
    assert key == LpmKey(16, bytes([10, 1, 0, 0])) and value == 16
    assert str(key) == "10.1.0.0/16" and key.network == ipaddress.ip_network("10.1.0.0/16")
    assert t.longest_match("192.168.0.1", "none") == "none"
    keys = list(t.keys())  # through the key's BTF
    assert sorted(k.prefixlen for k in keys) == [8, 16, 24]
    assert {k.prefixlen: v for k, v in t.lookup_batch().items()} == {8: 8, 16: 16, 24: 24}
    del t["10.1.2.0/24"]
    assert t["10.1.2.3"] == 16
    with pytest.raises(OptionError):
        t[LpmTrie.key(33, "10.0.0.0")] = 1
    t.clear()


def test_lpm_trie_without_btf_ipv6() -> None:
    fd = B.map_create(MapType.LPM_TRIE, 4 + 16, 4, 16, BPF_F_NO_PREALLOC, "pyebpf_lpm6")
    with Map.from_fd(fd) as t:
        assert isinstance(t, LpmTrie)
        assert t.lookup("2001:db8::1") is None
        t["2001:db8::/32"] = (1).to_bytes(4, sys.byteorder)  # no BTF: bytes values
        assert t["2001:db8::7"] == (1).to_bytes(4, sys.byteorder)
        t.with_types(value="=I")
        t["2001:db8::/32"] = 1
        t["2001:db8:1::/48"] = 2
        assert t["2001:db8:1::5"] == 2 and t["2001:db8:2::5"] == 1
        (k,) = [k for k in t.keys() if k.prefixlen == 48]
        assert isinstance(k, LpmKey) and str(k) == "2001:db8:1::/48"
        assert sorted(t.lookup_batch().values()) == [1, 2]


def test_queue_stack(obj: pyebpf.Object) -> None:
    q, s = obj.maps["k_queue"], obj.maps["k_stack"]
    q.clear()
    s.clear()
    assert not q and q.pop() is None and q.peek("empty") == "empty"
    for i in (1, 2, 3):
        q.push(i)
        s.push(i)
    assert q and q.peek() == 1 and s.peek() == 3
    assert q.pop() == 1 and s.pop() == 3
    assert list(q.drain()) == [2, 3] and list(s.drain()) == [2, 1]
    with pytest.raises(TypeError):
        len(q)
    obj.programs["touch"].test_run(ctx_in=bytes(8))  # pushes 42
    assert q.pop(raw=True) == (42).to_bytes(4, sys.byteorder)
    with pytest.raises(OptionError):
        list(q.keys())


def test_bloom_filter(obj: pyebpf.Object) -> None:
    b = obj.maps["k_bloom"]
    for i in range(0, 40, 2):
        b.add(i)
    assert all(i in b for i in range(0, 40, 2))
    absent = sum(b.contains(i) for i in range(1000, 1100))
    assert absent < 50  # false positives are possible, not for most values


def test_arena_mmap() -> None:
    refused = features.map_type_supported(MapType.ARENA)
    if not refused and "EPERM" in refused.reason:
        pytest.skip(f"this kernel refuses arena maps ({refused.reason})")
    before = open_fd_count()
    fd = B.map_create(MapType.ARENA, 0, 0, 4, BPF_F_MMAPABLE, "pyebpf_arena")
    with Map.from_fd(fd) as a:
        assert isinstance(a, Arena) and a.size == 4 * os.sysconf("SC_PAGE_SIZE")
        a.write(100, b"hello")
        assert a.read(100, 5) == b"hello" and a.read(0, 4) == bytes(4)
        a.write(a.size - 3, b"end")
        assert a.read(a.size - 3, 3) == b"end"
        assert a.address
        with pytest.raises(OptionError):
            a.read(a.size - 2, 3)
    assert open_fd_count() == before


def test_batch_ops_hash(obj: pyebpf.Object) -> None:
    # a plain hash: an LRU hash may evict before it is full (per-CPU free lists),
    # which made exact counts flaky here
    h = obj.maps["k_big"]
    h.clear()
    assert h.update_batch({i: i * 3 for i in range(100)}) == 100
    assert h.lookup_batch() == {i: i * 3 for i in range(100)}
    assert dict(h.items()) == {i: i * 3 for i in range(100)}
    assert h.lookup_batch(raw=True)[(5).to_bytes(4, sys.byteorder)] == (15).to_bytes(8, sys.byteorder)
    assert h.delete_batch(range(50)) == 50
    assert sorted(h.keys()) == list(range(50, 100))
    got = h.lookup_and_delete_batch()
    assert got == {i: i * 3 for i in range(50, 100)} and list(h.keys()) == []
    h.clear()
    # struct values through BTF in batches
    s = obj.maps["k_hash"]
    s.clear()
    s.update_batch([(i, {"a": -i, "name": f"n{i}"}) for i in range(20)])
    d = s.lookup_batch()
    assert len(d) == 20 and d[7].a == -7 and d[7].name == b"n7"
    s.clear()


def test_batch_array_and_percpu(obj: pyebpf.Object) -> None:
    a = obj.maps["k_mmap"]
    a.update_batch({3: 33, 4: 44})
    d = a.lookup_batch()
    assert len(d) == 16 and d[3] == 33 and d[4] == 44
    # arrays cannot delete: a clear error, and batch reads keep working afterwards
    for call in (lambda: a.lookup_and_delete_batch(), lambda: a.delete_batch([3]),
                 lambda: a.delete(3), lambda: a.__delitem__(3)):
        with pytest.raises(OptionError, match="array elements cannot be deleted"):
            call()
    assert a._batchable and a.lookup_batch()[4] == 44
    a.clear()
    p = obj.maps["k_pcarray"]
    p.update_batch({3: list(range(NCPU))})
    assert p.lookup_batch()[3] == list(range(NCPU))
    with pytest.raises(OptionError, match="array elements cannot be deleted"):
        p.lookup_and_delete_batch()


def test_batch_fallback_without_kernel_support() -> None:
    # stack trace maps have no batch ops (ENOTSUPP): the key walk answers instead
    fd = B.map_create(MapType.STACK_TRACE, 4, 8 * 4, 8, 0, "pyebpf_nobatch")
    with HashMap(fd, name="nobatch", type=MapType.STACK_TRACE, key_size=4, value_size=32,
                 max_entries=8) as m:
        assert m._batchable
        assert m.lookup_batch() == {} and m._batchable is False
        assert m.lookup_and_delete_batch() == {} and dict(m.items()) == {}


class _NoBatchOps:
    """MapOps whose batch ops fail as an older kernel's would (EINVAL)."""

    def __init__(self, ops: B.MapOps) -> None:
        self._ops = ops

    def __getattr__(self, name: str):
        if "batch" in name:
            def refuse(*a, **k):
                raise SyscallError(errno.EINVAL, "BPF_MAP_UPDATE_BATCH")
            return refuse
        return getattr(self._ops, name)


def test_batch_fallback_per_key(obj: pyebpf.Object) -> None:
    h = obj.maps["k_lru"]
    h.clear()
    saved = h.ops
    h._tl.ops = _NoBatchOps(saved)
    try:
        assert h.update_batch({1: 10, 2: 20, 3: 30}) == 3 and h._batchable is False
        assert h.lookup_batch() == {1: 10, 2: 20, 3: 30}
        assert h.delete_batch([1, 2]) == 2
        assert h.lookup_and_delete_batch() == {3: 30} and h.lookup_batch() == {}
    finally:
        h._tl.ops = saved
        h._batchable = True


def test_big_hash_items_use_batches() -> None:
    n = 100_000
    fd = B.map_create(MapType.HASH, 4, 8, n, 0, "pyebpf_big")
    with Map.from_fd(fd) as h:
        h.with_types(key="=I", value="=Q")
        keys = b"".join(i.to_bytes(4, sys.byteorder) for i in range(n))
        vals = b"".join((i * 7).to_bytes(8, sys.byteorder) for i in range(n))
        assert h.ops.update_batch(keys, vals, n) == n
        walked = []
        h._walk = lambda raw: walked.append(1) or iter(())  # type: ignore[method-assign]
        d = dict(h.items())
        assert not walked and len(d) == n and d[12345] == 12345 * 7
        assert h.lookup_batch() == d  # chunks read by a helper thread, decoded here
        h.batch_size = 4096  # sequential chunks
        h._tl.__dict__.pop("batch")
        assert h.lookup_batch() == d
        h.batch_size = 1 << 17
        h._tl.__dict__.pop("batch")
        assert h.lookup_and_delete_batch() == d and h.lookup_batch() == {}


class Pair(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_int32)]


def test_user_types_without_btf() -> None:
    fd = B.map_create(MapType.HASH, 8, 8, 16, 0, "pyebpf_typed")
    with Map.from_fd(fd) as h:
        assert h.value_codec is None
        h.with_types(key="<q", value=Pair)
        h[-1] = Pair(1, -2)
        h[2] = {"x": 3, "y": 4}
        assert h[-1].y == -2 and h[2].x == 3
        assert sorted(h.keys()) == [-1, 2]
        assert h.lookup(-1, raw=True) == bytes(Pair(1, -2))
        with pytest.raises(OptionError):
            h.with_types(value="<I")  # 4 bytes, the map's values are 8


def test_plain_bytes_without_btf() -> None:
    fd = B.map_create(MapType.HASH, 4, 6, 4, 0, "pyebpf_bytes")
    with Map.from_fd(fd) as h:
        h[b"abcd"] = b"123456"
        assert h[b"abcd"] == b"123456"
        with pytest.raises(OptionError):
            h[b"abcd"] = b"12"


_CREATOR = r"""
import os, sys
import pyebpf
obj = pyebpf.load(sys.argv[1])
h = obj.maps["k_hash"]
h[5] = {"a": -42, "b": 9, "name": "remote", "arr": (7, 8, 9), "color": 2, "lo": 3, "hi": 17, "neg": -1}
h.pin(sys.argv[2])
print(h.id)
"""


def test_from_pin_and_id_of_another_process_map(pin_path: str) -> None:
    out = subprocess.run([sys.executable, "-c", _CREATOR, str(OBJ), pin_path], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    map_id = int(out.split()[-1])
    before = open_fd_count()
    with Map.from_pin(pin_path) as m:
        assert isinstance(m, HashMap) and m.id == map_id and m.name == "k_hash"
        v = m[5]
        assert (v.a, v.name, v.arr, v.lo, v.hi, v.neg) == (-42, b"remote", (7, 8, 9), 3, 17, -1)
        assert v.color.name == "KGREEN"
    with Map.from_id(map_id) as m2:
        assert m2[5].name == b"remote" and "remote" in repr(m2[5])
    assert open_fd_count() == before


_A = st.integers(-(1 << 31), (1 << 31) - 1)
_VALUES = st.fixed_dictionaries({
    "a": _A, "b": st.integers(0, (1 << 64) - 1),
    "name": st.binary(max_size=8).map(lambda b: b.split(b"\0")[0]),
    "arr": st.tuples(*[st.integers(0, 65535)] * 3),
    "color": st.sampled_from([1, 2, 7]), "lo": st.integers(0, 7), "hi": st.integers(0, 31),
    "neg": st.integers(-128, 127),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.integers(0, (1 << 32) - 1), value=_VALUES)
def test_hypothesis_btf_round_trip(obj: pyebpf.Object, key: int, value: dict) -> None:
    h = obj.maps["k_hash"]
    h[key] = value
    try:
        got = h[key]
        assert got == value
        assert {f: getattr(got, f) for f in value} == value
        assert h.lookup_batch()[key] == value
    finally:
        del h[key]


def test_no_fd_leaks() -> None:
    before = open_fd_count()
    nfds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pyebpf.load(OBJ) as o:
            m = o.maps["k_mmap"]
            m[0] = 1
            assert m.mmapped
            o.maps["k_hash"].lookup_batch()
            with Map.from_id(o.maps["k_hash"].id) as again:
                assert again.lookup_batch() == {}
    assert open_fd_count() == before
    assert len(os.listdir("/proc/self/fd")) == nfds
