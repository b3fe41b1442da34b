"""Map: a loaded BPF map, with keys and values as bytes or as Python values through BTF.

Every operation is one bpf() syscall through :class:`pyebpf.sys.MapOps` (preallocated
attr and buffers). Keys and values given as ``bytes``/``bytearray``/``memoryview`` go
to the kernel unchanged; anything else is encoded through the map's BTF
(:func:`pyebpf.btf.codec.codec_for`), or, for maps without BTF, ints are taken as
host-endian integers of the key/value size. Lookups decode through BTF when the map
has it; ``raw=True`` (or the ``*_bytes`` methods) always gives bytes.

This module holds the base class and the registry; the kinds live in hash.py,
array.py, lpm.py, queue.py, arena.py (and fdmaps.py, storage.py, netmaps.py,
stacktrace.py), each registering its classes with :func:`register_map_class`.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .._log import DEBUG
from ..errors import OptionError, PyebpfError, SyscallError
from ..sys import bpf as _bpf
from ..sys.fd import FD
from ..uapi import MapType

_SE = struct.error

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_LOCK",
    "BPF_NOEXIST",
    "IndexedMap",
    "Map",
    "NoKeysMap",
    "PerfEventArray",
    "RingBuf",
    "StructOpsMap",
    "cstr",
    "map_class",
    "register_map_class",
]

# Kinds that moved to their own modules; `from pyebpf.maps.map import HashMap` still works.
_MOVED = {
    "HashMap": "hash", "LruHashMap": "hash", "PerCpuHash": "hash", "LruPerCpuHash": "hash",
    "Array": "array", "PerCpuArray": "array", "LpmTrie": "lpm", "Queue": "queue",
    "Stack": "queue", "BloomFilter": "queue", "Arena": "arena",
    # fd-valued kinds: fdmaps.py (helper maps-prog) when present, else the basic ones below
    "ProgArray": "fdmaps", "ArrayOfMaps": "fdmaps", "HashOfMaps": "fdmaps",
}


def __getattr__(name: str) -> Any:
    mod = _MOVED.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    full = f"{__name__.rpartition('.')[0]}.{mod}"
    try:
        return getattr(importlib.import_module(full), name)
    except ModuleNotFoundError as e:
        if e.name != full or f"_{name}" not in globals():
            raise
        return globals()[f"_{name}"]

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# errnos meaning "this map kind has no batch ops" (524 is the kernel-internal ENOTSUPP)
_NO_BATCH = frozenset({_errno.EINVAL, 524, _errno.EOPNOTSUPP})

_RAW = (bytes, bytearray, memoryview)
_BO = sys.byteorder
_MISSING: Any = object()

_PERCPU = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                     MapType.PERCPU_CGROUP_STORAGE})
_ARRAYS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY,
                     MapType.PERF_EVENT_ARRAY, MapType.CGROUP_ARRAY, MapType.ARRAY_OF_MAPS})


def cstr(value: bytes | bytearray | memoryview, encoding: str = "utf-8",
         errors: str = "replace") -> str:
    """A ``char[N]`` value (bytes) as text: cut at the first NUL, decoded."""
    raw = bytes(value)
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(encoding, errors)


def _type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


class Map:
    """A BPF map that owns its fd (``close()``, ``with``, or garbage collection closes it).

    ``obj.maps["counts"][key]`` looks up (KeyError if absent), ``m[key] = value``
    updates, ``del m[key]`` deletes; ``lookup``/``update``/``delete`` take flags and
    defaults. Iteration yields keys (GET_NEXT_KEY walk).
    """

    def __init__(self, fd: FD, *, name: str, type: int, key_size: int, value_size: int,
                 max_entries: int, flags: int = 0, map_extra: int = 0, btf: Any = None,
                 btf_key_type_id: int = 0, btf_value_type_id: int = 0, spec: Any = None,
                 pin_path: str | None = None) -> None:
        self.fd = fd
        self.name = name
        try:
            self.type: MapType | int = MapType(type)
        except ValueError:
            self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.map_extra = map_extra
        self.btf = btf  # a BTFView holding the key/value types (the object's BTF)
        self.btf_key_type_id = btf_key_type_id
        self.btf_value_type_id = btf_value_type_id
        self.spec = spec
        self.pin_path = pin_path
        self.percpu = self.type in _PERCPU
        self._ncpus = _bpf.possible_cpus() if self.percpu else 1
        self._stride = (value_size + 7) & ~7 if self.percpu else value_size
        self._tl = threading.local()  # per-thread MapOps: its buffers are not shareable
        self._kc: Any = _MISSING
        self._vc: Any = _MISSING
        self._id: int | None = None

    # -- construction from existing kernel maps ------------------------------------------

    @classmethod
    def from_fd(cls, fd: FD | int, *, name: str | None = None) -> Map:
        """Wrap an open map fd (an int is duplicated, an FD is taken over)."""
        owned = fd if isinstance(fd, FD) else FD(os.dup(int(fd)), "map")
        try:
            info = _bpf.map_info(owned)
        except BaseException:
            owned.close()
            raise
        klass = map_class(info.type)
        m = klass(owned, name=name or info.name.decode("latin-1"), type=info.type,
                  key_size=info.key_size, value_size=info.value_size,
                  max_entries=info.max_entries, flags=info.map_flags, map_extra=info.map_extra,
                  btf_key_type_id=info.btf_key_type_id, btf_value_type_id=info.btf_value_type_id)
        m._id = info.id
        if info.btf_id and (info.btf_key_type_id or info.btf_value_type_id):
            m.btf = _LazyKernelBTF(info.btf_id)
        return m

    @classmethod
    def from_pin(cls, path: str) -> Map:
        """Open the map pinned at ``path`` on a bpffs."""
        m = cls.from_fd(_bpf.obj_get(path, kind="map"))
        m.pin_path = path
        return m

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open the map with kernel id ``map_id``."""
        return cls.from_fd(_bpf.map_get_fd_by_id(map_id))

    # -- properties ------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The kernel's map id."""
        if self._id is None:
            self._id = _bpf.map_info(self.fd).id
        return self._id

    def info(self) -> Any:
        """BPF_OBJ_GET_INFO_BY_FD (a :class:`pyebpf.sys.attrs.MapInfo`)."""
        return _bpf.map_info(self.fd)

    @property
    def ops(self) -> _bpf.MapOps:
        """The preallocated syscall helper for this map and the calling thread (bytes in,
        bytes out): each thread gets its own, so one Map may be shared by threads."""
        try:
            return self._tl.ops
        except AttributeError:
            ops = self._tl.ops = _bpf.MapOps(self.fd, self.key_size, self._stride * self._ncpus)
            return ops

    @property
    def key_codec(self) -> Any:
        """The BTF codec of keys (None without BTF)."""
        if self._kc is _MISSING:
            self._kc = self._codec(self.btf_key_type_id, self.key_size)
        return self._kc

    @property
    def value_codec(self) -> Any:
        """The BTF codec of values (None without BTF)."""
        if self._vc is _MISSING:
            self._vc = self._codec(self.btf_value_type_id, self.value_size)
        return self._vc

    def _codec(self, type_id: int, size: int) -> Any:
        if not type_id or self.btf is None:
            return None
        btf = self.btf.get() if isinstance(self.btf, _LazyKernelBTF) else self.btf
        try:
            from ..btf.codec import codec_for
        except ImportError:  # codec not available: bytes only
            return None
        try:
            c = codec_for(btf, type_id)
        except PyebpfError:
            return None
        return c if c.size == size else None

    # -- encoding ----------------------------------------------------------------------------

    def _int_or_fail(self, v: Any, size: int, what: str) -> bytes:
        if isinstance(v, int) and size in (1, 2, 4, 8):
            try:
                return v.to_bytes(size, _BO, signed=v < 0)
            except OverflowError:
                raise OptionError(f"map {self.name!r}: {what} {v} does not fit {size} bytes") from None
        if isinstance(v, str) and size:
            raw = v.encode()
            if len(raw) <= size:
                return raw.ljust(size, b"\0")
        raise OptionError(f"map {self.name!r}: cannot encode {what} {v!r} without BTF; "
                          f"pass {size} bytes")

    def encode_key(self, key: Any) -> bytes:
        """The key as the kernel's bytes."""
        if isinstance(key, _RAW):
            if len(key) != self.key_size:
                raise OptionError(f"map {self.name!r}: key must be {self.key_size} bytes, "
                                  f"got {len(key)}")
            return bytes(key)
        c = self.key_codec
        if c is not None:
            return c.encode(c.coerce(key, "key"))
        return self._int_or_fail(key, self.key_size, "key")

    def _encode_one(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            if len(value) != self.value_size:
                raise OptionError(f"map {self.name!r}: value must be {self.value_size} bytes, "
                                  f"got {len(value)}")
            return bytes(value)
        c = self.value_codec
        if c is not None:
            return c.encode(c.coerce(value, "value"))
        return self._int_or_fail(value, self.value_size, "value")

    def encode_value(self, value: Any) -> bytes:
        """The value as the kernel's bytes (per-CPU maps: one slot per possible CPU;
        a single value is copied to every CPU)."""
        if not self.percpu:
            return self._encode_one(value)
        stride, n = self._stride, self._ncpus
        if isinstance(value, (list, tuple)) and not (self.value_codec is not None
                                                     and len(value) != n):
            if len(value) != n:
                raise OptionError(f"map {self.name!r}: per-CPU value needs {n} entries, "
                                  f"got {len(value)}")
            parts = [self._encode_one(v) for v in value]
        elif isinstance(value, _RAW) and len(value) == stride * n and len(value) != self.value_size:
            return bytes(value)
        else:
            parts = [self._encode_one(value)] * n
        pad = b"\0" * (stride - self.value_size)
        return b"".join(p + pad for p in parts)

    def decode_key(self, raw: bytes) -> Any:
        c = self.key_codec
        return c.decode(raw) if c is not None else raw

    def decode_value(self, raw: bytes | memoryview) -> Any:
        """Bytes from the kernel -> a Python value (per-CPU maps: a list per CPU)."""
        c = self.value_codec
        if self.percpu:
            s, vs = self._stride, self.value_size
            if c is not None:
                return [c.decode(raw, i * s) for i in range(self._ncpus)]
            return [bytes(raw[i * s:i * s + vs]) for i in range(self._ncpus)]
        if c is not None:
            return c.decode(raw)
        return bytes(raw)

    # -- operations ----------------------------------------------------------------------------

    def lookup_bytes(self, key: bytes) -> bytes | None:
        """The raw value for raw ``key`` (per-CPU maps: every CPU's slot), or None."""
        try:
            return self._tl.ops.lookup(key)
        except AttributeError:  # this thread's first operation
            return self.ops.lookup(key)

    def update_bytes(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Store raw ``value`` at raw ``key``."""
        try:
            ops = self._tl.ops
        except AttributeError:
            ops = self.ops
        ops.update(key, value, flags)

    def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any:
        """The value at ``key`` (decoded unless ``raw``), or ``default`` if absent."""
        if not raw:
            return (self._fget or self._fast()[0])(key, default)
        v = self.ops.lookup(self.encode_key(key))
        return default if v is None else v

    def get(self, key: Any, default: Any = None) -> Any:
        """``dict.get``: the decoded value at ``key``, or ``default`` if absent."""
        return (self._fget or self._fast()[0])(key, default)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value``; flags BPF_ANY (0), BPF_NOEXIST (1), BPF_EXIST (2), BPF_F_LOCK (4)."""
        (self._fset or self._fast()[1])(key, value, flags)

    # -- hot path: lookups and updates specialised once per map (codecs, per-thread ops) ---

    _fget: Any = None
    _fset: Any = None

    def _fast(self) -> tuple[Any, Any]:
        """Build the get/set functions: one call each for the key and value codecs, the
        value decoded straight from the syscall buffer."""
        tl, cls = self._tl, type(self)
        ek = self.encode_key
        kc = self.key_codec
        if cls.encode_key is Map.encode_key and _plain_int(kc) and kc.size == self.key_size:
            kenc = kc.encode

            def ek(key: Any) -> bytes:
                return kenc(key) if type(key) is int else self.encode_key(key)

            # the hot paths below pack an in-range int key inline (no call frames); anything
            # else, errors included, goes through ek and the codec's checks and messages
            kpack = struct.Struct("=" + kc._fmt).pack_into  # into the MapOps key buffer
        else:
            kpack = None
        ev = self.encode_value
        staged: Any = None
        dv: Any = self.decode_value
        vc = self.value_codec
        plain_v = not self.percpu and vc is not None
        if plain_v and cls.encode_value is Map.encode_value:
            venc, vco = vc.encode, vc.coerce
            if _plain_int(vc):
                def ev(value: Any) -> bytes:
                    return venc(value) if type(value) is int else self._encode_one(value)
            else:
                own = getattr(vc, "cls", None)  # values decoded from this map encode as is

                def ev(value: Any) -> bytes:
                    if type(value) is own:
                        return venc(value)
                    if isinstance(value, _RAW):
                        return self._encode_one(value)
                    return venc(vco(value, "value"))

                if getattr(vc, "packs_whole", False) and vc.size == self.value_size:
                    vinto = vc.encode_into_own  # type(value) is own: no second class check

                    def staged(key: Any, value: Any, flags: int = 0) -> None:
                        try:
                            ops = tl.ops
                        except AttributeError:
                            ops = self.ops
                        if type(value) is own:  # packed straight into the syscall buffer
                            # the key first: its errors win, as below
                            k = None
                            if kpack is not None and type(key) is int:
                                try:
                                    kpack(ops.key_buffer, 0, key)
                                except _SE:
                                    k = ek(key)
                            else:
                                k = ek(key)
                            vinto(ops.value_buffer, 0, value)
                            ops.update_staged(k, flags)
                        else:
                            ops.update(ek(key), ev(value), flags)
        view = False
        if plain_v and cls.decode_value is Map.decode_value:
            dv, view = vc.decode, True  # codecs decode from the MapOps buffer in place

        def fget(key: Any, default: Any = _MISSING) -> Any:
            try:
                ops = tl.ops
            except AttributeError:
                ops = self.ops
            if view:
                k = None
                if kpack is not None and type(key) is int:
                    try:
                        kpack(ops.key_buffer, 0, key)
                    except _SE:
                        k = ek(key)
                else:
                    k = ek(key)
                v = ops.lookup_into(k)
            else:
                v = ops.lookup(ek(key))
            if v is None:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            return dv(v)

        def fset(key: Any, value: Any, flags: int = 0) -> None:
            try:
                ops = tl.ops
            except AttributeError:
                ops = self.ops
            ops.update(ek(key), ev(value), flags)

        fset = staged or fset
        self._fget, self._fset = fget, fset
        return fget, fset

    def delete(self, key: Any) -> bool:
        """Delete ``key``; False if it was absent."""
        return self.ops.delete(self.encode_key(key))

    def keys_bytes(self) -> Iterator[bytes]:
        return self.ops.keys()

    def keys(self) -> Iterator[Any]:
        """Every key (decoded), by a GET_NEXT_KEY walk."""
        dec = self.decode_key
        for k in self.ops.keys():
            yield dec(k)

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs. Kinds with batch ops read the whole map in a few
        BPF_MAP_LOOKUP_BATCH calls; the others walk keys (entries deleted during the
        walk are skipped)."""
        if self._batchable:
            got = self._dump(False, raw)
            if got is not None:
                return iter(got.items())
        return self._walk(raw)

    def _walk(self, raw: bool) -> Iterator[tuple[Any, Any]]:
        ops = self.ops
        for k in ops.keys():
            v = ops.lookup(k)
            if v is None:
                continue
            yield (k, v) if raw else (self.decode_key(k), self.decode_value(v))

    # -- batch operations --------------------------------------------------------------------

    # False for kinds the kernel has no batch ops for (saves a failing syscall)
    _batchable = True
    # cap on entries per batch syscall (buffers are (key_size + value_size) * this)
    batch_size = 1 << 17

    def _dump(self, delete: bool, raw: bool) -> dict[Any, Any] | None:
        """Every entry by batch syscalls as a dict; None if the kernel has no batch ops
        for this map (remembered)."""
        tl = self._tl
        bufs = getattr(tl, "batch", None)
        if bufs is None:
            count = max(1, min(self.max_entries, self.batch_size))
            bufs = tl.batch = _BatchBuffers(int(self.fd), self.key_size,
                                            self._stride * self._ncpus, count,
                                            whole=count == self.max_entries)
        out: dict[Any, Any] = {}
        try:
            for kb, vb, n in bufs.walk(delete):
                if raw:
                    k, v = self.key_size, bufs.value_size
                    kr, vr = kb.tobytes(), vb.tobytes()
                    out.update(zip([kr[i * k:(i + 1) * k] for i in range(n)],
                                   [vr[i * v:(i + 1) * v] for i in range(n)], strict=True))
                else:
                    # the views die with this batch: the dict takes what it needs now
                    out.update(zip(self._decode_keys(kb, n), self._decode_values(vb, n),
                                   strict=True))
        except SyscallError as e:
            if e.errno in _NO_BATCH and not out:
                self._batchable = False
                return None
            raise
        return out

    def _decode_keys(self, buf: memoryview, n: int) -> Any:
        """The keys of a batch: a sequence, possibly a view of ``buf`` (iterate it now)."""
        size = self.key_size
        fmt = _bulk_format(self.key_codec, size)
        if fmt is None and self.key_codec is None and isinstance(self, IndexedMap) and size == 4:
            fmt = "I"
        if fmt:
            return buf.cast(fmt)  # iterating a cast view beats tolist() for dict building
        dec = self.decode_key
        return [dec(buf[i * size:(i + 1) * size].tobytes()) for i in range(n)]

    def _decode_values(self, buf: memoryview, n: int) -> Any:
        c, size = self.value_codec, self.value_size
        if not self.percpu:
            fmt = _bulk_format(c, size)
            if fmt:
                return buf.cast(fmt)
            if c is None:
                raw = buf.tobytes()
                return [raw[i * size:(i + 1) * size] for i in range(n)]
            dec = c.decode
            return [dec(buf, i * size) for i in range(n)]
        ncpu, rec = self._ncpus, self._stride * self._ncpus
        fmt = _bulk_format(c, size) if self._stride == size else None
        if fmt:
            flat = buf.cast(fmt).tolist()
            return [flat[i:i + ncpu] for i in range(0, n * ncpu, ncpu)]
        dv = self.decode_value
        return [dv(buf[i * rec:(i + 1) * rec]) for i in range(n)]

    def lookup_batch(self, *, raw: bool = False) -> dict[Any, Any]:
        """The whole map as a dict, by BPF_MAP_LOOKUP_BATCH (a key walk where the kernel
        has no batch ops for this kind)."""
        got = self._dump(False, raw) if self._batchable else None
        return dict(self._walk(raw)) if got is None else got

    def lookup_and_delete_batch(self, *, raw: bool = False) -> dict[Any, Any]:
        """Read and remove every entry (BPF_MAP_LOOKUP_AND_DELETE_BATCH, or a key walk of
        lookups and deletes where the kernel has none for this kind)."""
        got = self._dump(True, raw) if self._batchable else None
        if got is not None:
            return got
        ops, out = self.ops, {}
        for k in list(ops.keys()):
            v = ops.lookup(k)
            if v is not None and ops.delete(k):
                out[k if raw else self.decode_key(k)] = v if raw else self.decode_value(v)
        return out

    def _pack(self, items: Any, what: str) -> tuple[bytes, int]:
        parts = [self.encode_key(k) for k in items] if what == "keys" else \
            [self.encode_value(v) for v in items]
        return b"".join(parts), len(parts)

    def update_batch(self, items: Any, flags: int = BPF_ANY) -> int:
        """Write many entries (a mapping or (key, value) pairs) with BPF_MAP_UPDATE_BATCH
        (one update each where the kernel has no batch ops); returns how many."""
        pairs = list(items.items() if hasattr(items, "items") else items)
        if not pairs:
            return 0
        if self._batchable:
            kb, n = self._pack([k for k, _ in pairs], "keys")
            vb, _ = self._pack([v for _, v in pairs], "values")
            try:
                return self.ops.update_batch(kb, vb, n, elem_flags=flags)
            except SyscallError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batchable = False
        for k, v in pairs:
            self.update(k, v, flags)
        return len(pairs)

    def delete_batch(self, keys: Any) -> int:
        """Delete many keys with BPF_MAP_DELETE_BATCH (one delete each where the kernel has
        no batch ops); returns how many were deleted (the kernel stops at an absent key)."""
        keys = list(keys)
        if not keys:
            return 0
        if self._batchable:
            kb, n = self._pack(keys, "keys")
            try:
                return self.ops.delete_batch(kb, n)
            except SyscallError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batchable = False
        return sum(1 for k in keys if self.delete(k))

    # -- user-supplied types -----------------------------------------------------------------

    def with_types(self, key: Any = None, value: Any = None) -> Map:
        """Use these types for keys/values instead of BTF: a ctypes type, a ``struct``
        format string (``"<IQ"``) or a :class:`pyebpf.btf.codec.Codec`. Returns self."""
        if key is not None:
            self._kc = _as_codec(key, self.key_size, f"map {self.name!r} key")
            self._fget = self._fset = None
        if value is not None:
            self._vc = _as_codec(value, self.value_size, f"map {self.name!r} value")
            self._fget = self._fset = None
        return self

    def values(self, *, raw: bool = False) -> Iterator[Any]:
        for _k, v in self.items(raw=raw):
            yield v

    def count(self) -> int:
        """Number of keys (walks the map)."""
        return sum(1 for _ in self.ops.keys())

    def clear(self) -> None:
        """Remove every entry (arrays: zero every slot)."""
        ops = self.ops
        keys = list(ops.keys())
        for k in keys:
            ops.delete(k)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __contains__(self, key: Any) -> bool:
        return self.ops.lookup(self.encode_key(key)) is not None

    def __getitem__(self, key: Any) -> Any:
        return (self._fget or self._fast()[0])(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        (self._fset or self._fast()[1])(key, value, 0)

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def freeze(self) -> None:
        """BPF_MAP_FREEZE: user space can no longer write the map."""
        _bpf.map_freeze(self.fd)

    # -- lifetime ---------------------------------------------------------------------------------

    def pin(self, path: str) -> None:
        """Pin the map at ``path``, which must be inside a bpffs (:mod:`pyebpf.pin`)."""
        from ..pin import pin_fd

        pin_fd(self.fd, path)
        self.pin_path = path

    def unpin(self) -> None:
        """Remove the pin made by :meth:`pin` (or found at load)."""
        if self.pin_path:
            from ..pin import unpin

            unpin(self.pin_path)
            self.pin_path = None

    @property
    def closed(self) -> bool:
        return self.fd.closed

    def close(self) -> None:
        """Close the fd (the kernel frees the map once nothing else holds it)."""
        self._tl = threading.local()
        self._fget = self._fset = None
        self.fd.close()

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.fd.closed else f"fd={self.fd.fileno()}"
        return (f"{type(self).__name__}({self.name!r}, type={_type_name(self.type)}, "
                f"key_size={self.key_size}, value_size={self.value_size}, "
                f"max_entries={self.max_entries}, {state})")


class NoDelete:
    """For kinds whose elements the kernel refuses to delete (EINVAL): a clear error, and
    no per-key fallback walk that would fail the same way (batch reads stay on)."""

    name: str
    _no_delete_why = "the kernel cannot delete its elements"

    def _no_delete(self, what: str) -> OptionError:
        return OptionError(f"map {self.name!r}: {what}: {self._no_delete_why}")

    def delete(self, key: Any) -> bool:
        raise self._no_delete("delete")

    def delete_batch(self, keys: Any) -> int:
        raise self._no_delete("delete_batch")

    def lookup_and_delete_batch(self, *, raw: bool = False) -> dict[Any, Any]:
        raise self._no_delete("lookup_and_delete_batch")


class IndexedMap(Map):
    """Maps indexed 0..max_entries-1 (arrays and fd arrays): ``len()`` is max_entries."""

    def __len__(self) -> int:
        return self.max_entries

    def keys(self) -> Iterator[Any]:
        dec = self.decode_key
        for i in range(self.max_entries):
            yield dec(i.to_bytes(4, _BO))

    def keys_bytes(self) -> Iterator[bytes]:
        for i in range(self.max_entries):
            yield i.to_bytes(4, _BO)

    def _walk(self, raw: bool) -> Iterator[tuple[Any, Any]]:
        ops = self.ops
        for kb in self.keys_bytes():
            v = ops.lookup(kb)
            if v is None:
                continue
            yield (kb, v) if raw else (self.decode_key(kb), self.decode_value(v))

    def count(self) -> int:
        return self.max_entries

    def clear(self) -> None:
        zero = bytes(self._stride * self._ncpus)
        ops = self.ops
        for kb in self.keys_bytes():
            ops.update(kb, zero, BPF_ANY)

    def encode_key(self, key: Any) -> bytes:
        if type(key) is int and self.key_size == 4:
            if not 0 <= key < 1 << 32:
                raise OptionError(f"map {self.name!r}: index {key} out of range")
            return key.to_bytes(4, _BO)
        return super().encode_key(key)

    def decode_key(self, raw: bytes) -> Any:
        if self.key_codec is None and len(raw) == 4:
            return int.from_bytes(raw, _BO)
        return super().decode_key(raw)


class _FdArray(IndexedMap):
    """Arrays whose values are fds on update and ids on lookup (no BTF value types)."""

    _batchable = False

    def encode_value(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            return super().encode_value(value)
        fd = getattr(value, "fd", value)
        return int(fd).to_bytes(4, _BO)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return int.from_bytes(bytes(raw[:4]), _BO)

    def clear(self) -> None:
        for kb in self.keys_bytes():
            self.ops.delete(kb)


class _ProgArray(_FdArray):
    """Tail-call table: ``m[i] = program`` (a Program or fd); lookups give program ids."""


class _ArrayOfMaps(_FdArray):
    """Array of maps: ``m[i] = inner_map`` (a Map or fd); lookups give map ids."""


class _HashOfMaps(Map):
    """Hash of maps: values are map fds on update and map ids on lookup."""

    _batchable = False

    def encode_value(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            return super().encode_value(value)
        return int(getattr(value, "fd", value)).to_bytes(4, _BO)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return int.from_bytes(bytes(raw[:4]), _BO)


class PerfEventArray(_FdArray):
    """perf_event_array: one perf event fd per CPU (consumed by a perf buffer)."""


class NoKeysMap(Map):
    """Maps without keys to iterate (queues, stacks, bloom filters, ring buffers)."""

    _batchable = False

    def keys(self) -> Iterator[Any]:
        raise OptionError(f"map {self.name!r} ({_type_name(self.type)}) has no keys to iterate")

    keys_bytes = keys  # type: ignore[assignment]

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        raise OptionError(f"map {self.name!r} ({_type_name(self.type)}) has no keys to iterate")


_NoKeys = NoKeysMap  # old private name


class RingBuf(NoKeysMap):
    """A ring buffer map: read it with :class:`pyebpf.maps.ringbuf.RingBuffer`."""


class StructOpsMap(Map):
    """A struct_ops map. ``value_bytes`` is the value the loader registers (kernel layout,
    program fds filled in). Lookups (key 0) decode the kernel's ``struct
    bpf_struct_ops_<name>`` (``common``: refcnt and state; ``data``: the ops struct, e.g.
    ``data.name``) through the kernel BTF named by the map's btf_vmlinux_value_type_id."""

    value_bytes: bytes = b""

    @property
    def value_codec(self) -> Any:
        """The codec of the kernel's value type (None when the kernel BTF lacks it)."""
        if self._vc is _MISSING:
            self._vc = self._kernel_value_codec()
        return self._vc

    def _kernel_value_codec(self) -> Any:
        # the object's BTF describes the user-facing ops struct, not the kernel's wrapper
        # the map holds, so the value type must come from the kernel's own BTF
        try:
            info = _bpf.map_info(self.fd)
            if not info.btf_vmlinux_value_type_id:
                return None
            from ..btf.codec import codec_for

            btf = _struct_ops_btf(info.btf_vmlinux_id)
            c = codec_for(btf, info.btf_vmlinux_value_type_id)
        except (ImportError, OSError, PyebpfError):
            return None
        return c if c.size == self.value_size else None

    def value(self, *, raw: bool = False) -> Any:
        """The map's one value (key 0) as the kernel reports it."""
        return self.lookup(0, raw=raw)


# Built-in defaults; kind modules (hash.py, array.py, fdmaps.py, ...) override them by
# registering their own classes with @register_map_class.
_CLASSES: dict[int, type[Map]] = {
    MapType.PROG_ARRAY: _ProgArray,
    MapType.ARRAY_OF_MAPS: _ArrayOfMaps,
    MapType.HASH_OF_MAPS: _HashOfMaps,
    MapType.PERF_EVENT_ARRAY: PerfEventArray,
    MapType.RINGBUF: RingBuf,
    MapType.USER_RINGBUF: RingBuf,
    MapType.STRUCT_OPS: StructOpsMap,
}

# The module of pyebpf.maps that defines each map type's class, imported on the first
# map_class() call for that type: a load pays only for the kinds its object has
# (netmaps.py alone pulls in socket and selectors, lpm.py ipaddress: ~7 ms of start-up).
_KIND_MODULE: dict[int, str] = {
    MapType.HASH: "hash", MapType.LRU_HASH: "hash", MapType.PERCPU_HASH: "hash",
    MapType.LRU_PERCPU_HASH: "hash",
    MapType.ARRAY: "array", MapType.PERCPU_ARRAY: "array",
    MapType.LPM_TRIE: "lpm",
    MapType.QUEUE: "queue", MapType.STACK: "queue", MapType.BLOOM_FILTER: "queue",
    MapType.ARENA: "arena",
    MapType.PROG_ARRAY: "fdmaps", MapType.ARRAY_OF_MAPS: "fdmaps", MapType.HASH_OF_MAPS: "fdmaps",
    MapType.SK_STORAGE: "storage", MapType.TASK_STORAGE: "storage",
    MapType.INODE_STORAGE: "storage", MapType.CGRP_STORAGE: "storage",
    MapType.CGROUP_STORAGE: "storage", MapType.PERCPU_CGROUP_STORAGE: "storage",
    MapType.DEVMAP: "netmaps", MapType.DEVMAP_HASH: "netmaps", MapType.CPUMAP: "netmaps",
    MapType.XSKMAP: "netmaps", MapType.CGROUP_ARRAY: "netmaps", MapType.SOCKMAP: "netmaps",
    MapType.SOCKHASH: "netmaps", MapType.REUSEPORT_SOCKARRAY: "netmaps",
    MapType.STACK_TRACE: "stacktrace",
}
_loaded_kinds: set[str] = set()

_M = TypeVar("_M", bound=type[Map])


def register_map_class(*map_types: int) -> Callable[[_M], _M]:
    """Class decorator: make the class the one :func:`map_class` returns for ``map_types``."""
    def deco(cls: _M) -> _M:
        for t in map_types:
            kind = _KIND_MODULE.get(int(t))
            if kind is not None and kind not in _loaded_kinds:
                _load_kind_module(kind)  # so its built-in class cannot override this one later
            _CLASSES[int(t)] = cls
        return cls
    return deco


def _load_kind_module(name: str) -> None:
    # marked first: a kind module that imports map.py and calls map_class must not recurse
    _loaded_kinds.add(name)
    import importlib

    importlib.import_module(f"{__name__.rpartition('.')[0]}.{name}")


def map_class(map_type: int) -> type[Map]:
    """The Map subclass for a BPF_MAP_TYPE_* (plain :class:`Map` for the others)."""
    kind = _KIND_MODULE.get(map_type)
    if kind is not None and kind not in _loaded_kinds:
        _load_kind_module(kind)
    return _CLASSES.get(map_type, Map)


# Maps of at least this many entries are dumped in chunks by a helper thread while this
# thread decodes the chunks already read (the bpf() call releases the GIL, so the
# kernel's copying and Python's decoding overlap on two CPUs).
_PIPELINE_MIN = 32768
_PIPELINE_CHUNKS = 8


def _trace_batch(cmd: int, fd: int, n: int, err: int) -> None:
    """The pyebpf.sys DEBUG line of one batch walk syscall (made outside sys.bpf for speed)."""
    from ..sys.syscall import cmd_name, log

    if log.isEnabledFor(DEBUG):
        res = f"-1 {_errno.errorcode.get(err, err)}" if err else "0"
        log.debug("bpf(%s, map_fd=%d) = %s, count=%d", cmd_name(cmd), fd, res, n)


class _BatchBuffers:
    """Preallocated key/value/cursor buffers and attr for BPF_MAP_LOOKUP(_AND_DELETE)_BATCH
    walks of one map (one per thread): each batch is one syscall and no copies."""

    def __init__(self, fd: int, key_size: int, value_size: int, count: int,
                 whole: bool = False) -> None:
        """``whole``: ``count`` is the map's max_entries (a pipelined walk may be used)."""
        import ctypes

        from ..sys import attrs as A

        self.fd, self.key_size, self.value_size = fd, key_size, value_size
        self.count = count
        self._A, self._ct = A, ctypes
        tok = max(key_size, 8)  # hash maps use a 4-byte bucket cursor, arrays a key
        # pipelined walks fill the buffers chunk after chunk and need room for the call
        # that finds the end: one chunk more than the map can hold
        self.chunk = max(4096, count // _PIPELINE_CHUNKS)
        self.capacity = count + self.chunk if whole and count >= _PIPELINE_MIN else count
        self.kbuf = bytearray(max(key_size, 1) * self.capacity)
        self.vbuf = bytearray(max(value_size, 1) * self.capacity)
        self.tin, self.tout = bytearray(tok), bytearray(tok)
        cs = [(ctypes.c_char * len(b)).from_buffer(b)
              for b in (self.kbuf, self.vbuf, self.tin, self.tout)]
        self._keep = cs
        self._addrs = [ctypes.addressof(c) for c in cs]
        self.attr = A.BatchAttr(keys=self._addrs[0], values=self._addrs[1],
                                out_batch=self._addrs[3], map_fd=fd)
        self._tin_addr = self._addrs[2]
        self._ap = ctypes.c_void_p(ctypes.addressof(self.attr))

    def walk(self, delete: bool) -> Iterator[tuple[memoryview, memoryview, int]]:
        """Yield (keys, values, n) views of each batch, valid until the next one."""
        if self.capacity > self.count:
            return self._walk_pipelined(delete)
        return self._walk(delete)

    def _walk(self, delete: bool) -> Iterator[tuple[memoryview, memoryview, int]]:
        from ..sys.syscall import NR_BPF, Cmd, cmd_name, errno_hint, get_errno, raw_syscall

        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        a, ap, size = self.attr, self._ap, self._A.BatchAttr.SIZE
        ks, vs = max(self.key_size, 1), max(self.value_size, 1)
        a.in_batch = 0
        while True:
            a.count = self.count
            err = get_errno() if raw_syscall(NR_BPF, cmd, ap, size) < 0 else 0
            n = a.count
            _trace_batch(cmd, self.fd, n, err)
            if err and err != _errno.ENOENT:
                if err == _errno.ENOSPC and not n and self.count < (1 << 24):
                    # one hash bucket holds more than count entries: grow, resume there
                    cursor, started = bytes(self.tin), a.in_batch != 0
                    self.__init__(self.fd, self.key_size, self.value_size,  # type: ignore[misc]
                                  self.count * 2)
                    a, ap = self.attr, self._ap
                    self.tin[:] = cursor
                    a.in_batch = self._tin_addr if started else 0
                    continue
                raise SyscallError(err, cmd_name(cmd), errno_hint(err, cmd), detail=f"map fd {self.fd}")
            if n:
                yield (memoryview(self.kbuf)[:n * ks], memoryview(self.vbuf)[:n * vs], n)
            if err == _errno.ENOENT:
                return
            self.tin[:] = self.tout
            a.in_batch = self._tin_addr

    def _walk_pipelined(self, delete: bool) -> Iterator[tuple[memoryview, memoryview, int]]:
        import queue
        import threading

        from ..sys.syscall import NR_BPF, Cmd, cmd_name, errno_hint, get_errno, raw_syscall

        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        ks, vs = max(self.key_size, 1), max(self.value_size, 1)
        kaddr, vaddr, tin_addr, tout_addr = self._addrs
        cap, tin, tout = self.capacity, self.tin, self.tout
        ct, size = self._ct, self._A.BatchAttr.SIZE
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def read_all() -> None:
            # this thread's own attr: the walk's state never touches the consumer's
            a = self._A.BatchAttr(out_batch=tout_addr, map_fd=self.fd)
            ap = ct.c_void_p(ct.addressof(a))
            off, chunk, first = 0, self.chunk, True
            try:
                while True:
                    want = min(chunk, cap - off)
                    if want <= 0:  # more entries than max_entries + a chunk: cannot be
                        q.put(SyscallError(_errno.ENOSPC, cmd_name(cmd),
                                           detail=f"map fd {self.fd}: batch buffers full"))
                        return
                    a.keys, a.values, a.count = kaddr + off * ks, vaddr + off * vs, want
                    a.in_batch = 0 if first else tin_addr
                    err = get_errno() if raw_syscall(NR_BPF, cmd, ap, size) < 0 else 0
                    n = a.count
                    _trace_batch(cmd, self.fd, n, err)
                    if err and err != _errno.ENOENT:
                        if err == _errno.ENOSPC and not n and want < cap - off:
                            chunk = want * 2  # a hash bucket larger than the chunk
                            continue
                        q.put(SyscallError(err, cmd_name(cmd), errno_hint(err, cmd),
                                           detail=f"map fd {self.fd}"))
                        return
                    if n:
                        q.put((off, n))
                    if err == _errno.ENOENT:
                        break
                    off += n
                    tin[:] = tout
                    first = False
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(e)
                return
            q.put(None)

        t = threading.Thread(target=read_all, name="pyebpf-batch", daemon=True)
        t.start()
        kmv, vmv = memoryview(self.kbuf), memoryview(self.vbuf)
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                off, n = item
                yield kmv[off * ks:(off + n) * ks], vmv[off * vs:(off + n) * vs], n
        finally:
            t.join()


def _plain_int(c: Any) -> bool:
    """A BTF integer codec whose encode takes a Python int as is (no bool, no bitfield)."""
    return (c is not None and type(c).__name__ == "IntCodec" and bool(c._fmt)
            and not c.is_bool)


def _bulk_format(codec: Any, size: int) -> str | None:
    """A memoryview.cast format decoding an array of this codec's values at once."""
    bulk = getattr(codec, "_bulk", None)  # set by _as_codec for native one-int formats
    if bulk:
        return bulk
    fmt = getattr(codec, "_fmt", None)
    if fmt and not getattr(codec, "is_bool", True) and type(codec).__name__ == "IntCodec":
        fmt = fmt.lstrip("<>=@!")
        if len(fmt) == 1 and struct.calcsize(fmt) == size:
            return fmt
    return None


def _as_codec(t: Any, size: int, what: str) -> Any:
    from ..btf.codec import Codec, codec_from_ctypes, codec_from_format

    if isinstance(t, Codec):
        c = t
    elif isinstance(t, str):
        c = codec_from_format(t)
        code = t.lstrip("=@")
        if len(code) == 1 and code in "bBhHiIlLqQ" and len(t) - len(code) <= 1 \
                and struct.calcsize(code) == c.size:
            c._bulk = code  # native order, one integer: arrays decode by memoryview.cast
    else:
        c = codec_from_ctypes(t)
    if c.size != size:
        raise OptionError(f"{what}: {c.type_name} is {c.size} bytes, the map's is {size}")
    return c


class _LazyKernelBTF:
    """The BTF a map was created with, fetched from the kernel on first use."""

    def __init__(self, btf_id: int) -> None:
        self.btf_id = btf_id
        self._btf: Any = None

    def get(self) -> Any:
        if self._btf is None:
            from ..btf.spec import BTF

            with _bpf.btf_get_fd_by_id(self.btf_id) as fd:
                info, name = _btf_info_named(fd)
                data = _bpf.btf_data(fd)
            base = None
            # module BTF is split: its ids follow vmlinux's
            if info.kernel_btf and name != b"vmlinux":
                base = _vmlinux_btf()
            try:
                self._btf = BTF.from_bytes(data, base)
            except PyebpfError:
                if base is not None:
                    raise
                self._btf = BTF.from_bytes(data, _vmlinux_btf())
        return self._btf


_VMLINUX: Any = None


def _vmlinux_btf() -> Any:
    global _VMLINUX
    if _VMLINUX is None:
        from ..btf.spec import BTF

        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            _VMLINUX = BTF.from_bytes(f.read())
    return _VMLINUX



def _struct_ops_btf(btf_obj_id: int) -> Any:
    """The kernel BTF holding a struct_ops map's value type: a module's (split on
    vmlinux) when ``btf_obj_id`` names one, else vmlinux (the cached, indexed one)."""
    if btf_obj_id:
        with _bpf.btf_get_fd_by_id(btf_obj_id) as fd:
            _, name = _btf_info_named(fd)
        if name != b"vmlinux":
            return _LazyKernelBTF(btf_obj_id).get()
    from ..btf.kernel import kernel_btf

    return kernel_btf()


def _btf_info_named(fd: FD) -> tuple[Any, bytes]:
    """BTF_OBJ_GET_INFO_BY_FD with the BTF's name ("vmlinux", a module's, or empty)."""
    import ctypes

    from ..sys import attrs as A

    name = (ctypes.c_char * 64)()
    info = A.BtfInfo(name=ctypes.addressof(name), name_len=64)
    _bpf.obj_get_info_by_fd(fd, info)
    return info, name.value
