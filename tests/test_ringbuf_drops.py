"""RingBuffer drop counts: the kernel keeps none, so the producer
(fixtures/unit/ringbuf_drops.bpf.o) counts its failed reservations in a per-CPU
array, a plain array slot and a global; ``RingBuffer(..., drops=...)`` reads them."""

from __future__ import annotations

import os
import struct
import sys

import pytest

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.maps.ringbuf import DropCounter, RingBuffer, RingBufferManager, _count

try:
    from unitobj import unit_object
except ImportError:  # pragma: no cover
    from tests.unitobj import unit_object  # type: ignore[no-redef]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf()")

REC = 64  # struct rec
FIT = 4096 // (REC + 8)  # records of 64 bytes (+ 8-byte header) in the 4 KiB ring


@pytest.fixture
def obj():
    o = pyebpf.load(unit_object("ringbuf_drops"))
    try:
        yield o
    finally:
        o.close()


def produce(o, n: int, which: int = 0) -> None:
    o.programs["produce"].test_run(ctx_in=struct.pack("<II", which, n))


def test_count_helper():
    assert _count(None) == 0
    assert _count(5) == 5
    assert _count([1, 2, 3]) == 6
    assert _count([(2).to_bytes(8, sys.byteorder)] * 3) == 6
    assert DropCounter(lambda: [1, 1]).read() == 2
    with pytest.raises(OptionError):
        DropCounter(42)
    with pytest.raises(OptionError):
        DropCounter((object(), "x"))


@needs_root
@pytest.mark.parametrize("source", ["percpu", "slot", "global", "callable"])
def test_dropped_exact(obj, source):
    drops = {
        "percpu": obj.maps["drop_cnt"],  # per-CPU: summed
        "slot": (obj.maps["drop_arr"], 2),
        "global": (obj, "drops"),
        "callable": lambda: obj.globals["drops"],
    }[source]
    seqs: list[int] = []
    with RingBuffer(obj.maps["small"], lambda r: seqs.append(struct.unpack_from("<Q", r)[0]),
                    drops=drops) as rb:
        assert rb.dropped == 0
        produce(obj, 128)
        assert rb.consume() == FIT
        assert rb.dropped == 128 - FIT
        produce(obj, 128)
        assert rb.consume() == FIT
        assert rb.dropped == 2 * (128 - FIT)
        produce(obj, 10)  # room for all: nothing more dropped
        assert rb.consume() == 10 and rb.dropped == 2 * (128 - FIT)
    # every sequence number was either delivered or counted
    assert len(seqs) == len(set(seqs)) == 2 * FIT + 10
    assert len(seqs) + 2 * (128 - FIT) == 266 == obj.globals["seq"]


@needs_root
def test_no_counter_means_none(obj):
    with RingBuffer(obj.maps["big"]) as rb:
        assert rb.dropped is None
        produce(obj, 100, which=1)
        assert rb.consume_batch().__len__() == 100
        assert rb.dropped is None
    with pytest.raises(OptionError, match="no global variable"):
        RingBuffer(obj.maps["small"], drops=(obj, "nope"))


@needs_root
def test_manager_dropped(obj):
    got = [0, 0]

    def cb(i):
        def f(_r):
            got[i] += 1
        return f

    with RingBufferManager() as mgr:
        mgr.add(obj.maps["small"], cb(0), drops=obj.maps["drop_cnt"])
        mgr.add(obj.maps["big"], cb(1))
        assert mgr.dropped() == 0 and mgr.dropped(1) is None
        produce(obj, 200)
        produce(obj, 300, which=1)
        assert mgr.consume() == FIT + 300
        assert got == [FIT, 300]
        assert mgr.dropped(0) == mgr.dropped() == 200 - FIT
