"""Type comparison rules of CO-RE (libbpf's relo_core.c), over :class:`BTFView` s.

Everything here mirrors libbpf one to one: ``types_are_compat`` for the type-based
relocation kinds, ``fields_are_compat`` for field accesses, ``types_match`` for
TYPE_MATCHES, plus the small helpers they rely on (essential names with libbpf's
exact flavour rule, modifier skipping, ``btf__resolve_size``).

Functions return 1 (compatible) / 0 (not), and raise :class:`CoreFail` where libbpf
returns a negative errno: the relocation then fails as a whole.
"""

from __future__ import annotations

import errno

from ..errors import BTFError
from .types import (
    COMPOSITE_KINDS,
    ENUM_KINDS,
    INT_SIGNED,
    BTFView,
    Kind,
    Type,
)

# Kinds skipped by libbpf's skip_mods_and_typedefs (btf_is_mod() + typedef).
_SKIPPED = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
# libbpf follows modifier chains without a bound; real BTF never nests this deep, so a
# longer chain can only be a loop in malformed input.
_MAX_MOD_CHAIN = 256
# btf__resolve_size's MAX_RESOLVE_DEPTH
_MAX_RESOLVE_DEPTH = 32
_U32_MAX = 0xFFFFFFFF
PTR_SIZE = 8  # BPF targets are 64-bit

KIND_STR = {
    Kind.UNKN: "void", Kind.INT: "int", Kind.PTR: "ptr", Kind.ARRAY: "array",
    Kind.STRUCT: "struct", Kind.UNION: "union", Kind.ENUM: "enum", Kind.FWD: "fwd",
    Kind.TYPEDEF: "typedef", Kind.VOLATILE: "volatile", Kind.CONST: "const",
    Kind.RESTRICT: "restrict", Kind.FUNC: "func", Kind.FUNC_PROTO: "func_proto",
    Kind.VAR: "var", Kind.DATASEC: "datasec", Kind.FLOAT: "float",
    Kind.DECL_TAG: "decl_tag", Kind.TYPE_TAG: "type_tag", Kind.ENUM64: "enum64",
}


class CoreFail(Exception):
    """Internal: libbpf would return ``-err`` here. Turned into CORERelocationError."""

    def __init__(self, err: int, message: str):
        self.err = err
        super().__init__(message)


def kind_str(t: Type) -> str:
    return KIND_STR.get(t.kind, "unknown")


def get_type(btf: BTFView, type_id: int) -> Type:
    """``btf.type(type_id)``, with a bad id turned into CoreFail(EINVAL)."""
    try:
        return btf.type(type_id)
    except BTFError as e:
        raise CoreFail(errno.EINVAL, f"bad type id {type_id}: {e}") from None
    except (IndexError, KeyError, TypeError):
        raise CoreFail(errno.EINVAL, f"bad type id {type_id}") from None


def skip_mods(btf: BTFView, type_id: int) -> tuple[int, Type]:
    """libbpf's skip_mods_and_typedefs: (resolved id, resolved type)."""
    t = get_type(btf, type_id)
    for _ in range(_MAX_MOD_CHAIN):
        if t.kind not in _SKIPPED:
            return type_id, t
        type_id = t.type  # type: ignore[union-attr]
        t = get_type(btf, type_id)
    raise CoreFail(errno.ELOOP, f"modifier chain loops at type id {type_id}")


def vlen(t: Type) -> int:
    k = t.kind
    if k in COMPOSITE_KINDS:
        return len(t.members)  # type: ignore[union-attr]
    if k in ENUM_KINDS:
        return len(t.values)  # type: ignore[union-attr]
    if k == Kind.FUNC_PROTO:
        return len(t.params)  # type: ignore[union-attr]
    if k == Kind.DATASEC:
        return len(t.vars)  # type: ignore[union-attr]
    return 0


