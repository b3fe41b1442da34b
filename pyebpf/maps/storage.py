"""Local-storage maps: one value per kernel object (socket, task, inode, cgroup).

From user space the key of such a map is an *fd* of the owning object: a socket for
sk_storage, a pidfd for task_storage, an open file for inode_storage and an open
cgroup directory for cgrp_storage. The kernel offers lookup, update and delete, but no
iteration (GET_NEXT_KEY is not supported), so ``keys()``/``items()`` are refused.
These maps need BTF key/value types at creation (the loader passes the object's BTF).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import OptionError
from ..uapi import MapType
from .map import BPF_ANY, Map, register_map_class

__all__ = ["CgrpStorage", "InodeStorage", "LocalStorage", "SkStorage", "TaskStorage",
           "cgroup2_mount", "cgroup_path_of"]

_BO = sys.byteorder


def _fd_of(owner: Any) -> int:
    """An int fd from an int, an FD, a socket or a file object."""
    if isinstance(owner, bool):
        raise OptionError(f"expected an fd, got {owner!r}")
    if isinstance(owner, int):
        return owner
    fileno = getattr(owner, "fileno", None)
    if callable(fileno):
        return int(fileno())
    raise OptionError(f"expected an fd or an object with fileno(), got {owner!r}")


class LocalStorage(Map):
    """Base of the local storages: keys are fds of the owning kernel objects."""

    _batchable = False

    def encode_key(self, key: Any) -> bytes:
        if isinstance(key, (bytes, bytearray, memoryview)):
            return super().encode_key(key)
        fd = _fd_of(key)
        if fd < 0:
            raise OptionError(f"map {self.name!r}: invalid fd {fd}")
        return fd.to_bytes(4, _BO)

    def _no_walk(self) -> OptionError:
        return OptionError(f"map {self.name!r}: local storage cannot be iterated "
                           "(the kernel has no GET_NEXT_KEY for it); look up by owner fd")

    def keys(self) -> Iterator[Any]:
        raise self._no_walk()

    def keys_bytes(self) -> Iterator[bytes]:
        raise self._no_walk()

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        raise self._no_walk()

    def count(self) -> int:
        raise self._no_walk()

    def clear(self) -> None:
        raise self._no_walk()

    def __iter__(self) -> Iterator[Any]:
        raise self._no_walk()

    # helpers that open the owner from a path or pid for one call

    @contextmanager
    def _opened(self, path: str | os.PathLike[str], flags: int) -> Iterator[int]:
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)


@register_map_class(MapType.SK_STORAGE)
class SkStorage(LocalStorage):
    """Per-socket storage: ``m[sock]`` with a socket object or a socket fd."""


@register_map_class(MapType.TASK_STORAGE)
class TaskStorage(LocalStorage):
    """Per-task storage: ``m[pidfd]``; ``lookup_pid``/``update_pid``/``delete_pid`` open a
    pidfd for the call."""

    @contextmanager
    def _pidfd(self, pid: int) -> Iterator[int]:
        fd = os.pidfd_open(pid)
        try:
            yield fd
        finally:
            os.close(fd)

    def lookup_pid(self, pid: int, default: Any = None, *, raw: bool = False) -> Any:
        """The value stored for the task ``pid`` (a thread id works too), or ``default``."""
        with self._pidfd(pid) as fd:
            return self.lookup(fd, default, raw=raw)

    def update_pid(self, pid: int, value: Any, flags: int = BPF_ANY) -> None:
        with self._pidfd(pid) as fd:
            self.update(fd, value, flags)

    def delete_pid(self, pid: int) -> bool:
        with self._pidfd(pid) as fd:
            return self.delete(fd)


@register_map_class(MapType.INODE_STORAGE)
class InodeStorage(LocalStorage):
    """Per-inode storage: ``m[file]`` with an open file (or fd); ``*_path`` helpers open
    the path read-only for the call. Programs reach it only from BPF LSM hooks."""

    def lookup_path(self, path: str | os.PathLike[str], default: Any = None, *,
                    raw: bool = False) -> Any:
        with self._opened(path, os.O_RDONLY) as fd:
            return self.lookup(fd, default, raw=raw)

    def update_path(self, path: str | os.PathLike[str], value: Any, flags: int = BPF_ANY) -> None:
        with self._opened(path, os.O_RDONLY) as fd:
            self.update(fd, value, flags)

    def delete_path(self, path: str | os.PathLike[str]) -> bool:
        with self._opened(path, os.O_RDONLY) as fd:
            return self.delete(fd)


@register_map_class(MapType.CGRP_STORAGE)
class CgrpStorage(LocalStorage):
    """Per-cgroup (v2) storage: ``m[cgroup_dir_fd]``; ``*_path`` helpers open a cgroup
    directory (absolute, or relative to the cgroup2 mount) for the call."""

    @staticmethod
    def _abs(path: str | os.PathLike[str]) -> str:
        p = os.fspath(path)
        if not os.path.isabs(p):
            p = os.path.join(cgroup2_mount(), p)
        return p

    def lookup_path(self, path: str | os.PathLike[str], default: Any = None, *,
                    raw: bool = False) -> Any:
        with self._opened(self._abs(path), os.O_RDONLY | os.O_DIRECTORY) as fd:
            return self.lookup(fd, default, raw=raw)

    def update_path(self, path: str | os.PathLike[str], value: Any, flags: int = BPF_ANY) -> None:
        with self._opened(self._abs(path), os.O_RDONLY | os.O_DIRECTORY) as fd:
            self.update(fd, value, flags)

    def delete_path(self, path: str | os.PathLike[str]) -> bool:
        with self._opened(self._abs(path), os.O_RDONLY | os.O_DIRECTORY) as fd:
            return self.delete(fd)


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid
    layouts), from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1].replace("\\040", " ")
    except OSError:
        pass
    raise OptionError("no cgroup2 mount found in /proc/self/mounts")


def cgroup_path_of(pid: int | str = "self") -> str:
    """The absolute path of the cgroup v2 directory that ``pid`` belongs to."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                rel = line[3:].strip()
                return os.path.join(cgroup2_mount(), rel.lstrip("/"))
    raise OptionError(f"process {pid} has no cgroup v2 membership")
