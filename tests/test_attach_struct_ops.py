"""struct_ops registration (pyebpf.links.struct_ops) with tcp_congestion_ops on the real kernel.

fixtures/unit/attach_struct_ops.bpf.o has two .struct_ops.link maps (cc_a, cc_b) that
implement one algorithm name and count their own init/cong_avoid calls, and a plain
.struct_ops map (cc_plain). Each test gives the algorithms unique names (pid + random),
makes them fire with a loopback TCP connection that selects the algorithm through
setsockopt(TCP_CONGESTION), and checks that no fd, kernel object or registration is left.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import uuid

import kobjects
import pytest
from nobody import run_as_nobody
from unitobj import unit_object

import pyebpf
from pyebpf.links.base import AttachError, Link
from pyebpf.links.struct_ops import StructOpsLink, attach_struct_ops
from pyebpf.uapi import LinkType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

FIXTURE = unit_object("attach_struct_ops")
DUMMY = unit_object("attach_struct_ops_dummy")
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
BPFFS = "/sys/fs/bpf"


def _names() -> dict[str, str]:
    # TCP_CA_NAME_MAX is 16 with the NUL; the kernel list is global, so names are unique
    tag = f"{os.getpid() % 10000:04d}{uuid.uuid4().hex[:5]}"
    return {"cc_a": f"pso{tag}", "cc_b": f"pso{tag}", "cc_plain": f"psp{tag}"}


def _spec(names: dict[str, str], path=FIXTURE) -> pyebpf.ObjectSpec:
    spec = pyebpf.ObjectSpec.from_file(path)
    for mname, name in names.items():
        so = spec.maps[mname].extra["struct_ops"]
        mem = so.member("name")
        so.data[mem.offset : mem.offset + mem.size] = name.encode().ljust(mem.size, b"\0")
    return spec


def tcp_with(name: str) -> int:
    """Open a loopback TCP connection using congestion control ``name`` and send data.

    Returns 0, or the errno of setsockopt(TCP_CONGESTION) (ENOENT: no such algorithm)."""
    with socket.socket() as srv, socket.socket() as c:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        try:
            c.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode())
        except OSError as e:
            return e.errno or -1
        c.connect(srv.getsockname())
        a, _ = srv.accept()
        with a:
            for _ in range(64):
                c.sendall(b"x" * 1024)
            got = 0
            while got < 64 * 1024:
                got += len(a.recv(65536))
    return 0


def calls(obj) -> list[int]:
    return [obj.maps["calls"][i] for i in range(4)]


@pytest.fixture
def leakcheck():
    names = kobjects.object_names(pyebpf.ObjectSpec.from_file(FIXTURE))
    names += kobjects.object_names(pyebpf.ObjectSpec.from_file(DUMMY))
    pyebpf.kernel_btf()  # the process-wide kernel BTF keeps its file open: open it first
    before = kobjects.snapshot()
    fds = kobjects.fd_state()
    yield
    gc.collect()
    assert kobjects.fd_state() == fds
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


@pytest.fixture
def cc(leakcheck):
    names = _names()
    with pyebpf.load(_spec(names)) as obj:
        yield obj, names
    # nothing stays registered once the object is gone
    assert tcp_with(names["cc_a"]) == errno.ENOENT
    assert tcp_with(names["cc_plain"]) == errno.ENOENT


def test_link_fires_updates_pins_and_unregisters(cc) -> None:
    obj, names = cc
    name = names["cc_a"]
    assert tcp_with(name) == errno.ENOENT  # not registered before attach
    link = obj.attach_struct_ops("cc_a")
    assert isinstance(link, StructOpsLink) and isinstance(link, Link)
    assert obj.links["cc_a"] is link and link.map is obj.maps["cc_a"]
    info = link.info()
    assert info.type == LinkType.STRUCT_OPS and info.map_id == obj.maps["cc_a"].id
    assert info.id == link.id and "cc_a" in repr(link)
    assert tcp_with(name) == 0
    a_init, a_avoid, b_init, b_avoid = calls(obj)
    assert a_init >= 1 and a_avoid >= 1 and b_init == b_avoid == 0

    # switch the running algorithm to cc_b in place: same link id, new map
    link.update_map(obj.maps["cc_b"])
    assert link.map is obj.maps["cc_b"] and link.info().map_id == obj.maps["cc_b"].id
    assert link.info().id == info.id
    assert tcp_with(name) == 0
    after = calls(obj)
    assert after[0] == a_init and after[2] >= 1 and after[3] >= 1

    # a pinned link outlives this fd; reopened from the pin it reports the same map
    pin = f"{BPFFS}/pyebpf_F_so_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    link.pin(pin)
    try:
        again = StructOpsLink.from_pin(pin)
        assert isinstance(again, StructOpsLink) and again.map is None
        assert again.info().map_id == obj.maps["cc_b"].id and again.id == link.id
        link.close()
        del obj.links["cc_a"]
        assert link.closed and "closed" in repr(link)
        assert tcp_with(name) == 0  # the pin keeps it registered
        # the reopened link switches back, with BPF_F_REPLACE guarding the old map
        with pytest.raises(AttachError, match="no longer runs struct_ops map 'cc_a'") as e:
            again.update_map(obj.maps["cc_a"], old_map=obj.maps["cc_a"])
        assert e.value.errno == errno.EPERM
        again.update_map(obj.maps["cc_a"], old_map=obj.maps["cc_b"])
        assert again.info().map_id == obj.maps["cc_a"].id
        again.unpin()
        again.close()
    finally:
        if os.path.exists(pin):
            os.unlink(pin)
    assert not os.path.exists(pin)
    assert tcp_with(name) == errno.ENOENT  # closing the last reference unregistered it


def test_plain_struct_ops_registers_by_map_value(cc) -> None:
    obj, names = cc
    name = names["cc_plain"]
    link = attach_struct_ops(obj.maps["cc_plain"])
    assert link.fd is None and not link.closed and "registered" in repr(link)
    assert tcp_with(name) == 0
    assert calls(obj)[0] >= 1  # cc_plain reuses cc_a's programs
    with pytest.raises(AttachError, match=r"registered through its map value.*\.struct_ops\.link"):
        link.pin(f"{BPFFS}/pyebpf_F_never_{os.getpid()}")
    with pytest.raises(AttachError, match="registered through its map value"):
        link.info()
    # registering the same map twice is refused by the kernel (EBUSY), and explained
    with pytest.raises(AttachError, match="'cc_plain' is already registered") as e:
        attach_struct_ops(obj.maps["cc_plain"])
    assert e.value.errno == errno.EBUSY
    link.close()
    assert link.closed and "closed" in repr(link)
    assert tcp_with(name) == errno.ENOENT
    link.close()  # idempotent


def test_auto_attach_name_clash_leaves_nothing(cc) -> None:
    obj, names = cc
    # cc_a and cc_b implement the same algorithm name: registering both must fail (EEXIST)
    with pytest.raises(AttachError, match=rf"an ops named '{names['cc_a']}' is already "
                                          "registered.*unique name") as e:
        obj.attach()
    assert e.value.errno == errno.EEXIST
    assert obj.links == {}
    assert tcp_with(names["cc_a"]) == errno.ENOENT


def test_update_errors(cc) -> None:
    obj, names = cc
    with obj.attach_struct_ops("cc_a", _record=False) as link:
        # a program is not what a struct_ops link runs
        prog = obj.programs["a_init"]
        with pytest.raises(AttachError, match=r"not one program: switch it with link.update_map"):
            link.update(prog)
        # a map without BPF_F_LINK
        with pytest.raises(AttachError, match="'cc_plain' was not created with BPF_F_LINK"):
            link.update_map(obj.maps["cc_plain"])
        # not a struct_ops map at all
        with pytest.raises(AttachError, match="is not a struct_ops map"):
            link.update_map(obj.maps["calls"])
        # update() with a map is update_map()
        link.update(obj.maps["cc_b"])
        assert link.info().map_id == obj.maps["cc_b"].id
        assert tcp_with(names["cc_a"]) == 0


def test_update_to_another_type_or_name(cc) -> None:
    obj, names = cc
    with obj.attach_struct_ops("cc_a", _record=False) as link, pyebpf.load(DUMMY) as dummy:
        with pytest.raises(AttachError, match=r"'dummy': it implements bpf_dummy_ops, the link "
                                              r"runs tcp_congestion_ops; .* same struct_ops type"):
            link.update_map(dummy.maps["dummy"])
        # the same type under another name: the kernel refuses (EINVAL), we say why
        other = {"cc_a": f"{names['cc_a']}x", "cc_b": f"{names['cc_b']}y",
                 "cc_plain": f"{names['cc_plain']}z"}
        with pyebpf.load(_spec(other)) as obj2:
            with pytest.raises(AttachError, match=rf"named '{other['cc_b']}' but the link runs "
                                                  rf"'{names['cc_a']}'.*same name") as e:
                link.update_map(obj2.maps["cc_b"])
            assert e.value.errno == errno.EINVAL
        assert link.info().map_id == obj.maps["cc_a"].id
        assert tcp_with(names["cc_a"]) == 0


def test_attach_needs_only_the_map_fd(cc) -> None:
    # The kernel checks privileges when the map is created and its programs load, not at
    # registration: a child that dropped to uid 65534 with no capabilities, holding the
    # loaded map's fd, registers it (and its exit unregisters it). So there is no "no
    # permission" attach error to show here; pyebpf's EPERM message stays for kernels or
    # LSMs that do refuse.
    obj, names = cc
    m = obj.maps["cc_a"]

    def child() -> tuple[int, bool]:
        link = attach_struct_ops(m)
        # selecting a non-default algorithm needs CAP_NET_ADMIN; listing them does not
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return link.info().map_id, names["cc_a"] in f.read().split()

    status, value = run_as_nobody(child)
    assert (status, value) == ("ok", (m.id, True))
    assert tcp_with(names["cc_a"]) == errno.ENOENT
