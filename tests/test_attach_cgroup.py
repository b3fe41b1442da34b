"""Cgroup attach (pyebpf.links.cgroup) on the real kernel: every cgroup hook fires through a
bpf link and through BPF_PROG_ATTACH; multi, override and replace semantics; link update;
queries; the attach errors, each with its message; and no fd or kernel object left behind.

Programs go on scratch cgroups (tests/cgroups.py) that hold nothing but a forked child
doing the work, so the counters need no pid filter. Pure parts run without root.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import cgroups
import kobjects
import pytest

import pyebpf
from pyebpf import ObjectSpec
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links.base import AttachError, Link
from pyebpf.links.cgroup import (
    BPF_F_ALLOW_MULTI,
    BPF_F_ALLOW_OVERRIDE,
    CgroupAttachment,
    CgroupLink,
    CgroupQuery,
    attach_cgroup,
    cgroup_attach_type,
    cgroup_query,
    flag_names,
)
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import AttachType, LinkType, ProgType

try:
    from tests.unitobj import unit_object
except ImportError:
    from unitobj import unit_object  # type: ignore[no-redef]

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (bpf syscalls, cgroup v2)")

OBJ = unit_object("attach_cgroup")
N = 3

# slot of each program in `counts` (the enum in fixtures/src/unit/attach_cgroup.bpf.c)
SLOTS = {name: i for i, name in enumerate([
    "cg_ingress", "cg_egress", "cg_sock_create", "cg_sock_release", "cg_sockops",
    "cg_connect4", "cg_connect6", "cg_bind4", "cg_bind6", "cg_sendmsg4", "cg_sendmsg6",
    "cg_recvmsg4", "cg_recvmsg6", "cg_getsockopt", "cg_setsockopt", "cg_sysctl", "cg_dev",
    "cg_post_bind4", "cg_post_bind6", "cg_getpeername4", "cg_getpeername6",
    "cg_getsockname4", "cg_getsockname6", "cg_egress_b", "cg_sock_create_b",
    "cg_sock_create_c", "cg_skb_any"])}

V4, V6 = (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")


# --- what the child does in the cgroup, per hook -----------------------------------------------


def _udp_rx(fam: int, host: str) -> socket.socket:
    rx = socket.socket(fam, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    return rx


def w_loopback_udp() -> None:
    """N datagrams sent and received on 127.0.0.1 (N egress, N ingress)."""
    with _udp_rx(*V4) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(N):
            tx.sendto(b"x", rx.getsockname())
        for _ in range(N):
            rx.recv(16)


def w_sockets() -> None:
    """N inet sockets created and closed."""
    for _ in range(N):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()


def w_tcp() -> None:
    """One loopback TCP connection carrying a few bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
            c.connect(lst.getsockname())
            a, _ = lst.accept()
            with a:
                c.sendall(b"hi")
                a.recv(16)


def w_connect(fam: int, host: str) -> Callable[[], None]:
    def f() -> None:
        with _udp_rx(fam, host) as rx:
            for _ in range(N):
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.connect(rx.getsockname()[:2])
    return f


def w_bind(fam: int, host: str) -> Callable[[], None]:
    def f() -> None:
        for _ in range(N):
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
    return f


def w_sendrecv(fam: int, host: str) -> Callable[[], None]:
    """N unconnected sendto() and N recvfrom() (the sendmsg and recvmsg hooks)."""
    def f() -> None:
        with _udp_rx(fam, host) as rx, socket.socket(fam, socket.SOCK_DGRAM) as tx:
            for _ in range(N):
                tx.sendto(b"x", rx.getsockname()[:2])
            for _ in range(N):
                rx.recvfrom(16)
    return f


def w_names(fam: int, host: str) -> Callable[[], None]:
    def f() -> None:
        with _udp_rx(fam, host) as rx, socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(rx.getsockname()[:2])
            for _ in range(N):
                s.getpeername()
                s.getsockname()
    return f


def w_sockopt() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(N):
            s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def w_sysctl() -> None:
    for _ in range(N):
        fd = os.open("/proc/sys/net/ipv4/ip_forward", os.O_RDONLY)
        try:
            os.read(fd, 64)  # one read(): the sysctl hook runs once per read/write call
        finally:
            os.close(fd)


def w_dev() -> None:
    for _ in range(N):
        os.close(os.open("/dev/null", os.O_RDONLY))


