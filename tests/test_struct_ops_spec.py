"""struct_ops maps in the object layer: opening (maps, member -> program) and the
load-time layout against kernel BTF (resolve_struct_ops), checked against libbpf."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pyebpf.btf.spec import BTF
from pyebpf.btf.types import (
    INT_SIGNED,
    Array,
    FuncProto,
    Int,
    Kind,
    Member,
    Ptr,
    Struct,
)
from pyebpf.errors import BTFError, ObjectError
from pyebpf.obj.object import ObjectSpec
from pyebpf.obj.struct_ops import (
    StructOpsPlan,
    StructOpsSpec,
    adjust_struct_ops_autoload,
    is_struct_ops_section,
    resolve_struct_ops,
    struct_ops_prog_attach,
)
from pyebpf.uapi import BPF_F_LINK, MapType

try:
    from tests.unitobj import unit_object
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from unitobj import unit_object  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CC_OBJ = FIXTURES / "sections_struct_ops.bpf.o"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
CC_PROGS = {
    "init": "pyebpf_cc_init",
    "ssthresh": "pyebpf_cc_ssthresh",
    "cong_avoid": "pyebpf_cc_cong_avoid",
    "undo_cwnd": "pyebpf_cc_undo_cwnd",
}

needs_kernel_btf = pytest.mark.skipif(not os.path.exists(VMLINUX_BTF),
                                      reason="no kernel BTF")


def _kbtf():
    from pyebpf.btf.kernel import kernel_btf

    return kernel_btf()


# -- the committed tcp_congestion_ops fixture -----------------------------------------------


def test_fixture_map() -> None:
    spec = ObjectSpec.from_file(CC_OBJ)
    m = spec.maps["pyebpf_cc"]
    assert m.type == MapType.STRUCT_OPS
    assert (m.key_size, m.max_entries, m.flags) == (4, 1, 0)
    assert m.struct_ops_type == "tcp_congestion_ops"
    assert m.section == ".struct_ops" and m.autocreate
    so = m.extra["struct_ops"]
    assert isinstance(so, StructOpsSpec)
    local = spec.btf.type(so.type_id)
    assert local.kind == Kind.STRUCT and local.name == "tcp_congestion_ops"
    assert m.btf_value_type_id == so.type_id
    assert m.value_size == local.size == len(so.data)
    assert so.programs == CC_PROGS
    name = so.member("name")
    assert name is not None and name.kind == Kind.ARRAY
    assert bytes(so.data[name.offset:name.offset + name.size]).rstrip(b"\0") == b"pyebpf_cc"
    # function slots are relocations: zero in the data
    for member in CC_PROGS:
        mb = so.member(member)
        assert mb is not None and mb.func_ptr
        assert not any(so.data[mb.offset:mb.offset + 8])
    assert all(spec.programs[p].type.name == "STRUCT_OPS" for p in CC_PROGS.values())


@needs_kernel_btf
def test_fixture_resolve_against_kernel() -> None:
    kbtf = _kbtf()
    m = ObjectSpec.from_file(CC_OBJ).maps["pyebpf_cc"]
    plan = resolve_struct_ops(m, kbtf)
    assert isinstance(plan, StructOpsPlan)
    kid = kbtf.find("tcp_congestion_ops", Kind.STRUCT)[0]
    vid = kbtf.find("bpf_struct_ops_tcp_congestion_ops")[0]
    assert (plan.kernel_type_id, plan.value_type_id) == (kid, vid)
    assert plan.value_size == kbtf.type(vid).size == 256  # KERNEL.md
    assert len(plan.value) == 256
    vtype = kbtf.type(vid)
    data_member = next(mb for mb in vtype.members if mb.name == "data")
    assert plan.data_offset == data_member.bit_offset // 8
    ktype = kbtf.type(kid)
    kidx = {mb.name: i for i, mb in enumerate(ktype.members)}
    koff = {mb.name: mb.bit_offset // 8 for mb in ktype.members}
    assert plan.prog_attach == {prog: (kid, kidx[mem]) for mem, prog in CC_PROGS.items()}
    assert plan.func_offsets == {mem: plan.data_offset + koff[mem] for mem in CC_PROGS}
    assert plan.programs == CC_PROGS
    assert plan.skipped == [] and plan.dropped_programs == []
    for name, off in plan.member_offsets.items():
        assert off == koff[name]
    start = plan.data_offset + koff["name"]
    assert bytes(plan.value[start:start + 16]).rstrip(b"\0") == b"pyebpf_cc"
    # only the name was non-zero; the common header (refcnt, state) stays zero
    assert bytes(plan.value).replace(b"pyebpf_cc", b"") == bytes(256 - 9)
    assert struct_ops_prog_attach([plan]) == plan.prog_attach


def _bpftool_debug(obj: Path) -> str:
    """libbpf 1.1's debug log of loading ``obj`` with bpftool (pins removed after)."""
    pin_dir = Path("/sys/fs/bpf") / f"pyebpf_so_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        res = subprocess.run(["bpftool", "-d", "prog", "loadall", str(obj), str(pin_dir)],
                             capture_output=True, text=True, timeout=120)
    finally:
        if pin_dir.exists():
            for p in pin_dir.iterdir():
                p.unlink()
            pin_dir.rmdir()
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


