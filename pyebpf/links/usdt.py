"""USDT attach, as libbpf's usdt.c does it: uprobes on every site of a probe, argument specs in
the object's usdt.bpf.h maps.

A program built with ``<bpf/usdt.bpf.h>`` finds the argument layout of the site that fired
through a *spec id*: the uprobe's BPF cookie when the object was built to use cookies
(``LINUX_HAS_BPF_COOKIE``), else a lookup of the probed address in
``__bpf_usdt_ip_to_spec_id``. The spec itself (``struct __bpf_usdt_spec``) lives in the
array ``__bpf_usdt_specs`` at that id. Spec ids are handed out per Object, shared by all its
USDT links and reused after a link closes (libbpf's usdt_manager). Sites whose argument
strings are the same share one spec id within one attachment.

A site with a semaphore gets its uprobe's ``ref_ctr_offset``: the kernel increments the
semaphore while the uprobe exists, so the traced program sees it non-zero.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .._log import get_logger
from ..errors import OptionError, PyebpfError, SyscallError
from ..obj.libpath import LibraryNotFound, resolve_binary
from ..obj.usdt import (
    LIBBPF_1_1_LAYOUT,
    SpecLayout,
    UsdtElf,
    UsdtError,
    UsdtProbe,
    encode_usdt_spec,
    find_usdt_probes,
    read_usdt_elf,
    spec_layout_from_btf,
    vma_address,
    vma_segments,
)
from ..sys import bpf as _bpf
from ..uapi import BPF_ANY, BPF_NOEXIST, AttachType, ProgType
from .base import (
    AttachError,
    AttachSkipped,
    Link,
    LinkInfo,
    ProgramLike,
    ProgRef,
    link_info,
    prog_label,
)

__all__ = ["UsdtLink", "attach_usdt", "auto_attach_usdt", "parse_usdt_section"]

_log = get_logger("pyebpf.links")

SPECS_MAP = "__bpf_usdt_specs"
IP_MAP = "__bpf_usdt_ip_to_spec_id"
# the uprobe PMU can take a semaphore (ref_ctr) offset: kernel 4.20+
REF_CTR_SYSFS = "/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset"
_U64 = (1 << 64) - 1


class UsdtLink(Link):
    """One logical USDT attachment: a uprobe per probe site, or one uprobe_multi link.

    ``links`` are the underlying uprobe links (one multi link when the program was loaded
    for uprobe_multi); ``probes`` the resolved sites; ``spec_ids`` the ids this link holds
    in the object's ``__bpf_usdt_specs``. ``close()`` detaches every uprobe, removes the
    link's ``__bpf_usdt_ip_to_spec_id`` entries and gives its spec ids back.
    """

    kind = "usdt"

    def __init__(self, program: Any, manager: _UsdtManager, *, path: str, provider: str,
                 name: str, pid: int | None, cookie: int) -> None:
        super().__init__(None, program, target=f"{path}:{provider}:{name}")
        self.path = path
        self.provider = provider
        self.name = name
        self.pid = pid
        self.cookie = cookie
        self.probes: list[UsdtProbe] = []
        self.spec_ids: list[int] = []
        self.links: list[Link] = []
        self.multi = False
        self._ip_keys: list[bytes] = []
        self._manager: _UsdtManager | None = manager

    @property
    def closed(self) -> bool:
        return self._manager is None

    def info(self) -> LinkInfo:
        """The kernel's view of the uprobe_multi link (only that mode has one bpf link)."""
        if self.closed:
            raise AttachError("cannot query link info: the link is closed",
                              program=prog_label(self.program))
        if self.multi and self.links and self.links[0].fd is not None:
            return link_info(self.links[0].fd)
        raise AttachError(f"a USDT link made of {len(self.links)} uprobe(s) has no single bpf "
                          "link; query .links[i].info() for each uprobe",
                          program=prog_label(self.program))

    def pin(self, path: str) -> None:
        """Refused: the argument specs a USDT link relies on are managed by this process."""
        raise AttachError("a USDT link cannot be pinned: its argument specs live in the "
                          "object's usdt.bpf.h maps and are released when this process closes "
                          "the link (libbpf cannot pin USDT links either)",
                          program=prog_label(self.program))

    def update(self, new_prog: ProgRef, old_prog: ProgRef | None = None) -> None:
        raise AttachError("the kernel cannot replace the program of uprobes (USDT link); "
                          "detach and attach the new program instead",
                          program=prog_label(self.program))

    def detach(self) -> None:
        """Detach now: the same as :meth:`close` for a USDT link."""
        self.close()

    def close(self) -> None:
        """Detach every uprobe, drop the ip-map entries and free the spec ids; idempotent."""
        man, self._manager = self._manager, None
        if man is None:
            return
        for link in self.links:
            try:
                link.close()
            except PyebpfError as e:  # keep releasing the rest
                _log.debug("closing a USDT uprobe failed: %s", e)
        man.release(self._ip_keys, self.spec_ids)
        self._ip_keys = []

    def __repr__(self) -> str:
        parts = [repr(self.target)]
        prog = prog_label(self.program)
        if prog:
            parts.append(f"prog={prog}")
        if self.closed:
            parts.append("closed")
        else:
            mode = "uprobe_multi" if self.multi else "uprobes"
            parts.append(f"{len(self.probes)} site{'s' * (len(self.probes) != 1)} via {mode}")
            parts.append(f"spec_ids={self.spec_ids}")
        return f"UsdtLink({', '.join(parts)})"


