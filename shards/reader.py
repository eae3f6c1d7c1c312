"""Reading shards back: the one layer the loader, the mix job, stats and verify all use.

    bytes (read through fsspec; checked against the manifest) → member index → samples
          → bounded prefetch

- :func:`read_shard`: a shard's bytes, decompressed. ``verify`` is ``"xxh3"`` (the default: the
  byte size and the xxh3-64 content hash the manifest records, so a shard rewritten by another
  job is refused before any of its samples is used, at a few per cent of the loader's time;
  manifests written before the hash existed get the size check), ``"size"`` (size only, which
  misses a rewrite of the same size — tars pad to 10 KiB, so most rewrites), ``"sha256"``
  (the archival checksum) or ``"none"``.
- :func:`index_shard`: the samples of a tar as a :class:`ShardIndex`, a sequence of
  ``(key, ((ext, start, end), ...))`` offsets into the bytes; the tar headers are found with a
  few numpy passes (:func:`~trimodal.shards.format.scan_tar`), not a Python step per member, and
  arrays are decoded only for the samples a caller asks for.
- :func:`decode_sample`: one indexed sample → a :class:`Sample` ``{"__key__", <array>: ndarray,
  "json": dict}``, arrays as zero-copy views, the json parsed only if it is read.
- :func:`iter_arrays` / :meth:`ShardIndex.array`: the fast path for callers that want one array
  per sample (the loader, benchmarks): no dict, no json, ``.npy`` headers parsed once per shard.
- :func:`iter_samples` / :func:`iter_shards`: the composition, with shards read ``depth`` ahead
  in a thread (I/O and hashing release the GIL), so memory stays at a few shards.

Every kind of damage raises one :class:`~trimodal.shards.format.ShardError` naming the shard and,
where there is one, the member.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import repeat
from typing import Any, TypeVar

import numpy as np

from trimodal import storage
from trimodal.shards.format import BLOCK, NPY_MAGIC, ShardError, iter_tar_offsets, npy_at, npy_info, scan_tar
from trimodal.shards.manifest import ShardInfo, content_hash

VERIFY_MODES = ("none", "size", "xxh3", "sha256")
DEFAULT_VERIFY = "xxh3"
Member = tuple[str, int, int]  # (extension, payload start, payload end)
Entry = tuple[str, tuple[Member, ...]]  # (sample key, its members in tar order)
T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Sample", "ShardError", "ShardIndex", "VERIFY_MODES", "decode_sample", "index_shard", "iter_arrays",
           "iter_samples", "iter_shards", "prefetch", "read_shard"]


def read_shard(root: str, info: ShardInfo, verify: str = DEFAULT_VERIFY) -> bytes:
    """The (decompressed) tar bytes of one shard, checked against its manifest entry."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    url = storage.join(root, info.name)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ShardError(url, f"missing, though the manifest of {root} lists it: removed or renamed by a rewrite, or "
                              f"the dataset is incomplete") from None
    except OSError as e:
        raise ShardError(url, f"unreadable ({type(e).__name__}: {e})") from None
    if verify != "none" and len(data) != info.bytes:
        raise ShardError(url, f"{len(data)} bytes, manifest says {info.bytes}: rewritten or damaged since the "
                              f"manifest of {root} was written")
    if verify == "xxh3" and info.xxh3:
        digest = content_hash(data)
        if digest != info.xxh3:
            raise ShardError(url, f"content hash xxh3 {digest} does not match the manifest ({info.xxh3}): rewritten or "
                                  f"damaged since the manifest of {root} was written")
    if verify == "sha256":
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ShardError(url, f"sha256 {digest[:12]}… does not match the manifest ({info.sha256[:12]}…)")
    if info.name.endswith(".zst"):
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise ShardError(url, f"zstd: {e}") from None
    return data


