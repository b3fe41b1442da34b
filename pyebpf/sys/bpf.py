"""One function per bpf(2) command, plus :class:`MapOps` for the hot map operations.

Functions take plain Python values (ints, bytes, str) and return :class:`FD` for
new kernel objects. Byte buffers in attrs point at Python-owned memory that is
kept alive for the duration of the call.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._log import DEBUG
from .._record import Record
from ..errors import OptionError, SyscallError, VerifierError
from ..uapi import BPF_F_NO_PREALLOC, AttachType, MapType, ProgType
from . import attrs as A
from .fd import FD
from .syscall import (
    NR_BPF,
    PERM_HINT,
    Cmd,
    bpf,
    bpf_errno,
    cmd_name,
    errno_hint,
    get_errno,
    log,
    raw_syscall,
)

__all__ = [
    "MapOps",
    "ProgLoadResult",
    "btf_get_fd_by_id",
    "btf_info",
    "btf_load",
    "enable_stats",
    "explain_log",
    "failed_insn_index",
    "get_next_id",
    "iter_create",
    "link_create",
    "link_detach",
    "link_get_fd_by_id",
    "link_info",
    "link_update",
    "map_create",
    "map_delete_elem",
    "map_freeze",
    "map_get_fd_by_id",
    "map_get_next_key",
    "map_info",
    "map_lookup_and_delete_elem",
    "map_lookup_elem",
    "map_update_elem",
    "obj_get",
    "obj_get_info_by_fd",
    "obj_pin",
    "possible_cpus",
    "prog_attach",
    "prog_bind_map",
    "prog_detach",
    "prog_get_fd_by_id",
    "prog_info",
    "prog_load",
    "prog_load_with_log",
    "prog_map_ids",
    "prog_query",
    "prog_stream_read",
    "prog_test_run",
    "raw_tracepoint_open",
    "task_fd_query",
    "token_create",
]

_DEBUG = DEBUG
_modules = sys.modules


def _bind_debug_check() -> None:
    """Point the hot paths' debug check at the real logger.

    Map operations test ``"logging" in _modules`` first: until something imports
    logging nothing can have enabled DEBUG (see pyebpf._log), and a dict membership test
    costs no call. Then ``_nodebug`` probes the logger's own level cache (cleared,
    never rebound, by setLevel/disable): one dict probe answers "no debug" without a
    method call; a miss or True defers to ``_debug_on``, its isEnabledFor."""
    global _debug_on, _nodebug
    real = log.real()
    cache = getattr(real, "_cache", None)
    _debug_on = real.isEnabledFor
    _nodebug = (cache if isinstance(cache, dict) else {}).get


def _nodebug_unbound(level: int, default: bool) -> bool:
    """The first check after logging was imported: bind, then answer."""
    _bind_debug_check()
    return bool(_nodebug(level, default))


_debug_on: Callable[[int], bool] = log.isEnabledFor
_nodebug: Callable[..., Any] = _nodebug_unbound

_addressof = ctypes.addressof


def _buf(data: bytes | bytearray | memoryview | None) -> tuple[Any, int]:
    """A ctypes copy of ``data`` and its address (0 for empty/None)."""
    if not data:
        return None, 0
    b = (ctypes.c_char * len(data)).from_buffer_copy(data)
    return b, _addressof(b)


def _out(size: int) -> tuple[ctypes.Array[ctypes.c_char], int]:
    b = (ctypes.c_char * max(size, 1))()
    return b, _addressof(b)


def _name16(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    return raw[:15]


def _fdnum(fd: int | FD | None) -> int:
    return 0 if fd is None else int(fd)


# --- maps ----------------------------------------------------------------------------------


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    name: str | bytes = "",
    *,
    inner_map_fd: int | FD | None = None,
    numa_node: int = 0,
    ifindex: int = 0,
    btf_fd: int | FD | None = None,
    btf_key_type_id: int = 0,
    btf_value_type_id: int = 0,
    btf_vmlinux_value_type_id: int = 0,
    map_extra: int = 0,
    value_type_btf_obj_fd: int | FD | None = None,
    token_fd: int | FD | None = None,
) -> FD:
    """BPF_MAP_CREATE; returns the map's FD."""
    a = A.MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        inner_map_fd=_fdnum(inner_map_fd),
        numa_node=numa_node,
        map_name=_name16(name),
        map_ifindex=ifindex,
        btf_fd=_fdnum(btf_fd),
        btf_key_type_id=btf_key_type_id,
        btf_value_type_id=btf_value_type_id,
        btf_vmlinux_value_type_id=btf_vmlinux_value_type_id,
        map_extra=map_extra,
        value_type_btf_obj_fd=_fdnum(value_type_btf_obj_fd),
        map_token_fd=_fdnum(token_fd),
    )
    detail = f"map {a.map_name.decode('latin-1')!r}" if a.map_name else ""
    ret, err = bpf_errno(Cmd.MAP_CREATE, a, A.MapCreateAttr.SIZE)
    if ret < 0:
        raise SyscallError(err, "BPF_MAP_CREATE", map_create_hint(err, map_type, flags, a.btf_fd),
                           detail=detail)
    return FD(ret, "map")


_LOCAL_STORAGE = {MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE, MapType.CGRP_STORAGE}


def map_create_hint(err: int, map_type: int, flags: int, btf_fd: int) -> str:
    """errno hint for BPF_MAP_CREATE, with the kernel's per-type preconditions."""
    if err == _errno.EINVAL:
        if map_type in _LOCAL_STORAGE and not btf_fd:
            return "local-storage maps need BTF: pass btf_fd with btf_key_type_id/btf_value_type_id"
        if map_type == MapType.STRUCT_OPS and not btf_fd:
            return "struct_ops maps need a valid btf_fd (any loaded BTF) besides btf_vmlinux_value_type_id"
        if map_type == MapType.LPM_TRIE and not flags & BPF_F_NO_PREALLOC:
            return "LPM trie maps need BPF_F_NO_PREALLOC"
        if map_type in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
            return "map-in-map needs inner_map_fd of a compatible map"
    return errno_hint(err, Cmd.MAP_CREATE)


def _elem(cmd: int, fd: int | FD, key: bytes | None, value: Any, flags: int, *, enoent_ok: bool) -> int:
    """Run one element command; returns 0, or -1 for ENOENT when enoent_ok."""
    kb, ka = _buf(key)
    a = A.MapElemAttr(map_fd=int(fd), key=ka, value=_addressof(value) if value is not None else 0, flags=flags)
    ret, err = bpf_errno(cmd, a, A.MapElemAttr.SIZE)
    if ret < 0:
        if err == _errno.ENOENT and enoent_ok:
            return -1
        raise SyscallError(err, cmd_name(cmd), errno_hint(err, cmd))
    return ret