class _UsdtManager:
    """Per-Object spec id allocator and the two usdt.bpf.h maps (libbpf's usdt_manager)."""

    def __init__(self, specs: Any, ip_map: Any, layout: SpecLayout, cookie_mode: bool,
                 kernel_cookies: bool) -> None:
        self.specs = specs
        self.ip_map = ip_map
        self.layout = layout
        self.cookie_mode = cookie_mode  # the BPF side reads the spec id from the BPF cookie
        self.kernel_cookies = kernel_cookies  # the kernel can attach BPF cookies to uprobes
        self.max_ids = int(getattr(specs, "max_entries", 0) or 0)
        self.free_ids: list[int] = []
        self.next_id = 0
        self.lock = threading.Lock()

    def allocate(self) -> int:
        with self.lock:
            if self.free_ids:
                return self.free_ids.pop()
            if self.next_id >= self.max_ids:
                raise AttachError(
                    f"all {self.max_ids} USDT spec ids of this object are in use ({SPECS_MAP} "
                    "is full): close other USDT links, or build the BPF object with a larger "
                    "BPF_USDT_MAX_SPEC_CNT (or pass max_entries={'__bpf_usdt_specs': N} to "
                    "load)")
            self.next_id += 1
            return self.next_id - 1

    def release(self, ip_keys: Sequence[bytes], spec_ids: Sequence[int]) -> None:
        # the spec map entries stay: the next user of an id overwrites them, as in libbpf;
        # ip entries must go, or a later attach at the same address collides
        for key in ip_keys:
            try:
                _bpf.map_delete_elem(self.ip_map.fd, key)
            except (PyebpfError, OSError, ValueError) as e:  # the map may be closed already
                _log.debug("USDT ip-map delete failed: %s", e)
        with self.lock:
            self.free_ids.extend(spec_ids)


# Object -> its manager; weak so a closed, dropped Object takes its manager along
_managers: weakref.WeakKeyDictionary[Any, _UsdtManager] = weakref.WeakKeyDictionary()
_managers_lock = threading.Lock()


def _kconfig_cookie(obj: Any) -> bool | None:
    """The LINUX_HAS_BPF_COOKIE value the loaded object's programs see, or None if unknown.

    Read from the .kconfig image the loader resolved into the spec and created the
    (read-only) map from: no syscall, so it also works where map reads are not allowed.
    """
    try:
        spec = obj.spec
        btf = spec.btf
        kmaps = [m for m in spec.maps.values() if m.section == ".kconfig"]
        if btf is None or not kmaps:
            return None
        off = None
        for tid in btf.find(".kconfig"):
            for v in getattr(btf.type(tid), "vars", None) or ():
                if btf.name_of(v.type) == "LINUX_HAS_BPF_COOKIE":
                    off = v.offset
        data = kmaps[0].data
        if off is None or data is None or off >= len(data):
            return None
        return bool(data[off] != 0)
    except (AttributeError, KeyError, LookupError, TypeError, ValueError, PyebpfError) as e:
        _log.debug("cannot read LINUX_HAS_BPF_COOKIE of the object: %s", e)
        return None


