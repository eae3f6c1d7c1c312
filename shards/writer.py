"""Write one shard (a tar of samples) atomically and describe it for the manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.format import encode_sample, tar_bytes
from trimodal.shards.manifest import ShardInfo


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
    data = tar_bytes(members)
    if compression == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    elif compression != "none":
        raise ValueError(f"unknown compression {compression!r}; expected 'none' or 'zstd'")
    storage.write_atomic(storage.join(root, name), data)
    return ShardInfo(name=name, samples=count, tokens=tokens, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
