"""Read shards back: bytes (checked against the manifest on request) and their samples."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from trimodal.shards import storage
from trimodal.shards.format import ShardFormatError, iter_samples
from trimodal.shards.manifest import ShardInfo


class ShardCorrupted(IOError):
    """A shard does not match its manifest entry; the message names the shard."""


def read_shard_bytes(root: str, info: ShardInfo, verify: bool = False) -> bytes:
    """The (decompressed) tar bytes of one shard; with ``verify``, checks size and sha256 first."""
    url = storage.join(root, info.name)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ShardCorrupted(f"shard missing: {url}") from None
    if verify:
        if len(data) != info.bytes:
            raise ShardCorrupted(f"shard {url}: {len(data)} bytes, manifest says {info.bytes}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ShardCorrupted(f"shard {url}: sha256 {digest[:12]}… does not match the manifest ({info.sha256[:12]}…)")
    if info.name.endswith(".zst"):
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise ShardCorrupted(f"shard {url}: zstd: {e}") from None
    return data


def iter_shard(root: str, info: ShardInfo, verify: bool = False) -> Iterator[dict[str, Any]]:
    """Samples of one shard (zero-copy array views into the shard's buffer)."""
    data = read_shard_bytes(root, info, verify=verify)
    try:
        yield from iter_samples(data, name=storage.join(root, info.name))
    except ShardFormatError as e:
        raise ShardCorrupted(str(e)) from None
