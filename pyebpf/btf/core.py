"""The CO-RE relocation engine (pure; libbpf's relo_core.c + the candidate logic of libbpf.c).

:class:`CoreRelocator` resolves ``bpf_core_relo`` records of a local (object) BTF against
target BTFs (the kernel's first, then modules), and patches instructions exactly as
``bpf_core_patch_insn`` does, so the resulting bytes, and so the program tag, equal
libbpf's. Every result explains itself: which candidate types were tried and why each
was accepted or rejected.

Layout: ``core_types`` (compat/match rules, sizes, essential names), ``core_spec``
(access specs: parse, match, values), ``core_patch`` (instruction patching), and this
module (candidate search and caching, ambiguity checks, the public API).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from .. import insn as _insn
from .._log import get_logger
from .._record import Record
from ..errors import CORERelocationError
from .core_patch import patch_insn
from .core_spec import (
    _ENUMVAL_KINDS,
    _FIELD_KINDS,
    _TYPE_KINDS,
    CoreAccessor,
    CoreSpec,
    _as_kind,
    _calc_enumval,
    _calc_field,
    _calc_type,
    _parse_spec,
    _Poison,
    _spec_match,
    parse_spec,
    relo_kind_str,
)
from .core_types import CoreFail, core_essential, get_type, kind_core_compat, kind_str
from .ext import CoreRelo, CoreReloKind
from .types import INT_SIGNED, BTFView, Kind, Type, essential_name

__all__ = [
    "CoreAccessor", "CoreCandidate", "CoreRelo", "CoreReloKind", "CoreRelocator", "CoreResult",
    "CoreSpec", "parse_spec", "patch_insn",
]

log = get_logger("pyebpf.core")


class CoreCandidate(Record):
    """One candidate target type and the verdict on it."""

    target: int  # index into CoreRelocator.targets
    type_id: int
    name: str
    matched: bool
    reason: str
    spec: CoreSpec | None
    new_val: int | None
    poison: bool

    def __init__(self, target: int, type_id: int, name: str, matched: bool, reason: str = "",
                 spec: CoreSpec | None = None, new_val: int | None = None,
                 poison: bool = False) -> None:
        self.target = target
        self.type_id = type_id
        self.name = name
        self.matched = matched
        self.reason = reason
        self.spec = spec
        self.new_val = new_val
        self.poison = poison

    def __str__(self) -> str:
        verdict = "matching" if self.matched else f"rejected ({self.reason})"
        spec = f" {self.spec}" if self.spec is not None and self.matched else ""
        return f"[{self.type_id}] {self.name} in target #{self.target}: {verdict}{spec}"


class CoreResult(Record):
    """libbpf's bpf_core_relo_res plus the specs and an explanation."""

    relo: CoreRelo
    kind: int
    local_spec: CoreSpec
    target_spec: CoreSpec | None
    target: int | None  # index of the chosen target BTF
    orig_val: int
    new_val: int
    orig_sz: int
    new_sz: int
    orig_type_id: int
    new_type_id: int
    poison: bool
    validate: bool
    fail_memsz_adjust: bool
    candidates: list[CoreCandidate]
    explain: list[str]

    def __init__(self, relo: CoreRelo, kind: int, local_spec: CoreSpec,
                 target_spec: CoreSpec | None = None, target: int | None = None,
                 orig_val: int = 0, new_val: int = 0, orig_sz: int = 0, new_sz: int = 0,
                 orig_type_id: int = 0, new_type_id: int = 0, poison: bool = False,
                 validate: bool = True, fail_memsz_adjust: bool = False,
                 candidates: list[CoreCandidate] | None = None,
                 explain: list[str] | None = None) -> None:
        self.relo = relo
        self.kind = kind
        self.local_spec = local_spec
        self.target_spec = target_spec
        self.target = target
        self.orig_val = orig_val
        self.new_val = new_val
        self.orig_sz = orig_sz
        self.new_sz = new_sz
        self.orig_type_id = orig_type_id
        self.new_type_id = new_type_id
        self.poison = poison
        self.validate = validate
        self.fail_memsz_adjust = fail_memsz_adjust
        self.candidates = [] if candidates is None else candidates
        self.explain = [] if explain is None else explain

    def __str__(self) -> str:
        tgt = str(self.target_spec) if self.target_spec is not None else "no matching target"
        if self.poison:
            verdict = "poisoned"
        else:
            verdict = f"{self.orig_val} -> {self.new_val}"
        return f"{self.local_spec} => {tgt}: {verdict}"

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
        ids: Sequence[int]
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

    def resolve_all(self, relos: Sequence[CoreRelo],
                    prog_name: str | Callable[[CoreRelo], str] = "") -> list[CoreResult]:
        """Resolve a whole ELF section's relocations in file order, as libbpf does.

        The order matters: candidate lists are pruned by earlier relocations. When a
        section holds several programs, resolve it with this, then :meth:`apply` each
        result to its program. ``prog_name`` may map a relocation to its program's name.
        """
        out = []
        for i, relo in enumerate(relos):
            name = prog_name(relo) if callable(prog_name) else prog_name
            out.append(self.resolve(relo, i, name))
        return out

    def relocate(self, insns: bytearray, relos: Sequence[CoreRelo], prog_name: str = "",
                 insn_offset: int = 0) -> list[CoreResult]:
        """Resolve and apply every relocation of one program; ``insn_offset`` is its first
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
