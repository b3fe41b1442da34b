"""Maps: :class:`Map` and its typed kinds, and the ring buffer consumer.

Names are imported on first use, so ``import pyebpf.maps`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arena import Arena
    from .hash import LruHashMap, LruPerCpuHash
    from .lpm import LpmKey, LpmTrie
    from .map import (
        BPF_ANY,
        BPF_EXIST,
        BPF_NOEXIST,
        Array,
        ArrayOfMaps,
        BloomFilter,
        HashMap,
        HashOfMaps,
        IndexedMap,
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
        register_map_class,
    )
    from .perfbuf import PerfBatch, PerfBuffer
    from .ringbuf import RingBuffer, RingBufferManager
    from .user_ringbuf import UserRingBuffer

_LAZY = {
    "BPF_ANY": ".map",
    "BPF_EXIST": ".map",
    "BPF_NOEXIST": ".map",
    "Array": ".array",
    "ArrayOfMaps": ".map",
    "BloomFilter": ".queue",
    "HashMap": ".hash",
    "HashOfMaps": ".map",
    "Map": ".map",
    "PerCpuArray": ".array",
    "PerCpuHash": ".hash",
    "PerfEventArray": ".map",
    "ProgArray": ".map",
    "Queue": ".queue",
    "RingBuf": ".map",
    "Stack": ".queue",
    "StructOpsMap": ".map",
    "map_class": ".map",
    "register_map_class": ".map",
    "IndexedMap": ".map",
    "LruHashMap": ".hash",
    "LruPerCpuHash": ".hash",
    "LpmKey": ".lpm",
    "LpmTrie": ".lpm",
    "Arena": ".arena",
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
    "register_map_class",
    "IndexedMap",
    "LruHashMap",
    "LruPerCpuHash",
    "LpmKey",
    "LpmTrie",
    "Arena",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyebpf.maps' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
