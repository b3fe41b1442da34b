"""Local-storage maps: one value per kernel object (socket, task, inode, cgroup).

From user space the key of such a map is an *fd* of the owning object: a socket for
sk_storage, a pidfd for task_storage, an open file for inode_storage and an open
cgroup directory for cgrp_storage. The kernel offers lookup, update and delete, but no
iteration (GET_NEXT_KEY is not supported), so ``keys()``/``items()`` are refused.
These maps need BTF key/value types at creation (the loader passes the object's BTF).

The older cgroup storages (CGROUP_STORAGE and PERCPU_CGROUP_STORAGE, reached by
``bpf_get_local_storage()``) are different: the kernel makes one entry per (cgroup,
attach type) when a program using the map is first attached there, keyed by ``struct
bpf_cgroup_storage_key`` (or just the cgroup id), and they can be iterated.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from ..errors import OptionError
from ..uapi import AttachType, MapType
from .map import _RAW, BPF_ANY, Map, NoDelete, NoLengthError, register_map_class
from .percpu import PerCpuMixin

__all__ = ["CgroupStorage", "CgroupStorageKey", "CgrpStorage", "InodeStorage", "LocalStorage",
           "PerCpuCgroupStorage", "SkStorage", "TaskStorage", "cgroup2_mount", "cgroup_id",
           "cgroup_path_of", "cgroup_storage_key"]

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

    def __len__(self) -> int:
        raise NoLengthError(str(self._no_walk()))

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


# -- CGROUP_STORAGE / PERCPU_CGROUP_STORAGE ------------------------------------------------

# struct bpf_cgroup_storage_key { __u64 cgroup_inode_id; __u32 attach_type; } (+4 padding)
_CG_KEY = struct.Struct("=QI4x")


def _attach_type(value: int) -> AttachType | int:
    try:
        return AttachType(value)
    except ValueError:
        return value


class CgroupStorageKey(NamedTuple):
    """A decoded ``struct bpf_cgroup_storage_key``: the cgroup's id (the inode number of
    its cgroup2 directory) and the attach type the storage belongs to."""

    cgroup_inode_id: int
    attach_type: AttachType | int

    @classmethod
    def from_path(cls, path: str | os.PathLike[str],
                  attach_type: AttachType | int) -> CgroupStorageKey:
        """The key of the cgroup at ``path`` (absolute, or relative to the cgroup2 mount)."""
        return cls(cgroup_id(path), _attach_type(int(attach_type)))

    def __repr__(self) -> str:
        at = self.attach_type
        return (f"CgroupStorageKey(cgroup_inode_id={self.cgroup_inode_id}, "
                f"attach_type={at.name if isinstance(at, AttachType) else at})")


def cgroup_id(path: str | os.PathLike[str]) -> int:
    """The id of the cgroup v2 directory at ``path`` (absolute, or relative to the cgroup2
    mount): the inode number of the directory, as ``bpf_get_current_cgroup_id()`` sees it."""
    return os.stat(CgrpStorage._abs(path)).st_ino


def cgroup_storage_key(path: str | os.PathLike[str],
                       attach_type: AttachType | int = AttachType.CGROUP_INET_EGRESS
                       ) -> CgroupStorageKey:
    """The cgroup storage key for the cgroup at ``path`` and ``attach_type``."""
    return CgroupStorageKey.from_path(path, attach_type)


@register_map_class(MapType.CGROUP_STORAGE)
class CgroupStorage(NoDelete, Map):
    """Cgroup storage read by ``bpf_get_local_storage()``: one value per (cgroup, attach
    type) a program using the map was attached to. The kernel creates an entry at the
    first attach and keeps it, across detach and re-attach, until the cgroup is freed
    (after its rmdir) or the map is; user space can read, overwrite and iterate the
    entries but not add or delete any.

    Keys are :class:`CgroupStorageKey` (``(cgroup_inode_id, attach_type)`` tuples work
    too; see :func:`cgroup_storage_key`); maps declared with a ``__u64`` key (the cgroup id
    only, shared by every attach type) take and give plain ints.
    """

    # the kernel has no batch ops for cgroup storage (saves a failing syscall)
    _batchable = False
    # entries live as long as their cgroup: the kernel refuses deletes (EINVAL)
    _no_delete_why = "cgroup storage entries cannot be deleted (the kernel frees them with their cgroup)"

    def key_for(self, path: str | os.PathLike[str],
                attach_type: AttachType | int | None = None) -> CgroupStorageKey | int:
        """The key of the cgroup at ``path`` (absolute or relative to the cgroup2 mount);
        ``attach_type`` is needed unless the map's key is the cgroup id alone."""
        if self.key_size == 8:
            return cgroup_id(path)
        if attach_type is None:
            raise OptionError(f"map {self.name!r}: keys name an attach type too "
                              "(e.g. AttachType.CGROUP_INET_EGRESS)")
        return CgroupStorageKey.from_path(path, attach_type)

    def lookup_path(self, path: str | os.PathLike[str],
                    attach_type: AttachType | int | None = None, default: Any = None, *,
                    raw: bool = False) -> Any:
        """The value stored for the cgroup at ``path`` and ``attach_type``, or ``default``."""
        return self.lookup(self.key_for(path, attach_type), default, raw=raw)

    def update_path(self, path: str | os.PathLike[str], value: Any,
                    attach_type: AttachType | int | None = None, flags: int = BPF_ANY) -> None:
        """Overwrite the value of the cgroup at ``path`` (it must have the program attached)."""
        self.update(self.key_for(path, attach_type), value, flags)

    def encode_key(self, key: Any) -> bytes:
        if isinstance(key, _RAW):
            return super().encode_key(key)
        if isinstance(key, tuple) and len(key) == 2:
            ino, at = key
            if self.key_size == 8:  # the attach type is not part of such keys
                return int(ino).to_bytes(8, _BO)
            try:
                return _CG_KEY.pack(int(ino), int(at))
            except (struct.error, TypeError, ValueError):
                raise OptionError(f"map {self.name!r}: bad cgroup storage key {key!r}") from None
        if isinstance(key, int) and not isinstance(key, bool):
            if self.key_size == 8:
                return key.to_bytes(8, _BO)
            raise OptionError(f"map {self.name!r}: a key names the cgroup and the attach type, "
                              "(cgroup_inode_id, attach_type); use key_for(path, attach_type) "
                              "or cgroup_storage_key()")
        raise OptionError(f"map {self.name!r}: bad cgroup storage key {key!r}; use "
                          "key_for(path, attach_type) or a CgroupStorageKey")

    def decode_key(self, raw: bytes) -> Any:
        if len(raw) == _CG_KEY.size:
            ino, at = _CG_KEY.unpack(raw)
            return CgroupStorageKey(ino, _attach_type(at))
        if len(raw) == 8:
            return int.from_bytes(raw, _BO)
        return super().decode_key(raw)

    def clear(self) -> None:
        raise self._no_delete("clear")


@register_map_class(MapType.PERCPU_CGROUP_STORAGE)
class PerCpuCgroupStorage(PerCpuMixin, CgroupStorage):
    """Per-CPU cgroup storage: values are lists with one entry per possible CPU; writing
    a single value sets it on every CPU. ``sum(k)``, ``max(k)``, ``min(k)``, ``total()``."""


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
