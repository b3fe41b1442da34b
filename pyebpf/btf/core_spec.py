"""CO-RE access specs (libbpf's bpf_core_spec): parsing, matching and value calculation.

Mirrors bpf_core_parse_spec, bpf_core_spec_match / bpf_core_match_member and
bpf_core_calc_{field,type,enumval}_relo of libbpf's relo_core.c. Internal to
:mod:`pyebpf.btf.core`; errors are raised as :class:`CoreFail`.
"""

from __future__ import annotations

import errno
import re

from .._record import Record
from ..errors import CORERelocationError
from .core_types import (
    CoreFail,
    core_essential,
    fields_are_compat,
    get_type,
    kind_str,
    resolve_size,
    skip_mods,
    types_are_compat,
    types_match,
    vlen,
)
from .ext import CoreRelo, CoreReloKind
from .types import COMPOSITE_KINDS, ENUM_KINDS, INT_SIGNED, BTFView, Kind, Type

SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF
_SHRT_MAX = 0x7FFF

_FIELD_KINDS = frozenset(range(0, 6))
_TYPE_KINDS = frozenset({6, 7, 8, 9, 12})
_ENUMVAL_KINDS = frozenset({10, 11})

_KIND_STR = {
    0: "byte_off", 1: "byte_sz", 2: "field_exists", 3: "signed", 4: "lshift_u64",
    5: "rshift_u64", 6: "local_type_id", 7: "target_type_id", 8: "type_exists",
    9: "type_size", 10: "enumval_exists", 11: "enumval_value", 12: "type_matches",
}

# sscanf("%d%n"): optional C whitespace, optional sign, digits
_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def relo_kind_str(kind: int) -> str:
    return _KIND_STR.get(int(kind), "unknown")


def _as_kind(kind: int) -> int:
    try:
        return CoreReloKind(kind)
    except ValueError:
        return int(kind)


def _sext(v: int, bits: int) -> int:
    """Sign-extend the low ``bits`` of v, returned as an unsigned u64 (C integer promotion)."""
    v &= (1 << bits) - 1
    if v >> (bits - 1):
        v -= 1 << bits
    return v & _U64


class CoreAccessor(Record):
    """One high-level step of a spec: a named field (``name``) or an array index."""

    __slots__ = ("type_id", "idx", "name")
    type_id: int  # struct/union holding the field, or the array element type
    idx: int  # field index or array index
    name: str | None

    def __init__(self, type_id: int, idx: int, name: str | None = None) -> None:
        self.type_id = type_id
        self.idx = idx
        self.name = name


class CoreSpec(Record):
    """libbpf's bpf_core_spec: a parsed access path in one BTF."""

    btf: BTFView
    root_type_id: int
    kind: int
    accessors: list[CoreAccessor]
    raw_spec: list[int]
    bit_offset: int

    def __init__(self, btf: BTFView, root_type_id: int, kind: int,
                 accessors: list[CoreAccessor] | None = None, raw_spec: list[int] | None = None,
                 bit_offset: int = 0) -> None:
        self.btf = btf
        self.root_type_id = root_type_id
        self.kind = kind
        self.accessors = [] if accessors is None else accessors
        self.raw_spec = [] if raw_spec is None else raw_spec
        self.bit_offset = bit_offset

    @property
    def path(self) -> list[str | int]:
        """The access path as names (fields) and ints (array indices)."""
        return [a.name if a.name is not None else a.idx for a in self.accessors]

    def format(self) -> str:
        """Like libbpf's bpf_core_format_spec: ``<byte_off> [12] struct s.a[3] (0:1:3 @ offset 16)``."""
        t = get_type(self.btf, self.root_type_id)
        out = (f"<{relo_kind_str(self.kind)}> [{self.root_type_id}] {kind_str(t)} "
               f"{t.name or '<anon>'}")
        if self.kind in _TYPE_KINDS:
            return out
        if self.kind in _ENUMVAL_KINDS:
            _, et = skip_mods(self.btf, self.root_type_id)
            if et.kind in ENUM_KINDS and self.raw_spec and self.raw_spec[0] < vlen(et):
                ev = et.values[self.raw_spec[0]]  # type: ignore[union-attr]
                bits = 32 if et.kind == Kind.ENUM else 64
                val = _sext(ev.value, bits) & ((1 << bits) - 1)
                if et.signed and val >> (bits - 1):  # type: ignore[union-attr]
                    val -= 1 << bits
                out += f"::{ev.name} = {val}"
            return out
        for i, a in enumerate(self.accessors):
            if a.name is not None:
                out += f".{a.name}"
            elif i > 0 or a.idx > 0:
                out += f"[{a.idx}]"
        raw = ":".join(str(x) for x in self.raw_spec)
        bo = self.bit_offset
        off = f"{bo // 8}.{bo % 8}" if bo % 8 else f"{bo // 8}"
        return f"{out} ({raw} @ offset {off})"

    def __str__(self) -> str:
        return self.format()


