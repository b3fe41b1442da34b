"""Codec machinery and the leaf codecs (ints, floats, enums, char arrays, arrays, raw
bytes) of :mod:`pyebpf.btf.codec`; structs and unions are in :mod:`.codec_struct`."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, cast

from .._record import Record
from ..errors import BTFError, OptionError

_BO = sys.byteorder
_INT_FMT = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
            (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}
_FLOAT_FMT = {2: "e", 4: "f", 8: "d"}
# Arrays whose elements need per-element work are unrolled into the parent's
# format only up to this many struct items; larger ones decode element by element.
_UNROLL_LIMIT = 1024
_UNPACK_LOCALS = 255
_MISSING = object()
_Z = b"\0"


def _short(codec: Codec, buf: Any, offset: int) -> OptionError:
    try:
        have = len(buf) - offset
    except TypeError:
        have = -1
    return OptionError(f"{codec.type_name}: need {codec.size} bytes at offset {offset}, "
                       f"the buffer has {max(have, 0)}")


def _diagnose(codec: Codec, value: Any, exc: BaseException) -> OptionError:
    """Turn a failed fast encode into an error naming the offending field."""
    try:
        codec.check(value, codec.type_name)
    except OptionError as e:
        return e
    if isinstance(exc, OptionError):
        return exc
    return OptionError(f"{codec.type_name}: cannot encode {value!r}: {exc}")


class Flat(Record):
    """How a value lies in a parent's ``struct`` format, relative to its own start.

    ``items``: (offset, format, number of unpacked items), sorted, not overlapping.
    ``dec(gen, first)``: expression building the value from ``t[first:...]``.
    ``enc(gen, v)``: argument expressions for ``pack`` from the value expression ``v``.
    """

    __slots__ = ("items", "dec", "enc", "plain")
    items: list[tuple[int, str, int]]
    dec: Callable[[_Gen, int], str]
    enc: Callable[[_Gen, str], list[str]]
    plain: bool  # one item, decoded as ``t[i]`` and packed as the value itself

    def __init__(self, items: list[tuple[int, str, int]], dec: Callable[[_Gen, int], str],
                 enc: Callable[[_Gen, str], list[str]], plain: bool = False) -> None:
        self.items = items
        self.dec = dec
        self.enc = enc
        self.plain = plain

    @property
    def count(self) -> int:
        return sum(c for _, _, c in self.items)


class _Gen:
    """Names and statements collected while generating one function."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"_Z": _Z, "_ifb": int.from_bytes, "_tnew": tuple.__new__,
                                   "_bfa": _bf_arg}
        self.pre: list[str] = []
        self._ids: dict[int, str] = {}
        self.unpacked = False  # items are locals t0, t1, ... rather than t[0], t[1], ...

    def it(self, i: int) -> str:
        return f"t{i}" if self.unpacked else f"t[{i}]"

    def span(self, i: int, n: int) -> str:
        if self.unpacked:
            return "(" + "".join(f"t{j}, " for j in range(i, i + n)) + ")"
        return f"t[{i}:{i + n}]"

    def unpack_target(self, count: int) -> str:
        """Where the unpacked tuple goes: separate locals when there are few items,
        as UNPACK_SEQUENCE is cheaper than indexing the tuple item by item."""
        self.unpacked = 0 < count <= _UNPACK_LOCALS
        return "".join(f"t{j}, " for j in range(count)) if self.unpacked else "t"

    def name(self, obj: Any, hint: str = "c") -> str:
        key = id(obj)
        n = self._ids.get(key)
        if n is None:
            n = self._ids[key] = f"_{hint}{len(self.ns)}"
            self.ns[n] = obj
        return n

    def tmp(self, hint: str = "g") -> str:
        n = f"_{hint}{len(self.ns)}"
        self.ns[n] = None
        return n


def _exec(src: str, ns: dict[str, Any], label: str) -> dict[str, Any]:
    exec(compile(src, f"<pyebpf codec {label}>", "exec"), ns)
    return ns