class Sample(dict):
    """A decoded sample: ``{"__key__", <array name>: ndarray, <other ext>: memoryview}`` plus a
    ``"json"`` member parsed only when it is first read.

    Why lazy: most readers (the loader, mix, benchmarks) want one array and never look at the
    metadata, and ``json.loads`` was the largest cost of a sample. ``s["json"]``,
    ``s.get("json")``, ``"json" in s`` (which does not parse) and anything that walks the items
    behave as if it had been parsed; an unparsable ``.json`` raises :class:`ShardError` naming
    the member when it is parsed. Pickles as a plain dict."""

    __slots__ = ("_json",)

    def _materialize(self) -> None:
        raw = self._json
        if raw is not None:
            if not dict.__contains__(self, "json"):
                dict.__setitem__(self, "json", _parse_json(*raw))  # a bad member raises on every access
            self._json = None

    def __missing__(self, key: str) -> Any:
        if key == "json" and self._json is not None:
            self._materialize()
            return dict.__getitem__(self, "json")
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (key == "json" and self._json is not None)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "json":
            self._materialize()
        return dict.get(self, key, default)

    def pop(self, key: str, *default: Any) -> Any:
        if key == "json":
            self._materialize()
        return dict.pop(self, key, *default)

    def __delitem__(self, key: str) -> None:
        if key == "json":
            self._materialize()
        dict.__delitem__(self, key)

    def _walk(name: str):  # noqa: N805  (a helper building the methods that see every item)
        base = getattr(dict, name)

        def method(self, *args, **kwargs):
            self._materialize()
            return base(self, *args, **kwargs)

        method.__name__ = name
        return method

    (keys, values, items, __iter__, __reversed__, __len__, __repr__, copy, popitem, setdefault, update, __or__,
     __ror__, __ior__) = map(_walk, ("keys", "values", "items", "__iter__", "__reversed__", "__len__", "__repr__",
                                    "copy", "popitem", "setdefault", "update", "__or__", "__ror__", "__ior__"))
    del _walk

    def __eq__(self, other: object) -> bool:
        self._materialize()
        if isinstance(other, Sample):
            other._materialize()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        self._materialize()
        return (dict, (dict(self.items()),))


def _parse_json(data: bytes | memoryview, start: int, end: int, where: str, member: str) -> Any:
    try:
        return json.loads(bytes(memoryview(data)[start:end]) if not isinstance(data, bytes) else data[start:end])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ShardError(where, f"unparsable ({type(e).__name__}: {str(e)[:200]})", member) from None


def _new_sample(key: str, json_at: tuple | None) -> Sample:
    s = Sample()
    s._json = json_at
    dict.__setitem__(s, "__key__", key)
    return s


class _NpyColumn:
    """One ``.npy`` member of every sample, decoded ahead of time: per sample the payload's data
    offset, element count, dtype and shape (dtype ``None`` where the member is absent, or where
    its header is unusual or damaged: that sample then takes :func:`npy_at`, which names the
    problem when the sample is read)."""

    __slots__ = ("starts", "ends", "offsets", "counts", "dtypes", "shapes", "flat")

    def __init__(self, data: bytes | memoryview, starts: np.ndarray, ends: np.ndarray) -> None:
        n = starts.size
        self.starts, self.ends = starts.tolist(), ends.tolist()
        offsets = np.zeros(n, dtype=np.int64)
        kind = np.full(n, -1, dtype=np.int64)  # index into the tables; -1: absent or slow path
        dtypes: list[np.dtype | None] = []
        counts: list[int] = []
        shapes: list[tuple | None] = []
        nb = len(data) // BLOCK
        present = np.flatnonzero((starts >= 0) & (ends - starts >= 12) & (starts % BLOCK == 0)
                                 & (starts + BLOCK <= nb * BLOCK))
        if present.size:
            blocks = np.frombuffer(data, dtype=np.uint8, count=nb * BLOCK).reshape(nb, BLOCK)
            rows = starts[present] // BLOCK
            head = blocks[rows, :10]
            ok = (head[:, :6] == np.frombuffer(NPY_MAGIC, np.uint8)).all(axis=1) & (head[:, 6] == 1)
            hlen = head[:, 8].astype(np.int64) | head[:, 9].astype(np.int64) << 8
            for h in np.unique(hlen[ok]).tolist():
                if h < 1 or 10 + h > BLOCK:
                    continue
                sel = np.flatnonzero(ok & (hlen == h))
                raw = blocks[rows[sel], 10 : 10 + h]
                keep = raw[:, -1] != 0  # a NUL-ended header is left to npy_at (exact bytes)
                if not keep.all():
                    sel, raw = sel[keep], raw[keep]
                headers = raw.view(f"S{h}").ravel().tolist()
                ids: dict[bytes, int] = {}
                for hdr in dict.fromkeys(headers):
                    try:
                        dtype, shape, fortran, count, _ = npy_info(hdr)
                    except ShardError:
                        ids[hdr] = -1
                        continue
                    ids[hdr] = len(dtypes)
                    dtypes.append(dtype)
                    counts.append(count)
                    shapes.append(None if len(shape) == 1 else (shape, "F" if fortran else "C"))
                idx = present[sel]
                kind[idx] = list(map(ids.__getitem__, headers))
                offsets[idx] = starts[idx] + 10 + h
            known = np.flatnonzero(kind >= 0)
            if known.size:
                nbytes = np.array([c * d.itemsize for c, d in zip(counts, dtypes)], dtype=np.int64)
                short = known[offsets[known] + nbytes[kind[known]] > ends[known]]
                kind[short] = -1  # truncated: npy_at names it
        kinds = kind.tolist()
        dtypes.append(None)  # kind -1
        counts.append(0)
        shapes.append(None)
        self.offsets = offsets.tolist()
        self.dtypes = list(map(dtypes.__getitem__, kinds))
        self.counts = list(map(counts.__getitem__, kinds))
        self.shapes = list(map(shapes.__getitem__, kinds))
        used = set(kinds)  # flat: every sample 1-D and in the tables
        self.flat = -1 not in used and all(shapes[k] is None for k in used)

    def get(self, data: bytes | memoryview, i: int) -> np.ndarray | None:
        dtype = self.dtypes[i]
        if dtype is not None:
            arr = np.frombuffer(data, dtype, self.counts[i], self.offsets[i])
            shape = self.shapes[i]
            return arr if shape is None else arr.reshape(shape[0], order=shape[1])
        start = self.starts[i]
        if start < 0:
            return None
        return npy_at(data, start, self.ends[i])