# -- spec parsing -------------------------------------------------------------------


def _parse_access(s: str) -> list[int]:
    """Parse "0:1:2" exactly as libbpf's loop of sscanf("%d%n") does."""
    if not s or s[0] == ":":
        raise CoreFail(errno.EINVAL, f"malformed access string {s!r}")
    raw: list[int] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] == ":":
            i += 1
        m = _INT_RE.match(s, i)
        if m is None:
            raise CoreFail(errno.EINVAL, f"malformed access string {s!r}")
        if len(raw) == SPEC_MAX_LEN:
            raise CoreFail(errno.E2BIG, f"access string {s!r} too long")
        v = int(m.group(1))
        # negative or out-of-int indices are undefined behaviour in libbpf; reject them
        if v < 0 or v > 0x7FFFFFFF:
            raise CoreFail(errno.EINVAL, f"bad index {v} in access string {s!r}")
        raw.append(v)
        i = m.end()
    return raw


def _is_flex_arr(btf: BTFView, acc: CoreAccessor | None, nelems: int) -> bool:
    if acc is None or acc.name is None or nelems > 0:
        return False
    return acc.idx == vlen(get_type(btf, acc.type_id)) - 1


def _parse_spec(btf: BTFView, type_id: int, access: str, kind: int) -> CoreSpec:
    spec = CoreSpec(btf, type_id, kind)
    if not access or access[0] == ":":
        raise CoreFail(errno.EINVAL, f"malformed access string {access!r}")
    if kind in _TYPE_KINDS:
        if access != "0":
            raise CoreFail(errno.EINVAL, f"type-based relocation needs access string '0', "
                                         f"got {access!r}")
        return spec
    raw = _parse_access(access)
    spec.raw_spec = raw
    tid, t = skip_mods(btf, type_id)
    idx = raw[0]
    first = CoreAccessor(tid, idx)
    spec.accessors.append(first)
    if kind in _ENUMVAL_KINDS:
        if t.kind not in ENUM_KINDS or len(raw) > 1 or idx >= vlen(t):
            raise CoreFail(errno.EINVAL, f"enumerator access {access!r} invalid for "
                                         f"{kind_str(t)} [{tid}]")
        first.name = t.values[idx].name  # type: ignore[union-attr]
        return spec
    if kind not in _FIELD_KINDS:
        raise CoreFail(errno.EINVAL, f"unknown relocation kind {kind}")
    sz = resolve_size(btf, tid)
    bit_offset = (idx * sz * 8) & _U32
    for i in range(1, len(raw)):
        tid, t = skip_mods(btf, tid)
        idx = raw[i]
        if t.kind in COMPOSITE_KINDS:
            members = t.members  # type: ignore[union-attr]
            if idx >= len(members):
                raise CoreFail(errno.EINVAL, f"member index {idx} out of range for "
                                             f"{kind_str(t)} [{tid}] with {len(members)} members")
            m = members[idx]
            bit_offset = (bit_offset + m.bit_offset) & _U32
            if m.name:
                spec.accessors.append(CoreAccessor(tid, idx, m.name))
            tid = m.type
        elif t.kind == Kind.ARRAY:
            elem, _ = skip_mods(btf, t.type)  # type: ignore[union-attr]
            nelems = t.nelems  # type: ignore[union-attr]
            if not _is_flex_arr(btf, spec.accessors[-1], nelems) and idx >= nelems:
                raise CoreFail(errno.EINVAL, f"array index {idx} out of bounds "
                                             f"(nelems {nelems}) at type [{tid}]")
            tid = elem
            spec.accessors.append(CoreAccessor(tid, idx))
            sz = resolve_size(btf, tid)
            bit_offset = (bit_offset + idx * sz * 8) & _U32
        else:
            raise CoreFail(errno.EINVAL, f"relo for [{type_id}] {access} (at idx {i}) captures "
                                         f"type [{tid}] of unexpected kind {kind_str(t)}")
    spec.bit_offset = bit_offset
    return spec


def parse_spec(btf: BTFView, relo: CoreRelo) -> CoreSpec:
    """Parse a relocation's access string against the local BTF (bpf_core_parse_spec).

    Raises CORERelocationError when the access string or type id is malformed.
    """
    try:
        return _parse_spec(btf, relo.type_id, relo.access_str, _as_kind(relo.kind))
    except CoreFail as e:
        raise CORERelocationError(f"parsing [{relo.type_id}] + {relo.access_str!r} failed: {e}"
                                  ) from None


