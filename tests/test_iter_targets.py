"""Kernel iterators beyond task and bpf_map (pyebpf.links.iter.attach_iter) on the real kernel.

fixtures/unit/attach_iters.bpf.o prints one line per object for the tcp, udp, task,
task_file, task_vma, cgroup and ksym targets. Each test makes something of its own (a
listening port, a bound UDP port, an open file, a mapping, a small cgroup v2 tree with a
unique name) and finds it in the iterator's output; afterwards no fd, kernel object or
cgroup is left.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import socket
import tempfile
import threading
import uuid
from types import SimpleNamespace

import kobjects
import pytest
from nobody import run_as_nobody
from unitobj import unit_object

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links.base import AttachError
from pyebpf.links.iter import (
    CGROUP_ITER_ORDERS,
    IterLink,
    attach_iter,
    cgroup_order,
    iter_info,
    needs_parameter,
)
from pyebpf.uapi import LinkType

FIXTURE = unit_object("attach_iters")
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


# --- pure ---------------------------------------------------------------------------------------


def test_cgroup_order_names() -> None:
    assert [cgroup_order(n) for n in CGROUP_ITER_ORDERS] == [1, 2, 3, 4]
    assert cgroup_order("BPF_CGROUP_ITER_ANCESTORS_UP") == 4 and cgroup_order(2) == 2
    with pytest.raises(OptionError, match=r"unknown cgroup iterator order 'preorder'; use one of "
                                          r"self_only, descendants_pre, descendants_post, ancestors_up"):
        cgroup_order("preorder")
    with pytest.raises(OptionError, match="a name or a number"):
        cgroup_order(-1)
    assert iter_info(cgroup_fd=5, order="descendants_post") == iter_info(cgroup_fd=5, order=3)
    with pytest.raises(OptionError, match="not both"):
        iter_info(cgroup_fd=5, cgroup_id=9, order=1)
    assert "needs an order" in needs_parameter("cgroup")
    assert "needs a map" in needs_parameter("bpf_map_elem")
    assert needs_parameter("task") is None and needs_parameter("tcp") is None


def test_parameter_checks_before_the_kernel() -> None:
    # a stand-in program whose target is known from its SEC() name: no syscall is reached
    def prog(target: str) -> SimpleNamespace:
        return SimpleNamespace(name=f"p_{target}", fd=-1, expected_attach_type=None,
                               spec=SimpleNamespace(attach_target=target))

    with pytest.raises(AttachError, match=r"p_cgroup: the cgroup iterator needs an order: "
                                          r"attach_iter\(prog, cgroup=..., order=...\)"):
        attach_iter(prog("cgroup"), cgroup=5)
    with pytest.raises(AttachError, match=r"the bpf_map_elem iterator needs a map"):
        attach_iter(prog("bpf_map_elem"))
    with pytest.raises(OptionError, match=r"narrow only the task, task_file, task_vma iterators, "
                                          r"not 'tcp'"):
        attach_iter(prog("tcp"), pid=1)
    with pytest.raises(OptionError, match=r"apply only to the cgroup iterator, not 'task'"):
        attach_iter(prog("task"), order="self_only")
    with pytest.raises(OptionError, match="takes no map"):
        attach_iter(prog("task"), map=3)
    with pytest.raises(OptionError, match="unknown cgroup iterator order 'up'"):
        attach_iter(prog("cgroup"), cgroup=5, order="up")
    with pytest.raises(OptionError, match="give cgroup or cgroup_fd, not both"):
        attach_iter(prog("cgroup"), cgroup=5, cgroup_fd=6, order=1)
    with pytest.raises(OptionError, match="give one of tid, pid, pid_fd"):
        attach_iter(prog("task"), tid=1, pid=2)
    with pytest.raises(OptionError, match=r"cannot open cgroup '/nonexistent/pyebpf': No such file"):
        attach_iter(prog("cgroup"), cgroup="/nonexistent/pyebpf", order=1)


# --- kernel -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def obj():
    if not ROOT:
        pytest.skip("needs root")
    pyebpf.kernel_btf()  # the process-wide kernel BTF keeps its file open: open it first
    names = kobjects.object_names(pyebpf.ObjectSpec.from_file(FIXTURE))
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    with pyebpf.load(FIXTURE) as o:
        yield o
    gc.collect()
    assert kobjects.fd_state() == fds
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


@pytest.fixture
def clean(obj):
    """No new fds and none of the links a test recorded is left."""
    links: list[int] = []
    fds = kobjects.fd_state()
    before = kobjects.snapshot()
    yield links
    gc.collect()
    assert kobjects.fd_state() == fds
    left = kobjects.new_links(before, list(obj.programs))
    assert left == []


def lines(link: IterLink, word: str) -> list[list[str]]:
    return [ln.split() for ln in link.read_text().splitlines() if ln.startswith(word + " ")]


@needs_root
def test_tcp_iterator_lists_our_listening_port(obj, clean) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with attach_iter(obj.programs["iter_tcp"]) as link:
            clean.append(link.id)
            assert link.info().target_name == "tcp" and link.info().type == LinkType.ITER
            rows = lines(link, "tcp")
    # family AF_INET (2), our port, state TCP_LISTEN (10)
    assert ["tcp", str(socket.AF_INET), str(port), "10"] in rows


@needs_root
def test_udp_iterator_lists_our_bound_port(obj, clean) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        with attach_iter(obj.programs["iter_udp"]) as link:
            clean.append(link.id)
            rows = lines(link, "udp")
    assert ["udp", str(socket.AF_INET), str(port)] in rows
    with attach_iter(obj.programs["iter_udp"]) as link:
        clean.append(link.id)
        assert ["udp", str(socket.AF_INET), str(port)] not in lines(link, "udp")  # closed


@needs_root
def test_task_file_restricted_to_our_pid(obj, clean) -> None:
    me = os.getpid()
    with tempfile.TemporaryFile() as f:
        ino = os.fstat(f.fileno()).st_ino
        with attach_iter(obj.programs["iter_task_file"], pid=me) as link:
            clean.append(link.id)
            info = link.info()
            assert info.target_name == "task_file" and info.pid == me and info.tid == 0
            rows = lines(link, "file")
        assert rows and all(r[1] == str(me) for r in rows)  # only our process
        fds = {int(r[3]): int(r[4]) for r in rows if r[2] == str(me)}
        assert fds[f.fileno()] == ino


@needs_root
def test_task_vma_lists_our_file_mapping(obj, clean) -> None:
    me = os.getpid()
    with tempfile.TemporaryFile() as f:
        f.write(b"\0" * 3 * mmap.PAGESIZE)
        f.flush()
        ino = os.fstat(f.fileno()).st_ino
        with mmap.mmap(f.fileno(), 3 * mmap.PAGESIZE, prot=mmap.PROT_READ) as mm:
            with attach_iter(obj.programs["iter_task_vma"], pid=me) as link:
                clean.append(link.id)
                rows = lines(link, "vma")
            with open("/proc/self/maps") as maps:
                maps_text = maps.read()
            del mm
    assert rows and all(r[1] == str(me) for r in rows)
    ours = [r for r in rows if int(r[4]) == ino]
    assert len(ours) == 1
    start, end = int(ours[0][2], 16), int(ours[0][3], 16)
    assert end - start == 3 * mmap.PAGESIZE
    # and it is the mapping /proc/self/maps shows for that file
    assert f"{start:08x}-{end:08x}" in maps_text and f" {ino} " in maps_text


@needs_root
def test_task_iterator_by_tid_pid_and_pidfd(obj, clean) -> None:
    me = os.getpid()
    started, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def worker() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    try:
        prog = obj.programs["iter_task"]
        with attach_iter(prog, tid=tids[0]) as link:
            clean.append(link.id)
            assert link.info().tid == tids[0]
            rows = lines(link, "task")
        assert [(r[1], r[2]) for r in rows] == [(str(me), str(tids[0]))]
        with attach_iter(prog, pid=me) as link:
            clean.append(link.id)
            by_pid = {int(r[2]) for r in lines(link, "task") if r[1] == str(me)}
            assert all(r[1] == str(me) for r in lines(link, "task"))
        assert {me, tids[0]} <= by_pid
        pidfd = os.pidfd_open(me)
        try:
            with attach_iter(prog, pid_fd=pidfd) as link:
                clean.append(link.id)
                assert link.info().pid == me  # the kernel resolves the pidfd
                assert {int(r[2]) for r in lines(link, "task")} == by_pid
        finally:
            os.close(pidfd)
    finally:
        stop.set()
        t.join()


@needs_root
def test_task_iterator_errors(obj, clean) -> None:
    prog = obj.programs["iter_task"]
    with pytest.raises(AttachError, match=r"iter_task: cannot create iterator link for 'task'.*"
                                          r"is not a pidfd") as e:
        attach_iter(prog, pid_fd=0x7FFF)  # not an open fd
    assert e.value.errno == errno.EBADF
    # the kernel does not check a pid at attach time: a gone process just yields nothing
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    with attach_iter(prog, pid=dead) as link:
        clean.append(link.id)
        assert link.read_text() == ""
    # a program that is not an iterator
    with pytest.raises(AttachError, match=r"not an iterator program"):
        attach_iter(SimpleNamespace(name="tp", fd=prog.fd, expected_attach_type=0,
                                    spec=None))


@needs_root
def test_ksym_iterator_finds_a_kernel_symbol(obj, clean) -> None:
    with attach_iter(obj.programs["iter_ksym"]) as link:
        clean.append(link.id)
        rows = lines(link, "ksym")
    syms = {r[3]: (int(r[1], 16), r[2]) for r in rows if len(r) == 4}
    assert len(syms) > 1000
    addr, kind = syms["bpf_map_lookup_elem"]
    assert kind in "Tt"
    # /proc/kallsyms agrees (root sees the real addresses)
    with open("/proc/kallsyms") as f:
        for line in f:
            a, k, name = line.split()[:3]
            if name == "bpf_map_lookup_elem":
                assert int(a, 16) == addr and k == kind
                break


@pytest.fixture
def cgtree():
    """A cgroup v2 tree root/{a/{c}, b} with a unique name; removed afterwards."""
    from cgroups import cgroup2_root  # finds cgroup2 wherever it is mounted, or mounts one

    root = os.path.join(cgroup2_root(), f"pyebpf_F_iter_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    made = []
    try:
        for rel in ("", "a", "a/c", "b"):
            path = os.path.join(root, rel) if rel else root
            os.mkdir(path)
            made.append(path)
        yield {name: os.path.join(root, name) if name != "root" else root
               for name in ("root", "a", "a/c", "b")}
    finally:
        for path in reversed(made):
            os.rmdir(path)
    assert not os.path.exists(root)


def _ids(tree: dict[str, str]) -> dict[int, str]:
    return {os.stat(p).st_ino: name for name, p in tree.items()}


@needs_root
@pytest.mark.parametrize("order,want", [
    ("self_only", ["root"]),
    ("descendants_pre", ["root", "a", "a/c", "b"]),
    ("descendants_post", ["a/c", "a", "b", "root"]),
])
def test_cgroup_iterator_orders(obj, clean, cgtree, order: str, want: list[str]) -> None:
    names = _ids(cgtree)
    with attach_iter(obj.programs["iter_cgroup"], cgroup=cgtree["root"], order=order) as link:
        clean.append(link.id)
        info = link.info()
        assert info.order == order and info.cgroup_id == os.stat(cgtree["root"]).st_ino
        rows = lines(link, "cgroup")
    assert [names.get(int(r[1]), r[1]) for r in rows] == want


@needs_root
def test_cgroup_iterator_ancestors_by_fd_and_id(obj, clean, cgtree) -> None:
    names = _ids(cgtree)
    leaf = cgtree["a/c"]
    fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with attach_iter(obj.programs["iter_cgroup"], cgroup=fd, order="ancestors_up") as link:
            clean.append(link.id)
            rows = lines(link, "cgroup")
    finally:
        os.close(fd)
    # c, a, our root, then up to the hierarchy's root (level 0)
    assert [names.get(int(r[1])) for r in rows[:3]] == ["a/c", "a", "root"]
    assert [int(r[2]) for r in rows] == sorted((int(r[2]) for r in rows), reverse=True)
    assert rows[-1][2] == "0"
    # through Program.attach_iter, by cgroup id and a numeric order
    with obj.programs["iter_cgroup"].attach_iter(cgroup_id=os.stat(leaf).st_ino,
                                                 order=CGROUP_ITER_ORDERS["self_only"]) as link:
        clean.append(link.id)
        assert [names.get(int(r[1])) for r in lines(link, "cgroup")] == ["a/c"]


@needs_root
def test_cgroup_iterator_errors(obj, clean, cgtree) -> None:
    prog = obj.programs["iter_cgroup"]
    with pytest.raises(AttachError, match="the cgroup iterator needs an order"):
        attach_iter(prog, cgroup=cgtree["root"])
    with pytest.raises(OptionError, match="unknown cgroup iterator order 'sideways'"):
        attach_iter(prog, cgroup=cgtree["root"], order="sideways")
    with pytest.raises(AttachError, match=r"order 9 is not one this kernel knows") as e:
        attach_iter(prog, cgroup=cgtree["root"], order=9)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(AttachError, match=r"no cgroup has id \d+") as e:
        attach_iter(prog, cgroup_id=(1 << 62) + 12345, order="self_only")
    assert e.value.errno == errno.ENOENT
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(AttachError, match=r"is not a cgroup directory") as e:
            attach_iter(prog, cgroup=d, order="self_only")
        assert e.value.errno == errno.EBADF


@needs_root
def test_iterators_need_only_the_program_fd(obj, clean) -> None:
    # The kernel checks privileges when the program loads, not when an iterator link is made
    # or read: a child with uid 65534 and no capabilities, holding the program fd, attaches
    # and reads. There is no "no permission" attach error to show for iterators here.
    prog = obj.programs["iter_task"]
    status, value = run_as_nobody(lambda: attach_iter(prog, pid=os.getpid()).read_text())
    assert status == "ok" and value.startswith("task ") and "python" in value
