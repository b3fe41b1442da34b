"""LPM trie: keys are (prefix length, data); lookups find the longest matching prefix."""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, NamedTuple

from ..errors import OptionError
from ..uapi import MapType
from .hash import HashMap
from .map import _RAW, register_map_class

__all__ = ["LpmKey", "LpmTrie"]

_BO = sys.byteorder


class LpmKey(NamedTuple):
    """An LPM trie key: ``prefixlen`` leading bits of ``data`` (network byte order)."""

    prefixlen: int
    data: bytes

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The key as an IP network (4- or 16-byte data)."""
        addr = ipaddress.ip_address(self.data)
        return ipaddress.ip_network((addr, self.prefixlen), strict=False)

    def __str__(self) -> str:
        if len(self.data) in (4, 16):
            return str(self.network)
        return f"{self.data.hex()}/{self.prefixlen}"


_ADDR = (bytes, bytearray, memoryview, str, ipaddress.IPv4Address, ipaddress.IPv6Address,
         ipaddress.IPv4Network, ipaddress.IPv6Network)


def _data(data: Any) -> tuple[bytes, int | None]:
    """Bytes of an address-like value, and its prefix length if it carries one."""
    if isinstance(data, _RAW):
        return bytes(data), None
    if isinstance(data, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return data.packed, None
    if isinstance(data, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return data.network_address.packed, data.prefixlen
    if isinstance(data, str):
        try:
            if "/" in data:
                return _data(ipaddress.ip_network(data, strict=False))
            return ipaddress.ip_address(data).packed, None
        except ValueError as e:
            raise OptionError(f"LPM trie key: {e}") from None
    raise OptionError(f"LPM trie key: cannot use {data!r} as data (bytes, str or ipaddress)")


@register_map_class(MapType.LPM_TRIE)
class LpmTrie(HashMap):
    """An LPM trie (BPF_MAP_TYPE_LPM_TRIE). Keys are :class:`LpmKey`, ``(prefixlen,
    data)`` tuples, networks (``"10.0.0.0/8"``, ``ipaddress`` networks) or addresses
    (full length). ``m["10.1.2.3"]`` and :meth:`longest_match` find the longest stored
    prefix that contains the address. Data is network byte order."""

    @staticmethod
    def key(prefixlen: int, data: Any) -> LpmKey:
        """An LPM key from a prefix length and bytes / an address (``"10.0.0.0"``)."""
        raw, _ = _data(data)
        return LpmKey(prefixlen, raw)

    @property
    def data_size(self) -> int:
        return self.key_size - 4

    def encode_key(self, key: Any) -> bytes:
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], int) \
                and isinstance(key[1], _ADDR):
            prefixlen, (raw, _) = key[0], _data(key[1])
        elif not isinstance(key, _ADDR) or isinstance(key, _RAW):
            return super().encode_key(key)  # bytes, or a BTF struct value / dict
        else:
            raw, plen = _data(key)
            prefixlen = 8 * len(raw) if plen is None else plen
        n = self.data_size
        if len(raw) > n or not 0 <= prefixlen <= 8 * n:
            raise OptionError(f"map {self.name!r}: LPM key {key!r} does not fit {n} data bytes")
        return prefixlen.to_bytes(4, _BO) + raw.ljust(n, b"\0")

    def decode_key(self, raw: bytes) -> Any:
        """Through the key's BTF when the map has it, else an :class:`LpmKey`."""
        if self.key_codec is not None:
            return self.key_codec.decode(raw)
        return _lpm_key(raw)

    def longest_match(self, addr: Any, default: Any = None) -> tuple[LpmKey, Any] | Any:
        """The (stored key, value) of the longest prefix containing ``addr``, or ``default``.

        The kernel returns only the value; the key is found by walking keys of that
        value, choosing the longest prefix that contains ``addr``."""
        raw, _ = _data(addr)
        kb = self.encode_key(LpmKey(8 * len(raw), raw))
        v = self.ops.lookup(kb)
        if v is None:
            return default
        best: LpmKey | None = None
        for k in self.ops.keys():
            lk = _lpm_key(k)
            if (best is None or lk.prefixlen > best.prefixlen) and _contains(lk, raw):
                best = lk
        return (best, self.decode_value(v)) if best is not None else default



def _lpm_key(raw: bytes) -> LpmKey:
    return LpmKey(int.from_bytes(raw[:4], _BO), bytes(raw[4:]))


def _contains(k: LpmKey, raw: bytes) -> bool:
    bits = k.prefixlen
    full, rest = divmod(bits, 8)
    if k.data[:full] != raw[:full]:
        return False
    if rest:
        mask = (0xFF << (8 - rest)) & 0xFF
        return (k.data[full] & mask) == (raw[full] & mask)
    return True