# -- matching a local spec against one candidate -------------------------------------


def _match_member(lbtf: BTFView, lacc: CoreAccessor, tbtf: BTFView, tid: int, spec: CoreSpec,
                  why: list[str], top: bool = True) -> tuple[int, int]:
    """bpf_core_match_member: returns (found, next target type id)."""
    tid, tt = skip_mods(tbtf, tid)
    if tt.kind not in COMPOSITE_KINDS:
        if top:  # anonymous non-composite members (padding bitfields) are just skipped
            why.append(f"[{tid}] {kind_str(tt)} is not a struct/union")
        return 0, tid
    lt = get_type(lbtf, lacc.type_id)
    lmember = lt.members[lacc.idx]  # type: ignore[union-attr]
    for i, m in enumerate(tt.members):  # type: ignore[union-attr]
        if len(spec.raw_spec) == SPEC_MAX_LEN:
            raise CoreFail(errno.E2BIG, "target access path too deep")
        spec.bit_offset = (spec.bit_offset + m.bit_offset) & _U32
        spec.raw_spec.append(i)
        if not m.name:
            found, nxt = _match_member(lbtf, lacc, tbtf, m.type, spec, why, False)
            if found:
                return found, nxt
        elif m.name == lmember.name:
            spec.accessors.append(CoreAccessor(tid, i, m.name))
            sub: list[str] = []
            found = fields_are_compat(lbtf, lmember.type, tbtf, m.type, sub)
            if not found:
                # libbpf pops only the accessor here, not raw_spec/bit_offset
                spec.accessors.pop()
                why.append(f"field {m.name!r} of [{tid}] has an incompatible type: "
                           + "; ".join(sub))
            return found, m.type
        spec.bit_offset = (spec.bit_offset - m.bit_offset) & _U32
        spec.raw_spec.pop()
    return 0, tid


def _spec_match(local: CoreSpec, tbtf: BTFView, tid: int, why: list[str]) -> CoreSpec | None:
    """bpf_core_spec_match: the target spec, or None when the candidate doesn't match."""
    targ = CoreSpec(tbtf, tid, local.kind)
    kind = local.kind
    if kind in _TYPE_KINDS:
        sub: list[str] = []
        if kind == CoreReloKind.TYPE_MATCHES:
            ok = types_match(local.btf, local.root_type_id, tbtf, tid, why=sub)
            if not ok:
                why.append("types don't match: " + "; ".join(sub))
        else:
            ok = types_are_compat(local.btf, local.root_type_id, tbtf, tid, why=sub)
            if not ok:
                why.append("types are not compatible: " + "; ".join(sub))
        return targ if ok else None

    lacc = local.accessors[0]
    if kind in _ENUMVAL_KINDS:
        tid, tt = skip_mods(tbtf, tid)
        if tt.kind not in ENUM_KINDS:
            why.append(f"[{tid}] {kind_str(tt)} is not an enum")
            return None
        lname = core_essential(lacc.name or "")
        for i, v in enumerate(tt.values):  # type: ignore[union-attr]
            if core_essential(v.name) == lname:
                targ.accessors.append(CoreAccessor(tid, i, v.name))
                targ.raw_spec.append(i)
                return targ
        why.append(f"enumerator {lacc.name!r} not found in [{tid}] {tt.name or '<anon>'}")
        return None

    if kind not in _FIELD_KINDS:
        raise CoreFail(errno.EINVAL, f"unknown relocation kind {kind}")

    for i, lacc in enumerate(local.accessors):
        tid, tt = skip_mods(tbtf, tid)
        if lacc.name is not None:
            nwhy = len(why)
            found, tid = _match_member(local.btf, lacc, tbtf, tid, targ, why)
            if found <= 0:
                if len(why) == nwhy:
                    why.append(f"field {lacc.name!r} not found in [{tid}] {kind_str(tt)} "
                               f"{tt.name or '<anon>'}")
                return None
        else:
            if i > 0:
                if tt.kind != Kind.ARRAY:
                    why.append(f"[{tid}] {kind_str(tt)} is not an array")
                    return None
                nelems = tt.nelems  # type: ignore[union-attr]
                if not _is_flex_arr(tbtf, targ.accessors[i - 1], nelems) and lacc.idx >= nelems:
                    why.append(f"array index {lacc.idx} out of bounds (nelems {nelems})")
                    return None
                tid, _ = skip_mods(tbtf, tt.type)  # type: ignore[union-attr]
            if len(targ.raw_spec) == SPEC_MAX_LEN:
                raise CoreFail(errno.E2BIG, "target access path too deep")
            targ.accessors.append(CoreAccessor(tid, lacc.idx))
            targ.raw_spec.append(lacc.idx)
            sz = resolve_size(tbtf, tid)
            targ.bit_offset = (targ.bit_offset + lacc.idx * sz * 8) & _U32
    return targ


