"""Close and reuse are safe: buffers and mmap'd maps never act through an fd number they
no longer own, ``close()`` from another thread wakes and ends a blocked consumer, and
nothing after a close can touch unmapped memory.

Use-after-close scenarios run in a child interpreter, so that a segfault fails the test
instead of killing pytest.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyebpf
from pyebpf.errors import ClosedError
from pyebpf.maps.map import Map
from pyebpf.maps.perfbuf import PerfBuffer, online_cpus
from pyebpf.maps.ringbuf import RingBuffer, RingBufferManager
from pyebpf.maps.user_ringbuf import UserRingBuffer
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import FD, open_fd_count
from pyebpf.uapi import BPF_F_MMAPABLE, MapType

try:
    from tests import kobjects
    from tests.ringbuf_producer import MODE_OUTPUT, Producer, check_record
    from tests.unitobj import unit_object
except ImportError:  # pragma: no cover - tests/ on sys.path
    import kobjects  # type: ignore[no-redef]
    from ringbuf_producer import MODE_OUTPUT, Producer, check_record  # type: ignore[no-redef]
    from unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
CPUS = online_cpus()
BPF_F_TEST_RUN_ON_CPU = 1
# kernel names of what the tests create (fixtures included), for the leak check
NAMES = ("bc_victim", "bc_arr", "bc_urb", "events", "produce", "rb", "rb2", "produce_rb",
         "produce_rb2")
WAKE = 2.0  # how long a woken consumer may take to end (it should take milliseconds)


def _real_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = kobjects.snapshot()
    fds, real = open_fd_count(), _real_fds()
    yield
    assert open_fd_count() == fds
    assert _real_fds() == real
    left = kobjects.wait_no_new_named(before, NAMES)
    assert not any(left.values()), left


def _perf_run(obj: pyebpf.Object, cpu: int, seq: int, count: int, size: int = 32) -> int:
    ctx = struct.pack("<3Q", seq, count, size)
    return obj.programs["produce"].test_run(ctx_in=ctx, flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpu).retval


# -- the fd number is never reused under a buffer ---------------------------------------------


def test_perfbuffer_close_after_object_close_spares_the_map_that_got_its_fd() -> None:
    obj = pyebpf.load(str(unit_object("perf_producer")))
    pb = PerfBuffer(obj.maps["events"], lambda c, d: None)
    number = int(obj.maps["events"].fd)
    obj.close()
    # an unrelated hash map now sits at the fd number the perf event array had
    fresh = B.map_create(MapType.HASH, 4, 4, 64, name="bc_victim")
    if fresh.fileno() != number:
        os.dup2(fresh.fileno(), number)
        fresh.close()
        fresh = FD(number, "map")
    cpus = pb.cpus
    with Map.from_fd(fresh) as victim:
        victim.with_types("=I", "=I")
        assert victim.name == "bc_victim"
        for cpu in cpus:
            victim[cpu] = 1000 + cpu
        pb.close()
        assert dict(victim.items()) == {cpu: 1000 + cpu for cpu in cpus}


def test_perfbuffer_keeps_reading_after_its_map_object_is_closed() -> None:
    with pyebpf.load(str(unit_object("perf_producer"))) as obj:
        got: list[tuple[int, int]] = []
        pb = PerfBuffer(obj.maps["events"],
                        lambda c, d: got.append((c, struct.unpack_from("<Q", d)[0])))
        obj.maps["events"].close()  # the buffer holds its own fd of the map
        assert _perf_run(obj, CPUS[0], 7, 3) == 0  # 0 failed outputs: the slots are set
        assert pb.poll_callbacks(1.0) == 3 and got == [(CPUS[0], 7), (CPUS[0], 8), (CPUS[0], 9)]
        pb.close()
        assert _perf_run(obj, CPUS[0], 10, 2) == 2  # slots cleared: output has nowhere to go


def test_ringbuffer_keeps_reading_after_its_map_fd_is_closed() -> None:
    with Producer(ring_size=16 * PAGE) as p:
        rb = RingBuffer(p.maps["rb"])
        urb_before = rb.fd
        p.maps["rb"].close()  # the program still holds the map; the buffer its own fd
        assert p.run(4, 32, MODE_OUTPUT, seq=0) == 4
        assert [check_record(r, 32) for r in rb.poll(1.0)] == [0, 1, 2, 3]
        assert rb.fd == urb_before
        rb.close()


# -- close() from another thread wakes a blocked consumer -------------------------------------


def _run_blocked(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``target`` in a thread; the result dict gets "ret" or "exc", and "t" the time
    it ended."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["ret"] = target()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out["exc"] = e
        out["t"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.2)  # let it block
    assert t.is_alive(), out
    return t, out


def _closed_wakes(close: Callable[[], None], t: threading.Thread, out: dict[str, Any]) -> Any:
    start = time.monotonic()
    close()
    t.join(WAKE)
    assert not t.is_alive(), "the consumer was not woken by close()"
    assert "exc" not in out, repr(out.get("exc"))
    assert out["t"] - start < WAKE
    return out["ret"]


@pytest.mark.parametrize("how", ["iter", "poll", "poll_callbacks", "poll_batch", "manager",
                                 "interval"])
def test_ringbuffer_close_from_another_thread_wakes_the_consumer(how: str) -> None:
    with Producer(ring_size=16 * PAGE) as p:
        seen: list[int] = []
        if how == "manager":
            mgr = RingBufferManager()
            mgr.add(p.maps["rb"], lambda r: seen.append(check_record(r, 32)))
            assert p.run(2, 32, MODE_OUTPUT, seq=0) == 2
            assert mgr.poll(1.0) == 2
            t, out = _run_blocked(lambda: mgr.poll(None))
            assert _closed_wakes(mgr.close, t, out) == 0
            return
        rb = RingBuffer(p.maps["rb"], lambda r: seen.append(check_record(r, 32)))
        assert p.run(2, 32, MODE_OUTPUT, seq=0) == 2
        targets: dict[str, Callable[[], Any]] = {
            "iter": lambda: [seen.append(check_record(r, 32)) for r in rb],
            "poll": lambda: (rb.consume(), list(rb.poll(None)))[1],
            "poll_callbacks": lambda: (rb.consume(), rb.poll_callbacks(None))[1],
            "poll_batch": lambda: (rb.consume(), len(rb.poll_batch(None)))[1],
            "interval": lambda: (rb.consume(), list(rb.poll(None, interval=0.01)))[1],
        }
        t, out = _run_blocked(targets[how])
        ret = _closed_wakes(rb.close, t, out)
        assert seen == [0, 1]  # the records before the close, once each
        assert ret in ([], 0, None) or ret == [None, None]
        with pytest.raises(ClosedError, match="ring buffer on map 'rb' is closed"):
            rb.consume()


def test_ringbuffer_async_for_ends_when_closed_from_another_thread() -> None:
    with Producer(ring_size=16 * PAGE) as p:
        rb = RingBuffer(p.maps["rb"])
        assert p.run(3, 32, MODE_OUTPUT, seq=0) == 3

        async def consume() -> list[int]:
            return [check_record(r, 32) async for r in rb]

        t, out = _run_blocked(lambda: asyncio.run(consume()))
        assert _closed_wakes(rb.close, t, out) == [0, 1, 2]


def test_ringbuffer_closed_while_records_flow() -> None:
    """Closed by another thread while the consumer is between records: the loop ends at
    the next record, and the record it held stays readable."""
    with Producer(ring_size=64 * PAGE) as p:
        rb = RingBuffer(p.maps["rb"])
        assert p.run(500, 64, MODE_OUTPUT, seq=0) == 500
        got: list[int] = []
        held: list[memoryview] = []
        closing = threading.Event()

        def consume() -> None:
            for r in rb:
                got.append(check_record(r, 64))
                if len(got) == 10:
                    held.append(r)
                    closing.set()
                    time.sleep(0.3)  # the other thread closes meanwhile

        t = threading.Thread(target=consume)
        t.start()
        assert closing.wait(WAKE)
        rb.close()
        t.join(WAKE)
        assert not t.is_alive()
        assert got == list(range(10))
        assert check_record(held[0], 64) == 9  # still mapped: the view keeps it
        held.clear()


@pytest.mark.parametrize("how", ["iter", "poll", "wait", "poll_callbacks", "poll_batch"])
def test_perfbuffer_close_from_another_thread_wakes_the_consumer(how: str) -> None:
    with pyebpf.load(str(unit_object("perf_producer"))) as obj:
        seen: list[int] = []
        pb = PerfBuffer(obj.maps["events"], lambda c, d: seen.append(struct.unpack_from("<Q", d)[0]))
        assert _perf_run(obj, CPUS[0], 0, 2) == 0
        targets: dict[str, Callable[[], Any]] = {
            "iter": lambda: [seen.append(struct.unpack_from("<Q", d)[0]) for _, d in pb],
            "poll": lambda: (pb.consume(), list(pb.poll(None)))[1],
            "wait": lambda: (pb.consume(), pb.wait(None))[1],
            "poll_callbacks": lambda: (pb.consume(), pb.poll_callbacks(None))[1],
            "poll_batch": lambda: (pb.consume(), pb.poll_batch(None))[1],
        }
        t, out = _run_blocked(targets[how])
        ret = _closed_wakes(pb.close, t, out)
        assert seen == [0, 1]
        assert ret in ([], 0, False) or ret == [None, None]
        with pytest.raises(ClosedError, match="perf buffer on map 'events' is closed"):
            pb.consume()


def test_user_ringbuffer_close_wakes_reserve_blocking() -> None:
    fd = B.map_create(MapType.USER_RINGBUF, 0, 0, PAGE, name="bc_urb")
    with Map.from_fd(fd) as m, UserRingBuffer(m) as urb:
        assert urb.write(b"x" * (PAGE - 16))  # no program drains: the ring stays full
        t, out = _run_blocked(lambda: urb.reserve_blocking(64, None))
        assert _closed_wakes(urb.close, t, out) is None
        with pytest.raises(ClosedError, match="user ring buffer on map 'bc_urb' is closed"):
            urb.reserve(8)


@pytest.mark.parametrize("kind", ["mmap_array", "hash"])
def test_map_written_while_another_thread_closes_it(kind: str) -> None:
    """The writer gets ClosedError naming the map: not a TypeError from inside pyebpf, nor
    EBADF from a syscall on the fd being closed."""
    for _ in range(20):
        if kind == "hash":
            a = Map.from_fd(B.map_create(MapType.HASH, 4, 8, 64, name="bc_arr"))
        else:
            a = Map.from_fd(B.map_create(MapType.ARRAY, 4, 8, 64, BPF_F_MMAPABLE, name="bc_arr"))
            assert a.mmapped
        errors: list[BaseException] = []
        started = threading.Event()

        def hammer(a: Map = a, errors: list[BaseException] = errors,
                   started: threading.Event = started) -> None:
            i = 0
            try:
                while True:
                    a[i % 64] = i
                    a.get((i + 1) % 64) if i & 1 else a[i % 64]
                    i += 1
                    started.set()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=hammer)
        t.start()
        assert started.wait(WAKE)
        a.close()
        t.join(WAKE)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], ClosedError), errors
        assert str(errors[0]) == "map 'bc_arr' is closed"


# -- use after close, in a child interpreter ---------------------------------------------------

_CHILD = r'''
import os, struct, sys
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "tests")]
import pyebpf
from pyebpf.errors import ClosedError, SyscallError
from pyebpf.maps.map import Map
from pyebpf.sys import bpf as B
from pyebpf.uapi import BPF_F_MMAPABLE, MapType

PAGE = os.sysconf("SC_PAGE_SIZE")


def closed(f):
    try:
        f()
    except ClosedError:
        return
    raise AssertionError(f"{f} did not raise ClosedError")


def released(f):
    try:
        f()
    except ValueError as e:
        assert "released" in str(e), e
        return
    raise AssertionError(f"{f} did not raise")


def ringbuf():
    from ringbuf_producer import MODE_OUTPUT, Producer, check_record
    from pyebpf.maps.ringbuf import RingBuffer
    with Producer(ring_size=4 * PAGE) as p:
        rb = RingBuffer(p.maps["rb"])
        p.run(20, 64, MODE_OUTPUT, seq=0)
        held = []
        it = rb.poll(0)
        for _ in range(5):
            held.append(next(it))
        rb.close()
        assert list(it) == []  # a live generator just ends
        for i, r in enumerate(held):  # records kept past close are still mapped
            assert check_record(r, 64) == i and bytes(r[:8]) == struct.pack("<Q", i)
        closed(lambda: list(rb.poll(0)))
        closed(rb.consume_batch)
        closed(lambda: rb.producer_pos)
        del held, it
        rb.close()


def array():
    a = Map.from_fd(B.map_create(MapType.ARRAY, 4, 8, 1024, BPF_F_MMAPABLE, name="bc_arr"))
    a[3] = 42
    view = a.memory
    assert a.memory is view
    part = view[8 * 3:8 * 4]
    cast = view.cast("Q")
    a.close()  # never BufferError, even with views alive
    released(lambda: view[0])
    released(lambda: view.__setitem__(0, 1))
    assert part.tobytes() == struct.pack("<Q", 42)  # derived views keep the mapping
    part[:] = struct.pack("<Q", 43)
    assert cast[3] == 43 and cast[1023] == 0
    cast[1023] = 7
    for f in (lambda: a[3], lambda: a.__setitem__(3, 1), lambda: a.lookup(3),
              lambda: a.lookup_bytes(b"\3\0\0\0"), lambda: a.update_bytes(b"\3\0\0\0", bytes(8)),
              lambda: list(a.items()), a.clear, lambda: a.memory, lambda: len(a)):
        closed(f)
    del part, cast, view
    a.close()


def arena():
    try:
        fd = B.map_create(MapType.ARENA, 0, 0, 4, BPF_F_MMAPABLE, name="bc_arena")
    except SyscallError as e:
        print(f"SKIP the kernel refuses BPF_MAP_TYPE_ARENA: {e.errname}")
        sys.exit(77)
    m = Map.from_fd(fd)
    m.write(100, b"hello")
    view = m.memory
    part = view[100:105]
    m.close()
    released(lambda: view[100])
    assert bytes(part) == b"hello"
    closed(lambda: m.read(100, 5))
    closed(lambda: m.write(0, b"x"))
    closed(lambda: m.memory)
    del part, view


def perfbuf():
    import struct as S
    from pyebpf.maps.perfbuf import PerfBuffer, online_cpus
    from unitobj import unit_object
    cpu = online_cpus()[0]
    with pyebpf.load(str(unit_object("perf_producer"))) as obj:
        held = []
        pb = PerfBuffer(obj.maps["events"], lambda c, d: held.append(d))
        obj.programs["produce"].test_run(ctx_in=S.pack("<3Q", 5, 3, 32), flags=1, cpu=cpu)
        assert pb.consume() == 3
        it = iter(pb)
        obj.programs["produce"].test_run(ctx_in=S.pack("<3Q", 8, 3, 32), flags=1, cpu=cpu)
        first = next(it)
        pb.close()
        assert list(it) == []
        assert [S.unpack_from("<Q", d)[0] for d in held] == [5, 6, 7]
        assert S.unpack_from("<Q", first[1])[0] == 8
        closed(pb.consume)
        closed(lambda: pb.read_overwritable())
        del held, first, it


def user_ringbuf():
    from pyebpf.maps.user_ringbuf import UserRingBuffer
    with Map.from_fd(B.map_create(MapType.USER_RINGBUF, 0, 0, PAGE, name="bc_urb")) as m:
        urb = UserRingBuffer(m)
        s = urb.reserve(16)
        urb.close()
        released(lambda: s.__setitem__(0, 1))
        closed(lambda: urb.reserve(8))
        closed(lambda: urb.submit(s))


globals()[sys.argv[1]]()
print("ok", sys.argv[1])
'''


@pytest.mark.parametrize("scenario", ["ringbuf", "array", "arena", "perfbuf", "user_ringbuf"])
def test_use_after_close_in_a_child(scenario: str) -> None:
    r = subprocess.run([sys.executable, "-c", _CHILD, scenario, str(ROOT)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().removeprefix("SKIP "))
    assert r.returncode >= 0, f"the child died of signal {-r.returncode}:\n{r.stderr}"
    assert r.returncode == 0 and r.stdout.strip() == f"ok {scenario}", r.stdout + r.stderr
