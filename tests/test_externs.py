"""Externs: collection/layout, kconfig parsing, kallsyms, kernel version, real resolution."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from unitobj import unit_object

from pyebpf.btf.spec import BTF
from pyebpf.btf.types import Datasec, Func, Kind, Linkage, Var
from pyebpf.errors import ExternError, ObjectError
from pyebpf.obj.elf import read_elf
from pyebpf.obj.externs import (
    POISON_CALL_KFUNC_BASE,
    ExternDesc,
    KcfgType,
    collect_externs,
    extern_call,
    extern_ldimm64,
    fixup_extern_btf,
    kconfig_map_data,
    kernel_version_code,
    parse_kallsyms,
    parse_kconfig,
    read_kallsyms,
    read_kconfig,
    resolve_externs,
    set_kconfig_value,
)
from pyebpf.obj.spec import ExternKind, MapSpec
from pyebpf.uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, MapType

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
IS_ROOT = os.geteuid() == 0


def load(path: Path):
    elf = read_elf(path.read_bytes(), str(path))
    return elf, BTF.from_bytes(elf.section(".BTF").data)


def fixture(name: str):
    p = FIX / name
    if not p.exists():
        pytest.skip(f"fixture {name} missing")
    return load(p)


@pytest.fixture(scope="module")
def kbtf():
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    from pyebpf.btf.kernel import kernel_btf

    return kernel_btf()


# -- collection ------------------------------------------------------------------------------


def test_collect_order_and_kconfig_layout():
    elf, btf = fixture("externs.bpf.o")
    ext, kmap = collect_externs(elf, btf)
    # libbpf order: kconfig by (align desc, size asc, name), then ksyms/kfuncs by name
    assert list(ext) == [
        "CONFIG_HZ", "CONFIG_NET_CLS_BPF", "CONFIG_PYEBPF_DOES_NOT_EXIST", "LINUX_KERNEL_VERSION",
        "CONFIG_BPF_SYSCALL", "CONFIG_DEFAULT_HOSTNAME",
        "__start_BTF", "bpf_pyebpf_no_such_kfunc", "bpf_task_acquire", "bpf_task_from_pid",
        "bpf_task_release",
    ]
    assert [e.index for e in ext.values()] == list(range(len(ext)))
    offs = {n: (e.offset, e.size) for n, e in ext.items() if e.kind == ExternKind.KCONFIG}
    assert offs == {"CONFIG_HZ": (0, 4), "CONFIG_NET_CLS_BPF": (4, 4),
                    "CONFIG_PYEBPF_DOES_NOT_EXIST": (8, 4), "LINUX_KERNEL_VERSION": (12, 4),
                    "CONFIG_BPF_SYSCALL": (16, 1), "CONFIG_DEFAULT_HOSTNAME": (17, 8)}
    assert ext["CONFIG_NET_CLS_BPF"].kcfg_type == KcfgType.TRISTATE
    assert ext["CONFIG_BPF_SYSCALL"].kcfg_type == KcfgType.BOOL
    assert ext["CONFIG_DEFAULT_HOSTNAME"].kcfg_type == KcfgType.CHAR_ARR
    assert ext["CONFIG_HZ"].signed and not ext["LINUX_KERNEL_VERSION"].signed
    assert ext["CONFIG_PYEBPF_DOES_NOT_EXIST"].weak and not ext["CONFIG_HZ"].weak
    assert ext["__start_BTF"].kind == ExternKind.KSYM and not ext["__start_BTF"].typed
    assert ext["bpf_task_acquire"].kind == ExternKind.KFUNC and ext["bpf_task_acquire"].typed
    assert ext["bpf_pyebpf_no_such_kfunc"].weak
    sym = elf.symbols[ext["bpf_task_acquire"].sym_index]
    assert sym.name == "bpf_task_acquire"

    assert kmap is not None
    assert kmap.name == "externs.kconfig" and kmap.extra["kernel_name"] == "externs.kconfig"
    assert (kmap.type, kmap.key_size, kmap.value_size, kmap.max_entries) == (MapType.ARRAY, 4, 25, 1)
    assert kmap.flags == BPF_F_RDONLY_PROG | BPF_F_MMAPABLE  # 0x480, as bpftool shows
    assert kmap.section == ".kconfig"
    assert btf.type(kmap.btf_value_type_id).name == ".kconfig"


def test_collect_without_externs():
    elf, btf = fixture("globals.bpf.o")
    assert collect_externs(elf, btf) == ({}, None)


def test_collect_obj_name_override():
    elf, btf = fixture("externs.bpf.o")
    _, kmap = collect_externs(elf, btf, obj_name="my_object_name")
    assert kmap.name == "my_obje.kconfig"


def test_collect_needs_btf():
    elf, _ = fixture("externs.bpf.o")
    with pytest.raises(ObjectError):
        collect_externs(elf, None)


def test_collect_unsupported_kconfig_type():
    elf, btf = load(unit_object("externs_bad_kconfig_type"))
    with pytest.raises(ObjectError, match="type is unsupported"):
        collect_externs(elf, btf)


# -- kconfig values ---------------------------------------------------------------------------


def _ext(kt: KcfgType, size: int, signed: bool = False, name: str = "CONFIG_T") -> ExternDesc:
    return ExternDesc(name=name, kind=ExternKind.KCONFIG, weak=False, btf_id=1, size=size,
                      kcfg_type=kt, signed=signed, align=min(size, 8))


@pytest.mark.parametrize("kt,size,signed,text,value", [
    (KcfgType.BOOL, 1, False, "y", True),
    (KcfgType.BOOL, 1, False, "n", False),
    (KcfgType.TRISTATE, 4, False, "y", 1),
    (KcfgType.TRISTATE, 4, False, "m", 2),
    (KcfgType.TRISTATE, 4, False, "n", 0),
    (KcfgType.CHAR, 1, True, "y", ord("y")),
    (KcfgType.CHAR, 1, True, "65", 65),
    (KcfgType.INT, 4, True, "250", 250),
    (KcfgType.INT, 4, False, "0x10", 16),
    (KcfgType.INT, 4, False, "010", 8),
    (KcfgType.INT, 4, True, "-1", 0xFFFFFFFFFFFFFFFF),
    (KcfgType.INT, 8, False, "0xffffffffffffffff", 0xFFFFFFFFFFFFFFFF),
    (KcfgType.INT, 2, True, "-32768", (-32768) & 0xFFFFFFFFFFFFFFFF),
    (KcfgType.INT, 1, False, "255", 255),
    (KcfgType.CHAR_ARR, 8, False, '"(none)"', b"(none)"),
    (KcfgType.CHAR_ARR, 4, False, '"abcdef"', b"abc"),
    (KcfgType.CHAR_ARR, 4, False, '""', b""),
])
def test_kconfig_values(kt, size, signed, text, value):
    e = _ext(kt, size, signed)
    set_kconfig_value(e, text)
    assert e.resolved and e.value == value


@pytest.mark.parametrize("kt,size,signed,text,msg", [
    (KcfgType.BOOL, 1, False, "m", "implies tristate or char"),
    # libbpf: a numeric config value never sets a bool
    (KcfgType.BOOL, 1, False, "1", "implies integer type"),
    (KcfgType.INT, 4, False, "y", "implies bool, tristate, or char"),
    (KcfgType.INT, 4, False, '"str"', "implies char array"),
    (KcfgType.CHAR_ARR, 8, False, "12", "implies integer type"),
    (KcfgType.CHAR_ARR, 8, False, '"unterminated', "invalid string config"),
    (KcfgType.TRISTATE, 4, False, "1", "implies integer type"),
    (KcfgType.INT, 4, False, "12abc", "as integer completely"),
    (KcfgType.INT, 4, False, "0x", "as integer completely"),
    (KcfgType.INT, 1, False, "256", "doesn't fit in 1 bytes"),
    (KcfgType.INT, 2, True, "32768", "doesn't fit in 2 bytes"),
    (KcfgType.INT, 4, False, "-1", "doesn't fit in 4 bytes"),
    (KcfgType.INT, 8, False, "0x1ffffffffffffffff", "out of range"),
])
def test_kconfig_bad_values(kt, size, signed, text, msg):
    with pytest.raises(ExternError, match=msg):
        set_kconfig_value(_ext(kt, size, signed), text)


def test_kconfig_map_bytes_for_each_type():
    ext = {
        "A": _ext(KcfgType.INT, 8, name="A"), "B": _ext(KcfgType.TRISTATE, 4, name="B"),
        "C": _ext(KcfgType.BOOL, 1, name="C"), "D": _ext(KcfgType.CHAR_ARR, 5, name="D"),
    }
    ext["A"].offset, ext["B"].offset, ext["C"].offset, ext["D"].offset = 0, 8, 12, 13
    m = MapSpec(name="x.kconfig", type=2, key_size=4, value_size=18, max_entries=1)
    set_kconfig_value(ext["A"], "-2")
    set_kconfig_value(ext["B"], "m")
    set_kconfig_value(ext["C"], "y")
    set_kconfig_value(ext["D"], '"hello world"')
    data = kconfig_map_data(ext, m)
    assert bytes(data) == ((-2) & (2**64 - 1)).to_bytes(8, "little") + b"\x02\0\0\0\x01hell\0"
    assert m.data == data


def test_parse_kconfig():
    text = ("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x=y\"\n"
            "CONFIG_D=0x10\nOTHER=1\n")
    assert parse_kconfig(text) == {"CONFIG_A": "y", "CONFIG_C": '"x=y"', "CONFIG_D": "0x10"}
    with pytest.raises(ExternError, match="no separator"):
        parse_kconfig("CONFIG_A\n")
    with pytest.raises(ExternError, match="no value"):
        parse_kconfig("CONFIG_A=\n")


def test_read_kconfig_files(tmp_path):
    plain = tmp_path / "config"
    plain.write_text("CONFIG_HZ=100\n")
    gz = tmp_path / "config.gz"
    gz.write_bytes(gzip.compress(b"CONFIG_HZ=300\n"))
    assert read_kconfig([str(tmp_path / "missing"), str(plain)]) == {"CONFIG_HZ": "100"}
    assert read_kconfig([str(gz), str(plain)]) == {"CONFIG_HZ": "300"}
    with pytest.raises(ExternError, match="failed to open"):
        read_kconfig([str(tmp_path / "missing")])
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ExternError, match="corrupt"):
        read_kconfig([str(bad)])


def test_read_kconfig_running_kernel():
    if not (os.path.exists("/proc/config.gz") or os.path.exists(f"/boot/config-{os.uname().release}")):
        pytest.skip("no kernel config on this machine")
    cfg = read_kconfig()
    assert cfg.get("CONFIG_BPF_SYSCALL") == "y"
    assert int(cfg["CONFIG_HZ"]) in (100, 250, 300, 1000)


# -- kallsyms / kernel version --------------------------------------------------------------


def test_parse_kallsyms():
    text = ("ffffffff81000000 T _stext\n"
            "ffffffff82000010 d foo.llvm.123456\n"
            "ffffffff82000020 t bar\n"
            "ffffffff82000030 t bar\n"
            "ffffffffc0000000 t modfn\t[mymod]\n")
    assert parse_kallsyms(text, {"_stext", "foo"}) == {"_stext": 0xFFFFFFFF81000000,
                                                       "foo": 0xFFFFFFFF82000010}
    allsyms = parse_kallsyms(text)
    assert allsyms["bar"] == 0xFFFFFFFF82000020 and allsyms["modfn"] == 0xFFFFFFFFC0000000
    with pytest.raises(ExternError, match="ambiguous"):
        parse_kallsyms(text, {"bar"})
    # the .llvm. suffix is only stripped for 'd' symbols
    assert "baz" not in parse_kallsyms("ffffffff82000040 t baz.llvm.1\n")
    with pytest.raises(ExternError):
        parse_kallsyms("not a kallsyms line\n")


def test_kallsyms_name_search_agrees_with_full_parse():
    # the per-name byte search must give what parsing every line gives
    raw = open("/proc/kallsyms", "rb").read()
    every: dict[str, set[int]] = {}
    for line in raw.splitlines():
        addr, typ, name = line.split()[:3]
        n = name.decode()
        if typ == b"d" and ".llvm." in n:
            n = n[: n.find(".llvm.")]
        every.setdefault(n, set()).add(int(addr, 16))
    names = sorted(every)[:: max(1, len(every) // 500)]
    for n in names:
        if len(every[n]) > 1:
            with pytest.raises(ExternError, match="ambiguous"):
                parse_kallsyms(raw, {n})
        else:
            assert parse_kallsyms(raw, {n}) == {n: next(iter(every[n]))}


@pytest.mark.skipif(not IS_ROOT, reason="kallsyms addresses need root")
def test_read_kallsyms_real():
    syms = read_kallsyms({"__start_BTF", "_stext"})
    assert syms["__start_BTF"] > 0xFFFF000000000000
    assert syms["_stext"] > 0xFFFF000000000000


@pytest.mark.parametrize("rel,ver,sig,expected", [
    ("6.18.44-fc-v669", "#1 SMP PREEMPT_DYNAMIC @0", "", (6 << 16) + (18 << 8) + 44),
    ("5.4.0-42-generic", "#46-Ubuntu SMP", "Ubuntu 5.4.0-42.46-generic 5.4.44\n",
     (5 << 16) + (4 << 8) + 44),
    ("4.19.0-22-amd64", "#1 SMP Debian 4.19.260-1 (2022-09-29)", "", (4 << 16) + (19 << 8) + 255),
    ("6.1.0-18-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)", "",
     (6 << 16) + (1 << 8) + 76),
    ("garbage", "#1", "", 0),
])
def test_kernel_version_code(rel, ver, sig, expected):
    assert kernel_version_code(rel, ver, sig) == expected


def test_kernel_version_running():
    rel = os.uname().release.split("-")[0].split(".")
    v = kernel_version_code()
    assert v >> 16 == int(rel[0]) and (v >> 8) & 0xFF == int(rel[1])


# -- resolution against this kernel -----------------------------------------------------------


def test_resolve_real_kernel(kbtf):
    if not os.path.exists("/proc/config.gz") and not os.path.exists(
            f"/boot/config-{os.uname().release}"):
        pytest.skip("no kernel config")
    elf, btf = fixture("externs.bpf.o")
    ext, kmap = collect_externs(elf, btf)
    cfg = read_kconfig()
    syms = read_kallsyms({e.name for e in ext.values() if e.kind == ExternKind.KSYM})
    resolve_externs(ext, kconfig=cfg, kernel_btf=kbtf, kallsyms=syms, local_btf=btf)
    assert ext["CONFIG_HZ"].value == int(cfg["CONFIG_HZ"])
    assert ext["CONFIG_BPF_SYSCALL"].value is True
    assert ext["CONFIG_NET_CLS_BPF"].value == {"y": 1, "m": 2}.get(cfg.get("CONFIG_NET_CLS_BPF", "n")[0], 0)
    assert ext["CONFIG_DEFAULT_HOSTNAME"].value == cfg["CONFIG_DEFAULT_HOSTNAME"].strip('"').encode()[:7]
    assert ext["LINUX_KERNEL_VERSION"].value == kernel_version_code()
    missing = ext["CONFIG_PYEBPF_DOES_NOT_EXIST"]
    assert not missing.resolved and missing.value == 0
    if IS_ROOT:
        assert ext["__start_BTF"].resolved and ext["__start_BTF"].value == syms["__start_BTF"]
    for name in ("bpf_task_acquire", "bpf_task_release", "bpf_task_from_pid"):
        e = ext[name]
        assert e.resolved and e.kernel_btf_fd_idx == 0
        kt = kbtf.type(e.kernel_btf_id)
        assert isinstance(kt, Func) and kt.name == name
        assert extern_call(e) == (2, e.kernel_btf_id, 0)
        assert extern_ldimm64(e) == (3, e.kernel_btf_id, 0)
    weak = ext["bpf_pyebpf_no_such_kfunc"]
    assert not weak.resolved
    assert extern_call(weak) == (2, 0, 0)  # libbpf 1.1
    assert extern_call(weak, poison=True) == (0, POISON_CALL_KFUNC_BASE + weak.index, 0)
    assert extern_ldimm64(weak) == (0, 0, 0)
    assert extern_ldimm64(ext["CONFIG_HZ"]) == (2, 0, 0)
    assert extern_ldimm64(ext["LINUX_KERNEL_VERSION"]) == (2, 0, 12)
    kconfig_map_data(ext, kmap)
    assert kmap.data[0:4] == int(cfg["CONFIG_HZ"]).to_bytes(4, "little")


@pytest.mark.skipif(not IS_ROOT or shutil.which("bpftool") is None, reason="needs bpftool as root")
def test_kconfig_map_matches_libbpf(kbtf):
    """The .kconfig map libbpf 1.1 (bpftool) creates holds the same bytes as ours."""
    elf, btf = fixture("externs.bpf.o")
    pin = Path("/sys/fs/bpf") / f"pyebpf_h6_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        r = subprocess.run(["bpftool", "prog", "loadall", str(FIX / "externs.bpf.o"), str(pin),
                            "pinmaps", str(pin / "maps")], capture_output=True, text=True,
                           timeout=120)
        if r.returncode:
            pytest.skip(f"bpftool cannot load externs.bpf.o: {r.stderr[-300:]}")
        out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned",
                              str(pin / "maps" / "externs_kconfig")],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        ref = bytes(int(x, 16) for x in json.loads(out)[0]["value"])
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    ext, kmap = collect_externs(elf, btf)
    resolve_externs(ext, kconfig=read_kconfig(), kernel_btf=kbtf,
                    kallsyms=read_kallsyms({"__start_BTF"}), local_btf=btf)
    assert bytes(kconfig_map_data(ext, kmap)) == ref


def test_typed_ksyms(kbtf):
    elf, btf = fixture("externs_typed_ksym.bpf.o")
    ext, kmap = collect_externs(elf, btf)
    assert kmap is None
    resolve_externs(ext, kernel_btf=kbtf, local_btf=btf)
    for name in ("runqueues", "bpf_prog_active"):
        e = ext[name]
        assert e.typed and e.resolved
        kv = kbtf.type(e.kernel_btf_id)
        assert isinstance(kv, Var) and kv.name == name
        assert extern_ldimm64(e) == (3, e.kernel_btf_id, 0)
    weak = ext["pyebpf_no_such_var"]
    assert weak.typed and not weak.resolved
    assert extern_ldimm64(weak) == (0, 0, 0)


def test_strong_missing_externs_raise(kbtf):
    elf, btf = fixture("externs.bpf.o")
    ext, _ = collect_externs(elf, btf)
    with pytest.raises(ExternError, match="CONFIG_HZ.*no kernel config") as ei:
        resolve_externs(ext, kallsyms={"__start_BTF": 1}, kernel_btf=kbtf)
    assert ei.value.name == "CONFIG_HZ"
    cfg = {"CONFIG_HZ": "100", "CONFIG_BPF_SYSCALL": "y", "CONFIG_NET_CLS_BPF": "m",
           "CONFIG_DEFAULT_HOSTNAME": '"h"'}
    with pytest.raises(ExternError, match="__start_BTF.*no kallsyms"):
        resolve_externs(ext, kconfig=cfg, kernel_btf=kbtf, kernel_version=1)
    with pytest.raises(ExternError, match="bpf_task_acquire.*no kernel BTF"):
        resolve_externs(ext, kconfig=cfg, kallsyms={"__start_BTF": 1}, kernel_version=1)
    # everything given: only the weak ones stay unresolved
    resolve_externs(ext, kconfig=cfg, kallsyms={"__start_BTF": 0x1234}, kernel_btf=kbtf,
                    kernel_version=0x60000)
    assert ext["CONFIG_NET_CLS_BPF"].value == 2
    assert ext["LINUX_KERNEL_VERSION"].value == 0x60000
    assert extern_ldimm64(ext["__start_BTF"]) == (0, 0x1234, 0)
    assert [n for n, e in ext.items() if not e.resolved] == [
        "CONFIG_PYEBPF_DOES_NOT_EXIST", "bpf_pyebpf_no_such_kfunc"]


def test_virtual_kconfig_flavors_and_incompatible_types(kbtf):
    elf, btf = load(unit_object("externs_virtual"))
    all_ext, kmap = collect_externs(elf, btf)
    ext = {k: v for k, v in all_ext.items() if k != "runqueues"}
    resolve_externs(ext, kernel_btf=kbtf, local_btf=btf,
                    kallsyms={"__x64_sys_bpf": 1} if os.uname().machine == "x86_64" else {})
    assert ext["LINUX_HAS_BPF_COOKIE"].value == 1
    if os.uname().machine == "x86_64":
        assert ext["LINUX_HAS_SYSCALL_WRAPPER"].value is True
    assert ext["LINUX_SOMETHING_NEW"].resolved and ext["LINUX_SOMETHING_NEW"].value == 0
    # kfunc flavours resolve by essential name
    fl = ext["bpf_task_acquire___flavor"]
    assert fl.resolved and kbtf.type(fl.kernel_btf_id).name == "bpf_task_acquire"
    # weak kfunc with an incompatible prototype: unresolved (libbpf master)
    assert not ext["bpf_task_release"].resolved
    # typed ksym with an incompatible type is an error even when weak
    with pytest.raises(ExternError, match="runqueues.*incompatible"):
        resolve_externs(all_ext, kernel_btf=kbtf, local_btf=btf, kallsyms={})
    # without the object BTF no compatibility check is made
    resolve_externs(all_ext, kernel_btf=kbtf, kallsyms={})
    assert all_ext["runqueues"].resolved
    # explicit feature values win
    resolve_externs(ext, kernel_btf=kbtf, has_bpf_cookie=False, has_syscall_wrapper=False)
    assert ext["LINUX_HAS_BPF_COOKIE"].value == 0
    assert ext["LINUX_HAS_SYSCALL_WRAPPER"].value is False


def test_unknown_strong_linux_extern():
    elf, btf = load(unit_object("externs_unknown_linux"))
    ext, _ = collect_externs(elf, btf)
    with pytest.raises(ExternError, match="unrecognized virtual extern"):
        resolve_externs(ext)


def test_fixup_extern_btf():
    elf, btf = fixture("externs.bpf.o")
    ext, kmap = collect_externs(elf, btf)
    n_before = len(btf)
    fixup_extern_btf(btf, ext)
    assert len(btf) == n_before + 1  # dummy_ksym
    secs = {btf.type(t).name: btf.type(t) for t in btf.find(".ksyms", Kind.DATASEC)
            + btf.find(".kconfig", Kind.DATASEC)}
    ks, kc = secs[".ksyms"], secs[".kconfig"]
    assert isinstance(ks, Datasec) and ks.size == 4 * len(ks.vars)
    assert [v.offset for v in ks.vars] == list(range(0, 4 * len(ks.vars), 4))
    for vi in ks.vars + kc.vars:
        v = btf.type(vi.type)
        assert isinstance(v, Var) and v.linkage == Linkage.GLOBAL
    assert kc.size == kmap.value_size
    assert {btf.type(vi.type).name: vi.offset for vi in kc.vars} == {
        n: e.offset for n, e in ext.items() if e.kind == ExternKind.KCONFIG}
    for tid in btf.find("bpf_task_acquire", Kind.FUNC):
        f = btf.type(tid)
        assert f.linkage == Linkage.GLOBAL
        assert all(p.name for p in btf.type(f.type).params)


def test_corrupted_extern_btf_raises_object_error():
    import random

    rng = random.Random(99)
    for _ in range(300):
        elf, btf = fixture("externs.bpf.o")
        cands = [t for t in btf if isinstance(t, (Var, Func, Datasec))]
        t = rng.choice(cands)
        c = rng.randrange(3)
        if isinstance(t, Datasec):
            if c == 0:
                t.name = rng.choice([".kconfig", ".ksyms", ".data", "x"])
            elif t.vars:
                rng.choice(t.vars).type = rng.randrange(-2, len(btf) + 3)
        elif c == 0:
            t.type = rng.randrange(-2, len(btf) + 3)
        elif c == 1:
            t.linkage = rng.randrange(0, 4)
        else:
            t.name = rng.choice(["", "CONFIG_HZ", "bpf_task_acquire"])
        try:
            ext, kmap = collect_externs(elf, btf)
            resolve_externs(ext, kconfig={"CONFIG_HZ": "1"}, kallsyms={}, kernel_version=1)
        except (ObjectError, ExternError):
            pass


# -- kconfig-only objects and the poisoned weak kfunc call (issue 7) ---------------------------


def test_kconfig_only_virtual_externs_from_given_probes():
    """An object whose only externs are kconfig ones: LINUX_HAS_BPF_COOKIE is what the
    caller's probe says (the loader passes features.bpf_cookie()), not 0 for lack of BTF."""
    elf, btf = load(unit_object("externs_kconfig_only"))
    ext, kmap = collect_externs(elf, btf)
    assert {e.kind for e in ext.values()} == {ExternKind.KCONFIG}
    for probe in (True, False):
        resolve_externs(ext, kconfig={"CONFIG_HZ": "250", "CONFIG_BPF_SYSCALL": "y"},
                        kernel_version=0x61200, has_bpf_cookie=probe)
        assert ext["LINUX_HAS_BPF_COOKIE"].value == probe
        data = kconfig_map_data(ext, kmap)
        assert data[ext["LINUX_HAS_BPF_COOKIE"].offset] == int(probe)
    assert ext["CONFIG_HZ"].value == 250 and ext["LINUX_KERNEL_VERSION"].value == 0x61200


