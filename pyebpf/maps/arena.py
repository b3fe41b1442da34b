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

    @property
    def size(self) -> int:
        return self.max_entries * _mmap.PAGESIZE

    def _map(self) -> _mmap.mmap:
        mm = self._mm
        if mm is None:
            if self.fd.closed:
                raise OptionError(f"arena {self.name!r} is closed")
            mm = self._mm = mmap_fd(self.fd.fileno(), self.size,
                                    _mmap.PROT_READ | _mmap.PROT_WRITE, what=f"arena {self.name!r}")
        return mm

    @property
    def memory(self) -> memoryview:
        """A writable view of the arena; release it before :meth:`close`."""
        return memoryview(self._map())

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
        return self._map()[offset:offset + size]

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        self._check(offset, len(data))
        self._map()[offset:offset + len(data)] = data

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        super().close()
