"""The BTF value codec: bytes <-> Python values for map keys and values, global
variables and ring-buffer events, straight from BTF (no code generation step).

Mapping: integers -> ``int`` (``_Bool`` -> ``bool``), enums -> members of an
``IntEnum`` built from the BTF enum (unknown numbers stay plain ints), pointers ->
``int``, floats -> ``float``, ``char[N]`` -> ``bytes`` cut at the first NUL (encode
takes ``bytes`` or ``str``), other arrays -> tuples, structs and unions -> generated
tuple subclasses with attribute access (:mod:`pyebpf.btf.codec_values`). Typedefs and
qualifiers are transparent; fields of anonymous members are reachable directly.

Speed: a struct whose members lie side by side compiles to one ``struct.Struct``
and one generated function (``exec``) that turns its ``unpack_from`` tuple into the
value with as few calls as possible. Members that cannot be flattened (unions,
oddly placed bitfields, huge arrays of structs) are decoded by their own codec.
Byte order is the host's; bitfield numbering assumes a little-endian host.

Example::

    c = codec_for(spec.btf, spec.maps["start"].btf_value_type_id)
    v = c.decode(raw)                  # args_t(fname=..., flags=0, mode=0)
    raw = c.encode({"flags": 1})       # missing members are zero
    raw = c.encode(v._replace(mode=0o644))
    c.cls(flags=1) == {"flags": 1}     # True; values are hashable and immutable

Errors in values raise :class:`~pyebpf.errors.OptionError` naming the member path,
e.g. ``struct event.comm: 17 bytes do not fit in char[16]``.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Mapping
from typing import Any

from ..errors import BTFError, OptionError
from .codec_base import (
    ArrayCodec,
    CharArrayCodec,
    Codec,
    EnumCodec,
    FloatCodec,
    IntCodec,
    RawCodec,
    _short,
)
from .codec_struct import StructCodec, UnionCodec
from .codec_values import StructValue, UnionValue
from .types import (
    INT_BOOL,
    INT_CHAR,
    INT_SIGNED,
    MODIFIER_KINDS,
    BTFView,
    Kind,
    sizeof,
    skip_modifiers,
)

__all__ = [
    "Codec",
    "RawCodec",
    "StructValue",
    "UnionValue",
    "clear_cache",
    "codec_for",
    "codec_from_ctypes",
    "codec_from_format",
]


# -- codec_for ---------------------------------------------------------------------------

_cache: weakref.WeakKeyDictionary[Any, dict[int, Codec]] = weakref.WeakKeyDictionary()


def clear_cache(btf: BTFView | None = None) -> None:
    """Forget cached codecs (of one BTF, or all): needed after editing a BTF in place."""
    if btf is None:
        _cache.clear()
    else:
        _cache.pop(btf, None)


def codec_for(btf: BTFView, type_id: int) -> Codec:
    """The codec of BTF type ``type_id``, cached per BTF object (see :func:`clear_cache`).

    Raises OptionError for types that hold no value (void, functions, forward
    declarations) and BTFError for malformed BTF.
    """
    try:
        per = _cache.get(btf)
        if per is None:
            per = _cache[btf] = {}
    except TypeError:  # not weakly referenceable: cache only within this call
        per = {}
    c = per.get(type_id)
    if c is not None:
        return c
    return _Builder(btf, per).get(type_id)


class _Builder:
    def __init__(self, btf: BTFView, cache: dict[int, Codec]):
        self.btf, self.cache = btf, cache
        self.busy: set[int] = set()

    def get(self, type_id: int) -> Codec:
        c = self.cache.get(type_id)
        if c is not None:
            return c
        if type_id in self.busy:
            raise BTFError(f"type id {type_id} contains itself")
        if len(self.busy) > 256:
            raise BTFError(f"type id {type_id}: types nested too deeply")
        self.busy.add(type_id)
        try:
            c = self._build(type_id)
        finally:
            self.busy.discard(type_id)
        self.cache[type_id] = c
        return c

    def _build(self, type_id: int) -> Codec:
        btf = self.btf
        t: Any = btf.type(type_id)
        k = t.kind
        if k in MODIFIER_KINDS or k == Kind.VAR:
            return self.get(t.type)
        if k == Kind.INT:
            if t.size not in (1, 2, 4, 8, 16) or t.bits + t.offset > t.size * 8 or not t.bits:
                raise BTFError(f"type id {type_id}: bad INT {t.name} size {t.size} bits {t.bits}")
            return IntCodec(t.name, t.size, bool(t.encoding & INT_SIGNED),
                            bool(t.encoding & INT_BOOL), t.bits, t.offset)
        if k == Kind.PTR:
            return IntCodec("pointer", 8, False)
        if k == Kind.FLOAT:
            return FloatCodec(t.name, t.size)
        if k in (Kind.ENUM, Kind.ENUM64):
            return EnumCodec(t.name, t.size, t.signed, [(v.name, v.value) for v in t.values])
        if k == Kind.ARRAY:
            et: Any = btf.type(t.type)
            if et.kind == Kind.INT and et.size == 1 and (et.name == "char" or et.encoding & INT_CHAR):
                return CharArrayCodec(t.nelems)
            return ArrayCodec(self.get(t.type), t.nelems)
        if k in (Kind.STRUCT, Kind.UNION):
            members = [(m.name, m.type, m.bit_offset,
                        m.bitfield_size if t.bitfield_encoding else 0) for m in t.members]
            label = f"{'struct' if k == Kind.STRUCT else 'union'} {t.name}".rstrip()
            cls = StructCodec if k == Kind.STRUCT else UnionCodec
            return cls(self, t.name, label, t.size, members)
        if k == Kind.DATASEC:
            members, size = [], t.size
            for vs in t.vars:
                v: Any = btf.type(vs.type)
                if v.kind != Kind.VAR or skip_modifiers(btf, v.type) == 0:
                    continue  # functions (.ksyms) and typeless externs hold no value
                members.append((v.name, vs.type, vs.offset * 8, 0))
                # extern sections (.kconfig) are sized by the loader, not in the object
                size = max(size, vs.offset + sizeof(btf, vs.type))
            return StructCodec(self, t.name.lstrip("."), f"section {t.name}", size, members)
        what = {Kind.UNKN: "void", Kind.FWD: "a forward declaration (incomplete type)",
                Kind.FUNC: "a function", Kind.FUNC_PROTO: "a function prototype",
                Kind.DECL_TAG: "a declaration tag"}.get(k, k.name)
        raise OptionError(f"type id {type_id} is {what}: it has no value to encode or decode")


# -- ctypes and struct formats -----------------------------------------------------------

class FormatCodec(Codec):
    """A ``struct`` format: one item decodes to the item itself, several to a tuple."""

    def __init__(self, fmt: str):
        try:
            s = struct.Struct(fmt)
        except struct.error as e:
            raise OptionError(f"bad struct format {fmt!r}: {e}") from None
        self.size, self.type_name = s.size, f"format {fmt!r}"
        single = len(s.unpack(bytes(s.size))) == 1
        unpack, pack, pack_into = s.unpack_from, s.pack, s.pack_into
        codec = self

        def decode(buf: Any, offset: int = 0) -> Any:
            try:
                t = unpack(buf, offset)
            except struct.error:
                raise _short(codec, buf, offset) from None
            return t[0] if single else t

        def encode(v: Any) -> bytes:
            try:
                return pack(v) if single else pack(*v)
            except Exception as e:
                raise OptionError(f"{codec.type_name}: cannot encode {v!r}: {e}") from None

        def encode_into(buf: Any, offset: int, v: Any) -> None:
            try:
                pack_into(buf, offset, v) if single else pack_into(buf, offset, *v)
            except Exception as e:
                raise OptionError(f"{codec.type_name}: cannot encode {v!r}: {e}") from None

        self.decode, self.encode, self.encode_into = decode, encode, encode_into


class CtypesCodec(Codec):
    """A ctypes type: decodes to an instance (a copy); encodes instances, dicts, tuples."""

    def __init__(self, cls: Any):
        import ctypes

        self.cls, self.size = cls, ctypes.sizeof(cls)
        self.type_name = getattr(cls, "__name__", repr(cls))
        codec = self

        def decode(buf: Any, offset: int = 0) -> Any:
            try:
                return cls.from_buffer_copy(buf, offset)
            except (ValueError, TypeError):
                raise _short(codec, buf, offset) from None

        def encode(v: Any) -> bytes:
            return bytes(codec._instance(v))

        def encode_into(buf: Any, offset: int, v: Any) -> None:
            b = encode(v)
            if offset < 0 or len(buf) - offset < len(b):
                raise _short(codec, buf, offset)
            buf[offset:offset + len(b)] = b

        self.decode, self.encode, self.encode_into = decode, encode, encode_into

    def _instance(self, v: Any) -> Any:
        if isinstance(v, self.cls):
            return v
        try:
            if isinstance(v, Mapping):
                known = {f[0] for f in getattr(self.cls, "_fields_", ())}
                unknown = [k for k in v if k not in known]
                if unknown:  # ctypes would silently set them as plain attributes
                    raise TypeError(f"no field {unknown[0]!r}")
                return self.cls(**v)
            if isinstance(v, tuple | list):
                return self.cls(*v)
            return self.cls(v)
        except (TypeError, ValueError, AttributeError) as e:
            raise OptionError(f"{self.type_name}: cannot encode {v!r}: {e}") from None


def codec_from_format(fmt: str) -> Codec:
    """A codec for a ``struct`` module format string (e.g. ``"<IQ"``)."""
    return FormatCodec(fmt)


def codec_from_ctypes(cls: Any) -> Codec:
    """A codec for a ctypes type (Structure subclass, c_uint32, arrays, ...)."""
    return CtypesCodec(cls)