def map_lookup_elem(fd: int | FD, key: bytes | None, value_size: int, flags: int = 0) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM: the value, or None if the key is absent."""
    out, _ = _out(value_size)
    if _elem(Cmd.MAP_LOOKUP_ELEM, fd, key, out, flags, enoent_ok=True) < 0:
        return None
    return out.raw[:value_size]


def map_lookup_and_delete_elem(fd: int | FD, key: bytes | None, value_size: int, flags: int = 0) -> bytes | None:
    """BPF_MAP_LOOKUP_AND_DELETE_ELEM (also queue/stack pop): the value, or None if absent."""
    out, _ = _out(value_size)
    if _elem(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, fd, key, out, flags, enoent_ok=True) < 0:
        return None
    return out.raw[:value_size]


def map_update_elem(fd: int | FD, key: bytes | None, value: bytes, flags: int = 0) -> None:
    """BPF_MAP_UPDATE_ELEM (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK)."""
    vb = (ctypes.c_char * max(len(value), 1)).from_buffer_copy(value if value else b"\0")
    _elem(Cmd.MAP_UPDATE_ELEM, fd, key, vb, flags, enoent_ok=False)


def map_delete_elem(fd: int | FD, key: bytes | None, flags: int = 0) -> bool:
    """BPF_MAP_DELETE_ELEM: True if deleted, False if the key was absent."""
    return _elem(Cmd.MAP_DELETE_ELEM, fd, key, None, flags, enoent_ok=True) >= 0


def map_get_next_key(fd: int | FD, key: bytes | None, key_size: int) -> bytes | None:
    """BPF_MAP_GET_NEXT_KEY: the key after ``key`` (first key if None), or None at the end."""
    out, _ = _out(key_size)
    if _elem(Cmd.MAP_GET_NEXT_KEY, fd, key, out, 0, enoent_ok=True) < 0:
        return None
    return out.raw[:key_size]


def map_freeze(fd: int | FD) -> None:
    """BPF_MAP_FREEZE: make the map read-only for user space."""
    a = A.MapElemAttr(map_fd=int(fd))
    bpf(Cmd.MAP_FREEZE, a, _end_of(A.MapElemAttr, "map_fd"))


def _end_of(cls: Any, field: str) -> int:
    f = getattr(cls, field)
    end: int = f.offset + f.size
    return end


_possible_cpus: int | None = None


def possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values hold one slot per possible CPU)."""
    global _possible_cpus
    if _possible_cpus is None:
        n = 0
        with open("/sys/devices/system/cpu/possible") as f:
            for part in f.read().strip().split(","):
                lo, _, hi = part.partition("-")
                n += (int(hi) - int(lo) + 1) if hi else 1
        _possible_cpus = n
    return _possible_cpus


PERCPU_MAP_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                              MapType.PERCPU_CGROUP_STORAGE})