def _kernel_has_cookies() -> bool:
    from .. import features

    try:
        return bool(features.bpf_cookie())
    except Exception as e:  # a failing probe means a kernel older than the probe's helper
        _log.debug("bpf_cookie feature probe failed: %s", e)
        return False


def _manager(prog: Any, label: str | None) -> _UsdtManager:
    obj = getattr(prog, "object", None)
    if obj is None:
        raise AttachError("USDT attach needs the Object that loaded the program (its "
                          f"{SPECS_MAP} and {IP_MAP} maps); load it with pyebpf.load() and "
                          "keep the Object open", program=label)
    with _managers_lock:
        man = _managers.get(obj)
        if man is not None:
            return man
        maps = getattr(obj, "maps", {})
        specs, ip_map = maps.get(SPECS_MAP), maps.get(IP_MAP)
        if specs is None or ip_map is None:
            missing = [n for n, m in ((SPECS_MAP, specs), (IP_MAP, ip_map)) if m is None]
            raise AttachError(f"the program's object has no {' and no '.join(missing)} map: "
                              "a USDT program must include <bpf/usdt.bpf.h> and read its "
                              "arguments with bpf_usdt_arg() (the header defines those maps)",
                              program=label)
        layout = _layout(obj, specs, label)
        kconf = _kconfig_cookie(obj)
        # the program reads the spec id from the cookie iff its LINUX_HAS_BPF_COOKIE is
        # true; a kernel without cookies still works through the ip map
        kernel_cookies = True if kconf else _kernel_has_cookies()
        cookie_mode = kernel_cookies if kconf is None else kconf
        man = _UsdtManager(specs, ip_map, layout, cookie_mode, kernel_cookies)
        _managers[obj] = man
        return man


def _layout(obj: Any, specs: Any, label: str | None) -> SpecLayout:
    spec = getattr(obj, "spec", None)
    layout = spec_layout_from_btf(spec.btf) if spec is not None and spec.btf is not None else None
    if layout is None:
        layout = LIBBPF_1_1_LAYOUT
    vsize = getattr(specs, "value_size", layout.size)
    if vsize != layout.size:
        raise AttachError(f"{SPECS_MAP} has {vsize}-byte values, but struct __bpf_usdt_spec is "
                          f"{layout.size} bytes: the object's usdt.bpf.h is not one pyebpf "
                          "knows and its BTF does not describe the struct", program=label)
    return layout


# --- section names ----------------------------------------------------------------------------


def parse_usdt_section(section: str) -> tuple[str, str, str] | None:
    """``usdt/PATH:PROVIDER:NAME`` -> (path, provider, name); None for a bare ``usdt``/``usdt.s``.

    Raises OptionError for any other shape (libbpf: sscanf "usdt/%m[^:]:%m[^:]:%m[^:]").
    """
    if section in ("usdt", "usdt.s"):
        return None
    prefix, slash, rest = section.partition("/")
    if prefix not in ("usdt", "usdt.s") or not slash:
        raise OptionError(f"invalid section {section!r}, expected "
                          "SEC(\"usdt/<path>:<provider>:<name>\")")
    parts = rest.split(":")
    if len(parts) < 3 or not all(parts[:3]):
        raise OptionError(f"invalid section {section!r}, expected "
                          "SEC(\"usdt/<path>:<provider>:<name>\")")
    return parts[0], parts[1], parts[2]


def auto_attach_usdt(prog: Any, section: str, target: str | None = None, *,
                     pid: int | None = None, cookie: int = 0) -> UsdtLink:
    """Attach from ``SEC("usdt/PATH:PROVIDER:NAME")``: to every process, as libbpf's
    attach_usdt, unless ``pid`` says otherwise; ``cookie`` as in :func:`attach_usdt`.

    A bare ``SEC("usdt")`` raises AttachSkipped; a malformed section AttachError.
    """
    label = prog_label(prog)
    try:
        parsed = parse_usdt_section(section)
    except OptionError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if parsed is None:
        raise AttachSkipped(f"SEC({section!r}) names no USDT probe; attach it with "
                            "attach_usdt(binary, provider, name)", program=label)
    path, provider, name = parsed
    return attach_usdt(prog, path, provider, name, pid=pid, cookie=cookie)


# --- attach -----------------------------------------------------------------------------------


