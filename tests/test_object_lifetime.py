"""Object lifetime: dropped objects are released by reference counting at once, close()
closes everything even when one part refuses, and a closed object refuses to work."""

from __future__ import annotations

import gc
import os

import kobjects
import pytest
from unitobj import unit_object

import pyebpf
from pyebpf.errors import PyebpfError
from pyebpf.sys.fd import open_fd_count

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

OPENSNOOP = unit_object("attach_counters").parent.parent / "opensnoop.bpf.o"


def _warm() -> None:
    # process-wide caches (kernel BTF mmap, feature probes, tracefs ids) are not leaks
    with pyebpf.load(OPENSNOOP) as obj:
        obj.attach()


def test_dropped_objects_are_released_without_the_garbage_collector() -> None:
    _warm()
    names = kobjects.object_names(pyebpf.ObjectSpec.from_file(OPENSNOOP))
    before_fds = open_fd_count()
    before = kobjects.snapshot()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            obj = pyebpf.load(OPENSNOOP)
            assert len(obj.attach()) == 2
            obj.globals["targ_tgid"]  # noqa: B018 - touch the globals view too
            del obj
            assert open_fd_count() == before_fds
    finally:
        gc.enable()
    assert kobjects.wait_no_new_named(before, names) == {"prog": [], "map": [], "link": []}


def test_closed_object_refuses_attach_and_globals() -> None:
    obj = pyebpf.load(OPENSNOOP)
    obj.close()
    with pytest.raises(PyebpfError, match="is closed"):
        obj.attach()
    with pytest.raises(PyebpfError, match="is closed"):
        obj.globals["targ_tgid"]  # noqa: B018
    with pytest.raises(PyebpfError, match="is closed"):
        obj.globals["targ_tgid"] = 1
    obj.close()  # idempotent


def test_close_closes_everything_even_when_a_view_is_alive() -> None:
    before_fds = open_fd_count()
    obj = pyebpf.load(unit_object("maps_kinds"))
    arrays = [m for m in obj.maps.values() if getattr(m, "mmapped", False)]
    assert arrays, "maps_kinds has an mmapable array"
    view = arrays[0].memory  # a live export of the mapping
    try:
        obj.close()
    except PyebpfError as e:  # allowed: it says what failed, after closing the rest
        assert "everything else was closed" in str(e)
    assert obj.closed
    assert all(p.closed for p in obj.programs.values())
    others = [m for m in obj.maps.values() if m is not arrays[0]]
    assert all(m.closed for m in others)
    assert obj.btf_fd is None or obj.btf_fd.closed
    del view
    arrays[0].close()
    gc.collect()
    assert open_fd_count() == before_fds
