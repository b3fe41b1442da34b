"""Maps: :class:`Map` and its typed kinds, and the ring buffer consumer.

Names are imported on first use, so ``import pyebpf.maps`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arena import Arena
    from .fdmaps import ArrayOfMaps, HashOfMaps, ProgArray
    from .hash import LruHashMap, LruPerCpuHash
    from .lpm import LpmKey, LpmTrie
    from .map import (
        BPF_ANY,
        BPF_EXIST,
        BPF_NOEXIST,
        Array,
        BloomFilter,
        HashMap,
        IndexedMap,
        Map,
        NoLengthError,
        PerCpuArray,
        PerCpuHash,
        PerfEventArray,
        Queue,
        RingBuf,
        Stack,
        StructOpsMap,
        cstr,
        map_class,
        register_map_class,
    )
    from .netmaps import (
        CgroupArray,
        CpuMap,
        CpuMapValue,
        DevMap,
        DevMapHash,
        DevMapValue,
        ReuseportSockArray,
        SockHash,
        SockMap,
        XskMap,
        socket_cookie,
    )
    from .perfbuf import PerfBatch, PerfBuffer
    from .ringbuf import RingBuffer, RingBufferManager
    from .stacktrace import KernelSymbols, StackTrace, Symbol, UserSymbols, kernel_symbols
    from .storage import (
        CgroupStorage,
        CgroupStorageKey,
        CgrpStorage,
        InodeStorage,
        PerCpuCgroupStorage,
        SkStorage,
        TaskStorage,
        cgroup2_mount,
        cgroup_id,
        cgroup_storage_key,
    )
    from .user_ringbuf import UserRingBuffer

_LAZY = {
    "BPF_ANY": ".map",
    "BPF_EXIST": ".map",
    "BPF_NOEXIST": ".map",
    "Array": ".array",
    "ArrayOfMaps": ".fdmaps",
    "BloomFilter": ".queue",
    "HashMap": ".hash",
    "HashOfMaps": ".fdmaps",
    "Map": ".map",
    "PerCpuArray": ".array",
    "PerCpuHash": ".hash",
    "PerfEventArray": ".map",
    "ProgArray": ".fdmaps",
    "Queue": ".queue",
    "RingBuf": ".map",
    "Stack": ".queue",
    "StructOpsMap": ".map",
    "map_class": ".map",
    "register_map_class": ".map",
    "cstr": ".map",
    "IndexedMap": ".map",
    "NoLengthError": ".map",
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
    "SkStorage": ".storage",
    "TaskStorage": ".storage",
    "InodeStorage": ".storage",
    "CgrpStorage": ".storage",
    "cgroup2_mount": ".storage",
    "CgroupStorage": ".storage",
    "PerCpuCgroupStorage": ".storage",
    "CgroupStorageKey": ".storage",
    "cgroup_id": ".storage",
    "cgroup_storage_key": ".storage",
    "DevMap": ".netmaps",
    "DevMapHash": ".netmaps",
    "DevMapValue": ".netmaps",
    "CpuMap": ".netmaps",
    "CpuMapValue": ".netmaps",
    "XskMap": ".netmaps",
    "SockMap": ".netmaps",
    "SockHash": ".netmaps",
    "ReuseportSockArray": ".netmaps",
    "CgroupArray": ".netmaps",
    "socket_cookie": ".netmaps",
    "StackTrace": ".stacktrace",
    "Symbol": ".stacktrace",
    "KernelSymbols": ".stacktrace",
    "UserSymbols": ".stacktrace",
    "kernel_symbols": ".stacktrace",
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
    "cstr",
    "IndexedMap",
    "NoLengthError",
    "LruHashMap",
    "LruPerCpuHash",
    "LpmKey",
    "LpmTrie",
    "Arena",
    "SkStorage",
    "TaskStorage",
    "InodeStorage",
    "CgrpStorage",
    "cgroup2_mount",
    "CgroupStorage",
    "PerCpuCgroupStorage",
    "CgroupStorageKey",
    "cgroup_id",
    "cgroup_storage_key",
    "DevMap",
    "DevMapHash",
    "DevMapValue",
    "CpuMap",
    "CpuMapValue",
    "XskMap",
    "SockMap",
    "SockHash",
    "ReuseportSockArray",
    "CgroupArray",
    "socket_cookie",
    "StackTrace",
    "Symbol",
    "KernelSymbols",
    "UserSymbols",
    "kernel_symbols",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyebpf.maps' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
