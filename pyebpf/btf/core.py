"""The CO-RE relocation engine (pure; libbpf's relo_core.c + the candidate logic of libbpf.c).

:class:`CoreRelocator` resolves ``bpf_core_relo`` records of a local (object) BTF against
target BTFs (the kernel's first, then modules), and patches instructions exactly as
``bpf_core_patch_insn`` does, so the resulting bytes, and so the program tag, equal
libbpf's. Every result explains itself: which candidate types were tried and why each
was accepted or rejected.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import insn as _insn
from ..errors import CORERelocationError
from .core_types import (
    CoreFail,
    core_essential,
    fields_are_compat,
    get_type,
    kind_core_compat,
    kind_str,
    resolve_size,
    skip_mods,
    types_are_compat,
    types_match,
    vlen,
)
from .ext import CoreRelo, CoreReloKind
from .types import COMPOSITE_KINDS, ENUM_KINDS, INT_SIGNED, BTFView, Kind, Type, essential_name

__all__ = [
    "CoreAccessor", "CoreCandidate", "CoreRelo", "CoreReloKind", "CoreRelocator", "CoreResult",
    "CoreSpec", "parse_spec",
]

log = logging.getLogger("pyebpf.core")

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


@dataclass(slots=True)
class CoreAccessor:
    """One high-level step of a spec: a named field (``name``) or an array index."""

    type_id: int  # struct/union holding the field, or the array element type
    idx: int  # field index or array index
    name: str | None = None


@dataclass
class CoreSpec:
    """libbpf's bpf_core_spec: a parsed access path in one BTF."""

    btf: BTFView
    root_type_id: int
    kind: int
    accessors: list[CoreAccessor] = field(default_factory=list)
    raw_spec: list[int] = field(default_factory=list)
    bit_offset: int = 0

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


@dataclass
class CoreCandidate:
    """One candidate target type and the verdict on it."""

    target: int  # index into CoreRelocator.targets
    type_id: int
    name: str
    matched: bool
    reason: str = ""
    spec: CoreSpec | None = None
    new_val: int | None = None
    poison: bool = False

    def __str__(self) -> str:
        verdict = "matching" if self.matched else f"rejected ({self.reason})"
        spec = f" {self.spec}" if self.spec is not None and self.matched else ""
        return f"[{self.type_id}] {self.name} in target #{self.target}: {verdict}{spec}"


@dataclass
class CoreResult:
    """libbpf's bpf_core_relo_res plus the specs and an explanation."""

    relo: CoreRelo
    kind: int
    local_spec: CoreSpec
    target_spec: CoreSpec | None = None
    target: int | None = None  # index of the chosen target BTF
    orig_val: int = 0
    new_val: int = 0
    orig_sz: int = 0
    new_sz: int = 0
    orig_type_id: int = 0
    new_type_id: int = 0
    poison: bool = False
    validate: bool = True
    fail_memsz_adjust: bool = False
    candidates: list[CoreCandidate] = field(default_factory=list)
    explain: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        tgt = str(self.target_spec) if self.target_spec is not None else "no matching target"
        if self.poison:
            verdict = "poisoned"
        else:
            verdict = f"{self.orig_val} -> {self.new_val}"
        return f"{self.local_spec} => {tgt}: {verdict}"


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


def _calc_relo(relo: CoreRelo, kind: int, local: CoreSpec, targ: CoreSpec | None,
               res: CoreResult) -> None:
    """bpf_core_calc_relo: fill the value fields of ``res`` for one target (or none)."""
    res.orig_val = res.new_val = 0
    res.poison = False
    res.validate = True
    res.fail_memsz_adjust = False
    res.orig_sz = res.new_sz = res.orig_type_id = res.new_type_id = 0
    try:
        if kind in _FIELD_KINDS:
            res.orig_val, res.orig_sz, res.orig_type_id, res.validate = _calc_field(
                kind, local, True)
            res.new_val, res.new_sz, res.new_type_id, _ = _calc_field(kind, targ, False)
            if res.orig_sz != res.new_sz and targ is not None:
                ot = get_type(local.btf, res.orig_type_id)
                nt = get_type(targ.btf, res.new_type_id)
                # resizing a load is safe only for pointers and unsigned ints (zero-extension)
                if ot.kind == Kind.PTR and nt.kind == Kind.PTR:
                    return
                if (ot.kind == Kind.INT and nt.kind == Kind.INT
                        and ot.encoding != INT_SIGNED  # type: ignore[union-attr]
                        and nt.encoding != INT_SIGNED):  # type: ignore[union-attr]
                    return
                res.fail_memsz_adjust = True
        elif kind in _TYPE_KINDS:
            res.orig_val, res.validate = _calc_type(kind, local)
            res.new_val, _ = _calc_type(kind, targ)
        elif kind in _ENUMVAL_KINDS:
            res.orig_val = _calc_enumval(kind, local)
            res.new_val = _calc_enumval(kind, targ)
        else:
            raise CoreFail(errno.EOPNOTSUPP, f"unrecognized CO-RE relocation "
                                             f"{relo_kind_str(kind)} ({kind})")
    except _Poison:
        res.poison = True