def test_kconfig_only_spec_reads_kernel_btf_for_virtual_externs(kbtf):
    """ObjectSpec.resolve_externs without probes: kernel BTF answers LINUX_HAS_*, even
    though no ksym needs it; explicit probe values win."""
    from pyebpf import ObjectSpec

    spec = ObjectSpec.from_file(unit_object("externs_kconfig_only"))
    spec.resolve_externs(kconfig={})
    assert spec.externs["LINUX_HAS_BPF_COOKIE"].value == 1  # 6.18 has bpf_get_attach_cookie
    spec.resolve_externs(kconfig={}, has_bpf_cookie=False)
    assert spec.externs["LINUX_HAS_BPF_COOKIE"].value == 0
    data = spec.maps[spec.kconfig_map].data
    assert data[spec.externs["LINUX_HAS_BPF_COOKIE"].offset] == 0


def test_kconfig_only_spec_without_kernel_btf(monkeypatch):
    """No kernel BTF and no probes: the virtual externs default to 0 instead of failing."""
    import pyebpf.btf.kernel as K
    from pyebpf import ObjectSpec

    def gone(*a, **kw):
        raise FileNotFoundError(2, "no /sys/kernel/btf/vmlinux")

    monkeypatch.setattr(K, "kernel_btf", gone)
    spec = ObjectSpec.from_file(unit_object("externs_kconfig_only"))
    spec.resolve_externs(kconfig={})
    assert spec.externs["LINUX_HAS_BPF_COOKIE"].value == 0


