"""Plain, editable descriptions of what an object file contains.

Nothing here talks to the kernel. A loader turns these specs into kernel objects.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from .._record import Record


class PinType(Enum):
    """LIBBPF_PIN_* from a BTF map's ``pinning`` attribute."""

    NONE = 0
    BY_NAME = 1


class MapSpec(Record):
    """One map: from ``.maps`` (BTF-defined), the legacy ``maps`` section, or global data."""

    name: str
    type: int  # BPF_MAP_TYPE_*
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    numa_node: int
    map_extra: int
    pinning: PinType
    # BTF type ids in the object's BTF (0 when unknown)
    btf_key_type_id: int
    btf_value_type_id: int
    # map-in-map: the template of the inner map
    inner: MapSpec | None
    # initial slot values: index -> program name (prog_array) or map name (map-in-map)
    init_slots: dict[int, str]
    # initial contents for global-data maps (bytearray of value_size)
    data: bytearray | None
    # ELF section the map came from (".maps", "maps", ".data", ".rodata.str1.1", ...)
    section: str
    # for global data: the ELF section backing it; for .maps: the symbol name
    autocreate: bool
    # struct_ops: kernel struct name it implements; filled in by the parser
    struct_ops_type: str | None
    extra: dict[str, Any]

    def __init__(self, name: str, type: int, key_size: int, value_size: int, max_entries: int,
                 flags: int = 0, numa_node: int = 0, map_extra: int = 0,
                 pinning: PinType = PinType.NONE, btf_key_type_id: int = 0,
                 btf_value_type_id: int = 0, inner: MapSpec | None = None,
                 init_slots: dict[int, str] | None = None, data: bytearray | None = None,
                 section: str = "", autocreate: bool = True, struct_ops_type: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.numa_node = numa_node
        self.map_extra = map_extra
        self.pinning = pinning
        self.btf_key_type_id = btf_key_type_id
        self.btf_value_type_id = btf_value_type_id
        self.inner = inner
        self.init_slots = {} if init_slots is None else init_slots
        self.data = data
        self.section = section
        self.autocreate = autocreate
        self.struct_ops_type = struct_ops_type
        self.extra = {} if extra is None else extra

    @property
    def is_global_data(self) -> bool:
        return self.data is not None and self.section.startswith((".data", ".bss", ".rodata", ".kconfig"))


class VariableSpec(Record):
    """A global variable living in a global-data map, addressable by name before load."""

    _norepr: ClassVar[frozenset[str]] = frozenset({"_map"})
    name: str
    map_name: str  # the global-data map that holds it
    offset: int
    size: int
    btf_type_id: int  # the VAR's type in the object BTF
    linkage: int
    _map: MapSpec | None

    def __init__(self, name: str, map_name: str, offset: int, size: int, btf_type_id: int,
                 linkage: int = 1, _map: MapSpec | None = None) -> None:
        self.name = name
        self.map_name = map_name
        self.offset = offset
        self.size = size
        self.btf_type_id = btf_type_id
        self.linkage = linkage
        self._map = _map

    @property
    def value(self) -> bytes:
        """Raw bytes of the variable's current initial value."""
        assert self._map is not None and self._map.data is not None
        return bytes(self._map.data[self.offset : self.offset + self.size])

    @value.setter
    def value(self, raw: bytes) -> None:
        from ..errors import OptionError

        if self._map is None or self._map.data is None:
            raise OptionError(f"variable {self.name!r} has no backing data")
        if len(raw) != self.size:
            raise OptionError(
                f"variable {self.name!r} is {self.size} bytes, got {len(raw)} bytes"
            )
        self._map.data[self.offset : self.offset + self.size] = raw


class ExternKind(Enum):
    KCONFIG = "kconfig"
    KSYM = "ksym"  # variable (typed or typeless)
    KFUNC = "kfunc"


class ExternSpec(Record):
    """An ``extern`` declared by the BPF program and resolved against the running kernel."""

    name: str
    kind: ExternKind
    weak: bool
    btf_id: int  # VAR or FUNC id in the object BTF
    typed: bool  # ksym: typed (BTF) or typeless (__ksym on a `const void`)
    # kconfig: offset inside the .kconfig map
    offset: int
    size: int
    # filled in by resolution:
    resolved: bool
    value: Any  # kconfig value (int/bytes/bool) or ksym address
    kernel_btf_id: int  # ksym/kfunc: id in the kernel BTF
    kernel_btf_fd_idx: int  # 0 = vmlinux

    def __init__(self, name: str, kind: ExternKind, weak: bool, btf_id: int, typed: bool = True,
                 offset: int = 0, size: int = 0, resolved: bool = False, value: Any = None,
                 kernel_btf_id: int = 0, kernel_btf_fd_idx: int = 0) -> None:
        self.name = name
        self.kind = kind
        self.weak = weak
        self.btf_id = btf_id
        self.typed = typed
        self.offset = offset
        self.size = size
        self.resolved = resolved
        self.value = value
        self.kernel_btf_id = kernel_btf_id
        self.kernel_btf_fd_idx = kernel_btf_fd_idx