class MapOps:
    """Preallocated attrs and buffers for one map fd: each op is one syscall plus little Python.

    ``value_size`` is the size of the value buffer the kernel fills: for per-CPU
    maps pass ``round_up(value_size, 8) * possible_cpus()`` (or use :meth:`for_fd`).
    Keys and values go in and out as bytes. The object does not own ``fd``; keep the
    map open while using it. The buffers are shared: use one MapOps per thread.
    """

    __slots__ = (
        "fd", "key_size", "value_size",
        "_kbuf", "_kmv", "_vbuf", "_vmv", "_nbuf", "_ctypes",
        "_lk", "_lk_p", "_up", "_up_p", "_del", "_del_p", "_nx", "_nx_p", "_nx0", "_nx0_p",
        "_ld", "_ld_p", "_kaddr", "_upflags", "key_buffer", "value_buffer",
    )  # fmt: skip

    def __init__(self, fd: int | FD, key_size: int, value_size: int):
        self.fd = int(fd)
        self.key_size = key_size
        self.value_size = value_size
        self._kbuf = bytearray(max(key_size, 1))
        self._vbuf = bytearray(max(value_size, 1))
        # staged operands: encoders pack straight into these (see update_staged, lookup_into)
        self.key_buffer, self.value_buffer = self._kbuf, self._vbuf
        self._nbuf = bytearray(max(key_size, 1))
        kc = (ctypes.c_char * len(self._kbuf)).from_buffer(self._kbuf)
        vc = (ctypes.c_char * len(self._vbuf)).from_buffer(self._vbuf)
        nc = (ctypes.c_char * len(self._nbuf)).from_buffer(self._nbuf)
        self._ctypes = (kc, vc, nc)
        self._kmv = memoryview(self._kbuf)[:key_size]
        self._vmv = memoryview(self._vbuf)[:value_size]
        ka = _addressof(kc) if key_size else 0  # queue/stack maps take a NULL key
        self._kaddr = ka
        va, na = _addressof(vc), _addressof(nc)
        fdn = self.fd
        self._lk = A.MapElemAttr(map_fd=fdn, key=ka, value=va)
        self._up = A.MapElemAttr(map_fd=fdn, key=ka, value=va)
        self._upflags = 0
        self._del = A.MapElemAttr(map_fd=fdn, key=ka)
        self._nx = A.MapElemAttr(map_fd=fdn, key=ka, value=na)
        self._nx0 = A.MapElemAttr(map_fd=fdn, key=0, value=na)
        self._ld = A.MapElemAttr(map_fd=fdn, key=ka, value=va)
        vp = ctypes.c_void_p
        self._lk_p = vp(_addressof(self._lk))
        self._up_p = vp(_addressof(self._up))
        self._del_p = vp(_addressof(self._del))
        self._nx_p = vp(_addressof(self._nx))
        self._nx0_p = vp(_addressof(self._nx0))
        self._ld_p = vp(_addressof(self._ld))

    @classmethod
    def for_fd(cls, fd: int | FD) -> MapOps:
        """A MapOps sized from the map's info (per-CPU value buffers included)."""
        info = map_info(fd)
        vs = info.value_size
        if info.type in PERCPU_MAP_TYPES:
            vs = (vs + 7) // 8 * 8 * possible_cpus()
        return cls(fd, info.key_size, vs)

    def _fail(self, cmd: int, attr: Any) -> None:
        err = get_errno()
        if log.isEnabledFor(_DEBUG):
            log.debug("bpf(%s, map_fd=%d) = -1 %s", cmd_name(cmd), self.fd, _errno.errorcode.get(err, err))
        raise SyscallError(err, cmd_name(cmd), errno_hint(err, cmd), detail=f"map fd {self.fd}")

    def _trace(self, cmd: int, key: bytes | None, ret: int) -> None:
        log.debug("bpf(%s, map_fd=%d key=%s) = %d", cmd_name(cmd), self.fd, key.hex() if key else None, ret)

    def lookup(self, key: bytes) -> bytes | None:
        """The value for ``key`` as bytes, or None if absent."""
        self._kmv[:] = key
        if raw_syscall(NR_BPF, 1, self._lk_p, 32) < 0:
            return self._lookup_failed(key)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(1, key, 0)
        return self._vmv.tobytes()

    def _lookup_failed(self, key: bytes) -> bytes | None:
        # always None (absent); typed as lookup's result so lookup can return it directly
        if get_errno() != _errno.ENOENT:
            self._fail(Cmd.MAP_LOOKUP_ELEM, self._lk)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(1, key, -1)
        return None

    def lookup_flags(self, key: bytes, flags: int) -> bytes | None:
        """lookup with flags (BPF_F_LOCK)."""
        self._lk.flags = flags
        try:
            return self.lookup(key)
        finally:
            self._lk.flags = 0

    def lookup_into(self, key: bytes | None) -> memoryview | None:
        """Like lookup, but returns a view of the internal value buffer (valid until the next op).
        ``key`` None: the key is already in ``key_buffer``."""
        if key is not None:
            self._kmv[:] = key
        if raw_syscall(NR_BPF, 1, self._lk_p, 32) < 0:
            if get_errno() == _errno.ENOENT:
                if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
                    self._trace(1, self._kmv.tobytes(), -1)
                return None
            self._fail(Cmd.MAP_LOOKUP_ELEM, self._lk)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(1, self._kmv.tobytes(), 0)
        return self._vmv

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        """Set ``key`` to ``value`` (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK)."""
        self._kmv[:] = key
        self._vmv[:] = value
        if flags != self._upflags:  # a ctypes field store costs more than this compare
            self._up.flags = self._upflags = flags
        if raw_syscall(NR_BPF, 2, self._up_p, 32) < 0:
            self._fail(Cmd.MAP_UPDATE_ELEM, self._up)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(2, key, 0)

    def update_staged(self, key: bytes | None, flags: int = 0) -> None:
        """Set ``key`` to the value already written into ``value_buffer`` (all
        ``value_size`` bytes of it): an encoder packs there, saving a bytes object and a copy.
        ``key`` None: the key is already in ``key_buffer`` too."""
        if key is not None:
            self._kmv[:] = key
        if flags != self._upflags:
            self._up.flags = self._upflags = flags
        if raw_syscall(NR_BPF, 2, self._up_p, 32) < 0:
            self._fail(Cmd.MAP_UPDATE_ELEM, self._up)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(2, self._kmv.tobytes(), 0)

    def push(self, value: bytes, flags: int = 0) -> None:
        """Queue/stack push (an update with a NULL key)."""
        self._vmv[:] = value
        self._up.key = 0
        self._up.flags = self._upflags = flags
        try:
            if raw_syscall(NR_BPF, 2, self._up_p, 32) < 0:
                self._fail(Cmd.MAP_UPDATE_ELEM, self._up)
        finally:
            self._up.key = self._kaddr
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(2, None, 0)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was absent."""
        self._kmv[:] = key
        if raw_syscall(NR_BPF, 3, self._del_p, 32) < 0:
            if get_errno() == _errno.ENOENT:
                if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
                    self._trace(3, key, -1)
                return False
            self._fail(Cmd.MAP_DELETE_ELEM, self._del)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(3, key, 0)
        return True

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after ``key`` (the first key when None), or None at the end."""
        if key is None:
            ret = raw_syscall(NR_BPF, 4, self._nx0_p, 32)
        else:
            self._kmv[:] = key
            ret = raw_syscall(NR_BPF, 4, self._nx_p, 32)
        if ret < 0:
            if get_errno() == _errno.ENOENT:
                return None
            self._fail(Cmd.MAP_GET_NEXT_KEY, self._nx)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(4, key, ret)
        return bytes(self._nbuf[: self.key_size])

    def keys(self) -> Iterator[bytes]:
        """Iterate keys with GET_NEXT_KEY (a concurrent delete may restart a hash walk, as in the kernel)."""
        k = self.next_key(None)
        while k is not None:
            yield k
            k = self.next_key(k)

    def lookup_and_delete(self, key: bytes | None = None, flags: int = 0) -> bytes | None:
        """LOOKUP_AND_DELETE_ELEM; with key None it pops a queue/stack. None if absent/empty."""
        ld = self._ld
        if key is None or not self.key_size:
            ld.key = 0
        else:
            self._kmv[:] = key
            ld.key = self._kaddr
        ld.flags = flags
        if raw_syscall(NR_BPF, 21, self._ld_p, 32) < 0:
            if get_errno() == _errno.ENOENT:
                return None
            self._fail(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, ld)
        if "logging" in _modules and _nodebug(_DEBUG, True) and _debug_on(_DEBUG):
            self._trace(21, key, 0)
        return self._vmv.tobytes()

    def freeze(self) -> None:
        """BPF_MAP_FREEZE."""
        map_freeze(self.fd)

    # --- batch ops (BPF_MAP_*_BATCH) ---

    def _batch(self, cmd: int, in_batch: bytes | None, keys: Any, values: Any, count: int,
               elem_flags: int, token_size: int) -> tuple[int, int, Any]:
        ib, ia = _buf(in_batch)
        ob, oa = _out(token_size)
        a = A.BatchAttr(in_batch=ia, out_batch=oa, keys=_addressof(keys) if keys is not None else 0,
                        values=_addressof(values) if values is not None else 0, count=count,
                        map_fd=self.fd, elem_flags=elem_flags)
        ret, err = bpf_errno(cmd, a, A.BatchAttr.SIZE)
        return a.count, err if ret < 0 else 0, ob

    def _token_size(self) -> int:
        # Hash maps use a 4-byte bucket cursor, arrays a key; room for both.
        return max(self.key_size, 8)

    def lookup_batch(
        self, cursor: bytes | None, count: int, *, delete: bool = False, elem_flags: int = 0
    ) -> tuple[int, bytes, bytes, bytes | None]:
        """LOOKUP_BATCH (or LOOKUP_AND_DELETE_BATCH): (n, keys, values, next_cursor).

        ``keys``/``values`` hold ``n`` records back to back. ``next_cursor`` is None
        when the walk is complete. ENOSPC means one bucket holds more than ``count``
        entries: retry with a larger count.
        """
        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        ks, vs = max(self.key_size, 1), max(self.value_size, 1)
        kb = (ctypes.c_char * (ks * count))()
        vb = (ctypes.c_char * (vs * count))()
        n, err, ob = self._batch(cmd, cursor, kb, vb, count, elem_flags, self._token_size())
        if err and err != _errno.ENOENT:
            raise SyscallError(err, cmd_name(cmd), _batch_hint(err, cmd), detail=f"map fd {self.fd}")
        nxt = None if err == _errno.ENOENT else ob.raw
        return n, kb.raw[: n * ks], vb.raw[: n * vs], nxt

    def iter_batches(self, count: int = 256, *, delete: bool = False) -> Iterator[tuple[bytes, bytes, int]]:
        """Walk the whole map in batches: yields (keys, values, n); grows ``count`` on ENOSPC."""
        cursor: bytes | None = None
        while True:
            try:
                n, keys, values, cursor = self.lookup_batch(cursor, count, delete=delete)
            except SyscallError as e:
                if e.errno == _errno.ENOSPC and count < (1 << 24):
                    count *= 2
                    continue
                raise
            if n:
                yield keys, values, n
            if cursor is None:
                return

    def update_batch(self, keys: bytes, values: bytes, count: int | None = None, *, elem_flags: int = 0) -> int:
        """UPDATE_BATCH of ``count`` records packed back to back; returns how many were written."""
        ks = max(self.key_size, 1)
        n = len(keys) // ks if count is None else count
        kb, _ = _buf(keys)
        vb, _ = _buf(values)
        done, err, _ = self._batch(Cmd.MAP_UPDATE_BATCH, None, kb, vb, n, elem_flags, 0)
        if err:
            raise SyscallError(err, "BPF_MAP_UPDATE_BATCH", _batch_hint(err, Cmd.MAP_UPDATE_BATCH),
                               detail=f"map fd {self.fd}, {done} of {n} written")
        return done

    def delete_batch(self, keys: bytes, count: int | None = None, *, elem_flags: int = 0) -> int:
        """DELETE_BATCH of ``count`` keys packed back to back; returns how many were deleted."""
        ks = max(self.key_size, 1)
        n = len(keys) // ks if count is None else count
        kb, _ = _buf(keys)
        done, err, _ = self._batch(Cmd.MAP_DELETE_BATCH, None, kb, None, n, elem_flags, 0)
        if err:
            raise SyscallError(err, "BPF_MAP_DELETE_BATCH", _batch_hint(err, Cmd.MAP_DELETE_BATCH),
                               detail=f"map fd {self.fd}, {done} of {n} deleted")
        return done

    def __repr__(self) -> str:
        return f"<MapOps fd={self.fd} key_size={self.key_size} value_size={self.value_size}>"


