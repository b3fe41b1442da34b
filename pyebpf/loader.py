"""load(): turn an :class:`~pyebpf.obj.object.ObjectSpec` into kernel objects.

The steps follow libbpf's ``bpf_object__load``: apply the caller's overrides, resolve
externs and relocate (pure), load the object's BTF (sanitized for the kernel, extern
DATASECs fixed up, line_info strings added), create the maps (reusing compatible
pins, filling and freezing global data), load the programs (map fds patched in,
func_info/line_info, attach BTF ids from the kernel BTF), then fill prog_array and
struct_ops values. Any failure closes every fd created so far and removes the pins
this load made before the error propagates.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import insn as I
from ._log import get_logger
from .errors import ExternError, ObjectError, OptionError, SyscallError, VerifierError
from .maps.map import Map, StructOpsMap, map_class
from .obj.object import ObjectSpec
from .obj.program import MapRefKind, ProgramSpec, RelocType
from .obj.sections import SecFlag
from .obj.spec import MapSpec, PinType
from .program import Program
from .sys import bpf as _bpf
from .sys import bump_memlock_rlimit
from .sys.fd import FD
from .uapi import (
    BPF_F_SLEEPABLE,
    BPF_F_XDP_HAS_FRAGS,
    BPF_OBJ_NAME_LEN,
    AttachType,
    MapType,
    ProgType,
)

if TYPE_CHECKING:
    from typing import TypedDict

    from .btf.kernel import KernelBTF
    from .btf.write import Features
    from .object import Object

    class _VirtualProbes(TypedDict, total=False):
        """Keyword arguments of resolve_externs for the LINUX_HAS_* externs."""

        has_bpf_cookie: bool
        has_syscall_wrapper: bool

__all__ = ["DEFAULT_PIN_ROOT", "load"]

log = get_logger("pyebpf.loader")

DEFAULT_PIN_ROOT = "/sys/fs/bpf"

# libbpf's bpf_object__create_map: these types take no BTF key/value ids
_NO_BTF_TYPES = frozenset({
    MapType.PERF_EVENT_ARRAY, MapType.CGROUP_ARRAY, MapType.STACK_TRACE, MapType.ARRAY_OF_MAPS,
    MapType.HASH_OF_MAPS, MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP, MapType.XSKMAP,
    MapType.SOCKMAP, MapType.SOCKHASH, MapType.QUEUE, MapType.STACK, MapType.ARENA,
})
_MAP_IN_MAP = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})
_RINGBUFS = frozenset({MapType.RINGBUF, MapType.USER_RINGBUF})


def load(src: str | os.PathLike[str] | bytes | bytearray | ObjectSpec, *,
         globals: Mapping[str, Any] | None = None,
         max_entries: Mapping[str, int] | None = None,
         kconfig: Mapping[str, Any] | None = None,
         btf_path: str | None = None,
         pin_root: str = DEFAULT_PIN_ROOT,
         log_level: int = 0,
         log_size: int = 0,
         btf_features: Features | None = None) -> Object:
    """Load a BPF object into the kernel and return an :class:`~pyebpf.object.Object`.

    ``src`` is a path, the ELF bytes, or an ObjectSpec (edited in place by the options:
    autoload/autocreate and other edits are made on the spec before calling).
    ``globals`` sets global variables by name before load (bytes, or Python values
    encoded through BTF); ``max_entries`` resizes maps by name; ``kconfig`` overrides
    CONFIG_* values (``True``/``False``/int/str); ``btf_path`` is a custom kernel BTF
    for CO-RE, externs and attach targets; ``pin_root`` is where LIBBPF_PIN_BY_NAME maps
    are pinned; ``log_level`` requests a verifier log for every program (kept in
    ``Program.log``). ``btf_features`` (a :class:`pyebpf.btf.write.Features`) overrides
    the probed kernel BTF features (for testing sanitization).
    """
    spec = _as_spec(src)
    return _Loader(spec, btf_path=btf_path, pin_root=pin_root, log_level=log_level,
                   log_size=log_size, btf_features=btf_features).run(globals, max_entries, kconfig)


def _as_spec(src: Any) -> ObjectSpec:
    if isinstance(src, ObjectSpec):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        return ObjectSpec.from_bytes(bytes(src))
    if isinstance(src, (str, os.PathLike)):
        return ObjectSpec.from_file(src)
    raise OptionError(f"load() takes a path, bytes or an ObjectSpec, not {type(src).__name__}")


def _kconfig_str(v: Any) -> str:
    if isinstance(v, bool):
        return "y" if v else "n"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    raise OptionError(f"kconfig values are bool, int or str, not {type(v).__name__}")


def _features() -> Features:
    """The running kernel's BTF features, probed once per process."""
    from .features import btf_features

    return btf_features()


