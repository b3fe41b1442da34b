"""The kernel BTF of maps opened by fd, pin or id (fetched lazily), and of struct_ops values."""

from __future__ import annotations

from typing import Any

from ..errors import PyebpfError
from ..sys import bpf as _bpf
from ..sys.fd import FD

__all__ = ["LazyKernelBTF", "struct_ops_btf"]


class _LazyKernelBTF:
    """The BTF a map was created with, fetched from the kernel on first use."""

    def __init__(self, btf_id: int) -> None:
        self.btf_id = btf_id
        self._btf: Any = None

    def get(self) -> Any:
        if self._btf is None:
            from ..btf.spec import BTF

            with _bpf.btf_get_fd_by_id(self.btf_id) as fd:
                info, name = _btf_info_named(fd)
                data = _bpf.btf_data(fd)
            base = None
            # module BTF is split: its ids follow vmlinux's
            if info.kernel_btf and name != b"vmlinux":
                base = _vmlinux_btf()
            try:
                self._btf = BTF.from_bytes(data, base)
            except PyebpfError:
                if base is not None:
                    raise
                self._btf = BTF.from_bytes(data, _vmlinux_btf())
        return self._btf


_VMLINUX: Any = None


def _vmlinux_btf() -> Any:
    global _VMLINUX
    if _VMLINUX is None:
        from ..btf.spec import BTF

        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            _VMLINUX = BTF.from_bytes(f.read())
    return _VMLINUX



def _struct_ops_btf(btf_obj_id: int) -> Any:
    """The kernel BTF holding a struct_ops map's value type: a module's (split on
    vmlinux) when ``btf_obj_id`` names one, else vmlinux (the cached, indexed one)."""
    if btf_obj_id:
        with _bpf.btf_get_fd_by_id(btf_obj_id) as fd:
            _, name = _btf_info_named(fd)
        if name != b"vmlinux":
            return _LazyKernelBTF(btf_obj_id).get()
    from ..btf.kernel import kernel_btf

    return kernel_btf()


def _btf_info_named(fd: FD) -> tuple[Any, bytes]:
    """BTF_OBJ_GET_INFO_BY_FD with the BTF's name ("vmlinux", a module's, or empty)."""
    import ctypes

    from ..sys import attrs as A

    name = (ctypes.c_char * 64)()
    info = A.BtfInfo(name=ctypes.addressof(name), name_len=64)
    _bpf.obj_get_info_by_fd(fd, info)
    return info, name.value


LazyKernelBTF = _LazyKernelBTF
struct_ops_btf = _struct_ops_btf
