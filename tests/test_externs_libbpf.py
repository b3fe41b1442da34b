"""Externs against libbpf, on the running kernel.

* An object whose only externs are ``.kconfig`` ones (what libbpf's usdt.bpf.h
  declares): the LINUX_HAS_BPF_COOKIE value, the whole ``.kconfig`` image, the tags and
  the instructions the verifier keeps equal those of bpftool 7.1 (libbpf 1.1).
* A guarded call to a ``__weak`` kfunc the kernel lacks: poisoned as libbpf >= 1.2
  does (``call 2002000000 + index`` in libbpf's sorted extern list). The installed
  libbpf 1.1 does not poison, so the expected instructions are its own (checked by
  tag) with libbpf's rule applied by this test; the kernel's tag of pyebpf's load
  must be their tag, and what the verifier keeps must equal libbpf 1.1's load.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
from collections.abc import Iterator

import pytest
from elftools.elf.elffile import ELFFile
from test_loader_failures import NoLeaks
from unitobj import kernelref_module, unit_object

import pyebpf
from pyebpf import features
from pyebpf import insn as I
from pyebpf.sys import bpf as B

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

KCONFIG_ONLY = "externs_kconfig_only"
POISON = "externs_weak_kfunc_poison"


@pytest.fixture(scope="module")
def kernelref():
    kr = kernelref_module()
    if not kr.bpftool_available():
        pytest.skip("bpftool and root are needed for the libbpf reference")
    return kr


@pytest.fixture(autouse=True)
def no_leaks():
    """Every fd, program, map and link these tests (or bpftool) made is gone afterwards."""
    gc.collect()  # earlier tests' garbage must not close its fds during ours
    guards = [NoLeaks(unit_object(n)) for n in (KCONFIG_ONLY, POISON)]
    guards.append(NoLeaks(unit_object(KCONFIG_ONLY).parent.parent / "sections.bpf.o"))
    yield
    for g in guards:
        g.check()


class Loaded:
    """What the kernel holds for one loaded program: tag, kept instructions, .kconfig."""

    def __init__(self, fd: int) -> None:
        info = B.prog_info(fd)
        self.tag = bytes(info.tag).hex()
        self.xlated = _normalized(B.prog_xlated_insns(fd))
        self.kconfig: bytes | None = None
        for map_id in B.prog_map_ids(fd):
            with B.map_get_fd_by_id(map_id) as mfd:
                mi = B.map_info(mfd)
                if mi.name.decode().endswith(".kconfig"):
                    self.kconfig = B.map_lookup_elem(mfd, bytes(4), mi.value_size)


def _normalized(xlated: bytes) -> bytes:
    """Map ids differ between two loads: zero them in map-referencing ld_imm64."""
    buf = bytearray(xlated)
    insns = I.iter_insns(buf)
    for i, ins in enumerate(insns):
        if ins.code == 0x18 and ins.src in (1, 2, 5, 6):
            I.set_imm(buf, i, 0)
    return bytes(buf)


@contextlib.contextmanager
def libbpf_loaded(kr, path: os.PathLike[str] | str) -> Iterator[dict[str, Loaded]]:
    """``bpftool prog loadall`` (libbpf 1.1), read while the pins still hold it all."""
    kr._ensure_bpffs()
    pin_dir = kr._unique_dir()
    try:
        res = kr._run(["prog", "loadall", str(path), str(pin_dir)])
        if res.returncode != 0:
            raise kr.BpftoolError(f"bpftool prog loadall {path} failed", res.stderr)
        out = {}
        for pin in sorted(pin_dir.iterdir()):
            with B.obj_get(str(pin)) as fd:
                out[pin.name] = Loaded(int(fd))
        yield out
    finally:
        kr._remove_pins(pin_dir)


def pyebpf_loaded(obj: pyebpf.Object) -> dict[str, Loaded]:
    return {name: Loaded(int(p.fd)) for name, p in obj.programs.items()}


# -- kconfig-only object ------------------------------------------------------------------------


def test_kconfig_only_object_equals_libbpf(kernelref) -> None:
    path = unit_object(KCONFIG_ONLY)
    spec = pyebpf.ObjectSpec.from_file(path)
    assert {e.kind.name for e in spec.externs.values()} == {"KCONFIG"}
    with libbpf_loaded(kernelref, path) as ref, pyebpf.load(spec) as obj:
        ours = pyebpf_loaded(obj)
        assert set(ours) == set(ref) == {"kconfig_cookie", "kconfig_values"}
        for name in ref:
            assert ours[name].tag == ref[name].tag, name
            assert ours[name].kconfig is not None
            assert ours[name].kconfig == ref[name].kconfig, name
            # the branch on LINUX_HAS_BPF_COOKIE is decided alike
            assert ours[name].xlated == ref[name].xlated, name
        cookie = spec.externs["LINUX_HAS_BPF_COOKIE"]
        image = ours["kconfig_cookie"].kconfig
        assert image[cookie.offset] == int(bool(features.bpf_cookie())) == 1

        # and the program sees the values
        obj.programs["kconfig_values"].test_run()
        has_cookie, kver, hz, bpf_syscall, missing = obj.globals["values"]
        assert (has_cookie, bpf_syscall, missing) == (1, 1, 7)
        assert kver == pyebpf.obj.externs.kernel_version_code()
        assert hz == spec.externs["CONFIG_HZ"].value > 0
    assert kernelref.leftover_pins() == []


def test_kconfig_only_cookie_branch_runs() -> None:
    """The kept branch calls bpf_get_attach_cookie: the attach cookie comes back."""
    path = unit_object(KCONFIG_ONLY)
    with pyebpf.load(path) as obj:
        prog = obj.programs["kconfig_cookie"]
        cookie = 0x5EB0_0000 + os.getpid()
        with prog.attach_tracepoint("syscalls", "sys_enter_getpgid", cookie=cookie):
            os.getpgid(0)
        assert obj.globals["cookie_seen"] == cookie


def test_kconfig_only_offline_relocation_resolves_virtual_externs() -> None:
    """Without the loader's probes, the kernel BTF answers LINUX_HAS_*; the result
    agrees with the runtime probes."""
    spec = pyebpf.ObjectSpec.from_file(unit_object(KCONFIG_ONLY))
    spec.relocate()
    assert spec.externs["LINUX_HAS_BPF_COOKIE"].value == bool(features.bpf_cookie())
    spec2 = pyebpf.ObjectSpec.from_file(unit_object("externs_virtual"))
    spec2.resolve_externs(kernel_btf=pyebpf.kernel_btf(), kallsyms={})
    assert spec2.externs["LINUX_HAS_BPF_COOKIE"].value == 1


def test_loader_uses_runtime_probes_for_virtual_externs(monkeypatch) -> None:
    """LINUX_HAS_* come from features.bpf_cookie()/syscall_wrapper() at load, as libbpf's
    kernel_supports(FEAT_*) (here forced to 0 to see them used)."""
    monkeypatch.setattr(features, "bpf_cookie", lambda: False)
    with pyebpf.load(unit_object(KCONFIG_ONLY)) as obj:
        obj.programs["kconfig_values"].test_run()
        assert obj.globals["values"][0] == 0


# -- poisoned weak kfunc call ----------------------------------------------------------------


def _libbpf_sorted_externs(path: os.PathLike[str] | str) -> list[str]:
    """libbpf's cmp_externs order, from the ELF alone: kconfig externs (here one, so
    their alignment/size keys do not matter) before ksyms, each by strcmp of the name."""
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        und = [s.name for s in symtab.iter_symbols()
               if s.name and s["st_shndx"] == "SHN_UNDEF" and s["st_info"]["type"] == "STT_NOTYPE"]
    kcfg = sorted((n for n in und if n.startswith(("LINUX_", "CONFIG_"))), key=str.encode)
    assert len(kcfg) == 1
    ksym = sorted((n for n in und if n not in kcfg), key=str.encode)
    return kcfg + ksym


def _by_libbpf_rule(insns_1_1: bytes, ext_idx: int) -> tuple[bytes, list[int]]:
    """libbpf's poison_kfunc_call applied to libbpf 1.1's instructions: each call of the
    unresolved kfunc (``call kfunc#0``) becomes ``call 2002000000 + ext_idx``."""
    buf = bytearray(insns_1_1)
    sites = []
    for i, ins in enumerate(I.iter_insns(buf)):
        if ins.code == 0x85 and ins.src == 2 and ins.imm == 0:
            buf[i * 8: i * 8 + 8] = struct.pack("<BBhi", 0x85, 0, 0, 2002000000 + ext_idx)
            sites.append(i)
    return bytes(buf), sites


def test_weak_kfunc_poisoned_as_libbpf(kernelref) -> None:
    path = unit_object(POISON)
    order = _libbpf_sorted_externs(path)
    ext_idx = order.index("bpf_zz_pyebpf_missing_kfunc")
    assert ext_idx == 3

    # pyebpf's libbpf 1.1 form equals libbpf 1.1: same tag
    old = pyebpf.ObjectSpec.from_file(path)
    old.poison_unresolved_kfuncs = False
    old.relocate()
    ref_tags = kernelref.libbpf_tags(path)
    assert {n: p.tag for n, p in old.programs.items()} == ref_tags
    expected, sites = _by_libbpf_rule(bytes(old.programs["poison_guarded"].insns), ext_idx)
    assert len(sites) == 1

    spec = pyebpf.ObjectSpec.from_file(path)
    assert list(spec.externs) == order
    with libbpf_loaded(kernelref, path) as ref, pyebpf.load(spec) as obj:
        prog = obj.programs["poison_guarded"]
        assert bytes(spec.programs["poison_guarded"].insns) == expected
        assert prog.tag == I.tag(expected) != ref_tags["poison_guarded"]
        ours = Loaded(int(prog.fd))
        assert ours.tag == I.tag(expected)
        # the guarded call was dead code either way: the verifier keeps the same program
        assert ours.xlated == ref["poison_guarded"].xlated
        prog.test_run()
        tgid, has_cookie, exists = obj.globals["out"]
        assert (tgid, has_cookie, exists) == (os.getpid(), 1, 0)
    assert kernelref.leftover_pins() == []


def _kprobes_available() -> bool:
    """What libbpf's FEAT_SYSCALL_WRAPPER probe needs: a kprobe PMU or tracefs kprobe_events."""
    return (os.path.exists("/sys/bus/event_source/devices/kprobe/type")
            or any(os.path.exists(f"{d}/kprobe_events")
                   for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")))


def test_usdt_header_kconfig_image_vs_libbpf(kernelref) -> None:
    """sections.bpf.o includes usdt.bpf.h/bpf_tracing.h: LINUX_HAS_BPF_COOKIE and
    LINUX_HAS_SYSCALL_WRAPPER only. The cookie byte equals libbpf's; the wrapper byte is
    README's deliberate difference: without kprobes libbpf's probe says 0, pyebpf asks
    /proc/kallsyms."""
    path = unit_object(KCONFIG_ONLY).parent.parent / "sections.bpf.o"
    spec = pyebpf.ObjectSpec.from_file(path)
    assert set(spec.externs) == {"LINUX_HAS_BPF_COOKIE", "LINUX_HAS_SYSCALL_WRAPPER"}
    with libbpf_loaded(kernelref, path) as ref, pyebpf.load(spec) as obj:
        images = {lo.kconfig for lo in ref.values() if lo.kconfig is not None}
        ours = {lo.kconfig for lo in pyebpf_loaded(obj).values() if lo.kconfig is not None}
    assert len(images) == len(ours) == 1
    (theirs,), (mine,) = images, ours
    cookie = spec.externs["LINUX_HAS_BPF_COOKIE"].offset
    wrapper = spec.externs["LINUX_HAS_SYSCALL_WRAPPER"].offset
    assert mine[cookie] == theirs[cookie] == 1
    assert mine[wrapper] == int(bool(features.syscall_wrapper()))
    if _kprobes_available():
        assert mine == theirs
    else:
        assert theirs[wrapper] == 0
    assert kernelref.leftover_pins() == []


def test_kconfig_option_without_kernel_config(monkeypatch) -> None:
    """No readable kernel config: the load's kconfig= values are enough."""
    import pyebpf.obj.externs as X
    from pyebpf.errors import ExternError

    def missing(paths=None):
        raise ExternError("failed to open system Kconfig (/boot/config-*, /proc/config.gz)")

    monkeypatch.setattr(X, "read_kconfig", missing)
    with pyebpf.load(unit_object(KCONFIG_ONLY), kconfig={"CONFIG_HZ": 100}) as obj:
        obj.programs["kconfig_values"].test_run()
        has_cookie, _, hz, bpf_syscall, missing_opt = obj.globals["values"]
        assert (has_cookie, hz, bpf_syscall, missing_opt) == (1, 100, 0, 7)