# -- the relocator -------------------------------------------------------------------


class CoreRelocator:
    """Resolves CO-RE relocations of ``local`` BTF against ``targets``.

    ``targets[0]`` is the main (vmlinux) BTF; the others (module BTFs) are searched only
    when it has no candidate at all, as libbpf does. Candidate lists are cached per local
    type id and pruned to the matching ones after each relocation, as libbpf does per
    object: create one relocator per object load.
    """

    def __init__(self, local: BTFView, targets: Sequence[BTFView]):
        self.local = local
        self.targets = list(targets)
        self._cands: dict[int, list[tuple[int, int]]] = {}
        self._pruned: dict[int, list[tuple[int, int]]] = {}

    # candidate search (bpf_core_find_cands / bpf_core_add_cands)

    def _add_cands(self, ti: int, local_t: Type, ess: str, start_id: int,
                   out: list[tuple[int, int]]) -> None:
        view = self.targets[ti]
        finder = getattr(view, "candidates", None)
        if finder is not None:
            # views index by types.essential_name (first "___"); libbpf cuts at the last
            # X___Y. Every libbpf match is in this superset; filter exactly below.
            ids = sorted(set(finder(essential_name(ess))))
        else:
            ids = range(1, len(view))
        for tid in ids:
            if tid < start_id:
                continue
            t = get_type(view, tid)
            if not kind_core_compat(t, local_t) or not t.name:
                continue
            if core_essential(t.name) != ess:
                continue
            out.append((ti, tid))

    def find_candidates(self, local_id: int) -> list[tuple[int, int]]:
        """(target index, type id) of every candidate for a local type (cached, pruned)."""
        cands = self._cands.get(local_id)
        if cands is not None:
            return cands
        local_t = get_type(self.local, local_id)
        if not local_t.name:
            raise CoreFail(errno.EINVAL, f"[{local_id}] {kind_str(local_t)} is anonymous: "
                                         "no candidate search for anonymous types")
        ess = core_essential(local_t.name)
        cands = []
        if self.targets:
            self._add_cands(0, local_t, ess, 1, cands)
            if not cands:
                main_len = len(self.targets[0])
                for ti in range(1, len(self.targets)):
                    start = getattr(self.targets[ti], "start_id", 1)
                    if getattr(self.targets[ti], "base", None) is None:
                        start = 1
                    else:
                        start = max(start, main_len)
                    self._add_cands(ti, local_t, ess, start, cands)
        self._cands[local_id] = cands
        return cands

    def _cand_name(self, ti: int, tid: int) -> str:
        t = get_type(self.targets[ti], tid)
        return f"{kind_str(t)} {t.name}"

    def resolve(self, relo: CoreRelo, relo_index: int | None = None,
                prog_name: str = "") -> CoreResult:
        """Resolve one relocation (bpf_core_resolve_relo + bpf_core_calc_relo_insn).

        Unresolvable relocations come back with ``poison=True`` (or value 0 for the
        existence kinds); errors (malformed record, ambiguity) raise CORERelocationError.
        """
        try:
            return self._resolve(relo, relo_index, prog_name)
        except CoreFail as e:
            raise CORERelocationError(str(e), program=prog_name or None,
                                      relo_index=relo_index) from None

    def _resolve(self, relo: CoreRelo, relo_index: int | None, prog_name: str) -> CoreResult:
        kind = _as_kind(relo.kind)
        local_id = relo.type_id
        local_t = get_type(self.local, local_id)
        cands: list[tuple[int, int]] | None = None
        if kind != CoreReloKind.TYPE_ID_LOCAL:
            cands = self.find_candidates(local_id)
        try:
            local = _parse_spec(self.local, local_id, relo.access_str, kind)
        except CoreFail as e:
            raise CoreFail(errno.EINVAL,
                           f"parsing [{local_id}] {kind_str(local_t)} "
                           f"{local_t.name or '<anon>'} + {relo.access_str!r} failed: {e}"
                           ) from None
        res = CoreResult(relo, kind, local)
        res.explain.append(f"local: {local}")
        tag = f"prog '{prog_name}': relo #{relo_index}: " if prog_name else ""
        log.debug("%s%s", tag, local)

        if kind == CoreReloKind.TYPE_ID_LOCAL:
            res.validate = False
            res.orig_val = res.new_val = local.root_type_id
            res.explain.append("local type id needs no target")
            return res
        if not local_t.name:
            raise CoreFail(errno.EOPNOTSUPP, f"<{relo_kind_str(kind)}> relocation doesn't "
                                             "support anonymous types")
        assert cands is not None
        for ti, tid in self._pruned.get(local_id, []):
            res.explain.append(f"[{tid}] {self._cand_name(ti, tid)}: skipped, pruned by an "
                               "earlier relocation on the same local type")
        if not cands:
            res.explain.append(f"no candidate type named {core_essential(local_t.name)!r} "
                               f"({kind_str(local_t)}) in any target")

        best: CoreSpec | None = None
        kept: list[tuple[int, int]] = []
        for ti, tid in cands:
            why: list[str] = []
            cand_spec = _spec_match(local, self.targets[ti], tid, why)
            name = self._cand_name(ti, tid)
            if cand_spec is None:
                reason = "; ".join(why) or "no match"
                res.candidates.append(CoreCandidate(ti, tid, name, False, reason))
                res.explain.append(f"candidate [{tid}] {name}: rejected: {reason}")
                log.debug("%snon-matching candidate [%d] %s: %s", tag, tid, name, reason)
                continue
            cres = CoreResult(relo, kind, local, cand_spec, ti)
            _calc_relo(relo, kind, local, cand_spec, cres)
            cand = CoreCandidate(ti, tid, name, True, "", cand_spec, cres.new_val, cres.poison)
            res.candidates.append(cand)
            res.explain.append(f"candidate [{tid}] {name}: matching: {cand_spec}")
            log.debug("%smatching candidate [%d] %s", tag, tid, cand_spec)
            if best is None:
                best = cand_spec
                _copy_values(cres, res)
                res.target_spec, res.target = cand_spec, ti
            elif cand_spec.bit_offset != best.bit_offset:
                raise CoreFail(errno.EINVAL, f"field offset ambiguity: {cand_spec.bit_offset} "
                                             f"!= {best.bit_offset} ([{tid}] {name} vs "
                                             f"[{best.root_type_id}])")
            elif cres.poison != res.poison or cres.new_val != res.new_val:
                def verdict(r: CoreResult) -> str:
                    return f"{'failure' if r.poison else 'success'} {r.new_val}"
                raise CoreFail(errno.EINVAL, f"relocation decision ambiguity: {verdict(cres)} "
                                             f"!= {verdict(res)} ([{tid}] {name} vs "
                                             f"[{best.root_type_id}])")
            kept.append((ti, tid))

        if kept:
            if len(kept) != len(cands):
                pruned = [c for c in cands if c not in kept]
                self._pruned.setdefault(local_id, []).extend(pruned)
            cands[:] = kept  # libbpf narrows the cached list for later relocations
        else:
            _calc_relo(relo, kind, local, None, res)
            res.explain.append("no matching target: " + (
                "instruction will be poisoned" if res.poison else f"value {res.new_val}"))
        return res

    # patching (bpf_core_patch_insn)

    def apply(self, insns: bytearray, relo: CoreRelo, result: CoreResult, prog_name: str = "",
              insn_idx: int | None = None, relo_index: int | None = None) -> None:
        """Patch instruction ``insn_idx`` (default ``relo.insn_off``) as libbpf does.

        Raises CORERelocationError when the instruction doesn't fit the relocation.
        """
        patch_insn(insns, relo.insn_off if insn_idx is None else insn_idx, result,
                   prog_name, relo_index)

    def relocate(self, insns: bytearray, relos: Sequence[CoreRelo], prog_name: str = "",
                 insn_offset: int = 0) -> list[CoreResult]:
        """Resolve and apply every relocation; ``insn_offset`` is the program's first
        instruction index within its ELF section (relo.insn_off is section-relative)."""
        n = _insn.count(insns)
        results = []
        for i, relo in enumerate(relos):
            idx = relo.insn_off - insn_offset
            if idx < 0 or idx >= n:
                raise CORERelocationError(f"instruction #{relo.insn_off} outside the program",
                                          program=prog_name or None, relo_index=i)
            res = self.resolve(relo, i, prog_name)
            patch_insn(insns, idx, res, prog_name, i)
            results.append(res)
        return results


