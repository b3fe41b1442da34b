"""UserRingBuffer: user space produces, fixtures/unit/user_ringbuf.bpf.o drains.

The program (a ``syscall`` program run with BPF_PROG_TEST_RUN) calls
``bpf_user_ringbuf_drain`` and sums the first u64 of each sample; samples of
24 bytes or more carry their length at offset 8 and repeat the value in their
last 8 bytes, so a sample that wrapped around the ring end is checked whole.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

import pyebpf
from pyebpf.errors import OptionError, PyebpfError
from pyebpf.maps.user_ringbuf import UserRingBuffer

try:
    from unitobj import unit_object
except ImportError:  # pragma: no cover
    from tests.unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf()")

RING = 4096


@pytest.fixture
def obj():
    o = pyebpf.load(unit_object("user_ringbuf"))
    try:
        yield o
    finally:
        o.close()


def drain(o) -> int:
    o.programs["drain"].test_run(ctx_in=bytes(8))
    return o.globals["drained"]


def sample(value: int, size: int) -> bytes:
    """A checked sample of ``size`` >= 24 bytes."""
    body = struct.pack("<QI", value, size).ljust(size - 8, b"\xab")
    return body + struct.pack("<Q", value)


def test_three_samples_sum(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        assert urb.size == RING
        for v in (1, 2, 3):
            s = urb.reserve(8)
            assert s is not None and len(s) == 8 and not s.readonly
            s[:] = v.to_bytes(8, "little")
            urb.submit(s)
        assert urb.producer_pos == 3 * 16 and urb.consumer_pos == 0
        assert drain(obj) == 3
        g = obj.globals
        assert (g["sum"], g["count"], g["bad"]) == (6, 3, 0)
        assert urb.consumer_pos == urb.producer_pos == 48
        assert urb.free() == RING
        assert drain(obj) == 0


def test_discard_not_seen(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        a = urb.reserve(8)
        b = urb.reserve(8)
        c = urb.reserve(8)
        for s, v in ((a, 10), (b, 1000), (c, 20)):
            s[:] = v.to_bytes(8, "little")
        urb.submit(a)
        urb.discard(b)
        urb.submit(c)
        assert drain(obj) == 2
        assert (obj.globals["sum"], obj.globals["count"]) == (30, 2)
        assert urb.free() == RING  # the discarded sample's space is back too


def test_busy_sample_stops_drain(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        assert urb.write((5).to_bytes(8, "little"))
        held = urb.reserve(8)
        assert urb.write((7).to_bytes(8, "little"))
        assert urb.pending() == 1
        assert drain(obj) == 1  # stops at the reserved (BUSY) sample
        assert obj.globals["sum"] == 5
        held[:] = (100).to_bytes(8, "little")
        urb.submit(held)
        assert drain(obj) == 2
        assert obj.globals["sum"] == 112


def test_full_ring_returns_none(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        n = 0
        while (s := urb.reserve(8)) is not None:
            s[:] = (1).to_bytes(8, "little")
            urb.submit(s)
            n += 1
        assert n == RING // 16
        assert urb.free() == 0
        assert not urb.write(b"x" * 8)
        assert urb.reserve_blocking(8, timeout=0.05) is None
        assert drain(obj) == n
        assert obj.globals["sum"] == n
        assert urb.reserve(8) is not None  # room again (left pending: closed with the ring)


def test_too_big_and_bad_sizes(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        with pytest.raises(OptionError):
            urb.reserve(RING)  # header + payload > ring
        with pytest.raises(OptionError):
            urb.reserve(-1)
        assert urb.reserve(RING - 8) is not None  # exactly the ring


def test_double_submit_and_foreign_sample(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        s = urb.reserve(8)
        urb.submit(s)
        with pytest.raises(OptionError):
            urb.submit(s)
        with pytest.raises(OptionError):
            urb.discard(memoryview(bytearray(8)))
        with pytest.raises(ValueError):  # a submitted sample is released
            s[0] = 1


def test_wrap_around(obj):
    """Variable sizes across many laps: samples straddle the ring end intact."""
    sizes = [24, 24, 40, 200, 1000, 56, 1528, 32, 800, 104]
    expect_sum = expect_count = expect_bytes = 0
    v = 1
    with UserRingBuffer(obj.maps["urb"]) as urb:
        wrapped = 0
        for lap in range(40):
            for size in sizes[lap % 3:] + sizes[: lap % 3]:
                start = (urb.producer_pos + 8) & (RING - 1)
                if not urb.write(sample(v, size)):
                    assert drain(obj) > 0
                    assert urb.write(sample(v, size))
                    start = (urb.producer_pos - ((size + 15) & -8) + 8) & (RING - 1)
                wrapped += start + size > RING
                expect_sum += v
                expect_count += 1
                expect_bytes += size
                v += 1
        drain(obj)
        g = obj.globals
        assert g["bad"] == 0
        assert (g["sum"], g["count"], g["bytes"]) == (expect_sum, expect_count, expect_bytes)
        assert urb.producer_pos > 10 * RING
        assert wrapped > 5


def test_reserve_blocking_wakes_on_drain(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        while urb.write((1).to_bytes(8, "little")):
            pass
        got: list[object] = []

        def waiter() -> None:
            t0 = time.monotonic()
            s = urb.reserve_blocking(8, timeout=10)
            got.append((s is not None, time.monotonic() - t0))
            if s is not None:
                s[:] = (50).to_bytes(8, "little")
                urb.submit(s)

        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(0.2)
        assert not got  # still blocked: the ring is full
        assert drain(obj) == RING // 16
        th.join(5)
        assert got and got[0][0] and 0.15 < got[0][1] < 5
        assert drain(obj) == 1
        assert obj.globals["sum"] == RING // 16 + 50


def test_reserve_async(obj):
    import asyncio

    with UserRingBuffer(obj.maps["urb"]) as urb:
        while urb.write((2).to_bytes(8, "little")):
            pass

        async def main() -> tuple[object, object]:
            assert await urb.reserve_async(8, timeout=0.05) is None  # full, times out
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, drain, obj)  # the program frees the ring meanwhile
            s = await urb.reserve_async(8, timeout=10)
            assert s is not None
            s[:] = (9).to_bytes(8, "little")
            urb.submit(s)
            return s, urb.fileno()

        asyncio.run(main())
        assert drain(obj) == 1
        assert obj.globals["sum"] == 2 * (RING // 16) + 9


def test_reserve_blocking_timeout(obj):
    with UserRingBuffer(obj.maps["urb"]) as urb:
        urb.reserve(RING - 8)
        t0 = time.monotonic()
        assert urb.reserve_blocking(8, timeout=0.2) is None
        assert 0.19 < time.monotonic() - t0 < 2


def test_threads_share_a_producer(obj):
    per, nthreads = 200, 4
    with UserRingBuffer(obj.maps["urb"]) as urb:
        stop = threading.Event()

        def drainer() -> None:
            while not stop.is_set():
                drain(obj)
                time.sleep(0.001)

        def producer(tid: int) -> None:
            for i in range(per):
                assert urb.write(sample(tid * 1000 + i, 24), timeout=10)

        d = threading.Thread(target=drainer)
        d.start()
        ps = [threading.Thread(target=producer, args=(t,)) for t in range(nthreads)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        stop.set()
        d.join()
        drain(obj)
        g = obj.globals
        assert g["bad"] == 0 and g["count"] == per * nthreads
        assert g["sum"] == sum(t * 1000 + i for t in range(nthreads) for i in range(per))


def test_wrong_map_type_and_close(obj):
    with pytest.raises(PyebpfError, match=r"map 'user_rin.bss' is an array map, not a user_ringbuf"):
        UserRingBuffer(obj.maps["user_rin.bss"])
    urb = UserRingBuffer(obj.maps["urb"].fd)  # a raw fd: size from the kernel
    assert urb.size == RING
    assert "UserRingBuffer fd=" in repr(urb)
    urb.close()
    urb.close()
    assert repr(urb) == "<UserRingBuffer on map 'urb' closed>"
    with pytest.raises(ValueError, match="user ring buffer on map 'urb' is closed"):
        urb.reserve(8)


def test_exports():
    assert pyebpf.UserRingBuffer is UserRingBuffer
    from pyebpf import maps

    assert maps.UserRingBuffer is UserRingBuffer