def _uprobe_multi_link() -> bool:
    from .features import uprobe_multi_link  # cached; a failed probe answers False

    return uprobe_multi_link()


def _kernel_supports(feat: str) -> bool:
    """libbpf's kernel_supports(); a failing probe counts as supported (a modern kernel)."""
    from .features import kernel_supports

    try:
        return kernel_supports(feat)
    except Exception as e:
        log.debug("feature probe %s failed (%s); assuming support", feat, e)
        return True


def _virtual_extern_probes(spec: ObjectSpec) -> _VirtualProbes:
    """libbpf's values of the LINUX_HAS_* kconfig externs ``spec`` declares:
    kernel_supports(FEAT_BPF_COOKIE) and kernel_supports(FEAT_SYSCALL_WRAPPER)."""
    from . import features

    kw: _VirtualProbes = {}
    if "LINUX_HAS_BPF_COOKIE" in spec.externs:
        kw["has_bpf_cookie"] = bool(features.bpf_cookie())
    if "LINUX_HAS_SYSCALL_WRAPPER" in spec.externs:
        kw["has_syscall_wrapper"] = bool(features.syscall_wrapper())
    return kw


def adjust_ringbuf_size(size: int) -> int:
    """libbpf's adjust_ringbuf_sz: round up to a power-of-2 number of pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    if size == 0:
        return 0
    if size % page == 0 and (size // page) & (size // page - 1) == 0:
        return size
    mul = 1
    while mul * page <= 0xFFFFFFFF:
        if mul * page > size:
            return mul * page
        mul <<= 1
    return size


def _copy_for_extern_fixup(btf: Any) -> Any:
    """A copy of ``btf`` that fixup_extern_btf may edit: it changes only DATASEC, VAR,
    FUNC and FUNC_PROTO records, so the others are shared (a full deepcopy costs ~80 ms
    on a CO-RE object)."""
    import copy

    from .btf.spec import BTF
    from .btf.types import Kind

    mutable = (Kind.DATASEC, Kind.VAR, Kind.FUNC, Kind.FUNC_PROTO)
    return BTF([copy.deepcopy(t) if t.kind in mutable else t for t in btf], btf.base)


def _kernel_name(m: MapSpec) -> str:
    return str(m.extra.get("kernel_name") or m.name)[: BPF_OBJ_NAME_LEN - 1]


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


class _Loader:
    """The state of one load: everything created so far, for the all-or-nothing rollback."""

    def __init__(self, spec: ObjectSpec, *, btf_path: str | None, pin_root: str, log_level: int,
                 log_size: int, btf_features: Any) -> None:
        self.spec = spec
        self.btf_path = btf_path
        self.pin_root = pin_root
        self.log_level = log_level
        self.log_size = log_size
        self.btf_features = btf_features
        self._kbtf: KernelBTF | None = None
        self.owned: list[Any] = []  # FDs, Maps and Programs to close on failure
        self.new_pins: list[str] = []
        self.btf_fd: FD | None = None
        self.str_off: dict[str, int] = {}
        self.func_info_ok = True
        self.maps: dict[str, Map] = {}
        self.programs: dict[str, Program] = {}
        self.struct_ops_plans: dict[str, Any] = {}

    def run(self, globals: Mapping[str, Any] | None, max_entries: Mapping[str, int] | None,
            kconfig: Mapping[str, Any] | None) -> Object:
        spec = self.spec
        try:
            self._apply_options(globals, max_entries, kconfig)
            self._prepare_struct_ops()
            spec.relocate(self._kbtf if self.btf_path else None)
            # libbpf bumps RLIMIT_MEMLOCK before its first BTF/map/program creation, and
            # only on kernels that still charge BPF memory to it (no FEAT_MEMCG_ACCOUNT);
            # a refused setrlimit is not an error: creation says ENOMEM if it matters
            bump_memlock_rlimit()
            self._load_btf()
            self._create_maps()
            self._load_programs()
            self._fill_slots()
            obj = self._make_object()
        except BaseException:
            self._rollback()
            raise
        return obj

    # -- helpers ----------------------------------------------------------------------------

    def kernel_btf(self) -> KernelBTF:
        if self._kbtf is None:
            from .btf.kernel import kernel_btf

            self._kbtf = kernel_btf(self.btf_path) if self.btf_path else kernel_btf()
        return self._kbtf

    def _rollback(self) -> None:
        for path in reversed(self.new_pins):
            try:
                os.unlink(path)
            except OSError:
                pass
        for o in reversed(self.owned):
            try:
                o.close()
            except Exception as e:  # keep closing the rest
                log.debug("rollback: closing %r failed: %s", o, e)
        self.owned.clear()

    # -- options -------------------------------------------------------------------------------

    def _apply_options(self, globals: Mapping[str, Any] | None, max_entries: Mapping[str, int] | None,
                       kconfig: Mapping[str, Any] | None) -> None:
        spec = self.spec
        if self.btf_path:
            self.kernel_btf()  # fail early on a bad path
        for name, n in (max_entries or {}).items():
            m = spec.maps.get(name)
            if m is None:
                raise OptionError(f"max_entries: no map named {name!r} (maps: {', '.join(spec.maps)})")
            if not isinstance(n, int) or n < 0:
                raise OptionError(f"max_entries[{name!r}] must be a non-negative int")
            if m.is_global_data:
                raise OptionError(f"max_entries: {name!r} is a global-data map and cannot be resized")
            m.max_entries = n
        for name, value in (globals or {}).items():
            self._set_global(name, value)
        if kconfig:
            from .obj import externs as _ext

            merged: dict[str, str] = {}
            if spec.kconfig_map:
                try:
                    merged = dict(_ext.read_kconfig())
                except ExternError as e:  # the caller's values may be all that is needed
                    log.debug("%s: only the kconfig option's values are known", e)
            for k, v in kconfig.items():
                if not k.startswith("CONFIG_"):
                    raise OptionError(f"kconfig key {k!r} must start with CONFIG_")
                merged[k] = _kconfig_str(v)
            spec.resolve_externs(kconfig=merged,
                                 kernel_btf=self._kbtf if self.btf_path else None,
                                 **_virtual_extern_probes(spec))
        elif spec.externs and (self.btf_path or not getattr(spec, "_externs_resolved", False)):
            # resolve here, not in relocate(): LINUX_HAS_* are runtime probes, as in
            # libbpf's bpf_object__resolve_externs, whatever other externs there are
            spec.resolve_externs(kernel_btf=self._kbtf if self.btf_path else None,
                                 **_virtual_extern_probes(spec))

    def _set_global(self, name: str, value: Any) -> None:
        spec = self.spec
        var = spec.variables.get(name)
        if var is None:
            raise OptionError(f"globals: no global variable named {name!r}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            if spec.btf is None:
                raise OptionError(f"globals[{name!r}]: the object has no BTF; pass bytes")
            from .btf.codec import codec_for

            c = codec_for(spec.btf, var.btf_type_id)
            raw = c.encode(c.coerce(value, name))
        var.value = raw

    # -- struct_ops -------------------------------------------------------------------------------

    def _prepare_struct_ops(self) -> None:
        spec = self.spec
        st_maps = [m for m in spec.maps.values()
                   if m.type == MapType.STRUCT_OPS and "struct_ops" in m.extra]
        if not st_maps:
            return
        from .obj.struct_ops import adjust_struct_ops_autoload, resolve_struct_ops

        adjust_struct_ops_autoload(spec.maps, spec.programs)
        for m in st_maps:
            if not m.autocreate:
                continue
            plan = resolve_struct_ops(m, self.kernel_btf())
            self.struct_ops_plans[m.name] = plan
            for pname in plan.dropped_programs:
                p = spec.programs.get(pname)
                if p is not None:
                    p.autoload = False

    # -- BTF ----------------------------------------------------------------------------------------

    def _load_btf(self) -> None:
        spec = self.spec
        if spec.btf is None:
            return
        from .btf.ext import ext_strings
        from .btf.write import marshal_with_offsets

        btf = spec.btf
        if spec.externs:
            from .obj.externs import fixup_extern_btf

            btf = _copy_for_extern_fixup(btf)
            fixup_extern_btf(btf, spec.externs)
        feats = self.btf_features if self.btf_features is not None else _features()
        # libbpf passes func_info/line_info only when the kernel knows BTF FUNC
        self.func_info_ok = feats.has_func
        extra = sorted(ext_strings(spec.btf_ext)) if spec.btf_ext is not None else []
        data, self.str_off = marshal_with_offsets(btf, sanitize=feats, extra_strings=extra)
        try:
            fd = _bpf.btf_load(data)
        except SyscallError as e:
            # libbpf: BTF is optional unless a struct_ops/ext program or map needs it
            mandatory = bool(self.struct_ops_plans) or any(
                p.type in (ProgType.STRUCT_OPS, ProgType.EXT) and p.autoload
                for p in spec.programs.values())
            if mandatory:
                raise
            log.warning("%s: the kernel rejected the object's BTF (%s); loading without it",
                        spec.name, e)
            return
        self.owned.append(fd)
        self.btf_fd = fd

    # -- maps -----------------------------------------------------------------------------------------

    def _check_pin_root(self) -> None:
        from .sys.perf import bpffs_problem

        root = self.pin_root
        if not os.path.isdir(root):
            raise OptionError(f"pin_root {root!r} does not exist; create it on a BPF filesystem "
                              "(mount one with: mount -t bpf bpf /sys/fs/bpf)")
        problem = bpffs_problem(root)
        if problem:
            raise OptionError(f"cannot pin maps under {root!r}: {problem}")

    def _create_maps(self) -> None:
        spec = self.spec
        if any(m.pinning == PinType.BY_NAME and m.autocreate for m in spec.maps.values()):
            self._check_pin_root()
        for m in spec.maps.values():
            if not m.autocreate:
                log.debug("map %r: autocreate off, skipped", m.name)
                continue
            if m.type == MapType.PERF_EVENT_ARRAY and not m.max_entries:
                m.max_entries = _bpf.possible_cpus()
            if m.type in _RINGBUFS:
                m.max_entries = adjust_ringbuf_size(m.max_entries)
            pin_path = None
            fd = None
            if m.pinning == PinType.BY_NAME:
                pin_path = os.path.join(self.pin_root, m.name)
                fd = self._reuse_pinned(m, pin_path)
            reused = fd is not None
            if fd is None:
                fd = self._create_map(m)
            mp = self._wrap_map(m, fd, pin_path if reused else None)
            self.maps[m.name] = mp
            if not reused:
                if m.is_global_data and m.data is not None:
                    self._populate(m, mp)
                if m.type == MapType.ARENA:
                    self._init_arena(m, mp)
                if pin_path is not None:
                    from .pin import pin_fd

                    pin_fd(fd, pin_path)  # the same bpffs/'..' checks as Map.pin
                    self.new_pins.append(pin_path)
                    mp.pin_path = pin_path
        # map-in-map slots: every target map exists now
        for m in spec.maps.values():
            if m.type in _MAP_IN_MAP and m.init_slots and m.name in self.maps:
                outer = self.maps[m.name]
                for idx, target in sorted(m.init_slots.items()):
                    t = self.maps.get(target)
                    if t is None:
                        raise ObjectError(f"map {m.name!r}: slot {idx} refers to map {target!r}, "
                                          "which was not created (autocreate off?)")
                    outer.ops.update(idx.to_bytes(4, "little"), int(t.fd).to_bytes(4, "little"), 0)

    def _wrap_map(self, m: MapSpec, fd: FD, pin_path: str | None) -> Map:
        klass = map_class(m.type)
        value_size = m.value_size
        key_id, value_id = m.btf_key_type_id, m.btf_value_type_id
        plan = self.struct_ops_plans.get(m.name)
        if plan is not None:
            value_size, key_id, value_id = plan.value_size, 0, 0
        mp = klass(fd, name=m.name, type=m.type, key_size=m.key_size, value_size=value_size,
                   max_entries=m.max_entries, flags=m.flags, map_extra=m.map_extra,
                   btf=self.spec.btf, btf_key_type_id=key_id, btf_value_type_id=value_id,
                   spec=m, pin_path=pin_path)
        self.owned.append(mp)
        return mp

    def _reuse_pinned(self, m: MapSpec, path: str) -> FD | None:
        """libbpf's bpf_object__reuse_map: the pinned map's fd if compatible, None if absent."""
        try:
            fd = _bpf.obj_get(path, kind="map")
        except SyscallError as e:
            import errno

            if e.errno == errno.ENOENT:
                return None
            raise
        self.owned.append(fd)
        info = _bpf.map_info(fd)
        flags = m.flags
        if m.type in (MapType.DEVMAP, MapType.DEVMAP_HASH):
            flags |= 0x80  # the kernel reports BPF_F_RDONLY_PROG on every devmap
        want = {"type": m.type, "key_size": m.key_size, "value_size": m.value_size,
                "max_entries": m.max_entries, "map_flags": flags, "map_extra": m.map_extra}
        got = {k: getattr(info, k) for k in want}
        diff = [f"{k} {got[k]} (pinned) != {want[k]} (object)" for k in want if got[k] != want[k]]
        if diff:
            raise ObjectError(f"map {m.name!r}: cannot reuse the map pinned at {path}: parameter "
                              f"mismatch: {'; '.join(diff)}. Remove the stale pin (rm {path}) "
                              "or make the definitions agree")
        log.debug("map %r: reusing the map pinned at %s (id %d)", m.name, path, info.id)
        return fd

    def _create_map(self, m: MapSpec, *, inner: bool = False) -> FD:
        name = _kernel_name(m) if _kernel_supports("PROG_NAME") else ""
        kw: dict[str, Any] = dict(flags=m.flags, numa_node=m.numa_node, map_extra=m.map_extra)
        key_size, value_size, max_entries = m.key_size, m.value_size, m.max_entries
        key_id, value_id = m.btf_key_type_id, m.btf_value_type_id
        if m.type == MapType.PERF_EVENT_ARRAY and not max_entries:
            max_entries = _bpf.possible_cpus()
        plan = self.struct_ops_plans.get(m.name) if not inner else None
        if m.type == MapType.STRUCT_OPS:
            if plan is None:
                raise ObjectError(f"struct_ops map {m.name!r} was not resolved against kernel BTF")
            kw["btf_vmlinux_value_type_id"] = plan.value_type_id
            key_size, value_size, max_entries = 4, plan.value_size, 1
            value_id = 0
            if self.btf_fd is None:
                raise ObjectError(f"struct_ops map {m.name!r} needs the object's BTF loaded")
        if self.btf_fd is not None:
            kw["btf_fd"] = self.btf_fd
            kw["btf_key_type_id"] = key_id
            kw["btf_value_type_id"] = value_id
        if m.type in _NO_BTF_TYPES:
            kw["btf_fd"] = None
            kw["btf_key_type_id"] = kw["btf_value_type_id"] = 0
        inner_fd: FD | None = None
        if m.type in _MAP_IN_MAP:
            if m.inner is None:
                raise ObjectError(f"map {m.name!r}: map-in-map without an inner map definition")
            inner_fd = self._create_map(m.inner, inner=True)
            kw["inner_map_fd"] = inner_fd
        try:
            try:
                fd = _bpf.map_create(m.type, key_size, value_size, max_entries, name=name, **kw)
            except SyscallError as e:
                if not (kw.get("btf_key_type_id") or kw.get("btf_value_type_id")):
                    raise
                # libbpf retries without BTF: older kernels refuse some key/value types
                log.debug("map %r: creation with BTF failed (%s); retrying without BTF", m.name, e)
                kw["btf_fd"] = None
                kw["btf_key_type_id"] = kw["btf_value_type_id"] = 0
                fd = _bpf.map_create(m.type, key_size, value_size, max_entries, name=name, **kw)
        finally:
            if inner_fd is not None:
                inner_fd.close()  # the outer map keeps only the template's shape
                self.owned.remove(inner_fd)
        self.owned.append(fd)
        return fd

    def _init_arena(self, m: MapSpec, mp: Map) -> None:
        """libbpf's bpf_object__create_maps for ARENA: mmap the new arena, then copy the
        ``__arena`` globals' initial data to its end, where the relocations point.

        The mmap must come before any program is loaded: the verifier refuses a
        program using an arena whose user address (user_vm_start) is still unset.
        Not exercised against a kernel here: this machine refuses ARENA map creation
        with EPERM, so only the object-layer side (offsets, data) is tested.
        """
        from .maps.arena import Arena
        from .obj.maps import arena_data_offset

        if not isinstance(mp, Arena):
            return
        data = m.extra.get("arena_data")
        if data:
            mp.write(arena_data_offset(m), data)  # maps the arena on first use
        elif not m.map_extra:
            # with map_extra the kernel fixed user_vm_start at creation already
            mp.memory.release()  # maps it; the mapping stays open in mp

    def _populate(self, m: MapSpec, mp: Map) -> None:
        """libbpf's bpf_object__populate_internal_map: write the initial value, freeze .rodata/.kconfig."""
        assert m.data is not None
        mp.ops.update(b"\0\0\0\0", bytes(m.data), 0)
        if m.extra.get("libbpf_type") in ("rodata", "kconfig"):
            _bpf.map_freeze(mp.fd)

    # -- programs -------------------------------------------------------------------------------------

    def _load_programs(self) -> None:
        spec = self.spec
        rodata = [mp for name, mp in self.maps.items()
                  if spec.maps[name].extra.get("libbpf_type") == "rodata"]
        bind = bool(rodata) and _kernel_supports("PROG_BIND_MAP")
        for p in spec.programs.values():
            if not p.autoload:
                log.debug("program %r: autoload off, skipped", p.name)
                continue
            prog = self._load_program(p)
            self.programs[p.name] = prog
            if bind:
                for mp in rodata:
                    try:
                        _bpf.prog_bind_map(prog.fd, mp.fd)
                    except SyscallError as e:  # libbpf does not fail on this either
                        log.debug("program %r: binding .rodata failed: %s", p.name, e)

    def _attach_btf_id(self, p: ProgramSpec) -> int | None:
        """libbpf's libbpf_find_attach_btf_id for SEC_ATTACH_BTF programs (vmlinux only)."""
        from .btf.types import Kind

        if p.type == ProgType.EXT:
            raise ObjectError(f"program {p.name!r}: freplace programs need a target program "
                              "(attach_prog_fd), which pyebpf.load does not take yet")
        _, slash, target = p.section.partition("/")
        if not slash or not target:
            raise ObjectError(f"program {p.name!r}: no BTF-based attach target is specified in "
                              f"SEC({p.section!r})")
        eat = p.expected_attach_type
        if eat == AttachType.TRACE_RAW_TP:
            name, kind = "btf_trace_" + target, Kind.TYPEDEF
        elif eat in (AttachType.LSM_MAC, AttachType.LSM_CGROUP):
            name, kind = "bpf_lsm_" + target, Kind.FUNC
        elif eat == AttachType.TRACE_ITER:
            name, kind = "bpf_iter_" + target, Kind.FUNC
        else:
            name, kind = target, Kind.FUNC
        kbtf = self.kernel_btf()
        ids = kbtf.find(name, kind)
        if not ids:
            raise ObjectError(f"program {p.name!r}: failed to find kernel BTF type ID of "
                              f"{target!r} ({name!r} is not in the kernel's BTF)")
        return ids[0]

    def _load_program(self, p: ProgramSpec) -> Program:
        from .btf.ext import pack_func_info, pack_line_info

        p.check_section()
        insns = bytearray(p.insns)
        for ref in p.map_refs:
            mp = self.maps.get(ref.map_name)
            if mp is None:
                raise ObjectError(f"program {p.name!r}: instruction {ref.insn_idx} uses map "
                                  f"{ref.map_name!r}, which was not created (autocreate off?)")
            I.set_imm(insns, ref.insn_idx, int(mp.fd))
            if ref.kind == MapRefKind.VALUE:
                I.set_imm(insns, ref.insn_idx + 1, ref.offset)
        prog_type = int(p.type)
        eat = int(p.expected_attach_type) if p.expected_attach_type is not None else 0
        attach_btf_id: int | None = None
        flags = 0
        if p.type == ProgType.UNSPEC:
            raise ObjectError(f"program {p.name!r}: missing BPF program type, check the ELF "
                              f"section name {p.section!r}")
        if p.type == ProgType.STRUCT_OPS:
            att = None
            for plan in self.struct_ops_plans.values():
                att = plan.prog_attach.get(p.name) or att
            if att is None:
                raise ObjectError(f"program {p.name!r}: SEC(\"struct_ops\") program is not "
                                  "referenced by any struct_ops map")
            attach_btf_id, eat = att
        elif p.attach_btf:
            attach_btf_id = self._attach_btf_id(p)
        elif p.flags & SecFlag.USDT and _uprobe_multi_link():
            # libbpf >= 1.3: USDT programs attach through one uprobe_multi link where the
            # kernel has them, so they are loaded for that attach type
            eat = int(AttachType.TRACE_UPROBE_MULTI)
        if p.sleepable:
            flags |= BPF_F_SLEEPABLE
        if p.type == ProgType.XDP and p.xdp_frags:
            flags |= BPF_F_XDP_HAS_FRAGS
        func_info = line_info = b""
        if self.btf_fd is not None and self.func_info_ok:
            if p.func_info:
                func_info = pack_func_info(p.func_info)
            if p.line_info:
                line_info = pack_line_info(p.line_info, self.str_off)
        name = p.name if _kernel_supports("PROG_NAME") else ""
        try:
            res = _bpf.prog_load_with_log(
                prog_type, insns, p.license or "", name=name, expected_attach_type=eat,
                prog_flags=flags, kern_version=p.kern_version, prog_btf_fd=self.btf_fd,
                func_info=func_info, func_info_rec_size=8 if func_info else 0,
                line_info=line_info, line_info_rec_size=16 if line_info else 0,
                attach_btf_id=attach_btf_id or 0, log_level=self.log_level,
                log_size=self.log_size)
        except VerifierError as e:
            explain_verifier_error(e, p, self.spec)
            raise
        except SyscallError as e:
            e.detail = f"program {p.name!r}"
            raise
        self.owned.append(res.fd)
        prog = Program(res.fd, name=p.name, type=prog_type,
                       expected_attach_type=eat if eat or p.expected_attach_type is not None
                       or p.type == ProgType.STRUCT_OPS else None,
                       spec=p, attach_btf_id=attach_btf_id, log=res.log)
        return prog

    # -- after programs -------------------------------------------------------------------------

    def _fill_slots(self) -> None:
        """libbpf's bpf_object_init_prog_arrays, plus struct_ops values with program fds."""
        for name, mp in self.maps.items():
            m = self.spec.maps[name]
            if m.type == MapType.PROG_ARRAY and m.init_slots:
                for idx, pname in sorted(m.init_slots.items()):
                    prog = self.programs.get(pname)
                    if prog is None:
                        raise ObjectError(f"map {name!r}: slot {idx} refers to program {pname!r}, "
                                          "which was not loaded (autoload off?)")
                    mp.ops.update(idx.to_bytes(4, "little"), int(prog.fd).to_bytes(4, "little"), 0)
            plan = self.struct_ops_plans.get(name)
            if plan is not None and isinstance(mp, StructOpsMap):
                value = bytearray(plan.value)
                for member, off in plan.func_offsets.items():
                    prog = self.programs.get(plan.programs[member])
                    if prog is None:
                        raise ObjectError(f"struct_ops map {name!r}: member {member!r} needs program "
                                          f"{plan.programs[member]!r}, which was not loaded")
                    value[off:off + 8] = _u64(int(prog.fd))
                mp.value_bytes = bytes(value)
                mp.struct_ops_plan = plan  # type: ignore[attr-defined]

    def _make_object(self) -> Object:
        from .object import Object

        obj = Object(self.spec, programs=self.programs, maps=self.maps, btf_fd=self.btf_fd,
                     pins=list(self.new_pins))
        for prog in self.programs.values():
            import weakref

            prog._obj = weakref.ref(obj)
        self.owned.clear()
        return obj