# program -> (expected attach type, work, exact count or None for "at least N")
HOOKS: dict[str, tuple[AttachType, Callable[[], None], int | None]] = {
    "cg_ingress": (AttachType.CGROUP_INET_INGRESS, w_loopback_udp, N),
    "cg_egress": (AttachType.CGROUP_INET_EGRESS, w_loopback_udp, N),
    "cg_sock_create": (AttachType.CGROUP_INET_SOCK_CREATE, w_sockets, N),
    "cg_sock_release": (AttachType.CGROUP_INET_SOCK_RELEASE, w_sockets, N),
    "cg_sockops": (AttachType.CGROUP_SOCK_OPS, w_tcp, None),  # several callbacks per connection
    "cg_connect4": (AttachType.CGROUP_INET4_CONNECT, w_connect(*V4), N),
    "cg_connect6": (AttachType.CGROUP_INET6_CONNECT, w_connect(*V6), N),
    "cg_bind4": (AttachType.CGROUP_INET4_BIND, w_bind(*V4), N),
    "cg_bind6": (AttachType.CGROUP_INET6_BIND, w_bind(*V6), N),
    "cg_post_bind4": (AttachType.CGROUP_INET4_POST_BIND, w_bind(*V4), N),
    "cg_post_bind6": (AttachType.CGROUP_INET6_POST_BIND, w_bind(*V6), N),
    "cg_sendmsg4": (AttachType.CGROUP_UDP4_SENDMSG, w_sendrecv(*V4), N),
    "cg_sendmsg6": (AttachType.CGROUP_UDP6_SENDMSG, w_sendrecv(*V6), N),
    "cg_recvmsg4": (AttachType.CGROUP_UDP4_RECVMSG, w_sendrecv(*V4), N),
    "cg_recvmsg6": (AttachType.CGROUP_UDP6_RECVMSG, w_sendrecv(*V6), N),
    # Python's socket layer adds getsockname/getpeername calls of its own
    "cg_getpeername4": (AttachType.CGROUP_INET4_GETPEERNAME, w_names(*V4), None),
    "cg_getpeername6": (AttachType.CGROUP_INET6_GETPEERNAME, w_names(*V6), None),
    "cg_getsockname4": (AttachType.CGROUP_INET4_GETSOCKNAME, w_names(*V4), None),
    "cg_getsockname6": (AttachType.CGROUP_INET6_GETSOCKNAME, w_names(*V6), None),
    "cg_getsockopt": (AttachType.CGROUP_GETSOCKOPT, w_sockopt, N),
    "cg_setsockopt": (AttachType.CGROUP_SETSOCKOPT, w_sockopt, N),
    "cg_sysctl": (AttachType.CGROUP_SYSCTL, w_sysctl, N),
    "cg_dev": (AttachType.CGROUP_DEVICE, w_dev, N),
}


# --- fixtures --------------------------------------------------------------------------------


def _proc_fds() -> int:
    from pyebpf.btf.kernel import kernel_btf

    kernel_btf()  # its mmap keeps one fd for the life of the process
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def obj() -> Iterator[Any]:
    if not ROOT:
        pytest.skip("needs root")
    o = pyebpf.load(OBJ)
    yield o
    o.close()


@pytest.fixture
def cg() -> Iterator[str]:
    with cgroups.scratch_cgroup("attcg") as path:
        yield path


def _links_of(prog_ids: set[int], since: set[int]) -> list[int]:
    """Ids of links created after ``since`` that run one of ``prog_ids`` (by id, so another
    process running this same fixture meanwhile is not mistaken for a leak)."""
    out = []
    for link_id in sorted(kobjects.ids("link") - since):
        try:
            with B.link_get_fd_by_id(link_id) as fd:
                if B.link_info(fd).prog_id in prog_ids:
                    out.append(link_id)
        except SyscallError:  # freed meanwhile
            continue
    return out


@pytest.fixture
def leaks(obj: Any) -> Iterator[None]:
    """Every fd this test opened is closed again, and no link of our programs is left."""
    gc.collect()
    fds0, proc0 = open_fd_count(), _proc_fds()
    before = kobjects.ids("link")
    yield
    gc.collect()
    assert (open_fd_count(), _proc_fds()) == (fds0, proc0)
    assert _links_of({p.id for p in obj.programs.values()}, before) == []


def count(obj: Any, prog: str) -> int:
    return int(obj.maps["counts"][SLOTS[prog]])


def fire(obj: Any, path: str, work: Callable[[], None], *progs: str) -> dict[str, int]:
    """Run ``work`` in a child inside cgroup ``path``; how much each of ``progs`` counted."""
    before = {p: count(obj, p) for p in progs}
    cgroups.run_in_cgroup(path, work)
    return {p: count(obj, p) - before[p] for p in progs}


def ids(obj: Any, *names: str) -> list[int]:
    return [obj.programs[n].id for n in names]


