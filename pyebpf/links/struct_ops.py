"""struct_ops registration: StructOpsLink (libbpf's bpf_map__attach_struct_ops).

A struct_ops map from ``SEC(".struct_ops.link")`` (BPF_F_LINK) is registered through
BPF_LINK_CREATE(BPF_STRUCT_OPS): the link fd owns the registration, can be pinned, and
can be switched in place to another struct_ops map of the same type (BPF_LINK_UPDATE
with the new map fd, as libbpf's bpf_link__update_map). A map from plain
``SEC(".struct_ops")`` is registered by updating its value and unregistered by deleting
it; it has no link fd.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any

from ..errors import SyscallError
from ..sys import bpf as _bpf
from ..sys.fd import FD
from ..uapi import BPF_F_LINK, AttachType, MapType
from .base import AttachError, Link, LinkInfo, ProgRef

if TYPE_CHECKING:
    from ..maps.map import Map

__all__ = ["StructOpsLink", "attach_struct_ops"]

_ZERO = b"\0\0\0\0"
_EPERM = ("no permission to register a struct_ops map (EPERM): it needs CAP_BPF plus the "
          "capability of the subsystem (CAP_NET_ADMIN for tcp_congestion_ops); run as root")


def _map_label(m: Any) -> str | None:
    name = getattr(m, "name", None)
    return f"struct_ops map {name!r}" if name else None


def _ops_name(m: Any) -> str:
    """The ops' ``name`` member when the kernel value decodes (for messages only)."""
    try:
        v = m.value()
        name = v.data.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    except Exception:  # a message helper must never raise
        return ""


class StructOpsLink(Link):
    """A registered struct_ops map.

    ``fd`` is the bpf link of a BPF_F_LINK map (pin it, :meth:`update_map` it, read
    :meth:`info`); for a plain ``.struct_ops`` map it is None and :meth:`close`
    unregisters by deleting the map's value.
    """

    kind = "struct_ops"
    updatable = True

    def __init__(self, fd: FD | None, map: Any = None, **kw: Any) -> None:
        # Link.from_pin/from_id build one from a bare fd: no map object then
        kw.pop("program", None)
        target = getattr(map, "name", "") or kw.pop("target", "")
        kw.pop("target", None)
        super().__init__(fd, None, target=target, **kw)
        self.map = map

    def _need_link_fd(self, what: str) -> FD:
        if self.fd is None:
            raise AttachError(
                f"cannot {what}: {_map_label(self.map) or 'this struct_ops map'} is registered "
                "through its map value (SEC(\".struct_ops\")), not a bpf link; declare it in "
                "SEC(\".struct_ops.link\") to get a link",
                program=_map_label(self.map))
        if self.fd.closed:
            raise AttachError(f"cannot {what}: the link is closed", program=_map_label(self.map))
        return self.fd

    @property
    def closed(self) -> bool:
        if self.fd is not None:
            return self.fd.closed
        return self._registered is False

    _registered: bool | None = None  # a map-value registration: True until close()

    def info(self) -> LinkInfo:
        """The kernel's view of the link; ``map_id`` is the registered map's id."""
        fd = self._need_link_fd("query link info")
        li = super().info()
        if "map_id" not in li.details:
            # bpf_link_info.struct_ops.map_id is the first word of the per-type union
            raw = _bpf.link_info(fd)
            li.details["map_id"] = int.from_bytes(bytes(raw.extra)[0:4], "little")
        return li

    def update(self, new_prog: ProgRef | Map, old_prog: ProgRef | Map | None = None) -> None:
        """A struct_ops link switches maps, not programs: ``update(map)`` is :meth:`update_map`."""
        if getattr(new_prog, "type", None) == MapType.STRUCT_OPS:
            self.update_map(new_prog, old_map=old_prog)
            return
        raise AttachError("a struct_ops link runs a struct_ops map, not one program: "
                          "switch it with link.update_map(other_struct_ops_map)",
                          program=_map_label(self.map))

    def update_map(self, new_map: Any, old_map: Any = None) -> None:
        """Switch the link to ``new_map`` (another BPF_F_LINK struct_ops map of the same type).

        Only if the link still runs ``old_map`` (default: the map it runs now, so a
        concurrent switch by someone else is refused with EPERM, not overwritten).
        """
        fd = self._need_link_fd("switch maps")
        label = _map_label(self.map)
        _check_struct_ops_map(new_map, label)
        if not new_map.flags & BPF_F_LINK:
            raise AttachError(f"{_map_label(new_map)} was not created with BPF_F_LINK; only a "
                              "map from SEC(\".struct_ops.link\") can replace a struct_ops "
                              "link's map", program=label)
        cur_id = self.info().details.get("map_id")
        new_info = _bpf.map_info(new_map.fd)
        if cur_id:
            try:
                with _bpf.map_get_fd_by_id(cur_id) as cur_fd:
                    cur = _bpf.map_info(cur_fd)
            except SyscallError:
                cur = None
            if cur is not None and cur.btf_vmlinux_value_type_id != new_info.btf_vmlinux_value_type_id:
                raise AttachError(
                    f"cannot switch to {_map_label(new_map)}: it implements "
                    f"{_value_type_name(new_info)}, the link runs {_value_type_name(cur)}; "
                    "a struct_ops link only takes a map of the same struct_ops type",
                    program=label)
        _register_value(new_map, label, link=True)
        old = old_map if old_map is not None else self.map
        try:
            _bpf.link_update(fd, new_map.fd, old_prog_fd=old.fd if old is not None else None)
        except SyscallError as e:
            msg = f"BPF_LINK_UPDATE to {_map_label(new_map)} failed: {e}"
            if e.errno == _errno.EPERM and old is not None:
                msg += f" (the link no longer runs {_map_label(old)}: it was switched meanwhile)"
            elif e.errno == _errno.EINVAL:
                new_name = _ops_name(new_map)
                old_name = _ops_name(old) if old is not None else ""
                if new_name and old_name and new_name != old_name:
                    msg += (f" (the new ops is named {new_name!r} but the link runs "
                            f"{old_name!r}: the kernel only replaces a registered ops with one "
                            "of the same name, e.g. tcp_congestion_ops)")
                else:
                    msg += (" (the kernel refuses a map of another struct_ops type, one without "
                            "BPF_F_LINK, and an ops whose name differs from the one it replaces)")
            raise AttachError(msg, program=label, cause=e) from e
        self.map = new_map
        self.target = getattr(new_map, "name", "") or self.target

    def close(self) -> None:
        """Unregister: close the link fd, or delete the value of a map-value registration."""
        if self.fd is None and self._registered:
            self._registered = False
            m = self.map
            if m is not None and not m.closed:
                try:
                    m.ops.delete(_ZERO)
                except SyscallError:  # already unregistered (e.g. the map's last user went)
                    pass
        super().close()

    def __repr__(self) -> str:
        if self.fd is None:
            state = "closed" if self.closed else "registered"
            return f"StructOpsLink({self.target!r}, map value registration, {state})"
        return super().__repr__()