class ShardIndex(Sequence):
    """The samples of one shard in tar order: a sequence of :data:`Entry` (``(key, ((ext, start,
    end), ...))``, built on first use) over columns of member offsets.

    Why columns: a shard of ``webdataset`` samples is almost always uniform (every sample has the
    same members in the same order), so the index is a few arrays found by :func:`scan_tar`
    without a Python object per member, and :meth:`array` / :meth:`sample` decode a sample's
    arrays from per-member tables computed once per shard instead of parsing a header per
    sample. Non-uniform shards are indexed member by member (same result, slower)."""

    def __init__(self, where: str, keys: list[str], layout: tuple[str, ...] | None = None,
                 starts: np.ndarray | None = None, ends: np.ndarray | None = None,
                 entries: list[Entry] | None = None) -> None:
        self.where, self.keys = where, keys
        self._layout, self._starts, self._ends = layout, starts, ends  # uniform: (n, len(layout))
        self._entries = entries
        self._columns: dict[str, _NpyColumn] = {}
        self._plan: list[tuple[str, str, Any]] | None = None

    @property
    def uniform(self) -> bool:
        return self._layout is not None

    def __len__(self) -> int:
        return len(self.keys)

    def _build_entries(self) -> list[Entry]:
        if self._entries is None:
            cols = [zip(repeat(ext), self._starts[:, j].tolist(), self._ends[:, j].tolist())
                    for j, ext in enumerate(self._layout)]
            # tens of thousands of tuples at once: without the collector passes they would set off
            # (nothing here can form a cycle), which were a good part of the cost
            enabled = gc.isenabled()
            gc.disable()
            try:
                self._entries = list(zip(self.keys, zip(*cols))) if cols else [(k, ()) for k in self.keys]
            finally:
                if enabled:
                    gc.enable()
        return self._entries

    def __getitem__(self, i):
        return self._build_entries()[i]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._build_entries())

    def extensions(self) -> list[str]:
        """The member extensions found in the shard (``json``, ``text.npy``, ...), first seen first."""
        if self._layout is not None:
            return list(dict.fromkeys(self._layout))
        return list(dict.fromkeys(ext for _, members in self._build_entries() for ext, _, _ in members))

    def _offsets(self, ext: str) -> tuple[np.ndarray, np.ndarray]:
        """Per sample ``(start, end)`` of member ``ext`` (-1 where absent; the last one when a
        sample repeats it, as :func:`decode_sample` keeps the last)."""
        n = len(self.keys)
        if self._layout is not None:
            if ext not in self._layout:
                return np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
            j = len(self._layout) - 1 - self._layout[::-1].index(ext)
            return self._starts[:, j], self._ends[:, j]
        starts, ends = [-1] * n, [-1] * n
        for i, (_, members) in enumerate(self._build_entries()):
            for e, a, b in members:
                if e == ext:
                    starts[i], ends[i] = a, b
        return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)

    def _column(self, data: bytes | memoryview, name: str) -> _NpyColumn:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = _NpyColumn(data, *self._offsets(f"{name}.npy"))
        return col

    def array(self, data: bytes | memoryview, i: int, name: str = "text") -> np.ndarray | None:
        """Sample ``i``'s ``<name>.npy`` array (a zero-copy view), or None when it has none."""
        col = self._columns.get(name)
        try:
            return (col or self._column(data, name)).get(data, i)
        except ShardError as e:
            raise e.at(self.where, f"{self.keys[i]}.{name}.npy") from None

    def arrays(self, data: bytes | memoryview, name: str = "text") -> Iterator[np.ndarray | None]:
        """Every sample's ``<name>.npy`` array in tar order (None for a sample without one)."""
        col = self._column(data, name)
        if col.flat:
            frombuffer = np.frombuffer
            for dtype, count, offset in zip(col.dtypes, col.counts, col.offsets):
                yield frombuffer(data, dtype, count, offset)
            return
        for i in range(len(self.keys)):
            yield self.array(data, i, name)

    def sample(self, data: bytes | memoryview, i: int, want_json: bool = False) -> Sample:
        """What :func:`decode_sample` returns for sample ``i``, from the per-shard tables."""
        if self._layout is None:
            return decode_sample(data, self._build_entries()[i], self.where, want_json)
        if self._plan is None:
            plan = []
            for j, ext in enumerate(self._layout):
                if ext.endswith(".npy"):
                    plan.append((ext[:-4], "npy", self._column(data, ext[:-4])))
                elif ext == "json":
                    plan.append(("json", "json", j))
                else:
                    plan.append((ext, "raw", j))
            self._plan = plan
        key = self.keys[i]
        s = _new_sample(key, None)
        for name, kind, col in self._plan:
            if kind == "npy":
                try:
                    s[name] = col.get(data, i)
                except ShardError as e:
                    raise e.at(self.where, f"{key}.{name}.npy") from None
            elif kind == "json":
                if want_json:
                    dict.pop(s, "json", None)
                    s._json = (data, int(self._starts[i, col]), int(self._ends[i, col]), self.where, f"{key}.json")
            else:
                s[name] = memoryview(data)[int(self._starts[i, col]) : int(self._ends[i, col])]
        return s


