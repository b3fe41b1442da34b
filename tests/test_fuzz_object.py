"""Corrupted objects: ObjectSpec.from_bytes + relocate raise only PyebpfError.

Mutations of the real fixtures: bit flips, byte/word overwrites inside sections,
section-header field corruption and truncation. Any other exception, a hang
(a watchdog alarm turns one into a failure) or a runaway allocation (a
resource limit turns one into MemoryError, i.e. a failure) is a bug.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hyp_examples import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyebpf import ObjectSpec
from pyebpf.errors import PyebpfError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NAMES = ["opensnoop", "minimal", "subprogs", "globals", "maps_btf", "maps_legacy", "core",
         "isa_v4", "sections_struct_ops", "externs", "sections"]
DATA = {n: (FIXTURES / f"{n}.bpf.o").read_bytes() for n in NAMES
        if (FIXTURES / f"{n}.bpf.o").exists()}
WATCHDOG_S = 10
MEM_LIMIT = 2 << 30

pytestmark = pytest.mark.skipif(not DATA, reason="fixtures not built")


class Hang(Exception):
    pass


@contextmanager
def guarded() -> Iterator[None]:
    """Alarm after WATCHDOG_S seconds; cap the address space while the code runs."""

    def on_alarm(signum, frame):  # noqa: ARG001
        raise Hang(f"no result after {WATCHDOG_S}s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    cur = _vm_size()
    soft = min(cur + MEM_LIMIT, old_limit[1]) if old_limit[1] != resource.RLIM_INFINITY \
        else cur + MEM_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (soft, old_limit[1]))
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def target():
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    from pyebpf.btf.kernel import kernel_btf

    kb = kernel_btf()
    kb.find("task_struct")  # build the index outside the watchdog
    return kb


def open_and_relocate(data: bytes, target) -> None:
    with guarded():
        try:
            spec = ObjectSpec.from_bytes(data, name="fuzz")
            # externs are resolved against given data: no kernel files in a fuzz loop
            spec.resolve_externs(kconfig={}, kernel_btf=target, kallsyms={},
                                 kernel_version=0x060C00)
            spec.relocate(target)
        except PyebpfError:
            pass


def _shdrs(data: bytes) -> tuple[int, int]:
    if len(data) < 64:
        return 0, 0
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shnum = struct.unpack_from("<H", data, 0x3C)[0]
    return shoff, shnum


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every section's bytes in the file."""
    shoff, shnum = _shdrs(data)
    out = []
    for i in range(1, shnum):
        if shoff + 64 * (i + 1) > len(data):
            break
        _, typ, _, _, off, size = struct.unpack_from("<IIQQQQ", data, shoff + 64 * i)
        if typ != 8 and size:
            out.append((off, size))
    return out


INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0xFFFFFFF0]


