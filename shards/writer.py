"""Write one shard (a tar of samples) atomically and describe it for the manifest; and the
byte-exact fast way to serialise and frame samples (cached tar and ``.npy`` headers)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.format import ARRAY_NAMES, encode_sample, npy_bytes, tar_bytes
from trimodal.shards.manifest import ShardInfo, content_hash


def shard_name(index: int, count: int, compression: str = "none") -> str:
    """Deterministic names: ``shard-00003-of-00010.tar`` (``.tar.zst`` when compressed)."""
    suffix = ".tar.zst" if compression == "zstd" else ".tar"
    return f"shard-{index:05d}-of-{count:05d}{suffix}"


def sample_tokens(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {name: int(np.asarray(a).size) for name, a in arrays.items()}


def write_shard(
    root: str,
    name: str,
    samples: Iterable[tuple[str, dict[str, Any], dict[str, np.ndarray]]],
    compression: str = "none",
) -> ShardInfo:
    """Write ``(key, meta, arrays)`` samples in the given order as ``root/name``; atomic."""
    return write_encoded(
        root, name, ((encode_sample(key, meta, arrays), sample_tokens(arrays)) for key, meta, arrays in samples), compression
    )


def write_encoded(
    root: str,
    name: str,
    samples: Iterable[tuple[list[tuple[str, bytes]], dict[str, int]]],
    compression: str = "none",
) -> ShardInfo:
    """Write already-serialised samples (tar members from ``encode_sample`` + token counts)."""
    members: list[tuple[str, bytes]] = []
    count = 0
    tokens: dict[str, int] = {}
    for sample_members, sample_tok in samples:
        members.extend(sample_members)
        count += 1
        for k, v in sample_tok.items():
            tokens[k] = tokens.get(k, 0) + v
    data = _compressed(tar_bytes(members), compression)
    sha256 = storage.write_atomic(storage.join(root, name), data)
    return ShardInfo(name=name, samples=count, tokens=tokens, bytes=len(data), sha256=sha256, xxh3=content_hash(data))


# Byte-exact fast paths. Serialising a sample with ``tarfile`` and ``np.save`` costs ~50 µs
# (a ``TarInfo.tobuf`` is ~20 µs a member), as much as encoding a short document; the functions
# below build the same bytes from cached templates. They are checked against
# :func:`~trimodal.shards.format.tar_bytes` / :func:`~trimodal.shards.format.encode_sample` and fall
# back to them outside their fast case (a long or non-ASCII name, an unusual dtype).

_TAR_ENCODING, _TAR_ERRORS = tarfile.ENCODING, "surrogateescape"
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """The member header :func:`~trimodal.shards.format.tar_bytes` writes (deterministic fields)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _template() -> tuple[bytes, int]:
    """A header with an empty name and size 0, and its checksum without those two fields."""
    buf = _tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, _TAR_ENCODING, _TAR_ERRORS)
    # tarfile's checksum: the bytes of the header with the 8-byte checksum field read as spaces
    base = 256 + sum(buf[:148]) + sum(buf[156:]) - sum(buf[124:136])
    return buf, base


_HEADER, _HEADER_SUM = _template()


def tar_header(name: str, size: int) -> bytes:
    """The ustar header ``tarfile`` writes for one of our members (``name``, ``size`` bytes)."""
    raw = name.encode(_TAR_ENCODING, _TAR_ERRORS)
    if len(raw) > 100 or not name.isascii() or not 0 <= size < 8**11:
        return _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, _TAR_ENCODING, _TAR_ERRORS)
    size_field = b"%011o\x00" % size
    chksum = _HEADER_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, bytes(100 - len(raw)), _HEADER[100:124], size_field, _HEADER[136:148],
                     b"%06o\x00" % chksum, _HEADER[155:]))


def tar_member(name: str, data: bytes) -> bytes:
    """One member as it appears inside a tar: header, payload, NUL padding to a block."""
    pad = -len(data) % _BLOCK
    return b"".join((tar_header(name, len(data)), data, bytes(pad)))


def tar_end(length: int) -> bytes:
    """What closes a tar whose members take ``length`` bytes: two zero blocks, then zero padding
    to a whole 10 KiB record (as ``tarfile`` writes it)."""
    return bytes(2 * _BLOCK + (-(length + 2 * _BLOCK) % _RECORD))


def frame_sample(members: list[tuple[str, bytes]]) -> bytes:
    """A sample's members, framed: concatenating framed samples and :func:`tar_end` gives the
    bytes :func:`~trimodal.shards.format.tar_bytes` writes for all their members."""
    return b"".join(tar_member(name, data) for name, data in members)


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def fast_npy_bytes(array: np.ndarray) -> bytes:
    """:func:`~trimodal.shards.format.npy_bytes`, with the header cached per (dtype, shape)."""
    a = np.ascontiguousarray(array)
    header = _fast_npy_header(a)
    return npy_bytes(a) if header is None else header + a.tobytes()


