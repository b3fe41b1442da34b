"""PerfBuffer against the real kernel: fixtures/unit/perf_producer.bpf.o writes records with
bpf_perf_event_output from a raw_tp program run by BPF_PROG_TEST_RUN on a chosen CPU."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Iterator

import pytest

import pyebpf
from pyebpf.errors import PyebpfError
from pyebpf.maps.perfbuf import PerfBatch, PerfBuffer, online_cpus
from pyebpf.sys.fd import open_fd_count

try:
    from tests.unitobj import unit_object
except ImportError:  # pragma: no cover - tests/ on sys.path
    from unitobj import unit_object  # type: ignore[no-redef]

BPF_F_TEST_RUN_ON_CPU = 1
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = NEEDS_ROOT


class Producer:
    """The loaded fixture: ``run(cpu, seq, count, size)`` returns the failed outputs."""

    def __init__(self) -> None:
        self.obj = pyebpf.load(str(unit_object("perf_producer")))
        self.map = self.obj.maps["events"]
        self.prog = self.obj.programs["produce"]

    def run(self, cpu: int, seq: int, count: int, size: int) -> int:
        ctx = struct.pack("<3Q", seq, count, size)
        return self.prog.test_run(ctx_in=ctx, flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpu).retval

    def close(self) -> None:
        self.obj.close()


@pytest.fixture
def producer() -> Iterator[Producer]:
    p = Producer()
    try:
        yield p
    finally:
        p.close()


CPUS = online_cpus()


def padded(size: int) -> int:
    """The raw length the kernel reports for ``size`` bytes of output (4 + size, 8-aligned, - 4)."""
    return ((size + 4 + 7) & ~7) - 4


def check(cpu: int, rec: bytes | memoryview, size: int) -> int:
    """Validate one record of the fixture; returns its seq."""
    assert len(rec) == padded(size), (len(rec), size)
    seq, rsize, rcpu = struct.unpack_from("<QII", rec)
    assert rsize == size and rcpu == cpu, (rsize, size, rcpu, cpu)
    if size >= 24:
        (tail,) = struct.unpack_from("<Q", rec, size - 8)
        assert tail == seq ^ 0xFFFFFFFFFFFFFFFF
    return seq


def test_exact_counts_and_contents_per_cpu(producer: Producer) -> None:
    got: dict[int, list[int]] = {c: [] for c in CPUS}
    sizes = {c: (64, 17)[i % 2] for i, c in enumerate(CPUS)}

    def cb(cpu: int, rec: memoryview) -> None:
        got[cpu].append(check(cpu, rec, sizes[cpu]))

    with PerfBuffer(producer.map, cb, page_cnt=8) as pb:
        assert pb.cpus == CPUS
        for i, cpu in enumerate(CPUS):
            assert producer.run(cpu, 1000 * (i + 1), 50 + i, sizes[cpu]) == 0
        assert pb.poll_callbacks(1.0) == sum(50 + i for i in range(len(CPUS)))
        assert pb.consume() == 0
        assert pb.lost_total == 0 and pb.lost_by_cpu == {c: 0 for c in CPUS}
    for i, cpu in enumerate(CPUS):
        assert got[cpu] == list(range(1000 * (i + 1), 1000 * (i + 1) + 50 + i))


@pytest.mark.parametrize("size", [17, 100, 333, 1001])
def test_wraparound_reassembly_one_page(producer: Producer, size: int) -> None:
    """A 1-page ring and odd record sizes: records cross the ring end again and again."""
    cpu = CPUS[-1]
    rec_bytes = 8 + 4 + padded(size)
    per_run = max(1, 4000 // rec_bytes)  # never more than fits: nothing lost
    seqs: list[int] = []
    wrapped = 0

    def cb(c: int, rec: memoryview) -> None:
        seqs.append(check(c, rec, size))

    with PerfBuffer(producer.map, cb, page_cnt=1, cpus=[cpu]) as pb:
        ring = pb._rings[0]
        seq = 0
        for _ in range(60):
            tail = ring.meta[129]
            if (tail & ring.mask) + rec_bytes > ring.size:
                wrapped += 1
            assert producer.run(cpu, seq, per_run, size) == 0
            seq += per_run
            assert pb.consume() == per_run
        # The iterator and the batch take the same wrapped records apart too.
        it: list[int] = []
        for _ in range(20):
            assert producer.run(cpu, seq, per_run, size) == 0
            it.extend(check(c, r, size) for c, r in pb.poll(1.0))
            seq += per_run
            assert producer.run(cpu, seq, per_run, size) == 0
            for b in pb.consume_batch():
                assert b.cpu == cpu and b.uniform
                it.extend(check(cpu, r, size) for r in b)
            seq += per_run
        assert pb.lost_total == 0
    assert seqs == list(range(60 * per_run))
    assert it == list(range(60 * per_run, seq))
    assert wrapped > 0 or rec_bytes in (8, 16, 32, 64)


def _fill_and_lose(producer: Producer, pb: PerfBuffer, cpu: int, count: int, size: int) -> int:
    """Produce ``count`` records without consuming; returns how many outputs failed."""
    return producer.run(cpu, 0, count, size)


def test_lost_records_counted(producer: Producer) -> None:
    cpu = CPUS[0]
    seqs: list[int] = []
    lost_cb: list[tuple[int, int]] = []
    with PerfBuffer(producer.map, lambda c, r: seqs.append(check(c, r, 100)),
                    lambda c, n: lost_cb.append((c, n)), page_cnt=1, cpus=[cpu]) as pb:
        failed = _fill_and_lose(producer, pb, cpu, 1000, 100)
        assert failed > 0
        assert pb.consume() == 1000 - failed
        assert pb.lost_total == 0  # the kernel writes the count with the next sample
        assert producer.run(cpu, 1000, 1, 100) == 0
        assert pb.consume() == 1
        assert lost_cb == [(cpu, failed)]
        assert pb.lost_total == failed and pb.lost_by_cpu == {cpu: failed}
        assert len(seqs) + pb.lost_total == 1001
        # The records that fitted are the first ones; then the flush record.
        assert seqs == list(range(1000 - failed)) + [1000]


def test_lost_record_in_batch_and_iterator(producer: Producer) -> None:
    cpu = CPUS[0]
    with PerfBuffer(producer.map, page_cnt=1, cpus=[cpu]) as pb:
        failed = producer.run(cpu, 0, 500, 64)
        assert failed > 0
        first = pb.consume_batch()
        assert len(first) == 1 and first[0].uniform and len(first[0]) == 500 - failed
        assert [s for (s,) in first[0].iter_unpack("<Q")] == list(range(500 - failed))
        assert producer.run(cpu, 500, 3, 64) == 0
        (b,) = pb.consume_batch()
        assert not b.uniform and b.lost == failed and len(b) == 3  # LOST record first
        assert [check(cpu, r, 64) for r in b] == [500, 501, 502]
        assert [s for (s,) in b.iter_unpack("<Q")] == [500, 501, 502]
        assert pb.lost_total == failed
        # The iterator counts losses too.
        failed2 = producer.run(cpu, 0, 500, 64)
        n = sum(1 for _ in pb.poll(0))
        assert n == 500 - failed2
        assert producer.run(cpu, 0, 1, 64) == 0
        assert sum(1 for _ in pb.poll(0)) == 1
        assert pb.lost_total == failed + failed2


def test_no_silent_loss_concurrent(producer: Producer) -> None:
    """A producer thread outpaces the consumer on a small ring: every record is received
    or counted lost, and the lost counts match the failed outputs the program saw."""
    cpu = CPUS[-1]
    total, per_run, size = 100_000, 2000, 64
    failed = [0]

    def produce() -> None:
        seq = 0
        while seq < total:
            failed[0] += producer.run(cpu, seq, per_run, size)
            seq += per_run

    last = [-1]
    received = [0]
    gaps = [0]

    def cb(c: int, rec: memoryview) -> None:
        (seq,) = struct.unpack_from("<Q", rec)
        gaps[0] += seq - last[0] - 1
        last[0] = seq
        received[0] += 1

    with PerfBuffer(producer.map, cb, page_cnt=2, cpus=[cpu]) as pb:
        t = threading.Thread(target=produce)
        t.start()
        while t.is_alive():
            pb.poll_callbacks(0.01)
        t.join()
        pb.consume()  # room for the flush record and the LOST record before it
        assert producer.run(cpu, total, 1, size) == 0  # makes the kernel write pending losses
        assert pb.poll_callbacks(1.0) == 1 and last[0] == total
        assert received[0] + pb.lost_total == total + 1
        assert pb.lost_total == failed[0] == gaps[0]


def test_asyncio(producer: Producer) -> None:
    cpu = CPUS[0]

    async def main() -> tuple[list[int], list[PerfBatch]]:
        # 16 pages hold all 300 records: the loop may start the next producer run before
        # the reader task has drained the last one, and this test is not about losses
        pb = PerfBuffer(producer.map, page_cnt=16)
        try:
            loop = asyncio.get_running_loop()
            seqs: list[int] = []

            async def reader() -> None:
                async for c, rec in pb:
                    seqs.append(check(c, rec, 40))
                    if len(seqs) == 300:
                        return

            task = asyncio.create_task(reader())
            await asyncio.sleep(0.01)
            for i in range(3):
                await loop.run_in_executor(None, producer.run, cpu, i * 100, 100, 40)
            try:
                await asyncio.wait_for(task, 5)
            finally:
                assert pb.lost_total == 0
            assert await pb.poll_async(0.05) == []
            loop.call_later(0.05, producer.run, cpu, 7, 5, 40)
            batches = await pb.poll_async(5)
            return seqs, batches
        finally:
            pb.close()

    seqs, batches = asyncio.run(main())
    assert seqs == list(range(300))
    assert [len(b) for b in batches] == [5] and batches[0].cpu == cpu
    assert [check(cpu, r, 40) for r in batches[0]] == list(range(7, 12))


def test_overwritable_snapshot(producer: Producer) -> None:
    cpu = CPUS[0]
    with PerfBuffer(producer.map, page_cnt=1, cpus=[cpu], overwritable=True) as pb:
        assert producer.run(cpu, 0, 1000, 64) == 0  # never full: old data is overwritten
        snap = pb.read_overwritable()
        seqs = [check(c, r, 64) for c, r in snap]
        # 4096 bytes hold 51 records of 80 bytes; the oldest may be partly overwritten.
        assert 50 <= len(seqs) <= 51
        assert seqs == list(range(1000 - len(seqs), 1000))
        assert pb.read_overwritable() == []
        assert producer.run(cpu, 5000, 5, 64) == 0
        assert [check(c, r, 64) for c, r in pb.read_overwritable()] == list(range(5000, 5005))
        # While paused, output is lost rather than written.
        pb.pause(True)
        assert producer.run(cpu, 0, 3, 64) == 3
        pb.pause(False)
        assert pb.read_overwritable() == []
        with pytest.raises(PyebpfError, match="read_overwritable"):
            pb.consume_batch()
        with pytest.raises(PyebpfError):
            PerfBuffer(producer.map, page_cnt=3)
    with PerfBuffer(producer.map, page_cnt=1, cpus=[cpu]) as pb2, pytest.raises(PyebpfError):
        pb2.read_overwritable()


def _real_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _perf_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("perf_event" in line for line in f)


def test_close_releases_everything(producer: Producer) -> None:
    fds, maps, real = open_fd_count(), _perf_mappings(), _real_fds()
    for overwritable in (False, True):
        pb = PerfBuffer(producer.map, lambda c, r: None, page_cnt=2, overwritable=overwritable)
        # one event per CPU, the buffer's own dup of the map fd, the eventfd that wakes
        # waiters on close
        assert open_fd_count() == fds + len(CPUS) + 2
        # and the epoll fd; Python's mmap holds a dup of each event fd (no trackfd=False in 3.10)
        assert _real_fds() == real + 2 * len(CPUS) + 1 + 2
        assert _perf_mappings() == maps + len(CPUS)
        assert producer.run(CPUS[0], 0, 3, 32) == 0
        pb.close()
        pb.close()  # idempotent
        assert open_fd_count() == fds and _perf_mappings() == maps and _real_fds() == real
        # The map slots are cleared: the program's output has nowhere to go.
        assert producer.run(CPUS[0], 0, 3, 32) == 3
        with pytest.raises(ValueError):
            pb.consume()
    # A record kept past close keeps its mapping alive until dropped, then it goes.
    kept: list[memoryview] = []
    with PerfBuffer(producer.map, lambda c, r: kept.append(r), cpus=[CPUS[0]]) as pb:
        producer.run(CPUS[0], 42, 1, 32)
        pb.consume()
    assert check(CPUS[0], kept[0], 32) == 42
    kept.clear()
    assert open_fd_count() == fds and _perf_mappings() == maps and _real_fds() == real


def test_argument_errors(producer: Producer) -> None:
    with pytest.raises(PyebpfError, match="power of two"):
        PerfBuffer(producer.map, page_cnt=6)
    with pytest.raises(PyebpfError, match="do not fit"):
        PerfBuffer(producer.map, cpus=[producer.map.max_entries])
    with pytest.raises(PyebpfError, match="not a perf_event_array"):
        PerfBuffer(producer.obj.maps["scratch"].fd.fileno())
    with PerfBuffer(producer.map) as pb, pytest.raises(PyebpfError, match="no callback"):
        pb.consume()


def test_batch_paths_wrap_limit_and_mixed_sizes(producer: Producer) -> None:
    """The uniform fast path across the ring end (80-byte records do not divide 4096, so
    one straddles it), ``max_records``, and the record-by-record path for mixed sizes."""
    cpu = CPUS[0]
    seen: list[int] = []
    with PerfBuffer(producer.map, page_cnt=1, cpus=[cpu]) as pb:
        seq = 0
        for _ in range(12):
            assert producer.run(cpu, seq, 45, 64) == 0
            seq += 45
            got = 0
            while got < 45:
                batches = pb.consume_batch(max_records=7)
                assert len(batches) == 1 and batches[0].uniform and len(batches[0]) <= 7
                assert batches[0].record_size == padded(64)
                seen += [s for (s,) in batches[0].iter_unpack("<Q")]
                got += len(batches[0])
        assert seen == list(range(seq))
        mixed: list[tuple[int, int]] = []
        for _ in range(10):
            assert producer.run(cpu, seq, 9, 17) == 0
            assert producer.run(cpu, seq + 9, 9, 100) == 0
            (b,) = pb.consume_batch()
            assert not b.uniform and len(b) == 18
            mixed += [(check(cpu, r, 17 if i < 9 else 100), i) for i, r in enumerate(b)]
            assert b.tolist()[0] == bytes(b[0]) and bytes(b[-1]) == bytes(b[17])
            seq += 18
        assert [s for s, _ in mixed] == list(range(seq - 180, seq))
        assert pb.consume_batch() == [] and pb.avail() == 0


def test_wakeup_events_and_watermark(producer: Producer) -> None:
    """The epoll fd becomes readable after ``wakeup_events`` samples / ``watermark`` bytes."""
    import select

    cpu = CPUS[0]
    for kw, first, second in (({"wakeup_events": 10}, 5, 5), ({"watermark": 2048}, 12, 20)):
        with PerfBuffer(producer.map, lambda c, r: None, page_cnt=2, cpus=[cpu], **kw) as pb:
            assert producer.run(cpu, 0, first, 64) == 0  # below the threshold: no wake-up
            assert select.select([pb], [], [], 0.05)[0] == []
            assert pb.wait(0) and pb.avail() == first * 80  # the data is there all the same
            assert producer.run(cpu, 0, second, 64) == 0
            assert select.select([pb], [], [], 1.0)[0] == [pb]
            assert pb.consume() == first + second


def test_asyncio_wakeup_not_lost(producer: Producer) -> None:
    # Records landing between the reader's last look and its registration with the loop
    # once left it asleep with data in the ring (about 1 run in 30 here): repeat the race.
    cpu = CPUS[0]

    async def one(pb: PerfBuffer) -> int:
        loop = asyncio.get_running_loop()
        got = 0

        async def reader() -> None:
            nonlocal got
            async for _c, _rec in pb:
                got += 1
                if got == 300:
                    return

        task = asyncio.create_task(reader())
        for i in range(3):
            await loop.run_in_executor(None, producer.run, cpu, i * 100, 100, 40)
        try:
            await asyncio.wait_for(task, 2)
        except asyncio.TimeoutError:
            pass
        return got

    for _ in range(40):
        with PerfBuffer(producer.map, page_cnt=16) as pb:
            assert asyncio.run(one(pb)) == 300 and pb.lost_total == 0
