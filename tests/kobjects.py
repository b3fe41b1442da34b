"""Kernel object accounting for leak tests: ids of programs, maps and links.

The machine is shared with other sessions, so tests never compare global counts:
they look at ids that appeared since a snapshot and keep those whose names belong to
the object under test (programs and maps) or whose program is one of ours (links).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from pyebpf.errors import SyscallError
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.sys.syscall import Cmd

_NEXT = {"prog": Cmd.PROG_GET_NEXT_ID, "map": Cmd.MAP_GET_NEXT_ID, "link": Cmd.LINK_GET_NEXT_ID}


def ids(kind: str) -> set[int]:
    """Every id of ``kind`` ("prog", "map", "link") the kernel has now."""
    out: set[int] = set()
    cur = 0
    while True:
        nxt = B.get_next_id(_NEXT[kind], cur)
        if nxt is None:
            return out
        out.add(nxt)
        cur = nxt


def snapshot() -> dict[str, set[int]]:
    return {k: ids(k) for k in _NEXT}


def _name(kind: str, obj_id: int) -> str | None:
    try:
        if kind == "prog":
            with B.prog_get_fd_by_id(obj_id) as fd:
                return B.prog_info(fd).name.decode("latin-1")
        with B.map_get_fd_by_id(obj_id) as fd:
            return B.map_info(fd).name.decode("latin-1")
    except SyscallError:  # freed meanwhile
        return None


def new_named(before: dict[str, set[int]], names: Iterable[str],
              map_ids: Iterable[int] | None = None) -> dict[str, list[tuple[int, str]]]:
    """Programs/maps created since ``before`` whose kernel name is one of ``names``
    (compared on the 15 characters the kernel keeps).

    ``map_ids``, when given, are the new maps to open by id and name, in place of all
    of them: see :func:`wait_no_new_named` for why a map being torn down must not be
    opened."""
    wanted = {n[:15] for n in names}
    out: dict[str, list[tuple[int, str]]] = {"prog": [], "map": []}
    for kind in out:
        new = set(map_ids) if kind == "map" and map_ids is not None else ids(kind) - before[kind]
        for i in sorted(new):
            n = _name(kind, i)
            if n is not None and n in wanted:
                out[kind].append((i, n))
    return out


def new_links(before: dict[str, set[int]], names: Iterable[str]) -> list[tuple[int, str]]:
    """Links created since ``before`` whose program's kernel name is one of ``names``."""
    wanted = {n[:15] for n in names}
    out = []
    for i in sorted(ids("link") - before["link"]):
        try:
            with B.link_get_fd_by_id(i) as fd:
                prog_id = B.link_info(fd).prog_id
        except SyscallError:
            continue
        n = _name("prog", prog_id) if prog_id else None
        if n is not None and n in wanted:
            out.append((i, n))
    return out


def _holders(kind: str) -> dict[int, set[int]]:
    """For each ``kind`` id held through a file descriptor, the pids holding it
    (from /proc/*/fdinfo, where the kernel prints ``map_id:``/``prog_id:``/``link_id:``)."""
    tag = f"{kind}_id:"
    out: dict[int, set[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(tag):
                    out.setdefault(int(line.split()[1]), set()).add(int(pid))
    return out


def wait_no_new_named(before: dict[str, set[int]], names: Iterable[str],
                      timeout: float = 30.0,
                      kernel_timeout: float = float(os.environ.get("PYEBPF_TEST_KFREE_WAIT", 300))
                      ) -> dict[str, list[tuple[int, str]]]:
    """Programs, maps and links of ours (by name) created since ``before`` that are still
    there, polling until none is.

    - The machine is shared: another test run may load the same fixture meanwhile. An
      object that another process holds through an fd, and this one does not, is not ours.
    - The kernel frees objects asynchronously after the last reference goes, some only
      after RCU grace periods. An object no process holds is waited for up to
      ``kernel_timeout``; one this process holds is reported after ``timeout``.
    - A new map that no process holds is never opened by id until ``kernel_timeout``
      has passed. On this kernel, opening a prog_array by id while it is being torn down
      (its clear work still pending) and closing it again can leak the map for good,
      seemingly because a second clear is asked for while the first is pending and its
      reference is never dropped. An earlier version of
      this check did exactly that, in about half of the failed loads of maps_btf, and
      left empty ``jump_table`` maps behind.
    """
    names = list(names)
    me = os.getpid()
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        new_maps = ids("map") - before["map"]
        held = _holders("map") if new_maps else {}
        unheld = {i for i in new_maps if not held.get(i)}
        mine_maps = {i for i in new_maps if me in held.get(i, ())}
        settle = waited > kernel_timeout
        left = new_named(before, names, map_ids=mine_maps | (unheld if settle else set()))
        left["link"] = new_links(before, names)
        mine = bool(left["map"])
        for kind in ("prog", "link"):
            if left[kind]:
                kheld = _holders(kind)
                left[kind] = [(i, n) for i, n in left[kind] if me in kheld.get(i, ()) or not kheld.get(i)]
                mine = mine or any(me in kheld.get(i, ()) for i, _ in left[kind])
        if settle or (mine and waited > timeout):
            return left
        if not any(left.values()) and not unheld:
            return left
        time.sleep(0.05 if waited < 2 else 0.5)


def process_fds() -> int:
    """Open file descriptors of this process (from /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd


def fd_state() -> tuple[int, int]:
    return open_fd_count(), process_fds()


def object_names(spec) -> list[str]:
    """Kernel names of the programs and maps an ObjectSpec would create."""
    out = [p.name for p in spec.programs.values()]
    for m in spec.maps.values():
        out.append(str(m.extra.get("kernel_name") or m.name))
        if m.inner is not None:
            out.append(str(m.inner.extra.get("kernel_name") or m.inner.name))
    return out