def index_shard(data: bytes | memoryview, where: str, expect: int | None = None) -> ShardIndex:
    """Group the tar's members into samples by key (tar order); ``expect`` checks the count."""
    index = _index_uniform(data, where)
    if index is None:
        index = _index_members(data, where)
    if expect is not None and len(index) != expect:
        raise ShardError(where, f"{len(index)} samples, manifest says {expect}")
    return index


def _index_uniform(data: bytes | memoryview, where: str) -> ShardIndex | None:
    """The columnar index of a shard whose samples all have the same members (None otherwise)."""
    scan = scan_tar(data)
    if scan is None:
        return None
    names, starts, ends = scan
    m = names.shape[0]
    if m == 0:
        return ShardIndex(where, [], (), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64))
    is_dot = names == 46
    dot = int(np.argmax(is_dot[0]))
    if not is_dot[0, dot] or not is_dot[:, dot].all() or is_dot[:, :dot].any():
        return None  # keys of different lengths, or a name without an extension
    keys = names[:, :dot]
    same = (keys == keys[0]).all(axis=1)
    k = int(np.argmin(same)) if not same.all() else m
    if m % k:
        return None
    n = m // k
    grid = names.reshape(n, k, names.shape[1])
    if k > 1 and not (grid[:, 1:, :dot] == grid[:, :1, :dot]).all():
        return None
    if n > 1 and not (grid[1:, 0, :dot] != grid[:-1, 0, :dot]).any(axis=1).all():
        return None  # two consecutive samples with one key: grouped as one by the slow path
    if not (grid[:, :, dot + 1 :] == grid[:1, :, dot + 1 :]).all():
        return None
    layout = tuple(bytes(grid[0, j, dot + 1 :]).rstrip(b"\0").decode("ascii") for j in range(k))
    sample_keys = np.ascontiguousarray(grid[:, 0, :dot]).view(f"S{dot}").ravel().astype(f"U{dot}").tolist() \
        if dot else [""] * n
    return ShardIndex(where, sample_keys, layout, starts.reshape(n, k), ends.reshape(n, k))