class Codec:
    """Encodes and decodes one type. ``decode``, ``encode`` and ``encode_into`` are
    plain functions stored on the instance (no method binding on the hot path)."""

    size: int
    type_name: str
    exact = True  # decode then encode reproduces the significant bits (mask) exactly
    decode: Callable[..., Any]  # (buf, offset=0) -> value
    encode: Callable[[Any], bytes]
    encode_into: Callable[[Any, int, Any], None]  # (buf, offset, value)

    def _default_encode(self) -> None:
        size, into = self.size, self.encode_into

        def encode(value: Any) -> bytes:
            b = bytearray(size)
            into(b, 0, value)
            return bytes(b)

        self.encode = encode

    def zero(self) -> Any:
        """The value of all-zero bytes."""
        z = self.__dict__.get("_zero", _MISSING)
        if z is _MISSING:
            z = self._zero = self.decode(bytes(self.size))
        return z

    def coerce(self, value: Any, path: str) -> Any:
        """Normalize a user value (dict -> struct value, str -> bytes, ...)."""
        return value

    def mask(self) -> int:
        """The bits that carry the value (little-endian int over ``size`` bytes): padding
        and unnamed bitfields are not part of it. Unions merge their members by it."""
        return (1 << (8 * self.size)) - 1

    def exact_mask(self) -> int:
        """The bits that decode-then-encode reproduces (not those behind a bool or a
        NUL-trimmed char array)."""
        return self.mask() if self.exact else 0

    def check(self, value: Any, path: str) -> None:
        """Raise OptionError (naming ``path``) if ``value`` cannot be encoded."""

    def flat(self) -> Flat | None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type_name} size={self.size}>"


def nested_decoder(codec: Codec) -> Callable[..., Any]:
    """How a parent decodes ``codec``: structs ending in a flexible array member
    take only their own size then, not the rest of the buffer."""
    return codec.__dict__.get("decode_nested") or codec.decode


def _scalar_decoder(codec: Codec, fmt: str, post: Callable[[Any], Any] | None = None
                    ) -> Callable[..., Any]:
    unpack = struct.Struct("=" + fmt).unpack_from
    if post is None:
        def decode(buf: Any, offset: int = 0) -> Any:
            try:
                return unpack(buf, offset)[0]
            except struct.error:
                raise _short(codec, buf, offset) from None
    else:
        def decode(buf: Any, offset: int = 0) -> Any:
            try:
                return post(unpack(buf, offset)[0])
            except struct.error:
                raise _short(codec, buf, offset) from None
    return decode


def _scalar_encoders(codec: Codec, fmt: str, pre: Callable[[Any], Any] | None = None) -> None:
    s = struct.Struct("=" + fmt)
    pack, pack_into = s.pack, s.pack_into

    def encode(value: Any) -> bytes:
        try:
            return pack(pre(value) if pre else value)
        except Exception as e:
            raise _diagnose(codec, value, e) from None

    def encode_into(buf: Any, offset: int, value: Any) -> None:
        try:
            pack_into(buf, offset, pre(value) if pre else value)
        except Exception as e:
            raise _diagnose(codec, value, e) from None

    codec.encode, codec.encode_into = encode, encode_into


