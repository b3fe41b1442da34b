"""Maps of network objects and cgroups: redirect targets for XDP (devmap, devmap_hash,
cpumap, xskmap), socket maps (sockmap, sockhash, reuseport_sockarray) and the cgroup
array.

User space stores fds (sockets, cgroup directories, AF_XDP sockets), interface indexes
(devmaps; an interface *name* is resolved in the caller's network namespace) or queue
sizes (cpumap). What it reads back depends on the kind: socket maps give the socket
cookie (with 8-byte values), devmaps and cpumaps give the entry with the attached
program's id, while xskmap and the cgroup array give nothing back (the kernel does not
return their entries to user space).
"""

from __future__ import annotations

import os
import socket as _socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ..errors import OptionError
from ..uapi import MapType
from .fdmaps import FdArrayMap, _FdValues, fd_number
from .map import register_map_class

__all__ = ["CgroupArray", "CpuMap", "CpuMapValue", "DevMap", "DevMapHash", "DevMapValue",
           "ReuseportSockArray", "SockHash", "SockMap", "XskMap", "socket_cookie"]

_BO = sys.byteorder
_RAW = (bytes, bytearray, memoryview)
SO_COOKIE = 57


def socket_cookie(sock: Any) -> int:
    """The kernel's socket cookie (what socket maps return on lookup)."""
    fd = fd_number(sock)
    s = _socket.socket(fileno=os.dup(fd))
    try:
        return int.from_bytes(s.getsockopt(_socket.SOL_SOCKET, SO_COOKIE, 8), _BO)
    finally:
        s.close()


class DevMapValue(NamedTuple):
    """A devmap entry: the target interface and the id of the program run on transmit."""

    ifindex: int
    prog_id: int = 0


class CpuMapValue(NamedTuple):
    """A cpumap entry: the queue size of the CPU's kthread and its program's id."""

    qsize: int
    prog_id: int = 0


def _ifindex(dev: Any) -> int:
    if isinstance(dev, str):
        try:
            return _socket.if_nametoindex(dev)
        except OSError:
            raise OptionError(f"no network interface {dev!r} in this network namespace") from None
    if isinstance(dev, int) and not isinstance(dev, bool) and dev > 0:
        return dev
    raise OptionError(f"expected an interface index or name, got {dev!r}")


def _prog_fd(prog: Any) -> int:
    # an absent program is fd -1 in bpf_devmap_val / bpf_cpumap_val ("no program")
    return -1 if prog is None else fd_number(prog)


class _PairValues:
    """Shared encoding of bpf_devmap_val / bpf_cpumap_val: (u32, prog fd | prog id)."""

    name: str
    value_size: int
    _pair: Callable[[int, int], tuple[int, int]]  # the NamedTuple of the kind

    def _encode_pair(self, first: int, prog: Any) -> bytes:
        if self.value_size == 4:
            if prog is not None:
                raise OptionError(f"map {self.name!r}: 4-byte values cannot hold a program; "
                                  "declare the value as the 8-byte struct")
            return first.to_bytes(4, _BO)
        if self.value_size != 8:
            raise OptionError(f"map {self.name!r}: unexpected value size {self.value_size}")
        return first.to_bytes(4, _BO) + _prog_fd(prog).to_bytes(4, _BO, signed=True)

    def _decode_pair(self, raw: bytes | memoryview) -> Any:
        b = bytes(raw)
        first = int.from_bytes(b[:4], _BO)
        prog = int.from_bytes(b[4:8], _BO) if len(b) >= 8 else 0
        return self._pair(first, prog)


class _DevValues(_PairValues):
    _pair = DevMapValue

    def encode_value(self, value: Any) -> bytes:
        """An ifindex or interface name, or (dev, program) for a devmap program."""
        if isinstance(value, _RAW):
            return bytes(value)
        if isinstance(value, tuple):
            if len(value) != 2:
                raise OptionError(f"map {self.name!r}: expected (ifindex, program)")
            return self._encode_pair(_ifindex(value[0]), value[1])
        return self._encode_pair(_ifindex(value), None)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return self._decode_pair(raw)


@register_map_class(MapType.DEVMAP)
class DevMap(_DevValues, FdArrayMap):
    """XDP redirect targets by index: ``m[i] = "eth0"`` / ``ifindex`` / ``(ifindex, prog)``
    where ``prog`` is an ``xdp/devmap`` program run before transmit. Lookups give
    :class:`DevMapValue`."""


@register_map_class(MapType.DEVMAP_HASH)
class DevMapHash(_DevValues, _FdValues):
    """XDP redirect targets by arbitrary u32 key (often the ifindex itself)."""


@register_map_class(MapType.CPUMAP)
class CpuMap(_PairValues, FdArrayMap):
    """XDP redirect to CPUs: ``m[cpu] = qsize`` or ``(qsize, prog)`` with an ``xdp/cpumap``
    program; deleting an entry stops that CPU's kthread. Lookups give :class:`CpuMapValue`."""

    _pair = CpuMapValue

    def encode_value(self, value: Any) -> bytes:
        if isinstance(value, _RAW):
            return bytes(value)
        if isinstance(value, tuple):
            if len(value) != 2:
                raise OptionError(f"map {self.name!r}: expected (qsize, program)")
            qsize, prog = value
        else:
            qsize, prog = value, None
        if not isinstance(qsize, int) or qsize <= 0:
            raise OptionError(f"map {self.name!r}: qsize must be a positive int, got {qsize!r}")
        return self._encode_pair(qsize, prog)

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return self._decode_pair(raw)