def _batch_hint(err: int, cmd: int) -> str:
    if err == _errno.EINVAL:
        return "batch ops are not supported for this map type, or flags are invalid"
    if err == _errno.ENOSPC and cmd in (Cmd.MAP_LOOKUP_BATCH, Cmd.MAP_LOOKUP_AND_DELETE_BATCH):
        return "a hash bucket holds more entries than the batch count: retry with a larger count"
    return errno_hint(err, cmd)


# --- programs ------------------------------------------------------------------------------

_TRAMPOLINE_ATTACH = {AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT, AttachType.MODIFY_RETURN,
                      AttachType.TRACE_FSESSION, AttachType.LSM_MAC, AttachType.LSM_CGROUP}

TRAMPOLINE_HINT = (
    "this kernel refuses BPF trampoline programs (fentry/fexit/fmod_ret/lsm/freplace): "
    "BPF_PROG_LOAD fails with EPERM before verification even as root; use tracepoint, "
    "raw_tp or tp_btf programs instead"
)


def is_trampoline(prog_type: int, expected_attach_type: int) -> bool:
    """Whether loading this program needs a BPF trampoline (fentry/fexit/fmod_ret/lsm/freplace)."""
    if prog_type in (ProgType.EXT, ProgType.LSM):
        return True
    return prog_type == ProgType.TRACING and expected_attach_type in _TRAMPOLINE_ATTACH


def prog_load_hint(err: int, prog_type: int, expected_attach_type: int) -> str:
    """errno hint for BPF_PROG_LOAD, aware of trampoline program types."""
    if err == _errno.EPERM and is_trampoline(prog_type, expected_attach_type):
        return TRAMPOLINE_HINT + "; otherwise " + PERM_HINT
    if err == _errno.EINVAL and prog_type == ProgType.NETFILTER and expected_attach_type != AttachType.NETFILTER:
        return "netfilter programs need expected_attach_type=BPF_NETFILTER"
    return errno_hint(err, Cmd.PROG_LOAD)


_INSN_LINE = re.compile(r"^(\d+): \([0-9a-f]{2}\)", re.M)
_POISON_CALL = re.compile(r"^(\d+): \(85\) call unknown#(\d+)\s*$", re.M)
CORE_POISON_IMM = 0xBAD2310
MAP_POISON_BASE = 2001000000
KFUNC_POISON_BASE = 2002000000


def failed_insn_index(log: str) -> int | None:
    """The index of the last instruction the verifier printed (where it stopped)."""
    last = None
    for m in _INSN_LINE.finditer(log):
        last = m
    return int(last.group(1)) if last else None


def poisoned_calls(log: str) -> list[tuple[int, int]]:
    """(insn_index, imm) of poisoned calls the verifier tripped over ("call unknown#N")."""
    return [(int(m.group(1)), int(m.group(2))) for m in _POISON_CALL.finditer(log)]


def explain_log(log: str, explain: Callable[[int, int], str | None] | None = None) -> list[str]:
    """Plain-words notes for poisoned CO-RE relocations, map loads and kfunc calls in a log.

    ``explain(insn_index, imm)`` lets the loader give a precise note (e.g. which CO-RE
    relocation failed and why); generic words are used where it returns None.
    """
    notes = []
    for idx, imm in poisoned_calls(log):
        note = explain(idx, imm) if explain is not None else None
        if note:
            notes.append(note)
        elif imm == CORE_POISON_IMM:
            notes.append(
                f"instruction {idx} is a poisoned CO-RE relocation: the field or type it "
                "refers to does not exist in this kernel's BTF, and the code path using it was not "
                "guarded by bpf_core_field_exists()/bpf_core_type_exists()"
            )
        elif MAP_POISON_BASE <= imm < MAP_POISON_BASE + 1_000_000:
            notes.append(
                f"instruction {idx} references map #{imm - MAP_POISON_BASE}, which was not created "
                "(autocreate disabled?)"
            )
        elif KFUNC_POISON_BASE <= imm < KFUNC_POISON_BASE + 1_000_000:
            notes.append(
                f"instruction {idx} calls kfunc extern #{imm - KFUNC_POISON_BASE}, which this kernel "
                "does not provide (declare it __weak and check bpf_ksym_exists() to make it optional)"
            )
    return notes