@needs_kernel_btf
@pytest.mark.skipif(shutil.which("bpftool") is None or os.geteuid() != 0,
                    reason="needs bpftool and root")
def test_fixture_matches_libbpf_log() -> None:
    """Ids, func slots and copied members as libbpf 1.1 reports them with -d."""
    log = _bpftool_debug(CC_OBJ)
    m = ObjectSpec.from_file(CC_OBJ).maps["pyebpf_cc"]
    so = m.extra["struct_ops"]
    plan = resolve_struct_ops(m, _kbtf())
    ids = re.search(r"struct_ops init_kern pyebpf_cc: type_id:(\d+) kern_type_id:(\d+) "
                    r"kern_vtype_id:(\d+)", log)
    assert ids is not None, log[-2000:]
    assert tuple(map(int, ids.groups())) == (so.type_id, plan.kernel_type_id,
                                              plan.value_type_id)
    funcs = {name: (prog, int(src), int(dst)) for name, prog, src, dst in re.findall(
        r"func ptr (\w+) is set to prog (\w+) from data\(\+(\d+)\) to kern_data\(\+(\d+)\)",
        log)}
    assert funcs == {mem: (prog, so.member(mem).offset, plan.member_offsets[mem])
                     for mem, prog in plan.programs.items()}
    copies = {name: (int(n), int(src), int(dst)) for name, n, src, dst in re.findall(
        r"init_kern pyebpf_cc: copy (\w+) (\d+) bytes from data\(\+(\d+)\) to "
        r"kern_data\(\+(\d+)\)", log)}
    ours = {mb.name: (mb.size, mb.offset, plan.member_offsets[mb.name])
            for mb in so.members if mb.kind != Kind.PTR}
    assert copies == ours


# -- .struct_ops.link / "?" sections (fixtures/src/unit/struct_ops_link.bpf.c) -------------


@pytest.fixture(scope="module")
def link_obj() -> Path:
    return unit_object("struct_ops_link")


def test_link_sections(link_obj: Path) -> None:
    spec = ObjectSpec.from_file(link_obj)
    assert sorted(n for n, m in spec.maps.items() if m.type == MapType.STRUCT_OPS) == [
        "linked_cc", "linked_cc2", "optional_cc"]
    lcc, lcc2, occ = spec.maps["linked_cc"], spec.maps["linked_cc2"], spec.maps["optional_cc"]
    assert lcc.flags == BPF_F_LINK and lcc.section == ".struct_ops.link" and lcc.autocreate
    assert lcc2.flags == BPF_F_LINK and lcc2.section == ".struct_ops.link.more"
    assert occ.flags == 0 and not occ.autocreate  # "?" prefix: not created by default
    assert lcc.extra["struct_ops"].programs == {
        "init": "l_init", "release": "l_release", "undo_cwnd": "l_undo"}
    assert lcc2.extra["struct_ops"].programs == {"undo_cwnd": "l_undo"}
    assert occ.extra["struct_ops"].programs == {"init": "l_init"}
    assert spec.programs["l_release"].sleepable
    for m in (lcc, lcc2, occ):
        assert m.struct_ops_type == "tcp_congestion_ops"


@needs_kernel_btf
def test_link_resolve_and_reuse(link_obj: Path) -> None:
    kbtf = _kbtf()
    spec = ObjectSpec.from_file(link_obj)
    plans = [resolve_struct_ops(spec.maps[n], kbtf) for n in ("linked_cc", "linked_cc2")]
    ktype = kbtf.type(plans[0].kernel_type_id)
    kidx = {mb.name: i for i, mb in enumerate(ktype.members)}
    attach = struct_ops_prog_attach(plans)
    kid = plans[0].kernel_type_id
    assert attach == {"l_init": (kid, kidx["init"]), "l_release": (kid, kidx["release"]),
                      "l_undo": (kid, kidx["undo_cwnd"])}
    # the same program behind two different members is refused
    spec.maps["linked_cc2"].extra["struct_ops"].programs["init"] = "l_undo"
    with pytest.raises(ObjectError, match="reuse"):
        resolve_struct_ops(spec.maps["linked_cc2"], kbtf)


