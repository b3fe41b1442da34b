"""ProgInfo: ``struct bpf_prog_info`` decoded into a typed record.

:meth:`pyebpf.program.Program.info` returns one. The scalar fields come from one
BPF_OBJ_GET_INFO_BY_FD call (plus a second one for ``map_ids``, as bpftool does);
the bulky arrays (translated and JIT-ed instructions, func_info, line_info, ksyms)
are fetched only when a method asks for them, with a fresh query that hands the
kernel buffers of the sizes this record reports.
"""

from __future__ import annotations

import ctypes
import struct
import time
import weakref
from typing import Any

from . import insn as _insn
from ._record import Frozen, Record
from .errors import PyebpfError
from .sys import bpf as _bpf
from .sys.attrs import ProgInfo as _RawProgInfo
from .sys.fd import FD
from .uapi import ProgType

__all__ = ["FuncInfo", "LineInfo", "ProgInfo", "decode_prog_info", "prog_info"]

_set = object.__setattr__


class FuncInfo(Frozen):
    """One ``struct bpf_func_info``: a function starting at ``insn_off`` with BTF type ``type_id``.

    ``name`` is the function's name when the program's BTF could be read."""

    insn_off: int
    type_id: int
    name: str | None

    def __init__(self, insn_off: int, type_id: int, name: str | None = None) -> None:
        _set(self, "insn_off", insn_off)
        _set(self, "type_id", type_id)
        _set(self, "name", name)


class LineInfo(Frozen):
    """One ``struct bpf_line_info``: instruction ``insn_off`` comes from ``file``:``line``:``col``.

    ``file`` and ``source`` (the text of that line) are None when the program's BTF
    could not be read; the raw string offsets are always there."""

    insn_off: int
    file_name_off: int
    line_off: int
    line: int
    col: int
    file: str | None
    source: str | None

    def __init__(self, insn_off: int, file_name_off: int, line_off: int, line: int, col: int,
                 file: str | None = None, source: str | None = None) -> None:
        _set(self, "insn_off", insn_off)
        _set(self, "file_name_off", file_name_off)
        _set(self, "line_off", line_off)
        _set(self, "line", line)
        _set(self, "col", col)
        _set(self, "file", file)
        _set(self, "source", source)