# -- verifier log explanations -------------------------------------------------------------------


def source_line_for(p: ProgramSpec, insn_idx: int | None) -> str | None:
    """``file:line: text`` of the nearest line_info record at or before ``insn_idx``."""
    if insn_idx is None or not p.line_info:
        return None
    best = None
    for li in p.line_info:
        if li.insn_off <= insn_idx and (best is None or li.insn_off >= best.insn_off):
            best = li
    if best is None:
        return None
    return f"{best.file_name}:{best.line}:{best.col}: {best.line_text.strip()}"


def explain_verifier_error(e: VerifierError, p: ProgramSpec, spec: ObjectSpec) -> None:
    """Add the program name, the C source line and libbpf-style words for poisoned
    CO-RE relocations and unresolved kfuncs to ``e`` (in place)."""
    from .sys.bpf import CORE_POISON_IMM, KFUNC_POISON_BASE, MAP_POISON_BASE, explain_log

    e.program = p.name
    e.detail = f"program {p.name!r}"
    e.source_line = source_line_for(p, e.insn_index)
    core_at = {c.insn_idx: c for c in p.core_results}

    def explain(idx: int, imm: int) -> str | None:
        if imm == CORE_POISON_IMM:
            c = core_at.get(idx)
            if c is None:
                return None
            r = c.result
            relo_no = _relo_number(spec, r)
            kind = getattr(r.relo.kind, "name", str(r.relo.kind)).lower()
            msg = (f"instruction {idx}: <invalid CO-RE relocation>: failed to resolve CO-RE "
                   f"relocation{f' #{relo_no}' if relo_no is not None else ''} ({kind}) "
                   f"{r.local_spec}: the kernel's BTF has no match for it, and the code using "
                   "it is not guarded by bpf_core_field_exists()/bpf_core_type_exists()")
            where = source_line_for(p, idx)
            if where:
                msg += f"\n  at {where}"
            for line in getattr(r, "explain", None) or []:
                msg += f"\n  {line}"
            return msg
        if KFUNC_POISON_BASE <= imm < KFUNC_POISON_BASE + 1_000_000:
            # libbpf >= 1.2's poisoned call of an unresolved weak kfunc, reached by the verifier
            ext = _extern_by_index(spec, imm - KFUNC_POISON_BASE)
            if ext is None:
                return None
            return _kfunc_note(p, idx, ext)
        if MAP_POISON_BASE <= imm < MAP_POISON_BASE + 1_000_000:
            names = list(spec.maps)
            i = imm - MAP_POISON_BASE
            if i < len(names):
                return (f"instruction {idx}: <invalid BPF map reference>: map {names[i]!r} is "
                        "referenced but wasn't created (autocreate off?)")
        return None

    notes = explain_log(e.log, explain)
    if _KFUNC_NOT_ELIMINATED in (e.log or ""):
        # libbpf 1.1 leaves an unresolved weak kfunc as "call kfunc#0"; the kernel then
        # names no instruction, so find the live call sites ourselves
        sites = _unresolved_kfunc_calls(p, spec)
        if sites and e.insn_index is None:
            e.insn_index = sites[0][0]
            e.source_line = source_line_for(p, e.insn_index)
        notes.extend(_kfunc_note(p, idx, name) for idx, name in sites)
    if notes:
        e.notes = notes