# --- pure: names, flags, option checks (no root) -------------------------------------------------


def test_attach_type_names() -> None:
    assert cgroup_attach_type("egress") is AttachType.CGROUP_INET_EGRESS
    assert cgroup_attach_type("CGROUP_INET4_CONNECT") is AttachType.CGROUP_INET4_CONNECT
    assert cgroup_attach_type("bpf_cgroup_sysctl") is AttachType.CGROUP_SYSCTL
    assert cgroup_attach_type("sock_ops") is AttachType.CGROUP_SOCK_OPS
    assert cgroup_attach_type(int(AttachType.CGROUP_DEVICE)) is AttachType.CGROUP_DEVICE
    with pytest.raises(OptionError, match="unknown cgroup attach type 'egres'.*egress"):
        cgroup_attach_type("egres")
    with pytest.raises(OptionError, match="XDP is not a cgroup attach type"):
        cgroup_attach_type(AttachType.XDP)
    with pytest.raises(OptionError, match="unknown attach type 999"):
        cgroup_attach_type(999)
    with pytest.raises(OptionError, match="must be an AttachType"):
        cgroup_attach_type(1.5)


def test_flag_names() -> None:
    assert flag_names(0) == "NONE"
    assert flag_names(BPF_F_ALLOW_MULTI) == "ALLOW_MULTI"
    assert flag_names(BPF_F_ALLOW_OVERRIDE | 0x100) == "ALLOW_OVERRIDE|0x100"
    q = CgroupQuery(AttachType.CGROUP_INET_EGRESS, False, [5, 7], BPF_F_ALLOW_MULTI, revision=3)
    assert q.mode == "ALLOW_MULTI" and len(q) == 2 and 7 in q and 6 not in q
    assert q.count == 2 and q.link_ids is None


def _spec_prog(name: str) -> SimpleNamespace:
    """A Program-like object from the spec alone (no kernel): what attach_cgroup checks first."""
    p = ObjectSpec.from_file(OBJ).programs[name]
    return SimpleNamespace(name=name, fd=-1, type=p.type, expected_attach_type=p.expected_attach_type,
                           spec=p)


def test_section_without_hook_needs_attach_type() -> None:
    prog = _spec_prog("cg_skb_any")
    with pytest.raises(OptionError) as e:
        attach_cgroup(prog, "/nonexistent")
    msg = str(e.value)
    assert "SEC('cgroup/skb') does not say which cgroup hook" in msg
    assert "pass attach_type= (one of egress, ingress)" in msg


def test_wrong_program_type_for_hook() -> None:
    with pytest.raises(AttachError) as e:
        attach_cgroup(_spec_prog("cg_sock_create"), "/nonexistent", attach_type="egress")
    msg = str(e.value)
    assert msg.startswith("cg_sock_create: a CGROUP_SOCK program cannot attach to the cgroup hook "
                          "CGROUP_INET_EGRESS, which takes CGROUP_SKB programs")
    assert 'SEC("cgroup_skb/egress")' in msg
    # sock, sock_addr and sockopt programs are bound at load to their expected_attach_type
    with pytest.raises(AttachError, match="loaded for CGROUP_INET4_CONNECT .* not to CGROUP_INET6_CONNECT"):
        attach_cgroup(_spec_prog("cg_connect4"), "/nonexistent", attach_type="connect6")


def test_conflicting_options() -> None:
    prog = _spec_prog("cg_sock_create")
    with pytest.raises(OptionError, match="multi=True and override=True conflict"):
        attach_cgroup(prog, "/nonexistent", link=False, multi=True, override=True)
    with pytest.raises(OptionError, match="apply to BPF_PROG_ATTACH"):
        attach_cgroup(prog, "/nonexistent", override=True)
    with pytest.raises(OptionError, match="apply to BPF_PROG_ATTACH"):
        attach_cgroup(prog, "/nonexistent", replace=prog)
    with pytest.raises(OptionError, match="conflict"):  # replace= implies multi
        attach_cgroup(prog, "/nonexistent", link=False, override=True, replace=prog)
    with pytest.raises(OptionError, match="flags must be"):
        attach_cgroup(prog, "/nonexistent", flags=-1)
    with pytest.raises(OptionError, match="cgroup must be a cgroup v2 directory path"):
        attach_cgroup(prog, 2.5)


