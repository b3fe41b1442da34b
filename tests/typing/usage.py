"""A typed use of pyebpf's public API, checked by ``mypy --strict`` (tests/test_typing.py).

Never run: it only has to type-check. ``assert_type`` fails the check when a value is
``Any`` or a wider type than promised, and each ``# type: ignore[code]`` below must be
needed (``--strict`` reports unused ignores), so misuse is proven to be caught.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import assert_type

import pyebpf
from pyebpf.btf.spec import BTF
from pyebpf.links import Link
from pyebpf.links.cgroup import CgroupLink
from pyebpf.links.iter import IterLink
from pyebpf.links.lwt import LwtRoute
from pyebpf.links.netfilter import NetfilterLink
from pyebpf.links.netns import NetnsLink, NetnsProgAttachment
from pyebpf.links.perf_event import PerfEventLink, PerfEventLinks
from pyebpf.links.socket import SocketAttachment, SockmapLink, SockmapProgAttachment
from pyebpf.links.struct_ops import StructOpsLink
from pyebpf.links.tc import TcLink, TcxLink
from pyebpf.links.tracing import RawTracepointLink, TracepointLink, TracingLink
from pyebpf.links.uprobe import UprobeLink, UprobeMultiLink
from pyebpf.links.usdt import UsdtLink
from pyebpf.links.xdp import XdpLink, attach_xdp
from pyebpf.program import TestRunResult
from pyebpf.uapi import AttachType, ProgType


def load_and_inspect(path: str) -> None:
    obj = pyebpf.load(path, globals={"x": 1}, max_entries={"m": 8})
    assert_type(obj, pyebpf.Object)
    assert_type(obj.programs, Mapping[str, pyebpf.Program])
    assert_type(obj.maps, Mapping[str, pyebpf.Map])
    assert_type(obj.btf, BTF | None)
    assert_type(obj.attach(), dict[str, Link])
    assert_type(obj.attach_struct_ops("ops"), StructOpsLink)
    prog = obj.programs["handler"]
    # the kernel may report a program type newer than pyebpf's enum: then it is the int
    assert_type(prog.type, ProgType | int)
    assert_type(prog.expected_attach_type, AttachType | int | None)
    assert_type(prog.object, pyebpf.Object | None)
    assert_type(prog.id, int)
    assert_type(prog.tag, str)
    assert_type(prog.info(), pyebpf.ProgInfo)
    assert_type(prog.test_run(b"\0" * 64), TestRunResult)
    assert_type(pyebpf.Program.from_pin("/sys/fs/bpf/p"), pyebpf.Program)
    assert_type(pyebpf.ObjectSpec.from_file(path), pyebpf.ObjectSpec)
    with pyebpf.load(path) as o:
        assert_type(o, pyebpf.Object)
    obj.close()
    prog.no_such_method()  # type: ignore[attr-defined]
    pyebpf.load(path, no_such_option=1)  # type: ignore[call-arg]


def attach_every_hook(prog: pyebpf.Program, sockmap: pyebpf.Map, sock: socket.socket) -> None:
    assert_type(prog.attach(), Link | PerfEventLinks)
    assert_type(prog.attach_tracepoint("syscalls", "sys_enter_openat", cookie=1),
                TracepointLink)
    assert_type(prog.attach_raw_tracepoint("sys_enter"), RawTracepointLink)
    assert_type(prog.attach_trace(cookie=2), TracingLink)
    assert_type(prog.attach_perf_event(3), PerfEventLink)
    assert_type(prog.attach_uprobe("libc.so.6", "malloc", pid=1, retprobe=True), UprobeLink)
    assert_type(prog.attach_uprobe_multi("/bin/true", "main*", cookies={"main": 1}),
                UprobeMultiLink)
    assert_type(prog.attach_usdt("/bin/true", "prov", "probe", pid=1), UsdtLink)
    xdp: XdpLink = prog.attach_xdp("lo", mode="skb")
    assert_type(prog.attach_xdp(1, netlink=True, replace=prog), XdpLink)
    assert_type(prog.attach_tcx("lo", "ingress", before=prog), TcxLink)
    assert_type(prog.attach_tc("lo", "egress", priority=1), TcLink)
    assert_type(prog.attach_cgroup("/sys/fs/cgroup", attach_type="egress"), CgroupLink)
    assert_type(prog.attach_netns(), NetnsLink | NetnsProgAttachment)
    assert_type(prog.attach_netfilter(pf="ipv4", hook="local_in", priority=-128),
                NetfilterLink)
    assert_type(prog.attach_socket(sock), SocketAttachment)
    assert_type(prog.attach_sockmap(sockmap), SockmapLink | SockmapProgAttachment)
    assert_type(prog.attach_lwt("192.0.2.0/24", dev="lo", hook="xmit"), LwtRoute)
    assert_type(prog.attach_iter(sockmap), IterLink)
    # a Program is a ProgramLike: the hook functions take it directly
    assert_type(attach_xdp(prog, "lo"), XdpLink)
    attach_xdp(sockmap, "lo")  # type: ignore[arg-type]
    # every link has the base class's lifetime and pin/update/info
    xdp.pin("/sys/fs/bpf/x")
    xdp.update(prog)
    xdp.update(prog.fd, old_prog=3)
    xdp.update("prog")  # type: ignore[arg-type]
    xdp.close()
    prog.attach_xdp("lo", no_such_option=True)  # type: ignore[call-arg]
    prog.attach_tcx("lo", expected_revision="1")  # type: ignore[arg-type]
