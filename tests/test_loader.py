"""pyebpf.load against the real kernel: same program tags as libbpf 1.1, options
(globals, max_entries, kconfig, log level, BTF sanitizing), attach BTF ids, maps
created as libbpf creates them, and the Object/Program API."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import kernelref
import pytest

import pyebpf
from pyebpf import insn as I
from pyebpf.btf.write import Features
from pyebpf.errors import OptionError, SectionError, SyscallError
from pyebpf.maps.map import ArrayOfMaps, HashMap, PerfEventArray, ProgArray, RingBuf
from pyebpf.obj.program import RelocType
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, AttachType, MapType, ProgType

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

# fixtures libbpf 1.1 cannot load here (see tests/test_fixtures_libbpf.py)
LIBBPF_FAILS = {"maps_legacy", "core_fail", "externs_typed_ksym", "sections_new",
                "sections_trampoline"}
LOADABLE = sorted(p for p in FIXTURES.glob("*.bpf.o")
                  if p.name.removesuffix(".bpf.o") not in LIBBPF_FAILS)


@pytest.fixture
def pin_root():
    """A private directory on the bpffs for LIBBPF_PIN_BY_NAME maps."""
    d = Path("/sys/fs/bpf") / f"pyebpf_loader_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not kernelref.bpftool_available(), reason="needs bpftool")
@pytest.mark.parametrize("path", LOADABLE, ids=lambda p: p.name)
def test_tags_match_libbpf(path: Path, pin_root: str) -> None:
    ref = kernelref.libbpf_tags(path)
    with pyebpf.load(path, pin_root=pin_root) as obj:
        ours = {name: prog.tag for name, prog in obj.programs.items()}
        for name, prog in obj.programs.items():
            info = prog.info()
            assert info.name == name[:15]
            assert info.tag == prog.tag
        expected = _libbpf_current_tags(obj.spec, ref)
    assert ours == expected
    assert open_fd_count() == 0


def _libbpf_current_tags(spec: pyebpf.ObjectSpec, ref: dict[str, str]) -> dict[str, str]:
    """The reference is libbpf 1.1, which leaves a call to an unresolved weak kfunc as
    ``call kfunc#0``; libbpf >= 1.2, and pyebpf by default, poison it as ``call
    2002000000 + extern index``. So: pyebpf's 1.1 form must carry libbpf 1.1's tags, and
    the expected tag of such a program is that of the 1.1 instructions with each of
    those calls rewritten by the rule (tests/test_externs_libbpf.py checks the index)."""
    old = pyebpf.ObjectSpec.from_file(spec.path)
    old.poison_unresolved_kfuncs = False
    old.relocate()
    assert {n: p.tag for n, p in old.programs.items() if p.autoload} == ref
    expected = dict(ref)
    for name, p in old.programs.items():
        if name not in ref:
            continue
        buf = bytearray(p.insns)
        sites = {r.insn_idx: r.target for r in p.relocs if r.type == RelocType.EXTERN_CALL}
        for idx, ins in enumerate(I.iter_insns(buf)):
            if ins.is_call and ins.src == I.BPF_PSEUDO_KFUNC_CALL and ins.imm == 0:
                assert idx in sites, f"{name}: insn {idx} is an unresolved kfunc call without a relocation"
                ext = old.externs[sites[idx]]
                I.put(buf, idx, I.Insn(0x85, 0, 0, 0, I.POISON_CALL_KFUNC_BASE + ext.index))
        expected[name] = I.tag(buf)
    return expected


def test_pyebpf_loads_more_than_libbpf_1_1(pin_root: str) -> None:
    # legacy maps and the new SEC() names libbpf 1.1 does not know
    for name in ("maps_legacy", "sections_new"):
        with pyebpf.load(FIXTURES / f"{name}.bpf.o", pin_root=pin_root) as obj:
            assert obj.programs
            for p in obj.programs.values():
                assert len(p.tag) == 16


def test_object_api() -> None:
    spec = pyebpf.ObjectSpec.from_file(FIXTURES / "opensnoop.bpf.o")
    with pyebpf.load(spec) as obj:
        assert obj.spec is spec
        assert set(obj.programs) == {"tracepoint__syscalls__sys_enter_openat",
                                     "tracepoint__syscalls__sys_exit_openat"}
        prog = obj.programs["tracepoint__syscalls__sys_enter_openat"]
        assert prog.type == ProgType.TRACEPOINT
        assert prog.object is obj
        assert prog.spec is spec.programs[prog.name]
        assert prog.tag == spec.programs[prog.name].tag
        assert f"id={prog.id}" in repr(prog) and prog.tag in repr(prog)
        info = prog.info()
        assert info.nr_func_info == 1 and info.nr_line_info > 0 and info.btf_id
        # the program uses its maps
        assert {m.id for m in obj.maps.values()} >= set(B.prog_map_ids(prog.fd))
        assert isinstance(obj.maps["events"], RingBuf)
        assert isinstance(obj.maps["start"], HashMap)
        assert "opensnoop" in repr(obj) and "events" in repr(obj.maps["events"])
        with pytest.raises(TypeError):
            obj.programs["x"] = prog  # type: ignore[index]
    assert obj.closed and prog.closed
    assert "closed" in repr(prog) and "closed" in repr(obj)
    assert open_fd_count() == 0


def test_globals_override_visible_to_program() -> None:
    ro_point = {"x": 5, "y": 6, "tag": b"zz"}
    with pyebpf.load(FIXTURES / "globals.bpf.o",
                     globals={"ro_int": 1000, "ro_point": ro_point,
                              "bar_int": (3).to_bytes(4, "little")}) as obj:
        g = obj.globals
        assert g["ro_int"] == 1000 and g["bar_int"] == 3
        prog = obj.programs["read_write_globals"]
        assert prog.test_run().retval == 0
        # bss_int = data_int + ro_int + foo_int + bar_int
        assert g["bss_int"] == 7 + 1000 + 5 + 3
        assert g["bss_point"].x == 10 + 5 and g["bss_point"].y == 20 + 6
        assert g["bss_point"].tag == b"z"
        assert g["bss_arr"][:3] == (1 + 100 + 55, 2 + 200 + 66, 3 + 300 + 55)
        # writable globals go through the mmap'd .data map and the program sees them
        g["data_int"] = 100
        assert g.get_bytes("data_int") == (100).to_bytes(4, "little")
        prog.test_run()
        assert g["bss_int"] == 100 + 1000 + 5 + 3
        assert obj.maps["globals.data"].lookup(0).data_int == 100
        with pytest.raises(OptionError, match="read-only after load"):
            g["ro_int"] = 1
        with pytest.raises(KeyError):
            g["nope"]
        assert "ro_int" in g and len(g) == len(obj.spec.variables)


def test_global_data_maps_as_libbpf() -> None:
    with pyebpf.load(FIXTURES / "globals.bpf.o") as obj:
        ro = obj.maps["globals.rodata"]
        info = ro.info()
        assert info.map_flags == BPF_F_RDONLY_PROG | BPF_F_MMAPABLE
        assert info.name.decode() == "globals.rodata"
        with pytest.raises(SyscallError) as e:  # frozen
            ro.update(0, bytes(ro.value_size))
        assert e.value.errno == errno.EPERM
        assert obj.maps["globals.data"].info().map_flags & BPF_F_MMAPABLE
        assert obj.maps[".rodata.str1.1"].lookup(0) == b"hello from globals\0"
        # .rodata is bound to the program (libbpf's PROG_BIND_MAP)
        assert ro.id in B.prog_map_ids(obj.programs["read_write_globals"].fd)


def test_option_errors() -> None:
    path = FIXTURES / "globals.bpf.o"
    with pytest.raises(OptionError, match="no global variable"):
        pyebpf.load(path, globals={"nope": 1})
    with pytest.raises(OptionError, match="4 bytes"):
        pyebpf.load(path, globals={"ro_int": b"\1"})
    with pytest.raises(OptionError, match="no map named"):
        pyebpf.load(path, max_entries={"nope": 1})
    with pytest.raises(OptionError):
        pyebpf.load(123)  # type: ignore[arg-type]
    assert open_fd_count() == 0


def test_max_entries_and_map_shapes(pin_root: str) -> None:
    with pyebpf.load(FIXTURES / "maps_btf.bpf.o", max_entries={"hash_map": 300},
                     pin_root=pin_root) as obj:
        m = obj.maps
        assert m["hash_map"].info().max_entries == 300
        # perf_event_array max_entries 0 -> possible CPUs
        assert isinstance(m["perf_events"], PerfEventArray)
        assert m["perf_events"].info().max_entries == B.possible_cpus()
        assert m["ringbuf"].info().max_entries % os.sysconf("SC_PAGE_SIZE") == 0
        # BTF key/value ids where libbpf passes them, none for map-in-map
        info = m["hash_map"].info()
        assert info.btf_id and info.btf_value_type_id
        assert m["outer_array"].info().btf_value_type_id == 0
        # map-in-map slots filled: outer_array[0] = inner_a, [1] = inner_b (see maps_btf.bpf.c)
        outer = m["outer_array"]
        assert isinstance(outer, ArrayOfMaps)
        slots = dict(outer.items())
        assert set(slots.values()) <= {m["inner_a"].id, m["inner_b"].id} and slots
        # prog_array slots point at the tail-call targets
        jt = m["jump_table"]
        assert isinstance(jt, ProgArray)
        want = {obj.programs[n].id for n in ("tail_target_a", "tail_target_b")}
        assert set(dict(jt.items()).values()) == want
        # pinned by name under pin_root
        pinned = m["pyebpf_fixture_pinned"]
        assert pinned.pin_path == os.path.join(pin_root, "pyebpf_fixture_pinned")
        assert pyebpf.Map.from_pin(pinned.pin_path).id == pinned.id


def test_kconfig_override_and_externs() -> None:
    with pyebpf.load(FIXTURES / "externs.bpf.o",
                     kconfig={"CONFIG_HZ": 123, "CONFIG_PYEBPF_DOES_NOT_EXIST": 7}) as obj:
        obj.programs["kconfig_and_ksyms"].test_run()
        out = obj.globals["out"]
        assert out.hz == 123 and out.missing == 7
        assert out.bpf_syscall is True or out.bpf_syscall == 1
        assert out.btf_magic == 0xEB9F


def test_attach_btf_ids() -> None:
    kbtf = pyebpf.kernel_btf()
    from pyebpf.btf.types import Kind

    with pyebpf.load(FIXTURES / "sections.bpf.o") as obj:
        tp = obj.programs["s_tp_btf"]
        want = kbtf.find("btf_trace_sched_switch", Kind.TYPEDEF)[0]
        assert tp.attach_btf_id == want == tp.info().attach_btf_id
        assert tp.expected_attach_type == AttachType.TRACE_RAW_TP
        it = obj.programs["s_iter_task"]
        assert it.attach_btf_id == kbtf.find("bpf_iter_task", Kind.FUNC)[0]


def test_btf_path_custom_copy_matches_default(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """btf_path: a copy of vmlinux elsewhere drives CO-RE, externs and attach BTF ids
    exactly as the default does, so the kernel computes the same program tags."""
    from pyebpf.btf import kernel as kmod

    # the custom path gets its own process-wide index; drop it when the test ends
    monkeypatch.setattr(kmod, "_shared", dict(kmod._shared))
    custom = tmp_path / f"vmlinux-{uuid.uuid4().hex[:8]}"
    custom.write_bytes(Path("/sys/kernel/btf/vmlinux").read_bytes())
    base = open_fd_count()
    for name in ("opensnoop", "core", "sections"):
        path = FIXTURES / f"{name}.bpf.o"
        with pyebpf.load(path) as obj:
            want = {n: (p.tag, p.attach_btf_id) for n, p in obj.programs.items()}
        with pyebpf.load(path, btf_path=str(custom)) as obj:
            got = {n: (p.tag, p.attach_btf_id) for n, p in obj.programs.items()}
            assert {n: p.info().tag for n, p in obj.programs.items()} == {
                n: t for n, (t, _) in got.items()}
        assert got == want, name
    # the copy really was the BTF used, not the default one
    assert kmod._shared[str(custom)] is not pyebpf.kernel_btf()
    assert any(bid for _, bid in want.values())  # sections.bpf.o: tp_btf/iter targets
    assert open_fd_count() == base


def test_autoload_and_autocreate() -> None:
    spec = pyebpf.ObjectSpec.from_file(FIXTURES / "maps_btf.bpf.o")
    spec.programs["use_maps"].autoload = False
    spec.maps["lru_map"].autocreate = False
    spec.maps["pyebpf_fixture_pinned"].pinning = type(spec.maps["lru_map"].pinning).NONE
    with pyebpf.load(spec) as obj:
        assert "use_maps" not in obj.programs and "tail_target_a" in obj.programs
        assert "lru_map" not in obj.maps and "hash_map" in obj.maps


def test_log_level_keeps_log() -> None:
    with pyebpf.load(FIXTURES / "minimal.bpf.o", log_level=1) as obj:
        log = obj.programs["handle_tp"].log
        assert "processed" in log


def test_btf_sanitized_for_old_kernels() -> None:
    # a kernel without DATASEC/FLOAT/DECL_TAG/TYPE_TAG/ENUM64: BTF still loads, ids unchanged
    old = Features(has_func=True, has_func_global=False, has_datasec=False, has_float=False,
                   has_decl_tag=False, has_type_tag=False, has_enum64=False,
                   has_qmark_datasec=False)
    ref = {}
    with pyebpf.load(FIXTURES / "core.bpf.o") as obj:
        ref = {n: p.tag for n, p in obj.programs.items()}
    with pyebpf.load(FIXTURES / "core.bpf.o", btf_features=old) as obj:
        assert {n: p.tag for n, p in obj.programs.items()} == ref
        info = next(iter(obj.programs.values())).info()
        assert info.btf_id and info.nr_func_info > 0
        btf = B.btf_data(B.btf_get_fd_by_id(info.btf_id))
        from pyebpf.btf.spec import BTF
        from pyebpf.btf.types import Kind

        kinds = {t.kind for t in BTF.from_bytes(btf)}
        assert Kind.DATASEC not in kinds and Kind.VAR not in kinds
    # no BTF FUNC: no func_info/line_info (libbpf's FEAT_BTF_FUNC rule)
    with pyebpf.load(FIXTURES / "opensnoop.bpf.o", btf_features=Features(has_func=False)) as obj:
        for p in obj.programs.values():
            assert p.info().nr_func_info == 0
    assert open_fd_count() == 0


def test_section_error_at_load() -> None:
    from unitobj import unit_object

    with pytest.raises(SectionError):
        pyebpf.load(unit_object("object_unknown_section"))
    assert open_fd_count() == 0


def test_load_from_bytes_and_program_from_id() -> None:
    data = (FIXTURES / "minimal.bpf.o").read_bytes()
    with pyebpf.load(data) as obj:
        p = obj.programs["handle_tp"]
        with pyebpf.Program.from_id(p.id) as q:
            assert q.tag == p.tag and q.type == ProgType.TRACEPOINT
        # no file name, so no object-name prefix on the global-data maps
        m = next(m for m in obj.maps.values() if m.spec.extra.get("libbpf_type") == "bss")
        with pyebpf.Map.from_id(m.id) as m2:
            assert m2.type == MapType.ARRAY and m2.value_size == m.value_size
            # BTF comes from the kernel: values still decode
            assert m2.lookup(0).my_pid == 0
        obj.globals["my_pid"] = os.getpid()
        assert m.lookup(0).my_pid == os.getpid()


def test_struct_ops_map_value() -> None:
    with pyebpf.load(FIXTURES / "sections_struct_ops.bpf.o") as obj:
        st = obj.maps["pyebpf_cc"]
        assert st.type == MapType.STRUCT_OPS
        info = st.info()
        assert info.btf_vmlinux_value_type_id and info.value_size == len(st.value_bytes)
        fds = {int(p.fd) for p in obj.programs.values()}
        plan = st.struct_ops_plan
        for member, off in plan.func_offsets.items():
            assert int.from_bytes(st.value_bytes[off:off + 8], "little") in fds, member
        for p in obj.programs.values():
            assert p.type == ProgType.STRUCT_OPS and p.attach_btf_id == plan.kernel_type_id


def _available_cc() -> list[str]:
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        return f.read().split()


def test_struct_ops_registered_by_attach() -> None:
    # libbpf's bpf_map__attach_struct_ops: the map update registers "pyebpf_cc";
    # closing the registration (or the object) unregisters it
    with pyebpf.load(FIXTURES / "sections_struct_ops.bpf.o") as obj:
        if "pyebpf_cc" in _available_cc():
            pytest.skip("another process has pyebpf_cc registered")
        try:
            links = obj.attach()
        except SyscallError as e:
            if e.errno == errno.EEXIST:
                pytest.skip("another process registered pyebpf_cc meanwhile")
            raise
        assert "pyebpf_cc" in links and "pyebpf_cc" in _available_cc()
        assert set(obj.attach_skipped) == set(obj.programs)  # programs attach through the map
    assert "pyebpf_cc" not in _available_cc()
    assert open_fd_count() == 0


def test_syscall_program_ctx_and_ring_buffer() -> None:
    # the loaded producer writes into the loaded ring buffer; the ctx comes back updated
    import struct

    from pyebpf.maps.ringbuf import RingBuffer

    with pyebpf.load(FIXTURES / "ringbuf_producer.bpf.o") as obj:
        prog = obj.programs["produce_rb"]
        args = struct.pack("<QIIIIII", 1000, 5, 32, 0, 0, 0, 0)
        res = prog.test_run(ctx_in=args)
        seq, count, size, mode, flags, produced, dropped = struct.unpack("<QIIIIII", res.ctx_out)
        assert res.retval == produced == 5 and dropped == 0 and seq == 1005
        with RingBuffer(obj.maps["rb"]) as rb:
            recs = [bytes(r) for r in rb.poll(timeout=1.0)]
        assert [struct.unpack_from("<Q", r)[0] for r in recs] == [1000, 1001, 1002, 1003, 1004]