# -- value calculation ---------------------------------------------------------------


class _Poison(Exception):
    """Internal: libbpf's -EUCLEAN, "poison the instruction"."""


def _member_type(spec: CoreSpec) -> tuple[Type, int, int]:
    acc = spec.accessors[-1]
    t = get_type(spec.btf, acc.type_id)
    m = t.members[acc.idx]  # type: ignore[union-attr]
    ftid, mt = skip_mods(spec.btf, m.type)
    return mt, ftid, m.bitfield_size


def _calc_field(kind: int, spec: CoreSpec | None, want_validate: bool
                ) -> tuple[int, int, int, bool]:
    """bpf_core_calc_field_relo: (val, field_sz, type_id, validate)."""
    validate = True
    if kind == CoreReloKind.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, validate
    if spec is None:
        raise _Poison()
    acc = spec.accessors[-1]
    if acc.name is None:  # a[n]: array element access
        if kind == CoreReloKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, resolve_size(spec.btf, acc.type_id), acc.type_id, True
        if kind == CoreReloKind.FIELD_BYTE_SIZE:
            return resolve_size(spec.btf, acc.type_id), 0, 0, True
        raise CoreFail(errno.EINVAL, f"relo {relo_kind_str(kind)} can't be applied to "
                                     "array access")
    mt, ftid, bit_sz = _member_type(spec)
    bit_off = spec.bit_offset
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = getattr(mt, "size", 0)
        if not byte_sz:
            raise CoreFail(errno.EINVAL, f"bitfield of unsized type [{ftid}]")
        byte_off = bit_off // 8 // byte_sz * byte_sz
        # smallest load size covering the whole bitfield
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise CoreFail(errno.E2BIG, f"relo {relo_kind_str(kind)} can't be satisfied "
                                            "for bitfield")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = resolve_size(spec.btf, ftid)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    # bitfield offsets/sizes are ambiguous (the compiler may pick another load), so the
    # expected value is only checked for non-bitfields
    validate = not bitfield
    field_sz = type_id = 0
    if kind == CoreReloKind.FIELD_BYTE_OFFSET:
        val = byte_off
        if not bitfield:
            field_sz, type_id = byte_sz, ftid
    elif kind == CoreReloKind.FIELD_BYTE_SIZE:
        val = byte_sz
    elif kind == CoreReloKind.FIELD_SIGNED:
        val = int((mt.kind in ENUM_KINDS and bool(mt.signed))  # type: ignore[union-attr]
                  or (mt.kind == Kind.INT and bool(mt.encoding & INT_SIGNED)))  # type: ignore[union-attr]
        validate = True
    elif kind == CoreReloKind.FIELD_LSHIFT_U64:
        val = (64 - (bit_off + bit_sz - byte_off * 8)) & _U64  # little endian
    elif kind == CoreReloKind.FIELD_RSHIFT_U64:
        val = (64 - bit_sz) & _U64
        validate = True
    else:
        raise CoreFail(errno.EOPNOTSUPP, f"unrecognized CO-RE relocation {kind}")
    return val, field_sz, type_id, validate


def _calc_type(kind: int, spec: CoreSpec | None) -> tuple[int, bool]:
    """bpf_core_calc_type_relo: (val, validate)."""
    if spec is None:
        return 0, True
    if kind == CoreReloKind.TYPE_ID_TARGET:
        # type ids in the instruction may change during linking: don't enforce them
        return spec.root_type_id, False
    if kind in (CoreReloKind.TYPE_EXISTS, CoreReloKind.TYPE_MATCHES):
        return 1, True
    if kind == CoreReloKind.TYPE_SIZE:
        return resolve_size(spec.btf, spec.root_type_id), True
    raise CoreFail(errno.EOPNOTSUPP, f"unrecognized CO-RE relocation {kind}")


def _calc_enumval(kind: int, spec: CoreSpec | None) -> int:
    if kind == CoreReloKind.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if kind == CoreReloKind.ENUMVAL_VALUE:
        if spec is None:
            raise _Poison()
        acc = spec.accessors[0]
        t = get_type(spec.btf, acc.type_id)
        v = t.values[acc.idx].value  # type: ignore[union-attr]
        # btf_enum.val is an s32 widened to u64; enum64 is a plain u64
        return _sext(v, 32) if t.kind == Kind.ENUM else v & _U64
    raise CoreFail(errno.EOPNOTSUPP, f"unrecognized CO-RE relocation {kind}")