def test_autoload_follows_autocreate(link_obj: Path) -> None:
    spec = ObjectSpec.from_file(link_obj)
    spec.maps["linked_cc"].autocreate = False
    spec.maps["linked_cc2"].autocreate = False
    adjust_struct_ops_autoload(spec.maps, spec.programs)
    # l_init is still used by optional_cc, which is off by default
    assert not spec.programs["l_init"].autoload
    assert not spec.programs["l_release"].autoload
    assert not spec.programs["l_undo"].autoload
    spec.maps["optional_cc"].autocreate = True
    adjust_struct_ops_autoload(spec.maps, spec.programs)
    assert spec.programs["l_init"].autoload
    assert not spec.programs["l_undo"].autoload


def test_section_names() -> None:
    for ok in (".struct_ops", ".struct_ops.link", "?.struct_ops", "?.struct_ops.link",
               ".struct_ops.x", ".struct_ops.link.y"):
        assert is_struct_ops_section(ok)
    for no in (".struct_opsx", "struct_ops", ".rel.struct_ops", "struct_ops/foo", ".maps"):
        assert not is_struct_ops_section(no)


# -- a made-up struct against a synthetic kernel BTF -----------------------------------------

@pytest.fixture(scope="module")
def ops_obj() -> Path:
    """struct pyebpf_ops maps ops_one and ops_two (fixtures/src/unit/struct_ops_ops.bpf.c)."""
    return unit_object("struct_ops_ops")


def _kernel(members: list[tuple[str, str]], *, with_value: bool = True,
            value_data_type: int | None = None, base: BTF | None = None) -> BTF:
    """A tiny 'kernel' BTF: struct pyebpf_ops with the given (name, kind) members in
    order, kinds "fn" (func ptr), "int", "long", "tag" (char[8]), plus its
    bpf_struct_ops_pyebpf_ops wrapper with an 8-byte header then `data`."""
    b = BTF(base=base) if base is not None else BTF()
    t_int = b.add(Int("int", 4, INT_SIGNED))
    t_long = b.add(Int("long", 8, INT_SIGNED))
    t_char = b.add(Int("char", 1))
    t_proto = b.add(FuncProto(t_int, []))
    t_fptr = b.add(Ptr(t_proto))
    t_tag = b.add(Array(t_char, t_int, 8))
    kinds = {"fn": (t_fptr, 8), "int": (t_int, 4), "long": (t_long, 8), "tag": (t_tag, 8),
             "ptr": (b.add(Ptr(t_int)), 8)}
    off, ms = 0, []
    for name, k in members:
        tid, size = kinds[k]
        off = (off + size - 1) // size * size if size in (4, 8) else off
        ms.append(Member(name, tid, off * 8))
        off += size
    size = (off + 7) // 8 * 8
    sid = b.add(Struct("pyebpf_ops", size, ms))
    if with_value:
        b.add(Struct("bpf_struct_ops_pyebpf_ops", 64 + size, [
            Member("refcnt", t_int, 0), Member("state", t_int, 32),
            Member("data", value_data_type if value_data_type is not None else sid, 64 * 8)]))
    return b


_GOOD = [("b", "fn"), ("pad", "long"), ("a", "fn"), ("tag", "tag"), ("x", "int"),
         ("gone", "int")]


def test_open_two_maps_one_section(ops_obj: Path) -> None:
    spec = ObjectSpec.from_file(ops_obj)
    one, two = spec.maps["ops_one"], spec.maps["ops_two"]
    assert one.struct_ops_type == two.struct_ops_type == "pyebpf_ops"
    assert one.value_size == two.value_size == 32
    s1, s2 = one.extra["struct_ops"], two.extra["struct_ops"]
    assert (s1.sec_offset, s2.sec_offset) == (0, 32)
    assert s1.programs == {"a": "op_a"} and s2.programs == {"b": "op_b"}
    assert int.from_bytes(s1.data[16:20], "little") == 7
    assert bytes(s1.data[24:32]).rstrip(b"\0") == b"one"


def test_resolve_reordered_kernel_struct(ops_obj: Path) -> None:
    spec = ObjectSpec.from_file(ops_obj)
    k = _kernel(_GOOD)
    plan = resolve_struct_ops(spec.maps["ops_one"], k)
    kid = k.find("pyebpf_ops", Kind.STRUCT)[0]
    assert plan.kernel_type_id == kid
    assert plan.value_type_id == k.find("bpf_struct_ops_pyebpf_ops")[0]
    assert plan.data_offset == 64 and plan.value_size == 64 + 40
    # members land at the kernel's offsets, matched by name
    assert plan.member_offsets == {"a": 16, "b": 0, "x": 32, "gone": 36, "tag": 24}
    assert plan.prog_attach == {"op_a": (kid, 2)}
    assert plan.func_offsets == {"a": 64 + 16}
    v = plan.value
    assert int.from_bytes(v[64 + 32:64 + 36], "little") == 7
    assert bytes(v[64 + 24:64 + 32]).rstrip(b"\0") == b"one"
    assert not any(v[:64]) and not any(v[64 + 16:64 + 24])  # fd slot left for the loader


