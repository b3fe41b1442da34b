"""Struct, union and DATASEC codecs (the compiled part of :mod:`pyebpf.btf.codec`).

A struct compiles to one ``struct.Struct`` covering its whole size (pad bytes for
holes, so ``unpack_from`` also checks the buffer length) plus generated ``decode``
and ``encode`` functions. Members that do not fit the flat layout are handed to
their own codec from the generated code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from .._record import Record
from ..errors import BTFError, OptionError
from .codec_base import (
    _BO,
    _MISSING,
    ArrayCodec,
    CharArrayCodec,
    Codec,
    EnumCodec,
    Flat,
    IntCodec,
    _bf_arg,
    _diagnose,
    _exec,
    _fmt_of,
    _Gen,
    _short,
    nested_decoder,
)
from .codec_values import StructValue, make_value_class, values_equal
from .types import COMPOSITE_KINDS, Kind, skip_modifiers


class _Field(Record):
    __slots__ = ("name", "codec", "off", "bit", "bits", "tail")
    name: str
    codec: Codec
    off: int  # bytes; for bitfields, the bit offset is ``bit``
    bit: int
    bits: int  # non-zero: a bitfield
    tail: bool  # a flexible array member: the rest of the buffer

    def __init__(self, name: str, codec: Codec, off: int, bit: int = 0, bits: int = 0,
                 tail: bool = False) -> None:
        self.name = name
        self.codec = codec
        self.off = off
        self.bit = bit
        self.bits = bits
        self.tail = tail


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}  # unsigned: a group's bits are already masked


class _Group(Record):
    """Bitfields sharing bytes: read and written as one integer."""

    __slots__ = ("start", "end", "fields", "item", "code")
    start: int
    end: int
    fields: list[int]
    item: int  # index of its bytes in the unpacked tuple, -1 when not flat
    code: str  # an integer struct code when its width has one: packed without to_bytes

    def __init__(self, start: int, end: int, fields: list[int] | None = None, item: int = -1,
                 code: str = "") -> None:
        self.start = start
        self.end = end
        self.fields = [] if fields is None else fields
        self.item = item
        self.code = code


def _bf_parts(f: _Field) -> tuple[bool, dict[str, Any] | None]:
    c = f.codec
    if isinstance(c, EnumCodec):
        return c.signed, c.names
    return bool(getattr(c, "signed", False)) and not getattr(c, "is_bool", False), None


def _tail_decoder(codec: Codec) -> Any:
    """A flexible array member decodes to whatever follows in the buffer."""
    if isinstance(codec, CharArrayCodec):
        def tail_bytes(buf: Any, start: int, end: int | None) -> bytes:
            return bytes(buf[start:end])
        return tail_bytes
    elem: Codec = codec.elem  # type: ignore[attr-defined]

    def tail(buf: Any, start: int, end: int | None) -> tuple[Any, ...]:
        if elem.size == 0:
            return ()
        n = max((len(buf) if end is None else end) - start, 0) // elem.size
        d = nested_decoder(elem)
        return tuple(d(buf, start + i * elem.size) for i in range(n))

    return tail


def _tail_encoded(codec: Codec, value: Any, path: str) -> bytes:
    if not value:
        return b""
    if isinstance(codec, CharArrayCodec):
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes | bytearray | memoryview):
            raise OptionError(f"{path}: expected bytes for a flexible char array")
        return bytes(value)
    elem: Codec = codec.elem  # type: ignore[attr-defined]
    return b"".join(elem.encode(v) for v in value)


def _coerce_tail(codec: Codec, value: Any, path: str) -> Any:
    if isinstance(codec, CharArrayCodec):
        return codec.coerce(value, path)
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, tuple | list):
        raise OptionError(f"{path}: expected a sequence for a flexible array member")
    elem: Codec = codec.elem  # type: ignore[attr-defined]
    return tuple(elem.coerce(v, f"{path}[{i}]") for i, v in enumerate(value))


class StructCodec(Codec):
    """BTF STRUCT (and DATASEC): values are generated :class:`StructValue` classes."""

    union = False

    def __init__(self, builder: Any, name: str, label: str, size: int,
                 members: list[tuple[str, int, int, int]]):
        self.type_name, self.size = label, size
        self.fields: list[_Field] = []
        btf = builder.btf
        anon = 0
        for i, (mname, tid, boff, bits) in enumerate(members):
            codec = builder.get(tid)
            under: Any = btf.type(skip_modifiers(btf, tid))
            if not bits and under.kind == Kind.INT and (
                    under.bits != under.size * 8 or under.offset or boff % 8):
                bits, boff = under.bits, boff + under.offset  # bitfield without kind_flag
            if bits:
                if not isinstance(codec, IntCodec | EnumCodec) or bits > 64 and not isinstance(
                        codec, IntCodec):
                    raise BTFError(f"{label}: bitfield {mname!r} of non-integer type")
                if boff + bits > size * 8:
                    raise BTFError(f"{label}: bitfield {mname!r} lies beyond the struct")
                f = _Field(mname, codec, boff // 8, boff, bits)
            else:
                if boff % 8:
                    raise BTFError(f"{label}: member {mname!r} is not byte aligned")
                if boff // 8 + codec.size > size:
                    raise BTFError(f"{label}: member {mname!r} lies beyond the struct")
                tail = (i == len(members) - 1 and codec.size == 0 and not self.union
                        and isinstance(codec, ArrayCodec | CharArrayCodec))
                f = _Field(mname, codec, boff // 8, tail=tail)
            if not mname:
                if bits or under.kind not in COMPOSITE_KINDS:
                    continue  # unnamed padding bitfield
                f.name = f"_anon{anon}"
                anon += 1
            self.fields.append(f)
        self.paths: dict[str, tuple[int, ...]] = {}
        for i, f in enumerate(self.fields):
            self.paths[f.name] = (i,)
        for i, f in enumerate(self.fields):
            if f.name.startswith("_anon") and isinstance(f.codec, StructCodec):
                for n, p in f.codec.paths.items():
                    self.paths.setdefault(n, (i, *p))
        self.has_tail = bool(self.fields) and self.fields[-1].tail
        self.exact = self.exact_mask() == self.mask()
        anon_paths = {n: p for n, p in self.paths.items() if len(p) > 1}
        self.cls = make_value_class(name or "anon", [f.name for f in self.fields], anon_paths,
                                    self, self.union)
        self._compile()

    def _field_mask(self, f: _Field, exact: bool = False) -> int:
        if f.tail:  # up to the end of the struct (it may start in the tail padding)
            return 0 if exact else ((1 << (8 * (self.size - f.off))) - 1) << (8 * f.off)
        if f.bits:
            if exact and not f.codec.exact:
                return 0
            return ((1 << f.bits) - 1) << f.bit
        return (f.codec.exact_mask() if exact else f.codec.mask()) << (8 * f.off)

    def exact_mask(self) -> int:
        m = self.__dict__.get("_emask")
        if m is None:
            m = 0
            for f in self.fields:
                m |= self._field_mask(f, exact=True)
            self._emask = m
        return m

    def mask(self) -> int:
        m = self.__dict__.get("_mask")
        if m is None:
            m = 0
            for f in self.fields:
                m |= self._field_mask(f)
            self._mask = m
        return m

    # -- layout and code generation ---------------------------------------------------

    def _groups(self) -> dict[int, _Group]:
        """Field index -> its bitfield group."""
        out: dict[int, _Group] = {}
        cur: _Group | None = None
        for i, f in enumerate(self.fields):
            if not f.bits:
                cur = None
                continue
            s, e = f.bit // 8, (f.bit + f.bits + 7) // 8
            if cur is not None and not self.union and cur.start <= s < cur.end:
                cur.end = max(cur.end, e)
            else:
                cur = _Group(s, e)
            cur.fields.append(i)
            out[i] = cur
        return out

    def _compile(self) -> None:
        g = _Gen()
        groups = self._groups()
        items: list[tuple[int, str, int]] = []
        order: list[tuple[str, Any]] = []  # what each flat item run encodes, in item order
        plan: list[tuple[str, Any]] = []  # per field
        cursor, nitems = 0, 0
        for i, f in enumerate(self.fields):
            if f.tail:
                plan.append(("tail", None))
                continue
            if f.bits:
                grp = groups[i]
                if grp.fields[0] == i:
                    if not self.union and grp.start >= cursor:
                        grp.code = _INT_CODES.get(grp.end - grp.start, "")
                        items.append((grp.start, grp.code or f"{grp.end - grp.start}s", 1))
                        grp.item, nitems, cursor = nitems, nitems + 1, grp.end
                        order.append(("group", grp))
                plan.append(("bf", grp))
                continue
            fl = None if self.union else f.codec.flat()
            if fl is not None and f.off >= cursor:
                items.extend((f.off + o, fm, c) for o, fm, c in fl.items)
                plan.append(("flat", (fl, nitems)))
                order.append(("field", (i, fl)))
                nitems += fl.count
                cursor = f.off + f.codec.size
            else:
                plan.append(("sub", None))
        self._items, self._plan, self._order = items, plan, order
        self._flat_ok = not self.union and all(
            how == "flat" or how == "bf" and data.item >= 0 for how, data in plan)
        s = struct.Struct(_fmt_of(items, self.size))
        g.ns.update(_unpack=s.unpack_from, _pack=s.pack, _pack_into=s.pack_into,
                    _SE=struct.error, _short=_short, _diag=_diagnose, _codec=self,
                    _coerce=self.coerce, _path=self.type_name, _cls=self.cls,
                    _bfa=_bf_arg, _M=_MISSING, _size=self.size, _extra=self._extra)
        target = g.unpack_target(nitems)
        exprs = self._dec_exprs(g, 0)
        args = self._enc_args(g, "v")
        posts: list[tuple[bool, str]] = []  # (exact, statement)
        done: set[int] = set()
        for i, (f, (how, data)) in enumerate(zip(self.fields, plan, strict=True)):
            guard = f"if v[{i}] is not _M: " if self.union else ""
            if how == "sub":
                e = g.name(f.codec.encode_into, "e")
                posts.append((f.codec.exact, f"{guard}{e}(buf, offset + {f.off}, v[{i}])"))
            elif how == "tail":
                t = g.name(self._put_tail, "ptail")
                posts.append((True, f"{t}(buf, offset + {f.off}, v[{i}])"))
            elif how == "bf" and data.item < 0 and id(data) not in done:
                done.add(id(data))
                put = g.name(_bf_put, "bfput")
                mask = 0
                for j in data.fields:
                    fj = self.fields[j]
                    mask |= ((1 << fj.bits) - 1) << (fj.bit - data.start * 8)
                stmt = (f"{put}(buf, offset + {data.start}, {data.end - data.start}, {mask}, "
                        f"{self._group_int(g, data)})")
                posts.append((f.codec.exact, f"{guard}{stmt}"))
        # in a union, write lossy views (char arrays, bools) first so exact ones win
        posts.sort(key=lambda p: p[0])
        pre = "".join(f"    {p}\n" for p in g.pre)
        body = "".join(f"        {p}\n" for _, p in posts)
        a = ", ".join(["buf", "offset", *args])
        src = (
            "def decode(buf, offset=0):\n"
            "    try:\n"
            f"        {target} = _unpack(buf, offset)\n"
            "    except _SE:\n"
            "        raise _short(_codec, buf, offset) from None\n"
            f"{pre}"
            f"    return _tnew(_cls, ({''.join(e + ', ' for e in exprs)}))\n"
            "def encode_into(buf, offset, v):\n"
            "    if v.__class__ is not _cls:\n"
            "        v = _coerce(v, _path)\n"
            "    try:\n"
            f"        _pack_into({a})\n"
            f"{body}"
            "    except Exception as e:\n"
            "        raise _diag(_codec, v, e) from None\n"
        )
        if posts:
            src += (
                "def encode(v):\n"
                "    if v.__class__ is not _cls:\n"
                "        v = _coerce(v, _path)\n"
                "    b = bytearray(_size + _extra(v))\n"
                "    encode_into(b, 0, v)\n"
                "    return bytes(b)\n"
            )
        else:
            src += (
                "def encode(v):\n"
                "    if v.__class__ is not _cls:\n"
                "        v = _coerce(v, _path)\n"
                "    try:\n"
                f"        return _pack({', '.join(args)})\n"
                "    except Exception as e:\n"
                "        raise _diag(_codec, v, e) from None\n"
            )
        if self.has_tail:  # the rest of the buffer at top level, its own bytes when nested
            src = src.replace("def decode(buf, offset=0):\n",
                              "def decode(buf, offset=0):\n    _end = None\n", 1)
            src += src[:src.index("def encode_into")].replace(
                "def decode(buf, offset=0):\n    _end = None\n",
                "def decode_nested(buf, offset=0):\n    _end = offset + _size\n", 1)
        ns = _exec(src, g.ns, self.type_name)
        self.decode, self.encode, self.encode_into = ns["decode"], ns["encode"], ns["encode_into"]
        if self.has_tail:
            self.decode_nested = ns["decode_nested"]
        self._source = src
        # encode_into is one pack_into over all ``size`` bytes (padding zeroed): callers
        # may encode into a scratch buffer whatever it held before
        self.packs_whole = not posts
        if not posts:  # for callers that have checked the class already
            own = src[src.index("def encode_into"):src.index("def encode(")].replace(
                "    if v.__class__ is not _cls:\n        v = _coerce(v, _path)\n", "", 1)
            own = own.replace("def encode_into(", "def encode_into_own(", 1)
            self.encode_into_own = _exec(own, g.ns, self.type_name)["encode_into_own"]
            self._source = src + own

    def _dec_exprs(self, g: _Gen, base: int) -> list[str]:
        """Member expressions over ``t`` (items from ``base``), ``buf`` and ``offset``."""
        gvars: dict[int, str] = {}
        exprs = []
        for f, (how, data) in zip(self.fields, self._plan, strict=True):
            if how == "flat":
                fl, first = data
                exprs.append(fl.dec(g, base + first))
            elif how == "sub":
                exprs.append(f"{g.name(nested_decoder(f.codec), 'd')}(buf, offset + {f.off})")
            elif how == "tail":
                exprs.append(f"{g.name(_tail_decoder(f.codec), 'tail')}(buf, offset + {f.off}, "
                             "_end)")
            else:
                grp = data
                gv = gvars.get(id(grp))
                if gv is None:
                    if grp.item >= 0 and grp.code:
                        gv = gvars[id(grp)] = g.it(base + grp.item)  # unpacked as an int
                    else:
                        gv = gvars[id(grp)] = g.tmp("g")
                        src = (g.it(base + grp.item) if grp.item >= 0 else
                               f"buf[offset + {grp.start}:offset + {grp.end}]")
                        g.pre.append(f"{gv} = _ifb({src}, {_BO!r})")
                sh = f.bit - grp.start * 8
                raw = f"({gv} >> {sh} & {(1 << f.bits) - 1})" if sh else f"({gv} & {(1 << f.bits) - 1})"
                exprs.append(f.codec.bf_value(raw, f.bits, g))  # type: ignore[attr-defined]
        return exprs

    def _enc_args(self, g: _Gen, v: str) -> list[str]:
        """``pack`` arguments, in item order, for the value expression ``v``."""
        args: list[str] = []
        for how, data in self._order:
            if how == "field":
                i, fl = data
                args.extend(fl.enc(g, f"{v}[{i}]"))
            elif data.code:
                args.append(self._group_int(g, data, v))
            else:
                args.append(f"({self._group_int(g, data, v)}).to_bytes("
                            f"{data.end - data.start}, {_BO!r})")
        return args

    def flat(self) -> Flat | None:
        """Nested structs inline into their parent's format when all their members do."""
        if not self._flat_ok:
            return None

        def dec(g: _Gen, first: int) -> str:
            exprs = self._dec_exprs(g, first)
            return f"_tnew({g.name(self.cls, 'cls')}, ({''.join(e + ', ' for e in exprs)}))"

        return Flat(list(self._items), dec, self._enc_args)

    def _group_int(self, g: _Gen, grp: Any, v: str = "v") -> str:
        parts = []
        for j in grp.fields:
            f = self.fields[j]
            signed, names = _bf_parts(f)
            nm = g.name(names, "en") if names is not None else "None"
            x, m = f"{v}[{j}]", (1 << f.bits) - 1
            lo, hi = (-(1 << (f.bits - 1)), m >> 1) if signed else (0, m)
            # the common case (an in-range int) needs no call; _bfa converts or explains
            parts.append(f"({x} & {m} if {x}.__class__ is int and {lo} <= {x} <= {hi} else "
                         f"_bfa({x}, {f.bits}, {signed}, {nm}))"
                         + (f" << {sh}" if (sh := f.bit - grp.start * 8) else ""))
        if self.union:  # union bitfields are written one by one, each in its own group
            return parts[0]
        return " | ".join(parts)

    def _extra(self, v: Any) -> int:
        if not self.has_tail:
            return 0
        f = self.fields[-1]
        # the flexible member may start inside the struct's tail padding
        n = len(_tail_encoded(f.codec, v[-1], f"{self.type_name}.{f.name}"))
        return max(0, f.off + n - self.size)

    def _put_tail_at(self, f: _Field) -> Any:
        def put(tmp: bytearray, x: Any) -> None:
            b = _tail_encoded(f.codec, x, f"{self.type_name}.{f.name}")[:self.size - f.off]
            tmp[f.off:f.off + len(b)] = b
        return put

    def _put_tail(self, buf: Any, start: int, value: Any) -> None:
        f = self.fields[-1]
        b = _tail_encoded(f.codec, value, f"{self.type_name}.{f.name}")
        if b:
            if len(buf) - start < len(b):
                raise OptionError(f"{self.type_name}.{f.name}: {len(b)} bytes of flexible "
                                  "array do not fit in the buffer")
            buf[start:start + len(b)] = b

    # -- values ------------------------------------------------------------------------

    def _construct(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                   path: str | None = None) -> StructValue:
        path = path or self.type_name
        n = len(self.fields)
        if len(args) > n:
            raise OptionError(f"{path}: {self.type_name} has {n} members, got {len(args)} values")
        vals: list[Any] = [*args, *([_MISSING] * (n - len(args)))]
        sub: dict[int, dict[str, Any]] = {}
        for k, v in kwargs.items():
            p = self.paths.get(k)
            if p is None:
                raise OptionError(f"{path}: {self.type_name} has no member {k!r}")
            if len(p) == 1:
                if vals[p[0]] is not _MISSING:
                    raise OptionError(f"{path}.{k}: given twice")
                vals[p[0]] = v
            else:
                sub.setdefault(p[0], {})[k] = v
        for i, kw in sub.items():
            if vals[i] is not _MISSING:
                raise OptionError(f"{path}.{self.fields[i].name}: given twice")
            vals[i] = kw
        out = [v if v is _MISSING else _coerce_tail(f.codec, v, f"{path}.{f.name}") if f.tail
               else f.codec.coerce(v, f"{path}.{f.name}")
               for f, v in zip(self.fields, vals, strict=True)]
        return self._finish(out, path)

    def _finish(self, out: list[Any], path: str) -> StructValue:
        for i, f in enumerate(self.fields):
            if out[i] is _MISSING:
                out[i] = b"" if f.tail and isinstance(f.codec, CharArrayCodec) else (
                    () if f.tail else f.codec.zero())
        return tuple.__new__(self.cls, out)

    def coerce(self, value: Any, path: str) -> Any:
        if value.__class__ is self.cls:
            return value
        if isinstance(value, StructValue):
            return self._construct((), value._asdict(), path)
        if isinstance(value, Mapping):
            return self._construct((), dict(value), path)
        if isinstance(value, tuple | list):
            return self._construct(tuple(value), {}, path)
        raise OptionError(f"{path}: expected {self.type_name} (a value, dict or keyword "
                          f"arguments), got {type(value).__name__}")

    def check(self, value: Any, path: str) -> None:
        value = self.coerce(value, path)
        for f, v in zip(self.fields, value, strict=True):
            p = f"{path}.{f.name}"
            if v is _MISSING:
                continue
            if f.bits:
                signed, names = _bf_parts(f)
                try:
                    _bf_arg(v, f.bits, signed, names)
                except (TypeError, OverflowError, KeyError) as e:
                    raise OptionError(f"{p}: {e}") from None
            elif f.tail:
                _tail_encoded(f.codec, v, p)
            else:
                f.codec.check(v, p)


