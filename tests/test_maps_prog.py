"""Maps that hold programs and maps (prog_array, map-in-map), the local storages and
the cgroup array, each used by a real program and observed from user space."""

from __future__ import annotations

import errno
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyebpf
from pyebpf.errors import OptionError, SyscallError
from pyebpf.maps.map import Map, map_class
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import MapType

try:
    from tests.unitobj import unit_object
except ImportError:
    from unitobj import unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

PKT = bytes(64)


@pytest.fixture
def fdobj() -> Iterator[pyebpf.Object]:
    with pyebpf.load(unit_object("maps_fdmaps")) as obj:
        yield obj


def _inner(name: str, value: int) -> Map:
    fd = B.map_create(MapType.ARRAY, 4, 8, 1, name=name)
    m = Map.from_fd(fd)
    m[0] = value.to_bytes(8, "little")
    return m


def test_registry_classes() -> None:
    from pyebpf.maps.fdmaps import ArrayOfMaps, HashOfMaps, ProgArray

    assert map_class(MapType.PROG_ARRAY) is ProgArray
    assert map_class(MapType.ARRAY_OF_MAPS) is ArrayOfMaps
    assert map_class(MapType.HASH_OF_MAPS) is HashOfMaps


def test_prog_array_tail_calls(fdobj: pyebpf.Object) -> None:
    from pyebpf.maps.fdmaps import ProgArray

    jmp, p = fdobj.maps["jmp"], fdobj.programs
    assert isinstance(jmp, ProgArray) and len(jmp) == 4
    entry = p["tail_entry"]
    assert entry.test_run(PKT).retval == 99  # every slot empty: the tail call falls through
    jmp[0] = p["tail_a"]
    jmp.set(1, p["tail_b"])
    assert entry.test_run(PKT).retval == 11
    fdobj.globals["slot"] = 1
    assert entry.test_run(PKT).retval == 22
    assert jmp.ids() == {0: p["tail_a"].id, 1: p["tail_b"].id}
    assert jmp.lookup(1) == p["tail_b"].id and jmp.lookup(2) is None
    assert sorted(jmp.keys()) == [0, 1] and jmp.count() == 2
    assert jmp[1] == p["tail_b"].id
    with jmp.get_program(1) as opened:
        assert opened.id == p["tail_b"].id and opened.fd.fileno() != p["tail_b"].fd.fileno()
    del jmp[1]
    assert entry.test_run(PKT).retval == 99
    with pytest.raises(KeyError):
        del jmp[1]
    with pytest.raises(KeyError):
        jmp[1]
    with pytest.raises(KeyError):
        jmp.get_program(1)
    with pytest.raises(OptionError):
        jmp[4] = p["tail_a"]
    with pytest.raises(OptionError):
        jmp[0] = "not a program"
    jmp.clear()
    assert jmp.ids() == {}
    fdobj.globals["slot"] = 0
    assert entry.test_run(PKT).retval == 99


def test_prog_array_wrong_program_type(fdobj: pyebpf.Object) -> None:
    # a prog_array only takes programs of the type of the first one that used it
    with pyebpf.load(unit_object("maps_stacktrace")) as other:
        with pytest.raises(SyscallError) as e:
            fdobj.maps["jmp"][0] = other.programs["on_enter"]
        assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("outer_name, prog", [("outer_arr", "via_arr"), ("outer_hash", "via_hash")])