def _check_args(prog: Any, binary: str, provider: str, name: str, pid: int | None,
                cookie: int) -> str | None:
    label = prog_label(prog)
    ptype = getattr(prog, "type", None)
    if ptype is not None and ptype != ProgType.KPROBE:
        raise AttachError(f"USDT needs a program of type KPROBE (SEC(\"usdt\") or "
                          f"SEC(\"usdt/<path>:<provider>:<name>\")), but this one is "
                          f"{getattr(ptype, 'name', ptype)}", program=label)
    for what, v in (("binary", binary), ("provider", provider), ("name", name)):
        if not isinstance(v, str) or not v:
            raise OptionError(f"USDT {what} must be a non-empty string, not {v!r}")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise OptionError(f"pid must be an int or None, not {pid!r}")
    if not isinstance(cookie, int) or isinstance(cookie, bool) or not -(1 << 63) <= cookie <= _U64:
        raise OptionError(f"the USDT cookie must be a 64-bit integer, not {cookie!r}")
    return label


def _resolve(binary: str, pid: int, label: str | None) -> str:
    try:
        path = resolve_binary(binary, pid if pid > 0 else None)
    except LibraryNotFound as e:
        raise AttachError(str(e), program=label, cause=e) from e
    return path if path.startswith("/") else os.path.abspath(path)


def _read_elf(path: str, label: str | None) -> UsdtElf:
    try:
        return read_usdt_elf(path)
    except UsdtError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    except OSError as e:
        raise AttachError(f"cannot read {path}: {e.strerror}", program=label, cause=e) from e


def _abs_ips(elf: UsdtElf, probes: Sequence[UsdtProbe], pid: int, label: str | None) -> list[int]:
    """Run-time addresses of the sites, for the ip-to-spec-id map (no BPF cookies)."""
    if not elf.is_shared:
        return [p.abs_ip for p in probes]
    if pid <= 0:
        raise AttachError(
            f"{elf.path} is position-independent (a shared library or PIE) and the object reads "
            "USDT spec ids by address (LINUX_HAS_BPF_COOKIE is false): its run-time address is "
            "only known for one process, so pass pid=", program=label)
    # a binary reached through the process's root (another mount namespace) shows in its
    # maps under the path inside that namespace
    root = f"/proc/{pid}/root/"
    real = elf.path[len(root) - 1:] if elf.path.startswith(root) else os.path.realpath(elf.path)
    try:
        with open(f"/proc/{pid}/maps") as f:
            segs = vma_segments(f.read(), real)
    except OSError as e:
        raise AttachError(f"cannot read the memory map of pid {pid}: {e.strerror}",
                          program=label, cause=e) from e
    if not segs:
        raise AttachError(f"{real} is not mapped executable in pid {pid}", program=label)
    out = []
    for p in probes:
        ip = vma_address(segs, p.file_offset)
        if ip is None:
            raise AttachError(f"{p.qualname} at file offset {p.file_offset:#x} is in no mapping "
                              f"of {real} in pid {pid}", program=label)
        out.append(ip)
    return out


def attach_usdt(prog: ProgramLike, binary: str, provider: str, name: str, *, pid: int | None = None,
                cookie: int = 0) -> UsdtLink:
    """Attach ``prog`` (built with ``<bpf/usdt.bpf.h>``) to every site of USDT probe
    ``provider:name`` in ``binary`` (a path, or a library/program name searched as libbpf does).

    ``pid`` None: every process; 0: this process; N: that process only. ``cookie`` is what
    ``bpf_usdt_cookie()`` returns in the program (the BPF cookie itself carries the spec id).
    """
    label = _check_args(prog, binary, provider, name, pid, cookie)
    # libbpf: a negative pid means every process, 0 this one
    npid = -1 if pid is None or pid < 0 else (os.getpid() if pid == 0 else pid)
    man = _manager(prog, label)
    path = _resolve(binary, npid, label)
    elf = _read_elf(path, label)
    try:
        probes = find_usdt_probes(elf, provider, name)
        specs = [encode_usdt_spec(p.parse_args(), cookie & _U64, man.layout) for p in probes]
    except UsdtError as e:
        raise AttachError(str(e), program=label, cause=e) from e
    if any(p.sema_offset for p in probes) and not os.path.exists(REF_CTR_SYSFS):
        raise AttachError(f"{provider}:{name} has a semaphore, and this kernel's uprobes cannot "
                          f"maintain one ({REF_CTR_SYSFS} is missing; needs Linux 4.20+)",
                          program=label)
    ips = None if man.cookie_mode else _abs_ips(elf, probes, npid, label)
    multi = getattr(prog, "expected_attach_type", None) == AttachType.TRACE_UPROBE_MULTI

    link = UsdtLink(prog, man, path=path, provider=provider, name=name, pid=pid,
                    cookie=cookie & _U64)
    link.probes = list(probes)
    link.multi = multi
    try:
        ids = _write_specs(man, link, probes, specs, ips, label)
        if multi:
            _attach_multi(prog, link, path, probes, ids, npid)
        else:
            _attach_each(prog, link, man, path, probes, ids, npid)
    except BaseException:
        link.close()
        raise
    return link


