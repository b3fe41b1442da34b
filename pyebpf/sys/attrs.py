"""Per-command ``union bpf_attr`` layouts (include/uapi/linux/bpf.h, Linux 6.18).

One ctypes Structure per command. ``SIZE`` on each class is the offset just past
the last field that command uses (never the whole 168-byte union), so older
kernels see only bytes they know; ctypes zero-fills everything else.
Info structs (``bpf_prog_info`` and friends) are here too.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import c_char, c_int32, c_uint8, c_uint32, c_uint64
from typing import TypeVar

__all__ = [
    "BatchAttr",
    "BtfInfo",
    "BtfLoadAttr",
    "EnableStatsAttr",
    "GetIdAttr",
    "InfoAttr",
    "IterCreateAttr",
    "LinkCreateAttr",
    "LinkDetachAttr",
    "LinkInfo",
    "LinkUpdateAttr",
    "MapCreateAttr",
    "MapElemAttr",
    "MapInfo",
    "ObjPinAttr",
    "ProgAttachAttr",
    "ProgBindMapAttr",
    "ProgInfo",
    "ProgLoadAttr",
    "ProgQueryAttr",
    "ProgStreamReadAttr",
    "RawTracepointAttr",
    "TaskFdQueryAttr",
    "TestRunAttr",
    "TokenCreateAttr",
]


_S = TypeVar("_S", bound="type[_Attr]")


def _end(cls: type[ctypes.Structure], field: str) -> int:
    f = getattr(cls, field)
    return int(f.offset + f.size)


def _sized(last: str) -> Callable[[_S], _S]:
    def deco(cls: _S) -> _S:
        cls.SIZE = _end(cls, last)
        return cls

    return deco


class _Attr(ctypes.Structure):
    SIZE: int = 0


@_sized("excl_prog_hash_size")
class MapCreateAttr(_Attr):
    _fields_ = [
        ("map_type", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("inner_map_fd", c_uint32),
        ("numa_node", c_uint32),
        ("map_name", c_char * 16),
        ("map_ifindex", c_uint32),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("map_extra", c_uint64),
        ("value_type_btf_obj_fd", c_int32),
        ("map_token_fd", c_int32),
        ("excl_prog_hash", c_uint64),
        ("excl_prog_hash_size", c_uint32),
    ]


@_sized("flags")
class MapElemAttr(_Attr):
    """MAP_LOOKUP_ELEM / UPDATE / DELETE / GET_NEXT_KEY / LOOKUP_AND_DELETE / FREEZE."""

    _fields_ = [
        ("map_fd", c_uint32),
        ("key", c_uint64),
        ("value", c_uint64),  # also next_key
        ("flags", c_uint64),
    ]


@_sized("flags")
class BatchAttr(_Attr):
    _fields_ = [
        ("in_batch", c_uint64),
        ("out_batch", c_uint64),
        ("keys", c_uint64),
        ("values", c_uint64),
        ("count", c_uint32),
        ("map_fd", c_uint32),
        ("elem_flags", c_uint64),
        ("flags", c_uint64),
    ]


@_sized("keyring_id")
class ProgLoadAttr(_Attr):
    _fields_ = [
        ("prog_type", c_uint32),
        ("insn_cnt", c_uint32),
        ("insns", c_uint64),
        ("license", c_uint64),
        ("log_level", c_uint32),
        ("log_size", c_uint32),
        ("log_buf", c_uint64),
        ("kern_version", c_uint32),
        ("prog_flags", c_uint32),
        ("prog_name", c_char * 16),
        ("prog_ifindex", c_uint32),
        ("expected_attach_type", c_uint32),
        ("prog_btf_fd", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("func_info_cnt", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("line_info", c_uint64),
        ("line_info_cnt", c_uint32),
        ("attach_btf_id", c_uint32),
        ("attach_prog_fd", c_uint32),  # also attach_btf_obj_fd
        ("core_relo_cnt", c_uint32),
        ("fd_array", c_uint64),
        ("core_relos", c_uint64),
        ("core_relo_rec_size", c_uint32),
        ("log_true_size", c_uint32),
        ("prog_token_fd", c_int32),
        ("fd_array_cnt", c_uint32),
        ("signature", c_uint64),
        ("signature_size", c_uint32),
        ("keyring_id", c_int32),
    ]


@_sized("path_fd")
class ObjPinAttr(_Attr):
    """OBJ_PIN / OBJ_GET."""

    _fields_ = [
        ("pathname", c_uint64),
        ("bpf_fd", c_uint32),
        ("file_flags", c_uint32),
        ("path_fd", c_int32),
    ]


@_sized("expected_revision")
class ProgAttachAttr(_Attr):
    """PROG_ATTACH / PROG_DETACH."""

    _fields_ = [
        ("target_fd", c_uint32),  # also target_ifindex
        ("attach_bpf_fd", c_uint32),
        ("attach_type", c_uint32),
        ("attach_flags", c_uint32),
        ("replace_bpf_fd", c_uint32),
        ("relative_fd", c_uint32),  # also relative_id
        ("expected_revision", c_uint64),
    ]


@_sized("batch_size")
class TestRunAttr(_Attr):
    __test__ = False  # not a pytest class

    _fields_ = [
        ("prog_fd", c_uint32),
        ("retval", c_uint32),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("data_in", c_uint64),
        ("data_out", c_uint64),
        ("repeat", c_uint32),
        ("duration", c_uint32),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("ctx_in", c_uint64),
        ("ctx_out", c_uint64),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


@_sized("fd_by_id_token_fd")
class GetIdAttr(_Attr):
    """*_GET_NEXT_ID / *_GET_FD_BY_ID."""

    _fields_ = [
        ("start_id", c_uint32),  # also prog_id/map_id/btf_id/link_id
        ("next_id", c_uint32),
        ("open_flags", c_uint32),
        ("fd_by_id_token_fd", c_int32),
    ]


@_sized("info")
class InfoAttr(_Attr):
    _fields_ = [
        ("bpf_fd", c_uint32),
        ("info_len", c_uint32),
        ("info", c_uint64),
    ]


@_sized("revision")
class ProgQueryAttr(_Attr):
    _fields_ = [
        ("target_fd", c_uint32),
        ("attach_type", c_uint32),
        ("query_flags", c_uint32),
        ("attach_flags", c_uint32),
        ("prog_ids", c_uint64),
        ("prog_cnt", c_uint32),  # also count
        ("prog_attach_flags", c_uint64),
        ("link_ids", c_uint64),
        ("link_attach_flags", c_uint64),
        ("revision", c_uint64),
    ]


@_sized("cookie")
class RawTracepointAttr(_Attr):
    _fields_ = [
        ("name", c_uint64),
        ("prog_fd", c_uint32),
        ("cookie", c_uint64),
    ]


@_sized("btf_token_fd")
class BtfLoadAttr(_Attr):
    _fields_ = [
        ("btf", c_uint64),
        ("btf_log_buf", c_uint64),
        ("btf_size", c_uint32),
        ("btf_log_size", c_uint32),
        ("btf_log_level", c_uint32),
        ("btf_log_true_size", c_uint32),
        ("btf_flags", c_uint32),
        ("btf_token_fd", c_int32),
    ]


@_sized("probe_addr")
class TaskFdQueryAttr(_Attr):
    _fields_ = [
        ("pid", c_uint32),
        ("fd", c_uint32),
        ("flags", c_uint32),
        ("buf_len", c_uint32),
        ("buf", c_uint64),
        ("prog_id", c_uint32),
        ("fd_type", c_uint32),
        ("probe_offset", c_uint64),
        ("probe_addr", c_uint64),
    ]


class LinkCreateAttr(_Attr):
    """LINK_CREATE: a fixed head plus a per-attach-kind tail in ``extra``.

    The size depends on the tail used: see ``pyebpf.sys.bpf.link_create``.
    """

    _fields_ = [
        ("prog_fd", c_uint32),  # also map_fd
        ("target_fd", c_uint32),  # also target_ifindex
        ("attach_type", c_uint32),
        ("flags", c_uint32),
        ("extra", c_uint8 * 48),
    ]


LinkCreateAttr.SIZE = 16  # head only; callers add the tail length they fill
LINK_CREATE_MAX_SIZE = ctypes.sizeof(LinkCreateAttr)


@_sized("old_prog_fd")
class LinkUpdateAttr(_Attr):
    _fields_ = [
        ("link_fd", c_uint32),
        ("new_prog_fd", c_uint32),  # also new_map_fd
        ("flags", c_uint32),
        ("old_prog_fd", c_uint32),  # also old_map_fd
    ]


@_sized("link_fd")
class LinkDetachAttr(_Attr):
    _fields_ = [("link_fd", c_uint32)]


@_sized("type")
class EnableStatsAttr(_Attr):
    _fields_ = [("type", c_uint32)]


@_sized("flags")
class IterCreateAttr(_Attr):
    _fields_ = [("link_fd", c_uint32), ("flags", c_uint32)]


@_sized("flags")
class ProgBindMapAttr(_Attr):
    _fields_ = [("prog_fd", c_uint32), ("map_fd", c_uint32), ("flags", c_uint32)]


@_sized("bpffs_fd")
class TokenCreateAttr(_Attr):
    _fields_ = [("flags", c_uint32), ("bpffs_fd", c_uint32)]


@_sized("prog_fd")
class ProgStreamReadAttr(_Attr):
    _fields_ = [
        ("stream_buf", c_uint64),
        ("stream_buf_len", c_uint32),
        ("stream_id", c_uint32),
        ("prog_fd", c_uint32),
    ]


# --- info structs (OBJ_GET_INFO_BY_FD) ---------------------------------------------------


class _Info(ctypes.Structure):
    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in self._fields_:
            v = getattr(self, f[0])
            if hasattr(v, "_length_"):
                v = bytes(v)
            out[f[0]] = v
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()})"


class ProgInfo(_Info):
    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32, 1),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
    ]


class MapInfo(_Info):
    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * 16),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_id", c_uint32),
        ("map_extra", c_uint64),
        ("hash", c_uint64),
        ("hash_size", c_uint32),
    ]


class BtfInfo(_Info):
    _fields_ = [
        ("btf", c_uint64),
        ("btf_size", c_uint32),
        ("id", c_uint32),
        ("name", c_uint64),
        ("name_len", c_uint32),
        ("kernel_btf", c_uint32),
    ]


class LinkInfo(_Info):
    """struct bpf_link_info; the per-type union is raw bytes in ``extra`` (see ``fields()``)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad", c_uint32),
        ("extra", c_uint8 * 48),
    ]

    def u32(self, off: int) -> int:
        return int.from_bytes(bytes(self.extra[off : off + 4]), "little")

    def u64(self, off: int) -> int:
        return int.from_bytes(bytes(self.extra[off : off + 8]), "little")


assert ctypes.sizeof(ProgInfo) == 232 and ctypes.sizeof(MapInfo) == 104
assert ctypes.sizeof(BtfInfo) == 32 and ctypes.sizeof(LinkInfo) == 64
