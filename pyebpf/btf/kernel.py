"""The kernel BTF index: fast, lazy and cached.

``/sys/kernel/btf/vmlinux`` holds about 126k types. Decoding them all takes seconds
in Python, and a CO-RE load needs a few dozen. So, as cilium/ebpf does, we:

* mmap the file (a ``read()`` of 5 MiB costs 20x more);
* make ONE pass over the type section that records where each record starts
  (``array('I')`` of u32 word indexes, one per type id);
* decode a type only when :meth:`KernelBTF.type` asks for it, and memoize it;
* keep the index in an on-disk cache keyed by the file's stat() identity, so a
  later process reloads it with one ``read()`` instead of walking again.

Names are looked up in one of two ways. With the cache, the first lookup builds a
table of ``crc32(name) << 24 | index`` for every named type (plus the essential
name of every ``a___b`` flavour), sorted, so a lookup is one bisect (~5 us); the
build costs ~50 ms once per machine and is then cached. Without a cache, where
that cost would recur in every process, a lookup instead runs ``bytes.find`` over
the string section (~1.5 ms) and maps the hits to types through a sorted array of
the type name offsets.

:func:`kernel_btf` returns one shared instance per path for the whole process.
The decoded types are shared too: treat them as read-only.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
import zlib
from array import array
from bisect import bisect_left
from itertools import compress, repeat
from operator import lshift, or_

from ..errors import BTFError

TYPE_CHECKING = False  # not typing's: importing typing costs 2 ms on the open() path
if TYPE_CHECKING:  # the type model costs ~20 ms to import: keep it off the open() path
    from collections.abc import Iterable

    from .types import Kind, Type

__all__ = ["DEFAULT_PATH", "KernelBTF", "cache_dir", "kernel_btf"]

DEFAULT_PATH = "/sys/kernel/btf/vmlinux"
_SYS_BTF_DIR = "/sys/kernel/btf"

_BTF_MAGIC = 0xEB9F
_BTF_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len

# Words per record = 3 (struct btf_type) + _FIXED[kind] + _PER_VLEN[kind] * vlen.
# (INT, ARRAY, VAR, DECL_TAG carry fixed trailers; STRUCT/UNION/DATASEC/ENUM64 three
# words per member, ENUM/FUNC_PROTO two.) Unknown kinds, and kind 0, get a step so
# large that the walk overshoots the section end and reports the bad record.
_BAD_KIND_STEP = 1 << 40
_FIXED = [_BAD_KIND_STEP] * 32
_PER_VLEN = [0] * 32
for _kind, _fixed, _per in (
    (1, 1, 0), (2, 0, 0), (3, 3, 0), (4, 0, 3), (5, 0, 3), (6, 0, 2), (7, 0, 0), (8, 0, 0),
    (9, 0, 0), (10, 0, 0), (11, 0, 0), (12, 0, 0), (13, 0, 2), (14, 1, 0), (15, 0, 3),
    (16, 0, 0), (17, 1, 0), (18, 0, 0), (19, 0, 3),
):
    _FIXED[_kind] = 3 + _fixed
    _PER_VLEN[_kind] = _per
del _kind, _fixed, _per

# On-disk cache: header, then the arrays back to back (native byte order).
_CACHE_MAGIC = b"PYEBTFIX"
_CACHE_VERSION = 2
# magic, version, flags, st_size, st_mtime_ns, st_ino, st_dev, sample crc, path crc,
# own type count, name table length, payload crc. The payload is the record offsets
# (u32 each), then the name table (u64 each) when flag HAS_TABLE is set.
_CACHE_HEADER = struct.Struct("<8sIIQQQQIIIII")
_CACHE_HAS_TABLE = 1
# Name table entries: crc32(name) << _IDX_BITS | own type index.
_IDX_BITS = 24
_IDX_MASK = (1 << _IDX_BITS) - 1


def cache_dir() -> str:
    """Where the index cache lives: $PYEBPF_CACHE_DIR, $XDG_CACHE_HOME/pyebpf or ~/.cache/pyebpf."""
    d = os.environ.get("PYEBPF_CACHE_DIR")
    if d:
        return d
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return os.path.join(xdg, "pyebpf")
    return os.path.join(os.path.expanduser("~"), ".cache", "pyebpf")


def _not_found(path: str, err: OSError) -> BTFError:
    if path == DEFAULT_PATH:
        hint = (
            "the running kernel exposes no BTF: it must be built with CONFIG_DEBUG_INFO_BTF=y; "
            "otherwise pass the path of a BTF file for this kernel (for example one extracted "
            "from its vmlinux with `pahole --btf_encode_detached` or taken from BTFHub) as path="
        )
    else:
        hint = (
            "pass the path of an existing kernel BTF file; the running kernel's is "
            f"{DEFAULT_PATH} (needs CONFIG_DEBUG_INFO_BTF=y)"
        )
    e = BTFError(f"cannot open kernel BTF {path!r}: {err.strerror or err}; {hint}")
    e.path = path  # type: ignore[attr-defined]
    e.errno = err.errno  # type: ignore[attr-defined]
    return e


def _file_identity(path: str, st: os.stat_result) -> tuple[int, int, int, int]:
    """What keys the cache besides sampled content: (size, mtime_ns, ino, dev) from stat.

    sysfs BTF is the exception: its inode times are just when the inode was created
    (each boot, or again after the inode is evicted), while its content is fixed by
    the kernel build. So it is keyed on the kernel's release and build version
    instead, which also keeps the cache across reboots into the same kernel.
    """
    if path.startswith(_SYS_BTF_DIR + "/"):
        u = os.uname()
        return st.st_size, zlib.crc32(f"{u.release}\0{u.version}".encode()), 0, 0
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _map_file(path: str) -> tuple[mmap.mmap | bytes, os.stat_result]:
    """mmap ``path`` read-only, or read it when it cannot be mapped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _not_found(path, e) from e
    try:
        st = os.fstat(fd)
        if st.st_size > 0:
            try:
                # MAP_PRIVATE: the kernel refuses shared mappings of the sysfs BTF file.
                return mmap.mmap(fd, st.st_size, flags=mmap.MAP_PRIVATE,
                                 prot=mmap.PROT_READ), st
            except (OSError, ValueError):
                pass  # older kernels cannot mmap sysfs BTF; pipes and such neither
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    except OSError as e:
        raise BTFError(f"cannot read kernel BTF {path!r}: {e}") from e
    finally:
        os.close(fd)


