"""The on-disk sample format of tokenized shards, and a zero-copy tar reader for it.

A shard is an ordinary POSIX tar that stock ``webdataset`` reads. Each sample is a group of
members sharing a key (``<key>.json``, ``<key>.text.npy``, ``<key>.image.npy``,
``<key>.audio.npy``) holding *modality-local* codes:

- ``text.npy``: 1-D uint16/uint32 SentencePiece ids;
- ``image.npy``: 2-D uint16 code grid (h, w), row-major;
- ``audio.npy``: 2-D uint16 code matrix (levels, frames);
- ``.json``: ``{"id", "source", "modality", "lengths", "provenance"}``.

Mixed shards (rows already packed to L) use ``<key>.tokens.npy`` (global ids, 1-D, length L),
``<key>.valid.npy`` is not stored: validity is ``tokens != PAD``.

Why our own reader: per-sample Python overhead, not I/O, dominates shard reading
(``docs/shards.md``), so :func:`iter_tar_offsets` walks tar headers in one in-memory buffer and :func:`npy_view` returns
``numpy.frombuffer`` views without copying. Members are written with deterministic metadata
(mtime 0, uid/gid 0, mode 0o644) so a re-run writes byte-identical shards.
"""

from __future__ import annotations

import functools
import io
import json
import math
import mmap
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

BLOCK = 512
ARRAY_NAMES = ("text", "image", "audio", "tokens")


class ShardError(ValueError):
    """Damage in a shard: the message names the shard, the member when known, and what is wrong.

    One type for every kind of damage (missing file, size or checksum mismatch, bad tar header,
    truncated member, bad ``.npy`` header, unparsable ``.json``, sample count off the manifest),
    raised by this module and by :mod:`trimodal.shards.reader`."""

    def __init__(self, shard: str, reason: str, member: str | None = None) -> None:
        self.shard, self.reason, self.member = shard, reason, member
        super().__init__(f"{shard}: {member}: {reason}" if member else f"{shard}: {reason}")

    def at(self, shard: str, member: str | None = None) -> "ShardError":
        """The same damage, located (used where a low-level error did not know the shard)."""
        return ShardError(shard, self.reason, member or self.member)