class IntCodec(Codec):
    """BTF INT (and pointers): signed or unsigned, ``_Bool`` as bool."""

    def __init__(self, name: str, size: int, signed: bool, is_bool: bool = False,
                 bits: int = 0, bit_offset: int = 0):
        self.type_name, self.size, self.signed, self.is_bool = name, size, signed, is_bool
        self.bits = bits or size * 8
        self.bit_offset = bit_offset
        self.exact = not is_bool
        self.lo = -(1 << (self.bits - 1)) if signed else 0
        self.hi = (1 << (self.bits - 1)) - 1 if signed else (1 << self.bits) - 1
        fmt = _INT_FMT.get((size, signed))
        self._fmt = fmt if fmt and self.bits == size * 8 and not bit_offset else None
        if self._fmt and not is_bool:
            self.decode = _scalar_decoder(self, self._fmt)
            _scalar_encoders(self, self._fmt)
        else:
            self.decode = self._decode_generic
            self.encode_into = self._encode_into_generic
            self._default_encode()

    def mask(self) -> int:
        return ((1 << self.bits) - 1) << self.bit_offset

    def to_python(self, raw: int) -> Any:
        """The value of the unsigned integer ``raw`` holding this type's bits."""
        if self.signed and raw >> (self.bits - 1):
            raw -= 1 << self.bits
        return raw != 0 if self.is_bool else raw

    def _decode_generic(self, buf: Any, offset: int = 0) -> Any:
        if offset < 0 or len(buf) - offset < self.size:
            raise _short(self, buf, offset)
        raw = int.from_bytes(buf[offset:offset + self.size], _BO)
        return self.to_python((raw >> self.bit_offset) & ((1 << self.bits) - 1))

    def _encode_into_generic(self, buf: Any, offset: int, value: Any) -> None:
        self.check(value, self.type_name)
        if len(buf) - offset < self.size or offset < 0:
            raise _short(self, buf, offset)
        mask = ((1 << self.bits) - 1) << self.bit_offset
        old = int.from_bytes(buf[offset:offset + self.size], _BO) & ~mask
        raw = old | ((int(value) << self.bit_offset) & mask)
        buf[offset:offset + self.size] = raw.to_bytes(self.size, _BO)

    def check(self, value: Any, path: str) -> None:
        if self.is_bool:
            if not (isinstance(value, int) and value in (0, 1)):
                raise OptionError(f"{path}: expected a bool, got {value!r}")
            return
        if not isinstance(value, int):
            raise OptionError(f"{path}: expected an int ({self.type_name}), "
                              f"got {type(value).__name__} {value!r}")
        if not self.lo <= value <= self.hi:
            raise OptionError(f"{path}: {value} is out of range for {self.type_name} "
                              f"[{self.lo}, {self.hi}]")

    def coerce(self, value: Any, path: str) -> Any:
        if self.is_bool and isinstance(value, int) and value in (0, 1):
            return bool(value)
        return value

    def bf_value(self, raw_expr: str, bits: int, gen: _Gen) -> str:
        """Expression converting an extracted unsigned bitfield to the Python value."""
        if self.is_bool:
            return f"({raw_expr} != 0)"
        if self.signed:
            s = 1 << (bits - 1)
            return f"(({raw_expr} ^ {s}) - {s})"
        return raw_expr

    def flat(self) -> Flat | None:
        if self.is_bool and self.bits == self.size * 8 and self.size == 1:
            def enc(g: _Gen, v: str) -> list[str]:
                return [f"{g.name(_bool_arg, 'bool')}({v})"]
            return Flat([(0, "?", 1)], lambda g, i: g.it(i), enc)
        if self._fmt:
            return Flat([(0, self._fmt, 1)], lambda g, i: g.it(i), lambda g, v: [v], True)
        if self.bits == self.size * 8 and not self.bit_offset and not self.is_bool:
            # __int128 and other odd sizes: bytes converted in the expression
            n, sg = self.size, self.signed
            return Flat([(0, f"{n}s", 1)],
                        lambda g, i: f"_ifb({g.it(i)}, {_BO!r}, signed={sg})",
                        lambda g, v: [f"({v}).to_bytes({n}, {_BO!r}, signed={sg})"])
        return None


def _bool_arg(v: Any) -> bool:
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise TypeError(f"expected a bool, got {v!r}")


def _bf_arg(v: Any, bits: int, signed: bool, names: Mapping[str, int] | None) -> int:
    """Validate a bitfield value; return its two's complement bits."""
    if names is not None and isinstance(v, str):
        v = names[v]
    if not isinstance(v, int):
        raise TypeError(f"expected an int, got {type(v).__name__}")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= v <= hi:
        raise OverflowError(f"{v} does not fit in a {bits}-bit {'signed' if signed else 'unsigned'}"
                            " bitfield")
    return v & ((1 << bits) - 1)


