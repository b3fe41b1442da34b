"""The syscall layer: the one place that talks to the kernel.

``syscall`` is the ctypes chokepoint, ``attrs`` the per-command attr layouts,
``bpf`` one function per bpf command (plus ``MapOps`` for hot map ops), ``perf``
perf_event_open/ioctls/tracefs/bpffs, ``fd`` the FD ownership class.
"""

from __future__ import annotations

import errno as _errno
import resource

from .._log import get_logger
from .bpf import (
    MapOps,
    ProgLoadResult,
    btf_load,
    link_create,
    map_create,
    map_delete_elem,
    map_get_next_key,
    map_lookup_elem,
    map_update_elem,
    obj_get,
    obj_get_info_by_fd,
    obj_pin,
    prog_load,
    prog_load_with_log,
    raw_tracepoint_open,
)
from .fd import FD, open_fd_count
from .syscall import Cmd

__all__ = [
    "FD",
    "Cmd",
    "MapOps",
    "ProgLoadResult",
    "btf_load",
    "bump_memlock_rlimit",
    "link_create",
    "map_create",
    "map_delete_elem",
    "map_get_next_key",
    "map_lookup_elem",
    "map_update_elem",
    "obj_get",
    "obj_get_info_by_fd",
    "obj_pin",
    "open_fd_count",
    "prog_load",
    "prog_load_with_log",
    "raw_tracepoint_open",
]

_log = get_logger("pyebpf.sys")
_bumped = False


def bump_memlock_rlimit(limit: int = resource.RLIM_INFINITY) -> bool:
    """Raise RLIMIT_MEMLOCK when the kernel still charges BPF memory to it; never fails.

    Kernels with memcg accounting (5.11+) ignore memlock for BPF, so this does
    nothing there, as libbpf does. Returns True if the limit is (now) sufficient.
    """
    global _bumped
    if _bumped:
        return True
    from ..features import has_memcg_account

    try:
        memcg = has_memcg_account()
    except Exception as e:  # the probe itself broke: fall back to trying the bump, like an old kernel
        _log.debug("FEAT_MEMCG_ACCOUNT probe failed (%s); trying setrlimit", e)
        memcg = False
    if memcg:
        _log.debug("RLIMIT_MEMLOCK left alone: the kernel charges BPF memory to the memory cgroup")
        _bumped = True
        return True
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    except (OSError, ValueError) as e:
        # EPERM without CAP_SYS_RESOURCE: keep going, map creation will say ENOMEM/EPERM if it matters
        _log.debug("setrlimit(RLIMIT_MEMLOCK) failed (%s); continuing", _errno.errorcode.get(getattr(e, "errno", 0) or 0, e))
        return False
    _bumped = True
    return True
