"""Thread safety: 8 threads update and read one map while an asyncio loop drains a
ring buffer that a ninth thread fills (fixtures/unit/ringbuf_drops.bpf.o).

A Map shares nothing mutable between threads: each thread gets its own
preallocated MapOps (pyebpf.sys.MapOps' buffers are per-thread by design).
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading

import pytest

import pyebpf
from pyebpf.maps.map import Map
from pyebpf.maps.ringbuf import RingBuffer
from pyebpf.sys import bpf as B
from pyebpf.uapi import MapType

try:
    from unitobj import unit_object
except ImportError:  # pragma: no cover
    from tests.unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf()")

THREADS = 8
KEYS = 300  # per thread
ROUNDS = 4  # updates of every key per thread
BATCHES, PER_BATCH = 40, 1000  # ring buffer records: 40 test runs of 1000


def test_threads_and_asyncio_ringbuf():
    obj = pyebpf.load(unit_object("ringbuf_drops"))
    m = Map.from_fd(B.map_create(MapType.HASH, 4, 8, THREADS * KEYS + 16, name="pyebpf_thr"))
    shared = obj.maps["drop_arr"]  # BTF-typed: values decode through the codec
    shared[1] = 0xABCD
    errors: list[BaseException] = []
    ops_seen: set[int] = set()
    ops_lock = threading.Lock()
    start = threading.Barrier(THREADS + 1)

    def worker(t: int) -> None:
        try:
            start.wait()
            with ops_lock:
                ops_seen.add(id(m.ops))
            for r in range(ROUNDS):
                for i in range(KEYS):
                    k = t * KEYS + i
                    v = (t << 40) | (r << 20) | i
                    m[k] = v
                    got = m.lookup(k)
                    assert got is not None and int.from_bytes(got, "little") == v, (k, got, v)
                    assert shared[1] == 0xABCD
                    if i % 50 == 0:
                        assert k in m and m.lookup_bytes(k.to_bytes(4, "little")) is not None
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def producer() -> None:
        try:
            start.wait()
            for _ in range(BATCHES):
                obj.programs["produce"].test_run(ctx_in=struct.pack("<II", 1, PER_BATCH))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    total = BATCHES * PER_BATCH
    seqs: list[int] = []

    async def consume(rb: RingBuffer) -> None:
        async for rec in rb:
            seqs.append(struct.unpack_from("<Q", rec)[0])
            if len(seqs) + rb.dropped >= total:
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    threads.append(threading.Thread(target=producer))
    try:
        with RingBuffer(obj.maps["big"], drops=obj.maps["drop_cnt"]) as rb:
            for th in threads:
                th.start()

            async def main() -> None:
                await asyncio.wait_for(consume(rb), 120)

            asyncio.run(main())
            for th in threads:
                th.join(120)
            dropped = rb.dropped
        assert not errors, errors[0]
        assert len(ops_seen) == THREADS  # one MapOps per thread
        # exact counts: every record delivered once or counted as dropped
        assert len(seqs) == len(set(seqs))
        assert len(seqs) + dropped == total == obj.globals["seq"]
        assert dropped == obj.globals["drops"]
        # exact contents: every key holds its thread's last round
        items = {int.from_bytes(k, "little"): int.from_bytes(v, "little")
                 for k, v in m.items(raw=True)}
        assert items == {t * KEYS + i: (t << 40) | ((ROUNDS - 1) << 20) | i
                         for t in range(THREADS) for i in range(KEYS)}
    finally:
        m.close()
        obj.close()