class FloatCodec(Codec):
    """BTF FLOAT. 16-byte ``long double`` has no Python type: it stays raw bytes."""

    def __init__(self, name: str, size: int):
        self.type_name, self.size = name, size
        self._fmt = _FLOAT_FMT.get(size) or f"{size}s"
        self.decode = _scalar_decoder(self, self._fmt)
        _scalar_encoders(self, self._fmt)

    def check(self, value: Any, path: str) -> None:
        if self._fmt.endswith("s"):
            if not isinstance(value, bytes | bytearray) or len(value) > self.size:
                raise OptionError(f"{path}: expected up to {self.size} raw bytes for {self.type_name}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(f"{path}: expected a float, got {type(value).__name__} {value!r}")
        try:
            struct.pack("=" + self._fmt, value)
        except (OverflowError, struct.error) as e:
            raise OptionError(f"{path}: {value!r} does not fit {self.type_name}: {e}") from None

    def flat(self) -> Flat | None:
        return Flat([(0, self._fmt, 1)], lambda g, i: g.it(i), lambda g, v: [v], True)


def _make_enum(name: str, values: list[tuple[str, int]]) -> type[IntEnum] | None:
    members = [(n, v) for n, v in values if n.isidentifier() and not n.startswith("_")]
    try:
        return IntEnum(name if name.isidentifier() else "anon_enum", members,  # type: ignore[return-value]
                       module="pyebpf.btf.values")
    except (ValueError, TypeError):
        return None


class EnumCodec(Codec):
    """BTF ENUM/ENUM64 -> members of an ``IntEnum``; unknown numbers decode to ``int``."""

    def __init__(self, name: str, size: int, signed: bool, values: list[tuple[str, int]]):
        self.type_name = f"enum {name}" if name else "enum"
        self.size, self.signed = size, signed
        bits = size * 8
        norm = []
        for n, v in values:  # BTF stores raw 32/64-bit words; see them as this enum's type
            v &= (1 << bits) - 1
            if signed and v >> (bits - 1):
                v -= 1 << bits
            norm.append((n, v))
        self.enum = _make_enum(name, norm)
        self.names: dict[str, int] = dict(norm)
        self.by_value: dict[int, Any] = {}
        if self.enum is not None:
            for m in self.enum:
                self.by_value.setdefault(int(m), m)
            self.names.update({m.name: m for m in self.enum})
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self._fmt = _INT_FMT.get((size, signed))
        if self._fmt is None:
            raise BTFError(f"{self.type_name}: unsupported enum size {size}")
        get = self.by_value.get
        self.decode = _scalar_decoder(self, self._fmt, lambda v: get(v, v))
        names = self.names
        _scalar_encoders(self, self._fmt, lambda v: names[v] if v.__class__ is str else v)

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, str):
            if value not in self.names:
                raise OptionError(f"{path}: {value!r} is not a member of {self.type_name}")
            return
        if not isinstance(value, int):
            raise OptionError(f"{path}: expected a {self.type_name} member or int, got {value!r}")
        if not self.lo <= value <= self.hi:
            raise OptionError(f"{path}: {value} is out of range for {self.type_name}")

    def coerce(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            self.check(value, path)
            v = self.names[value]
            return self.by_value.get(v, v)
        if type(value) is int:
            return self.by_value.get(value, value)
        return value

    def bf_value(self, raw_expr: str, bits: int, gen: _Gen) -> str:
        x = raw_expr
        if self.signed:
            s = 1 << (bits - 1)
            x = f"(({raw_expr} ^ {s}) - {s})"
        get = gen.name(self.by_value.get, "eget")
        return f"{get}({x}, {x})"

    def flat(self) -> Flat | None:
        def dec(g: _Gen, i: int) -> str:
            return f"{g.name(self.by_value.get, 'eget')}({g.it(i)}, {g.it(i)})"

        def enc(g: _Gen, v: str) -> list[str]:
            return [f"({g.name(self.names, 'enames')}[{v}] if {v}.__class__ is str else {v})"]

        return Flat([(0, self._fmt or "", 1)], dec, enc)


def _char_arg(v: Any, n: int) -> bytes:
    if isinstance(v, str):
        v = v.encode()
    elif not isinstance(v, bytes):
        if not isinstance(v, bytearray | memoryview):
            raise TypeError(f"expected bytes or str, got {type(v).__name__}")
        v = bytes(v)
    if len(v) > n:
        raise OverflowError(f"{len(v)} bytes do not fit in char[{n}]")
    return cast(bytes, v)


class CharArrayCodec(Codec):
    """``char[N]``: bytes cut at the first NUL; encode pads with NULs."""

    exact = False

    def __init__(self, n: int):
        self.type_name, self.size, self.n = f"char[{n}]", n, n
        fmt = f"{n}s"
        self.decode = _scalar_decoder(self, fmt, lambda b: b.partition(_Z)[0])
        _scalar_encoders(self, fmt, lambda v: _char_arg(v, n))

    def check(self, value: Any, path: str) -> None:
        try:
            _char_arg(value, self.n)
        except (TypeError, OverflowError) as e:
            raise OptionError(f"{path}: {e}") from None

    def coerce(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        return value

    def flat(self) -> Flat | None:
        n = self.n
        # bytes that fit (what decode returns) need no call; _char_arg converts or explains
        return Flat([(0, f"{n}s", 1)], lambda g, i: f"{g.it(i)}.partition(_Z)[0]",
                    lambda g, v: [f"({v} if {v}.__class__ is bytes and len({v}) <= {n} else "
                                  f"{g.name(_char_arg, 'chars')}({v}, {n}))"])


class ArrayCodec(Codec):
    """Fixed arrays -> tuples (``char`` arrays use :class:`CharArrayCodec`)."""

    def __init__(self, elem: Codec, n: int):
        self.elem, self.n = elem, n
        self.type_name = f"{elem.type_name}[{n}]"
        self.size = elem.size * n
        self.exact = elem.exact
        fl = self.flat()
        if fl is not None and fl.items:
            _compile_flat(self, fl, self.type_name,
                          f"if v.__class__ is not tuple or len(v) != {n}: v = _coerce(v, _path)")
        else:
            self.decode = self._decode_loop
            self.encode_into = self._encode_into_loop
            self._default_encode()

    def mask(self) -> int:
        m, es, out = self.elem.mask(), self.elem.size * 8, 0
        for i in range(self.n):
            out |= m << (i * es)
        return out

    def exact_mask(self) -> int:
        m, es, out = self.elem.exact_mask(), self.elem.size * 8, 0
        for i in range(self.n):
            out |= m << (i * es)
        return out

    def _decode_loop(self, buf: Any, offset: int = 0) -> tuple[Any, ...]:
        if offset < 0 or len(buf) - offset < self.size:
            raise _short(self, buf, offset)
        d, es = nested_decoder(self.elem), self.elem.size
        return tuple(d(buf, offset + i * es) for i in range(self.n))

    def _encode_into_loop(self, buf: Any, offset: int, value: Any) -> None:
        value = self.coerce(value, self.type_name)
        e, es = self.elem.encode_into, self.elem.size
        for i, v in enumerate(value):
            e(buf, offset + i * es, v)

    def coerce(self, value: Any, path: str) -> Any:
        if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
            raise OptionError(f"{path}: expected a sequence of up to {self.n} items for "
                              f"{self.type_name}, got {type(value).__name__}")
        if len(value) > self.n:
            raise OptionError(f"{path}: {len(value)} items do not fit in {self.type_name}")
        c = self.elem.coerce
        out = [c(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if len(out) < self.n:
            out.extend([self.elem.zero()] * (self.n - len(out)))
        return tuple(out)

    def check(self, value: Any, path: str) -> None:
        value = self.coerce(value, path)
        for i, v in enumerate(value):
            self.elem.check(v, f"{path}[{i}]")

    def flat(self) -> Flat | None:
        if "_flat" in self.__dict__:
            return self._flat
        self._flat: Flat | None = None
        n, ef = self.n, self.elem.flat()
        if n == 0:
            self._flat = Flat([], lambda g, i: "()", lambda g, v: [])
        elif ef is not None and ef.plain:
            fmt = ef.items[0][1]
            self._flat = Flat([(0, f"{n}{fmt}", n)], lambda g, i: g.span(i, n),
                              lambda g, v: [f"*{v}"])
        elif ef is not None and n * ef.count <= _UNROLL_LIMIT:
            es, cnt = self.elem.size, ef.count
            items = [(j * es + o, f, c) for j in range(n) for o, f, c in ef.items]

            def dec(g: _Gen, i: int) -> str:
                return "(" + "".join(ef.dec(g, i + j * cnt) + ", " for j in range(n)) + ")"

            def enc(g: _Gen, v: str) -> list[str]:
                return [a for j in range(n) for a in ef.enc(g, f"{v}[{j}]")]

            self._flat = Flat(items, dec, enc)
        return self._flat


def _fmt_of(items: list[tuple[int, str, int]], size: int) -> str:
    parts, cur = ["="], 0
    for off, f, _ in items:
        if off > cur:
            parts.append(f"{off - cur}x")
        parts.append(f)
        cur = off + struct.calcsize("=" + f)
    if size > cur:
        parts.append(f"{size - cur}x")
    return "".join(parts)


def _compile_flat(codec: Codec, fl: Flat, label: str, normalize: str = "") -> None:
    """decode/encode functions for a codec that is entirely one flat layout."""
    g = _Gen()
    s = struct.Struct(_fmt_of(fl.items, codec.size))
    g.ns.update(_unpack=s.unpack_from, _pack=s.pack, _pack_into=s.pack_into,
                _SE=struct.error, _short=_short, _diag=_diagnose, _codec=codec,
                _coerce=codec.coerce, _path=codec.type_name)
    target = g.unpack_target(fl.count)
    expr = fl.dec(g, 0)
    args = ", ".join(fl.enc(g, "v"))
    pre = "".join(f"    {p}\n" for p in g.pre)
    src = (
        "def decode(buf, offset=0):\n"
        "    try:\n"
        f"        {target} = _unpack(buf, offset)\n"
        "    except _SE:\n"
        "        raise _short(_codec, buf, offset) from None\n"
        f"{pre}"
        f"    return {expr}\n"
        "def encode(v):\n"
        f"    {normalize or 'pass'}\n"
        "    try:\n"
        f"        return _pack({args})\n"
        "    except Exception as e:\n"
        "        raise _diag(_codec, v, e) from None\n"
        "def encode_into(buf, offset, v):\n"
        f"    {normalize or 'pass'}\n"
        "    try:\n"
        f"        _pack_into(buf, offset, {args})\n"
        "    except Exception as e:\n"
        "        raise _diag(_codec, v, e) from None\n"
    )
    ns = _exec(src, g.ns, label)
    codec.decode, codec.encode, codec.encode_into = ns["decode"], ns["encode"], ns["encode_into"]
    codec._source = src  # type: ignore[attr-defined]


class RawCodec(Codec):
    """Bytes in, bytes out: for maps without BTF. Encode requires exactly ``size`` bytes."""

    def __init__(self, size: int, name: str = ""):
        self.size, self.type_name = size, name or f"bytes[{size}]"
        fmt = f"{size}s"
        self.decode = _scalar_decoder(self, fmt)
        _scalar_encoders(self, fmt, self._arg)

    def _arg(self, v: Any) -> bytes:
        if isinstance(v, bytes | bytearray | memoryview) and len(v) == self.size:
            return bytes(v)
        raise TypeError("wrong type or length")

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise OptionError(f"{path}: expected {self.size} bytes, got {type(value).__name__}")
        if len(value) != self.size:
            raise OptionError(f"{path}: expected {self.size} bytes, got {len(value)}")