def _walk(words: memoryview) -> array[int]:
    """Word index of every record in the type section, in type id order.

    This is the hot loop of opening kernel BTF, so it is hand-written: the construct
    description in :mod:`pyebpf.btf.formats` needs 1-3 s for vmlinux and even
    :func:`pyebpf.btf.spec.decode_type` builds objects we do not want yet. Reading
    one u32 per record from the memoryview and stepping by a dict lookup takes
    ~11-15 ms for 126k records.
    """
    n = len(words)
    offsets = array("I")
    add = offsets.append
    fixed = _FIXED
    per = _PER_VLEN
    # The step depends only on the info word, and kernel BTF has a few thousand
    # distinct ones: a dict hit is cheaper than decoding kind and vlen (~25%).
    steps: dict[int, int] = {}
    info_words = words[1:]  # info_words[i] is the info word of the record at i
    i = 0
    try:
        while i < n:
            add(i)
            info = info_words[i]
            try:
                i += steps[info]
            except KeyError:
                kind = (info >> 24) & 0x1F
                step = steps[info] = fixed[kind] + per[kind] * (info & 0xFFFF)
                i += step
    except IndexError:
        pass  # a truncated header word; reported below
    info_words.release()  # the error's traceback keeps this frame: let the file unmap
    if i != n:
        last = offsets[-1]
        kind = (words[last + 1] >> 24) & 0x1F if last + 1 < n else -1
        bad_kind = kind >= 0 and fixed[kind] == _BAD_KIND_STEP
        what = f"unknown BTF kind {kind}" if bad_kind else "truncated record"
        raise BTFError(f"{what} at type section byte offset {last * 4} "
                       f"(record #{len(offsets)})")
    return offsets


