"""Per-CPU value helpers shared by the per-CPU hash and array kinds (as in BCC)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import OptionError


class PerCpuMixin:
    """Values are lists with one entry per possible CPU (each slot padded to 8 bytes in
    the kernel's buffer). ``sum(key)``, ``max(key)``, ``min(key)``, ``average(key)`` fold
    one key's CPUs; ``total()`` sums every key on every CPU. Integer values only."""

    name: str

    if TYPE_CHECKING:  # provided by Map
        def lookup(self, key: Any, default: Any = None, *, raw: bool = False) -> Any: ...

        def values(self, *, raw: bool = False) -> Any: ...

    def _cpu_values(self, key: Any) -> list[Any]:
        v: list[Any] | None = self.lookup(key)
        if v is None:
            raise KeyError(key)
        return v

    def _ints(self, vals: list[Any]) -> list[int]:
        for x in vals:
            if not isinstance(x, int):
                raise OptionError(f"map {self.name!r}: per-CPU folding needs integer values, "
                                  f"got {type(x).__name__}")
        return vals

    def sum(self, key: Any) -> int:
        """The sum of ``key``'s value over every CPU (KeyError if absent)."""
        return sum(self._ints(self._cpu_values(key)))

    def max(self, key: Any) -> int:
        """The largest per-CPU value of ``key``."""
        return max(self._ints(self._cpu_values(key)))

    def min(self, key: Any) -> int:
        """The smallest per-CPU value of ``key``."""
        return min(self._ints(self._cpu_values(key)))

    def average(self, key: Any) -> float:
        """The mean per-CPU value of ``key``."""
        vals = self._ints(self._cpu_values(key))
        return sum(vals) / len(vals)

    def total(self) -> int:
        """The sum of every value of every key on every CPU."""
        return sum(sum(self._ints(v)) for v in self.values())
