"""Batch walks of a map (BPF_MAP_LOOKUP_BATCH and BPF_MAP_LOOKUP_AND_DELETE_BATCH):
preallocated buffers, and for big maps a helper thread that reads while the caller decodes."""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._log import DEBUG
from ..errors import SyscallError

if TYPE_CHECKING:
    import threading

    from ..sys.bpf import MapOps
    from ..sys.fd import FD

__all__ = ["PIPELINE_MIN", "BatchBuffers", "BatchOpsMixin"]

# errnos meaning "this map kind has no batch ops" (524 is the kernel-internal ENOTSUPP)
NO_BATCH = frozenset({_errno.EINVAL, 524, _errno.EOPNOTSUPP})

# Maps of at least this many entries are dumped in chunks by a helper thread while this
# thread decodes the chunks already read (the bpf() call releases the GIL, so the
# kernel's copying and Python's decoding overlap on two CPUs).
PIPELINE_MIN = 32768
_PIPELINE_CHUNKS = 8


def _trace_batch(cmd: int, fd: int, n: int, err: int) -> None:
    """The pyebpf.sys DEBUG line of one batch walk syscall (made outside sys.bpf for speed)."""
    from ..sys.syscall import cmd_name, log

    if log.isEnabledFor(DEBUG):
        res = f"-1 {_errno.errorcode.get(err, err)}" if err else "0"
        log.debug("bpf(%s, map_fd=%d) = %s, count=%d", cmd_name(cmd), fd, res, n)


class BatchBuffers:
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
        self.capacity = count + self.chunk if whole and count >= PIPELINE_MIN else count
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


_BatchBuffers = BatchBuffers  # old private name


class BatchOpsMixin:
    """Map's whole-map operations by batch syscalls (a key walk where the kernel has none)."""

    if TYPE_CHECKING:  # provided by Map
        name: str
        fd: FD
        key_size: int
        value_size: int
        max_entries: int
        percpu: bool
        key_codec: Any
        value_codec: Any
        _tl: threading.local
        _stride: int
        _ncpus: int

        @property
        def ops(self) -> MapOps: ...
        def encode_key(self, key: Any) -> bytes: ...
        def encode_value(self, value: Any) -> bytes: ...
        def decode_key(self, raw: bytes) -> Any: ...
        def decode_value(self, raw: bytes | memoryview) -> Any: ...
        def _walk(self, raw: bool) -> Iterator[tuple[Any, Any]]: ...
        def update(self, key: Any, value: Any, flags: int = 0) -> None: ...
        def delete(self, key: Any) -> bool: ...

    # IndexedMap: keys are 4-byte indexes (decoded in bulk without BTF)
    _indexed = False

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
            bufs = tl.batch = BatchBuffers(int(self.fd), self.key_size,
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
            if e.errno in NO_BATCH and not out:
                self._batchable = False
                return None
            raise
        return out

    def _decode_keys(self, buf: memoryview, n: int) -> Any:
        """The keys of a batch: a sequence, possibly a view of ``buf`` (iterate it now)."""
        size = self.key_size
        fmt = _bulk_format(self.key_codec, size)
        if fmt is None and self.key_codec is None and self._indexed and size == 4:
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

    def update_batch(self, items: Any, flags: int = 0) -> int:
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
                if e.errno not in NO_BATCH:
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
                if e.errno not in NO_BATCH:
                    raise
                self._batchable = False
        return sum(1 for k in keys if self.delete(k))


def _bulk_format(codec: Any, size: int) -> Any:
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
