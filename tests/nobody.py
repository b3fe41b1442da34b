"""Run a function in a forked child that dropped to uid/gid 65534 (no capabilities left),
for the "no permission" attach tests: the parent loads as root, the child attaches."""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any


def run_as_nobody(fn: Callable[[], Any], timeout: float = 30.0) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", (type name, str(exc), errno))`` from ``fn()`` run as
    uid 65534. Dropping every uid from 0 clears the permitted and effective capability sets."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                out: tuple[str, Any] = ("ok", fn())
            except BaseException as e:  # report everything to the parent
                out = ("error", (type(e).__name__, str(e), getattr(e, "errno", None)))
            data = pickle.dumps(out)
        except BaseException:
            data = pickle.dumps(("crash", traceback.format_exc()))
        try:
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while True:
            b = f.read(65536)
            if not b:
                break
            chunks.append(b)
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    if result[0] == "crash":
        raise AssertionError(f"child crashed:\n{result[1]}")
    return result
