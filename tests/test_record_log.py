"""pyebpf._record (hand-written data classes) and pyebpf._log (loggers that import
logging only when it matters): both exist for start-up time, and must not change
behaviour."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pyebpf._record import Frozen, Record, replace
from pyebpf.btf.types import Const, Int, Kind, Member, Struct, Volatile
from pyebpf.obj.sections import match_section

ROOT = Path(__file__).resolve().parent.parent


def test_record_eq_repr_and_unhashable() -> None:
    a = Struct("s", 8, [Member("x", 1, 0)])
    b = Struct("s", 8, [Member("x", 1, 0)])
    assert a == b and a.kind == Kind.STRUCT
    b.members[0].bit_offset = 32
    assert a != b
    assert repr(a) == "Struct(name='s', size=8, members=[Member(name='x', type=1, bit_offset=0, " \
                      "bitfield_size=0)], bitfield_encoding=False)"
    with pytest.raises(TypeError):
        hash(a)
    # same fields, different kinds: never equal
    assert Const(3) != Volatile(3) and Const(3) == Const(3)
    assert Int("int", 4).bits == 32 and Int("b", 1, bits=1).bits == 1


def test_record_fields_follow_annotations_and_skip_classvars() -> None:
    assert Int._fields == ("name", "size", "encoding", "bits", "offset")
    assert "kind" not in Const._fields and Const._fields == ("type", "name")


class Point(Frozen):
    __slots__ = ("x", "y")
    x: int
    y: int

    def __init__(self, x: int, y: int = 0) -> None:
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)


def test_frozen_is_immutable_hashable_and_copies() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    assert {p, Point(1, 2)} == {Point(1, 2)}
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    assert pickle.loads(pickle.dumps(p)) == p
    assert replace(p, y=7) == Point(1, 7) and p.y == 2


def test_frozen_library_classes_behave() -> None:
    d = match_section("tracepoint/syscalls/sys_enter_openat")
    assert d is not None
    assert hash(d) == hash(copy.deepcopy(d)) and copy.deepcopy(d) == d


def test_replace_copies_and_checks_names() -> None:
    i = Int("int", 4, encoding=1)
    j = replace(i, name="s32")
    assert (j.name, j.size, j.encoding, i.name) == ("s32", 4, 1, "int")
    with pytest.raises(TypeError, match="no field"):
        replace(i, nope=1)


class Plain(Record):
    a: int

    def __init__(self, a: int) -> None:
        self.a = a


def test_record_without_slots_keeps_a_dict() -> None:
    p = Plain(1)
    p.extra = 2  # type: ignore[attr-defined]
    q = replace(p, a=3)
    assert q.a == 3 and q.extra == 2  # type: ignore[attr-defined]


_CHILD = r"""
import sys
import pyebpf
spec = pyebpf.ObjectSpec.from_file(sys.argv[1])
spec.relocate()
assert "logging" not in sys.modules, "relocation imported logging"
assert "dataclasses" not in sys.modules, "relocation imported dataclasses"
print("no-logging-ok")
if len(sys.argv) > 2:  # root: a traced map op must appear once logging is configured
    from pyebpf.maps import HashMap
    from pyebpf.sys import bpf as B
    from pyebpf.uapi import MapType
    with B.map_create(MapType.HASH, 4, 4, 4, name="pyebpf_logtest") as fd:
        m = HashMap.from_fd(fd.dup())
        m.ops.lookup(b"\0\0\0\0")   # before logging exists: silent and cheap
        import logging
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(filename)s %(message)s")
        m.ops.update(b"\1\0\0\0", b"\2\0\0\0", 0)
        m.ops.lookup(b"\1\0\0\0")
        m.close()
"""


def test_logging_is_imported_only_when_used() -> None:
    args = [sys.executable, "-c", _CHILD, str(ROOT / "fixtures" / "opensnoop.bpf.o")]
    if os.geteuid() == 0:
        args.append("root")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "no-logging-ok" in out.stdout
    if os.geteuid() == 0:
        # the DEBUG trace binds to the real logger when logging is imported later
        # (and names the caller's file, not the logger shim's)
        assert "pyebpf.sys bpf.py bpf(BPF_MAP_LOOKUP_ELEM, map_fd=" in out.stdout, out.stdout
        assert "key=01000000) = 0" in out.stdout
        assert "key=00000000" not in out.stdout  # before logging was configured


def test_map_kind_table_names_each_registering_module() -> None:
    """map_class imports only the module of the asked type: the table must agree with
    where each class registers itself."""
    import importlib

    from pyebpf.maps import map as M

    for mod in set(M._KIND_MODULE.values()):
        importlib.import_module(f"pyebpf.maps.{mod}")
    for t, cls in M._CLASSES.items():
        mod = cls.__module__.rpartition(".")[2]
        if cls.__module__.startswith("pyebpf.maps.") and mod != "map":
            assert M._KIND_MODULE.get(t) == mod, (t, cls)
    for t, mod in M._KIND_MODULE.items():
        assert M.map_class(t).__module__ == f"pyebpf.maps.{mod}", t


def test_user_map_class_registration_wins() -> None:
    """A class registered before the built-in kind module is imported still wins."""
    code = (
        "from pyebpf.maps.map import Map, map_class, register_map_class\n"
        "from pyebpf.uapi import MapType\n"
        "import sys\n"
        "assert 'pyebpf.maps.queue' not in sys.modules\n"
        "@register_map_class(MapType.QUEUE)\n"
        "class MyQueue(Map): pass\n"
        "assert map_class(MapType.QUEUE) is MyQueue, map_class(MapType.QUEUE)\n"
        "assert map_class(MapType.STACK).__name__ == 'Stack'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
