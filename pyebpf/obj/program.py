"""ProgramSpec: one BPF program of an object file, as plain editable data."""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Any, ClassVar

from .. import insn as _insn
from .._record import Frozen, Record
from ..errors import SectionError
from ..uapi import AttachType, ProgType
from .sections import SecDef, SecFlag


class MapRefKind(Enum):
    """How an ld_imm64 refers to a map (the loader patches in the map's fd)."""

    FD = "fd"  # BPF_PSEUDO_MAP_FD: the map itself
    VALUE = "value"  # BPF_PSEUDO_MAP_VALUE: an address inside the map's value


_set = object.__setattr__


class MapRef(Frozen):
    """Instruction ``insn_idx`` (an ld_imm64) of the final program references ``map_name``."""

    __slots__ = ("insn_idx", "map_name", "kind", "offset")
    insn_idx: int
    map_name: str
    kind: MapRefKind
    offset: int  # VALUE: byte offset inside the map value (insn[1].imm)

    def __init__(self, insn_idx: int, map_name: str, kind: MapRefKind, offset: int = 0) -> None:
        _set(self, "insn_idx", insn_idx)
        _set(self, "map_name", map_name)
        _set(self, "kind", kind)
        _set(self, "offset", offset)


class RelocType(IntEnum):
    """libbpf's ``enum reloc_type``; the order matters, it breaks ties when sorting."""

    LD64 = 0
    CALL = 1
    DATA = 2
    EXTERN_LD64 = 3
    EXTERN_CALL = 4
    SUBPROG_ADDR = 5
    CORE = 6


class Reloc(Frozen):
    """One recorded relocation (libbpf's ``struct reloc_desc``).

    ``insn_idx`` is relative to the program's first instruction. ``target`` names
    what is referenced: a map (LD64/DATA), an extern (EXTERN_*), nothing for calls.
    """

    __slots__ = ("type", "insn_idx", "sym_off", "target", "symbol")
    type: RelocType
    insn_idx: int
    sym_off: int
    target: str
    symbol: str  # the ELF symbol, for messages

    def __init__(self, type: RelocType, insn_idx: int, sym_off: int = 0, target: str = "",
                 symbol: str = "") -> None:
        _set(self, "type", type)
        _set(self, "insn_idx", insn_idx)
        _set(self, "sym_off", sym_off)
        _set(self, "target", target)
        _set(self, "symbol", symbol)


class ProgramSpec(Record):
    """A BPF program (an entry point, or a ``.text`` subprogram) before loading.

    Before :meth:`ObjectSpec.relocate <pyebpf.obj.object.ObjectSpec.relocate>` runs,
    ``insns`` holds the program's own instructions straight from its ELF section;
    afterwards it holds the final instructions as libbpf would submit them (CO-RE
    applied, subprograms appended, map fds left as 0 placeholders listed in
    ``map_refs``).
    """

    _norepr: ClassVar[frozenset[str]] = frozenset({"relocs", "orig_insns"})
    name: str
    section: str  # SEC() name without the leading "?"
    sec_def: SecDef | None
    type: ProgType
    expected_attach_type: AttachType | None
    attach_target: str | None
    flags: SecFlag
    license: str
    kern_version: int
    insns: bytearray
    func_info: list[Any]
    line_info: list[Any]
    core_results: list[Any]
    map_refs: list[MapRef]
    autoload: bool
    autoattach: bool
    # where the program lives in the object file
    sec_idx: int
    sec_insn_off: int  # first instruction within the ELF section
    is_subprog: bool
    symbol_global: bool
    # global symbol with hidden/internal visibility: libbpf makes its BTF FUNC static
    mark_btf_static: bool
    # relocations recorded at open (section-independent, relative to the program)
    relocs: list[Reloc]
    # the untouched instructions from the ELF section; relocate() starts from these
    orig_insns: bytes

    def __init__(self, name: str, section: str, sec_def: SecDef | None, type: ProgType,
                 expected_attach_type: AttachType | None, attach_target: str | None,
                 flags: SecFlag, license: str, kern_version: int, insns: bytearray,
                 func_info: list[Any] | None = None, line_info: list[Any] | None = None,
                 core_results: list[Any] | None = None, map_refs: list[MapRef] | None = None,
                 autoload: bool = True, autoattach: bool = True, sec_idx: int = 0,
                 sec_insn_off: int = 0, is_subprog: bool = False, symbol_global: bool = True,
                 mark_btf_static: bool = False, relocs: list[Reloc] | None = None,
                 orig_insns: bytes = b"") -> None:
        self.name = name
        self.section = section
        self.sec_def = sec_def
        self.type = type
        self.expected_attach_type = expected_attach_type
        self.attach_target = attach_target
        self.flags = flags
        self.license = license
        self.kern_version = kern_version
        self.insns = insns
        self.func_info = [] if func_info is None else func_info
        self.line_info = [] if line_info is None else line_info
        self.core_results = [] if core_results is None else core_results
        self.map_refs = [] if map_refs is None else map_refs
        self.autoload = autoload
        self.autoattach = autoattach
        self.sec_idx = sec_idx
        self.sec_insn_off = sec_insn_off
        self.is_subprog = is_subprog
        self.symbol_global = symbol_global
        self.mark_btf_static = mark_btf_static
        self.relocs = [] if relocs is None else relocs
        self.orig_insns = orig_insns

    @property
    def tag(self) -> str:
        """The kernel's program tag for the current ``insns`` (16 hex digits)."""
        return _insn.tag(self.insns)

    @property
    def insn_count(self) -> int:
        return len(self.insns) // _insn.INSN_SIZE

    @property
    def sec_insn_cnt(self) -> int:
        return len(self.orig_insns) // _insn.INSN_SIZE

    @property
    def sleepable(self) -> bool:
        return bool(self.flags & SecFlag.SLEEPABLE)

    @property
    def xdp_frags(self) -> bool:
        return bool(self.flags & SecFlag.XDP_FRAGS)

    @property
    def attach_btf(self) -> bool:
        """The attach target is a kernel BTF id (fentry, lsm, tp_btf, iter, ...)."""
        return bool(self.flags & SecFlag.ATTACH_BTF)

    def check_section(self) -> None:
        """Raise :class:`SectionError` when the SEC() name is unknown.

        Opening keeps such programs (libbpf only logs them); loading one is an
        error, so the loader calls this before BPF_PROG_LOAD.
        """
        if self.sec_def is None:
            raise SectionError(f"program {self.name!r}: unrecognized SEC() name "
                               f"{self.section!r}: program type unknown", section=self.section)

    def __repr__(self) -> str:
        kind = self.type.name if isinstance(self.type, ProgType) else str(self.type)
        return (f"ProgramSpec({self.name!r}, section={self.section!r}, type={kind}, "
                f"insns={self.insn_count})")