def test_missing_member_zero_is_skipped(ops_obj: Path) -> None:
    spec = ObjectSpec.from_file(ops_obj)
    k = _kernel([m for m in _GOOD if m[0] not in ("gone", "b")])
    plan = resolve_struct_ops(spec.maps["ops_one"], k)  # gone == 0, b unset in ops_one
    assert plan.skipped == ["b", "gone"]
    assert "gone" not in plan.member_offsets
    with pytest.raises(ObjectError, match="Cannot find member gone"):
        resolve_struct_ops(spec.maps["ops_two"], _kernel([m for m in _GOOD if m[0] != "gone"]))
    k2 = _kernel([m for m in _GOOD if m[0] != "b"])
    with pytest.raises(ObjectError, match="Cannot find member b"):
        resolve_struct_ops(spec.maps["ops_two"], k2)  # b -> op_b
    # dropping the callback by hand makes it loadable; libbpf then unloads op_b
    so = spec.maps["ops_two"].extra["struct_ops"]
    del so.programs["b"]
    plan = resolve_struct_ops(spec.maps["ops_two"], k2)
    assert plan.skipped == ["b"] and plan.prog_attach == {}


def test_layout_mismatches(ops_obj: Path) -> None:
    m = ObjectSpec.from_file(ops_obj).maps["ops_one"]
    swapped = [("x", "long") if n == "x" else (n, k) for n, k in _GOOD]
    with pytest.raises(ObjectError, match="size of member x: 4 != 8"):
        resolve_struct_ops(m, _kernel(swapped))
    with pytest.raises(ObjectError, match="Unmatched member type x"):
        resolve_struct_ops(m, _kernel([("x", "fn") if n == "x" else (n, k) for n, k in _GOOD]))
    with pytest.raises(ObjectError, match="kernel member a is not a func ptr"):
        resolve_struct_ops(m, _kernel([("a", "ptr") if n == "a" else (n, k) for n, k in _GOOD]))
    with pytest.raises(BTFError, match="bpf_struct_ops_pyebpf_ops is not found"):
        resolve_struct_ops(m, _kernel(_GOOD, with_value=False))
    with pytest.raises(BTFError, match="data is not found"):
        resolve_struct_ops(m, _kernel(_GOOD, value_data_type=1))
    with pytest.raises(BTFError, match="struct pyebpf_ops is not found"):
        resolve_struct_ops(m, BTF())


@needs_kernel_btf
def test_unknown_kernel_struct(ops_obj: Path) -> None:
    m = ObjectSpec.from_file(ops_obj).maps["ops_one"]
    with pytest.raises(BTFError, match="pyebpf_ops is not found in kernel BTF"):
        resolve_struct_ops(m, _kbtf())


def test_not_a_struct_ops_map() -> None:
    spec = ObjectSpec.from_file(FIXTURES / "maps_btf.bpf.o")
    with pytest.raises(ObjectError, match="not a struct_ops map"):
        resolve_struct_ops(next(iter(spec.maps.values())), BTF())


def test_open_errors() -> None:
    with pytest.raises(ObjectError, match="not struct_ops BPF program"):
        ObjectSpec.from_file(unit_object("struct_ops_bad_prog"))
    with pytest.raises(ObjectError, match="int is not a struct"):
        ObjectSpec.from_file(unit_object("struct_ops_not_struct"))
    with pytest.raises(ObjectError, match="BTF"):
        ObjectSpec.from_file(unit_object("struct_ops_no_btf"))


def test_struct_in_module_btf(ops_obj: Path) -> None:
    m = ObjectSpec.from_file(ops_obj).maps["ops_one"]
    vmlinux = BTF([Int("int", 4, INT_SIGNED)])
    module = _kernel(_GOOD, base=vmlinux)
    plan = resolve_struct_ops(m, [vmlinux, module])
    assert plan.btf_index == 1
    assert plan.kernel_type_id == module.find("pyebpf_ops", Kind.STRUCT)[0] >= len(vmlinux)
    assert resolve_struct_ops(m, [module]).btf_index == 0


def test_junk_in_pointer_slot(ops_obj: Path) -> None:
    m = ObjectSpec.from_file(ops_obj).maps["ops_one"]
    so = m.extra["struct_ops"]
    so.data[8:16] = (0x1234).to_bytes(8, "little")  # member b, no program behind it
    with pytest.raises(ObjectError, match="member b is not a struct_ops program"):
        resolve_struct_ops(m, _kernel(_GOOD))