class KernelBTF:
    """Lazily decoded kernel (or module) BTF; implements :class:`~pyebpf.btf.types.BTFView`.

    Build it with :meth:`open` or share one through :func:`kernel_btf`.
    """

    def __init__(self, path: str, data: mmap.mmap | bytes, base: KernelBTF | None,
                 hdr: tuple[int, ...]) -> None:
        self.path = path
        self.base = base
        self._data = data
        self._raw = memoryview(data)
        hdr_len, type_off, type_len, str_off, str_len = hdr
        t0 = hdr_len + type_off
        self._words = self._raw[t0:t0 + type_len].cast("I")
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        # Split BTF: string offsets below this belong to the base; ids continue after it.
        self._str_base = base.strings_len if base is not None else 0
        self._first_id = len(base) if base is not None else 1
        self._offsets = array("I")
        self._table: array[int] | None = None  # sorted name table, see module docstring
        self._names: bytes | None = None  # search path: name_off per own type, u32 native
        self._sorted_names: array[int] | None = None  # search path: the same, sorted
        self._types: dict[int, Type] = {}
        self._ids_memo: dict[bytes, tuple[int, ...]] = {}
        self._cand_memo: dict[bytes, tuple[int, ...]] = {}
        self._hits_memo: dict[bytes, tuple[int, ...]] = {}
        self._flavor_pos: list[int] | None = None
        self._lock = threading.RLock()
        self._cache_file: str | None = None
        self._cache_key: tuple[int, int, int, int, int, int] | None = None
        self._cache_ok = False  # the cache dir took a write (or served a hit)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def open(cls, path: str = DEFAULT_PATH, base: KernelBTF | None = None, *,
             cache: bool = True) -> KernelBTF:
        """Index the BTF file at ``path``; with ``base``, as split (module) BTF on top of it.

        ``cache=False`` neither reads nor writes the on-disk index cache.
        Raises :class:`BTFError` when the file is missing or malformed.
        """
        if sys.byteorder != "little":  # pragma: no cover
            raise BTFError("kernel BTF indexing needs a little-endian host")
        data, st = _map_file(path)
        btf = None
        try:
            hdr = _parse_header(data, path, split=base is not None)
            btf = cls(path, data, base, hdr)
            if cache:
                apath = os.path.abspath(path)
                btf._cache_key = (
                    *_file_identity(apath, st),
                    zlib.crc32(os.fsencode(apath)),
                    btf._sample_crc(hdr),
                )
                if btf._load_cache():
                    btf._cache_ok = True
                    return btf
            btf._offsets = _walk(btf._words)
        except BaseException:
            # a rejected file must not stay mapped while the error (and its traceback,
            # which holds these locals) lives on
            try:
                if btf is not None:
                    btf._words.release()
                    btf._raw.release()
                if isinstance(data, mmap.mmap):
                    data.close()
            except BufferError:
                pass  # a view is still out (interrupted mid-walk): unmapped when collected
            raise
        if cache:
            btf._cache_ok = btf._save_cache()
        return btf

    def _sample_crc(self, hdr: tuple[int, ...]) -> int:
        # Beyond stat(): the header and both ends of each section, so a cache cannot
        # survive a file rewritten in place with the same size and a restored mtime.
        # Split BTF also depends on its base (names may be base strings).
        d = self._data
        hdr_len, type_off, type_len = hdr[:3]
        crc = zlib.crc32(d[:hdr_len])
        for a, b in ((self._str_start, self._str_end),
                     (hdr_len + type_off, hdr_len + type_off + type_len)):
            crc = zlib.crc32(d[a:min(b, a + 256)], crc)
            crc = zlib.crc32(d[max(a, b - 256):b], crc)
        base = self.base
        if base is not None:
            crc = zlib.crc32(struct.pack("<QQ", len(base), base.strings_len), crc)
            crc = zlib.crc32(base._raw[:min(len(base._raw), 4096)], crc)
        return crc

    # -- on-disk cache -------------------------------------------------------------------

    def _cache_path(self) -> str:
        if self._cache_file is None:
            key = self._cache_key
            assert key is not None
            self._cache_file = os.path.join(cache_dir(), f"kbtf-{key[4]:08x}.idx")
        return self._cache_file

    def _load_cache(self) -> bool:
        """Adopt the index from the cache file if it is valid for this BTF file."""
        try:
            fd = os.open(self._cache_path(), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            blob = os.read(fd, 64 << 20)
        except OSError:
            return False
        finally:
            os.close(fd)
        try:
            (magic, version, flags, size, mtime, ino, dev, sample, path_crc, count, ntable,
             crc) = _CACHE_HEADER.unpack_from(blob)
        except struct.error:
            return False
        key = self._cache_key
        if (magic != _CACHE_MAGIC or version != _CACHE_VERSION
                or (size, mtime, ino, dev, path_crc, sample) != key):
            return False
        h = _CACHE_HEADER.size
        nbytes = count * 4
        has_table = bool(flags & _CACHE_HAS_TABLE)
        want = h + nbytes + (8 * ntable if has_table else 0)
        if len(blob) != want or zlib.crc32(memoryview(blob)[h:]) != crc:
            return False
        offsets = array("I")
        offsets.frombytes(memoryview(blob)[h:h + nbytes])
        if not self._plausible(offsets):
            return False
        self._offsets = offsets
        if has_table:
            table = array("Q")
            table.frombytes(memoryview(blob)[h + nbytes:])
            self._table = table
        return True

    def _plausible(self, offsets: array[int]) -> bool:
        # The checksum catches corruption; this catches a cache that matches a
        # different file (a stat() collision): the last record must end the section.
        words = self._words
        n = len(words)
        if not offsets:
            return n == 0
        last = offsets[-1]
        if offsets[0] != 0 or last + 3 > n:
            return False
        info = words[last + 1]
        kind = (info >> 24) & 0x1F
        return bool(last + _FIXED[kind] + _PER_VLEN[kind] * (info & 0xFFFF) == n)

    def _save_cache(self) -> bool:
        """Write the index atomically; any failure just means no cache (returns False)."""
        if self._cache_key is None:
            return False
        parts = [self._offsets.tobytes()]
        flags = 0
        ntable = 0
        if self._table is not None:
            parts.append(self._table.tobytes())
            ntable = len(self._table)
            flags |= _CACHE_HAS_TABLE
        crc = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
        size, mtime, ino, dev, path_crc, sample = self._cache_key
        header = _CACHE_HEADER.pack(_CACHE_MAGIC, _CACHE_VERSION, flags, size, mtime, ino, dev,
                                    sample, path_crc, len(self._offsets), ntable, crc)
        final = self._cache_path()
        tmp = f"{final}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                with os.fdopen(fd, "wb", closefd=True) as f:
                    f.write(header)
                    for p in parts:
                        f.write(p)
            except BaseException:
                os.unlink(tmp)
                raise
            os.replace(tmp, final)
        except OSError:
            return False  # read-only or full cache dir: run uncached
        return True

    # -- BTFView -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, void (and base types, for split BTF) included."""
        return self._first_id + len(self._offsets)

    def type(self, type_id: int) -> Type:
        """The type with id ``type_id``, decoded on first use and memoized (do not mutate)."""
        t = self._types.get(type_id)
        if t is not None:
            return t
        idx = type_id - self._first_id
        if idx < 0:
            if self.base is not None and type_id >= 0:
                return self.base.type(type_id)
            if type_id == 0:
                from .types import Void

                t = self._types[0] = Void()
                return t
            raise BTFError(f"type id {type_id} out of range")
        try:
            off = self._offsets[idx]
        except (IndexError, TypeError):
            raise BTFError(f"type id {type_id} out of range (have {len(self)})") from None
        from .spec import decode_type

        try:
            t, _ = decode_type(self._words, off, self.string)
        except BTFError as e:
            raise BTFError(f"type id {type_id}: {e}") from e
        except (IndexError, ValueError) as e:
            raise BTFError(f"type id {type_id}: malformed record: {e}") from e
        self._types[type_id] = t
        return t

    def find(self, name: str, kind: Kind | int | None = None) -> list[int]:
        """Ids of the types named exactly ``name`` (base first), optionally of one kind."""
        if not name:
            return []
        ids = list(self._find_ids(name.encode()))
        if kind is not None:
            ids = [i for i in ids if self.kind_of(i) == kind]
        return ids

    def candidates(self, essential: str) -> list[int]:
        """Ids of the types named ``essential`` or ``essential___<flavour>``, sorted."""
        return list(self._cand_ids(essential.encode()))

    # -- cheap accessors (no decoding) ---------------------------------------------------

    def kind_of(self, type_id: int) -> int:
        """The BTF kind number of a type, read straight from its record."""
        idx = type_id - self._first_id
        if idx < 0:
            if self.base is not None and type_id >= 0:
                return self.base.kind_of(type_id)
            if type_id == 0:
                return 0
            raise BTFError(f"type id {type_id} out of range")
        try:
            return (self._words[self._offsets[idx] + 1] >> 24) & 0x1F
        except IndexError:
            raise BTFError(f"type id {type_id} out of range (have {len(self)})") from None

    def name_of(self, type_id: int) -> str:
        """The name of a type ("" when anonymous), without decoding the type."""
        idx = type_id - self._first_id
        if idx < 0:
            if self.base is not None and type_id >= 0:
                return self.base.name_of(type_id)
            if type_id == 0:
                return ""
            raise BTFError(f"type id {type_id} out of range")
        try:
            return self.string(self._words[self._offsets[idx]])
        except IndexError:
            raise BTFError(f"type id {type_id} out of range (have {len(self)})") from None

    def string(self, off: int) -> str:
        """The string at offset ``off`` (split BTF: offsets below the base's length are the base's)."""
        rel = off - self._str_base
        if rel < 0:
            if self.base is not None and off >= 0:
                return self.base.string(off)
            raise BTFError(f"string offset {off} out of range")
        start = self._str_start + rel
        end = self._str_end
        if start >= end:
            raise BTFError(f"string offset {off} out of range (section ends at "
                           f"{self.strings_len})")
        stop = self._data.find(b"\0", start, end)
        if stop < 0:
            raise BTFError(f"string at offset {off} is not NUL-terminated")
        try:
            return self._data[start:stop].decode()
        except UnicodeDecodeError as e:
            raise BTFError(f"string at offset {off} is not valid UTF-8") from e

    @property
    def raw(self) -> memoryview:
        """The whole BTF file (header, types, strings), read-only."""
        return self._raw

    @property
    def start_id(self) -> int:
        """First id owned by this BTF (1, or ``len(base)`` for split BTF)."""
        return self._first_id

    @property
    def strings_len(self) -> int:
        """Length of the string section, base included (split string offsets start here)."""
        return self._str_base + (self._str_end - self._str_start)

    def own_ids(self) -> range:
        """The type ids this BTF owns (base types and void excluded)."""
        return range(self._first_id, len(self))

    def __repr__(self) -> str:
        split = f", split on {len(self.base)} base ids" if self.base is not None else ""
        return f"<KernelBTF {self.path!r}: {len(self)} type ids{split}>"

    # -- name lookup ---------------------------------------------------------------------

    def _find_ids(self, name: bytes) -> tuple[int, ...]:
        """Ids named exactly ``name`` (base first); memoized."""
        ids = self._ids_memo.get(name)
        if ids is None:
            if self._use_table():
                own = self._table_ids(name, exact=True)
            else:
                own = self._ids_at(self._string_hits(name + b"\0"))
            ids = self.base._find_ids(name) + own if self.base is not None else own
            self._ids_memo[name] = ids
        return ids

    def _cand_ids(self, essential: bytes) -> tuple[int, ...]:
        """Ids whose essential name is ``essential`` (base first); memoized."""
        ids = self._cand_memo.get(essential)
        if ids is None:
            if b"___" in essential:
                own: tuple[int, ...] = ()  # no name has this essential name
            elif self._use_table():
                own = self._table_ids(essential, exact=False)
            else:
                # An empty essential name matches only names starting with "___".
                exact = self._ids_at(self._string_hits(essential + b"\0")) if essential else ()
                flavored = self._flavor_ids(essential)
                own = tuple(sorted(set(exact) | set(flavored))) if flavored else exact
            ids = self.base._cand_ids(essential) + own if self.base is not None else own
            self._cand_memo[essential] = ids
        return ids

    # name table (cached path)

    def _use_table(self) -> bool:
        """Whether lookups go through the name table (building it when worthwhile)."""
        if self._table is not None:
            return True
        if not self._cache_ok or len(self._offsets) > _IDX_MASK:
            return False
        with self._lock:
            if self._table is None:
                self._table = self._build_table()
                self._save_cache()
        return True

    def _build_table(self) -> array[int]:
        """Sorted ``crc32(name) << 24 | index`` of every named own type.

        Types named ``a___b`` get a second entry under ``crc32(a)``, so one bisect
        finds a name's candidates too. Built with C-level iterators (map, compress):
        a Python loop over 126k names would cost several times more.
        """
        words = self._words
        names = array("I", map(words.__getitem__, self._offsets))
        idx = list(compress(range(len(names)), names))
        noff = list(filter(None, names))
        if self.base is None:
            strs = self._data[self._str_start:self._str_end]
            ends = map(strs.find, repeat(b"\0"), noff)
            parts = list(map(strs.__getitem__, map(slice, noff, ends)))
            # Flavoured names contain "___", which is rare: find them from its
            # positions instead of testing all names.
            flavored: set[int] = set()
            positions = self._flavor_positions()
            if positions:
                named = set(noff)
                start = self._str_start
                for p in positions:
                    rp = p - start
                    first = strs.rfind(b"\0", 0, rp) + 1
                    flavored.update(o for o in range(first, rp + 1) if o in named)
            extra: list[tuple[int, bytes]] = []
            if flavored:
                mask = list(map(flavored.__contains__, noff))
                extra = list(zip(compress(idx, mask), compress(parts, mask), strict=True))
        else:
            # Split BTF names may live in the base's strings; module BTF is small.
            raw = self._raw_string
            parts = [raw(o) or b"" for o in noff]
            extra = [(i, part) for i, part in zip(idx, parts, strict=True) if b"___" in part]
        packed = list(map(or_, map(lshift, map(zlib.crc32, parts), repeat(_IDX_BITS)), idx))
        for i, part in extra:
            packed.append(zlib.crc32(part.partition(b"___")[0]) << _IDX_BITS | i)
        return array("Q", sorted(packed))

    def _table_ids(self, key: bytes, *, exact: bool) -> tuple[int, ...]:
        """Own ids named ``key`` (exact) or whose essential name is ``key``."""
        table = self._table
        assert table is not None
        h = zlib.crc32(key) << _IDX_BITS
        stop = h + (1 << _IDX_BITS)
        n = len(table)
        k = bisect_left(table, h)
        ids = set()
        while k < n and table[k] < stop:
            i = table[k] & _IDX_MASK
            k += 1
            name = self._own_name_bytes(i)
            if name is None:
                continue
            if (name == key) if exact else (name.partition(b"___")[0] == key):
                ids.add(self._first_id + i)
        return tuple(sorted(ids))

    def _own_name_bytes(self, i: int) -> bytes | None:
        try:
            return self._raw_string(self._words[self._offsets[i]])
        except IndexError:
            return None

    def _raw_string(self, off: int) -> bytes | None:
        """The bytes of the string at ``off`` (base included), None when out of range."""
        rel = off - self._str_base
        if rel < 0:
            return self.base._raw_string(off) if self.base is not None else None
        start = self._str_start + rel
        stop = self._data.find(b"\0", start, self._str_end)
        return self._data[start:stop] if stop >= 0 else None

    # string search (uncached path)

    def _string_hits(self, pattern: bytes) -> tuple[int, ...]:
        """Every string offset (base included) where ``pattern`` occurs.

        A name's offset need not follow a NUL: BTF writers may point into the tail
        of a longer string, so every occurrence counts.
        """
        hits = self._hits_memo.get(pattern)
        if hits is None:
            data = self._data
            start, end = self._str_start, self._str_end
            shift = self._str_base - start
            found = []
            p = data.find(pattern, start, end)
            while p >= 0:
                found.append(p + shift)
                p = data.find(pattern, p + 1, end)
            if self.base is not None:
                hits = self.base._string_hits(pattern) + tuple(found)
            else:
                hits = tuple(found)
            self._hits_memo[pattern] = hits
        return hits

    def _flavor_ids(self, essential: bytes) -> list[int]:
        """Own ids named ``essential___<anything>``."""
        if (essential + b"___").find(b"___") != len(essential):
            return []  # "x_" + "___": the name's first "___" starts earlier
        offs = self._flavor_offsets(essential)
        b = self.base
        while b is not None:  # split types may name themselves with base strings
            offs += b._flavor_offsets(essential)
            b = b.base
        return list(self._ids_at(offs))

    def _flavor_offsets(self, essential: bytes) -> list[int]:
        """Absolute offsets in this BTF's own strings where ``essential___`` starts."""
        positions = self._flavor_positions()
        data, start = self._data, self._str_start
        n = len(essential)
        shift = self._str_base - start
        return [p - n + shift for p in positions
                if p - n >= start and data[p - n:p] == essential
                and data.find(b"___", p - n, p + 3) == p]  # the name's first "___"

    def _flavor_positions(self) -> list[int]:
        """Every position of "___" in this BTF's own strings (absolute in the file)."""
        positions = self._flavor_pos
        if positions is None:
            # "___" is rare in kernel strings (dozens), so list them all once.
            data, end = self._data, self._str_end
            positions = []
            p = data.find(b"___", self._str_start, end)
            while p >= 0:
                positions.append(p)
                p = data.find(b"___", p + 1, end)
            self._flavor_pos = positions
        return positions

    def _ids_at(self, offsets: Iterable[int]) -> tuple[int, ...]:
        """Own type ids whose name offset is one of ``offsets``, sorted."""
        offsets = [o for o in offsets if o]
        if not offsets:
            return ()
        names, srt = self._name_index()
        n = len(srt)
        first = self._first_id
        ids = set()
        for off in offsets:
            k = bisect_left(srt, off)
            if k == n or srt[k] != off:
                continue
            pat = off.to_bytes(4, sys.byteorder)
            q = names.find(pat)
            while q >= 0:
                if not q & 3:
                    ids.add(first + (q >> 2))
                q = names.find(pat, q + 1)
        return tuple(sorted(ids))

    def _name_index(self) -> tuple[bytes, array[int]]:
        """name_off per own type (as bytes, for find()) and the same values sorted."""
        names, srt = self._names, self._sorted_names
        if names is None or srt is None:
            with self._lock:
                names, srt = self._names, self._sorted_names
                if names is None or srt is None:
                    words = self._words
                    arr = array("I", map(words.__getitem__, self._offsets))
                    srt = array("I", sorted(arr))
                    names = arr.tobytes()
                    self._names, self._sorted_names = names, srt
        return names, srt


def _parse_header(data: mmap.mmap | bytes, path: str, *, split: bool) -> tuple[int, ...]:
    """Validate the BTF header; returns (hdr_len, type_off, type_len, str_off, str_len)."""
    size = len(data)
    if size < _BTF_HEADER.size:
        raise BTFError(f"{path}: too short for a BTF header ({size} bytes)")
    magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
        _BTF_HEADER.unpack_from(data)
    if magic != _BTF_MAGIC:
        if magic == 0x9FEB:
            raise BTFError(f"{path}: big-endian BTF is not supported")
        raise BTFError(f"{path}: bad BTF magic {magic:#06x}")
    if version != 1:
        raise BTFError(f"{path}: unsupported BTF version {version}")
    if hdr_len < _BTF_HEADER.size or hdr_len > size:
        raise BTFError(f"{path}: bad BTF header length {hdr_len}")
    body = size - hdr_len
    if type_off % 4 or type_len % 4 or (hdr_len + type_off) % 4:
        raise BTFError(f"{path}: BTF type section is not 4-byte aligned")
    if type_off + type_len > body or str_off + str_len > body:
        raise BTFError(f"{path}: BTF section offsets/lengths out of bounds")
    if type_off < str_off + str_len and str_off < type_off + type_len \
            and type_len and str_len:
        raise BTFError(f"{path}: BTF type and string sections overlap")
    s0 = hdr_len + str_off
    if not split and (str_len == 0 or data[s0] != 0):
        raise BTFError(f"{path}: BTF string section must start with an empty string")
    if str_len and data[s0 + str_len - 1] != 0:
        raise BTFError(f"{path}: BTF string section is not NUL-terminated")
    return hdr_len, type_off, type_len, str_off, str_len


_shared: dict[str, KernelBTF] = {}
_shared_lock = threading.RLock()


def kernel_btf(path: str | None = None) -> KernelBTF:
    """The process-wide shared index of the kernel BTF at ``path`` (default: vmlinux).

    Module BTF under /sys/kernel/btf/ is opened as split BTF on top of vmlinux.
    Thread-safe; each path is indexed once per process.
    """
    key = os.path.abspath(path or DEFAULT_PATH)
    btf = _shared.get(key)
    if btf is not None:
        return btf
    with _shared_lock:
        btf = _shared.get(key)
        if btf is None:
            base = None
            d, name = os.path.split(key)
            if d == _SYS_BTF_DIR and name != "vmlinux":
                base = kernel_btf(DEFAULT_PATH)
            btf = KernelBTF.open(key, base)
            _shared[key] = btf
    return btf
