"""Ring buffer consumer: the algorithm on a hand-built ring, then against the kernel.

The kernel tests load fixtures/ringbuf_producer.bpf.o (tests/ringbuf_producer.py)
and trigger its syscall programs with BPF_PROG_TEST_RUN; every record carries a
sequence number, its size and a tail marker, so counts and contents are exact.
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import os
import struct
import threading
import time
from functools import partial

import pytest

from pyebpf.errors import PyebpfError
from pyebpf.maps.ringbuf import (
    BPF_RINGBUF_BUSY_BIT,
    BPF_RINGBUF_DISCARD_BIT,
    Batch,
    RingBuffer,
    RingBufferManager,
    _Ring,
)

try:
    from ringbuf_producer import (
        ARGS,
        BPF_RB_NO_WAKEUP,
        FIXTURE,
        MODE_MIXED,
        MODE_OUTPUT,
        MODE_RESERVE,
        RESERVE_SIZES,
        Producer,
        check_record,
        expected_seqs,
    )
except ImportError:  # run from the repository root without tests/ on sys.path
    from tests.ringbuf_producer import (  # type: ignore[no-redef]
        ARGS,
        BPF_RB_NO_WAKEUP,
        FIXTURE,
        MODE_MIXED,
        MODE_OUTPUT,
        MODE_RESERVE,
        RESERVE_SIZES,
        Producer,
        check_record,
        expected_seqs,
    )

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf()")


# --------------------------------------------------------------------------------------
# A hand-built ring: the kernel's producer side emulated in Python, the data
# area "mapped twice" by writing every byte to both halves.


class FakeRing:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.cons = bytearray(4096)
        self.prod = bytearray(4096)
        self.data = bytearray(2 * size)
        self.ring = _Ring.from_buffers(self.cons, self.prod, self.data, size)

    @property
    def producer_pos(self) -> int:
        return struct.unpack_from("<Q", self.prod)[0]

    @property
    def consumer_pos(self) -> int:
        return struct.unpack_from("<Q", self.cons)[0]

    def _write(self, pos: int, payload: bytes) -> None:
        for i, b in enumerate(payload):
            off = (pos + i) % self.size
            self.data[off] = b
            self.data[off + self.size] = b

    def reserve(self, n: int) -> int:
        pos = self.producer_pos
        total = (n + 8 + 7) & ~7
        assert pos + total - self.consumer_pos <= self.size, "fake ring full"
        self._write(pos, struct.pack("<II", n | BPF_RINGBUF_BUSY_BIT, 0))
        struct.pack_into("<Q", self.prod, 0, pos + total)
        return pos

    def commit(self, pos: int, payload: bytes, discard: bool = False) -> None:
        self._write(pos + 8, payload)
        flag = BPF_RINGBUF_DISCARD_BIT if discard else 0
        self._write(pos, struct.pack("<I", len(payload) | flag))

    def output(self, payload: bytes, discard: bool = False) -> int:
        pos = self.reserve(len(payload))
        self.commit(pos, payload, discard)
        return pos


def rec(seq: int, size: int = 16) -> bytes:
    return struct.pack("<Q", seq) + bytes((seq + i) & 0xFF for i in range(size - 8))


def seqs(records) -> list[int]:
    return [struct.unpack_from("<Q", r)[0] for r in records]


def test_fake_records_in_order_discard_skipped():
    f = FakeRing()
    f.output(rec(0))
    f.output(rec(1), discard=True)
    f.output(rec(2, 40))
    got = [bytes(r) for r in f.ring.records()]
    assert got == [rec(0), rec(2, 40)]
    assert f.consumer_pos == f.producer_pos  # discarded space released too
    assert list(f.ring.records()) == []


def test_fake_busy_record_blocks_until_committed():
    f = FakeRing()
    f.output(rec(0))
    busy = f.reserve(16)
    f.output(rec(2))  # committed, but behind a busy record
    assert seqs(f.ring.records()) == [0]
    assert f.consumer_pos == busy  # stopped exactly at the busy record
    assert f.ring.avail() > 0  # epoll would report readable: data is reserved
    assert f.ring.batch().data == b""
    assert f.ring.consume_callbacks(lambda r: None) == 0
    f.commit(busy, rec(1))
    assert seqs(f.ring.records()) == [1, 2]
    assert f.consumer_pos == f.producer_pos


def test_fake_discarded_busy_bits_both_set_is_busy():
    # The kernel sets DISCARD together with clearing BUSY; a header with both
    # bits would still be uncommitted, so it must block.
    f = FakeRing()
    pos = f.reserve(16)
    f._write(pos, struct.pack("<I", 16 | BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT))
    assert list(f.ring.records()) == []
    assert f.consumer_pos == 0


def test_fake_wraparound_contiguous():
    f = FakeRing(4096)
    size = 100  # record = 112 bytes: 4096 is not a multiple, so records wrap
    seq = 0
    for _round in range(20):
        for _ in range(30):
            f.output(rec(seq, size))
            seq += 1
        got = [bytes(r) for r in f.ring.records()]
        assert got == [rec(s, size) for s in range(seq - 30, seq)]
    assert f.consumer_pos > 4 * 4096  # went round several times


def test_fake_iterator_break_commits_yielded_only():
    f = FakeRing()
    for s in range(5):
        f.output(rec(s))
    it = f.ring.records()
    first = next(it)
    assert seqs([first]) == [0]
    second = next(it)
    assert seqs([second]) == [1]
    it.close()  # like a `break` out of the for loop
    assert f.consumer_pos == 2 * 24
    assert seqs(f.ring.records()) == [2, 3, 4]


def test_fake_limit():
    f = FakeRing()
    for s in range(10):
        f.output(rec(s))
    assert seqs(f.ring.records(3)) == [0, 1, 2]
    assert f.ring.consume_callbacks(lambda r: None, 4) == 4
    b = f.ring.batch(2)
    assert seqs(b) == [7, 8]
    assert seqs(f.ring.records()) == [9]


def test_fake_callback_negative_stops_and_consumes_that_record():
    f = FakeRing()
    for s in range(5):
        f.output(rec(s))
    seen = []

    def cb(r):
        seen.append(seqs([r])[0])
        return -7 if len(seen) == 2 else 0

    assert f.ring.consume_callbacks(cb) == -7
    assert seen == [0, 1]
    assert seqs(f.ring.records()) == [2, 3, 4]


def test_fake_callback_exception_consumes_that_record():
    f = FakeRing()
    for s in range(3):
        f.output(rec(s))

    def cb(r):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        f.ring.consume_callbacks(cb)
    assert seqs(f.ring.records()) == [1, 2]


def test_fake_records_are_views_until_commit():
    f = FakeRing()
    f.output(rec(1))
    (r,) = list(f.ring.records())
    assert isinstance(r, memoryview) and r.readonly is False  # fake buffers are writable
    copy = r.tobytes()
    assert bytes(r) == copy == rec(1)


def test_fake_batch_uniform_fast_path():
    f = FakeRing()
    for s in range(50):
        f.output(rec(s, 32))
    b = f.ring.batch()
    assert b.uniform and b.record_size == 32 and len(b) == 50
    assert seqs(b) == list(range(50))
    assert [bytes(x) for x in b] == [rec(s, 32) for s in range(50)]
    assert b.tolist() == [rec(s, 32) for s in range(50)]
    assert bytes(b[-1]) == rec(49, 32)
    assert [t[0] for t in b.iter_unpack("<Q")] == list(range(50))
    assert [t[1] for t in b.iter_unpack("<QB")] == [(s + 0) & 0xFF for s in range(50)]
    with pytest.raises(IndexError):
        b[50]
    with pytest.raises(PyebpfError):
        list(b.iter_unpack("<40s"))
    assert f.consumer_pos == f.producer_pos


def test_fake_batch_walks_mixed_sizes_discards_and_busy():
    f = FakeRing()
    f.output(rec(0, 32))
    f.output(rec(1, 32), discard=True)
    f.output(rec(2, 17))
    f.output(rec(3, 32))
    busy = f.reserve(32)
    f.output(rec(5, 32))
    b = f.ring.batch()
    assert not b.uniform and b.record_size is None
    assert [bytes(x) for x in b] == [rec(0, 32), rec(2, 17), rec(3, 32)]
    assert b.tolist() == [rec(0, 32), rec(2, 17), rec(3, 32)]
    assert [t[0] for t in b.iter_unpack("<Q")] == [0, 2, 3]
    assert f.consumer_pos == busy
    f.commit(busy, rec(4, 32))
    assert seqs(f.ring.batch()) == [4, 5]


def test_fake_batch_uniform_prefix_then_busy():
    f = FakeRing()
    for s in range(4):
        f.output(rec(s, 32))
    busy = f.reserve(32)
    b = f.ring.batch()
    assert seqs(b) == [0, 1, 2, 3]
    assert f.consumer_pos == busy


def test_fake_batch_wraps():
    f = FakeRing(4096)
    seq = 0
    for _ in range(10):
        for _ in range(50):
            f.output(rec(seq, 64))  # 72-byte records: wrap across the end
            seq += 1
        b = f.ring.batch()
        assert b.uniform
        assert [bytes(x) for x in b] == [rec(s, 64) for s in range(seq - 50, seq)]


def test_batch_empty():
    b = Batch(b"")
    assert len(b) == 0 and not b and list(b) == [] and list(b.iter_unpack("<Q")) == []


# --------------------------------------------------------------------------------------
# Against the kernel.


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def producer():
    with Producer(ring_size=64 * 1024) as p:
        yield p


@needs_root
@pytest.mark.parametrize("mode", [MODE_OUTPUT, MODE_RESERVE, MODE_MIXED])
@pytest.mark.parametrize("size", [16, 32, 100, 256])
def test_kernel_iterator_exact(producer, mode, size):
    with RingBuffer(producer.maps["rb"]) as rb:
        n = producer.run(200, size, mode, seq=1000)
        want = expected_seqs(1000, 200, mode)
        assert n == len(want)
        got = [check_record(r, size) for r in rb.poll(1.0)]
        assert got == want
        assert rb.consumer_pos == rb.producer_pos
        assert list(rb.poll(0)) == []


@needs_root
def test_kernel_callbacks_and_consume(producer):
    seen: list[int] = []
    with RingBuffer(producer.maps["rb"], lambda r: seen.append(check_record(r, 40))) as rb:
        producer.run(50, 40, MODE_MIXED, seq=0)
        assert rb.poll_callbacks(1.0) == len(expected_seqs(0, 50, MODE_MIXED))
        assert seen == expected_seqs(0, 50, MODE_MIXED)
        assert rb.consume() == 0
        producer.run(10, 40, MODE_OUTPUT, seq=50)
        assert rb.consume() == 10
        assert seen[-10:] == list(range(50, 60))


@needs_root
def test_kernel_callback_stops_early(producer):
    calls = []

    def cb(r):
        calls.append(check_record(r, 32))
        return -1 if len(calls) == 3 else None

    with RingBuffer(producer.maps["rb"], cb) as rb:
        producer.run(10, 32, MODE_RESERVE, seq=0)
        assert rb.consume() == -1
        assert calls == [0, 1, 2]
        assert [check_record(r, 32) for r in rb.poll(0)] == list(range(3, 10))


@needs_root
def test_kernel_no_callback_is_an_error(producer):
    with RingBuffer(producer.maps["rb"]) as rb, pytest.raises(PyebpfError):
        rb.consume()


@needs_root
@pytest.mark.parametrize("mode", [MODE_OUTPUT, MODE_RESERVE, MODE_MIXED])
def test_kernel_batch_exact(producer, mode):
    with RingBuffer(producer.maps["rb"]) as rb:
        producer.run(300, 32, mode, seq=7)
        b = rb.poll_batch(1.0)
        want = expected_seqs(7, 300, mode)
        assert [check_record(r, 32) for r in b] == want
        assert [t[0] for t in b.iter_unpack("<Q")] == want
        assert b.uniform == (mode != MODE_MIXED)
        assert len(rb.poll_batch(0)) == 0


@needs_root
def test_kernel_batch_max_records(producer):
    with RingBuffer(producer.maps["rb"]) as rb:
        producer.run(100, 32, MODE_RESERVE, seq=0)
        assert [check_record(r, 32) for r in rb.poll_batch(1.0, 30)] == list(range(30))
        assert [check_record(r, 32) for r in rb.consume_batch()] == list(range(30, 100))


@needs_root
@pytest.mark.parametrize("size", [24, 40, 100, 1000])
@pytest.mark.parametrize("api", ["iter", "callback", "batch"])
def test_kernel_wraparound_small_ring(size, api):
    """A 4 KiB ring, record sizes that do not divide it: records wrap past the end."""
    with Producer(ring_size=4096) as p, RingBuffer(p.maps["rb"]) as rb:
        stride = (size + 15) & ~7
        per_run = max(1, (4096 // stride) - 1)
        seq = 0
        for _ in range(3 * 4096 // (per_run * stride) + 3):
            mode = MODE_OUTPUT if seq % 2 else MODE_RESERVE
            assert p.run(per_run, size, mode, seq=seq) == per_run
            if api == "iter":
                got = [check_record(r, size) for r in rb.poll(1.0)]
            elif api == "batch":
                got = [check_record(r, size) for r in rb.poll_batch(1.0)]
            else:
                got = []
                rb.callback = lambda r, got=got: got.append(check_record(r, size))
                rb.poll_callbacks(1.0)
            assert got == list(range(seq, seq + per_run))
            seq += per_run
        assert rb.consumer_pos > 2 * 4096  # wrapped at least twice


@needs_root
def test_kernel_full_ring_drops_and_recovers():
    with Producer(ring_size=4096) as p, RingBuffer(p.maps["rb"]) as rb:
        n = p.run(1000, 32, MODE_RESERVE, seq=0)
        assert 0 < n < 1000  # the ring filled up; the rest were dropped
        assert [check_record(r, 32) for r in rb.poll(0)] == list(range(n))
        assert p.run(10, 32, MODE_OUTPUT, seq=5000) == 10
        assert [check_record(r, 32) for r in rb.poll(0)] == list(range(5000, 5010))


@needs_root
def test_kernel_poll_timeout_and_wakeup(producer):
    with RingBuffer(producer.maps["rb"]) as rb:
        t0 = time.monotonic()
        assert list(rb.poll(0.2)) == []
        assert 0.15 < time.monotonic() - t0 < 2

        timer = threading.Timer(0.1, producer.run, (5, 32, MODE_RESERVE), {"seq": 0})
        timer.start()
        t0 = time.monotonic()
        got = [check_record(r, 32) for r in rb.poll(10.0)]
        timer.join()
        assert time.monotonic() - t0 < 5
        if not got:  # woke for the first commit before the rest were visible
            got = [check_record(r, 32) for r in rb.poll(1.0)]
        assert got[:1] == [0]
        got += [check_record(r, 32) for r in rb.poll(0)]
        assert got == list(range(5))


@needs_root
def test_kernel_interval_polling_without_wakeups(producer):
    """BPF_RB_NO_WAKEUP: epoll never fires, the periodic consume still sees the data."""
    with RingBuffer(producer.maps["rb"]) as rb:
        timer = threading.Timer(0.05, producer.run, (5, 32, MODE_RESERVE, BPF_RB_NO_WAKEUP))
        timer.start()
        t0 = time.monotonic()
        got = [check_record(r, 32) for r in rb.poll(5.0, interval=0.01)]
        timer.join()
        assert got == list(range(5))
        assert time.monotonic() - t0 < 2.5

        # The same through epoll: no wake-up, so it waits out the timeout.
        timer = threading.Timer(0.05, producer.run, (5, 32, MODE_RESERVE, BPF_RB_NO_WAKEUP))
        timer.start()
        t0 = time.monotonic()
        got = [check_record(r, 32) for r in rb.poll(0.6)]
        timer.join()
        assert time.monotonic() - t0 >= 0.5
        assert got == list(range(5, 10))

        # interval=0 spins.
        producer.run(3, 32, MODE_RESERVE, BPF_RB_NO_WAKEUP)
        assert [check_record(r, 32) for r in rb.poll(1.0, interval=0)] == [10, 11, 12]
        assert len(rb.poll_batch(0.05, interval=0)) == 0


@needs_root
def test_kernel_forever_iterator(producer):
    with RingBuffer(producer.maps["rb"]) as rb:
        producer.run(10, 32, MODE_MIXED, seq=0)
        got = []
        for r in rb:
            got.append(check_record(r, 32))
            if len(got) == len(expected_seqs(0, 10, MODE_MIXED)):
                break
        assert got == expected_seqs(0, 10, MODE_MIXED)


@needs_root
def test_kernel_asyncio(producer):
    async def main():
        loop = asyncio.get_running_loop()
        with RingBuffer(producer.maps["rb"]) as rb:
            got: list[int] = []

            async def produce():
                for i in range(4):
                    await asyncio.sleep(0.02)
                    await loop.run_in_executor(None, producer.run, 25, 32, MODE_RESERVE)
                    del i

            task = asyncio.create_task(produce())
            async for r in rb:
                got.append(check_record(r, 32))
                if len(got) == 100:
                    break
            await task
            assert got == list(range(100))

            assert len(await rb.poll_async(0.05)) == 0  # times out
            loop.call_later(0.02, producer.run, 7, 32, MODE_OUTPUT)
            b = await rb.poll_async(5.0)
            assert [check_record(r, 32) for r in b] == list(range(100, 107))

    asyncio.run(main())


@needs_root
def test_kernel_manager_two_rings():
    with Producer(ring_size=16 * 1024, ring2_size=8 * 1024) as p:
        a: list[int] = []
        b: list[int] = []
        with RingBufferManager() as mgr:
            assert mgr.add(p.maps["rb"], lambda r: a.append(check_record(r, 32))) == 0
            assert mgr.add(p.maps["rb2"], lambda r: b.append(check_record(r, 64))) == 1
            assert len(mgr) == 2
            assert mgr.poll(0.05) == 0
            p.run(10, 32, MODE_RESERVE, ring="rb", seq=0)
            p.run(6, 64, MODE_MIXED, ring="rb2", seq=100)
            assert mgr.poll(1.0) == 10 + 4
            assert a == list(range(10)) and b == expected_seqs(100, 6, MODE_MIXED)

            p.run(3, 64, MODE_OUTPUT, ring="rb2", seq=200)
            assert mgr.consume_ring(0) == 0
            assert mgr.consume_ring(1) == 3
            p.run(2, 32, MODE_OUTPUT, ring="rb", seq=10)
            assert mgr.consume() == 2
            assert a[-2:] == [10, 11] and b[-3:] == [200, 201, 202]

            # Only ring 2 is ready: only its callback runs.
            p.run(4, 64, MODE_OUTPUT, ring="rb2", seq=300)
            before = len(a)
            assert mgr.poll(1.0) == 4
            assert len(a) == before

            with pytest.raises(PyebpfError):
                mgr.add(p.maps["rb"], lambda r: None)

            # Periodic polling sees records produced without wake-ups.
            p.run(2, 32, MODE_OUTPUT, BPF_RB_NO_WAKEUP, ring="rb", seq=350)
            assert mgr.poll(1.0, interval=0.01) == 2
            assert a[-2:] == [350, 351]
            assert mgr.poll(0.03, interval=0.01) == 0

            async def main():
                loop = asyncio.get_running_loop()
                loop.call_later(0.02, partial(p.run, 3, 32, MODE_OUTPUT, ring="rb", seq=400))
                loop.call_later(0.04, partial(p.run, 2, 64, MODE_OUTPUT, ring="rb2", seq=500))
                seen = []
                async for idx, r in mgr:
                    seen.append((idx, check_record(r, 32 if idx == 0 else 64)))
                    if len(seen) == 5:
                        break
                assert sorted(seen) == [(0, 400), (0, 401), (0, 402), (1, 500), (1, 501)]
                loop.call_later(0.02, partial(p.run, 2, 32, MODE_OUTPUT, ring="rb", seq=600))
                assert await mgr.poll_async(5.0) == 2
                assert a[-2:] == [600, 601]
                assert await mgr.poll_async(0.05) == 0

            asyncio.run(main())


@needs_root
def test_kernel_raw_fd_and_size_from_kernel(producer):
    with RingBuffer(producer.fd("rb")) as rb:
        assert rb.size == 64 * 1024
        producer.run(3, 32, MODE_OUTPUT, seq=0)
        assert [check_record(r, 32) for r in rb.poll(1.0)] == [0, 1, 2]
    with pytest.raises(PyebpfError, match="not a ringbuf"):
        RingBuffer(producer.maps["scratch"])
    with pytest.raises(PyebpfError, match="power-of-2"):
        RingBuffer(producer.fd("rb"), size=3000)


@needs_root
def test_kernel_producer_page_is_read_only(producer):
    with RingBuffer(producer.maps["rb"]) as rb:
        producer.run(1, 32, MODE_OUTPUT, seq=0)
        (r,) = list(rb.poll(1.0))
        assert r.readonly
        with pytest.raises(TypeError):
            r[0] = 1


@needs_root
def test_kernel_no_fd_leaks(producer):
    gc.collect()
    before = _fd_count()
    for _ in range(3):
        rb = RingBuffer(producer.maps["rb"])
        producer.run(5, 32, MODE_OUTPUT)
        assert len(list(rb.poll(1.0))) == 5
        rb.close()
        rb.close()  # idempotent
        mgr = RingBufferManager()
        mgr.add(producer.maps["rb"], lambda r: None)
        mgr.add(producer.maps["rb2"], lambda r: None)
        mgr.close()
    assert _fd_count() == before

    # A record still referenced at close keeps its mapping (not the epoll fd)
    # alive until it is dropped.
    rb = RingBuffer(producer.maps["rb"])
    producer.run(1, 32, MODE_OUTPUT, seq=77)
    (kept,) = list(rb.poll(1.0))
    rb.close()
    assert check_record(kept, 32) == 77
    del kept
    gc.collect()
    assert _fd_count() == before

    # Garbage collection alone closes everything.
    rb = RingBuffer(producer.maps["rb"])
    del rb
    gc.collect()
    assert _fd_count() == before


@needs_root
@pytest.mark.parametrize("api", ["iterator", "callback"])
def test_kernel_held_record_is_not_released(api):
    """A record (a view into the ring) stays valid while held: the consumer position the
    kernel reads is not past it, so the producer cannot reuse its bytes; once the consumer
    is done the position moves and the space comes back."""
    size, stride = 32, 40  # 8-byte header + 32 bytes, 8-aligned
    with Producer(ring_size=4096) as p, RingBuffer(p.maps["rb"]) as rb:
        # A second, read-only mapping of the consumer page: what the kernel's producer
        # sees, independent of the consumer object's own view of it.
        page = mmap.mmap(p.fd("rb"), mmap.PAGESIZE, prot=mmap.PROT_READ)
        try:
            def kernel_cons() -> int:
                return struct.unpack_from("<Q", page)[0]

            start = kernel_cons()
            n = p.run(1000, size, MODE_OUTPUT, seq=0)
            assert 0 < n < 1000  # the ring is full
            seen: list[tuple[int, int, int]] = []  # (seq, consumer pos while held, refill)

            def hold(i: int, r: memoryview) -> None:
                cons = kernel_cons()
                assert cons == rb.consumer_pos
                # not advanced past this record (it starts at start + i * stride)
                refill = p.run(10, size, MODE_OUTPUT, seq=10_000 + i) if i == 0 else -1
                seen.append((check_record(r, size), cons - (start + i * stride), refill))

            if api == "iterator":
                for i, r in enumerate(rb.poll(0)):
                    hold(i, r)
            else:
                cb_i = iter(range(n))
                rb.callback = lambda r: hold(next(cb_i), r)
                assert rb.consume() == n
            assert [s for s, _, _ in seen] == list(range(n))
            assert all(ahead <= 0 for _, ahead, _ in seen), seen
            # while record 0 was held the ring stayed full: nothing could overwrite it
            assert seen[0][1:] == (0, 0)
            # the position was published as records were left behind (per quarter ring),
            # and past everything at the end
            assert any(ahead + i * stride > 0 for i, (_, ahead, _) in enumerate(seen))
            assert kernel_cons() == rb.producer_pos == start + n * stride
            assert p.run(10, size, MODE_OUTPUT, seq=20_000) == 10
            assert [check_record(r, size) for r in rb.poll(0)] == list(range(20_000, 20_010))
        finally:
            page.close()


@needs_root
def test_kernel_closed_ring_raises(producer):
    rb = RingBuffer(producer.maps["rb"])
    rb.close()
    assert "closed" in repr(rb)
    with pytest.raises(ValueError):
        list(rb.poll(0))
    with pytest.raises(ValueError):
        rb.consume_batch()
    mgr = RingBufferManager()
    mgr.close()
    with pytest.raises(ValueError):
        mgr.add(producer.maps["rb"], lambda r: None)
    with pytest.raises(ValueError):
        mgr.poll(0.01)


@needs_root
def test_kernel_reserve_sizes_cover_fixture():
    # Sizes outside RESERVE_SIZES are dropped by the fixture in reserve mode.
    with Producer(ring_size=4096) as p, RingBuffer(p.maps["rb"]) as rb:
        assert p.run(2, 48, MODE_RESERVE, seq=0) == 0
        assert list(rb.poll(0)) == []
        for size in RESERVE_SIZES:
            assert p.run(1, size, MODE_RESERVE, seq=size) == 1
            assert [check_record(r, size) for r in rb.poll(1.0)] == [size]


def _fork_producer(p: Producer, runs: int, count: int, size: int, mode: int) -> tuple[int, int]:
    """Fork a child producing ``runs`` x ``count`` records; returns (pid, read end of a
    pipe on which it reports how many records it committed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            if (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(0, {1})
            total = sum(p.run(count, size, mode) for _ in range(runs))
            os.write(w, struct.pack("<Q", total))
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


@needs_root
@pytest.mark.parametrize("api", ["iter", "callback", "batch"])
def test_kernel_concurrent_producer_small_ring(api):
    """The producer runs on the other CPU while we consume: records are caught
    BUSY and the ring wraps and fills; every record must arrive intact, in order,
    exactly once (the tail marker catches a record read before its commit)."""
    size = 100 if api != "batch" else 32
    with Producer(ring_size=8192) as p, RingBuffer(p.maps["rb"]) as rb:
        pid, rfd = _fork_producer(p, 300, 64, size, MODE_MIXED)
        got: list[int] = []
        rb.callback = lambda r: got.append(check_record(r, size))
        done = False
        total = None
        try:
            while True:
                if api == "iter":
                    got.extend(check_record(r, size) for r in rb.poll(0.01))
                elif api == "callback":
                    rb.poll_callbacks(0.01)
                else:
                    got.extend(check_record(r, size) for r in rb.poll_batch(0.01))
                if done and not rb.avail():
                    break
                if not done and os.waitpid(pid, os.WNOHANG)[0]:
                    done = True
                    total = struct.unpack("<Q", os.read(rfd, 8))[0]
        finally:
            if not done:
                os.waitpid(pid, 0)
            os.close(rfd)
        assert total == len(got)
        assert got == sorted(set(got))  # increasing: in order, no duplicates
        # seq i is discarded when i % 3 == 2 within each run of 64
        assert all((s % 64) % 3 != 2 for s in got)


@needs_root
def test_kernel_with_pyebpf_load():
    """The real path: a Map from pyebpf.load, the producer run through Program.test_run."""
    pyebpf = pytest.importorskip("pyebpf")
    load = getattr(pyebpf, "load", None)
    if load is None:
        pytest.skip("pyebpf.load is not available")

    with load(str(FIXTURE), max_entries={"rb": 8192}) as obj:
        m = obj.maps["rb"]
        with RingBuffer(m) as rb:
            assert rb.size == 8192
            prog = obj.programs["produce_rb"]
            for start in range(0, 600, 60):
                ctx = ARGS.pack(start, 60, 100, MODE_MIXED, 0, 0, 0)
                assert prog.test_run(ctx_in=ctx).retval == 40
                got = [check_record(r, 100) for r in rb.poll(1.0)]
                assert got == expected_seqs(start, 60, MODE_MIXED)
