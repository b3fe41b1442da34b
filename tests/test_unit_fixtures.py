"""The committed single-purpose objects of fixtures/unit: present, and equal to libbpf 1.1.

Most of them are malformed on purpose or open fine but do not load (maps without
programs, struct types libbpf rejects); the ones bpftool's libbpf 1.1 loads on this
kernel are relocated by pyebpf and must get the same kernel tags.  The linker_* objects
are compared in tests/test_linker.py.
"""

from __future__ import annotations

import os

import pytest
from unitobj import UNIT_DIR, UNIT_SRC, kernelref_module, unit_object

from pyebpf import ObjectSpec

VMLINUX = "/sys/kernel/btf/vmlinux"

# Loaded by `bpftool prog loadall` (libbpf 1.1) on this kernel.
LIBBPF_LOADABLE = ["attach_counters", "core_libbpf_amb_decision", "maps_hidden_global",
                   "object_version_no_btf"]


def test_every_unit_source_has_a_committed_object() -> None:
    sources = {p.name.removesuffix(".bpf.c") for p in UNIT_SRC.glob("*.bpf.c")}
    objects = {p.name.removesuffix(".bpf.o") for p in UNIT_DIR.glob("*.bpf.o")}
    assert sources and sources == objects, "run fixtures/build.sh and commit fixtures/unit"


@pytest.fixture(scope="module")
def kernelref():
    kr = kernelref_module()
    if not kr.bpftool_available():
        pytest.skip("bpftool and root are needed for the libbpf reference")
    return kr


@pytest.mark.parametrize("name", LIBBPF_LOADABLE)
def test_tags_equal_libbpf(name: str, kernelref) -> None:
    from pyebpf.btf.kernel import kernel_btf

    path = unit_object(name)
    spec = ObjectSpec.from_file(path)
    spec.relocate(kernel_btf() if os.path.exists(VMLINUX) else None)
    ours = {n: p.tag for n, p in spec.programs.items() if p.autoload}
    assert ours and ours == kernelref.libbpf_tags(path)