def test_map_in_map(fdobj: pyebpf.Object, outer_name: str, prog: str) -> None:
    outer, run = fdobj.maps[outer_name], fdobj.programs[prog]
    assert run.test_run(PKT).retval == 1000  # no inner map at key 0
    with _inner("pyebpf_in_a", 1234) as a, _inner("pyebpf_in_b", 77) as b:
        outer[0] = a
        outer[3] = b.fd.fileno()
        assert run.test_run(PKT).retval == 1234
        fdobj.globals["key"] = 3
        assert run.test_run(PKT).retval == 77
        assert outer.lookup(0) == a.id and dict(outer.items()) == {0: a.id, 3: b.id}
        assert outer[3] == b.id
        with outer.get_map(3) as got:
            assert got.id == b.id and got.type == MapType.ARRAY
            got[0] = (555).to_bytes(8, "little")
        assert run.test_run(PKT).retval == 555
        # a map of the wrong shape is refused by the kernel
        with Map.from_fd(B.map_create(MapType.HASH, 4, 8, 1, name="pyebpf_in_bad")) as bad:
            with pytest.raises(SyscallError) as e:
                outer[1] = bad
            assert e.value.errno == errno.EINVAL
        del outer[3]
        assert run.test_run(PKT).retval == 1000
        assert 3 not in outer
        fdobj.globals["key"] = 0
    # the outer map holds the inner one after the user closed it
    assert run.test_run(PKT).retval == 1234
    outer.clear()
    assert run.test_run(PKT).retval == 1000


def test_fd_maps_no_leak() -> None:
    before = open_fd_count()
    for _ in range(3):
        with pyebpf.load(unit_object("maps_fdmaps")) as obj:
            obj.maps["jmp"][0] = obj.programs["tail_a"]
            with _inner("pyebpf_in_c", 5) as a:
                obj.maps["outer_arr"][0] = a
                obj.maps["outer_arr"].get_map(0).close()
                obj.maps["jmp"].get_program(0).close()
                obj.maps["outer_arr"].get_map(0)  # closed when collected
    assert open_fd_count() == before


# -- local storages and the cgroup array --------------------------------------------------

SYS_GETPPID = 110  # x86_64


@pytest.fixture
def stobj() -> Iterator[pyebpf.Object]:
    with pyebpf.load(unit_object("maps_storage")) as obj:
        yield obj


