"""Arena: pages shared by programs and user space, accessed through an mmap."""

from __future__ import annotations

import mmap as _mmap
from typing import Any

from ..errors import OptionError
from ..sys.mm import mmap_fd
from ..uapi import MapType
from .map import NoKeysMap, register_map_class

__all__ = ["Arena"]


@register_map_class(MapType.ARENA)
class Arena(NoKeysMap):
    """A BPF arena (max_entries pages). :attr:`memory` maps it on first use (pages are
    allocated by the kernel as they are touched); ``read(off, n)``/``write(off, data)``.
    Program pointers into the arena are ``user_vm_start + offset`` (:attr:`address`)."""

    _mm: Any = None
    _view: memoryview | None = None  # the one view :attr:`memory` hands out

    @property
    def size(self) -> int:
        return self.max_entries * _mmap.PAGESIZE

    def _map(self) -> _mmap.mmap:
        mm: _mmap.mmap | None = self._mm
        if mm is None:
            if self.fd.closed:
                raise self._closed_error()
            mm = self._mm = mmap_fd(self.fd.fileno(), self.size,
                                    _mmap.PROT_READ | _mmap.PROT_WRITE, what=f"arena {self.name!r}")
        return mm

    @property
    def memory(self) -> memoryview:
        """A writable view of the arena, the same one on every access. :meth:`close`
        releases it (later use raises ValueError); views derived from it keep the
        mapping alive until they are dropped."""
        mm = self._map()
        v = self._view
        if v is not None:
            try:
                v.nbytes  # noqa: B018 - raises once the caller released it
                return v
            except ValueError:
                pass
        v = self._view = memoryview(mm)
        return v

    @property
    def address(self) -> int:
        """The user-space address the arena is mapped at (its user_vm_start)."""
        import ctypes

        mm = self._map()
        return ctypes.addressof(ctypes.c_char.from_buffer(mm))

    def _check(self, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise OptionError(f"arena {self.name!r}: [{offset}, {offset + n}) outside "
                              f"its {self.size} bytes")

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``."""
        self._check(offset, size)
        try:
            return self._map()[offset:offset + size]
        except ValueError as e:  # closed by another thread meanwhile
            raise (self._closed_error() if self.fd.closed else e) from None

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        self._check(offset, len(data))
        try:
            self._map()[offset:offset + len(data)] = data
        except ValueError as e:
            raise (self._closed_error() if self.fd.closed else e) from None

    def close(self) -> None:
        """Release :attr:`memory`'s view, unmap (unless derived views remain: the
        mapping then goes with them) and close the fd. Never raises BufferError."""
        mm, self._mm = self._mm, None
        v, self._view = self._view, None
        try:
            if v is not None:
                try:
                    v.release()
                except BufferError:
                    pass
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass
        finally:
            super().close()
