"""The typed single-op fast path: bitfield groups packed as ints, struct values packed
straight into the MapOps buffers (update_staged / lookup_into with a staged key)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

import pyebpf
from pyebpf.btf.codec import codec_for
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import INT_SIGNED, Int, Member, Struct
from pyebpf.errors import OptionError, SyscallError

OBJ = Path(__file__).resolve().parent.parent / "fixtures" / "unit" / "maps_kinds.bpf.o"


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
def test_bitfield_group_widths(width: int) -> None:
    btf = BTF()
    u64 = btf.add(Int("long long unsigned int", 8))
    s64 = btf.add(Int("long long int", 8, INT_SIGNED))
    u8 = btf.add(Int("unsigned char", 1))
    bits = width * 8
    lo_bits = 3
    sid = btf.add(Struct("g", width + 1, [
        Member("lo", u64, 0, lo_bits), Member("rest", s64, lo_bits, bits - lo_bits),
        Member("tail", u8, width * 8)], True))
    c = codec_for(btf, sid)
    assert (".to_bytes(" in c._source) == (width not in (1, 2, 4, 8))
    top = (1 << (bits - lo_bits - 1)) - 1
    for lo, rest in ((5, -1), (7, top), (0, -top - 1), (1, 0)):
        v = c.cls(lo=lo, rest=rest, tail=0xAB)
        raw = c.encode(v)
        word = (rest & ((1 << (bits - lo_bits)) - 1)) << lo_bits | lo
        assert raw == word.to_bytes(width, "little") + b"\xab"
        assert c.decode(raw) == v
        buf = bytearray(b"\xff" * (width + 1))
        c.encode_into_own(buf, 0, v)
        assert bytes(buf) == raw
    with pytest.raises(OptionError, match=r"struct g\.lo: 8 does not fit in a 3-bit"):
        c.encode({"lo": 8})
    with pytest.raises(OptionError, match=r"struct g\.rest"):
        c.encode({"rest": top + 1})


@pytest.fixture()
def kh() -> Any:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    obj = pyebpf.load(OBJ)
    try:
        yield obj.maps["k_hash"]
    finally:
        obj.close()


def test_staged_update_and_lookup(kh: Any, caplog: Any) -> None:
    c = kh.value_codec
    assert c.packs_whole
    full = {"a": -1, "b": 2**64 - 1, "name": "abcdefgh", "arr": (9, 8, 7), "color": 7,
            "lo": 7, "hi": 31, "neg": -5}
    kh[2] = full
    kh[1] = {"a": 3, "name": b"x", "color": "KRED"}
    v2 = kh[2]  # leaves key 2's bytes in the scratch buffers
    v1 = kh[1]
    kh[3] = v1  # an own-class value: packed over the stale buffer, padding zeroed
    assert kh.lookup_bytes((3).to_bytes(4, "little")) == c.encode(v1)
    assert kh[3] == v1 and kh[2] == v2
    with pytest.raises(OptionError, match="out of range for unsigned int"):
        kh[2**32] = v2
    with pytest.raises(OptionError, match="expected an int"):
        kh["x"] = v2
    with pytest.raises(OptionError, match=r"krec\.lo: 9 does not fit"):
        kh[3] = {**v2._asdict(), "lo": 9}
    assert kh[3] == v1  # nothing sent on an error
    with pytest.raises(KeyError):
        kh[77]
    assert kh.lookup(77) is None
    kh.update(3, v2, 2)  # BPF_EXIST
    assert kh[3] == v2
    with pytest.raises(SyscallError):
        kh.update(4, v2, 2)  # BPF_EXIST on an absent key
    caplog.set_level(logging.DEBUG, logger="pyebpf")
    kh[3] = v1
    assert "key=03000000" in caplog.text
