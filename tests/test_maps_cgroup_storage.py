"""CGROUP_STORAGE and PERCPU_CGROUP_STORAGE written by a real cgroup_skb/egress program
(loopback UDP from a child process in a scratch cgroup), and struct_ops map values
decoded through the kernel's BTF."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

import pyebpf
from pyebpf.errors import OptionError, SyscallError
from pyebpf.links.cgroup import CgroupLink
from pyebpf.maps.map import Map, StructOpsMap, cstr, map_class
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.uapi import AttachType, MapType

try:
    from tests.unitobj import ROOT, unit_object
except ImportError:
    from unitobj import ROOT, unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

EGRESS = AttachType.CGROUP_INET_EGRESS
PAYLOAD = 100
IP_UDP_HEADERS = 20 + 8  # skb->len at cgroup egress starts at the IPv4 header


def _proc_fds() -> int:
    """Open fds of this process, after warming the process-wide kernel BTF cache (its
    mmap keeps a /sys/kernel/btf/vmlinux fd for the life of the process)."""
    from pyebpf.btf.kernel import kernel_btf

    kernel_btf()
    return len(os.listdir("/proc/self/fd"))


def _rmdir(path: str) -> None:
    # a reaped child may leave the cgroup populated for a moment (EBUSY)
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    os.rmdir(path)


@pytest.fixture
def cgroups() -> Iterator[tuple[str, str]]:
    """Two uniquely named empty cgroups under the cgroup2 mount."""
    from pyebpf.maps.storage import cgroup2_mount

    base = f"pyebpf_cgst_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    paths = [os.path.join(cgroup2_mount(), f"{base}_{s}") for s in ("a", "b")]
    made: list[str] = []
    try:
        for p in paths:
            os.mkdir(p)
            made.append(p)
        yield paths[0], paths[1]
    finally:
        for p in reversed(made):
            if os.path.isdir(p):  # a test may have removed it already
                _rmdir(p)


def _attach_egress(prog: pyebpf.Program, path: str) -> CgroupLink:
    """A cgroup_skb/egress link on the cgroup at ``path`` (the attach type from SEC())."""
    link = prog.attach_cgroup(path)
    assert isinstance(link, CgroupLink) and link.attach_type is EGRESS
    return link


_CHILD = """
import os, socket, sys
path, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(os.path.join(path, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for i in range(n):
        s.sendto(bytes([i % 256]) * size, ("127.0.0.1", port))
"""


def _send_from_cgroup(path: str, rx: socket.socket, n: int) -> None:
    """A child process joins the cgroup at ``path`` and sends ``n`` datagrams to ``rx``;
    every one must arrive (the program allows them)."""
    port = rx.getsockname()[1]
    subprocess.run([sys.executable, "-c", _CHILD, path, str(port), str(n), str(PAYLOAD)],
                   check=True, timeout=60)
    rx.settimeout(5)
    for _ in range(n):
        assert len(rx.recv(4096)) == PAYLOAD


def test_registry_classes() -> None:
    from pyebpf.maps import CgroupStorage, PerCpuCgroupStorage
    from pyebpf.maps.percpu import PerCpuMixin

    assert map_class(MapType.CGROUP_STORAGE) is CgroupStorage
    assert map_class(MapType.PERCPU_CGROUP_STORAGE) is PerCpuCgroupStorage
    assert issubclass(PerCpuCgroupStorage, PerCpuMixin)


def test_cgroup_storage_key_helpers(cgroups: tuple[str, str]) -> None:
    from pyebpf.maps.storage import CgroupStorageKey, cgroup_id, cgroup_storage_key

    a, _ = cgroups
    ino = os.stat(a).st_ino
    assert cgroup_id(a) == ino == cgroup_id(os.path.basename(a))  # relative to the mount
    k = cgroup_storage_key(a, EGRESS)
    assert k == CgroupStorageKey(ino, EGRESS) and k.attach_type is EGRESS
    assert repr(k) == f"CgroupStorageKey(cgroup_inode_id={ino}, attach_type=CGROUP_INET_EGRESS)"
    assert CgroupStorageKey.from_path(a, 999).attach_type == 999  # unknown types stay ints


def test_cgroup_storage_counted_by_program(cgroups: tuple[str, str]) -> None:
    from pyebpf.maps.storage import CgroupStorage, CgroupStorageKey, PerCpuCgroupStorage

    a, b = cgroups
    fds0, proc0 = open_fd_count(), _proc_fds()
    with pyebpf.load(unit_object("maps_cgroup_storage")) as obj, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        st, pc = obj.maps["cg_stats"], obj.maps["cg_pcpu"]
        assert isinstance(st, CgroupStorage) and not isinstance(st, PerCpuCgroupStorage)
        assert isinstance(pc, PerCpuCgroupStorage) and pc.percpu
        assert st.key_size == 16 and st.max_entries == 0
        rx.bind(("127.0.0.1", 0))
        obj.globals["target_port"] = rx.getsockname()[1]
        ka, kb = st.key_for(a, EGRESS), st.key_for(b, EGRESS)
        # no attachment, no storage
        assert list(st.keys()) == [] and st.lookup(ka) is None

        links = [_attach_egress(obj.programs["count_egress"], p) for p in (a, b)]
        try:
            # the kernel made one zeroed entry per (cgroup, attach type)
            assert sorted(st.keys()) == sorted([ka, kb])
            assert sorted(pc.keys()) == sorted([ka, kb])
            assert all(isinstance(k, CgroupStorageKey) for k in st.keys())
            assert st[ka].packets == 0 and pc[ka] == [0] * B.possible_cpus()

            _send_from_cgroup(a, rx, 5)
            v = st[ka]
            assert (v.packets, v.bytes) == (5, 5 * (IP_UDP_HEADERS + PAYLOAD))
            per_cpu = pc[ka]
            assert len(per_cpu) == B.possible_cpus() and sum(per_cpu) == 5 == pc.sum(ka)
            assert (st[kb].packets, pc.sum(kb)) == (0, 0)  # nothing left cgroup b
            assert dict(st.items()) == {ka: v, kb: st[kb]}
            assert st.lookup_path(os.path.basename(a), EGRESS) == v

            # user space overwrites; the program goes on counting from there
            st[ka] = {"packets": 1000, "bytes": 0}
            assert st[ka].packets == 1000
            pc[ka] = 10  # every CPU's slot
            assert pc[ka] == [10] * B.possible_cpus()
            st.update_path(b, (7, 8), EGRESS)
            assert tuple(st[kb]) == (7, 8)
            _send_from_cgroup(a, rx, 3)
            assert st[ka].packets == 1003 and st[ka].bytes == 3 * (IP_UDP_HEADERS + PAYLOAD)
            assert pc.sum(ka) == 10 * B.possible_cpus() + 3
            assert st.lookup(ka, raw=True) == st.encode_value(st[ka])

            # the entries belong to the attachment
            with pytest.raises(OptionError, match="cannot be deleted"):
                del st[ka]
            with pytest.raises(OptionError, match="attach type"):
                st[ka.cgroup_inode_id]
            other = CgroupStorageKey(ka.cgroup_inode_id, AttachType.CGROUP_INET_INGRESS)
            assert st.lookup(other) is None
            with pytest.raises(SyscallError) as ei:
                st[other] = (1, 1)  # user space cannot create entries
            assert ei.value.errno == errno.ENOENT

            # reopened by id: the class from the map type, the types from kernel BTF
            with Map.from_id(st.id) as again:
                assert isinstance(again, CgroupStorage)
                assert again[ka].packets == 1003 and sorted(again.keys()) == sorted([ka, kb])
        finally:
            for link in links:
                link.close()
        # detached: the storage belongs to the cgroup, it stays (and a new attach reuses it)
        assert sorted(st.keys()) == sorted([ka, kb]) and st[ka].packets == 1003
        with _attach_egress(obj.programs["count_egress"], a):
            _send_from_cgroup(a, rx, 2)
        assert st[ka].packets == 1005 and pc.sum(ka) == 10 * B.possible_cpus() + 5
        # removing the cgroups frees their entries (the kernel releases cgroups lazily)
        for p in (a, b):
            _rmdir(p)
        deadline = time.monotonic() + 10
        while (list(st.keys()) or list(pc.keys())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(st.keys()) == [] and list(pc.keys()) == []
    assert open_fd_count() == fds0 and _proc_fds() == proc0


def test_cgroup_storage_u64_keys() -> None:
    """A cgroup storage keyed by the cgroup id alone (created here, no program): the
    class takes and gives ints, and still builds keys from paths."""
    from pyebpf.maps.storage import CgroupStorage, cgroup_path_of

    fd = B.map_create(MapType.CGROUP_STORAGE, 8, 16, 0, name="pyebpf_cgst64")
    with Map.from_fd(fd) as m:
        assert isinstance(m, CgroupStorage)
        me = cgroup_path_of()
        assert m.key_for(me) == os.stat(me).st_ino
        assert m.encode_key((m.key_for(me), EGRESS)) == m.encode_key(m.key_for(me))
        assert m.lookup_path(me) is None and list(m.keys()) == []


# -- struct_ops ------------------------------------------------------------------------------

STRUCT_OPS_OBJ = ROOT / "fixtures" / "sections_struct_ops.bpf.o"
CC_NAME = "pyebpf_cc"  # .name in fixtures/src/sections_struct_ops.bpf.c


def _available_cc() -> list[str]:
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        return f.read().split()


def test_struct_ops_value_decoded() -> None:
    fds0, proc0 = open_fd_count(), _proc_fds()
    with pyebpf.load(STRUCT_OPS_OBJ) as obj:
        if CC_NAME in _available_cc():
            pytest.skip(f"another process has {CC_NAME} registered")
        st = obj.maps[CC_NAME]
        assert isinstance(st, StructOpsMap)
        assert st.value_codec.type_name == "struct bpf_struct_ops_tcp_congestion_ops"
        # not registered yet: the kernel reports a zeroed value
        v = st.value()
        assert int(v.common.state) == 0 and v.data.name == b""
        try:
            link = obj.attach_struct_ops(CC_NAME)
        except SyscallError as e:
            if e.errno == errno.EEXIST:
                pytest.skip(f"another process registered {CC_NAME} meanwhile")
            raise
        with link:
            v = st[0]
            assert cstr(v.data.name) == CC_NAME
            assert v.common.state.name == "BPF_STRUCT_OPS_STATE_INUSE"
            assert v.common.refcnt.refs.counter >= 1
            # the kernel reports each member's program by id
            ids = {p.name: p.id for p in obj.programs.values()}
            assert v.data.init == ids["pyebpf_cc_init"]
            assert v.data.ssthresh == ids["pyebpf_cc_ssthresh"]
            assert v.data.undo_cwnd == ids["pyebpf_cc_undo_cwnd"]
            text = repr(v)
            assert "name=b'pyebpf_cc'" in text and "BPF_STRUCT_OPS_STATE_INUSE" in text
            assert st.value(raw=True) == st.encode_value(v)
            # reopened by id the value still decodes
            with Map.from_id(st.id) as again:
                assert isinstance(again, StructOpsMap)
                assert cstr(again.value().data.name) == CC_NAME
    assert open_fd_count() == fds0 and _proc_fds() == proc0
