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

import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import ClosedError, OptionError, PyebpfError, SyscallError
from ..sys import bpf as _bpf
from ..sys.fd import FD, require_kind
from ..uapi import MapType
from .batch import BatchBuffers as _BatchBuffers  # noqa: F401 - old import path (benchmarks)
from .batch import BatchOpsMixin
from .kbtf import _LazyKernelBTF, _struct_ops_btf

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
    "ProgArray": "fdmaps", "ArrayOfMaps": "fdmaps", "HashOfMaps": "fdmaps",
}


def __getattr__(name: str) -> Any:
    mod = _MOVED.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__.rpartition('.')[0]}.{mod}"), name)


BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

_RAW = (bytes, bytearray, memoryview)
_EBADF = 9
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


# What to use instead, by what an fd opened as a map really is.
_OPEN_HINT = {
    "prog": "open it with pyebpf.Program.from_fd()/from_pin()",
    "link": "open it with pyebpf.links.Link.from_pin()",
}


def _fd_kind(fd: FD) -> str:
    from ..sys.fd import fd_kind

    try:
        return fd_kind(fd)
    except PyebpfError:
        return "unknown"


def _type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


class Map(BatchOpsMixin):
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
        if isinstance(fd, FD) and fd.label is None:
            fd.label = f"map {name!r}"  # so a closed map's error names it
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
        """Wrap an open map fd (an int is duplicated, an FD is taken over). An fd that is
        not a BPF map raises OptionError naming what it is."""
        return cls._from_owned(fd if isinstance(fd, FD) else FD(os.dup(int(fd)), "map"),
                               name=name)

    @classmethod
    def _from_owned(cls, owned: FD, *, name: str | None = None,
                    source: str | None = None) -> Map:
        try:
            # BPF_OBJ_GET_INFO_BY_FD would read a program's or link's info as a map's
            kind = _fd_kind(owned)
            if kind not in ("map", "unknown"):
                require_kind(owned, "map", source=source, hint=_OPEN_HINT.get(kind, ""))
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
        m = cls._from_owned(_bpf.obj_get(path, kind="map"), source=f"the pin {path}")
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
            tl_ops: _bpf.MapOps = self._tl.ops
            return tl_ops
        except AttributeError:
            if self.fd.closed:
                raise self._closed_error() from None
            ops = self._tl.ops = _bpf.MapOps(self.fd, self.key_size, self._stride * self._ncpus)
            return ops

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"map {self.name!r} is closed")

    def _syscall_failed(self, e: SyscallError) -> Exception:
        """EBADF because another thread closed the map during the call: ClosedError."""
        if e.errno == _EBADF and self.fd.closed:
            return self._closed_error()
        return e

    def _check_open(self) -> None:
        if self.fd.closed:
            raise self._closed_error()

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
            raw: bytes = c.encode(c.coerce(key, "key"))
            return raw
        return self._int_or_fail(key, self.key_size, "key")

    def _encode_one(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            if len(value) != self.value_size:
                raise OptionError(f"map {self.name!r}: value must be {self.value_size} bytes, "
                                  f"got {len(value)}")
            return bytes(value)
        c = self.value_codec
        if c is not None:
            raw: bytes = c.encode(c.coerce(value, "value"))
            return raw
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
        ops: _bpf.MapOps
        try:
            ops = self._tl.ops
        except AttributeError:  # this thread's first operation
            ops = self.ops
        try:
            return ops.lookup(key)
        except (ValueError, TypeError) as e:  # the key did not fit the syscall buffer: say why
            raise self._bytes_error(e, key) from None
        except SyscallError as e:
            raise self._syscall_failed(e) from None

    def update_bytes(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Store raw ``value`` at raw ``key``."""
        try:
            ops = self._tl.ops
        except AttributeError:
            ops = self.ops
        try:
            ops.update(key, value, flags)
        except (ValueError, TypeError) as e:
            raise self._bytes_error(e, key, value) from None
        except SyscallError as e:
            raise self._syscall_failed(e) from None

    def _bytes_error(self, e: Exception, key: Any, value: Any = None) -> Exception:
        """The pyebpf error for a bytes operation that failed outside the kernel (checked
        only then, so the fast path pays nothing)."""
        if isinstance(e, PyebpfError):
            return e
        try:
            klen = len(key)
        except TypeError:
            return OptionError(f"map {self.name!r}: key must be {self.key_size} bytes, "
                               f"got {type(key).__name__}")
        if klen != self.key_size:
            return OptionError(f"map {self.name!r}: key must be {self.key_size} bytes, got {klen}")
        if value is not None:
            want = self._stride * self._ncpus
            try:
                vlen = len(value)
            except TypeError:
                vlen = -1
            if vlen != want:
                what = (f"{want} bytes ({self._ncpus} CPUs x {self._stride})" if self.percpu
                        else f"{want} bytes")
                got = type(value).__name__ if vlen < 0 else vlen
                return OptionError(f"map {self.name!r}: value must be {what}, got {got}")
        if self.fd.closed:
            return self._closed_error()
        return OptionError(f"map {self.name!r}: {e}")

    def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any:
        """The value at ``key`` (decoded unless ``raw``), or ``default`` if absent."""
        if not raw:
            try:
                return (self._fget or self._fast()[0])(key, default)
            except SyscallError as e:  # closed by another thread in the middle?
                raise self._syscall_failed(e) from None
        v = self.ops.lookup(self.encode_key(key))
        return default if v is None else v

    def get(self, key: Any, default: Any = None) -> Any:
        """``dict.get``: the decoded value at ``key``, or ``default`` if absent."""
        try:
            return (self._fget or self._fast()[0])(key, default)
        except SyscallError as e:  # closed by another thread in the middle?
            raise self._syscall_failed(e) from None

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value``; flags BPF_ANY (0), BPF_NOEXIST (1), BPF_EXIST (2), BPF_F_LOCK (4)."""
        try:
            (self._fset or self._fast()[1])(key, value, flags)
        except SyscallError as e:  # closed by another thread in the middle?
            raise self._syscall_failed(e) from None

    # -- hot path: lookups and updates specialised once per map (codecs, per-thread ops) ---

    _fget: Any = None
    _fset: Any = None

    def _fast(self) -> tuple[Any, Any]:
        """Build (and keep) the get/set functions of the hot path (see fastpath.py)."""
        from .fastpath import build_fast

        if self.fd.closed:
            raise self._closed_error()
        fget, fset = build_fast(self)
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

    # -- user-supplied types -----------------------------------------------------------------

    def with_types(self, key: Any = None, value: Any = None) -> Map:
        """Use these types for keys/values instead of BTF: a ctypes type, a ``struct``
        format string (``"<IQ"``) or a :class:`pyebpf.btf.codec.Codec`. Returns self."""
        from .fastpath import as_codec as _as_codec

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

    def __len__(self) -> int:
        """Number of entries: a walk of the keys (the kernel keeps no count), so it is
        O(n) syscalls and only a snapshot while programs write the map. Arrays answer
        max_entries at once. (``list(m)`` asks ``len(m)`` first, as for any sized
        container: ``list(m.keys())`` walks the keys once.)"""
        return self.count()

    def __bool__(self) -> bool:
        # a map object is true, as other objects are: truth must not walk (or need) keys
        return True

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
        try:
            return (self._fget or self._fast()[0])(key)
        except SyscallError as e:  # closed by another thread in the middle?
            raise self._syscall_failed(e) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            (self._fset or self._fast()[1])(key, value, 0)
        except SyscallError as e:  # closed by another thread in the middle?
            raise self._syscall_failed(e) from None

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

        if self.fd.closed:
            raise self._closed_error()
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
        """Close the fd (the kernel frees the map once nothing else holds it). Any later
        operation raises :class:`~pyebpf.errors.ClosedError`."""
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

    _indexed = True

    def __len__(self) -> int:
        self._check_open()
        return self.max_entries

    def keys(self) -> Iterator[Any]:
        self._check_open()
        dec = self.decode_key
        for i in range(self.max_entries):
            yield dec(i.to_bytes(4, _BO))

    def keys_bytes(self) -> Iterator[bytes]:
        self._check_open()
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
        return len(self)

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


class PerfEventArray(_FdArray):
    """perf_event_array: one perf event fd per CPU (consumed by a perf buffer)."""


class NoLengthError(OptionError, TypeError):
    """``len()`` of a map kind whose size the kernel cannot tell (no keys to walk): a
    TypeError too, as ``len()`` of an object without a length is."""


class NoKeysMap(Map):
    """Maps without keys to iterate (queues, stacks, bloom filters, ring buffers).
    ``len()`` raises :class:`NoLengthError`: the kernel reports no element count and has
    no keys to walk."""

    _batchable = False
    _no_len_why = "the kernel reports no element count and it has no keys to walk"

    def __len__(self) -> int:
        raise NoLengthError(f"map {self.name!r} ({_type_name(self.type)}) has no length: "
                            f"{self._no_len_why}")

    def count(self) -> int:
        return len(self)

    def keys(self) -> Iterator[Any]:
        raise OptionError(f"map {self.name!r} ({_type_name(self.type)}) has no keys to iterate")

    keys_bytes = keys

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
