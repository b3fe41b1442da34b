"""Opening a kernel object by pin or fd checks what it is, and says what it really holds."""

from __future__ import annotations

import os
import secrets

import pytest
from unitobj import unit_object

import pyebpf
from pyebpf.errors import OptionError
from pyebpf.sys.fd import open_fd_count

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_program_and_link_opens_refuse_other_kinds() -> None:
    base = f"/sys/fs/bpf/pyebpf_kind_{os.getpid()}_{secrets.token_hex(3)}"
    with pyebpf.load(unit_object("attach_counters")) as obj:
        prog, m = obj.programs["count_raw_sys_enter"], obj.maps["counts"]
        link = prog.attach()
        pins = {"prog": base + "_prog", "map": base + "_map", "link": base + "_link"}
        prog.pin(pins["prog"])
        m.pin(pins["map"])
        link.pin(pins["link"])
        try:
            fds = open_fd_count()
            with pytest.raises(OptionError, match=r"the pin .*_map holds a BPF map, not a BPF "
                                                  r"program.*pyebpf\.Map\.from_fd"):
                pyebpf.Program.from_pin(pins["map"])
            with pytest.raises(OptionError, match=r"holds a BPF link, not a BPF program"):
                pyebpf.Program.from_pin(pins["link"])
            with pytest.raises(OptionError, match=r"the pin .*_prog holds a BPF program, not "
                                                  r"a BPF link.*Program\.from_pin"):
                pyebpf.Link.from_pin(pins["prog"])
            with pytest.raises(OptionError, match=r"is a BPF map, not a BPF program"):
                pyebpf.Program.from_fd(m.fd)
            assert open_fd_count() == fds  # nothing left open by the refusals
            assert m[0] == 0  # and the map whose FD was offered is still open
            with pyebpf.Program.from_pin(pins["prog"]) as p2, \
                    pyebpf.Link.from_pin(pins["link"]) as l2:
                assert p2.id == prog.id and l2.info().prog_id == prog.id
        finally:
            for p in pins.values():
                if os.path.exists(p):
                    os.unlink(p)
            link.close()