@pytest.fixture
def scratch_cgroup() -> Iterator[str]:
    from pyebpf.maps.storage import cgroup2_mount

    path = os.path.join(cgroup2_mount(), f"pyebpf_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def test_storage_classes(stobj: pyebpf.Object) -> None:
    from pyebpf.maps.storage import CgrpStorage, InodeStorage, SkStorage, TaskStorage

    m = stobj.maps
    assert isinstance(m["task_st"], TaskStorage) and isinstance(m["sk_st"], SkStorage)
    assert isinstance(m["inode_st"], InodeStorage) and isinstance(m["cgrp_st"], CgrpStorage)
    for name in ("task_st", "sk_st", "inode_st", "cgrp_st"):
        with pytest.raises(OptionError, match="cannot be iterated"):
            list(m[name].keys())
        with pytest.raises(OptionError):
            m[name].key_codec and m[name]["not an fd"]  # noqa: B018


def test_task_and_cgrp_storage_written_by_program(stobj: pyebpf.Object) -> None:
    from pyebpf.maps.storage import cgroup_path_of

    task_st, cgrp_st = stobj.maps["task_st"], stobj.maps["cgrp_st"]
    me = os.getpid()
    assert task_st.lookup_pid(me) is None
    stobj.globals["target_tgid"] = me
    stobj.globals["target_syscall"] = SYS_GETPPID
    with stobj.programs["on_enter"].attach():
        for _ in range(7):
            os.getppid()
    assert task_st.lookup_pid(me) == 7
    pidfd = os.pidfd_open(me)
    try:
        assert task_st[pidfd] == 7
        task_st[pidfd] = 100
        assert task_st.lookup(pidfd) == 100
        del task_st[pidfd]
        assert task_st.lookup(pidfd) is None and not task_st.delete(pidfd)
    finally:
        os.close(pidfd)
    # another task has no storage until user space creates it
    assert task_st.lookup_pid(os.getppid()) is None
    cg = cgroup_path_of()
    assert cgrp_st.lookup_path(cg) == 7
    assert cgrp_st.delete_path(cg)
    assert cgrp_st.lookup_path(cg) is None


def test_cgrp_storage_user_space(stobj: pyebpf.Object, scratch_cgroup: str) -> None:
    cgrp_st = stobj.maps["cgrp_st"]
    rel = os.path.basename(scratch_cgroup)
    assert cgrp_st.lookup_path(rel) is None
    cgrp_st.update_path(rel, 42)
    fd = os.open(scratch_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert cgrp_st[fd] == 42
    finally:
        os.close(fd)
    assert cgrp_st.delete_path(scratch_cgroup)


def test_sk_storage_written_by_program(stobj: pyebpf.Object) -> None:
    sk_st = stobj.maps["sk_st"]
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        stobj.globals["target_port"] = port
        with stobj.programs["on_state"].attach(), socket.socket() as cli:
            assert sk_st.lookup(cli) is None
            cli.connect(("127.0.0.1", port))
            conn, _ = srv.accept()
            with conn:
                v = sk_st[cli]
                assert v.last_state == 1 and v.transitions >= 2  # ... -> TCP_ESTABLISHED
                assert sk_st.lookup(conn) is None  # the accepted side has a local port
                sk_st[conn] = bytes(range(8))
                assert sk_st.lookup(conn.fileno(), raw=True) == bytes(range(8))
                assert sk_st.lookup(conn).transitions == int.from_bytes(bytes(range(4)), "little")
                del sk_st[conn]
                assert conn not in sk_st
        # a non-socket fd is refused
        with open("/dev/null") as f, pytest.raises(SyscallError):
            sk_st[f] = bytes(8)


def test_inode_storage_user_space(stobj: pyebpf.Object, tmp_path: Path) -> None:
    ino = stobj.maps["inode_st"]
    p = tmp_path / "f"
    p.write_text("x")
    with open(p) as f:
        assert ino.lookup(f) is None
        ino[f] = 9
        assert ino[f] == 9
    assert ino.lookup_path(p) == 9  # the same inode through another open file
    ino.update_path(p, 10)
    assert ino.lookup_path(p) == 10
    assert ino.delete_path(p) and ino.lookup_path(p) is None


def test_cgroup_array_current_task_under_cgroup(stobj: pyebpf.Object, scratch_cgroup: str) -> None:
    from pyebpf.maps.netmaps import CgroupArray
    from pyebpf.maps.storage import cgroup_path_of

    arr, prog = stobj.maps["cg_arr"], stobj.programs["under_cg"]
    assert isinstance(arr, CgroupArray)
    ctx = bytes(16)
    mine = os.open(cgroup_path_of(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        arr[0] = mine
        arr.set_path(1, scratch_cgroup)
    finally:
        os.close(mine)
    with pytest.raises(OptionError, match="does not return"):
        arr[0]
    assert prog.test_run(ctx_in=ctx).retval == 1  # we are under our own cgroup
    stobj.globals["cg_slot"] = 1
    assert prog.test_run(ctx_in=ctx).retval == 0  # ... not under the empty one
    del arr[1]
    # an empty slot: the helper returns -EAGAIN
    assert prog.test_run(ctx_in=ctx).retval & 0xFFFFFFFF == (-errno.EAGAIN) & 0xFFFFFFFF


def test_storage_from_id_and_no_fd_leak(stobj: pyebpf.Object) -> None:
    from pyebpf.maps.storage import TaskStorage, cgroup_path_of

    me = os.getpid()
    task_st = stobj.maps["task_st"]
    task_st.update_pid(me, 31)
    with Map.from_id(task_st.id) as again:
        # the class comes from the map type, the value type from the kernel's BTF
        assert isinstance(again, TaskStorage) and again.lookup_pid(me) == 31
    before = open_fd_count()
    for _ in range(5):
        task_st.lookup_pid(me)
        task_st.update_pid(me, 1)
        stobj.maps["cgrp_st"].lookup_path(cgroup_path_of())
    assert task_st.delete_pid(me) and not task_st.delete_pid(me)
    with pytest.raises(ProcessLookupError):
        task_st.lookup_pid(2**22 + 12345)  # no such process
    assert open_fd_count() == before