def _value_type_name(info: Any) -> str:
    """The kernel struct a struct_ops map implements, by name when the kernel BTF says."""
    tid = info.btf_vmlinux_value_type_id
    try:
        from ..btf.kernel import kernel_btf

        name = kernel_btf().name_of(tid)
        return name.removeprefix("bpf_struct_ops_") or f"kernel BTF type {tid}"
    except Exception:  # a message helper must never raise
        return f"kernel BTF type {tid}"


def _check_struct_ops_map(m: Any, label: str | None) -> None:
    if getattr(m, "type", None) != MapType.STRUCT_OPS or getattr(m, "fd", None) is None:
        raise AttachError(f"{m!r} is not a struct_ops map", program=label)
    if m.closed:
        raise AttachError(f"{_map_label(m)} is closed", program=label)
    if not getattr(m, "value_bytes", b""):
        raise AttachError(f"{_map_label(m)} has no value to register (it was not loaded "
                          "from an object's SEC(\".struct_ops\") variable)", program=label)


def _register_value(m: Any, label: str | None, *, link: bool) -> None:
    """Write the map's value (program fds filled in). For a BPF_F_LINK map this only sets
    it; for a plain map the kernel registers the ops right here."""
    try:
        m.ops.update(_ZERO, m.value_bytes, 0)
    except SyscallError as e:
        if e.errno == _errno.EBUSY and link:
            return  # the value of a link map is set once and then stays (libbpf skips EBUSY too)
        if e.errno == _errno.EPERM:
            msg = _EPERM
        elif e.errno == _errno.EBUSY:
            msg = f"{_map_label(m)} is already registered"
        elif e.errno == _errno.EEXIST:
            msg = (f"an ops named {_ops_name(m)!r} is already registered with the kernel "
                   "(another program or process); give this one a unique name")
        else:
            msg = f"registering {_map_label(m)} failed: {e}"
        raise AttachError(msg, program=label, cause=e) from e


def attach_struct_ops(m: Any) -> StructOpsLink:
    """Register the struct_ops map ``m`` with the kernel (libbpf's bpf_map__attach_struct_ops).

    A BPF_F_LINK map gets a bpf link; any other is registered by its map update and
    unregistered when the returned link closes.
    """
    label = _map_label(m)
    _check_struct_ops_map(m, label)
    is_link = bool(m.flags & BPF_F_LINK)
    _register_value(m, label, link=is_link)
    if not is_link:
        link = StructOpsLink(None, m)
        link._registered = True
        return link
    try:
        fd = _bpf.link_create(m.fd, None, AttachType.STRUCT_OPS)
    except SyscallError as e:
        msg = f"BPF_LINK_CREATE(BPF_STRUCT_OPS) failed: {e}"
        if e.errno == _errno.EEXIST:
            msg = (f"an ops named {_ops_name(m)!r} is already registered with the kernel "
                   "(another program or process); give this one a unique name")
        elif e.errno == _errno.EPERM:
            msg = _EPERM
        elif e.errno in (_errno.EOPNOTSUPP, _errno.EINVAL):
            msg += " (this struct_ops type cannot be registered through a link on this kernel)"
        raise AttachError(msg, program=label, cause=e) from e
    return StructOpsLink(fd, m)