def test_weak_kfunc_call_poisoned_with_sorted_index(kbtf):
    """libbpf >= 1.2's poison_kfunc_call: imm = 2002000000 + index in the sorted extern
    array (kconfig first, then ksyms by name); poison_unresolved_kfuncs=False gives 1.1."""
    from pyebpf import ObjectSpec
    from pyebpf import insn as I

    def calls(spec):
        spec.relocate(kbtf)
        return [(ins.src, ins.imm) for ins in I.iter_insns(spec.programs["poison_guarded"].insns)
                if ins.code == 0x85 and (ins.src == 2 or ins.imm >= POISON_CALL_KFUNC_BASE)]

    spec = ObjectSpec.from_file(unit_object("externs_weak_kfunc_poison"))
    assert list(spec.externs) == ["LINUX_HAS_BPF_COOKIE", "bpf_task_from_pid", "bpf_task_release",
                                  "bpf_zz_pyebpf_missing_kfunc"]
    assert spec.externs["bpf_zz_pyebpf_missing_kfunc"].index == 3
    ids = [kbtf.find(n, Kind.FUNC)[0] for n in ("bpf_task_from_pid", "bpf_task_release")]
    assert calls(spec) == [(2, ids[0]), (2, ids[1]), (0, POISON_CALL_KFUNC_BASE + 3)]
    spec.poison_unresolved_kfuncs = False
    assert calls(spec) == [(2, ids[0]), (2, ids[1]), (2, 0)]


