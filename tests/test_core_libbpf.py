"""Differential tests: pyebpf's CO-RE engine vs the system libbpf on hand-written types.

BPF programs with many relocations (flavors, candidate pruning, anonymous members,
bitfields, arrays, load-size changes, enums, TYPE_MATCHES, ...) are compiled with
clang, and relocated by libbpf against a custom "kernel" BTF (another compiled C
file, passed as ``btf_custom_path``) through a tiny C driver linked with libbpf. The
driver prints libbpf's debug log; every relocation result in it must equal ours,
including the failures (ambiguities).

Needs clang-19, gcc, libbpf-dev and root (libbpf loads the programs after relocating;
whether the verifier accepts them does not matter here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyebpf import insn as I
from pyebpf.btf.core import CoreRelocator
from pyebpf.btf.ext import parse_btf_ext
from pyebpf.btf.spec import BTF
from pyebpf.errors import CORERelocationError
from pyebpf.obj.elf import read_elf

CLANG = os.environ.get("CLANG", "clang-19")

pytestmark = pytest.mark.skipif(
    not (shutil.which(CLANG) and shutil.which("gcc") and os.path.exists("/usr/include/bpf/libbpf.h")
         and os.geteuid() == 0),
    reason="needs clang-19, gcc, libbpf-dev and root")

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

PRELUDE = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#define CORE __attribute__((preserve_access_index))
"""

TARGET = PRELUDE + r"""
struct flav { long pad; int new_field; };
struct prune___a { long x; int a; };
struct prune___b { int a; int b; };
struct anon_host {
	long pad;
	union { struct { int q; int y; }; int zz; };
	union { long w; int z; };
	int x;
};
struct bits {
	unsigned long long pad:7;
	unsigned int a:3;
	int c:4;
	unsigned int b:5;
	unsigned long long d:40;
	unsigned char e:2;
};
struct arrs { long n; int arr[8]; int flex[]; };
struct sizes { unsigned int u; int s; void *p; unsigned short h; };
enum color { RED = 10, GREEN = 20 };
enum big64 { BIG_A = 0x200000000ULL, BIG_B = 7 };
struct matchme { int a; struct matchme *next; long extra; };
struct nomatch { int a; };
typedef int my_int_t;
typedef struct { int v; } anon_td;
struct amb___1 { int a; };
struct amb___2 { long p; int a; };
struct dup { int x; };
struct dup___2 { int x; };
struct wide { char c[3]; short s; };
struct multi { int m[3][4]; struct { int k; } arr_s[2]; };
union un { int i; long l; };
struct compat { int as_int; struct flav *as_ptr; enum color as_enum; float f; };
enum neg { NEG_A = -5, NEG_B = 3 };
typedef struct matchme matchme_t;
struct fp_holder { int (*cb)(int, long); };
enum e64mix { MIX_A = 7, MIX_B = 2 };
struct modq { long pad; const volatile int cv; };

struct multi g19; union un g20; struct compat g21; enum neg g22; matchme_t g23;
struct fp_holder g24; enum e64mix g25; struct modq g26;
struct flav g1; struct prune___a g2; struct prune___b g3; struct anon_host g4; struct bits g5;
struct arrs g6; struct sizes g7; enum color g8; enum big64 g9; struct matchme g10;
struct nomatch g11; my_int_t g12; anon_td g13; struct amb___1 g14; struct amb___2 g15;
struct dup g16; struct dup___2 g17; struct wide g18;
"""

