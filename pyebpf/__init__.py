"""pyebpf: libbpf reimplemented in pure Python.

Public names are imported on first use (PEP 562), so that a tool importing one
part of pyebpf, e.g. the kernel BTF index, does not pay for the whole library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BTFError,
    ClosedError,
    CORERelocationError,
    ExternError,
    ObjectError,
    OptionError,
    PyebpfError,
    SectionError,
)

if TYPE_CHECKING:
    # the submodules that __getattr__ serves after a bare ``import pyebpf``
    from . import errors as errors
    from . import features as features
    from . import links as links
    from . import maps as maps
    from . import pin as pin
    from . import stats as stats
    from . import uapi as uapi
    from .btf.kernel import KernelBTF, kernel_btf
    from .btf.spec import BTF
    from .links import Link
    from .links.base import AttachError
    from .loader import load
    from .maps.map import Map
    from .maps.perfbuf import PerfBuffer
    from .maps.ringbuf import RingBuffer, RingBufferManager
    from .maps.user_ringbuf import UserRingBuffer
    from .obj.object import ObjectSpec
    from .obj.program import ProgramSpec
    from .obj.spec import ExternSpec, MapSpec, VariableSpec
    from .object import Object
    from .proginfo import ProgInfo
    from .program import Program
    from .stats import Stats, enable_stats

# Silent unless the application configures logging: pyebpf._log adds a NullHandler
# to the "pyebpf" logger when it first imports logging.

_LAZY = {
    "ObjectSpec": ".obj.object",
    "ProgramSpec": ".obj.program",
    "MapSpec": ".obj.spec",
    "VariableSpec": ".obj.spec",
    "ExternSpec": ".obj.spec",
    "BTF": ".btf.spec",
    "KernelBTF": ".btf.kernel",
    "kernel_btf": ".btf.kernel",
    "load": ".loader",
    "Object": ".object",
    "Program": ".program",
    "Map": ".maps.map",
    "PerfBuffer": ".maps.perfbuf",
    "RingBuffer": ".maps.ringbuf",
    "RingBufferManager": ".maps.ringbuf",
    "UserRingBuffer": ".maps.user_ringbuf",
    "Link": ".links",
    "AttachError": ".links.base",
    "enable_stats": ".stats",
    "Stats": ".stats",
    "ProgInfo": ".proginfo",
}

# submodules a user reaches as attributes after a bare ``import pyebpf``
_SUBMODULES = {"pin", "features", "links", "maps", "stats", "uapi", "errors"}

__all__ = [
    "AttachError",
    "BTF",
    "BTFError",
    "ClosedError",
    "CORERelocationError",
    "ExternError",
    "ExternSpec",
    "KernelBTF",
    "Link",
    "Map",
    "MapSpec",
    "Object",
    "ObjectError",
    "ObjectSpec",
    "OptionError",
    "PerfBuffer",
    "Program",
    "ProgInfo",
    "ProgramSpec",
    "PyebpfError",
    "RingBuffer",
    "RingBufferManager",
    "SectionError",
    "Stats",
    "UserRingBuffer",
    "VariableSpec",
    "enable_stats",
    "kernel_btf",
    "load",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyebpf' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
