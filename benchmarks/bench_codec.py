"""Benchmark: the BTF value codec on the hot paths of map ops and ring-buffer events.

Run: python -m pytest benchmarks/bench_codec.py --benchmark-only
(or `python benchmarks/bench_codec.py` for ns/op without pytest-benchmark).

Types: opensnoop's ``struct event`` (312 bytes: 8 ints, char[16], char[255]), a
4-byte int key, an 8-byte u64 value, and a struct with bitfields and a nested struct.
The floor printed beside them is a bare ``struct.Struct.unpack_from`` / ``pack``.
"""

from __future__ import annotations

import struct
import timeit
from collections.abc import Callable
from typing import Any

import pytest

from pyebpf.btf.codec import Codec, codec_for
from pyebpf.btf.spec import BTF
from pyebpf.btf.types import INT_SIGNED, Array, Int, Member, Struct


def build() -> dict[str, Codec]:
    b = BTF()
    u32 = b.add(Int("unsigned int", 4))
    s32 = b.add(Int("int", 4, INT_SIGNED))
    u64 = b.add(Int("long long unsigned int", 8))
    char = b.add(Int("char", 1, INT_SIGNED))
    c16, c255 = b.add(Array(char, u32, 16)), b.add(Array(char, u32, 255))
    names = ["ts_ns", "pid", "tid", "ppid", "uid", "ret", "flags", "mode"]
    types = [u64, u32, u32, u32, u32, s32, s32, u32]
    offs = [0, 8, 12, 16, 20, 24, 28, 32]
    ms = [Member(n, t, o * 8) for n, t, o in zip(names, types, offs, strict=True)]
    ms += [Member("comm", c16, 36 * 8), Member("fname", c255, 52 * 8)]
    event = b.add(Struct("event", 312, ms))
    inner = b.add(Struct("counts", 16, [Member("hits", u64, 0), Member("misses", u64, 64)]))
    bits = b.add(Struct("stat", 24, [
        Member("kind", u32, 0, 4), Member("neg", s32, 4, 12), Member("on", u32, 16, 1),
        Member("pid", u32, 32), Member("c", inner, 64)], True))
    return {"event": codec_for(b, event), "u32": codec_for(b, u32), "u64": codec_for(b, u64),
            "stat": codec_for(b, bits)}


CODECS = build()
EVENT_RAW = struct.pack("=QIIIIiiI16s255s5x", 123456789, 1000, 1001, 1, 0, 3, 0o100, 0o644,
                        b"bash", b"/etc/ld.so.cache")


def cases() -> dict[str, Callable[[], Any]]:
    ev, u32, u64, st = CODECS["event"], CODECS["u32"], CODECS["u64"], CODECS["stat"]
    ev_val = ev.decode(EVENT_RAW)
    st_val = st.cls(kind=3, neg=-5, on=True, pid=42, c={"hits": 1, "misses": 2})
    st_raw = st.encode(st_val)
    k, v = b"\x07\0\0\0", b"\x01\0\0\0\0\0\0\0"
    floor = struct.Struct("=QIIIIiiI16s255s5x")
    ev_dec, ev_enc, u32_dec, u32_enc = ev.decode, ev.encode, u32.decode, u32.encode
    u64_dec, u64_enc, st_dec, st_enc = u64.decode, u64.encode, st.decode, st.encode
    mv = memoryview(bytearray(EVENT_RAW))
    return {
        "event decode": lambda: ev_dec(EVENT_RAW),
        "event decode (memoryview)": lambda: ev_dec(mv),
        "event encode": lambda: ev_enc(ev_val),
        "event floor unpack_from": lambda: floor.unpack_from(EVENT_RAW, 0),
        "u32 key decode": lambda: u32_dec(k),
        "u32 key encode": lambda: u32_enc(7),
        "u64 value decode": lambda: u64_dec(v),
        "u64 value encode": lambda: u64_enc(1),
        "bitfield struct decode": lambda: st_dec(st_raw),
        "bitfield struct encode": lambda: st_enc(st_val),
    }


CASES = cases()


@pytest.mark.parametrize("name", list(CASES))
def test_codec(benchmark: Any, name: str) -> None:
    benchmark(CASES[name])


def main() -> None:
    n = 200_000
    nop = min(timeit.repeat(lambda: None, number=n, repeat=5)) / n
    for name, f in CASES.items():
        t = min(timeit.repeat(f, number=n, repeat=5)) / n - nop
        print(f"{name:32s} {t * 1e9:7.0f} ns/op")


if __name__ == "__main__":
    main()
