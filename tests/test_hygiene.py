"""Many load -> attach -> fire -> close cycles leave the process's fds and the kernel's
programs, maps and links where they started.

PYEBPF_HYGIENE_CYCLES sets the number of cycles (default 1000).
"""

from __future__ import annotations

import os
import time

import kobjects as K
import pytest
from unitobj import unit_object

import pyebpf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")

CYCLES = int(os.environ.get("PYEBPF_HYGIENE_CYCLES", "1000"))
SLOT_TP, SLOT_RAW_TP, SLOT_TP_BTF = 0, 1, 2


def _warm() -> None:
    # process-wide caches (mmap'd kernel BTF, feature probes, tracefs ids) are not leaks
    with pyebpf.load(unit_object("attach_counters")) as obj:
        obj.attach()


def test_load_attach_fire_close_cycles() -> None:
    path = unit_object("attach_counters")
    names = K.object_names(pyebpf.ObjectSpec.from_file(path))
    _warm()
    fds = K.fd_state()
    before = K.snapshot()
    pid = os.getpid()
    t0 = time.perf_counter()
    for i in range(CYCLES):
        with pyebpf.load(path) as obj:
            obj.maps["cfg"][0] = pid
            links = obj.attach()
            assert {"count_openat", "count_raw_sys_enter", "count_btf_sys_enter"} <= set(links)
            os.close(os.open("/dev/null", os.O_RDONLY))  # openat: every tracing program fires
            counts = obj.maps["counts"]
            assert counts[SLOT_TP] >= 1, i
            assert counts[SLOT_RAW_TP] >= 1 and counts[SLOT_TP_BTF] >= 1, i
        assert all(link.closed for link in links.values())
    elapsed = time.perf_counter() - t0
    assert K.fd_state() == fds
    left = K.wait_no_new_named(before, names, timeout=30)
    assert left == {"prog": [], "map": [], "link": []}
    print(f"{CYCLES} cycles in {elapsed:.1f} s ({elapsed / CYCLES * 1000:.1f} ms each)")


def test_load_close_cycles_without_attach() -> None:
    path = pyebpf.ObjectSpec.from_file  # keep the import of pyebpf lazy pieces warm
    del path
    fixtures = [os.path.join(os.path.dirname(__file__), "..", "fixtures", f)
                for f in ("opensnoop.bpf.o", "globals.bpf.o", "subprogs.bpf.o")]
    names: list[str] = []
    for f in fixtures:
        names += K.object_names(pyebpf.ObjectSpec.from_file(f))
        pyebpf.load(f).close()
    fds = K.fd_state()
    before = K.snapshot()
    for _ in range(max(CYCLES // 10, 10)):
        for f in fixtures:
            obj = pyebpf.load(f)
            if "globals" in f:
                obj.globals["data_int"] = 3  # creates the mmap; close must undo it
            obj.close()
    assert K.fd_state() == fds
    assert K.wait_no_new_named(before, names, timeout=30) == {"prog": [], "map": [], "link": []}