def resolve_size(btf: BTFView, type_id: int) -> int:
    """libbpf's btf__resolve_size; raises CoreFail(EINVAL/E2BIG) where it returns < 0."""
    nelems = 1
    size = -1
    t = get_type(btf, type_id)
    for _ in range(_MAX_RESOLVE_DEPTH):
        k = t.kind
        if k == Kind.UNKN:
            break
        if k in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.DATASEC,
                 Kind.FLOAT):
            size = t.size  # type: ignore[union-attr]
            break
        if k == Kind.PTR:
            size = PTR_SIZE
            break
        if k in _SKIPPED or k in (Kind.VAR, Kind.DECL_TAG):
            type_id = t.type  # type: ignore[union-attr]
        elif k == Kind.ARRAY:
            n = t.nelems  # type: ignore[union-attr]
            if nelems and n > _U32_MAX // nelems:
                raise CoreFail(errno.E2BIG, f"array size overflow at type id {type_id}")
            nelems *= n
            type_id = t.type  # type: ignore[union-attr]
        else:
            raise CoreFail(errno.EINVAL, f"type id {type_id} ({kind_str(t)}) has no size")
        t = get_type(btf, type_id)
    if size < 0:
        raise CoreFail(errno.EINVAL, f"cannot resolve size of type id {type_id}")
    if nelems and size > _U32_MAX // nelems:
        raise CoreFail(errno.E2BIG, f"size overflow at type id {type_id}")
    return nelems * size


def _is_flavor_sep(name: str, i: int) -> bool:
    # X___Y where X and Y are not underscores (libbpf's bpf_core_is_flavor_sep)
    return (name[i] != "_" and name[i + 1] == "_" and name[i + 2] == "_"
            and name[i + 3] == "_" and name[i + 4] != "_")


def essential_len(name: str) -> int:
    """libbpf's bpf_core_essential_name_len: cut at the LAST ``X___Y`` separator."""
    for i in range(len(name) - 5, -1, -1):
        if _is_flavor_sep(name, i):
            return i + 1
    return len(name)


def core_essential(name: str) -> str:
    """The essential name as libbpf computes it (may differ from types.essential_name
    for names with several ``___``)."""
    return name[: essential_len(name)]


def _int_offset(t: Type) -> int:
    return getattr(t, "offset", 0)


def _int_encoding(t: Type) -> int:
    return getattr(t, "encoding", 0)


def _kflag(t: Type) -> bool:
    k = t.kind
    if k in ENUM_KINDS:
        return bool(t.signed)  # type: ignore[union-attr]
    if k == Kind.FWD:
        return bool(t.union)  # type: ignore[union-attr]
    if k in COMPOSITE_KINDS:
        return bool(t.bitfield_encoding)  # type: ignore[union-attr]
    return False


def kind_core_compat(a: Type, b: Type) -> bool:
    """libbpf's btf_kind_core_compat: same kind, or enum vs enum64."""
    return a.kind == b.kind or (a.kind in ENUM_KINDS and b.kind in ENUM_KINDS)


