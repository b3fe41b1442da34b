"""pyebpf's loggers, without importing :mod:`logging` at start-up.

``import logging`` costs about 7 ms here (it pulls in traceback, tokenize, string
and threading), a large part of the start-up budgets in issues 2 and 3. Until
something imports :mod:`logging`, nothing can have configured a handler or a level,
so DEBUG and INFO records would be dropped anyway: a :class:`LazyLogger` drops them
without importing it. Once :mod:`logging` is in ``sys.modules`` (the application or
a test harness imported it), or a WARNING or worse must be emitted, it binds to
the real ``logging.Logger`` of the same name and forwards everything.

The "pyebpf" logger gets a ``NullHandler`` when the first logger binds, the
library convention that keeps an unconfigured application quiet.
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG = 10
INFO = 20
WARNING = 30

_modules = sys.modules
_quiet_set = False


def _real_logger(name: str) -> Any:
    global _quiet_set
    import logging

    if not _quiet_set:
        logging.getLogger("pyebpf").addHandler(logging.NullHandler())
        _quiet_set = True
    return logging.getLogger(name)


class LazyLogger:
    """A stand-in for ``logging.getLogger(name)`` that binds on first real use."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: Any = None

    def real(self) -> Any:
        """The ``logging.Logger`` (imports :mod:`logging` if needed)."""
        if self._real is None:
            self._real = _real_logger(self.name)
        return self._real

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's spelling
        if self._real is None and "logging" not in _modules:
            return level >= WARNING  # the default, and nothing can have changed it
        return bool(self.real().isEnabledFor(level))

    def log(self, level: int, msg: object, *args: Any, **kw: Any) -> None:
        if self._real is None and "logging" not in _modules and level < WARNING:
            return
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1  # name the caller, not this shim
        self.real().log(level, msg, *args, **kw)

    def debug(self, msg: object, *args: Any, **kw: Any) -> None:
        if self._real is None and "logging" not in _modules:
            return
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1
        self.real().debug(msg, *args, **kw)

    def info(self, msg: object, *args: Any, **kw: Any) -> None:
        if self._real is None and "logging" not in _modules:
            return
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1
        self.real().info(msg, *args, **kw)

    def warning(self, msg: object, *args: Any, **kw: Any) -> None:
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1
        self.real().warning(msg, *args, **kw)

    def error(self, msg: object, *args: Any, **kw: Any) -> None:
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1
        self.real().error(msg, *args, **kw)

    def exception(self, msg: object, *args: Any, **kw: Any) -> None:
        kw["stacklevel"] = kw.get("stacklevel", 1) + 1
        self.real().exception(msg, *args, **kw)

    def __getattr__(self, attr: str) -> Any:  # setLevel, handlers, getEffectiveLevel, ...
        return getattr(self.real(), attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self.name} ({'bound' if self._real is not None else 'unbound'})>"


def get_logger(name: str) -> LazyLogger:
    """The logger for ``name``; ``logging`` is imported only when it matters."""
    return LazyLogger(name)
