"""Arrays: plain (read and written through an mmap when BPF_F_MMAPABLE) and per-CPU."""

from __future__ import annotations

import errno
import mmap as _mmap
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import ClosedError, OptionError, SyscallError
from ..sys.mm import mmap_fd
from ..uapi import BPF_F_MMAPABLE, MapType
from .map import _MISSING, _RAW, BPF_ANY, IndexedMap, NoDelete, register_map_class
from .percpu import PerCpuMixin

__all__ = ["Array", "PerCpuArray"]

_BO = sys.byteorder


class _Closed:
    """Array._mm once the array is closed: any access through it fails."""

    def __getitem__(self, i: Any) -> Any:
        raise ClosedError("closed")

    def __setitem__(self, i: Any, v: Any) -> None:
        raise ClosedError("closed")

    def close(self) -> None:
        pass


_CLOSED: Any = _Closed()


@register_map_class(MapType.ARRAY)
class Array(NoDelete, IndexedMap):
    """An array: every index 0..max_entries-1 exists; ``len()`` is max_entries.

    Created with BPF_F_MMAPABLE, elements are read and written through a shared
    mapping of the map's memory (no syscall; :attr:`mmapped` tells). The mapping is
    made on first element access, so a loader can still freeze the map before."""

    _no_delete_why = ("array elements cannot be deleted (every index always exists); "
                      "write zeros with update() or clear()")
    _mm: Any = _MISSING  # mmap.mmap, None when not mmapable, _MISSING before first use
    _view: memoryview | None = None  # the one view :attr:`memory` hands out

    def _memory(self) -> Any:
        mm = None
        if self.flags & BPF_F_MMAPABLE and not self.fd.closed:
            size = self._stride * self.max_entries
            size = max(_mmap.PAGESIZE, -(-size // _mmap.PAGESIZE) * _mmap.PAGESIZE)
            what = f"array {self.name!r}"
            try:
                mm = mmap_fd(self.fd.fileno(), size, _mmap.PROT_READ | _mmap.PROT_WRITE, what=what)
            except SyscallError as e:
                if e.errno != errno.EPERM:
                    raise
                # frozen (e.g. .rodata): read-only mapping
                mm = mmap_fd(self.fd.fileno(), size, _mmap.PROT_READ, what=what)
                self._mm_ro = True
            c = self.value_codec
            vs = self.value_size
            self._mdec = c.decode if c is not None else (lambda b, o: b[o:o + vs])
        self._mm = mm
        return mm

    def with_types(self, key: Any = None, value: Any = None) -> Array:
        super().with_types(key, value)
        if value is not None and self._mm not in (None, _MISSING):
            c, vs = self.value_codec, self.value_size
            self._mdec = c.decode if c is not None else (lambda b, o: b[o:o + vs])
        return self

    def _mm_ok(self, key: Any) -> _mmap.mmap | None:
        mm: _mmap.mmap | None = self._mm
        if mm is _MISSING:
            mm = self._memory()
        if mm is not None and type(key) is int and 0 <= key < self.max_entries:
            return mm
        return None

    def _mm_failed(self, e: Exception) -> Exception:
        """The error for an access through the mapping that failed: closed (maybe by
        another thread in the middle of it), or the caller's own mistake."""
        if self._mm is _CLOSED or isinstance(e, ValueError) and "closed" in str(e):
            return self._closed_error()
        return e

    def __getitem__(self, key: Any) -> Any:
        mm = self._mm
        if mm is not None and type(key) is int and 0 <= key < self.max_entries:
            try:
                if mm is not _MISSING:
                    return self._mdec(mm, key * self._stride)
                mm = self._mm_ok(key)
                if mm is not None:
                    return self._mdec(mm, key * self._stride)
            except (ValueError, TypeError) as e:  # a closed mapping
                raise self._mm_failed(e) from None
        return super().__getitem__(key)

    def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any:
        mm = self._mm_ok(key)
        if mm is None:
            return super().lookup(key, default, raw=raw)
        off = key * self._stride
        try:
            return mm[off:off + self.value_size] if raw else self._mdec(mm, off)
        except (ValueError, TypeError) as e:
            raise self._mm_failed(e) from None

    def lookup_bytes(self, key: bytes) -> bytes | None:
        i = int.from_bytes(key, _BO) if isinstance(key, _RAW) and len(key) == 4 else -1
        mm = self._mm_ok(i)
        if mm is None:
            return super().lookup_bytes(key)
        off = i * self._stride
        try:
            return mm[off:off + self.value_size]
        except ValueError as e:
            raise self._mm_failed(e) from None

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        mm = self._mm_ok(key) if flags == BPF_ANY else None
        if mm is None or getattr(self, "_mm_ro", False):
            return super().update(key, value, flags)
        off = key * self._stride
        raw = self.encode_value(value)
        try:
            mm[off:off + self.value_size] = raw
        except (ValueError, TypeError) as e:
            raise self._mm_failed(e) from None
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update(key, value)

    def update_bytes(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        i = int.from_bytes(key, _BO) if isinstance(key, _RAW) and len(key) == 4 else -1
        mm = self._mm_ok(i) if flags == BPF_ANY else None
        if mm is not None and not getattr(self, "_mm_ro", False):
            # (a read-only mapping means a frozen map: the syscall reports EPERM)
            if not isinstance(value, _RAW) or len(value) != self.value_size:
                raise self._bytes_error(ValueError(), key, value)
            off = i * self._stride
            try:
                mm[off:off + self.value_size] = value
            except (ValueError, TypeError) as e:
                raise self._mm_failed(e) from None
            return
        super().update_bytes(key, value, flags)

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        if not self.mmapped:
            return super().items(raw=raw)
        return self._mm_items(raw)

    def _mm_items(self, raw: bool) -> Iterator[tuple[Any, Any]]:
        mm, s, vs = self._mm, self._stride, self.value_size
        try:
            for i in range(self.max_entries):
                if raw:
                    yield i.to_bytes(4, _BO), mm[i * s:i * s + vs]
                else:
                    yield self.decode_key(i.to_bytes(4, _BO)), self._mdec(mm, i * s)
        except (ValueError, TypeError) as e:
            raise self._mm_failed(e) from None

    def clear(self) -> None:
        if self.mmapped and not getattr(self, "_mm_ro", False):
            n = self._stride * self.max_entries
            try:
                self._mm[:n] = bytes(n)
            except (ValueError, TypeError) as e:
                raise self._mm_failed(e) from None
            return
        super().clear()

    @property
    def mmapped(self) -> bool:
        """True when elements are accessed through the map's shared memory."""
        mm = self._mm
        if mm is _MISSING:
            mm = self._memory()
        return mm is not None

    @property
    def memory(self) -> memoryview:
        """A view of the mmap'd elements (BPF_F_MMAPABLE arrays only), the same view on
        every access. :meth:`close` releases it: using it afterwards raises ValueError
        ("released memoryview"); slices or casts taken from it keep the mapping (and the
        map) alive until they are dropped, so no access ever reaches unmapped memory."""
        if self.fd.closed:
            raise self._closed_error()
        if not self.mmapped:
            raise OptionError(f"map {self.name!r} was not created with BPF_F_MMAPABLE")
        v = self._view
        if v is not None:
            try:
                v.nbytes  # noqa: B018 - raises once the caller released it
                return v
            except ValueError:
                pass
        v = self._view = memoryview(self._mm)[:self._stride * self.max_entries]
        return v

    def close(self) -> None:
        """Close the map: the fd, the view :attr:`memory` gave and the mapping (kept by
        the kernel until views derived from it are gone). Never raises BufferError."""
        # _CLOSED, not None: a thread racing this close must not fall back to syscalls
        # on an fd about to be closed (and its number reused)
        mm = self._mm
        self._mm = _CLOSED if mm is not None and mm is not _MISSING else None
        v, self._view = self._view, None
        try:
            if v is not None:
                try:
                    v.release()
                except BufferError:  # exported further (e.g. to numpy): it keeps the mapping
                    pass
            if mm is not None and mm is not _MISSING and mm is not _CLOSED:
                try:
                    mm.close()
                except BufferError:
                    pass  # views remain: the mapping goes away with the last of them
        finally:
            super().close()


@register_map_class(MapType.PERCPU_ARRAY)
class PerCpuArray(PerCpuMixin, Array):
    """A per-CPU array: values are lists with one entry per possible CPU.
    ``sum(i)``, ``max(i)``, ``min(i)``, ``average(i)``, ``total()``."""