def _copy_values(src: CoreResult, dst: CoreResult) -> None:
    for name in ("orig_val", "new_val", "orig_sz", "new_sz", "orig_type_id", "new_type_id",
                 "poison", "validate", "fail_memsz_adjust"):
        setattr(dst, name, getattr(src, name))


def _poison_one(insns: bytearray, idx: int) -> None:
    _insn.put(insns, idx, _insn.Insn(_insn.BPF_JMP | _insn.BPF_CALL, 0, 0, 0,
                                     _insn.CORE_POISON_IMM))


_SIZE_BYTES = {_insn.BPF_DW: 8, _insn.BPF_W: 4, _insn.BPF_H: 2, _insn.BPF_B: 1}
_BYTES_SIZE = {v: k for k, v in _SIZE_BYTES.items()}


def patch_insn(insns: bytearray, idx: int, res: CoreResult, prog_name: str = "",
               relo_index: int | None = None) -> None:
    """libbpf's bpf_core_patch_insn on instruction ``idx`` of ``insns``."""

    def fail(msg: str) -> CORERelocationError:
        return CORERelocationError(f"insn #{idx} {msg}", program=prog_name or None,
                                   relo_index=relo_index)

    n = _insn.count(insns)
    if idx < 0 or idx >= n:
        raise fail(f"out of range (program has {n} instructions)")
    ins = _insn.get(insns, idx)
    cls = _insn.insn_class(ins.code)
    is_ld64 = ins.code == _insn.LD_IMM64

    def poison() -> None:
        # poison the second half of ld_imm64 too, or the verifier reports "unknown opcode 00"
        if is_ld64:
            if idx + 1 >= n:
                raise fail("(LDIMM64) is truncated")
            _poison_one(insns, idx + 1)
        _poison_one(insns, idx)
        log.debug("prog '%s': relo #%s: substituting insn #%d w/ invalid insn",
                  prog_name, relo_index, idx)

    if res.poison:
        poison()
        return
    orig_val, new_val = res.orig_val & _U64, res.new_val & _U64
    if cls in (_insn.BPF_ALU, _insn.BPF_ALU64):
        if ins.code & _insn.BPF_X:
            raise fail("(ALU/ALU64) uses a register source, expected an immediate")
        if res.validate and _sext(ins.imm, 32) != orig_val:
            raise fail(f"(ALU/ALU64) unexpected value: got {ins.imm & _U32}, exp {orig_val} "
                       f"-> {new_val}")
        _insn.set_imm(insns, idx, new_val)
    elif cls in (_insn.BPF_LDX, _insn.BPF_ST, _insn.BPF_STX):
        if res.validate and _sext(ins.off, 16) != orig_val:
            raise fail(f"(LDX/ST/STX) unexpected value: got {ins.off & 0xFFFF}, exp "
                       f"{orig_val} -> {new_val}")
        if new_val > _SHRT_MAX:
            raise fail(f"(LDX/ST/STX) value too big: {new_val}")
        if res.fail_memsz_adjust:
            msg = (f"insn #{idx} (LDX/ST/STX) accesses field incorrectly: its size changes "
                   f"{res.orig_sz} -> {res.new_sz} but it is not a pointer or unsigned "
                   "integer; instruction poisoned")
            res.explain.append(msg)
            log.debug("prog '%s': relo #%s: %s", prog_name, relo_index, msg)
            poison()
            return
        _insn.set_off(insns, idx, new_val)
        if res.new_sz != res.orig_sz:
            have = _SIZE_BYTES[ins.code & 0x18]
            if have != res.orig_sz:
                raise fail(f"(LDX/ST/STX) unexpected mem size: got {have}, exp {res.orig_sz}")
            new_size = _BYTES_SIZE.get(res.new_sz)
            if new_size is None:
                raise fail(f"(LDX/ST/STX) invalid new mem size: {res.new_sz}")
            insns[idx * _insn.INSN_SIZE] = (ins.code & 0xE0) | new_size | cls
    elif cls == _insn.BPF_LD:
        nxt = _insn.get(insns, idx + 1) if idx + 1 < n else None
        if (not is_ld64 or ins.src != 0 or ins.off != 0 or nxt is None or nxt.code != 0
                or nxt.dst != 0 or nxt.src != 0 or nxt.off != 0):
            raise fail("(LDIMM64) has unexpected form")
        imm = (ins.imm & _U32) | ((nxt.imm & _U32) << 32)
        if res.validate and imm != orig_val:
            raise fail(f"(LDIMM64) unexpected value: got {imm}, exp {orig_val} -> {new_val}")
        _insn.set_imm(insns, idx, new_val & _U32)
        _insn.set_imm(insns, idx + 1, new_val >> 32)
    else:
        raise fail(f"trying to relocate unrecognized insn, code:{ins.code:#x}, src:{ins.src:#x}, "
                   f"dst:{ins.dst:#x}, off:{ins.off:#x}, imm:{ins.imm & _U32:#x}")