def test_bad_cgroup_paths(tmp_path: Any) -> None:
    prog = _spec_prog("cg_sock_create")
    root = cgroups.cgroup2_root()
    missing = os.path.join(root, f"pyebpf_missing_{os.getpid()}")
    with pytest.raises(AttachError) as e:
        attach_cgroup(prog, missing)
    assert str(e.value) == f"cg_sock_create: no cgroup directory {missing}: cgroup v2 is mounted at {root}"
    assert e.value.errno == errno.ENOENT
    # a directory outside any cgroup file system
    with pytest.raises(AttachError) as e:
        attach_cgroup(prog, str(tmp_path))
    assert f"{tmp_path} is not a cgroup directory (it is on a " in str(e.value)
    assert f"cgroup v2 is mounted at {root}" in str(e.value)
    # a file, by path and by fd
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(AttachError, match=f"{f} is not a directory, so not a cgroup v2 directory"):
        attach_cgroup(prog, str(f))
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(AttachError, match=f"fd {fd} \\({f}\\) is not a directory"):
            attach_cgroup(prog, fd)
    finally:
        os.close(fd)
    with pytest.raises(AttachError, match="the cgroup fd 9999 is not open"):
        attach_cgroup(prog, 9999)


def test_cgroup_v1_directory_is_named() -> None:
    v1 = [line.split()[1] for line in open("/proc/mounts") if line.split()[2] == "cgroup"]
    if not v1:
        pytest.skip("no cgroup v1 hierarchy is mounted on this machine")
    with pytest.raises(AttachError) as e:
        attach_cgroup(_spec_prog("cg_sock_create"), v1[0])
    msg = str(e.value)
    assert f"{v1[0]} is a cgroup v1 directory" in msg
    assert "BPF programs attach only to cgroup v2 directories: cgroup v2 is mounted at" in msg