LOCAL = PRELUDE + r"""
struct flav___v1 { int old_field; } CORE;
struct flav___v2 { int new_field; } CORE;
struct prune { int a; int b; } CORE;
struct anon_host { int x; struct { int y; union { int z; long w; }; }; } CORE;
struct bits {
	unsigned int a:3;
	unsigned int b:5;
	int c:4;
	unsigned long long d:40;
	unsigned char e:2;
} CORE;
struct arrs { int n; int arr[4]; int flex[]; } CORE;
struct sizes { unsigned long long u; long long s; void *p; unsigned int h; } CORE;
enum color___local { RED___local = 1, GREEN___local = 2, PURPLE___local = 3 };
enum big64 { BIG_A = 0x100000000ULL, BIG_B = 5 };
struct matchme { int a; struct matchme *next; } CORE;
struct nomatch___x { unsigned int a; } CORE;
struct gone { int x; } CORE;
typedef int my_int_t;
struct wide { char c[2]; } CORE;
struct multi { int m[3][4]; struct { int k; } arr_s[2]; } CORE;
union un { int i; long l; } CORE;
struct compat { struct { int x; } as_int; void *as_ptr; enum color___local as_enum; float f; } CORE;
enum neg { NEG_A = -1, NEG_B = 3 };
typedef struct matchme matchme_t;
struct fp_holder { int (*cb)(int, long); } CORE;
enum e64mix { MIX_A = 1, MIX_B = 0x100000000ULL };
struct modq { int cv; } CORE;

__u64 out[128];

#define FI(expr, kind) __builtin_preserve_field_info(expr, kind)
#define ALL6(i, expr) do { \
	out[(i) + 0] = FI(expr, BPF_FIELD_BYTE_OFFSET); \
	out[(i) + 1] = FI(expr, BPF_FIELD_BYTE_SIZE); \
	out[(i) + 2] = FI(expr, BPF_FIELD_EXISTS); \
	out[(i) + 3] = FI(expr, BPF_FIELD_SIGNED); \
	out[(i) + 4] = FI(expr, BPF_FIELD_LSHIFT_U64); \
	out[(i) + 5] = FI(expr, BPF_FIELD_RSHIFT_U64); \
} while (0)

SEC("socket")
int fields(void *ctx)
{
	struct flav___v1 *f1 = 0; struct flav___v2 *f2 = 0;
	struct prune *pr = 0; struct anon_host *ah = 0; struct bits *bt = 0;
	struct arrs *ar = 0;

	out[0] = bpf_core_field_exists(f1->old_field);
	out[1] = bpf_core_field_exists(f2->new_field);
	out[2] = bpf_core_field_offset(f2->new_field);
	out[3] = bpf_core_field_offset(f1->old_field);
	out[4] = bpf_core_field_offset(pr->b);
	out[5] = bpf_core_field_offset(pr->a);
	out[6] = bpf_core_field_offset(ah->x);
	out[7] = bpf_core_field_offset(ah->y);
	out[8] = bpf_core_field_offset(ah->z);
	out[9] = bpf_core_field_size(ah->w);
	ALL6(10, bt->a);
	ALL6(16, bt->b);
	ALL6(22, bt->c);
	ALL6(28, bt->d);
	ALL6(34, bt->e);
	out[40] = bpf_core_field_offset(ar->arr[3]);
	out[41] = bpf_core_field_size(ar->arr);
	out[42] = bpf_core_field_offset(ar->flex[7]);
	out[43] = bpf_core_field_exists(ar->arr[3]);
	out[45] = bpf_core_field_offset(ar[2].n);
	return 0;
}

SEC("socket")
int loads(void *ctx)
{
	struct sizes *s = (void *)(long)bpf_get_prandom_u32();
	struct wide *w = (void *)(long)bpf_get_prandom_u32();

	out[50] = s->u;
	out[51] = s->s;
	out[52] = (long)s->p;
	out[53] = s->h;
	out[54] = w->c[1];
	return 0;
}

SEC("socket")
int types(void *ctx)
{
	out[60] = bpf_core_type_exists(struct gone);
	out[61] = bpf_core_type_exists(my_int_t);
	out[62] = bpf_core_type_size(my_int_t);
	out[63] = bpf_core_type_size(struct arrs);
	out[64] = bpf_core_type_id_kernel(struct matchme);
	out[65] = bpf_core_type_id_local(struct matchme);
	out[66] = bpf_core_type_matches(struct matchme);
	out[67] = bpf_core_type_matches(struct nomatch___x);
	out[68] = bpf_core_type_id_kernel(struct gone);
	out[69] = bpf_core_type_size(struct gone);
	out[70] = bpf_core_enum_value_exists(enum color___local, RED___local);
	out[71] = bpf_core_enum_value_exists(enum color___local, PURPLE___local);
	out[72] = bpf_core_enum_value(enum color___local, GREEN___local);
	out[73] = bpf_core_enum_value(enum big64, BIG_A);
	out[74] = bpf_core_enum_value(enum big64, BIG_B);
	out[75] = bpf_core_enum_value_exists(enum big64, BIG_B);
	return 0;
}

SEC("socket")
int more(void *ctx)
{
	struct multi *mu = 0; union un *u = 0; struct compat *c = 0; struct modq *mq = 0;

	out[80] = bpf_core_field_offset(mu->m[2][3]);
	out[81] = bpf_core_field_offset(mu->arr_s[1].k);
	out[82] = bpf_core_field_size(u->l);
	out[83] = bpf_core_field_exists(c->as_int);
	out[84] = bpf_core_field_offset(c->as_ptr);
	out[85] = bpf_core_field_exists(c->as_enum);
	out[86] = bpf_core_field_offset(c->f);
	out[87] = bpf_core_enum_value(enum neg, NEG_A);
	out[88] = bpf_core_type_matches(matchme_t);
	out[89] = bpf_core_type_size(matchme_t);
	out[90] = bpf_core_type_exists(struct fp_holder);
	out[91] = bpf_core_type_matches(struct fp_holder);
	out[92] = bpf_core_enum_value(enum e64mix, MIX_A);
	out[93] = bpf_core_field_offset(mq->cv);
	out[94] = bpf_core_type_matches(union un);
	out[95] = FI(c->as_enum, BPF_FIELD_SIGNED);
	out[96] = bpf_core_field_offset(c->as_int);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

AMB_OFFSET = PRELUDE + r"""
struct amb { int a; } CORE;
__u64 out;
SEC("socket")
int amb_off(void *ctx)
{
	out = bpf_core_field_offset(((struct amb *)0)->a);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""

AMB_DECISION = PRELUDE + r"""
struct dup { int x; } CORE;
__u64 out;
SEC("socket")
int amb_dec(void *ctx)
{
	out = bpf_core_type_id_kernel(struct dup);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""

_PATCHED = re.compile(r"prog '(\S+)': relo #(\d+): patched insn #(\d+) \(([A-Z0-9/]+)\) "
                      r"(?:imm64|imm|off) (\d+) -> (\d+)")
_MEMSZ = re.compile(r"prog '(\S+)': relo #(\d+): patched insn #(\d+) \(LDX/ST/STX\) "
                    r"mem_sz (\d+) -> (\d+)")
_POISON = re.compile(r"prog '(\S+)': relo #(\d+): substituting insn #(\d+) w/ invalid insn")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("corediff")
    (d / "driver.c").write_text(DRIVER)
    subprocess.run(["gcc", "-O1", "-o", str(d / "driver"), str(d / "driver.c"), "-lbpf"],
                   check=True, capture_output=True)

    def cc(name: str, src: str) -> Path:
        (d / f"{name}.c").write_text(src)
        out = d / f"{name}.o"
        subprocess.run([CLANG, "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86",
                        "-I/usr/include/x86_64-linux-gnu", "-c", str(d / f"{name}.c"),
                        "-o", str(out)], check=True, capture_output=True, cwd=d)
        return out

    return d, cc


def _libbpf(build, obj: Path, target: Path) -> str:
    d, _ = build
    p = subprocess.run([str(d / "driver"), str(obj), str(target)], capture_output=True,
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
    _, cc = build
    target = cc("target", TARGET)
    obj = cc("local", LOCAL)
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


@pytest.mark.parametrize("src,err", [(AMB_OFFSET, "field offset ambiguity"),
                                     (AMB_DECISION, "relocation decision ambiguity")])
def test_ambiguity_errors_match_libbpf(build, src, err):
    _, cc = build
    target = cc("target", TARGET)
    obj = cc("amb", src)
    log = _libbpf(build, obj, target)
    assert err in log, log[-2000:]
    with pytest.raises(CORERelocationError, match=err):
        list(_ours(obj, target))
