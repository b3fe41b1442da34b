"""Misuse of maps and buffers is refused with a pyebpf error that says what is wrong.

- opening by fd or pin checks the kind of object (a program's pin is not a map);
- PerfBuffer/RingBuffer/UserRingBuffer check the map type before touching the map;
- the bytes path reports a wrong key or value size as ``m[key]`` does;
- ``len()`` works on every map kind (or says why the kernel cannot tell);
- every operation on a closed map raises ClosedError naming the map.

Every test runs against the real kernel and checks that no fd or map is left behind.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyebpf
from pyebpf.errors import ClosedError, OptionError, PyebpfError
from pyebpf.maps.map import Map, NoLengthError
from pyebpf.maps.perfbuf import PerfBuffer
from pyebpf.maps.ringbuf import RingBuffer, RingBufferManager
from pyebpf.maps.user_ringbuf import UserRingBuffer
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import eventfd, fd_kind, open_fd_count, require_kind
from pyebpf.uapi import MapType

try:
    from tests import kobjects
    from tests.unitobj import unit_object
except ImportError:  # pragma: no cover - tests/ on sys.path
    import kobjects  # type: ignore[no-redef]
    from unitobj import unit_object  # type: ignore[no-redef]

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")
PAGE = os.sysconf("SC_PAGE_SIZE")
# our maps' kernel names (15 chars at most), for the leak check
NAMES = ("mis_hash", "mis_hash16", "mis_rb", "mis_perf", "mis_urb", "mis_arr", "mis_pch")
# fixtures/unit/maps_kinds.bpf.o's maps and programs
KINDS_NAMES = ("k_hash", "k_lru", "k_array", "k_mmap", "k_pchash", "k_lpchash", "k_pcarray",
               "k_lpm", "k_queue", "k_stack", "k_bloom", "k_big", "bump", "touch")


def _real_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mk(mtype: int, ks: int, vs: int, n: int, name: str, flags: int = 0) -> Map:
    return Map.from_fd(B.map_create(mtype, ks, vs, n, flags, name=name))


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """The test leaves no FD object, no real fd and none of our maps behind."""
    before = kobjects.snapshot()
    fds, real = open_fd_count(), _real_fds()
    yield
    assert open_fd_count() == fds
    assert _real_fds() == real
    left = kobjects.wait_no_new_named(before, NAMES + KINDS_NAMES)
    assert not any(left.values()), left


@pytest.fixture
def maps(no_leaks: None) -> Iterator[dict[str, Map]]:
    ms = {
        "hash": _mk(MapType.HASH, 4, 4, 8, "mis_hash"),
        "hash16": _mk(MapType.HASH, 4, 16, 8, "mis_hash16"),
        "rb": _mk(MapType.RINGBUF, 0, 0, 4 * PAGE, "mis_rb"),
        "perf": _mk(MapType.PERF_EVENT_ARRAY, 4, 4, os.cpu_count() or 1, "mis_perf"),
        "urb": _mk(MapType.USER_RINGBUF, 0, 0, 4 * PAGE, "mis_urb"),
        "arr": _mk(MapType.ARRAY, 4, 8, 4, "mis_arr", flags=pyebpf.uapi.BPF_F_MMAPABLE),
        "pch": _mk(MapType.PERCPU_HASH, 4, 4, 8, "mis_pch"),
    }
    try:
        yield ms
    finally:
        for m in ms.values():
            m.close()


# -- what an fd is (no root needed for these kinds) --------------------------------------


def test_fd_kind_of_ordinary_fds(tmp_path: Path) -> None:
    r, w = os.pipe()
    s = socket.socket()
    ep = select.epoll()
    efd = eventfd()
    f = open(tmp_path / "x", "w")  # noqa: SIM115 - closed below
    d = os.open(tmp_path, os.O_RDONLY)
    try:
        assert fd_kind(r) == "pipe"
        assert fd_kind(s.fileno()) == "socket"
        assert fd_kind(ep.fileno()) == "epoll"
        assert fd_kind(efd) == "eventfd"
        assert fd_kind(f.fileno()) == "file"
        assert fd_kind(d) == "directory"
        with pytest.raises(OptionError, match=r"fd \d+ is a pipe, not a BPF map"):
            require_kind(r, "map")
        with pytest.raises(OptionError, match="the thing holds a socket, not a BPF program; hint"):
            require_kind(s.fileno(), "prog", source="the thing", hint="hint")
    finally:
        for x in (r, w, d):
            os.close(x)
        s.close()
        ep.close()
        efd.close()
        f.close()
    with pytest.raises(OptionError, match=f"fd {r} is not open"):
        fd_kind(r)
    with pytest.raises(ClosedError, match="eventfd file descriptor is closed"):
        fd_kind(efd)


# -- opening by fd / pin / id checks the kind --------------------------------------------


@NEEDS_ROOT
def test_from_pin_and_from_fd_refuse_what_is_not_a_map(no_leaks: None) -> None:
    d = Path("/sys/fs/bpf") / f"pyebpf_misuse_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        with pyebpf.load(str(unit_object("maps_kinds"))) as obj:
            prog = obj.programs["bump"]
            prog.pin(str(d / "prog"))
            obj.maps["k_hash"].pin(str(d / "map"))
            before = open_fd_count(), _real_fds()
            with pytest.raises(OptionError, match=(
                    rf"the pin {d}/prog holds a BPF program, not a BPF map; "
                    r"open it with pyebpf.Program.from_fd\(\)/from_pin\(\)")):
                Map.from_pin(str(d / "prog"))
            with pytest.raises(OptionError, match=r"fd \d+ is a BPF program, not a BPF map"):
                Map.from_fd(int(prog.fd))
            btf = obj.btf_fd
            assert btf is not None
            with pytest.raises(OptionError, match=r"fd \d+ is a BTF object, not a BPF map"):
                Map.from_fd(int(btf))
            r, w = os.pipe()
            try:
                with pytest.raises(OptionError, match=r"fd \d+ is a pipe, not a BPF map"):
                    Map.from_fd(r)
            finally:
                os.close(r)
                os.close(w)
            assert (open_fd_count(), _real_fds()) == before  # the failed opens kept nothing
            # the right kind still opens, by pin, fd and id
            with Map.from_pin(str(d / "map")) as m:
                assert m.type == MapType.HASH and m.key_size == 4 and m.name == "k_hash"
            with Map.from_fd(int(obj.maps["k_hash"].fd)) as m, Map.from_id(m.id) as m2:
                assert m2.name == "k_hash"
            assert fd_kind(prog.fd) == "prog" and fd_kind(obj.maps["k_hash"].fd) == "map"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@NEEDS_ROOT
def test_from_fd_of_closed_fd(maps: dict[str, Map]) -> None:
    fd = B.map_create(MapType.HASH, 4, 4, 1, name="mis_hash")
    fd.close()
    with pytest.raises(ClosedError, match="map file descriptor is closed"):
        Map.from_fd(fd)


# -- buffers check the map type first ----------------------------------------------------


@NEEDS_ROOT
def test_buffers_check_the_map_type_first(maps: dict[str, Map]) -> None:
    h16 = maps["hash16"]
    before = open_fd_count(), _real_fds()
    with pytest.raises(OptionError, match=r"PerfBuffer: map 'mis_hash16' is a hash map, "
                                          r"not a perf_event_array$"):
        PerfBuffer(h16)
    assert len(h16) == 0  # nothing was written into the user's map
    with pytest.raises(OptionError, match=r"RingBuffer: map 'mis_hash16' is a hash map, "
                                          r"not a ringbuf$"):
        RingBuffer(h16)
    with pytest.raises(OptionError, match=r"PerfBuffer: map 'mis_rb' is a ringbuf map, not a "
                                          r"perf_event_array; read it with pyebpf.RingBuffer"):
        PerfBuffer(maps["rb"])
    with pytest.raises(OptionError, match=r"RingBuffer: map 'mis_perf' is a perf_event_array "
                                          r"map, not a ringbuf; read it with pyebpf.PerfBuffer"):
        RingBuffer(maps["perf"])
    with pytest.raises(OptionError, match=r"RingBuffer: map 'mis_urb' is a user_ringbuf map, "
                                          r"not a ringbuf; write it with pyebpf.UserRingBuffer"):
        RingBuffer(maps["urb"].fd)  # an FD: same check
    with pytest.raises(OptionError, match=r"UserRingBuffer: map 'mis_rb' is a ringbuf map, "
                                          r"not a user_ringbuf; read it with pyebpf.RingBuffer"):
        UserRingBuffer(int(maps["rb"].fd))  # an int: same check
    mgr = RingBufferManager()
    with pytest.raises(OptionError, match="RingBufferManager: map 'mis_arr' is an array map"):
        mgr.add(maps["arr"], lambda r: None)
    mgr.add(maps["rb"], lambda r: None)
    with pytest.raises(OptionError, match="map 'mis_rb' was already added"):
        mgr.add(maps["rb"].fd, lambda r: None)
    mgr.close()
    r, w = os.pipe()
    try:
        with pytest.raises(OptionError, match=r"PerfBuffer: fd \d+ is a pipe, not a BPF map"):
            PerfBuffer(r)
    finally:
        os.close(r)
        os.close(w)
    assert (open_fd_count(), _real_fds()) == before
    # the right types still work
    with RingBuffer(maps["rb"]) as rb, UserRingBuffer(maps["urb"]) as urb, \
            PerfBuffer(maps["perf"], lambda c, d: None, cpus=[0]) as pb:
        assert rb.size == urb.size == 4 * PAGE and pb.cpus == [0]


@NEEDS_ROOT
def test_buffer_of_closed_map(maps: dict[str, Map]) -> None:
    rb = maps["rb"]
    rb.close()
    for make in (RingBuffer, PerfBuffer, UserRingBuffer):
        with pytest.raises(ClosedError, match="map 'mis_rb' is closed"):
            make(rb)


# -- the bytes path says what m[key] says ------------------------------------------------


@NEEDS_ROOT
def test_bytes_path_sizes(maps: dict[str, Map]) -> None:
    h = maps["hash16"]
    with pytest.raises(OptionError, match="key must be 4 bytes, got 2") as e1:
        h[b"\x01\x00"]
    with pytest.raises(OptionError, match="key must be 4 bytes, got 2") as e2:
        h.lookup_bytes(b"\x01\x00")
    assert str(e1.value) == str(e2.value) == "map 'mis_hash16': key must be 4 bytes, got 2"
    with pytest.raises(OptionError, match="map 'mis_hash16': key must be 4 bytes, got 6"):
        h.update_bytes(b"\0" * 6, b"\0" * 16)
    with pytest.raises(OptionError, match="map 'mis_hash16': value must be 16 bytes, got 4"):
        h.update_bytes(b"\0" * 4, b"\0" * 4)
    with pytest.raises(OptionError, match="key must be 4 bytes, got int"):
        h.lookup_bytes(7)  # type: ignore[arg-type]
    assert len(h) == 0  # nothing was written
    h.update_bytes(b"\1\0\0\0", b"x" * 16)
    assert h.lookup_bytes(b"\1\0\0\0") == b"x" * 16 and len(h) == 1
    # per-CPU: one slot per possible CPU
    p = maps["pch"]
    n = B.possible_cpus()
    with pytest.raises(OptionError, match=rf"value must be {8 * n} bytes \({n} CPUs x 8\), got 4"):
        p.update_bytes(b"\0" * 4, b"\0" * 4)
    # the mmap'd array: both paths
    a = maps["arr"]
    assert a.mmapped
    with pytest.raises(OptionError, match="map 'mis_arr': key must be 4 bytes, got 3"):
        a.lookup_bytes(b"\0\0\0")
    with pytest.raises(OptionError, match="map 'mis_arr': value must be 8 bytes, got 3"):
        a.update_bytes(b"\0\0\0\0", b"abc")
    with pytest.raises(OptionError, match="map 'mis_arr': key must be 4 bytes, got 2"):
        a.update_bytes(b"\0\0", b"abcdefgh")
    a.update_bytes(b"\2\0\0\0", b"abcdefgh")
    assert a.lookup_bytes(b"\2\0\0\0") == b"abcdefgh"


@NEEDS_ROOT
def test_bloom_contains_bytes_size(no_leaks: None) -> None:
    with pyebpf.load(str(unit_object("maps_kinds"))) as obj:
        bloom = obj.maps["k_bloom"]
        bloom.add(5)
        assert 5 in bloom
        with pytest.raises(OptionError, match="map 'k_bloom': value must be 4 bytes, got 1"):
            bloom.contains_bytes(b"\5")


# -- len() on every kind -----------------------------------------------------------------


@NEEDS_ROOT
def test_len_of_every_kind(no_leaks: None) -> None:
    with pyebpf.load(str(unit_object("maps_kinds"))) as obj:
        m = obj.maps
        m["k_hash"][1] = {"a": 1}
        m["k_hash"][2] = {"a": 2}
        m["k_lru"][3] = 3
        m["k_pchash"][4] = 4
        m["k_lpm"][(8).to_bytes(4, "little") + bytes([10, 0, 0, 0])] = 1
        assert len(m["k_hash"]) == 2 == m["k_hash"].count()
        assert len(m["k_lru"]) == 1 and len(m["k_pchash"]) == 1 and len(m["k_lpm"]) == 1
        assert len(m["k_big"]) == 0
        assert len(m["k_array"]) == 8 and len(m["k_mmap"]) == 16 and len(m["k_pcarray"]) == 4
        # an empty map object is still true: truth never walks the keys
        assert bool(m["k_big"]) is True
        for name in ("k_queue", "k_stack", "k_bloom"):
            with pytest.raises(NoLengthError, match=rf"map {name!r} \(\w+\) has no length"):
                len(m[name])
            with pytest.raises(TypeError):  # len()'s usual contract holds too
                len(m[name])
        with pytest.raises(NoLengthError, match="does not report a queue's length"):
            len(m["k_queue"])
        m["k_queue"].push(1)
        assert m["k_queue"] and not m["k_stack"]
        # every map of the object answers len() or says why it cannot
        for mp in m.values():
            try:
                assert len(mp) >= 0
            except NoLengthError:
                pass


# -- closed maps -------------------------------------------------------------------------


@NEEDS_ROOT
def test_every_operation_on_a_closed_map(maps: dict[str, Map], tmp_path: Path) -> None:
    h, a = maps["hash"], maps["arr"]
    h[1] = 2
    a[0] = 5
    assert a[0] == (5).to_bytes(8, "little") and a.mmapped
    h.close()
    a.close()
    ops = {
        "getitem": lambda m: m[1],
        "setitem": lambda m: m.__setitem__(1, 3),
        "delitem": lambda m: m.__delitem__(1),
        "get": lambda m: m.get(1),
        "lookup": lambda m: m.lookup(1),
        "lookup_raw": lambda m: m.lookup(1, raw=True),
        "update": lambda m: m.update(1, 3),
        "delete": lambda m: m.delete(1),
        "contains": lambda m: 1 in m,
        "lookup_bytes": lambda m: m.lookup_bytes(b"\1\0\0\0"),
        "update_bytes": lambda m: m.update_bytes(b"\1\0\0\0", b"\3\0\0\0" + bytes(m.value_size - 4)),
        "keys": lambda m: list(m.keys()),
        "iter": lambda m: list(m),
        "items": lambda m: list(m.items()),
        "values": lambda m: list(m.values()),
        "len": lambda m: len(m),
        "count": lambda m: m.count(),
        "clear": lambda m: m.clear(),
        "lookup_batch": lambda m: m.lookup_batch(),
        "update_batch": lambda m: m.update_batch({1: 1}),
        "delete_batch": lambda m: m.delete_batch([1]),
        "info": lambda m: m.info(),
        "freeze": lambda m: m.freeze(),
        "pin": lambda m: m.pin(f"/sys/fs/bpf/pyebpf_misuse_{os.getpid()}_closed"),
        "ops": lambda m: m.ops,
    }
    for m, label in ((h, "map 'mis_hash'"), (a, "map 'mis_arr'")):
        for what, op in ops.items():
            if isinstance(m, pyebpf.maps.Array) and what in ("delitem", "delete", "delete_batch"):
                continue  # arrays refuse deletes whether open or not
            with pytest.raises(ClosedError, match=f"^{label} is closed$"):
                op(m)
                pytest.fail(f"{what} on a closed map did not raise")
        assert m.closed and "closed" in repr(m)
        m.close()  # idempotent
    with pytest.raises(ClosedError, match="map 'mis_arr' is closed"):
        a.memory  # noqa: B018


@NEEDS_ROOT
def test_closed_buffers_raise_closed_error(maps: dict[str, Map]) -> None:
    rb = RingBuffer(maps["rb"], lambda r: None)
    rb.close()
    assert rb.closed and repr(rb) == "<RingBuffer on map 'mis_rb' closed>"
    for op in (lambda: list(rb.poll(0)), rb.consume, rb.consume_batch, rb.poll_batch,
               rb.poll_callbacks, rb.avail, rb.fileno, lambda: next(iter(rb)),
               lambda: rb.size):
        with pytest.raises(ClosedError, match="^ring buffer on map 'mis_rb' is closed$"):
            op()
    pb = PerfBuffer(maps["perf"], lambda c, d: None, cpus=[0])
    pb.close()
    assert pb.closed and repr(pb) == "<PerfBuffer on map 'mis_perf' closed>"
    for op in (pb.consume, pb.consume_batch, lambda: pb.poll(0), pb.poll_callbacks, pb.avail,
               pb.fileno, lambda: next(iter(pb)), pb.wait):
        with pytest.raises(ClosedError, match="^perf buffer on map 'mis_perf' is closed$"):
            op()
    urb = UserRingBuffer(maps["urb"])
    sample = urb.reserve(8)
    assert sample is not None
    urb.close()
    for op in (lambda: urb.reserve(8), lambda: urb.reserve_blocking(8, 0.1), urb.free,
               lambda: urb.write(b"x"), urb.fileno, lambda: urb.submit(sample)):
        with pytest.raises(ClosedError, match="^user ring buffer on map 'mis_urb' is closed$"):
            op()
    mgr = RingBufferManager()
    mgr.close()
    for op in (lambda: mgr.add(maps["rb"], print), lambda: mgr.poll(0), mgr.consume,
               lambda: mgr.consume_ring(0), mgr.fileno):
        with pytest.raises(ClosedError, match="ring buffer manager"):
            op()
    assert isinstance(ClosedError("x"), (PyebpfError, ValueError))
