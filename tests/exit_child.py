"""Child process of tests/test_attach_exit.py: attach one program of each kind, pin one
link on purpose, print what it made as one JSON line, then wait to be SIGKILLed.

argv[1] is a JSON object: netns_a/netns_b (names), ifname_a, cgroup (path), pin (path),
cc (a unique tcp_congestion_ops name), uprobe_target (path).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netns import enter_netns  # noqa: E402
from unitobj import unit_object  # noqa: E402

import pyebpf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STRUCT_OPS = os.path.join(HERE, "..", "fixtures", "unit", "attach_struct_ops.bpf.o")


def _spec_with_cc_name(name: str) -> pyebpf.ObjectSpec:
    # as tests/test_attach_struct_ops.py: every struct_ops map gets a unique algorithm name
    names = {"cc_a": name, "cc_b": name, "cc_plain": "x" + name[1:]}
    spec = pyebpf.ObjectSpec.from_file(STRUCT_OPS)
    for mname, n in names.items():
        so = spec.maps[mname].extra["struct_ops"]
        mem = so.member("name")
        so.data[mem.offset : mem.offset + mem.size] = n.encode().ljust(mem.size, b"\0")
    return spec


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    links: dict[str, Any] = {}
    keep: list[Any] = []  # sockets and objects that must live until the kill

    net = pyebpf.load(unit_object("attach_net"))
    with enter_netns(cfg["netns_a"]):
        links["xdp"] = net.programs["xdp_a"].attach_xdp(cfg["ifname_a"])
        links["tcx"] = net.programs["tc_in"].attach_tcx(cfg["ifname_a"], "ingress")

    sk = pyebpf.load(unit_object("attach_sock"))
    netns_b = f"/run/netns/{cfg['netns_b']}"
    links["sk_lookup"] = sk.programs["lookup_pass"].attach_netns(netns_b)
    links["netfilter"] = sk.programs["nf_count"].attach_netfilter(netns=netns_b, hook="local_out")
    links["sockmap"] = sk.programs["on_msg"].attach_sockmap(sk.maps["pair_socks"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    keep.append(s)
    links["socket_filter"] = sk.programs["sock_filter"].attach_socket(s)

    cg = pyebpf.load(unit_object("attach_cgroup"))
    links["cgroup"] = cg.programs["cg_sock_create"].attach_cgroup(cfg["cgroup"])

    up = pyebpf.load(unit_object("attach_uprobe"))
    links["uprobe"] = up.programs["u_add"].attach_uprobe(cfg["uprobe_target"], "ut_add")
    legacy = up.programs["u_arg"].attach_uprobe(cfg["uprobe_target"], "ut_ret", mode="legacy")
    keep.append(legacy)
    links["uprobe_multi"] = up.programs["um_cookie"].attach_uprobe_multi(
        cfg["uprobe_target"], "ut_*")

    ctr = pyebpf.load(unit_object("attach_counters"))
    links["tracepoint"] = ctr.programs["count_openat"].attach()
    links["raw_tp"] = ctr.programs["count_raw_sys_enter"].attach()
    links["iter"] = ctr.programs["dump_task"].attach_iter()
    links["raw_tp"].pin(cfg["pin"])

    so = pyebpf.load(_spec_with_cc_name(cfg["cc"]))
    links["struct_ops"] = so.attach_struct_ops("cc_a")
    keep += [net, sk, cg, up, ctr, so]

    report = {
        "links": {k: v.id for k, v in links.items()},
        "progs": {k: getattr(v, "program", None) and v.program.id for k, v in links.items()
                  if k != "struct_ops"},
        "pinned_link": links["raw_tp"].id,
        "pid": os.getpid(),
        "legacy_event": legacy.legacy_event,
    }
    print(json.dumps(report), flush=True)
    while True:  # the parent SIGKILLs us: no cleanup code of ours may run
        time.sleep(60)


if __name__ == "__main__":
    main()