class _WriteOnlySlots(FdArrayMap):
    """Indexed maps whose entries the kernel does not return to user space."""

    _what = "entries"

    def _refuse(self) -> OptionError:
        return OptionError(f"map {self.name!r} ({self.type.name if hasattr(self.type, 'name') else self.type}): "
                           f"the kernel does not return {self._what} to user space")

    def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any:
        raise self._refuse()

    def __getitem__(self, key: Any) -> Any:
        raise self._refuse()

    def __contains__(self, key: Any) -> bool:
        raise self._refuse()

    def items(self, *, raw: bool = False) -> Iterator[tuple[Any, Any]]:
        raise self._refuse()

    def keys(self) -> Iterator[Any]:
        raise self._refuse()

    def count(self) -> int:
        raise self._refuse()


@register_map_class(MapType.XSKMAP)
class XskMap(_WriteOnlySlots):
    """AF_XDP sockets by rx queue: ``m[queue] = xsk_socket`` (a bound AF_XDP socket fd)."""

    _what = "AF_XDP socket entries"


@register_map_class(MapType.CGROUP_ARRAY)
class CgroupArray(_WriteOnlySlots):
    """cgroup v2 directories by index, for ``bpf_current_task_under_cgroup`` and
    ``bpf_skb_under_cgroup``: ``m[i] = cgroup_dir_fd`` or ``m.set_path(i, path)``."""

    _what = "cgroup entries"

    def set_path(self, index: int, path: str | os.PathLike[str]) -> None:
        """Store the cgroup at ``path`` (absolute, or relative to the cgroup2 mount)."""
        from .storage import CgrpStorage

        fd = os.open(CgrpStorage._abs(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.update(index, fd)
        finally:
            os.close(fd)


class _SocketValues:
    """Sockets go in by fd; lookups give the socket cookie (8-byte values only)."""

    name: str
    value_size: int

    def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any:
        if self.value_size != 8:
            # the kernel answers ENOSPC: a cookie needs 8 bytes
            raise OptionError(f"map {self.name!r}: lookups give socket cookies, which need "
                              f"8-byte values (this map has {self.value_size})")
        return super().lookup(key, default, raw=raw)  # type: ignore[misc]

    def __getitem__(self, key: Any) -> Any:
        v = self.lookup(key)
        if v is None:
            raise KeyError(key)
        return v

    def decode_value(self, raw: bytes | memoryview) -> Any:
        return int.from_bytes(bytes(raw[:8]), _BO)


@register_map_class(MapType.SOCKMAP)
class SockMap(_SocketValues, FdArrayMap):
    """Sockets by index for sk_msg/sk_skb redirects: ``m[i] = sock``. Lookups give socket
    cookies (see :func:`socket_cookie`). Programs attach with :meth:`attach_program`."""

    def attach_program(self, prog: Any, attach_type: int | None = None) -> None:
        """BPF_PROG_ATTACH ``prog`` (sk_msg, sk_skb parser/verdict) to this map."""
        _attach(self, prog, attach_type)

    def detach_program(self, prog: Any, attach_type: int | None = None) -> None:
        _detach(self, prog, attach_type)


@register_map_class(MapType.SOCKHASH)
class SockHash(_SocketValues, _FdValues):
    """Sockets by key for sk_msg/sk_skb redirects: ``m[key] = sock``; lookups give cookies."""

    def attach_program(self, prog: Any, attach_type: int | None = None) -> None:
        """BPF_PROG_ATTACH ``prog`` (sk_msg, sk_skb parser/verdict) to this map."""
        _attach(self, prog, attach_type)

    def detach_program(self, prog: Any, attach_type: int | None = None) -> None:
        _detach(self, prog, attach_type)


@register_map_class(MapType.REUSEPORT_SOCKARRAY)
class ReuseportSockArray(_SocketValues, FdArrayMap):
    """SO_REUSEPORT sockets by index for ``bpf_sk_select_reuseport``: ``m[i] = sock``
    (bound, in the same reuseport group); lookups give socket cookies."""


def _attach_type(prog: Any, attach_type: int | None) -> int:
    if attach_type is not None:
        return int(attach_type)
    eat = getattr(prog, "expected_attach_type", None)
    if eat is None:
        raise OptionError(f"pass attach_type for {prog!r} (its section does not imply one)")
    return int(eat)


def _attach(m: Any, prog: Any, attach_type: int | None) -> None:
    from ..sys import bpf as _bpf

    _bpf.prog_attach(fd_number(prog), m.fd, _attach_type(prog, attach_type))


def _detach(m: Any, prog: Any, attach_type: int | None) -> None:
    from ..sys import bpf as _bpf

    _bpf.prog_detach(m.fd, _attach_type(prog, attach_type), fd_number(prog))
