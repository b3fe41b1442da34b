"""The pyebpf.sys DEBUG trace covers the fast map paths too (typed item access, pushes)."""

from __future__ import annotations

import logging
import os

import pytest

from pyebpf.maps.map import Map
from pyebpf.sys import bpf as B
from pyebpf.uapi import MapType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyebpf.sys"]


def test_typed_item_access_is_traced(caplog) -> None:
    with Map.from_fd(B.map_create(MapType.HASH, 4, 8, 8, 0, "pyebpf_trace")) as h:
        h.with_types(key="=I", value="=Q")
        h[7] = 70
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            assert h[7] == 70
            assert h.lookup(8) is None and h.get(8, -1) == -1 and h.get(7) == 70
        lines = _lines(caplog)
    assert any("BPF_MAP_LOOKUP_ELEM" in x and "07000000" in x and x.endswith("= 0")
               for x in lines), lines
    assert any("BPF_MAP_LOOKUP_ELEM" in x and "08000000" in x and x.endswith("= -1")
               for x in lines), lines


def test_queue_push_is_traced(caplog) -> None:
    with Map.from_fd(B.map_create(MapType.QUEUE, 0, 8, 4, 0, "pyebpf_traceq")) as q:
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            q.push((5).to_bytes(8, "little"))
        assert any("BPF_MAP_UPDATE_ELEM" in x for x in _lines(caplog))


def test_batch_walk_is_traced(caplog) -> None:
    with Map.from_fd(B.map_create(MapType.HASH, 4, 8, 64, 0, "pyebpf_traceb")) as h:
        h.with_types(key="=I", value="=Q")
        h.update_batch({i: i for i in range(10)})
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            assert h.lookup_batch() == {i: i for i in range(10)}
        assert any("BPF_MAP_LOOKUP_BATCH" in x and "count=10" in x for x in _lines(caplog))