class ProgLoadResult(Record):
    """A loaded program's FD and the verifier log (empty unless a log level was requested)."""

    fd: FD
    log: str
    log_true_size: int

    def __init__(self, fd: FD, log: str, log_true_size: int) -> None:
        self.fd = fd
        self.log = log
        self.log_true_size = log_true_size


_LOG_START = 64 * 1024
_LOG_MAX = (1 << 32) - 1 >> 2  # the kernel's limit on log_size


def prog_load_with_log(
    prog_type: int,
    insns: bytes | bytearray | memoryview,
    license: str = "GPL",
    *,
    name: str | bytes = "",
    expected_attach_type: int = 0,
    prog_flags: int = 0,
    kern_version: int = 0,
    prog_btf_fd: int | FD | None = None,
    func_info: bytes = b"",
    func_info_rec_size: int = 0,
    line_info: bytes = b"",
    line_info_rec_size: int = 0,
    attach_btf_id: int = 0,
    attach_btf_obj_fd: int | FD | None = None,
    attach_prog_fd: int | FD | None = None,
    fd_array: Sequence[int] | None = None,
    core_relos: bytes = b"",
    core_relo_rec_size: int = 0,
    ifindex: int = 0,
    token_fd: int | FD | None = None,
    log_level: int = 0,
    log_size: int = 0,
    explain: Callable[[int, int], str | None] | None = None,
    source_line: Callable[[int], str | None] | None = None,
) -> ProgLoadResult:
    """BPF_PROG_LOAD with a verifier log that is never truncated.

    With ``log_level`` 0 the first attempt has no log; on failure it retries at
    level 1 (as libbpf does). On ENOSPC the buffer grows to ``log_true_size``.
    Raises VerifierError (with the complete log) or SyscallError. ``explain`` and
    ``source_line`` let the loader add words for poisoned calls (see :func:`explain_log`)
    and map the failing instruction index to a C source line (from line_info).
    """
    if len(insns) % 8 or not insns:
        raise OptionError("insns must be a non-empty multiple of 8 bytes")
    ib, ia = _buf(insns)
    lic = license.encode() + b"\0"
    lb, la = _buf(lic)
    fib, fia = _buf(func_info)
    lib_, lia = _buf(line_info)
    crb, cra = _buf(core_relos)
    fda = None
    if fd_array:
        fda = (ctypes.c_int32 * len(fd_array))(*[int(x) for x in fd_array])
    a = A.ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(insns) // 8,
        insns=ia,
        license=la,
        kern_version=kern_version,
        prog_flags=prog_flags,
        prog_name=_name16(name),
        prog_ifindex=ifindex,
        expected_attach_type=expected_attach_type,
        prog_btf_fd=_fdnum(prog_btf_fd),
        func_info_rec_size=func_info_rec_size if func_info else 0,
        func_info=fia,
        func_info_cnt=len(func_info) // func_info_rec_size if func_info else 0,
        line_info_rec_size=line_info_rec_size if line_info else 0,
        line_info=lia,
        line_info_cnt=len(line_info) // line_info_rec_size if line_info else 0,
        attach_btf_id=attach_btf_id,
        attach_prog_fd=_fdnum(attach_prog_fd) or _fdnum(attach_btf_obj_fd),
        core_relo_cnt=len(core_relos) // core_relo_rec_size if core_relos else 0,
        fd_array=_addressof(fda) if fda is not None else 0,
        core_relos=cra,
        core_relo_rec_size=core_relo_rec_size if core_relos else 0,
        prog_token_fd=_fdnum(token_fd),
    )
    if token_fd is not None:
        a.prog_flags |= 1 << 16  # BPF_F_TOKEN_FD
    level = log_level
    size = max(log_size, 128) if log_size else _LOG_START
    again_left = 5
    pname = a.prog_name.decode("latin-1")
    while True:
        logbuf = None
        if level:
            logbuf = (ctypes.c_char * size)()
            a.log_level, a.log_size, a.log_buf = level, size, _addressof(logbuf)
        else:
            a.log_level = a.log_size = a.log_buf = 0
        a.log_true_size = 0
        ret, err = bpf_errno(Cmd.PROG_LOAD, a, A.ProgLoadAttr.SIZE)
        text = logbuf.value.decode("utf-8", "replace") if logbuf is not None else ""
        if ret >= 0:
            return ProgLoadResult(FD(ret, "prog"), text, a.log_true_size or len(text) + 1 if level else 0)
        if err == _errno.EAGAIN and again_left:  # the kernel asks to retry (libbpf retries 5 times)
            again_left -= 1
            continue
        if level == 0:
            level = 1
            continue
        if err == _errno.ENOSPC and size < _LOG_MAX:
            need = a.log_true_size
            size = min(max(need, size * 2) if need <= size else need, _LOG_MAX)
            continue
        hint = prog_load_hint(err, prog_type, expected_attach_type)
        if text:
            idx = failed_insn_index(text)
            src = source_line(idx) if source_line is not None and idx is not None else None
            raise VerifierError(
                err, "BPF_PROG_LOAD", hint, log=text, log_true_size=a.log_true_size or None,
                insn_index=idx, source_line=src, program=pname or None,
                notes=explain_log(text, explain),
            )
        raise SyscallError(err, "BPF_PROG_LOAD", hint, detail=pname)


def prog_load(prog_type: int, insns: bytes | bytearray | memoryview, license: str = "GPL", **kw: Any) -> FD:
    """BPF_PROG_LOAD; returns the program's FD. See :func:`prog_load_with_log` for options."""
    return prog_load_with_log(prog_type, insns, license, **kw).fd


