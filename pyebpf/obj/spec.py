"""Plain, editable descriptions of what an object file contains.

Nothing here talks to the kernel. A loader turns these specs into kernel objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class PinType(Enum):
    """LIBBPF_PIN_* from a BTF map's ``pinning`` attribute."""

    NONE = 0
    BY_NAME = 1


@dataclass
class MapSpec:
    """One map: from ``.maps`` (BTF-defined), the legacy ``maps`` section, or global data."""

    name: str
    type: int  # BPF_MAP_TYPE_*
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    numa_node: int = 0
    map_extra: int = 0
    pinning: PinType = PinType.NONE
    # BTF type ids in the object's BTF (0 when unknown)
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    # map-in-map: the template of the inner map
    inner: MapSpec | None = None
    # initial slot values: index -> program name (prog_array) or map name (map-in-map)
    init_slots: dict[int, str] = field(default_factory=dict)
    # initial contents for global-data maps (bytearray of value_size)
    data: bytearray | None = None
    # ELF section the map came from (".maps", "maps", ".data", ".rodata.str1.1", ...)
    section: str = ""
    # for global data: the ELF section backing it; for .maps: the symbol name
    autocreate: bool = True
    # struct_ops: kernel struct name it implements; filled in by the parser
    struct_ops_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_global_data(self) -> bool:
        return self.data is not None and self.section.startswith((".data", ".bss", ".rodata", ".kconfig"))


@dataclass
class VariableSpec:
    """A global variable living in a global-data map, addressable by name before load."""

    name: str
    map_name: str  # the global-data map that holds it
    offset: int
    size: int
    btf_type_id: int  # the VAR's type in the object BTF
    linkage: int = 1
    _map: MapSpec | None = field(default=None, repr=False)

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


@dataclass
class ExternSpec:
    """An ``extern`` declared by the BPF program and resolved against the running kernel."""

    name: str
    kind: ExternKind
    weak: bool
    btf_id: int  # VAR or FUNC id in the object BTF
    typed: bool = True  # ksym: typed (BTF) or typeless (__ksym on a `const void`)
    # kconfig: offset inside the .kconfig map
    offset: int = 0
    size: int = 0
    # filled in by resolution:
    resolved: bool = False
    value: Any = None  # kconfig value (int/bytes/bool) or ksym address
    kernel_btf_id: int = 0  # ksym/kfunc: id in the kernel BTF
    kernel_btf_fd_idx: int = 0  # 0 = vmlinux