def types_are_compat(lbtf: BTFView, lid: int, tbtf: BTFView, tid: int,
                     level: int = 32, why: list[str] | None = None) -> int:
    """libbpf's __bpf_core_types_are_compat (type-based relocations)."""
    lt = get_type(lbtf, lid)
    tt = get_type(tbtf, tid)
    if not kind_core_compat(lt, tt):
        _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
        return 0
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise CoreFail(errno.EINVAL, "type compatibility check too deep")
        lid, lt = skip_mods(lbtf, lid)
        tid, tt = skip_mods(tbtf, tid)
        if not kind_core_compat(lt, tt):
            _say(why, f"kind {kind_str(lt)} [{lid}] != {kind_str(tt)} [{tid}]")
            return 0
        k = lt.kind
        if k in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.ENUM64):
            return 1
        if k == Kind.INT:
            ok = _int_offset(lt) == 0 and _int_offset(tt) == 0
            if not ok:
                _say(why, f"bitfield-like int [{lid}]/[{tid}]")
            return int(ok)
        if k == Kind.PTR:
            lid, tid = lt.type, tt.type  # type: ignore[union-attr]
            continue
        if k == Kind.ARRAY:
            lid, tid = lt.type, tt.type  # type: ignore[union-attr]
            continue
        if k == Kind.FUNC_PROTO:
            lp, tp = lt.params, tt.params  # type: ignore[union-attr]
            if len(lp) != len(tp):
                _say(why, f"func_proto [{lid}]/[{tid}] param count {len(lp)} != {len(tp)}")
                return 0
            for a, b in zip(lp, tp, strict=True):
                if level <= 0:
                    raise CoreFail(errno.EINVAL, "type compatibility check too deep")
                la, _ = skip_mods(lbtf, a.type)
                tb, _ = skip_mods(tbtf, b.type)
                r = types_are_compat(lbtf, la, tbtf, tb, level - 1, why)
                if r <= 0:
                    return r
            lid, _ = skip_mods(lbtf, lt.return_type)  # type: ignore[union-attr]
            tid, _ = skip_mods(tbtf, tt.return_type)  # type: ignore[union-attr]
            continue
        _say(why, f"unexpected kind {kind_str(lt)} relocated, local [{lid}], target [{tid}]")
        return 0


def fields_are_compat(lbtf: BTFView, lid: int, tbtf: BTFView, tid: int,
                      why: list[str] | None = None) -> int:
    """libbpf's bpf_core_fields_are_compat (field-based relocations)."""
    # libbpf loops without bound over array element types; cap it for looping input
    for _ in range(_MAX_MOD_CHAIN):
        lid, lt = skip_mods(lbtf, lid)
        tid, tt = skip_mods(tbtf, tid)
        if lt.kind in COMPOSITE_KINDS and tt.kind in COMPOSITE_KINDS:
            return 1
        if not kind_core_compat(lt, tt):
            _say(why, f"field type kind {kind_str(lt)} [{lid}] != {kind_str(tt)} [{tid}]")
            return 0
        k = lt.kind
        if k in (Kind.PTR, Kind.FLOAT):
            return 1
        if k in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            ln = core_essential(lt.name)
            tn = core_essential(tt.name)
            ok = not ln or not tn or ln == tn
            if not ok:
                _say(why, f"{kind_str(lt)} names differ: {lt.name!r} vs {tt.name!r}")
            return int(ok)
        if k == Kind.INT:
            ok = _int_offset(lt) == 0 and _int_offset(tt) == 0
            if not ok:
                _say(why, f"bitfield-like int [{lid}]/[{tid}]")
            return int(ok)
        if k == Kind.ARRAY:
            lid, tid = lt.type, tt.type  # type: ignore[union-attr]
            continue
        _say(why, f"field of kind {kind_str(lt)} cannot be relocated")
        return 0
    raise CoreFail(errno.ELOOP, f"array element types loop at [{lid}]/[{tid}]")


def names_match(lname: str, tname: str) -> bool:
    """libbpf's bpf_core_names_match: essential names equal; anonymous only matches anonymous."""
    if not tname:
        return not lname
    return core_essential(lname) == core_essential(tname)


def enums_match(lt: Type, tt: Type, why: list[str] | None = None) -> int:
    if lt.size != tt.size:  # type: ignore[union-attr]
        _say(why, f"enum sizes differ: {lt.size} != {tt.size}")  # type: ignore[union-attr]
        return 0
    lvals, tvals = lt.values, tt.values  # type: ignore[union-attr]
    if len(lvals) > len(tvals):
        _say(why, f"enum {lt.name!r} has more values than target")
        return 0
    for lv in lvals:
        if not any(names_match(lv.name, tv.name) for tv in tvals):
            _say(why, f"enumerator {lv.name!r} missing in target")
            return 0
    return 1