def _index_members(data: bytes | memoryview, where: str) -> ShardIndex:
    """Member-by-member index (any tar :func:`iter_tar_offsets` reads; raises on damage)."""
    entries: list[Entry] = []
    key: str | None = None
    members: list[Member] = []
    for member, start, end in iter_tar_offsets(data, where):
        k, _, ext = member.partition(".")
        if k != key:
            if key is not None:
                entries.append((key, tuple(members)))
            key, members = k, []
        members.append((ext, start, end))
    if key is not None:
        entries.append((key, tuple(members)))
    return ShardIndex(where, [e[0] for e in entries], entries=entries)


def decode_sample(data: bytes | memoryview, entry: Entry, where: str, want_json: bool = True) -> Sample:
    """``{"__key__", "json"?, <array name>: ndarray view, <other ext>: memoryview}`` (a
    :class:`Sample`: the json is parsed when first read; ``want_json=False`` leaves it out)."""
    key, members = entry
    sample = _new_sample(key, None)
    for ext, start, end in members:
        if ext.endswith(".npy"):
            try:
                sample[ext[:-4]] = npy_at(data, start, end)
            except ShardError as e:
                raise e.at(where, f"{key}.{ext}") from None
        elif ext == "json":
            if want_json:
                dict.pop(sample, "json", None)
                sample._json = (data, start, end, where, f"{key}.json")
        else:
            sample[ext] = memoryview(data)[start:end]
    return sample


def iter_arrays(data: bytes | memoryview, where: str, name: str = "text", expect: int | None = None
                ) -> Iterator[np.ndarray | None]:
    """The fast path for a caller that wants one array per sample: every sample's
    ``<name>.npy`` (zero-copy view; None for a sample without one), in tar order, with no
    per-sample dict and no json."""
    return index_shard(data, where, expect).arrays(data, name)


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, with up to ``depth`` calls running ahead in threads.

    Memory is bounded by ``depth`` results; an exception from ``fn`` is raised when its item's
    turn comes (so earlier items are still delivered)."""
    depth = max(1, depth)
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending: list[tuple[T, Future]] = []
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, fut.result()


def iter_shards(root: str, shards: Iterable[ShardInfo], verify: str = DEFAULT_VERIFY, depth: int = 2) -> Iterator[tuple[ShardInfo, bytes]]:
    """Shard bytes in the given order, ``depth`` shards read ahead."""
    return prefetch(lambda info: read_shard(root, info, verify), shards, depth)


def iter_samples(root: str, shards: Iterable[ShardInfo], verify: str = DEFAULT_VERIFY, want_json: bool = True,
                 depth: int = 2) -> Iterator[tuple[ShardInfo, dict[str, Any]]]:
    """Every sample of the given shards, in shard then tar order, each with its shard's info."""
    for info, data in iter_shards(root, shards, verify, depth):
        where = storage.join(root, info.name)
        for entry in index_shard(data, where, expect=info.samples):
            yield info, decode_sample(data, entry, where, want_json)


def read_dataset(root: str, split: str | None = None, verify: str = "sha256") -> Iterator[dict[str, Any]]:
    """Every sample of the dataset at ``root`` (of one ``split`` when given), in manifest order:
    what a notebook needs to look at a dataset (the loader reads rows, not samples)."""
    from trimodal.shards.manifest import Manifest

    m = Manifest.load(root)
    shards = m.shards if split is None else m.split_shards(split)
    for _, sample in iter_samples(root, shards, verify=verify):
        yield sample