def test_cgroup2_location_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path diagnosis over synthetic mount tables (what /proc/self/mountinfo lists)."""
    from pyebpf.links import cgroup as C

    hybrid = [("/", "ext4", "rw"), ("/sys/fs/cgroup", "tmpfs", "rw"),
              ("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
              ("/sys/fs/cgroup/unified", "cgroup2", "rw,nsdelegate")]
    monkeypatch.setattr(C, "_mounts", lambda: hybrid)
    assert C.cgroup2_mounts() == ["/sys/fs/cgroup/unified"]
    assert C._not_cgroup2("/sys/fs/cgroup/unified/a/b") is None
    assert C._not_cgroup2("/sys/fs/cgroup/memory/x") == (
        "/sys/fs/cgroup/memory/x is a cgroup v1 directory (memory hierarchy at "
        "/sys/fs/cgroup/memory); BPF programs attach only to cgroup v2 directories: cgroup v2 is "
        "mounted at /sys/fs/cgroup/unified")
    assert C._not_cgroup2("/sys/fs/cgroup/memoryx") == (
        "/sys/fs/cgroup/memoryx is not a cgroup directory (it is on a tmpfs file system); cgroup "
        "v2 is mounted at /sys/fs/cgroup/unified")
    monkeypatch.setattr(C, "_mounts", lambda: hybrid[:3])
    assert C._not_cgroup2("/srv").endswith(
        "(it is on a ext4 file system); no cgroup v2 hierarchy is mounted here (mount one: "
        "mount -t cgroup2 none <dir>)")
    assert C._unescape("/mnt/a\\040b") == "/mnt/a b"


# --- every hook fires, through a link and through BPF_PROG_ATTACH --------------------------------


@needs_root
@pytest.mark.parametrize("name", list(HOOKS))
def test_link_fires(obj: Any, cg: str, leaks: None, name: str) -> None:
    at, work, exact = HOOKS[name]
    prog = obj.programs[name]
    with attach_cgroup(prog, cg) as link:  # the attach type comes from SEC()
        assert isinstance(link, CgroupLink) and not isinstance(link, CgroupAttachment)
        assert link.attach_type is at and link.fd is not None
        info = link.info()
        assert info.type == LinkType.CGROUP and info.prog_id == prog.id
        assert info.cgroup_id == os.stat(cg).st_ino and info.attach_type == at
        q = cgroup_query(cg, at)
        assert q.prog_ids == [prog.id] and q.attach_flags == BPF_F_ALLOW_MULTI
        n = fire(obj, cg, work, name)[name]
        assert n == exact if exact is not None else n >= N
    assert cgroup_query(cg, at).prog_ids == []  # closed: detached
    assert fire(obj, cg, work, name)[name] == 0


@needs_root
@pytest.mark.parametrize("name", list(HOOKS))
def test_prog_attach_fires(obj: Any, cg: str, leaks: None, name: str) -> None:
    at, work, exact = HOOKS[name]
    prog = obj.programs[name]
    att = attach_cgroup(prog, cg, link=False, multi=True)
    try:
        assert isinstance(att, CgroupAttachment) and att.fd is None and att.id is None
        assert att.attach_type is at and att.attached()
        q = att.query()
        assert q.prog_ids == [prog.id] and q.mode == "ALLOW_MULTI"
        assert q.prog_attach_flags in (None, [BPF_F_ALLOW_MULTI])
        n = fire(obj, cg, work, name)[name]
        assert n == exact if exact is not None else n >= N
    finally:
        att.close()
    assert att.closed and "closed" in repr(att)
    assert cgroup_query(cg, at).prog_ids == []
    assert fire(obj, cg, work, name)[name] == 0
    att.close()  # idempotent


# --- modes: multi, override, none, replace -------------------------------------------------------


@needs_root
def test_multi_runs_every_program(obj: Any, cg: str, leaks: None) -> None:
    a, b, c = "cg_sock_create", "cg_sock_create_b", "cg_sock_create_c"
    with attach_cgroup(obj.programs[a], cg, link=False, multi=True), \
            attach_cgroup(obj.programs[b], cg, link=False, multi=True), \
            attach_cgroup(obj.programs[c], cg):  # a link is one more multi entry
        q = cgroup_query(cg, "sock_create")
        assert q.prog_ids == ids(obj, a, b, c)
        assert q.mode == "ALLOW_MULTI" and q.revision is not None and q.revision >= 3
        if q.prog_attach_flags is not None:
            assert q.prog_attach_flags == [BPF_F_ALLOW_MULTI] * 3
        assert fire(obj, cg, w_sockets, a, b, c) == {a: N, b: N, c: N}
        eff = cgroup_query(cg, AttachType.CGROUP_INET_SOCK_CREATE, effective=True)
        assert eff.effective and sorted(eff.prog_ids) == sorted(q.prog_ids)
    assert cgroup_query(cg, "sock_create").prog_ids == []


@needs_root
def test_override_lets_a_child_cgroup_replace_the_parents_program(obj: Any, cg: str, leaks: None) -> None:
    a, b = "cg_sock_create", "cg_sock_create_b"
    with cgroups.scratch_cgroup("child", parent=cg) as child:
        with attach_cgroup(obj.programs[a], cg, link=False, override=True) as pa:
            assert pa.query().mode == "ALLOW_OVERRIDE"
            # inherited: the child runs the parent's program
            assert fire(obj, child, w_sockets, a, b) == {a: N, b: 0}
            assert cgroup_query(child, "sock_create", effective=True).prog_ids == ids(obj, a)
            with attach_cgroup(obj.programs[b], child, link=False, override=True):
                # overridden in the child only
                assert fire(obj, child, w_sockets, a, b) == {a: 0, b: N}
                assert fire(obj, cg, w_sockets, a, b) == {a: N, b: 0}
                assert cgroup_query(child, "sock_create", effective=True).prog_ids == ids(obj, b)
            assert fire(obj, child, w_sockets, a, b) == {a: N, b: 0}
        assert cgroup_query(child, "sock_create", effective=True).prog_ids == []


@needs_root
def test_multi_in_parent_and_child_both_run(obj: Any, cg: str, leaks: None) -> None:
    a, b = "cg_sock_create", "cg_sock_create_b"
    with cgroups.scratch_cgroup("child", parent=cg) as child, \
            attach_cgroup(obj.programs[a], cg, link=False, multi=True), \
            attach_cgroup(obj.programs[b], child):
        assert fire(obj, child, w_sockets, a, b) == {a: N, b: N}
        assert sorted(cgroup_query(child, "sock_create", effective=True).prog_ids) == sorted(ids(obj, a, b))
        assert cgroup_query(child, "sock_create").prog_ids == ids(obj, b)  # its own list only


@needs_root
def test_no_flags_mode_single_program(obj: Any, cg: str, leaks: None) -> None:
    """NONE mode: one program; attaching another replaces it; close() detaches only its own."""
    a, b = "cg_sock_create", "cg_sock_create_b"
    pa = attach_cgroup(obj.programs[a], cg, link=False)
    pb = None
    try:
        assert pa.query().mode == "NONE" and pa.flags == 0
        pb = attach_cgroup(obj.programs[b], cg, link=False)  # replaces a
        assert cgroup_query(cg, "sock_create").prog_ids == ids(obj, b)
        assert not pa.attached() and pb.attached()
        # the kernel would detach b for a's BPF_PROG_DETACH in this mode; a's close leaves b alone
        pa.close()
        assert cgroup_query(cg, "sock_create").prog_ids == ids(obj, b)
        assert fire(obj, cg, w_sockets, a, b) == {a: 0, b: N}
        # a non-overridable program forbids the hook in every descendant
        with cgroups.scratch_cgroup("child", parent=cg) as child:
            with pytest.raises(AttachError) as e:
                attach_cgroup(obj.programs[a], child, link=False, override=True)
            msg = str(e.value)
            assert msg.startswith(f"cg_sock_create: BPF_PROG_ATTACH to {child} "
                                  "(CGROUP_INET_SOCK_CREATE) failed (EPERM): ")
            assert f"the ancestor cgroup {cg} has a program for CGROUP_INET_SOCK_CREATE attached " \
                   "without BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI" in msg
            assert e.value.errno == errno.EPERM
    finally:
        pa.close()
        if pb is not None:
            pb.close()
    assert cgroup_query(cg, "sock_create").prog_ids == []


@needs_root
def test_replace_swaps_in_place(obj: Any, cg: str, leaks: None) -> None:
    a, b, c = "cg_sock_create", "cg_sock_create_b", "cg_sock_create_c"
    pa = attach_cgroup(obj.programs[a], cg, link=False, multi=True)
    with attach_cgroup(obj.programs[b], cg, link=False, multi=True):
        with attach_cgroup(obj.programs[c], cg, link=False, replace=obj.programs[a]) as pc:
            assert pc.multi
            assert cgroup_query(cg, "sock_create").prog_ids == ids(obj, c, b)  # a's place
            assert fire(obj, cg, w_sockets, a, b, c) == {a: 0, b: N, c: N}
            assert not pa.attached()
            pa.close()  # already gone: nothing to undo, no error
            # replacing a program that is not attached
            with pytest.raises(AttachError) as e:
                attach_cgroup(obj.programs[a], cg, link=False, replace=obj.programs[a])
            assert str(e.value) == (
                f"cg_sock_create: BPF_PROG_ATTACH to {cg} (CGROUP_INET_SOCK_CREATE) failed (ENOENT): "
                f"the program to replace (cg_sock_create) is not attached to {cg} for "
                "CGROUP_INET_SOCK_CREATE")
        assert cgroup_query(cg, "sock_create").prog_ids == ids(obj, b)
    assert cgroup_query(cg, "sock_create").prog_ids == []


@needs_root
def test_mode_conflicts_are_explained(obj: Any, cg: str, leaks: None) -> None:
    a, b = "cg_sock_create", "cg_sock_create_b"
    with attach_cgroup(obj.programs[a], cg, link=False, multi=True):
        with pytest.raises(AttachError) as e:
            attach_cgroup(obj.programs[b], cg, link=False, override=True)
        msg = str(e.value)
        assert f"(EPERM): {cg} already has 1 program(s) for CGROUP_INET_SOCK_CREATE attached in " \
               f"ALLOW_MULTI mode (prog ids [{obj.programs[a].id}])" in msg
        assert "this attach asked for ALLOW_OVERRIDE" in msg
        # the same program twice in multi mode
        with pytest.raises(AttachError) as e:
            attach_cgroup(obj.programs[a], cg, link=False, multi=True)
        assert f"the program is already attached to {cg} for CGROUP_INET_SOCK_CREATE" in str(e.value)
    with attach_cgroup(obj.programs[a], cg, link=False):  # NONE mode
        with pytest.raises(AttachError) as e:
            attach_cgroup(obj.programs[b], cg)  # a link is ALLOW_MULTI
        msg = str(e.value)
        assert msg.startswith(f"cg_sock_create_b: BPF_LINK_CREATE to {cg} (CGROUP_INET_SOCK_CREATE) "
                              "failed (EPERM)")
        assert "attached in NONE mode" in msg and "a bpf link is always ALLOW_MULTI" in msg
    assert cgroup_query(cg, "sock_create").prog_ids == []


# --- links: update, pin, fd targets --------------------------------------------------------------


@needs_root
def test_link_update_swaps_the_program(obj: Any, cg: str, leaks: None) -> None:
    a, b = "cg_egress", "cg_egress_b"
    with attach_cgroup(obj.programs[a], cg) as link:
        assert link.updatable
        assert fire(obj, cg, w_loopback_udp, a, b) == {a: N, b: 0}
        link.update(obj.programs[b])
        assert link.program is obj.programs[b] and link.info().prog_id == obj.programs[b].id
        assert fire(obj, cg, w_loopback_udp, a, b) == {a: 0, b: N}
        assert cgroup_query(cg, "egress").prog_ids == ids(obj, b)
        # with old_prog: only if it is the current one
        with pytest.raises(AttachError) as e:
            link.update(obj.programs[a], obj.programs[a])
        assert str(e.value) == ("cg_egress: cannot update the CGROUP_INET_EGRESS link: old_prog "
                                "(cg_egress) is not the program it runs now")
        assert e.value.errno == errno.EPERM
        link.update(obj.programs[a], obj.programs[b])
        assert link.info().prog_id == obj.programs[a].id
        with pytest.raises(AttachError, match="a CGROUP_SOCK program cannot attach to the cgroup "
                                              "hook CGROUP_INET_EGRESS"):
            link.update(obj.programs["cg_sock_create"])
        # BPF_LINK_DETACH: detached while the fd stays open
        link.detach()
        assert cgroup_query(cg, "egress").prog_ids == []
        assert fire(obj, cg, w_loopback_udp, a, b) == {a: 0, b: 0}
    assert cgroup_query(cg, "egress").prog_ids == []


@needs_root
def test_prog_attach_update_replaces(obj: Any, cg: str, leaks: None) -> None:
    a, b = "cg_egress", "cg_egress_b"
    for kw in ({"multi": True}, {"override": True}, {}):
        with attach_cgroup(obj.programs[a], cg, link=False, **kw) as att:
            att.update(obj.programs[b])
            assert att.program is obj.programs[b]
            assert cgroup_query(cg, "egress").prog_ids == ids(obj, b)
            assert fire(obj, cg, w_loopback_udp, a, b) == {a: 0, b: N}
            for what in (att.info, lambda: att.pin("/sys/fs/bpf/x")):
                with pytest.raises(AttachError, match="made with BPF_PROG_ATTACH .* has no bpf link"):
                    what()
        assert cgroup_query(cg, "egress").prog_ids == []


@needs_root
def test_cgroup_skb_section_with_explicit_type(obj: Any, cg: str, leaks: None) -> None:
    name = "cg_skb_any"
    with pytest.raises(OptionError, match="does not say which cgroup hook"):
        attach_cgroup(obj.programs[name], cg)
    with attach_cgroup(obj.programs[name], cg, attach_type="ingress") as link:
        assert link.attach_type is AttachType.CGROUP_INET_INGRESS
        assert fire(obj, cg, w_loopback_udp, name)[name] == N
    with obj.programs[name].attach_cgroup(cg, attach_type=AttachType.CGROUP_INET_EGRESS):
        assert fire(obj, cg, w_loopback_udp, name)[name] == N


@needs_root
def test_pinned_link_outlives_the_object(obj: Any, cg: str, leaks: None) -> None:
    name = "cg_sock_create"
    pin = f"/sys/fs/bpf/pyebpf_cg_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    link = attach_cgroup(obj.programs[name], cg)
    try:
        link.pin(pin)
        link.close()
        assert cgroup_query(cg, "sock_create").prog_ids == ids(obj, name)  # the pin holds it
        assert fire(obj, cg, w_sockets, name)[name] == N
        with Link.from_pin(pin) as again:
            assert again.info().type == LinkType.CGROUP
            again.unpin()
    finally:
        link.close()
        if os.path.exists(pin):
            os.unlink(pin)
    assert cgroup_query(cg, "sock_create").prog_ids == []


@needs_root
def test_cgroup_given_as_fd_or_object(obj: Any, cg: str, leaks: None) -> None:
    name = "cg_sock_create"
    fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with attach_cgroup(obj.programs[name], fd, link=False, multi=True) as att:
            assert att.cgroup_path == cg
            assert cgroup_query(fd, "sock_create").prog_ids == ids(obj, name)
            assert fire(obj, cg, w_sockets, name)[name] == N
        with attach_cgroup(obj.programs[name], SimpleNamespace(fd=fd)):
            assert cgroup_query(SimpleNamespace(fd=fd), "sock_create").prog_ids == ids(obj, name)
        os.fstat(fd)  # the caller's fd stays open
    finally:
        os.close(fd)
    # an fd that is no cgroup at all (a map): the kernel's EBADF, explained
    with pytest.raises(AttachError) as e:
        attach_cgroup(obj.programs[name], obj.maps["counts"])
    assert "is not a cgroup v2 directory; cgroup v2 is mounted at" in str(e.value)
    assert e.value.errno == errno.EBADF


_EXIT_SCRIPT = """
import sys, pyebpf
from pyebpf.links.cgroup import attach_cgroup
obj = pyebpf.load(sys.argv[1])
att = attach_cgroup(obj.programs["cg_sock_create"], sys.argv[2], link=False, multi=True)
if sys.argv[3] == "forget":
    att.forget()