def _composites_match(lbtf: BTFView, lt: Type, tbtf: BTFView, tt: Type, behind_ptr: bool,
                      level: int, why: list[str] | None) -> int:
    lms, tms = lt.members, tt.members  # type: ignore[union-attr]
    if len(lms) > len(tms):
        _say(why, f"{kind_str(lt)} {lt.name!r} has more members than target")
        return 0
    for lm in lms:
        matched = False
        for tm in tms:
            if not names_match(lm.name, tm.name):
                continue
            r = types_match(lbtf, lm.type, tbtf, tm.type, behind_ptr, level - 1, why)
            if r > 0:
                matched = True
                break
        if not matched:
            _say(why, f"member {lm.name!r} of {lt.name!r} has no match in target")
            return 0
    return 1


def types_match(lbtf: BTFView, lid: int, tbtf: BTFView, tid: int, behind_ptr: bool = False,
                level: int = 32, why: list[str] | None = None) -> int:
    """libbpf's __bpf_core_types_match (TYPE_MATCHES)."""
    if level <= 0:
        raise CoreFail(errno.EINVAL, "type match check too deep")
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise CoreFail(errno.EINVAL, "type match check too deep")
        lid, lt = skip_mods(lbtf, lid)
        tid, tt = skip_mods(tbtf, tid)
        if not names_match(lt.name, tt.name):
            _say(why, f"names differ: {lt.name!r} [{lid}] vs {tt.name!r} [{tid}]")
            return 0
        lk, tk = lt.kind, tt.kind
        if lk == Kind.UNKN:
            return int(lk == tk)
        if lk == Kind.FWD:
            lf = _kflag(lt)
            if behind_ptr:
                if lk == tk:
                    return int(lf == _kflag(tt))
                return int((tk == Kind.STRUCT and not lf) or (tk == Kind.UNION and lf))
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            return int(lf == _kflag(tt))
        if lk in ENUM_KINDS:
            if tk not in ENUM_KINDS:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            return enums_match(lt, tt, why)
        if lk in COMPOSITE_KINDS:
            if behind_ptr:
                if lk == tk:
                    return 1
                if tk != Kind.FWD:
                    _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                    return 0
                return int((lk == Kind.UNION) == _kflag(tt))
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            return _composites_match(lbtf, lt, tbtf, tt, behind_ptr, level, why)
        if lk == Kind.INT:
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            ok = (lt.size == tt.size  # type: ignore[union-attr]
                  and (_int_encoding(lt) & INT_SIGNED) == (_int_encoding(tt) & INT_SIGNED))
            if not ok:
                _say(why, f"int {lt.name!r} size/signedness differ")
            return int(ok)
        if lk == Kind.PTR:
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            behind_ptr = True
            lid, tid = lt.type, tt.type  # type: ignore[union-attr]
            continue
        if lk == Kind.ARRAY:
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            if lt.nelems != tt.nelems:  # type: ignore[union-attr]
                _say(why, f"array lengths differ: {lt.nelems} != {tt.nelems}")  # type: ignore[union-attr]
                return 0
            lid, tid = lt.type, tt.type  # type: ignore[union-attr]
            continue
        if lk == Kind.FUNC_PROTO:
            if lk != tk:
                _say(why, f"kind {kind_str(lt)} != {kind_str(tt)}")
                return 0
            lp, tp = lt.params, tt.params  # type: ignore[union-attr]
            if len(lp) != len(tp):
                _say(why, "func_proto param counts differ")
                return 0
            for a, b in zip(lp, tp, strict=True):
                r = types_match(lbtf, a.type, tbtf, b.type, behind_ptr, level - 1, why)
                if r <= 0:
                    return r
            lid, tid = lt.return_type, tt.return_type  # type: ignore[union-attr]
            continue
        # libbpf: "unexpected kind ... relocated" (FLOAT lands here too)
        _say(why, f"unexpected kind {kind_str(lt)} relocated, local [{lid}], target [{tid}]")
        return 0


def _say(why: list[str] | None, msg: str) -> None:
    if why is not None:
        why.append(msg)