def key_from_id(record_id: str) -> str:
    """A webdataset-safe, deterministic sample key (no dots or slashes) for a record id."""
    import hashlib

    return hashlib.sha1(record_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                  npy: Callable[[np.ndarray], bytes] = npy_bytes) -> list[tuple[str, bytes]]:
    """Tar members of one sample, in a fixed order (json first, then arrays by name); ``npy``
    serialises an array (the writer passes a faster one with the same bytes)."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
    members = [(f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())]
    for name in sorted(arrays):
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown array name {name!r}; expected one of {ARRAY_NAMES}")
        members.append((f"{key}.{name}.npy", npy(arrays[name])))
    return members


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of the members with deterministic headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def iter_tar_offsets(buf: bytes | memoryview, name: str = "<shard>") -> Iterator[tuple[str, int, int]]:
    """Yield ``(member name, payload start, payload end)`` of the regular files of an in-memory
    tar (ustar/GNU): offsets into ``buf``, so an index of a shard can be kept without its bytes.

    Per-member Python work is what limits shard reading, so header fields are read straight out
    of a ``bytes`` buffer (no per-header copy); other buffers are read a header at a time."""
    direct = isinstance(buf, bytes)
    view = None if direct else memoryview(buf)
    n = len(buf)
    pos = 0
    while pos + BLOCK <= n:
        if direct:
            h, b = buf, pos
        else:
            h, b = bytes(view[pos : pos + BLOCK]), 0
        if h[b] == 0:  # end-of-archive marker
            return
        e = h.find(b"\0", b, b + 100)
        member = h[b : e if e >= 0 else b + 100].decode("utf-8", "backslashreplace")
        field = h[b + 124 : b + 136].partition(b"\0")[0]
        try:
            size = int(field, 8) if field.strip() else 0
        except ValueError:
            raise ShardError(name, f"bad tar header at offset {pos}") from None
        if h[b + 345] and h[b + 257 : b + 262] == b"ustar":  # ustar name prefix
            e = h.find(b"\0", b + 345, b + 500)
            member = f"{h[b + 345 : e if e >= 0 else b + 500].decode('utf-8', 'backslashreplace')}/{member}"
        start = pos + BLOCK
        end = start + size
        if end > n:
            raise ShardError(name, f"truncated at offset {pos}", member)
        if h[b + 156] in (48, 0):  # typeflag b"0" or b"\0": a regular file
            yield member, start, end
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK
    if pos < n and any(memoryview(buf)[pos:]):
        raise ShardError(name, f"trailing garbage at offset {pos}")


class TarScan(NamedTuple):
    """The regular members of a tar found by :func:`scan_tar`, as columns (tar order)."""

    names: np.ndarray  # uint8[m, w]: each member's name field (NUL padded, ASCII; w <= 100 columns)
    starts: np.ndarray  # int64[m]: payload start offsets
    ends: np.ndarray  # int64[m]: payload end offsets


_USTAR_MASK = 0x00FFFFFFFFFFFF00  # bytes 257..262 of a header: b"ustar\0"
_USTAR_WORD = int.from_bytes(b"\0ustar\0\0", "little") & _USTAR_MASK
_OCTAL = 8 ** np.arange(10, -1, -1, dtype=np.int64)


def scan_tar(buf: bytes | memoryview) -> TarScan | None:
    """The members of an in-memory tar found with a few numpy passes instead of a Python loop
    per header; ``None`` when the archive is not the plain kind this handles (then
    :func:`iter_tar_offsets` walks it, and raises on damage).

    Why it is exact: ustar headers are found by their magic at 512-byte block starts, then the
    chain ``header → next header`` computed from every size field must go from block 0 through
    every candidate to the end-of-archive marker; a payload block that happens to carry the magic
    breaks the chain, and so does any damage. Handled: ustar headers with canonical 11-digit
    octal sizes, ASCII names without a prefix field. Non-regular members are skipped like
    :func:`iter_tar_offsets` skips them."""
    n = len(buf)
    nb = n // BLOCK
    if nb == 0:
        return None
    words = np.frombuffer(buf, dtype="<u8", count=nb * (BLOCK // 8)).reshape(nb, BLOCK // 8)
    cand = np.flatnonzero((words[:, 32] & _USTAR_MASK) == _USTAR_WORD)  # bytes 256..263
    if cand.size == 0 or cand[0] != 0:
        return None
    blocks = np.frombuffer(buf, dtype=np.uint8, count=nb * BLOCK).reshape(nb, BLOCK)
    field = blocks[cand, 124:136]
    digits = field[:, :11] - np.uint8(48)  # bytes below b"0" wrap around to >= 208
    if not ((digits < 8).all() and ((field[:, 11] == 0) | (field[:, 11] == 32)).all()):
        return None
    sizes = digits.astype(np.int64) @ _OCTAL
    nxt = cand + 1 + (sizes + BLOCK - 1) // BLOCK
    if not np.array_equal(nxt[:-1], cand[1:]):
        return None
    starts = (cand + 1) * BLOCK
    ends = starts + sizes
    last = int(nxt[-1])
    if int(ends[-1]) > n or blocks[cand, 345].any():  # truncated, or a ustar name prefix
        return None
    if (last + 1) * BLOCK <= n:
        if blocks[last, 0] != 0:  # not the end-of-archive marker: something this does not handle
            return None
    elif last * BLOCK < n and any(memoryview(buf)[last * BLOCK :]):
        return None  # trailing garbage: the sequential walk names it
    names = blocks[cand, :100]
    used = np.flatnonzero(names.any(axis=0))
    names = names[:, : int(used[-1]) + 1] if used.size else names[:, :1]  # the columns any name uses
    nonzero = names != 0
    if not (nonzero[:, 0].all() and not (nonzero[:, 1:] & ~nonzero[:, :-1]).any() and (names < 128).all()):
        return None  # an empty name (read as the end), bytes after the name's NUL, or non-ASCII
    typeflag = blocks[cand, 156]
    regular = (typeflag == 48) | (typeflag == 0)
    if not regular.all():
        names, starts, ends = names[regular], starts[regular], ends[regular]
    return TarScan(names, starts, ends)


NPY_MAGIC = b"\x93NUMPY"


def npy_view(payload: memoryview | bytes) -> np.ndarray:
    """Zero-copy ``numpy.frombuffer`` view of a ``.npy`` payload (version 1/2/3 headers; no pickles)."""
    mv = memoryview(payload)
    return npy_at(mv, 0, len(mv))


def npy_at(data: bytes | memoryview, start: int, end: int) -> np.ndarray:
    """Zero-copy view of the ``.npy`` payload ``data[start:end]``, without slicing the buffer
    (a ``bytes`` or ``mmap`` shard is read in place: no memoryview per member on the hot path)."""
    kind = type(data)
    if (kind is bytes or kind is mmap.mmap) and end - start >= 12 and data[start + 6] == 1:  # one slice
        hstart = start + 10 + (data[start + 8] | data[start + 9] << 8)
        dtype, shape, fortran, count, nbytes = _npy_v1(data[start:hstart])
        if hstart + nbytes <= end:
            arr = np.frombuffer(data, dtype, count, hstart)
            return arr if len(shape) == 1 else arr.reshape(shape, order="F" if fortran else "C")
    if not isinstance(data, bytes):
        data = memoryview(data)
    if end - start < 12 or bytes(data[start : start + 6]) != NPY_MAGIC:
        raise ShardError("<payload>", "not an .npy payload")
    if data[start + 6] == 1:
        hlen, hstart = data[start + 8] | data[start + 9] << 8, start + 10
    else:
        hlen, hstart = int.from_bytes(data[start + 8 : start + 12], "little"), start + 12
    dtype, shape, fortran, count, nbytes = npy_info(bytes(data[hstart : hstart + hlen]))
    offset = hstart + hlen
    if offset + nbytes > end:
        raise ShardError("<payload>", f"truncated .npy payload ({end - start} bytes for shape {shape} {dtype})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if len(shape) == 1:
        return arr
    return arr.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=8192)
def _npy_v1(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int, int]:
    """:func:`npy_info` of a whole version-1 header block (magic included), cached as one key."""
    if head[:6] != NPY_MAGIC:
        raise ShardError("<payload>", "not an .npy payload")
    return npy_info(head[10:])


@functools.lru_cache(maxsize=8192)
def npy_info(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int, int]:
    """``(dtype, shape, fortran, element count, payload bytes)`` of an .npy header (cached:
    a shard repeats a few thousand distinct headers at most)."""
    dtype, shape, fortran = _parse_npy_header(header)
    count = math.prod(shape)
    return dtype, shape, fortran, count, count * dtype.itemsize


_HEADER_RE = re.compile(
    rb"^\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}\s*$"
)


@functools.lru_cache(maxsize=4096)
def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Parse (and cache) an .npy header. numpy writes one canonical form, matched by a regex;
    anything else falls back to a literal parse. Object dtypes (pickles) are refused."""
    m = _HEADER_RE.match(header)
    if m:
        descr, fortran = m.group(1).decode(), m.group(2) == b"True"
        shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip())
    else:
        import ast

        try:
            d = ast.literal_eval(header.decode("latin1"))
        except (ValueError, SyntaxError):
            raise ShardError("<payload>", f"bad .npy header {header[:80]!r}") from None
        if not isinstance(d, dict) or not {"descr", "fortran_order", "shape"} <= set(d):
            raise ShardError("<payload>", f"bad .npy header {header[:80]!r}")
        descr, fortran, shape = d["descr"], bool(d["fortran_order"]), tuple(int(x) for x in d["shape"])
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise ShardError("<payload>", f"bad .npy dtype {descr!r}") from None
    if dtype.hasobject:
        raise ShardError("<payload>", "object arrays are refused (no pickles)")
    return dtype, shape, fortran
