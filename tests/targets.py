"""Private copies of the committed user-space targets (fixtures/targets) for probe tests.

The kernel keys uprobes and USDT semaphore counts by inode and offset, so two test runs
(or two tests) probing the committed binary at once would share probes: one run's
semaphore would count the other's, and a uprobe with another ref_ctr_offset on the same
offset is refused with EINVAL. Each test process copies the targets into a directory of
its own (world-readable, for tests that attach as uid 65534), removed when the process
that made it exits; a forked child running exit handlers leaves it alone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

FIXTURE_TARGETS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "..", "fixtures", "targets"))
_dir: str | None = None
_owner = 0


def _remove() -> None:
    if _dir is not None and os.getpid() == _owner:
        shutil.rmtree(_dir, True)


def private_target(name: str) -> str:
    """A path to this process's own copy of ``fixtures/targets/<name>``."""
    global _dir, _owner
    if _dir is None or _owner != os.getpid():
        _dir = tempfile.mkdtemp(prefix=f"pyebpf-targets-{os.getpid()}-")
        os.chmod(_dir, 0o755)
        _owner = os.getpid()
        atexit.register(_remove)
    dst = os.path.join(_dir, name)
    if not os.path.exists(dst):
        shutil.copy2(os.path.join(FIXTURE_TARGETS, name), dst)
    return dst
