"""``python -m pyebpf inspect OBJ``: what an object holds, and what CO-RE made of it here."""

from __future__ import annotations

from typing import Any, TextIO

from ..obj.object import ObjectSpec
from ..uapi import MapType


def _table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        out.write("  (none)\n")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}\n"
    out.write(fmt.format(*header))
    for r in rows:
        out.write(fmt.format(*r))


def _enum_name(v: Any) -> str:
    return getattr(v, "name", None) or ("-" if v is None else str(v))


def _map_type(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


def _var_value(raw: bytes) -> str:
    if len(raw) in (1, 2, 4, 8):
        return str(int.from_bytes(raw, "little"))
    text = raw.rstrip(b"\0")
    if text and all(32 <= c < 127 for c in text):
        return repr(text.decode())
    return raw.hex() if len(raw) <= 16 else raw[:16].hex() + "..."


def inspect(path: str, *, btf_path: str | None = None, use_kernel: bool = True,
            verbose: bool = False, out: TextIO) -> ObjectSpec:
    """Print the programs, maps, globals, externs and CO-RE relocations of ``path``."""
    spec = ObjectSpec.from_file(path)
    target = None
    if use_kernel:
        from ..btf.kernel import DEFAULT_PATH, kernel_btf

        target = kernel_btf(btf_path)
        spec.relocate(target)
    nbtf = len(spec.btf) - 1 if spec.btf is not None else 0
    out.write(f"object {path}: name {spec.name!r}, license {spec.license!r}, "
              f"{nbtf} BTF types\n")

    out.write("\nprograms:\n")
    rows = []
    for p in spec.programs.values():
        rows.append([
            p.name, p.section, _enum_name(p.type), _enum_name(p.expected_attach_type),
            p.attach_target or "-", str(p.insn_count),
            p.tag if use_kernel else "(not relocated)",
        ])
    _table(out, ["NAME", "SECTION", "TYPE", "EXPECTED_ATTACH", "TARGET", "INSNS", "TAG"], rows)

    out.write("\nmaps:\n")
    rows = []
    for m in spec.maps.values():
        rows.append([
            m.name, _map_type(m.type), str(m.key_size), str(m.value_size), str(m.max_entries),
            hex(m.flags), m.pinning.name.lower(), m.section,
        ])
    _table(out, ["NAME", "TYPE", "KEY", "VALUE", "MAX", "FLAGS", "PIN", "SECTION"], rows)

    out.write("\nglobals:\n")
    rows = []
    for v in spec.variables.values():
        try:
            val = _var_value(v.value)
        except Exception:  # a .bss or unsized variable has no meaningful initial value
            val = "-"
        rows.append([v.name, v.map_name, str(v.offset), str(v.size), val])
    _table(out, ["NAME", "MAP", "OFFSET", "SIZE", "INITIAL"], rows)

    out.write("\nexterns:\n")
    rows = []
    for e in spec.externs.values():
        if not use_kernel:
            res = "(not resolved)"
        elif not e.resolved:
            res = "unresolved (weak: 0)" if e.weak else "unresolved"
        elif e.kernel_btf_id:
            res = f"kernel BTF id {e.kernel_btf_id}"
        elif isinstance(e.value, int) and e.kind.value == "ksym":
            res = f"address {e.value:#x}"
        else:
            res = repr(e.value)
        rows.append([e.name, e.kind.value, "weak" if e.weak else "strong", res])
    _table(out, ["NAME", "KIND", "BIND", "RESOLVED"], rows)

    out.write("\nCO-RE relocations")
    if not use_kernel:
        out.write(" (not applied: --no-kernel)\n")
        n = sum(len(v) for v in spec.btf_ext.core_relos.values()) if spec.btf_ext else 0
        out.write(f"  {n} records\n")
        return spec
    out.write(f" against {btf_path or DEFAULT_PATH}:\n")
    seen = False
    for p in spec.programs.values():
        for at in p.core_results:
            seen = True
            r = at.result
            out.write(f"  {p.name} insn {at.insn_idx}: {r}\n")
            if verbose:
                for line in r.explain:
                    out.write(f"      {line}\n")
    if not seen:
        out.write("  (none)\n")
    return spec