def _write_specs(man: _UsdtManager, link: UsdtLink, probes: Sequence[UsdtProbe],
                 specs: Sequence[bytes], ips: Sequence[int] | None,
                 label: str | None) -> list[int]:
    """Allocate spec ids (one per distinct argument string), write them, fill the ip map."""
    by_args: dict[str, int] = {}
    ids = []
    for i, (p, spec) in enumerate(zip(probes, specs, strict=True)):
        sid = by_args.get(p.args)
        if sid is None:
            sid = man.allocate()
            link.spec_ids.append(sid)
            by_args[p.args] = sid
            try:
                man.specs.update_bytes(sid.to_bytes(4, "little"), spec, BPF_ANY)
            except SyscallError as e:
                why = (" (no permission: writing the object's maps needs root or CAP_BPF)"
                       if e.errno in (_errno.EPERM, _errno.EACCES) else "")
                raise AttachError(f"failed to store USDT spec #{sid} for {p.qualname}: {e}{why}",
                                  program=label, cause=e) from e
        ids.append(sid)
        if ips is not None:
            key = (ips[i] & _U64).to_bytes(8, "little")
            try:
                man.ip_map.update_bytes(key, sid.to_bytes(4, "little"), BPF_NOEXIST)
            except SyscallError as e:
                if e.errno == _errno.EEXIST:
                    raise AttachError(
                        f"{p.qualname} at {ips[i]:#x}: another USDT link of this object is "
                        f"attached at the same address (IP collision in {IP_MAP}; without BPF "
                        "cookies one object can attach a site only once)",
                        program=label, cause=e) from e
                if e.errno == _errno.E2BIG:
                    raise AttachError(f"{IP_MAP} is full: build the object with a larger "
                                      "BPF_USDT_MAX_IP_CNT", program=label, cause=e) from e
                raise AttachError(f"failed to map {p.qualname} at {ips[i]:#x} to spec "
                                  f"#{sid}: {e}", program=label, cause=e) from e
            link._ip_keys.append(key)
    return ids


def _attach_each(prog: Any, link: UsdtLink, man: _UsdtManager, path: str,
                 probes: Sequence[UsdtProbe], ids: Sequence[int], pid: int) -> None:
    from .uprobe import attach_uprobe

    for p, sid in zip(probes, ids, strict=True):
        try:
            up = attach_uprobe(prog, path, None, offset=p.file_offset,
                               pid=pid if pid > 0 else None,
                               cookie=sid if man.kernel_cookies else 0,
                               ref_ctr_offset=p.sema_offset)
        except AttachError as e:
            raise AttachError(f"USDT {p.qualname}: site at file offset {p.file_offset:#x}: "
                              f"{_strip_label(e)}", program=prog_label(prog),
                              cause=e.cause or e) from e
        link.links.append(up)


def _attach_multi(prog: Any, link: UsdtLink, path: str, probes: Sequence[UsdtProbe],
                  ids: Sequence[int], pid: int) -> None:
    from .uprobe import attach_uprobe_multi

    try:
        up = attach_uprobe_multi(prog, path, offsets=[p.file_offset for p in probes],
                                 ref_ctr_offsets=[p.sema_offset for p in probes],
                                 cookies=list(ids), pid=pid if pid > 0 else None)
    except AttachError as e:
        raise AttachError(f"USDT {link.provider}:{link.name}: {_strip_label(e)}",
                          program=prog_label(prog), cause=e.cause or e) from e
    link.links.append(up)


def _strip_label(e: AttachError) -> str:
    msg = str(e)
    prefix = f"{e.program}: " if e.program else ""
    return msg[len(prefix):] if prefix and msg.startswith(prefix) else msg