def _bf_put(buf: Any, start: int, n: int, mask: int, value: int) -> None:
    old = int.from_bytes(buf[start:start + n], _BO) & ~mask
    buf[start:start + n] = (old | value).to_bytes(n, _BO)


class UnionCodec(StructCodec):
    """BTF UNION: every member decoded over the same bytes (as C reads them)."""

    union = True

    def _compile(self) -> None:
        super()._compile()  # decode; encoding merges the members' bits instead
        full = (1 << (8 * self.size)) - 1
        writers = []
        for i, f in enumerate(self.fields):
            put: Callable[[bytearray, Any], None]
            if f.bits:
                signed, names = _bf_parts(f)

                def put_bits(tmp: bytearray, x: Any, f: _Field = f, signed: bool = signed,
                             names: Any = names) -> None:
                    v = _bf_arg(x, f.bits, signed, names) << (f.bit - 8 * f.off)
                    n = (f.bit % 8 + f.bits + 7) // 8
                    _bf_put(tmp, f.off, n, (((1 << f.bits) - 1) << (f.bit % 8)), v)
                put = put_bits
            elif f.tail:
                put = self._put_tail_at(f)
            else:
                def put_whole(tmp: bytearray, x: Any, f: _Field = f) -> None:
                    f.codec.encode_into(tmp, f.off, x)
                put = put_whole
            writers.append((i, put, self._field_mask(f), self._field_mask(f, exact=True)))
        size, cls, coerce, path, codec = self.size, self.cls, self.coerce, self.type_name, self

        def encode_into(buf: Any, offset: int, v: Any) -> None:
            """Every member's bits are laid down, then the bits each member reproduces
            exactly are laid down again, so lossy views (bools, char arrays) never win
            over exact ones."""
            if v.__class__ is not cls:
                v = coerce(v, path)
            acc = 0
            try:
                done = []
                for i, put, m, em in writers:
                    x = v[i]
                    if x is _MISSING:
                        continue
                    tmp = bytearray(size)
                    put(tmp, x)
                    t = int.from_bytes(tmp, _BO)
                    acc = acc & (full ^ m) | t & m
                    done.append((t, em))
                for t, em in done:
                    acc = acc & (full ^ em) | t & em
                if offset < 0 or len(buf) - offset < size:
                    raise _short(codec, buf, offset)
                buf[offset:offset + size] = acc.to_bytes(size, _BO)
            except Exception as e:
                raise _diagnose(codec, v, e) from None

        self.encode_into = encode_into
        self._default_encode()

    def _finish(self, out: list[Any], path: str) -> StructValue:
        given = [i for i, v in enumerate(out) if v is not _MISSING]
        if not given:
            return self.zero()  # type: ignore[no-any-return]
        b = bytearray(self.size)
        self.encode_into(b, 0, tuple.__new__(self.cls, out))
        value = self.decode(b)
        for i in given:
            if not values_equal(out[i], value[i]):
                others = ", ".join(self.fields[j].name for j in given if j != i)
                raise OptionError(f"{path}: union members disagree: {self.fields[i].name}="
                                  f"{out[i]!r} is overwritten by {others}; give one member")
        return value  # type: ignore[no-any-return]


__all__ = ["StructCodec", "UnionCodec"]
