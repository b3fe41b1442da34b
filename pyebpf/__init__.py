"""pyebpf: libbpf reimplemented in pure Python."""

from .errors import PyebpfError
from .obj.object import ObjectSpec

__all__ = ["ObjectSpec", "PyebpfError"]
__version__ = "0.1.0"
