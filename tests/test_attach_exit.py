"""An attachment never outlives its owner unintentionally.

A child process (tests/exit_child.py) holds one bpf-link attachment of each kind: XDP and
tcx on an interface, sk_lookup and netfilter on a network namespace, a sockmap, a socket
filter, a cgroup, a uprobe and a uprobe_multi, a tracepoint, a raw tracepoint, an iterator
and a struct_ops registration; it pins the raw_tp link on purpose. It is SIGKILLed, so no
cleanup code of its own runs. Then nothing may be left: no program on the interface, the
namespace or the cgroup, no link, no registered congestion control, except the pinned
link, which the test then removes.

Attachments made through the legacy paths (netlink XDP and cls_bpf, BPF_PROG_ATTACH)
are owned by the kernel object they were made on, not by a process, as with libbpf: the
README says how to remove them. A legacy tracefs uprobe event of the child is detached
with its perf fd, but the event itself stays until the next pyebpf process that adds a
legacy probe sweeps orphans of dead pids away (shown here too).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cgroups import scratch_cgroup
from netns import NetnsPair
from targets import private_target

from pyebpf.errors import SyscallError
from pyebpf.links.base import Link
from pyebpf.links.cgroup import cgroup_query
from pyebpf.links.netns import netns_prog_ids
from pyebpf.links.tc import tcx_query
from pyebpf.links.xdp import xdp_query
from pyebpf.sys import bpf as B
from pyebpf.sys.perf import sweep_stale_probe_events, tracefs_path
from pyebpf.uapi import AttachType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

HERE = Path(__file__).resolve().parent
TARGET = private_target("uprobe_target")  # tests/targets.py says why a copy


def _tcp_with(name: str) -> int:
    """0 when a TCP socket can select congestion control ``name``, else the errno."""
    import socket

    with socket.socket() as c:
        try:
            c.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_CONGESTION", 13), name.encode())
        except OSError as e:
            return e.errno or -1
    return 0


def _uprobe_events() -> str:
    with open(os.path.join(tracefs_path(), "uprobe_events")) as f:
        return f.read()


def _alive(kind: str, obj_id: int) -> bool:
    get = {"link": B.link_get_fd_by_id, "prog": B.prog_get_fd_by_id}[kind]
    try:
        get(obj_id).close()
    except SyscallError as e:
        assert e.errno == errno.ENOENT, e
        return False
    return True


def _wait(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _state(net: NetnsPair, cg: str) -> dict[str, object]:
    """What the kernel has attached to the hooks the child used."""
    ifname = net.ifname["a"]
    return {
        "xdp": net.run("a", lambda: xdp_query(ifname).prog_id),
        "tcx": net.run("a", lambda: tcx_query(ifname, "ingress")[0]),
        "sk_lookup": netns_prog_ids(f"/run/netns/{net.ns['b']}", "sk_lookup"),
        "cgroup": cgroup_query(cg, AttachType.CGROUP_INET_SOCK_CREATE).prog_ids,
    }


def test_sigkilled_owner_leaves_nothing_attached_but_its_pin() -> None:
    pin = f"/sys/fs/bpf/pyebpf_exit_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _run(pin)
    finally:  # a failed run must not leave the pin behind
        if os.path.exists(pin):
            os.unlink(pin)


def _run(pin: str) -> None:
    cc = f"pxe{os.getpid() % 10000:04d}{secrets.token_hex(3)}"[:15]
    with NetnsPair("pyexit", ipv6=False) as net, scratch_cgroup("exit") as cg:
        cfg = {"netns_a": net.ns["a"], "netns_b": net.ns["b"], "ifname_a": net.ifname["a"],
               "cgroup": cg, "pin": pin, "cc": cc, "uprobe_target": str(TARGET)}
        child = subprocess.Popen([sys.executable, str(HERE / "exit_child.py"), json.dumps(cfg)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline() if child.stdout else ""
            if not line:
                child.wait(10)
                pytest.fail(f"the child failed before attaching: {child.stderr.read() if child.stderr else ''}")
            report = json.loads(line)
            # the socket filter has no bpf link: its socket, which dies with the child, holds it
            links: dict[str, int] = {k: i for k, i in report["links"].items() if i is not None}
            assert set(report["links"]) - set(links) == {"socket_filter"}
            progs: dict[str, int] = report["progs"]
            # everything is attached and visible from outside the child
            before = _state(net, cg)
            assert before["xdp"] == progs["xdp"]
            assert before["tcx"] == [progs["tcx"]]
            assert before["sk_lookup"] == [progs["sk_lookup"]]
            assert before["cgroup"] == [progs["cgroup"]]
            assert _tcp_with(cc) == 0
            assert all(_alive("link", i) for i in links.values()), links
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            for f in (child.stdout, child.stderr):
                if f:
                    f.close()
        assert child.returncode == -signal.SIGKILL

        pinned = report["pinned_link"]
        unpinned = {k: i for k, i in links.items() if i != pinned}
        assert _wait(lambda: not any(_alive("link", i) for i in unpinned.values())), \
            {k: i for k, i in unpinned.items() if _alive("link", i)}
        after = _state(net, cg)
        assert after == {"xdp": 0, "tcx": [], "sk_lookup": [], "cgroup": []}, after
        assert _tcp_with(cc) == errno.ENOENT  # the struct_ops registration is gone too
        event = report["legacy_event"]
        assert event in _uprobe_events()  # nothing in the kernel removes a tracefs event
        assert event in sweep_stale_probe_events("uprobe")
        assert event not in _uprobe_events()
        pinned_prog = progs["raw_tp"]
        assert _wait(lambda: not any(_alive("prog", i) for k, i in progs.items()
                                     if i and i != pinned_prog))

        # what the child pinned on purpose stays: the link and its program
        assert _alive("link", pinned) and _alive("prog", pinned_prog)
        with Link.from_pin(pin) as link:
            assert link.info().prog_id == pinned_prog
            link.unpin()
        assert not os.path.exists(pin)
        assert _wait(lambda: not _alive("link", pinned))
        assert _wait(lambda: not _alive("prog", pinned_prog))
