"""pyebpf.sys.mm: mmap and epoll set-up go through the syscall layer (typed errors, DEBUG
trace), here against real maps."""

from __future__ import annotations

import errno
import logging
import mmap
import os

import pytest

from pyebpf.errors import PyebpfError, SyscallError
from pyebpf.sys import bpf as B
from pyebpf.sys.fd import open_fd_count
from pyebpf.sys.mm import PAGE_SIZE, epoll_create, mmap_fd
from pyebpf.uapi import BPF_F_MMAPABLE, MapType

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf syscalls)")


def test_mmap_of_mmapable_array_is_shared_and_traced(caplog) -> None:
    before = open_fd_count()
    with B.map_create(MapType.ARRAY, 4, 8, 4, BPF_F_MMAPABLE, "pyebpf_mm") as fd:
        with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
            mm = mmap_fd(fd.fileno(), PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE, what="test")
        try:
            mm[8:16] = (0x1234).to_bytes(8, "little")
            assert B.map_lookup_elem(fd, (1).to_bytes(4, "little"), 8) == mm[8:16]
        finally:
            mm.close()
        assert any("mmap fd=" in r.getMessage() and "prot=rw" in r.getMessage()
                   for r in caplog.records)
    assert open_fd_count() == before


def test_mmap_refusals_are_syscall_errors() -> None:
    with B.map_create(MapType.ARRAY, 4, 8, 4, 0, "pyebpf_nomm") as fd:
        with pytest.raises(SyscallError) as ei:
            mmap_fd(fd.fileno(), PAGE_SIZE, mmap.PROT_READ, what="plain array")
        assert isinstance(ei.value, PyebpfError) and ei.value.command == "mmap"
        assert "plain array" in str(ei.value)
    with B.map_create(MapType.ARRAY, 4, 8, 4, BPF_F_MMAPABLE, "pyebpf_frz") as fd:
        B.map_freeze(fd)
        with pytest.raises(SyscallError) as ei:
            mmap_fd(fd.fileno(), PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE, what="frozen")
        assert ei.value.errno == errno.EPERM and "writable mapping" in ei.value.hint
        mmap_fd(fd.fileno(), PAGE_SIZE, mmap.PROT_READ, what="frozen").close()


def test_epoll_create_is_traced(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="pyebpf.sys"):
        ep = epoll_create("test loop")
    try:
        assert ep.fileno() >= 0
        assert any("epoll_create1" in r.getMessage() for r in caplog.records)
    finally:
        ep.close()