@st.composite
def mutated(draw) -> bytes:
    name = draw(st.sampled_from(sorted(DATA)))
    data = bytearray(DATA[name])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "word", "word", "shdr", "shdr", "trunc"]))
        if op == "flip":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "word":
            secs = _sections(bytes(data)) if len(data) >= 64 else []
            secs = [(o, s) for o, s in secs if o + s <= len(data) and s >= 4]
            if not secs:
                continue
            off, size = draw(st.sampled_from(secs))
            pos = off + draw(st.integers(0, (size - 4) // 4)) * 4
            val = draw(st.sampled_from(INTERESTING) | st.integers(0, 0xFFFFFFFF))
            struct.pack_into("<I", data, pos, val)
        elif op == "shdr":
            if len(data) < 64:
                continue
            shoff, shnum = _shdrs(bytes(data))
            if not shnum or shoff + 64 * shnum > len(data):
                continue
            idx = draw(st.integers(0, shnum - 1))
            field = draw(st.sampled_from([(0, 4), (4, 4), (8, 8), (24, 8), (32, 8), (40, 4),
                                          (44, 4), (48, 8), (56, 8)]))
            fo, fsz = field
            val = draw(st.sampled_from(INTERESTING) | st.integers(0, len(data) * 2))
            pos = shoff + 64 * idx + fo
            data[pos:pos + fsz] = (val & ((1 << (8 * fsz)) - 1)).to_bytes(fsz, "little")
        else:
            data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# tests/fuzz_objects.py (run below) mutates with knowledge of the structure; these
# unstructured examples stay as a cheap second opinion
@settings(max_examples=int(os.environ.get("PYEBPF_FUZZ_EXAMPLES", examples(150))), deadline=5000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated())
def test_mutations_raise_only_pyebpf_errors(data: bytes, target) -> None:
    open_and_relocate(data, target)


@pytest.mark.parametrize("name", sorted(DATA))
def test_every_truncation(name: str, target) -> None:
    data = DATA[name]
    step = max(1, len(data) // 300)
    for n in range(0, len(data), step):
        open_and_relocate(data[:n], target)


# Elf64_Shdr fields: (offset, size)
_SHDR_FIELDS = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8),
                (56, 8)]


def test_every_header_byte_flipped(target) -> None:
    """Each ELF header byte with three bits flipped in turn; in each section header,
    the lowest and the highest byte of every field (a small and a huge change: the
    bytes between behave like one of the two), with bit 0, 3 or 7 by position."""
    data = DATA.get("subprogs") or next(iter(DATA.values()))
    shoff, shnum = _shdrs(data)
    cases = [(pos, bit) for pos in range(64) for bit in (0, 3, 7)]
    for i in range(shnum):
        for fo, size in _SHDR_FIELDS:
            for pos in {shoff + 64 * i + fo, shoff + 64 * i + fo + size - 1}:
                cases.append((pos, (0, 3, 7)[pos % 3]))
    for pos, bit in cases:
        buf = bytearray(data)
        buf[pos] ^= 1 << bit
        open_and_relocate(bytes(buf), target)


def test_unmodified_fixtures_still_open(target) -> None:
    for name, data in DATA.items():
        spec = ObjectSpec.from_bytes(data, name=name)
        assert spec.programs, name


# --- the structure-aware harness (tests/fuzz_objects.py) -------------------------------

FUZZ_SECONDS = float(os.environ.get("PYEBPF_FUZZ_SECONDS", "20"))


def _harness():
    try:
        from tests import fuzz_objects
    except ImportError:
        import fuzz_objects  # type: ignore[no-redef]
    return fuzz_objects


def _seed(default: int) -> int:
    """PYEBPF_FUZZ_SEED, else ``default``: the suite and CI replay known seeds, so a red
    run is a regression and not a new finding drawn at random (those come from long runs
    by hand, ``python3 tests/fuzz_objects.py --seed N --seconds S``); "random" draws one."""
    v = os.environ.get("PYEBPF_FUZZ_SEED", "")
    if v == "random":
        return int.from_bytes(os.urandom(4), "little")
    return int(v) if v else default


def _run_harness(seconds: float, capsys, seed: int) -> None:
    fz = _harness().run(seconds=seconds, seed=seed, log=lambda s: None)
    report = "\n\n".join(f"{f.key}\nseed {f.seed} case {f.case} ({f.fixture}): "
                         f"{'; '.join(f.notes)}\n{f.trace}" for f in fz.findings.values())
    assert not fz.findings, report
    with capsys.disabled():
        print(f"\nfuzz_objects: {fz.summary()}")
        for f in fz.known.values():
            print(f"  known, not fixed yet: {f.key}: {f.known}")
    c = fz.counts
    assert c["parsed"] and c["parse refused"] and c["relocated"], c
    if os.geteuid() == 0:
        assert c["loaded"] and c["load refused"], c


def test_harness_briefly(capsys) -> None:
    """A short run of the harness over every fixture: parse, relocate and (as root)
    load raise only pyebpf errors, within the watchdog, leaving nothing behind.
    ``python3 -m tests.fuzz_objects --seconds N`` runs it for long."""
    _run_harness(FUZZ_SECONDS, capsys, _seed(2))


@pytest.mark.soak
def test_harness_long(capsys) -> None:
    """The soak step's fuzz run (PYEBPF_FUZZ_LONG_SECONDS, default 300)."""
    _run_harness(float(os.environ.get("PYEBPF_FUZZ_LONG_SECONDS", "300")), capsys, _seed(101))


def test_harness_covers_every_fixture_structure() -> None:
    h = _harness()
    lays = [h.layout_of(p.name, p.read_bytes()) for p in h.fixture_paths()]
    assert len(lays) >= 50
    assert all(lay.sections for lay in lays)
    assert sum(bool(lay.btf_types) for lay in lays) >= len(lays) - 2  # all but BTF-less ones
    assert sum(bool(lay.btf_ext_words) for lay in lays) >= len(lays) // 2
    assert all(any(s.type == h.SHT_REL for s in lay.sections) for lay in lays
               if any(s.name.startswith(".rel") for s in lay.sections))
    # every mutation kind applies to some fixture
    rng = __import__("random").Random(1)
    for func, _ in h.MUTATIONS:
        assert any(func(h.Mutator(rng, lay)) for lay in lays), func.__name__


def test_harness_reports_other_exceptions_and_hangs(monkeypatch) -> None:
    """The harness's own checks work: an exception that is not a PyebpfError and a
    stage that never returns are both findings."""
    h = _harness()
    fz = h.Fuzzer(load=False, timeout=0.3, log=lambda s: None)
    data = DATA["minimal"]
    real = ObjectSpec.relocate

    def bad(self, *a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(ObjectSpec, "relocate", bad)
    fz.check(data, "minimal", ["none"])
    def spin(cls, *a, **k):
        while True:
            pass

    monkeypatch.setattr(ObjectSpec, "from_bytes", classmethod(spin))
    fz.check(data, "minimal", ["none"])
    monkeypatch.setattr(ObjectSpec, "relocate", real)
    keys = sorted(fz.findings)
    assert len(keys) == 2, keys
    assert keys[0].startswith("parse: Hang") and keys[1].startswith("relocate: KeyError"), keys


# --- regressions found by the harness --------------------------------------------------


def test_ext_record_outside_its_program_is_a_btf_error() -> None:
    """A .BTF.ext record out of order lands before its program's start once the
    program's records are sliced and shifted (as libbpf does); packing it for the
    kernel raised struct.error (fuzz_objects seed 404 case 2653)."""
    from pyebpf.btf.ext import FuncInfo, LineInfo, pack_func_info, pack_line_info
    from pyebpf.errors import BTFError

    li = [LineInfo(0, 1, 2, 3, 4, "f.c", "x"), LineInfo(-3, 1, 2, 3, 4, "f.c", "y")]
    with pytest.raises(BTFError, match="line_info: a record for instruction -3 lies outside"):
        pack_line_info(li, {"f.c": 1, "x": 2, "y": 3})
    with pytest.raises(BTFError, match="func_info: a record for instruction -1 lies outside"):
        pack_func_info([FuncInfo(2, 1)], insn_base=-3)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loads)")
def test_load_with_line_info_record_out_of_order() -> None:
    import kobjects as K

    import pyebpf
    from pyebpf.errors import BTFError

    data = bytearray(DATA["maps_btf"])
    # a line_info record's insn_off (bytes) in use_maps' section: 0xd8 -> 8
    assert struct.unpack_from("<I", data, 0x1978)[0] == 0xD8, "fixture rebuilt: find the record anew"
    struct.pack_into("<I", data, 0x1978, 8)
    pyebpf.load(DATA["maps_btf"]).close()  # warm caches
    fds = K.fd_state()
    with pytest.raises(BTFError, match="lies outside its program"):
        pyebpf.load(bytes(data))
    assert K.fd_state() == fds


def _struct_id(lay, name: str) -> int:
    """The BTF id of the struct called ``name`` in a fuzz_objects Layout."""
    soff, _ = lay.btf_strings
    for tid, (pos, _) in enumerate(lay.btf_types, 1):
        name_off, info = struct.unpack_from("<II", lay.data, pos)
        if (info >> 24) & 0x1F == 4:
            end = lay.data.index(b"\0", soff + name_off)
            if lay.data[soff + name_off:end].decode() == name:
                return tid
    raise AssertionError(f"no struct {name}")


def test_self_containing_extern_struct_is_a_pyebpf_error() -> None:
    """fuzz_objects seed 77 case 1900: a kconfig extern typed as a struct one of whose
    members is that struct again."""
    h = _harness()
    path = FIXTURES / "unit" / "externs_bad_kconfig_type.bpf.o"  # extern struct task_struct
    lay = h.layout_of(path.name, path.read_bytes())
    tid = _struct_id(lay, "task_struct")
    pos = next(p for p, owner in lay.btf_refs if owner == tid)  # its first member's type
    data = bytearray(lay.data)
    struct.pack_into("<I", data, pos, tid)
    with pytest.raises(PyebpfError):
        ObjectSpec.from_bytes(bytes(data), name="x")
