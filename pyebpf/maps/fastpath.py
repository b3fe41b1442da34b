"""The hot path of Map lookups and updates: get/set functions specialised once per map
(codecs resolved, int keys packed straight into the per-thread syscall buffer, values
decoded from it in place)."""

from __future__ import annotations

import struct
import weakref
from typing import Any, cast

from ..errors import OptionError
from .map import _MISSING, _RAW, Map

__all__ = ["as_codec", "build_fast"]

_SE = struct.error


def build_fast(self: Map) -> tuple[Any, Any]:
    """Build the get/set functions: one call each for the key and value codecs, the
    value decoded straight from the syscall buffer.

    The functions are stored on the map, so they refer to it only weakly: a strong
    reference would be a cycle that keeps a dropped map (and its fd) alive until the
    cyclic collector runs. The hot paths never touch the map; the fallbacks go through
    the weak proxy.
    """
    return _build(cast(Map, weakref.proxy(self)), self._tl, type(self))


def _build(self: Map, tl: Any, cls: type[Map]) -> tuple[Any, Any]:
    # ``self`` is a weakref.proxy of the Map (see build_fast); its methods are called
    # through it each time, because ``proxy.method`` would be bound to the real map

    def ek(key: Any) -> bytes:
        return self.encode_key(key)

    kc = self.key_codec
    if cls.encode_key is Map.encode_key and _plain_int(kc) and kc.size == self.key_size:
        kenc = kc.encode

        def ek(key: Any) -> bytes:
            return kenc(key) if type(key) is int else self.encode_key(key)

        # the hot paths below pack an in-range int key inline (no call frames); anything
        # else, errors included, goes through ek and the codec's checks and messages
        kpack = struct.Struct("=" + kc._fmt).pack_into  # into the MapOps key buffer
    else:
        kpack = None

    def ev(value: Any) -> bytes:
        return self.encode_value(value)

    staged: Any = None

    def dv(raw: Any) -> Any:
        return self.decode_value(raw)

    vc = self.value_codec
    plain_v = not self.percpu and vc is not None
    if plain_v and cls.encode_value is Map.encode_value:
        venc, vco = vc.encode, vc.coerce
        if _plain_int(vc):
            def ev(value: Any) -> bytes:
                return venc(value) if type(value) is int else self._encode_one(value)
        else:
            own = getattr(vc, "cls", None)  # values decoded from this map encode as is

            def ev(value: Any) -> bytes:
                if type(value) is own:
                    raw: bytes = venc(value)
                    return raw
                if isinstance(value, _RAW):
                    return self._encode_one(value)
                raw = venc(vco(value, "value"))
                return raw

            if getattr(vc, "packs_whole", False) and vc.size == self.value_size:
                vinto = vc.encode_into_own  # type(value) is own: no second class check

                def staged(key: Any, value: Any, flags: int = 0) -> None:
                    try:
                        ops = tl.ops
                    except AttributeError:
                        ops = self.ops
                    if type(value) is own:  # packed straight into the syscall buffer
                        # the key first: its errors win, as below
                        k = None
                        if kpack is not None and type(key) is int:
                            try:
                                kpack(ops.key_buffer, 0, key)
                            except _SE:
                                k = ek(key)
                        else:
                            k = ek(key)
                        vinto(ops.value_buffer, 0, value)
                        ops.update_staged(k, flags)
                    else:
                        ops.update(ek(key), ev(value), flags)
    view = False
    if plain_v and cls.decode_value is Map.decode_value:
        dv, view = vc.decode, True  # codecs decode from the MapOps buffer in place

    def fget(key: Any, default: Any = _MISSING) -> Any:
        try:
            ops = tl.ops
        except AttributeError:
            ops = self.ops
        if view:
            k = None
            if kpack is not None and type(key) is int:
                try:
                    kpack(ops.key_buffer, 0, key)
                except _SE:
                    k = ek(key)
            else:
                k = ek(key)
            v = ops.lookup_into(k)
        else:
            v = ops.lookup(ek(key))
        if v is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return dv(v)

    def fset(key: Any, value: Any, flags: int = 0) -> None:
        try:
            ops = tl.ops
        except AttributeError:
            ops = self.ops
        ops.update(ek(key), ev(value), flags)

    return fget, staged or fset


def _plain_int(c: Any) -> bool:
    """A BTF integer codec whose encode takes a Python int as is (no bool, no bitfield)."""
    return (c is not None and type(c).__name__ == "IntCodec" and bool(c._fmt)
            and not c.is_bool)


def as_codec(t: Any, size: int, what: str) -> Any:
    """A codec for ``Map.with_types``: a Codec, a struct format or a ctypes type."""
    from ..btf.codec import Codec, codec_from_ctypes, codec_from_format

    if isinstance(t, Codec):
        c = t
    elif isinstance(t, str):
        c = codec_from_format(t)
        code = t.lstrip("=@")
        if len(code) == 1 and code in "bBhHiIlLqQ" and len(t) - len(code) <= 1 \
                and struct.calcsize(code) == c.size:
            c._bulk = code  # type: ignore[attr-defined]  # native order, one integer: arrays decode by memoryview.cast
    else:
        c = codec_from_ctypes(t)
    if c.size != size:
        raise OptionError(f"{what}: {c.type_name} is {c.size} bytes, the map's is {size}")
    return c