def btf_load(data: bytes, *, log_level: int = 0, log_size: int = 0, flags: int = 0,
             token_fd: int | FD | None = None) -> FD:
    """BPF_BTF_LOAD; on failure retries with a log and raises VerifierError carrying it."""
    db, da = _buf(data)
    a = A.BtfLoadAttr(btf=da, btf_size=len(data), btf_flags=flags, btf_token_fd=_fdnum(token_fd))
    if token_fd is not None:
        a.btf_flags |= 1 << 16  # BPF_F_TOKEN_FD
    level = log_level
    size = max(log_size, 128) if log_size else _LOG_START
    while True:
        logbuf = None
        if level:
            logbuf = (ctypes.c_char * size)()
            a.btf_log_level, a.btf_log_size, a.btf_log_buf = level, size, _addressof(logbuf)
        else:
            a.btf_log_level = a.btf_log_size = a.btf_log_buf = 0
        a.btf_log_true_size = 0
        ret, err = bpf_errno(Cmd.BTF_LOAD, a, A.BtfLoadAttr.SIZE)
        if ret >= 0:
            return FD(ret, "btf")
        if level == 0:
            level = 1
            continue
        if err == _errno.ENOSPC and size < _LOG_MAX:
            need = a.btf_log_true_size
            size = min(need if need > size else size * 2, _LOG_MAX)
            continue
        text = logbuf.value.decode("utf-8", "replace") if logbuf is not None else ""
        hint = errno_hint(err, Cmd.BTF_LOAD)
        if text:
            raise VerifierError(err, "BPF_BTF_LOAD", "the kernel's BTF checker rejected the BTF blob",
                                log=text, log_true_size=a.btf_log_true_size or None)
        raise SyscallError(err, "BPF_BTF_LOAD", hint)


def prog_test_run(
    prog_fd: int | FD,
    *,
    data_in: bytes = b"",
    data_size_out: int = 0,
    ctx_in: bytes = b"",
    ctx_size_out: int = 0,
    repeat: int = 0,
    flags: int = 0,
    cpu: int = 0,
    batch_size: int = 0,
) -> tuple[int, int, bytes, bytes]:
    """BPF_PROG_TEST_RUN: (retval, duration_ns, data_out, ctx_out)."""
    dib, dia = _buf(data_in)
    dob, doa = _out(data_size_out) if data_size_out else (None, 0)
    cib, cia = _buf(ctx_in)
    cob, coa = _out(ctx_size_out) if ctx_size_out else (None, 0)
    a = A.TestRunAttr(
        prog_fd=int(prog_fd), data_size_in=len(data_in), data_size_out=data_size_out, data_in=dia,
        data_out=doa, repeat=repeat, ctx_size_in=len(ctx_in), ctx_size_out=ctx_size_out,
        ctx_in=cia, ctx_out=coa, flags=flags, cpu=cpu, batch_size=batch_size,
    )
    bpf(Cmd.PROG_TEST_RUN, a, A.TestRunAttr.SIZE)
    dout = dob.raw[: a.data_size_out] if dob is not None else b""
    cout = cob.raw[: a.ctx_size_out] if cob is not None else b""
    return a.retval, a.duration, dout, cout


# --- objects: pin, ids, info ------------------------------------------------------------------


def obj_pin(fd: int | FD, path: str, *, path_fd: int | None = None) -> None:
    """BPF_OBJ_PIN ``fd`` at ``path`` on a bpffs."""
    pb, pa = _buf(os.fsencode(path) + b"\0")
    a = A.ObjPinAttr(pathname=pa, bpf_fd=int(fd))
    if path_fd is not None:
        a.path_fd, a.file_flags = path_fd, 1 << 14  # BPF_F_PATH_FD
    try:
        bpf(Cmd.OBJ_PIN, a, A.ObjPinAttr.SIZE, detail=path)
    except SyscallError as e:
        _bpffs_hint(e, path)
        raise


def obj_get(path: str, flags: int = 0, *, path_fd: int | None = None, kind: str = "pinned") -> FD:
    """BPF_OBJ_GET: open the object pinned at ``path`` (flags: BPF_F_RDONLY/BPF_F_WRONLY)."""
    pb, pa = _buf(os.fsencode(path) + b"\0")
    a = A.ObjPinAttr(pathname=pa, file_flags=flags)
    if path_fd is not None:
        a.path_fd = path_fd
        a.file_flags |= 1 << 14
    try:
        return FD(bpf(Cmd.OBJ_GET, a, A.ObjPinAttr.SIZE, detail=path), kind)
    except SyscallError as e:
        _bpffs_hint(e, path)
        raise


def _bpffs_hint(e: SyscallError, path: str) -> None:
    from .perf import bpffs_problem

    problem = bpffs_problem(path)
    if problem:
        e.hint = problem


def get_next_id(cmd: int, start_id: int) -> int | None:
    """PROG/MAP/LINK/BTF_GET_NEXT_ID: the next id after ``start_id``, or None at the end."""
    a = A.GetIdAttr(start_id=start_id)
    ret, err = bpf_errno(cmd, a, A.GetIdAttr.SIZE)
    if ret < 0:
        if err == _errno.ENOENT:
            return None
        raise SyscallError(err, cmd_name(cmd), errno_hint(err, cmd))
    next_id: int = a.next_id
    return next_id


def _fd_by_id(cmd: int, obj_id: int, open_flags: int, kind: str, token_fd: int | FD | None) -> FD:
    a = A.GetIdAttr(start_id=obj_id, open_flags=open_flags, fd_by_id_token_fd=_fdnum(token_fd))
    if token_fd is not None:
        a.open_flags |= 1 << 16
    return FD(bpf(cmd, a, A.GetIdAttr.SIZE, detail=f"id {obj_id}"), kind)


def prog_get_fd_by_id(prog_id: int, *, token_fd: int | FD | None = None) -> FD:
    return _fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id, 0, "prog", token_fd)


def map_get_fd_by_id(map_id: int, open_flags: int = 0, *, token_fd: int | FD | None = None) -> FD:
    return _fd_by_id(Cmd.MAP_GET_FD_BY_ID, map_id, open_flags, "map", token_fd)


def link_get_fd_by_id(link_id: int, *, token_fd: int | FD | None = None) -> FD:
    return _fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id, 0, "link", token_fd)


def btf_get_fd_by_id(btf_id: int, *, token_fd: int | FD | None = None) -> FD:
    return _fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id, 0, "btf", token_fd)


def obj_get_info_by_fd(fd: int | FD, info: ctypes.Structure) -> ctypes.Structure:
    """BPF_OBJ_GET_INFO_BY_FD into ``info`` (a ProgInfo/MapInfo/LinkInfo/BtfInfo); returns it.

    Pointer fields set in ``info`` (e.g. map_ids with nr_map_ids) are filled by the kernel.
    """
    a = A.InfoAttr(bpf_fd=int(fd), info_len=ctypes.sizeof(info), info=_addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, a, A.InfoAttr.SIZE)
    return info


def prog_info(fd: int | FD) -> A.ProgInfo:
    return obj_get_info_by_fd(fd, A.ProgInfo())  # type: ignore[return-value]


def map_info(fd: int | FD) -> A.MapInfo:
    return obj_get_info_by_fd(fd, A.MapInfo())  # type: ignore[return-value]


