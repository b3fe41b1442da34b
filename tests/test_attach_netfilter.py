"""attach_netfilter: a netfilter link counts UDP packets on LOCAL_OUT and LOCAL_IN in a
private network namespace; names of families and hooks; every refusal explained."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from netattach import ROOT, as_nobody, leak_check, load_sock, needs_root, pin_path
from netns import NetnsPair

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.links import netfilter as NF
from pyebpf.links.base import AttachError, Link
from pyebpf.uapi import LinkType, ProgType

PORT = 5555


@pytest.fixture(scope="module")
def sock_obj() -> Iterator[pyebpf.Object]:
    if not ROOT:
        pytest.skip("needs root")
    with load_sock() as o:
        yield o


@pytest.fixture
def leaks(sock_obj: pyebpf.Object) -> Iterator[None]:
    with leak_check(sock_obj):
        sock_obj.globals["nf_port"] = PORT
        yield


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    if not ROOT:
        pytest.skip("needs root")
    with NetnsPair(ipv6=False) as pair:
        yield pair


def _ns(net: NetnsPair, side: str = "b") -> str:
    return f"/run/netns/{net.ns[side]}"


# --- pure ----------------------------------------------------------------------------------------


def test_names() -> None:
    assert NF.parse_pf("ipv4") == 2 and NF.parse_pf("NFPROTO_IPV6") == 10 and NF.parse_pf(7) == 7
    assert [NF.parse_hook(h) for h in ("pre_routing", "INPUT", "forward", "NF_INET_LOCAL_OUT",
                                       "post-routing")] == [0, 1, 2, 3, 4]
    with pytest.raises(OptionError, match=r"unknown netfilter protocol family 'ipx' \(netfilter links take 'ipv4' or 'ipv6'\)"):
        NF.parse_pf("ipx")
    with pytest.raises(OptionError, match="unknown netfilter hook 'ingress'.*local_in"):
        NF.parse_hook("ingress")
    with pytest.raises(OptionError, match="out of range"):
        NF.parse_hook(-1)
    with pytest.raises(OptionError, match="must be a name or a number"):
        NF.parse_pf(2.0)  # type: ignore[arg-type]


def test_option_errors_before_the_kernel() -> None:
    fake = SimpleNamespace(name="nf", type=ProgType.NETFILTER, fd=-1)
    with pytest.raises(OptionError, match="does not fit a signed 32-bit int"):
        NF.attach_netfilter(fake, priority=1 << 31)
    with pytest.raises(OptionError, match="priority must be an int"):
        NF.attach_netfilter(fake, priority="first")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="flags must be a 32-bit unsigned int"):
        NF.attach_netfilter(fake, flags=-1)
    with pytest.raises(AttachError, match=r"tc: attach_netfilter needs a netfilter program .* not a SCHED_CLS program"):
        NF.attach_netfilter(SimpleNamespace(name="tc", type=ProgType.SCHED_CLS, fd=-1))


# --- firing --------------------------------------------------------------------------------------


@needs_root
def test_local_out_counts(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog = sock_obj.programs["nf_count"]
    path = pin_path()
    with prog.attach_netfilter(hook="local_out", priority=-128, netns=_ns(net)) as link:
        assert isinstance(link, NF.NetfilterLink) and not link.updatable
        info = link.info()
        assert info.type == LinkType.NETFILTER and info.prog_id == prog.id
        assert (info.pf, info.hooknum, info.priority) == (2, 3, -128)
        assert "ipv4/local_out priority -128" in repr(link)
        net.send_udp("b", "a", PORT, 4)
        assert sock_obj.globals["nf_hits"] == 4 and sock_obj.globals["nf_last_hook"] == 3
        net.send_udp("a", "b", PORT, 2)  # a's namespace has no hook
        assert sock_obj.globals["nf_hits"] == 4
        with pytest.raises(AttachError, match="does not allow replacing the program of a netfilter link"):
            link.update(prog)
        link.pin(path)
    net.send_udp("b", "a", PORT, 1)
    assert sock_obj.globals["nf_hits"] == 5  # the pin keeps it
    with Link.from_pin(path) as pinned:
        pinned.detach()  # BPF_LINK_DETACH unhooks at once, the pin stays
        net.send_udp("b", "a", PORT, 1)
        assert sock_obj.globals["nf_hits"] == 5
        pinned.unpin()
    assert not os.path.exists(path)


@needs_root
def test_local_in_from_inside(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    """netns=None is the calling thread's namespace, as the kernel has it."""
    prog = sock_obj.programs["nf_count"]
    link = net.run("b", lambda: NF.attach_netfilter(prog, pf="ipv4", hook="input"))
    with link:
        assert net.udp("a", "b", PORT, 3) == 3  # NF_ACCEPT
        assert sock_obj.globals["nf_hits"] == 3 and sock_obj.globals["nf_last_hook"] == 1