def fast_encode_sample(key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[tuple[str, bytes]]:
    """:func:`~trimodal.shards.format.encode_sample` (same members, same bytes), faster."""
    return encode_sample(key, meta, arrays, npy=fast_npy_bytes)


_HEADER_ROW = np.frombuffer(_HEADER, dtype=np.uint8)
_OCTAL_11 = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_OCTAL_6 = 8 ** np.arange(5, -1, -1, dtype=np.int64)


def tar_headers(keys: np.ndarray, suffix: bytes, sizes: np.ndarray) -> bytes:
    """:func:`tar_header` of ``key + suffix`` for a batch of equal-length ASCII keys (``keys``: a
    ``uint8`` array ``[n, key length]``) at once, concatenated (512 bytes each): per-member Python
    header work was a good part of a short document's cost."""
    n, width = keys.shape
    head = np.empty((n, _BLOCK), dtype=np.uint8)
    head[:] = _HEADER_ROW
    head[:, :width] = keys
    head[:, width : width + len(suffix)] = np.frombuffer(suffix, dtype=np.uint8)
    head[:, 124:135] = sizes[:, None] // _OCTAL_11 % 8 + 48
    head[:, 135] = 0
    chksum = (_HEADER_SUM + sum(suffix) + keys.sum(axis=1, dtype=np.int64) + head[:, 124:135].sum(axis=1, dtype=np.int64))
    head[:, 148:154] = chksum[:, None] // _OCTAL_6 % 8 + 48
    head[:, 154] = 0
    return head.tobytes()


def _fast_npy_header(a: np.ndarray) -> bytes | None:
    """The cached ``.npy`` header of ``a`` (None outside :func:`fast_npy_bytes`'s fast case)."""
    if a.dtype.kind not in "biuf" or a.dtype.fields is not None or a.dtype.subdtype is not None:
        return None
    key = (a.dtype.str, a.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        if len(_NPY_HEADERS) > 65536:
            _NPY_HEADERS.clear()
        full = npy_bytes(np.zeros(a.shape, a.dtype))
        header = _NPY_HEADERS[key] = full[: len(full) - a.nbytes]
    return header


def frame_samples(keys: list[str], metas: list[bytes], name: str, arrays: list[np.ndarray]) -> list[bytes]:
    """``frame_sample(fast_encode_sample(key, meta, {name: array}))`` for a batch of samples of one
    array each, with ``meta`` already serialised as :func:`~trimodal.shards.format.encode_sample`
    serialises it: the same bytes, the tar headers of the batch made at once (:func:`tar_headers`)
    and no per-member lists. Falls back to the per-sample path outside the fast case (keys of
    unequal length or not ASCII, an unusual dtype)."""
    if name not in ARRAY_NAMES:
        raise ValueError(f"unknown array name {name!r}; expected one of {ARRAY_NAMES}")
    n = len(keys)
    if n == 0:
        return []
    arrays = [np.ascontiguousarray(a) for a in arrays]
    npy_heads = [_fast_npy_header(a) for a in arrays]
    width = len(keys[0])
    suffix_j, suffix_a = b".json", f".{name}.npy".encode()
    joined = "".join(keys)
    if (None in npy_heads or len(joined) != n * width or not joined.isascii() or "." in joined or "/" in joined
            or width + len(suffix_a) > 100 or any(len(k) != width for k in keys)):
        return [frame_sample(fast_encode_sample_json(k, m, {name: a})) for k, m, a in zip(keys, metas, arrays)]
    key_rows = np.frombuffer(joined.encode(), dtype=np.uint8).reshape(n, width)
    len_j = np.fromiter(map(len, metas), dtype=np.int64, count=n)
    len_a = np.fromiter((len(h) + a.nbytes for h, a in zip(npy_heads, arrays)), dtype=np.int64, count=n)
    if int(len_j.max()) >= 8**11 or int(len_a.max()) >= 8**11:
        return [frame_sample(fast_encode_sample_json(k, m, {name: a})) for k, m, a in zip(keys, metas, arrays)]
    heads_j = tar_headers(key_rows, suffix_j, len_j)
    heads_a = tar_headers(key_rows, suffix_a, len_a)
    pad_j = (-len_j % _BLOCK).tolist()
    pad_a = (-len_a % _BLOCK).tolist()
    zeros = bytes(_BLOCK)
    out = []
    for i, (meta, head, a) in enumerate(zip(metas, npy_heads, arrays)):
        at = i * _BLOCK
        out.append(b"".join((heads_j[at : at + _BLOCK], meta, zeros[: pad_j[i]], heads_a[at : at + _BLOCK], head,
                             a, zeros[: pad_a[i]])))
    return out


def fast_encode_sample_json(key: str, meta: bytes, arrays: dict[str, np.ndarray]) -> list[tuple[str, bytes]]:
    """:func:`fast_encode_sample` with the json member already serialised."""
    members = fast_encode_sample(key, {}, arrays)
    members[0] = (members[0][0], meta)
    return members


def write_framed(root: str, name: str, framed: Iterable[bytes], compression: str = "none") -> tuple[int, int, str, str]:
    """Write already framed samples (:func:`frame_sample`, in shard order) as ``root/name``,
    atomically; returns (samples, bytes written, sha256, xxh3)."""
    parts = list(framed)
    n = len(parts)
    parts.append(tar_end(sum(len(p) for p in parts)))
    data = b"".join(parts)
    del parts
    data = _compressed(data, compression)
    return n, len(data), storage.write_atomic(storage.join(root, name), data), content_hash(data)


def _compressed(data: bytes, compression: str) -> bytes:
    """A shard's bytes as stored: as they are, or zstd (level 3)."""
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression != "none":
        raise ValueError(f"unknown compression {compression!r}; expected 'none' or 'zstd'")
    return data