def _boot_epoch() -> float:
    """Wall-clock time of boot (load_time counts nanoseconds since boot, suspend included)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class ProgInfo(Record):
    """What the kernel reports about a loaded program (``struct bpf_prog_info``), decoded.

    Counts (``nr_*``, ``*_len``) are the kernel's; the methods fetch the arrays they size.
    ``run_cnt``/``run_time_ns`` only grow while statistics are on (:func:`pyebpf.enable_stats`).
    """

    type: ProgType | int
    id: int
    name: str
    tag: str
    map_ids: list[int]
    load_time: int  # ns since boot; see loaded_at
    created_by_uid: int
    gpl_compatible: bool
    jited_prog_len: int
    xlated_prog_len: int
    ifindex: int
    netns_dev: int
    netns_ino: int
    nr_jited_ksyms: int
    nr_jited_func_lens: int
    btf_id: int
    func_info_rec_size: int
    nr_func_info: int
    nr_line_info: int
    nr_jited_line_info: int
    line_info_rec_size: int
    jited_line_info_rec_size: int
    nr_prog_tags: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int
    attach_btf_obj_id: int
    attach_btf_id: int

    def __init__(self, **fields: Any) -> None:
        missing = [f for f in self._fields if f not in fields]
        unknown = set(fields).difference(self._fields)
        if missing or unknown:
            raise TypeError(f"ProgInfo: missing {missing}, unknown {sorted(unknown)}")
        for k, v in fields.items():
            setattr(self, k, v)
        self._fd_ref: Any = None

    # -- derived ------------------------------------------------------------------------------

    @property
    def jited(self) -> bool:
        """Whether the kernel JIT-compiled the program."""
        return self.jited_prog_len > 0

    @property
    def insn_count(self) -> int:
        """Number of translated (xlated) instructions."""
        return self.xlated_prog_len // _insn.INSN_SIZE

    @property
    def loaded_at(self) -> float:
        """The load time as a Unix timestamp (seconds)."""
        return _boot_epoch() + self.load_time / 1e9

    def __repr__(self) -> str:
        t = self.type.name.lower() if isinstance(self.type, ProgType) else str(self.type)
        parts = [f"id={self.id}", f"name={self.name!r}", f"type={t}", f"tag={self.tag}",
                 f"map_ids={self.map_ids}", f"insns={self.insn_count}",
                 f"jited={self.jited_prog_len}B", f"verified_insns={self.verified_insns}",
                 f"run_cnt={self.run_cnt}", f"run_time_ns={self.run_time_ns}"]
        if self.recursion_misses:
            parts.append(f"recursion_misses={self.recursion_misses}")
        if self.btf_id:
            parts.append(f"btf_id={self.btf_id} func_info={self.nr_func_info} "
                         f"line_info={self.nr_line_info}")
        if self.attach_btf_id:
            parts.append(f"attach_btf={self.attach_btf_obj_id}:{self.attach_btf_id}")
        parts.append(f"uid={self.created_by_uid}")
        parts.append("gpl" if self.gpl_compatible else "non-gpl")
        return f"ProgInfo({', '.join(parts)})"

    # -- arrays, fetched on demand --------------------------------------------------------------

    def _fd(self) -> FD:
        fd: FD | None = self._fd_ref() if self._fd_ref is not None else None
        if fd is None or fd.closed:
            raise PyebpfError(f"program {self.name!r} (id {self.id}): its fd is closed; "
                              "open it again (Program.from_id) to fetch instructions or BTF info")
        return fd

    def _fetch(self, **arrays: tuple[str, int, int]) -> tuple[_RawProgInfo, dict[str, bytes]]:
        """Query again with a buffer for each pointer field: name=(count field, count, elem size)."""
        raw = _RawProgInfo()
        bufs: dict[str, Any] = {}
        for ptr, (count_field, n, size) in arrays.items():
            buf = ctypes.create_string_buffer(max(n * size, 1))
            bufs[ptr] = buf
            setattr(raw, ptr, ctypes.addressof(buf))
            setattr(raw, count_field, n)
        if "func_info" in arrays:
            raw.func_info_rec_size = arrays["func_info"][2]
        if "line_info" in arrays:
            raw.line_info_rec_size = arrays["line_info"][2]
        if "jited_line_info" in arrays:
            raw.jited_line_info_rec_size = arrays["jited_line_info"][2]
        _bpf.obj_get_info_by_fd(self._fd(), raw)
        out = {}
        for ptr, (count_field, n, size) in arrays.items():
            # the kernel reports how many it has; it wrote no more than we made room for
            got = min(int(getattr(raw, count_field)), n)
            out[ptr] = bufs[ptr].raw[: got * size]
        return raw, out

    def xlated_bytes(self) -> bytes:
        """The program as the kernel rewrote it (raw ``struct bpf_insn`` bytes).

        Empty when the kernel hides it (no CAP_SYS_ADMIN, or bpf_jit_harden)."""
        if not self.xlated_prog_len:
            return b""
        _, out = self._fetch(xlated_prog_insns=("xlated_prog_len", self.xlated_prog_len, 1))
        return out["xlated_prog_insns"]

    def xlated_insns(self) -> list[_insn.Insn]:
        """The translated program decoded as :class:`pyebpf.insn.Insn` (an ld_imm64 is two)."""
        return _insn.iter_insns(self.xlated_bytes())

    def jited_bytes(self) -> bytes:
        """The JIT-compiled machine code (empty when not JIT-ed or hidden)."""
        if not self.jited_prog_len:
            return b""
        _, out = self._fetch(jited_prog_insns=("jited_prog_len", self.jited_prog_len, 1))
        return out["jited_prog_insns"]

    def jited_ksyms(self) -> list[int]:
        """Kernel addresses of the JIT-ed functions (main program first, then subprograms)."""
        if not self.nr_jited_ksyms:
            return []
        _, out = self._fetch(jited_ksyms=("nr_jited_ksyms", self.nr_jited_ksyms, 8))
        return list(struct.unpack(f"<{len(out['jited_ksyms']) // 8}Q", out["jited_ksyms"]))

    def jited_func_lens(self) -> list[int]:
        """Sizes in bytes of the JIT-ed functions, in the order of :meth:`jited_ksyms`."""
        if not self.nr_jited_func_lens:
            return []
        _, out = self._fetch(jited_func_lens=("nr_jited_func_lens", self.nr_jited_func_lens, 4))
        return list(struct.unpack(f"<{len(out['jited_func_lens']) // 4}I", out["jited_func_lens"]))

    def prog_tags(self) -> list[str]:
        """The tag of each function (main program, then subprograms), as hex strings."""
        if not self.nr_prog_tags:
            return []
        _, out = self._fetch(prog_tags=("nr_prog_tags", self.nr_prog_tags, 8))
        b = out["prog_tags"]
        return [b[i : i + 8].hex() for i in range(0, len(b), 8)]

    def _btf(self) -> Any:
        """The program's BTF from the kernel, or None (no BTF, or it cannot be read)."""
        if not self.btf_id:
            return None
        from .btf.spec import BTF

        try:
            with _bpf.btf_get_fd_by_id(self.btf_id) as fd:
                data = _bpf.btf_data(fd)
            return BTF.from_bytes(data)
        except PyebpfError:
            return None

    def func_info(self, *, names: bool = True) -> list[FuncInfo]:
        """The program's ``bpf_func_info`` records (function start offsets and BTF types)."""
        if not self.nr_func_info:
            return []
        size = self.func_info_rec_size or 8
        _, out = self._fetch(func_info=("nr_func_info", self.nr_func_info, size))
        b = out["func_info"]
        btf = self._btf() if names else None
        recs = []
        for off in range(0, len(b) - size + 1, size):
            insn_off, type_id = struct.unpack_from("<II", b, off)
            name = None
            if btf is not None:
                try:
                    name = btf.name_of(type_id)
                except (PyebpfError, LookupError):
                    name = None
            recs.append(FuncInfo(insn_off, type_id, name))
        return recs

    def line_info(self, *, resolve: bool = True) -> list[LineInfo]:
        """The program's ``bpf_line_info`` records; with ``resolve``, file names and source
        text come from the program's BTF strings."""
        if not self.nr_line_info:
            return []
        size = self.line_info_rec_size or 16
        _, out = self._fetch(line_info=("nr_line_info", self.nr_line_info, size))
        b = out["line_info"]
        btf = self._btf() if resolve else None
        recs = []
        for off in range(0, len(b) - size + 1, size):
            insn_off, fname, lline, line_col = struct.unpack_from("<IIII", b, off)
            file = source = None
            if btf is not None:
                file, source = _string(btf, fname), _string(btf, lline)
            recs.append(LineInfo(insn_off, fname, lline, line_col >> 10, line_col & 0x3FF,
                                 file, source))
        return recs

    def jited_line_info(self) -> list[int]:
        """Kernel addresses matching each :meth:`line_info` record (JIT-ed programs only)."""
        if not self.nr_jited_line_info:
            return []
        size = self.jited_line_info_rec_size or 8
        _, out = self._fetch(jited_line_info=("nr_jited_line_info", self.nr_jited_line_info, size))
        b = out["jited_line_info"]
        return [int.from_bytes(b[i : i + 8], "little") for i in range(0, len(b) - size + 1, size)]