@needs_root
def test_defrag(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog = sock_obj.programs["nf_count"]
    try:
        link = NF.attach_netfilter(prog, hook="local_in", priority=-100, defrag=True, netns=_ns(net))
    except AttachError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.ENOENT, errno.EOPNOTSUPP):
            pytest.skip(f"the kernel refuses netfilter IP defrag (BPF_F_NETFILTER_IP_DEFRAG): {e.errno}")
        raise
    with link:
        assert link.flags == NF.BPF_F_NETFILTER_IP_DEFRAG
        assert net.udp("a", "b", PORT, 2) == 2
        assert sock_obj.globals["nf_hits"] == 2
    with pytest.raises(AttachError, match=r"priority -400 runs before IP defragmentation: with "
                       r"defrag=True the priority must be above -400") as ei:
        NF.attach_netfilter(prog, priority=-400, defrag=True, netns=_ns(net))
    assert ei.value.errno == errno.ERANGE


# --- kernel refusals -----------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("kw, err, message", [
    ({"pf": "bridge"}, errno.EAFNOSUPPORT, r"netfilter links take protocol family ipv4 or ipv6 only, not bridge \(NFPROTO 7\)"),
    ({"pf": "inet"}, errno.EAFNOSUPPORT, r"ipv4 or ipv6 only, not inet"),
    ({"hook": 5}, errno.EPROTO, r"netfilter hook 5 does not exist for ipv4: want pre_routing"),
    ({"priority": -(1 << 31)}, errno.ERANGE, r"the kernel reserves netfilter priority -2147483648"),
    ({"priority": (1 << 31) - 1}, errno.ERANGE, r"reserves netfilter priority 2147483647"),
    ({"flags": 2}, errno.EOPNOTSUPP, r"unknown netfilter link flags 0x2"),
], ids=["bridge", "inet", "hook5", "int_min", "int_max", "flags"])
def test_refusals(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None, kw: dict, err: int,
                  message: str) -> None:
    with pytest.raises(AttachError, match=r"nf_count: .*" + message) as ei:
        NF.attach_netfilter(sock_obj.programs["nf_count"], netns=_ns(net), **kw)
    assert ei.value.errno == err


@needs_root
def test_wrong_program_type(sock_obj: pyebpf.Object, leaks: None) -> None:
    with pytest.raises(AttachError, match=r"on_msg: attach_netfilter needs a netfilter program "
                       r"\(SEC\(\"netfilter\"\)\), not a SK_MSG program"):
        sock_obj.programs["on_msg"].attach_netfilter()


@needs_root
def test_bad_netns(sock_obj: pyebpf.Object, leaks: None) -> None:
    with pytest.raises(AttachError, match=r"cannot open network namespace /run/netns/pyebpf_absent"):
        NF.attach_netfilter(sock_obj.programs["nf_count"], netns=f"pyebpf_absent_{os.getpid()}")


@needs_root
def test_unprivileged(sock_obj: pyebpf.Object, net: NetnsPair, leaks: None) -> None:
    prog, ns = sock_obj.programs["nf_count"], _ns(net)
    got = as_nobody(lambda: NF.attach_netfilter(prog, hook="local_out", netns=ns))
    assert got[:2] == ("error", "AttachError") and got[3] == errno.EPERM, got
    assert "no permission to enter the network namespace" in got[2] and "CAP_SYS_ADMIN" in got[2]