print(obj.programs["cg_sock_create"].id)
"""


@needs_root
@pytest.mark.parametrize("how", ["exit", "forget"])
def test_prog_attach_at_exit(cg: str, how: str) -> None:
    """An attachment left open is detached at interpreter exit, as links are; forget()
    leaves it attached past the process (bpftool cgroup attach's behaviour)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, str(OBJ), cg, how], check=True,
                         capture_output=True, text=True, timeout=120)
    prog_id = int(out.stdout)
    left = cgroup_query(cg, "sock_create").prog_ids
    if how == "exit":
        assert left == []
    else:
        assert left == [prog_id]
        with pyebpf.Program.from_id(prog_id) as prog:
            with pytest.raises(OptionError, match="opened by fd, id or pin: the kernel does not "
                                                  "report its attach type"):
                attach_cgroup(prog, cg)
            with attach_cgroup(prog, cg, attach_type="sock_create", link=False,
                               replace=prog) as again:
                assert again.attached()
        assert cgroup_query(cg, "sock_create").prog_ids == []


@needs_root
def test_forked_child_does_not_detach_the_parents_program(obj: Any, cg: str, leaks: None) -> None:
    from pyebpf.links import cgroup as C

    with attach_cgroup(obj.programs["cg_sock_create"], cg, link=False, multi=True) as att:
        def child() -> bool:
            C._detach_at_exit()
            att.__del__()
            return att.closed
        assert cgroups.run_in_cgroup(cg, child) is False
        assert att.attached()


