"""Hash maps: plain, LRU and their per-CPU versions."""

from __future__ import annotations

from ..uapi import MapType
from .map import Map, register_map_class
from .percpu import PerCpuMixin

__all__ = ["HashMap", "LruHashMap", "LruPerCpuHash", "PerCpuHash"]


@register_map_class(MapType.HASH)
class HashMap(Map):
    """A hash map: ``m[k] = v``, ``m[k]``, ``del m[k]``, ``k in m``; ``items()`` and
    ``lookup_batch()`` read the whole map with batch syscalls."""


@register_map_class(MapType.LRU_HASH)
class LruHashMap(HashMap):
    """An LRU hash map: when full, an update evicts the least recently used entry."""


@register_map_class(MapType.PERCPU_HASH)
class PerCpuHash(PerCpuMixin, HashMap):
    """A per-CPU hash map: values are lists with one entry per possible CPU; writing a
    single value sets it on every CPU. ``sum(k)``, ``max(k)``, ``min(k)``, ``total()``."""


@register_map_class(MapType.LRU_PERCPU_HASH)
class LruPerCpuHash(PerCpuHash):
    """An LRU per-CPU hash map."""
