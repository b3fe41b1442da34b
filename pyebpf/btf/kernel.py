"""The kernel BTF index: fast, lazy and cached.

``/sys/kernel/btf/vmlinux`` holds about 126k types. Decoding them all takes seconds
in Python, and a CO-RE load needs a few dozen. So, as cilium/ebpf does, we:

* mmap the file (a ``read()`` of 5 MiB costs 20x more);
* make ONE pass over the type section that records where each record starts
  (``array('I')`` of u32 word indexes, one per type id);
* decode a type only when :meth:`KernelBTF.type` asks for it, and memoize it;
* look names up without decoding every string: ``bytes.find`` in the string
  section gives the offsets where a name is stored, and a sorted array of the
  type name offsets tells which of those offsets name a type;
* keep the index arrays in an on-disk cache keyed by the file's stat() identity,
  so a later process reloads them with one ``read()`` instead of walking again.

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

# On-disk cache: header, then the u32 arrays back to back (native byte order).
_CACHE_MAGIC = b"PYEBTFIX"
_CACHE_VERSION = 1
# magic, version, flags, st_size, st_mtime_ns, st_ino, st_dev, sample crc, path crc,
# own type count, "___" position count, payload crc. The payload is the record offsets,
# then (flag HAS_NAMES) the name offsets, the sorted name offsets and the "___" positions.
_CACHE_HEADER = struct.Struct("<8sIIQQQQIIIII")
_CACHE_HAS_NAMES = 1


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


def _walk(words: memoryview) -> array:
    """Word index of every record in the type section, in type id order.

    This is the hot loop of opening kernel BTF, so it is hand-written: the construct
    description in :mod:`pyebpf.btf.formats` needs 1-3 s for vmlinux and even
    :func:`pyebpf.btf.spec.decode_type` builds objects we do not want yet. Reading
    one u32 per record from the memoryview and stepping by a table lookup takes
    ~20 ms for 126k records.
    """
    n = len(words)
    offsets = array("I")
    add = offsets.append
    fixed = _FIXED
    per = _PER_VLEN
    i = 0
    try:
        while i < n:
            add(i)
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            i += fixed[kind] + per[kind] * (info & 0xFFFF)
    except IndexError:
        pass  # a truncated header word; reported below
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
        self._names: bytes | None = None  # name_off of each own type, u32 native
        self._sorted_names: array | None = None
        self._types: dict[int, Type] = {}
        self._ids_memo: dict[bytes, tuple[int, ...]] = {}
        self._cand_memo: dict[bytes, tuple[int, ...]] = {}
        self._hits_memo: dict[bytes, tuple[int, ...]] = {}
        self._flavor_pos: list[int] | None = None
        self._lock = threading.RLock()
        self._cache_file: str | None = None
        self._cache_key: tuple[int, int, int, int, int, int] | None = None

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
        hdr = _parse_header(data, path, split=base is not None)
        btf = cls(path, data, base, hdr)
        if cache:
            btf._cache_key = (
                st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev,
                zlib.crc32(os.fsencode(os.path.abspath(path))),
                btf._sample_crc(hdr[0]),
            )
            if btf._load_cache():
                return btf
        btf._offsets = _walk(btf._words)
        if cache:
            btf._save_cache()
        return btf

    def _sample_crc(self, hdr_len: int) -> int:
        # Beyond stat(): the header and both ends of each section, so a cache cannot
        # survive a file rewritten in place with the same size and a restored mtime.
        d = self._data
        crc = zlib.crc32(d[:hdr_len])
        for a, b in ((self._str_start, self._str_end),
                     (hdr_len, hdr_len + self._words.nbytes)):
            crc = zlib.crc32(d[a:min(b, a + 256)], crc)
            crc = zlib.crc32(d[max(a, b - 256):b], crc)
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
            (magic, version, flags, size, mtime, ino, dev, sample, path_crc, count, nflavor,
             crc) = _CACHE_HEADER.unpack_from(blob)
        except struct.error:
            return False
        key = self._cache_key
        if (magic != _CACHE_MAGIC or version != _CACHE_VERSION
                or (size, mtime, ino, dev, path_crc, sample) != key):
            return False
        h = _CACHE_HEADER.size
        nbytes = count * 4
        has_names = bool(flags & _CACHE_HAS_NAMES)
        want = h + nbytes + (2 * nbytes + 4 * nflavor if has_names else 0)
        if len(blob) != want or zlib.crc32(memoryview(blob)[h:]) != crc:
            return False
        offsets = array("I")
        offsets.frombytes(memoryview(blob)[h:h + nbytes])
        if not self._plausible(offsets):
            return False
        self._offsets = offsets
        if has_names:
            self._names = blob[h + nbytes:h + 2 * nbytes]
            srt = array("I")
            srt.frombytes(memoryview(blob)[h + 2 * nbytes:h + 3 * nbytes])
            flavors = array("I")
            flavors.frombytes(memoryview(blob)[h + 3 * nbytes:])
            start = self._str_start
            if flavors and flavors[-1] >= self._str_end - start:
                return False
            self._sorted_names = srt
            self._flavor_pos = [start + p for p in flavors]
        return True

    def _plausible(self, offsets: array) -> bool:
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
        return last + _FIXED[kind] + _PER_VLEN[kind] * (info & 0xFFFF) == n

    def _save_cache(self) -> None:
        """Write the index atomically; any failure just means no cache."""
        if self._cache_key is None:
            return
        parts = [self._offsets.tobytes()]
        flags = 0
        nflavor = 0
        if self._names is not None and self._sorted_names is not None:
            start = self._str_start
            flavors = array("I", [p - start for p in self._flavor_positions()])
            nflavor = len(flavors)
            parts += [self._names, self._sorted_names.tobytes(), flavors.tobytes()]
            flags |= _CACHE_HAS_NAMES
        crc = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
        size, mtime, ino, dev, path_crc, sample = self._cache_key
        header = _CACHE_HEADER.pack(_CACHE_MAGIC, _CACHE_VERSION, flags, size, mtime, ino, dev,
                                    sample, path_crc, len(self._offsets), nflavor, crc)
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
            pass  # read-only or full cache dir: run uncached

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
        key = essential.encode()
        memo = self._cand_memo.get(key)
        if memo is None:
            # An empty essential name matches only names starting with "___".
            memo = self._find_ids(key) if key else ()
            flavored = self._flavor_ids(key)
            if flavored:
                memo = tuple(sorted(set(memo) | set(flavored)))
            self._cand_memo[key] = memo
        return list(memo)

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
            own = self._ids_at(self._string_hits(name + b"\0"))
            if self.base is not None:
                ids = self.base._find_ids(name) + own
            else:
                ids = own
            self._ids_memo[name] = ids
        return ids

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
        """Ids (base first) named ``essential___<anything>``."""
        out = self.base._flavor_ids(essential) if self.base is not None else []
        offs = self._flavor_offsets(essential)
        b = self.base
        while b is not None:  # split types may name themselves with base strings
            offs += b._flavor_offsets(essential)
            b = b.base
        out += self._ids_at(offs)
        return out

    def _flavor_offsets(self, essential: bytes) -> list[int]:
        """Absolute offsets in this BTF's own strings where ``essential___`` starts."""
        positions = self._flavor_positions()
        data, start = self._data, self._str_start
        n = len(essential)
        shift = self._str_base - start
        return [p - n + shift for p in positions
                if p - n >= start and data[p - n:p] == essential]

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
        ids = []
        for off in offsets:
            k = bisect_left(srt, off)
            if k == n or srt[k] != off:
                continue
            pat = off.to_bytes(4, sys.byteorder)
            q = names.find(pat)
            while q >= 0:
                if not q & 3:
                    ids.append(first + (q >> 2))
                q = names.find(pat, q + 1)
        ids.sort()
        return tuple(ids)

    def _name_index(self) -> tuple[bytes, array]:
        """name_off per own type (as bytes, for find()) and the same values sorted.

        Built on the first name lookup (~15 ms for vmlinux), then cached on disk.
        """
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
                    self._save_cache()
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
