"""Map basics on real kernel maps: lookup/update (with flags)/delete, iteration, len,
clear, bytes in and out, values through BTF (ints, structs, char arrays), per-CPU
values, fd-valued maps, queues, bloom filters, and Map.from_fd/from_pin/from_id."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyebpf
from pyebpf.errors import OptionError, SyscallError
from pyebpf.maps.map import (
    BPF_EXIST,
    BPF_NOEXIST,
    Array,
    BloomFilter,
    HashMap,
    Map,
    PerCpuArray,
    PerCpuHash,
    Queue,
    Stack,
)
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import MapType

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")


@pytest.fixture(scope="module")
def maps_obj() -> Iterator[pyebpf.Object]:
    d = Path("/sys/fs/bpf") / f"pyebpf_maps_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    d.mkdir()
    obj = pyebpf.load(FIXTURES / "maps_btf.bpf.o", pin_root=str(d))
    yield obj
    obj.close()
    shutil.rmtree(d, ignore_errors=True)


def test_hash_ops_and_flags(maps_obj: pyebpf.Object) -> None:
    h = maps_obj.maps["hash_map"]
    assert isinstance(h, HashMap) and h.type == MapType.HASH
    h.clear()
    assert list(h) == [] and h.count() == 0
    h[1] = 10
    h.update(2, 20, BPF_NOEXIST)
    with pytest.raises(SyscallError) as e:
        h.update(2, 21, BPF_NOEXIST)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(SyscallError) as e:
        h.update(3, 30, BPF_EXIST)
    assert e.value.errno == errno.ENOENT
    h.update(2, 22, BPF_EXIST)
    assert h[1] == 10 and h.lookup(2) == 22 and h.lookup(3) is None
    assert h.lookup(3, -1) == -1
    assert 1 in h and 3 not in h
    with pytest.raises(KeyError):
        h[3]
    assert sorted(h.keys()) == [1, 2]
    assert dict(h.items()) == {1: 10, 2: 22}
    assert sorted(h.values()) == [10, 22]
    assert h.count() == 2
    # bytes in, bytes out
    assert h.lookup_bytes((1).to_bytes(4, "little")) == (10).to_bytes(8, "little")
    h.update_bytes((5).to_bytes(4, "little"), (50).to_bytes(8, "little"))
    assert h[5] == 50 and h.lookup(5, raw=True) == (50).to_bytes(8, "little")
    assert dict(h.items(raw=True))[(5).to_bytes(4, "little")] == (50).to_bytes(8, "little")
    assert h.delete(5) is True and h.delete(5) is False
    del h[1]
    with pytest.raises(KeyError):
        del h[1]
    h.clear()
    assert h.count() == 0
    with pytest.raises(OptionError):
        h[b"\1\2"] = 1  # wrong key size
    with pytest.raises(OptionError):
        h[1] = 1 << 64  # does not fit the u64 value


def test_array_len_iteration_clear(maps_obj: pyebpf.Object) -> None:
    a = maps_obj.maps["array_sized"]  # key_size/value_size only: no BTF types, bytes values
    assert isinstance(a, Array) and len(a) == 16
    assert a.value_codec is None
    a[3] = b"x" * 24
    assert a[3] == b"x" * 24
    assert list(a.keys()) == list(range(16))
    items = dict(a.items())
    assert items[3] == b"x" * 24 and items[0] == bytes(24)
    a.clear()
    assert a[3] == bytes(24)
    with pytest.raises(OptionError, match="24 bytes"):
        a[0] = b"short"
    with pytest.raises(SyscallError):
        a[99] = bytes(24)  # beyond max_entries: E2BIG


def test_percpu_values(maps_obj: pyebpf.Object) -> None:
    ncpu = B.possible_cpus()
    pa = maps_obj.maps["percpu_array"]
    assert isinstance(pa, PerCpuArray)
    pa[0] = 7  # one value: every CPU
    assert pa[0] == [7] * ncpu
    pa[0] = list(range(ncpu))
    assert pa[0] == list(range(ncpu))
    with pytest.raises(OptionError):
        pa[0] = [1] * (ncpu + 1)
    ph = maps_obj.maps["percpu_hash"]  # u64 key, u32 value: slots padded to 8 bytes
    assert isinstance(ph, PerCpuHash)
    ph[1 << 40] = [5] * ncpu
    raw = ph.lookup(1 << 40, raw=True)
    assert len(raw) == 8 * ncpu
    assert ph[1 << 40] == [5] * ncpu
    assert dict(ph.items()) == {1 << 40: [5] * ncpu}
    ph.clear()
    assert ph.count() == 0


def test_lru_lpm_bloom(maps_obj: pyebpf.Object) -> None:
    lru = maps_obj.maps["lru_map"]
    for i in range(10):
        lru[i] = i * i
    assert lru[9] == 81
    lpm = maps_obj.maps["lpm_map"]
    # struct key through BTF: a dict, a tuple or bytes
    lpm[{"prefixlen": 24, "addr": 0x000A0B0C}] = 1
    key = next(iter(lpm.keys()))
    assert key.prefixlen == 24 and key.addr == 0x000A0B0C
    assert lpm[key] == 1
    bloom = maps_obj.maps["bloom_map"]
    assert isinstance(bloom, BloomFilter)
    bloom.push(42)
    assert 42 in bloom


def test_struct_values_through_btf() -> None:
    with pyebpf.load(FIXTURES / "opensnoop.bpf.o") as obj:
        start = obj.maps["start"]
        start[1] = {"fname": 0x1000, "flags": 2, "mode": 0o644}
        v = start[1]
        assert (v.fname, v.flags, v.mode) == (0x1000, 2, 0o644)
        start[2] = v  # a decoded value encodes back
        assert start[2] == v
        start[2] = {"fname": 1, "flags": 5, "mode": 0}
        assert start[2].flags == 5
        raw = start.lookup(1, raw=True)
        assert len(raw) == start.value_size == 16
        with pytest.raises(OptionError):
            start[3] = {"nope": 1}


def test_fd_valued_maps(maps_obj: pyebpf.Object) -> None:
    jt = maps_obj.maps["jump_table"]
    a = maps_obj.programs["tail_target_a"]
    jt[0] = a
    assert jt[0] == a.id
    del jt[0]
    assert jt.lookup(0) is None
    outer = maps_obj.maps["outer_array"]
    inner = maps_obj.maps["inner_a"]
    outer[3] = inner
    assert outer[3] == inner.id
    outer.delete(3)


def test_queue_and_stack_from_fd() -> None:
    before = open_fd_count()
    q = Map.from_fd(B.map_create(MapType.QUEUE, 0, 4, 8, name="pyebpf_q"))
    s = Map.from_fd(B.map_create(MapType.STACK, 0, 4, 8, name="pyebpf_s"))
    with q, s:
        assert isinstance(q, Queue) and isinstance(s, Stack) and type(s) is Stack
        for v in (11, 22, 33):
            q.push(v)
            s.push(v)
        def u32(v: int) -> bytes:
            return v.to_bytes(4, "little")

        # no BTF: ints go in as host-endian u32, values come out as bytes
        assert q.peek() == u32(11)
        assert [q.pop(), q.pop(), q.pop(), q.pop()] == [u32(11), u32(22), u32(33), None]
        assert [s.pop(), s.pop(), s.pop()] == [u32(33), u32(22), u32(11)]
        assert q.name == "pyebpf_q"
        with pytest.raises(OptionError):
            list(q.keys())
    assert open_fd_count() == before


def test_from_pin_and_id(maps_obj: pyebpf.Object) -> None:
    m = maps_obj.maps["pyebpf_fixture_pinned"]
    m[0] = 99
    with Map.from_pin(m.pin_path) as p, Map.from_id(m.id) as i:
        assert p.id == i.id == m.id
        assert isinstance(p, Array)
        assert p[0] == 99 and i[0] == 99  # BTF fetched from the kernel decodes the value
        assert p.btf_value_type_id == m.info().btf_value_type_id
    with Map.from_fd(int(m.fd)) as d:  # an int fd is duplicated, not taken over
        assert d.id == m.id
    assert not m.closed and m[0] == 99


def test_repr(maps_obj: pyebpf.Object) -> None:
    r = repr(maps_obj.maps["hash_map"])
    assert r.startswith("HashMap('hash_map', type=HASH") and "max_entries=128" in r
