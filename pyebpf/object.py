"""Object: everything one :func:`pyebpf.load` created (programs, maps, BTF, links)."""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import OptionError, PyebpfError
from .maps.map import Map, StructOpsMap
from .program import Program
from .sys.fd import FD
from .sys.mm import mmap_fd
from .uapi import BPF_F_MMAPABLE

if TYPE_CHECKING:
    from .btf.spec import BTF
    from .links.base import Link
    from .links.struct_ops import StructOpsLink
    from .obj.object import ObjectSpec
    from .obj.spec import VariableSpec

__all__ = ["Globals", "Object", "StructOpsLink"]


class Object:
    """A loaded BPF object. A context manager: leaving ``with`` closes everything it owns.

    ``programs`` and ``maps`` are read-only mappings by name, ``globals`` reads and
    writes global variables by name, ``attach()`` auto-attaches programs by their
    SEC() names (libbpf's rules); the links it makes are closed with the object.
    Without ``close()``, each fd closes when its own Python object is collected, so a
    program taken out of a dropped Object stays usable.
    """

    def __init__(self, spec: ObjectSpec, *, programs: Mapping[str, Program], maps: Mapping[str, Map],
                 btf_fd: FD | None = None, pins: list[str] | None = None) -> None:
        self.spec = spec
        self.name: str = spec.name
        self._programs = dict(programs)
        self._maps = dict(maps)
        self.programs: Mapping[str, Program] = MappingProxyType(self._programs)
        self.maps: Mapping[str, Map] = MappingProxyType(self._maps)
        self.btf_fd = btf_fd
        self.pins_created = list(pins or [])  # by-name map pins this load made (kept on close)
        self.links: dict[str, Link] = {}
        self.attach_skipped: dict[str, str] = {}
        # Globals gets what it needs, not the Object: a back reference would make a cycle, and
        # an Object dropped without close() must be released by reference counting at once
        self.globals = Globals(spec, self.maps, self.name)
        self._closed = False

    @property
    def btf(self) -> BTF | None:
        """The object's BTF (types of maps, globals and events)."""
        return self.spec.btf

    # -- attach ---------------------------------------------------------------------------------

    def attach(self) -> dict[str, Link]:
        """Auto-attach every loaded program whose SEC() row allows it, and every struct_ops map.

        Returns {name: Link} for what this call attached; ``attach_skipped`` records
        each skipped program with the reason. On a failure, the links made by this
        call are closed and the error propagates.
        """
        if self._closed:
            raise PyebpfError(f"object {self.name!r} is closed: nothing to attach")
        from .links import AttachSkipped, auto_attach

        made: dict[str, Link] = {}
        try:
            for name, prog in self._programs.items():
                if name in self.links:
                    continue
                spec = prog.spec
                if spec is not None and not spec.autoattach:
                    self.attach_skipped[name] = (
                        "autoattach is off" if spec.sec_def is not None and spec.sec_def.attach
                        else f"SEC({spec.section!r}) is not auto-attachable")
                    continue
                try:
                    link = auto_attach(prog)
                except AttachSkipped as e:
                    self.attach_skipped[name] = e.reason
                    continue
                if link is None:
                    self.attach_skipped[name] = "not auto-attachable"
                    continue
                made[name] = link
            for name, m in self._maps.items():
                if isinstance(m, StructOpsMap) and name not in self.links and m.value_bytes:
                    made[name] = self.attach_struct_ops(name, _record=False)
        except BaseException:
            for link in made.values():
                try:
                    link.close()
                except Exception:
                    pass
            raise
        self.links.update(made)
        return made

    def attach_struct_ops(self, map_name: str, *, _record: bool = True) -> StructOpsLink:
        """Register a struct_ops map with the kernel (libbpf's bpf_map__attach_struct_ops).

        A map from SEC(".struct_ops.link") gets a bpf link (pin, ``update_map``, ``info``);
        a plain SEC(".struct_ops") map is registered by its value and unregistered on close.
        """
        from .links.struct_ops import attach_struct_ops

        if self._closed:
            raise PyebpfError(f"object {self.name!r} is closed: cannot attach {map_name!r}")
        m = self._maps.get(map_name)
        if not isinstance(m, StructOpsMap) or not m.value_bytes:
            raise OptionError(f"{map_name!r} is not a loaded struct_ops map")
        link = attach_struct_ops(m)
        if _record:
            self.links[map_name] = link
        return link

    # -- lifetime -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Detach links, close programs, maps (and their mmaps) and the BTF fd.

        Pins stay: a pinned map outlives the process, as in libbpf.
        """
        if self._closed:
            return
        self._closed = True
        # close everything, then report the first failure: one stubborn resource (a live
        # memoryview of an mmap'd map) must not keep the others open
        errors: list[BaseException] = []

        def attempt(close: Any) -> None:
            try:
                close()
            except Exception as e:
                errors.append(e)

        for link in list(self.links.values()):
            attempt(link.close)
        self.links.clear()
        attempt(self.globals._close)
        for p in self._programs.values():
            attempt(p.close)
        for m in self._maps.values():
            attempt(m.close)
        if self.btf_fd is not None:
            attempt(self.btf_fd.close)
        if errors:
            raise PyebpfError(f"closing object {self.name!r}: {errors[0]} "
                              f"({len(errors)} error(s); everything else was closed)") from errors[0]

    def __enter__(self) -> Object:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (f"<Object {self.name!r}{state} programs={list(self._programs)} "
                f"maps={list(self._maps)} links={len(self.links)}>")


class Globals(Mapping[str, Any]):
    """Global variables of a loaded object by name (``obj.globals["x"]``).

    Reads and writes go through the data maps' memory mapping when the map is
    mmapable (as libbpf's skeleton does), otherwise through a map lookup/update of
    key 0. Values decode through BTF when the object has it; ``get_bytes``/``set_bytes``
    always work on raw bytes. ``.rodata``/``.kconfig`` are frozen: set them before load
    with ``load(..., globals={...})``.
    """

    def __init__(self, spec: ObjectSpec, maps: Mapping[str, Map], name: str) -> None:
        self._spec = spec
        self._maps = maps
        self._name = name
        self._mmaps: dict[str, mmap.mmap] = {}
        self._closed = False

    def _var(self, name: str) -> VariableSpec:
        if self._closed:
            raise PyebpfError(f"global {name!r}: object {self._name!r} is closed")
        var = self._spec.variables.get(name)
        if var is None:
            raise KeyError(name)
        return var

    def _map(self, var: VariableSpec) -> Map:
        m = self._maps.get(var.map_name)
        if m is None:
            raise OptionError(f"global {var.name!r}: its map {var.map_name!r} was not created")
        return m

    def _view(self, m: Map, writable: bool) -> mmap.mmap | None:
        if not m.flags & BPF_F_MMAPABLE:
            return None
        readonly = _frozen(m)
        if writable and readonly:
            return None
        mm = self._mmaps.get(m.name)
        if mm is not None:
            return mm
        page = mmap.PAGESIZE
        size = (m.value_size + page - 1) // page * page
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        mm = mmap_fd(m.fd.fileno(), size, prot, what=f"global data map {m.name!r}")
        self._mmaps[m.name] = mm
        return mm

    def get_bytes(self, name: str) -> bytes:
        """The variable's current bytes."""
        var = self._var(name)
        m = self._map(var)
        mm = self._view(m, False)
        if mm is not None:
            return mm[var.offset:var.offset + var.size]
        raw = m.ops.lookup(b"\0\0\0\0")
        if raw is None:
            raise OptionError(f"global {name!r}: map {m.name!r} has no value")
        return raw[var.offset:var.offset + var.size]

    def set_bytes(self, name: str, raw: bytes) -> None:
        """Overwrite the variable with ``raw`` (exactly its size)."""
        var = self._var(name)
        m = self._map(var)
        if len(raw) != var.size:
            raise OptionError(f"global {name!r} is {var.size} bytes, got {len(raw)}")
        if _frozen(m):
            raise OptionError(f"global {name!r} lives in {m.name!r}, which is read-only after "
                              "load; set it before load with load(..., globals={...})")
        mm = self._view(m, True)
        if mm is not None:
            mm[var.offset:var.offset + var.size] = raw
            return
        cur = bytearray(m.ops.lookup(b"\0\0\0\0") or bytes(m.value_size))
        cur[var.offset:var.offset + var.size] = raw
        m.ops.update(b"\0\0\0\0", bytes(cur), 0)

    def _codec(self, var: VariableSpec) -> Any:
        btf = self._spec.btf
        if btf is None:
            return None
        from .btf.codec import codec_for

        try:
            c = codec_for(btf, var.btf_type_id)
        except PyebpfError:
            return None
        return c if c.size == var.size else None

    def __getitem__(self, name: str) -> Any:
        var = self._var(name)
        raw = self.get_bytes(name)
        c = self._codec(var)
        return c.decode(raw) if c is not None else raw

    def __setitem__(self, name: str, value: Any) -> None:
        var = self._var(name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            c = self._codec(var)
            if c is None:
                raise OptionError(f"global {name!r}: no BTF type to encode {value!r}; pass bytes")
            raw = c.encode(c.coerce(value, name))
        self.set_bytes(name, raw)

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec.variables)

    def __len__(self) -> int:
        return len(self._spec.variables)

    def _close(self) -> None:
        self._closed = True
        for mm in self._mmaps.values():
            try:
                mm.close()
            except (BufferError, ValueError):  # a live memoryview keeps it open; GC finishes it
                pass
        self._mmaps.clear()

    def __repr__(self) -> str:
        return f"<Globals of {self._name!r}: {list(self._spec.variables)}>"


def _frozen(m: Map) -> bool:
    spec = m.spec
    return spec is not None and spec.extra.get("libbpf_type") in ("rodata", "kconfig")


def __getattr__(name: str) -> Any:
    # StructOpsLink moved to pyebpf.links.struct_ops; imported on demand so that loading
    # an object does not import the links package
    if name == "StructOpsLink":
        from .links.struct_ops import StructOpsLink

        return StructOpsLink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
