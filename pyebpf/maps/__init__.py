"""Maps: :class:`Map` and its typed kinds, and the ring buffer consumer.

Names are imported on first use, so ``import pyebpf.maps`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .map import (
        BPF_ANY,
        BPF_EXIST,
        BPF_NOEXIST,
        Array,
        ArrayOfMaps,
        BloomFilter,
        HashMap,
        HashOfMaps,
        Map,
        PerCpuArray,
        PerCpuHash,
        PerfEventArray,
        ProgArray,
        Queue,
        RingBuf,
        Stack,
        StructOpsMap,
        map_class,
    )
    from .perfbuf import PerfBatch, PerfBuffer
    from .ringbuf import RingBuffer, RingBufferManager
    from .user_ringbuf import UserRingBuffer

_LAZY = {
    "BPF_ANY": ".map",
    "BPF_EXIST": ".map",
    "BPF_NOEXIST": ".map",
    "Array": ".map",
    "ArrayOfMaps": ".map",
    "BloomFilter": ".map",
    "HashMap": ".map",
    "HashOfMaps": ".map",
    "Map": ".map",
    "PerCpuArray": ".map",
    "PerCpuHash": ".map",
    "PerfEventArray": ".map",
    "ProgArray": ".map",
    "Queue": ".map",
    "RingBuf": ".map",
    "Stack": ".map",
    "StructOpsMap": ".map",
    "map_class": ".map",
    "PerfBatch": ".perfbuf",
    "PerfBuffer": ".perfbuf",
    "RingBuffer": ".ringbuf",
    "RingBufferManager": ".ringbuf",
    "UserRingBuffer": ".user_ringbuf",
}

__all__ = [
    "Array",
    "ArrayOfMaps",
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BloomFilter",
    "HashMap",
    "HashOfMaps",
    "Map",
    "PerCpuArray",
    "PerCpuHash",
    "PerfBatch",
    "PerfBuffer",
    "PerfEventArray",
    "ProgArray",
    "Queue",
    "RingBuf",
    "RingBuffer",
    "RingBufferManager",
    "Stack",
    "StructOpsMap",
    "UserRingBuffer",
    "map_class",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyebpf.maps' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