def _kfunc_note(p: ProgramSpec, idx: int, name: str) -> str:
    # libbpf's fixup_verifier_log words first, then what to do about it
    msg = (f"instruction {idx}: <invalid kfunc call>: kfunc {name!r} is referenced but wasn't "
           "resolved: it is a weak extern this kernel does not provide, and the call was not "
           f"eliminated as dead code: guard it with bpf_ksym_exists({name})")
    where = source_line_for(p, idx)
    return msg + (f"\n  at {where}" if where else "")


_KFUNC_NOT_ELIMINATED = "invalid kernel function call not eliminated"


def _unresolved_kfunc_calls(p: ProgramSpec, spec: ObjectSpec) -> list[tuple[int, str]]:
    """(instruction index, kfunc name) of each ``call kfunc#0`` left by an unresolved weak
    kfunc in ``p``'s relocated code."""
    names = {r.insn_idx: r.target for r in p.relocs if r.type == RelocType.EXTERN_CALL}
    out = []
    for idx, ins in enumerate(I.iter_insns(p.insns)):
        if ins.is_call and ins.src == I.BPF_PSEUDO_KFUNC_CALL and ins.imm == 0:
            ext = spec.externs.get(names.get(idx, ""))
            out.append((idx, ext.name if ext is not None else "<unknown kfunc>"))
    return out


def _relo_number(spec: ObjectSpec, r: Any) -> int | None:
    ext = spec.btf_ext
    if ext is None:
        return None
    for relos in ext.core_relos.values():
        for i, relo in enumerate(relos):
            if relo is r.relo:
                return i
    return None


def _extern_by_index(spec: ObjectSpec, index: int) -> str | None:
    for e in spec.externs.values():
        if getattr(e, "index", None) == index:
            return e.name
    return None
