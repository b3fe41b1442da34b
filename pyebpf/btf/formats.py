"""Declarative descriptions (construct) of the BTF and BTF.ext binary formats.

These are the readable specification of the formats, from include/uapi/linux/btf.h
and libbpf's libbpf_internal.h. The tests use them as an independent second
encoder and decoder, and check that the library's hand-written twins agree.

The library itself does not import this module: importing construct alone costs
about 12 ms (a fifth of a CLI run) and construct needs about a second to parse
vmlinux BTF. So the BTF parser (:func:`pyebpf.btf.spec.decode_type`), the BTF
writer's header (:func:`pyebpf.btf.write.header`) and the BTF.ext parser and
writer (:mod:`pyebpf.btf.ext`) are written with ``struct``/``memoryview``.
"""

from __future__ import annotations

from construct import (  # type: ignore[import-untyped]
    Array,
    Computed,
    Const,
    Error,
    FixedSized,
    GreedyRange,
    If,
    Int8ul,
    Int16ul,
    Int32sl,
    Int32ul,
    Pass,
    Struct,
    Switch,
    this,
)

__all__ = [
    "btf_array",
    "btf_core_relo",
    "btf_decl_tag",
    "btf_enum",
    "btf_enum64",
    "btf_ext_header",
    "btf_ext_info_section",
    "btf_func_info",
    "btf_header",
    "btf_int_encoding",
    "btf_line_info",
    "btf_member",
    "btf_param",
    "btf_type",
    "btf_type_section",
    "btf_var",
    "btf_var_secinfo",
]

# struct btf_header (24 bytes). Section offsets are relative to the end of the header.
btf_header = Struct(
    "magic" / Const(0xEB9F, Int16ul),
    "version" / Int8ul,
    "flags" / Int8ul,
    "hdr_len" / Int32ul,
    "type_off" / Int32ul,
    "type_len" / Int32ul,
    "str_off" / Int32ul,
    "str_len" / Int32ul,
)

# The u32 after an INT record: encoding bits 24..27, bit offset 16..23, nr_bits 0..7.
btf_int_encoding = Struct(
    "raw" / Int32ul,
    "encoding" / Computed((this.raw >> 24) & 0x0F),
    "offset" / Computed((this.raw >> 16) & 0xFF),
    "bits" / Computed(this.raw & 0xFF),
)

btf_array = Struct("type" / Int32ul, "index_type" / Int32ul, "nelems" / Int32ul)

# With the parent's kind_flag set, offset holds bitfield_size << 24 | bit_offset.
btf_member = Struct("name_off" / Int32ul, "type" / Int32ul, "offset" / Int32ul)

# val is a u32 bit pattern; the enum's kind_flag says whether to read it as s32.
btf_enum = Struct("name_off" / Int32ul, "val" / Int32ul)

btf_enum64 = Struct(
    "name_off" / Int32ul,
    "val_lo32" / Int32ul,
    "val_hi32" / Int32ul,
    "val" / Computed(this.val_hi32 << 32 | this.val_lo32),
)

btf_param = Struct("name_off" / Int32ul, "type" / Int32ul)

btf_var = Struct("linkage" / Int32ul)

btf_var_secinfo = Struct("type" / Int32ul, "offset" / Int32ul, "size" / Int32ul)

# -1 means the tag applies to the type itself, else the member/param index.
btf_decl_tag = Struct("component_idx" / Int32sl)

# struct btf_type followed by its kind-specific trailing data.
btf_type = Struct(
    "name_off" / Int32ul,
    "info" / Int32ul,
    "kind" / Computed((this.info >> 24) & 0x1F),
    "vlen" / Computed(this.info & 0xFFFF),
    "kind_flag" / Computed(this.info >> 31),
    "size_or_type" / Int32ul,  # a size for INT/ENUM/STRUCT/UNION/DATASEC/FLOAT, else a type id
    "data"
    / Switch(
        this.kind,
        {
            1: btf_int_encoding,  # INT
            2: Pass,  # PTR
            3: btf_array,  # ARRAY
            4: Array(this.vlen, btf_member),  # STRUCT
            5: Array(this.vlen, btf_member),  # UNION
            6: Array(this.vlen, btf_enum),  # ENUM
            7: Pass,  # FWD
            8: Pass,  # TYPEDEF
            9: Pass,  # VOLATILE
            10: Pass,  # CONST
            11: Pass,  # RESTRICT
            12: Pass,  # FUNC (vlen is the linkage)
            13: Array(this.vlen, btf_param),  # FUNC_PROTO
            14: btf_var,  # VAR
            15: Array(this.vlen, btf_var_secinfo),  # DATASEC
            16: Pass,  # FLOAT
            17: btf_decl_tag,  # DECL_TAG
            18: Pass,  # TYPE_TAG
            19: Array(this.vlen, btf_enum64),  # ENUM64
        },
        default=Error,
    ),
)

btf_type_section = GreedyRange(btf_type)

# BTF.ext: struct btf_ext_header. core_relo_* exist only when hdr_len >= 32.
btf_ext_header = Struct(
    "magic" / Const(0xEB9F, Int16ul),
    "version" / Int8ul,
    "flags" / Int8ul,
    "hdr_len" / Int32ul,
    "func_info_off" / Int32ul,
    "func_info_len" / Int32ul,
    "line_info_off" / Int32ul,
    "line_info_len" / Int32ul,
    "core_relo_off" / If(this.hdr_len >= 32, Int32ul),
    "core_relo_len" / If(this.hdr_len >= 32, Int32ul),
)

# insn_off is a BYTE offset into the ELF section in object files.
btf_func_info = Struct("insn_off" / Int32ul, "type_id" / Int32ul)

# line_col packs line << 10 | column.
btf_line_info = Struct(
    "insn_off" / Int32ul,
    "file_name_off" / Int32ul,
    "line_off" / Int32ul,
    "line_col" / Int32ul,
    "line" / Computed(this.line_col >> 10),
    "col" / Computed(this.line_col & 0x3FF),
)

btf_core_relo = Struct(
    "insn_off" / Int32ul,
    "type_id" / Int32ul,
    "access_str_off" / Int32ul,
    "kind" / Int32ul,
)


def btf_ext_info_section(record: Struct) -> Struct:
    """One BTF.ext sub-section: rec_size, then {sec_name_off, num_info, records} until the end.

    Records are ``rec_size`` bytes each; bytes past the known ``record`` layout
    (a newer, larger record) are skipped, which is libbpf's forward compatibility.
    """
    return Struct(
        "rec_size" / Int32ul,
        "sections"
        / GreedyRange(
            Struct(
                "sec_name_off" / Int32ul,
                "num_info" / Int32ul,
                "records" / Array(this.num_info, FixedSized(this._.rec_size, record)),
            )
        ),
    )