def test_no_kernel_config_only_strong_config_externs_fail(monkeypatch, kbtf):
    """libbpf reads the kernel config only for CONFIG_* externs: usdt.bpf.h's LINUX_*
    ones resolve without it; weak CONFIG_* stay 0; a strong one names the missing config."""
    import pyebpf.obj.externs as X
    from pyebpf import ObjectSpec

    def missing(paths=None):
        raise ExternError("failed to open system Kconfig (/boot/config-*, /proc/config.gz)")

    monkeypatch.setattr(X, "read_kconfig", missing)
    usdt = ObjectSpec.from_file(FIX / "sections.bpf.o")
    usdt.resolve_externs(kernel_btf=kbtf)
    assert usdt.externs["LINUX_HAS_BPF_COOKIE"].value == 1
    only = ObjectSpec.from_file(unit_object("externs_kconfig_only"))
    only.resolve_externs()
    assert only.externs["CONFIG_HZ"].value == 0 and not only.externs["CONFIG_HZ"].resolved
    assert only.externs["LINUX_KERNEL_VERSION"].resolved
    strong = ObjectSpec.from_file(FIX / "externs.bpf.o")
    with pytest.raises(ExternError, match="CONFIG_.*no kernel config available"):
        strong.resolve_externs(kernel_btf=kbtf, kallsyms={"__start_BTF": 1})
