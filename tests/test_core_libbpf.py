"""Differential tests: pyebpf's CO-RE engine vs the system libbpf on hand-written types.

BPF programs with many relocations (flavors, candidate pruning, anonymous members,
bitfields, arrays, load-size changes, enums, TYPE_MATCHES, ...) are committed objects
(fixtures/src/unit/core_libbpf_*.bpf.c), relocated by libbpf against a custom "kernel"
BTF (core_libbpf_target, passed as ``btf_custom_path``) through a tiny C driver linked
with libbpf. The driver prints libbpf's debug log; every relocation result in it must
equal ours, including the failures (ambiguities).

Needs gcc and libbpf-dev for the driver (scripts/test.sh installs libbpf-dev) and root
(libbpf loads the programs after relocating; whether the verifier accepts them does not
matter here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from unitobj import unit_object

from pyebpf import insn as I
from pyebpf.btf.core import CoreRelocator
from pyebpf.btf.ext import parse_btf_ext
from pyebpf.btf.spec import BTF
from pyebpf.errors import CORERelocationError
from pyebpf.obj.elf import read_elf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="libbpf loads the programs: needs root")

DRIVER = r"""
#include <stdio.h>
#include <stdarg.h>
#include <bpf/libbpf.h>

static int print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return vfprintf(stdout, fmt, ap);
}

int main(int argc, char **argv)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .btf_custom_path = argv[2]);
	struct bpf_object *obj;
	int err;

	libbpf_set_print(print);
	obj = bpf_object__open_file(argv[1], &opts);
	if (!obj) {
		printf("OPEN FAILED\n");
		return 1;
	}
	err = bpf_object__load(obj);
	printf("LOAD RESULT %d\n", err);
	bpf_object__close(obj);
	return 0;
}
"""

_PATCHED = re.compile(r"prog '(\S+)': relo #(\d+): patched insn #(\d+) \(([A-Z0-9/]+)\) "
                      r"(?:imm64|imm|off) (\d+) -> (\d+)")
_MEMSZ = re.compile(r"prog '(\S+)': relo #(\d+): patched insn #(\d+) \(LDX/ST/STX\) "
                    r"mem_sz (\d+) -> (\d+)")
_POISON = re.compile(r"prog '(\S+)': relo #(\d+): substituting insn #(\d+) w/ invalid insn")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    # A missing compiler or libbpf-dev is a broken test machine, not a kernel feature.
    assert shutil.which("gcc") and os.path.exists("/usr/include/bpf/libbpf.h"), \
        "the libbpf driver needs gcc and libbpf-dev (scripts/test.sh installs libbpf-dev)"
    d = tmp_path_factory.mktemp("corediff")
    (d / "driver.c").write_text(DRIVER)
    subprocess.run(["gcc", "-O1", "-o", str(d / "driver"), str(d / "driver.c"), "-lbpf"],
                   check=True, capture_output=True)
    return d


def _libbpf(build, obj: Path, target: Path) -> str:
    p = subprocess.run([str(build / "driver"), str(obj), str(target)], capture_output=True,
                       text=True, timeout=120)
    return p.stdout + p.stderr


def _ours(obj: Path, target: Path):
    elf = read_elf(obj.read_bytes(), str(obj))
    btf = BTF.from_bytes(elf.section(".BTF").data)
    ext = parse_btf_ext(elf.section(".BTF.ext").data, btf)
    tbtf = BTF.from_bytes(read_elf(target.read_bytes()).section(".BTF").data)
    r = CoreRelocator(btf, [tbtf])
    for sec, relos in ext.core_relos.items():
        sidx = elf.section(sec).index
        data = elf.section(sec).data
        funcs = sorted((s.value // 8, (s.value + s.size) // 8, s.name) for s in elf.symbols
                       if s.type == 2 and s.shndx == sidx)
        progs = {name: bytearray(data[lo * 8:hi * 8]) for lo, hi, name in funcs}
        for i, relo in enumerate(relos):
            lo, _, name = next(f for f in funcs if f[0] <= relo.insn_off < f[1])
            res = r.resolve(relo, i, name)
            r.apply(progs[name], relo, res, name, insn_idx=relo.insn_off - lo, relo_index=i)
            yield name, i, relo.insn_off - lo, res, progs[name]


def test_many_kinds_match_libbpf(build):
    target = unit_object("core_libbpf_target")
    obj = unit_object("core_libbpf_local")
    log = _libbpf(build, obj, target)
    patched: dict[tuple[str, int], tuple[int, int]] = {}
    for m in _PATCHED.finditer(log):
        patched[(m.group(1), int(m.group(2)))] = (int(m.group(3)), int(m.group(6)))
    memsz = {(m.group(1), int(m.group(2))): int(m.group(5)) for m in _MEMSZ.finditer(log)}
    poisoned = {(m.group(1), int(m.group(2))): int(m.group(3)) for m in _POISON.finditer(log)}
    assert patched and poisoned, log[-3000:]
    n = 0
    for prog, i, idx, res, insns in _ours(obj, target):
        key = (prog, i)
        if key in poisoned:
            assert poisoned[key] == idx
            assert res.poison or res.fail_memsz_adjust, f"{key}: {res}"
            assert I.get(insns, idx).imm == I.CORE_POISON_IMM
        else:
            assert key in patched, f"{key} not in libbpf's log: {res}"
            assert patched[key] == (idx, res.new_val), f"{key}: {res}"
            if key in memsz:
                assert res.new_sz == memsz[key]
                size = {1: I.BPF_B, 2: I.BPF_H, 4: I.BPF_W, 8: I.BPF_DW}[res.new_sz]
                assert I.get(insns, idx).code & 0x18 == size
        n += 1
    assert n == len(patched) + len(poisoned)
    assert n > 75


@pytest.mark.parametrize("name,err", [("core_libbpf_amb_offset", "field offset ambiguity"),
                                      ("core_libbpf_amb_decision",
                                       "relocation decision ambiguity")])
def test_ambiguity_errors_match_libbpf(build, name, err):
    target = unit_object("core_libbpf_target")
    obj = unit_object(name)
    log = _libbpf(build, obj, target)
    assert err in log, log[-2000:]
    with pytest.raises(CORERelocationError, match=err):
        list(_ours(obj, target))
