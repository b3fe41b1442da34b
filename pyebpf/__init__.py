"""pyebpf: libbpf reimplemented in pure Python."""

from .errors import PyebpfError

__all__ = ["PyebpfError"]
__version__ = "0.1.0"