def link_info(fd: int | FD) -> A.LinkInfo:
    return obj_get_info_by_fd(fd, A.LinkInfo())  # type: ignore[return-value]


def btf_info(fd: int | FD) -> A.BtfInfo:
    return obj_get_info_by_fd(fd, A.BtfInfo())  # type: ignore[return-value]


def prog_map_ids(fd: int | FD) -> list[int]:
    """Ids of the maps a loaded program uses."""
    n = prog_info(fd).nr_map_ids
    if not n:
        return []
    ids = (ctypes.c_uint32 * n)()
    info = A.ProgInfo(nr_map_ids=n, map_ids=_addressof(ids))
    obj_get_info_by_fd(fd, info)
    return list(ids[: min(n, info.nr_map_ids)])


def prog_xlated_insns(fd: int | FD) -> bytes:
    """The program's instructions as the kernel rewrote them (needs CAP_SYS_ADMIN; may be empty)."""
    n = prog_info(fd).xlated_prog_len
    if not n:
        return b""
    buf = (ctypes.c_char * n)()
    info = A.ProgInfo(xlated_prog_len=n, xlated_prog_insns=_addressof(buf))
    obj_get_info_by_fd(fd, info)
    raw: bytes = buf.raw[: info.xlated_prog_len]
    return raw


def btf_data(fd: int | FD) -> bytes:
    """The raw BTF blob behind a BTF fd."""
    n = btf_info(fd).btf_size
    buf = (ctypes.c_char * max(n, 1))()
    info = A.BtfInfo(btf=_addressof(buf), btf_size=n)
    obj_get_info_by_fd(fd, info)
    raw: bytes = buf.raw[: info.btf_size]
    return raw


# --- attach, links ---------------------------------------------------------------------------


def prog_attach(prog_fd: int | FD, target_fd: int | FD, attach_type: int, flags: int = 0, *,
                replace_prog_fd: int | FD | None = None, relative_fd: int = 0,
                expected_revision: int = 0) -> None:
    """BPF_PROG_ATTACH (cgroup, sockmap, flow dissector, tcx mprog, ...)."""
    a = A.ProgAttachAttr(target_fd=int(target_fd), attach_bpf_fd=int(prog_fd), attach_type=attach_type,
                         attach_flags=flags, replace_bpf_fd=_fdnum(replace_prog_fd),
                         relative_fd=relative_fd, expected_revision=expected_revision)
    bpf(Cmd.PROG_ATTACH, a, A.ProgAttachAttr.SIZE)


def prog_detach(target_fd: int | FD, attach_type: int, prog_fd: int | FD | None = None, *,
                flags: int = 0) -> None:
    """BPF_PROG_DETACH."""
    a = A.ProgAttachAttr(target_fd=int(target_fd), attach_bpf_fd=_fdnum(prog_fd),
                         attach_type=attach_type, attach_flags=flags)
    bpf(Cmd.PROG_DETACH, a, A.ProgAttachAttr.SIZE)


def prog_query(target_fd: int | FD, attach_type: int, *, query_flags: int = 0,
               max_progs: int = 64) -> tuple[list[int], int, int]:
    """BPF_PROG_QUERY: (prog_ids, attach_flags, revision)."""
    ids = (ctypes.c_uint32 * max_progs)()
    a = A.ProgQueryAttr(target_fd=int(target_fd), attach_type=attach_type, query_flags=query_flags,
                        prog_ids=_addressof(ids), prog_cnt=max_progs)
    bpf(Cmd.PROG_QUERY, a, A.ProgQueryAttr.SIZE)
    return list(ids[: min(a.prog_cnt, max_progs)]), a.attach_flags, a.revision


def raw_tracepoint_open(name: str | None, prog_fd: int | FD, cookie: int = 0) -> FD:
    """BPF_RAW_TRACEPOINT_OPEN (name None for tp_btf programs); returns the link FD."""
    nb, na = _buf(name.encode() + b"\0") if name else (None, 0)
    a = A.RawTracepointAttr(name=na, prog_fd=int(prog_fd), cookie=cookie)
    size = A.RawTracepointAttr.SIZE if cookie else _end_of(A.RawTracepointAttr, "prog_fd")
    return FD(bpf(Cmd.RAW_TRACEPOINT_OPEN, a, size, detail=name or ""), "link")