@needs_root
def test_attach_leaves_no_kernel_objects(cg: str) -> None:
    names = kobjects.object_names(ObjectSpec.from_file(OBJ))
    before = kobjects.snapshot()
    fds0, proc0 = open_fd_count(), _proc_fds()
    with pyebpf.load(OBJ) as o:
        link = attach_cgroup(o.programs["cg_sock_create"], cg)
        att = attach_cgroup(o.programs["cg_sock_create_b"], cg, link=False, multi=True)
        with pytest.raises(AttachError):
            attach_cgroup(o.programs["cg_sock_create_b"], cg, link=False, multi=True)
        with pytest.raises(AttachError):
            attach_cgroup(o.programs["cg_sock_create_c"], cg, link=False)
    # the object closed its programs; the attachments still hold them until they close
    assert len(cgroup_query(cg, "sock_create").prog_ids) == 2
    link.close()
    att.close()
    assert cgroup_query(cg, "sock_create").prog_ids == []
    del link, att
    gc.collect()
    assert (open_fd_count(), _proc_fds()) == (fds0, proc0)
    left = kobjects.wait_no_new_named(before, names)
    assert left == {"prog": [], "map": [], "link": []}


# --- no permission ---------------------------------------------------------------------------


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that dropped to uid/gid 65534 with no capabilities."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)  # clears every capability
            try:
                out = "ok:" + repr(fn())
            except BaseException as e:
                out = f"{type(e).__name__}:{e}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data


