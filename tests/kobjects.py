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


def new_named(before: dict[str, set[int]], names: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """Programs/maps created since ``before`` whose kernel name is one of ``names``
    (compared on the 15 characters the kernel keeps)."""
    wanted = {n[:15] for n in names}
    out: dict[str, list[tuple[int, str]]] = {"prog": [], "map": []}
    for kind in out:
        for i in sorted(ids(kind) - before[kind]):
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


def _not_foreign(left: dict[str, list[tuple[int, str]]]) -> dict[str, list[tuple[int, str]]]:
    """Drop leftovers that another process holds open and this one does not: the
    machine is shared, and another test run may load the same fixture at the same time
    (its objects carry the same names and appear after our snapshot)."""
    me = os.getpid()
    out: dict[str, list[tuple[int, str]]] = {}
    for kind, items in left.items():
        if not items:
            out[kind] = items
            continue
        held = _holders(kind)
        out[kind] = [(i, n) for i, n in items
                     if me in held.get(i, ()) or not held.get(i)]
    return out


def wait_no_new_named(before: dict[str, set[int]], names: Iterable[str],
                      timeout: float = 30.0) -> dict[str, list[tuple[int, str]]]:
    """Like :func:`new_named`, polling until nothing is left (the kernel frees
    programs and maps asynchronously after the last fd closes: once in CI a prog_array
    of a failed load, its fds all closed, was still listed after 10 s)."""
    names = list(names)
    deadline = time.monotonic() + timeout
    while True:
        left = new_named(before, names)
        left["link"] = new_links(before, names)
        if any(left.values()):
            left = _not_foreign(left)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


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