def _string(btf: Any, off: int) -> str | None:
    try:
        s: str = btf.string(off)
        return s
    except (PyebpfError, LookupError, ValueError):
        return None


def _enum(cls: Any, v: int) -> Any:
    try:
        return cls(v)
    except ValueError:
        return v


def decode_prog_info(raw: _RawProgInfo, map_ids: list[int] | None = None) -> ProgInfo:
    """Turn the raw ctypes ``bpf_prog_info`` into a :class:`ProgInfo` (pure)."""
    return ProgInfo(
        type=_enum(ProgType, raw.type),
        id=raw.id,
        name=raw.name.decode("utf-8", "replace"),
        tag=bytes(raw.tag).hex(),
        map_ids=list(map_ids or []),
        load_time=raw.load_time,
        created_by_uid=raw.created_by_uid,
        gpl_compatible=bool(raw.gpl_compatible),
        jited_prog_len=raw.jited_prog_len,
        xlated_prog_len=raw.xlated_prog_len,
        ifindex=raw.ifindex,
        netns_dev=raw.netns_dev,
        netns_ino=raw.netns_ino,
        nr_jited_ksyms=raw.nr_jited_ksyms,
        nr_jited_func_lens=raw.nr_jited_func_lens,
        btf_id=raw.btf_id,
        func_info_rec_size=raw.func_info_rec_size,
        nr_func_info=raw.nr_func_info,
        nr_line_info=raw.nr_line_info,
        nr_jited_line_info=raw.nr_jited_line_info,
        line_info_rec_size=raw.line_info_rec_size,
        jited_line_info_rec_size=raw.jited_line_info_rec_size,
        nr_prog_tags=raw.nr_prog_tags,
        run_time_ns=raw.run_time_ns,
        run_cnt=raw.run_cnt,
        recursion_misses=raw.recursion_misses,
        verified_insns=raw.verified_insns,
        attach_btf_obj_id=raw.attach_btf_obj_id,
        attach_btf_id=raw.attach_btf_id,
    )


def prog_info(fd: FD | int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a program fd, decoded, with its map ids.

    The record keeps a weak reference to ``fd`` (when it is an :class:`FD`) so its
    methods can fetch instructions and BTF info while the program stays open."""
    raw = _bpf.prog_info(fd)
    map_ids: list[int] = []
    if raw.nr_map_ids:
        n = raw.nr_map_ids
        ids = (ctypes.c_uint32 * n)()
        again = _RawProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
        _bpf.obj_get_info_by_fd(fd, again)
        # a map bound meanwhile (BPF_PROG_BIND_MAP) raises the count; we read what fits
        map_ids = list(ids[: min(n, again.nr_map_ids)])
    info = decode_prog_info(raw, map_ids)
    if isinstance(fd, FD):
        info._fd_ref = weakref.ref(fd)
    return info