def link_create(
    prog_fd: int | FD,
    target_fd: int | FD | None,
    attach_type: int,
    flags: int = 0,
    *,
    target_btf_id: int = 0,
    iter_info: bytes = b"",
    perf_event_cookie: int | None = None,
    tracing_cookie: int | None = None,
    kprobe_multi: dict[str, Any] | None = None,
    uprobe_multi: dict[str, Any] | None = None,
    netfilter: tuple[int, int, int, int] | None = None,
    relative_fd: int = 0,
    expected_revision: int = 0,
) -> FD:
    """BPF_LINK_CREATE; returns the link FD. The attr tail is sized for the attach kind used.

    ``kprobe_multi``: dict(flags, syms: list[str] | addrs: list[int], cookies).
    ``uprobe_multi``: dict(path, offsets, ref_ctr_offsets, cookies, flags, pid).
    ``netfilter``: (pf, hooknum, priority, flags). ``relative_fd``/``expected_revision``
    for tcx/netkit/cgroup mprog links.
    """
    a = A.LinkCreateAttr(prog_fd=int(prog_fd), target_fd=_fdnum(target_fd), attach_type=attach_type,
                         flags=flags)
    tail = b""
    keep: list[Any] = []
    if iter_info:
        ib, ia = _buf(iter_info)
        keep.append(ib)
        tail = ia.to_bytes(8, "little") + len(iter_info).to_bytes(4, "little")
    elif perf_event_cookie is not None:
        tail = perf_event_cookie.to_bytes(8, "little")
    elif tracing_cookie is not None:
        tail = target_btf_id.to_bytes(4, "little") + b"\0" * 4 + tracing_cookie.to_bytes(8, "little")
    elif target_btf_id:
        tail = target_btf_id.to_bytes(4, "little")
    elif kprobe_multi is not None:
        syms = kprobe_multi.get("syms") or []
        addrs = kprobe_multi.get("addrs") or []
        cookies = kprobe_multi.get("cookies") or []
        cnt = len(syms) or len(addrs)
        sa = aa = ca = 0
        if syms:
            strs = [ctypes.create_string_buffer(s.encode()) for s in syms]
            keep.append(strs)
            arr = (ctypes.c_void_p * cnt)(*[_addressof(s) for s in strs])
            keep.append(arr)
            sa = _addressof(arr)
        if addrs:
            arr2 = (ctypes.c_uint64 * cnt)(*addrs)
            keep.append(arr2)
            aa = _addressof(arr2)
        if cookies:
            arr3 = (ctypes.c_uint64 * cnt)(*cookies)
            keep.append(arr3)
            ca = _addressof(arr3)
        tail = (int(kprobe_multi.get("flags", 0)).to_bytes(4, "little") + cnt.to_bytes(4, "little")
                + sa.to_bytes(8, "little") + aa.to_bytes(8, "little") + ca.to_bytes(8, "little"))
    elif uprobe_multi is not None:
        path = uprobe_multi["path"]
        offsets = list(uprobe_multi["offsets"])
        cnt = len(offsets)
        pb, pa = _buf(os.fsencode(path) + b"\0")
        keep.append(pb)

        def arr64(vals: Sequence[int] | None) -> int:
            if not vals:
                return 0
            arr = (ctypes.c_uint64 * cnt)(*vals)
            keep.append(arr)
            return _addressof(arr)

        tail = (pa.to_bytes(8, "little") + arr64(offsets).to_bytes(8, "little")
                + arr64(uprobe_multi.get("ref_ctr_offsets")).to_bytes(8, "little")
                + arr64(uprobe_multi.get("cookies")).to_bytes(8, "little")
                + cnt.to_bytes(4, "little") + int(uprobe_multi.get("flags", 0)).to_bytes(4, "little")
                + int(uprobe_multi.get("pid", 0)).to_bytes(4, "little"))
    elif netfilter is not None:
        pf, hook, prio, nfflags = netfilter
        tail = (pf.to_bytes(4, "little") + hook.to_bytes(4, "little")
                + prio.to_bytes(4, "little", signed=True) + nfflags.to_bytes(4, "little"))
    elif relative_fd or expected_revision:
        tail = relative_fd.to_bytes(4, "little") + b"\0" * 4 + expected_revision.to_bytes(8, "little")
    ctypes.memmove(a.extra, tail, len(tail))
    size = A.LinkCreateAttr.SIZE + len(tail)
    ret, err = bpf_errno(Cmd.LINK_CREATE, a, size)
    if ret < 0:
        hint = errno_hint(err, Cmd.LINK_CREATE)
        if err == _errno.EINVAL and attach_type == AttachType.TRACE_RAW_TP:
            hint += " (for raw_tp programs use BPF_RAW_TRACEPOINT_OPEN)"
        elif err == _errno.EOPNOTSUPP and attach_type == AttachType.TRACE_KPROBE_MULTI:
            hint = "this kernel cannot attach kprobe_multi links (no fprobe support)"
        elif err == _errno.EBADF:
            hint = "the target fd (perf event, cgroup, map, ...) or program fd is not open"
        raise SyscallError(err, "BPF_LINK_CREATE", hint, detail=f"attach type {attach_type}")
    return FD(ret, "link")


def link_update(link_fd: int | FD, new_prog_fd: int | FD, *, old_prog_fd: int | FD | None = None,
                flags: int = 0) -> None:
    """BPF_LINK_UPDATE: swap the link's program (BPF_F_REPLACE with old_prog_fd)."""
    a = A.LinkUpdateAttr(link_fd=int(link_fd), new_prog_fd=int(new_prog_fd), flags=flags,
                         old_prog_fd=_fdnum(old_prog_fd))
    if old_prog_fd is not None:
        a.flags |= 1 << 2  # BPF_F_REPLACE
    bpf(Cmd.LINK_UPDATE, a, A.LinkUpdateAttr.SIZE)


def link_detach(link_fd: int | FD) -> None:
    """BPF_LINK_DETACH: detach now; the fd stays open (and defunct)."""
    bpf(Cmd.LINK_DETACH, A.LinkDetachAttr(link_fd=int(link_fd)), A.LinkDetachAttr.SIZE)


def iter_create(link_fd: int | FD, flags: int = 0) -> FD:
    """BPF_ITER_CREATE: a readable fd producing the iterator's output."""
    return FD(bpf(Cmd.ITER_CREATE, A.IterCreateAttr(link_fd=int(link_fd), flags=flags),
                  A.IterCreateAttr.SIZE), "iter")


def enable_stats(stats_type: int = 0) -> FD:
    """BPF_ENABLE_STATS (0 = BPF_STATS_RUN_TIME); stats stay on while the FD is open."""
    return FD(bpf(Cmd.ENABLE_STATS, A.EnableStatsAttr(type=stats_type), A.EnableStatsAttr.SIZE), "stats")


def prog_bind_map(prog_fd: int | FD, map_fd: int | FD, flags: int = 0) -> None:
    """BPF_PROG_BIND_MAP: keep ``map_fd`` alive as long as the program."""
    bpf(Cmd.PROG_BIND_MAP, A.ProgBindMapAttr(prog_fd=int(prog_fd), map_fd=int(map_fd), flags=flags),
        A.ProgBindMapAttr.SIZE)


def token_create(bpffs_fd: int | FD, flags: int = 0) -> FD:
    """BPF_TOKEN_CREATE from an fd of a delegating bpffs mount."""
    return FD(bpf(Cmd.TOKEN_CREATE, A.TokenCreateAttr(flags=flags, bpffs_fd=int(bpffs_fd)),
                  A.TokenCreateAttr.SIZE), "token")


def prog_stream_read(prog_fd: int | FD, stream_id: int = 2, size: int = 4096) -> bytes:
    """BPF_PROG_STREAM_READ_BY_FD: up to ``size`` bytes of a program's stream (1 stdout, 2 stderr)."""
    buf = (ctypes.c_char * size)()
    a = A.ProgStreamReadAttr(stream_buf=_addressof(buf), stream_buf_len=size, stream_id=stream_id,
                             prog_fd=int(prog_fd))
    n = bpf(Cmd.PROG_STREAM_READ_BY_FD, a, A.ProgStreamReadAttr.SIZE)
    return buf.raw[:n]


def task_fd_query(pid: int, fd: int, flags: int = 0, buf_len: int = 256) -> dict[str, Any]:
    """BPF_TASK_FD_QUERY: what a perf/raw-tp fd of task ``pid`` has attached."""
    buf = (ctypes.c_char * buf_len)()
    a = A.TaskFdQueryAttr(pid=pid, fd=fd, flags=flags, buf_len=buf_len, buf=_addressof(buf))
    bpf(Cmd.TASK_FD_QUERY, a, A.TaskFdQueryAttr.SIZE)
    return {"prog_id": a.prog_id, "fd_type": a.fd_type, "name": buf.value.decode("latin-1"),
            "probe_offset": a.probe_offset, "probe_addr": a.probe_addr}