@needs_root
@pytest.mark.parametrize("link", [True, False])
def test_no_permission_is_explained(obj: Any, cg: str, leaks: None, link: bool) -> None:
    """cgroup_skb is the hook the kernel checks at attach time (unprivileged users may load
    such programs); the other types were checked when they were loaded, so a holder of the
    program fd may attach them. BPF_PROG_ATTACH reports the refusal as EINVAL."""
    prog = obj.programs["cg_egress"]
    out = _as_nobody(lambda: attach_cgroup(prog, cg, link=link, multi=not link))
    how, err = ("BPF_LINK_CREATE", "EPERM") if link else ("BPF_PROG_ATTACH", "EINVAL")
    assert out == (f"AttachError:cg_egress: {how} to {cg} (CGROUP_INET_EGRESS) failed ({err}): "
                   "no permission: attaching a cgroup_skb program needs CAP_NET_ADMIN (the kernel "
                   "checks it at attach time, since unprivileged users may load such programs); "
                   "run as root")
    out = _as_nobody(lambda: cgroup_query(cg, "egress"))
    assert out == (f"AttachError:no permission to query the programs of {cg}: BPF_PROG_QUERY on a "
                   "cgroup needs CAP_NET_ADMIN (run as root)")
    assert cgroup_query(cg, "egress").prog_ids == []


@needs_root
def test_program_type_checked_for_a_loaded_program(obj: Any, cg: str, leaks: None) -> None:
    with pytest.raises(AttachError, match="a SOCK_OPS program cannot attach to the cgroup hook "
                                          "CGROUP_DEVICE, which takes CGROUP_DEVICE programs"):
        attach_cgroup(obj.programs["cg_sockops"], cg, attach_type="dev")
    assert obj.programs["cg_sockops"].type == ProgType.SOCK_OPS
