"""A minimal stand-in loader for tests/test_links.py (until pyebpf.load lands).

Creates the maps a relocated ObjectSpec needs, patches their fds into the programs and
loads the requested programs with pyebpf.sys; the programs satisfy the Program interface
the attach functions use (.name, .fd, .type, .expected_attach_type, .spec, .attach_btf_id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pyebpf import ObjectSpec
from pyebpf import insn as _insn
from pyebpf.obj.program import MapRefKind
from pyebpf.sys import bpf as _bpf
from pyebpf.sys.fd import FD
from pyebpf.uapi import AttachType, ProgType

ROOT = os.path.join(os.path.dirname(__file__), "..")
UNIT = os.path.join(ROOT, "fixtures", "unit")

BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BPF_F_RDONLY_PROG = 1 << 7


@dataclass
class TestProgram:
    name: str
    fd: FD
    type: ProgType
    expected_attach_type: AttachType | None
    spec: Any
    attach_btf_id: int | None

    def close(self) -> None:
        self.fd.close()


@dataclass
class TestObject:
    spec: Any
    maps: dict[str, FD] = field(default_factory=dict)
    programs: dict[str, TestProgram] = field(default_factory=dict)

    def close(self) -> None:
        for p in self.programs.values():
            p.close()
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> TestObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attach_btf_id(kb: Any, prog: Any) -> int:
    target = prog.attach_target or ""
    eat = prog.expected_attach_type
    if eat == AttachType.TRACE_RAW_TP:
        name, kind = "btf_trace_" + target, BTF_KIND_TYPEDEF
    elif eat == AttachType.TRACE_ITER:
        name, kind = "bpf_iter_" + target, BTF_KIND_FUNC
    elif eat == AttachType.LSM_MAC:
        name, kind = "bpf_lsm_" + target, BTF_KIND_FUNC
    else:
        name, kind = target, BTF_KIND_FUNC
    ids = kb.find(name, kind)
    return ids[0] if ids else 0


def load(path: str, names: list[str] | None = None) -> TestObject:
    """Load programs ``names`` (default: all) of object ``path`` with their maps."""
    from pyebpf.btf.kernel import kernel_btf

    kb = kernel_btf()
    spec = ObjectSpec.from_file(path)
    spec.relocate(kb)
    obj = TestObject(spec)
    try:
        for mname, m in spec.maps.items():
            fd = _bpf.map_create(int(m.type), m.key_size, m.value_size, m.max_entries, m.flags,
                                 m.extra.get("kernel_name", mname)[:15])
            obj.maps[mname] = fd
            if m.data:
                _bpf.map_update_elem(fd, b"\0\0\0\0", bytes(m.data).ljust(m.value_size, b"\0"))
                if m.flags & BPF_F_RDONLY_PROG:
                    _bpf.map_freeze(fd)
        for pname, p in spec.programs.items():
            if names is not None and pname not in names:
                continue
            insns = bytearray(p.insns)
            for ref in p.map_refs:
                _insn.set_imm(insns, ref.insn_idx, int(obj.maps[ref.map_name]))
                if ref.kind == MapRefKind.FD:
                    _insn.set_src(insns, ref.insn_idx, BPF_PSEUDO_MAP_FD)
                else:
                    _insn.set_src(insns, ref.insn_idx, BPF_PSEUDO_MAP_VALUE)
                    _insn.set_imm(insns, ref.insn_idx + 1, ref.offset)
            btf_id = _attach_btf_id(kb, p) if p.attach_btf else 0
            res = _bpf.prog_load_with_log(
                int(p.type), bytes(insns), p.license, name=pname[:15],
                expected_attach_type=int(p.expected_attach_type or 0), attach_btf_id=btf_id,
                kern_version=p.kern_version,
            )
            obj.programs[pname] = TestProgram(pname, res.fd, p.type, p.expected_attach_type, p,
                                              btf_id or None)
    except BaseException:
        obj.close()
        raise
    return obj


def unit(name: str) -> str:
    return os.path.join(UNIT, f"{name}.bpf.o")
