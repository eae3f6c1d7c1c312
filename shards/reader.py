"""Reading shards back: the one layer the loader, the mix job, stats and verify all use.

    bytes (read through fsspec; checked against the manifest) → member index → samples
          → bounded prefetch

- :func:`read_shard`: a shard's bytes, decompressed. ``verify`` is ``"size"`` (the default: the
  byte size the manifest records, which catches truncation and most concurrent rewrites),
  ``"sha256"`` (full checksum) or ``"none"``.
- :func:`index_shard`: the samples of a tar as ``(key, ((ext, start, end), ...))`` offsets into
  the bytes, walked once; the arrays are decoded only for the samples a caller asks for.
- :func:`decode_sample`: one indexed sample → ``{"__key__", <array>: ndarray, "json": dict}``,
  arrays as zero-copy views.
- :func:`iter_samples` / :func:`iter_shards`: the composition, with shards read ``depth`` ahead
  in a thread (I/O and hashing release the GIL), so memory stays at a few shards.

Every kind of damage raises one :class:`~trimodal.shards.format.ShardError` naming the shard and,
where there is one, the member.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from trimodal import storage
from trimodal.shards.format import ShardError, iter_tar_offsets, npy_view
from trimodal.shards.manifest import ShardInfo

VERIFY_MODES = ("none", "size", "sha256")
Member = tuple[str, int, int]  # (extension, payload start, payload end)
Entry = tuple[str, tuple[Member, ...]]  # (sample key, its members in tar order)
T = TypeVar("T")
R = TypeVar("R")

__all__ = ["ShardError", "VERIFY_MODES", "decode_sample", "index_shard", "iter_samples", "iter_shards",
           "prefetch", "read_shard"]


def read_shard(root: str, info: ShardInfo, verify: str = "size") -> bytes:
    """The (decompressed) tar bytes of one shard, checked against its manifest entry."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    url = storage.join(root, info.name)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ShardError(url, "missing") from None
    except OSError as e:
        raise ShardError(url, f"unreadable ({type(e).__name__}: {e})") from None
    if verify != "none" and len(data) != info.bytes:
        raise ShardError(url, f"{len(data)} bytes, manifest says {info.bytes}")
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


def index_shard(data: bytes | memoryview, where: str, expect: int | None = None) -> list[Entry]:
    """Group the tar's members into samples by key (tar order); ``expect`` checks the count."""
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
    if expect is not None and len(entries) != expect:
        raise ShardError(where, f"{len(entries)} samples, manifest says {expect}")
    return entries


def decode_sample(data: bytes | memoryview, entry: Entry, where: str, want_json: bool = True) -> dict[str, Any]:
    """``{"__key__", "json"?, <array name>: ndarray view, <other ext>: memoryview}``."""
    key, members = entry
    view = memoryview(data)
    sample: dict[str, Any] = {"__key__": key}
    for ext, start, end in members:
        try:
            if ext.endswith(".npy"):
                sample[ext[:-4]] = npy_view(view[start:end])
            elif ext == "json":
                if want_json:
                    sample["json"] = json.loads(bytes(view[start:end]))
            else:
                sample[ext] = view[start:end]
        except ShardError as e:
            raise e.at(where, f"{key}.{ext}") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ShardError(where, f"unparsable ({type(e).__name__}: {str(e)[:200]})", f"{key}.{ext}") from None
    return sample


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


def iter_shards(root: str, shards: Iterable[ShardInfo], verify: str = "size", depth: int = 2) -> Iterator[tuple[ShardInfo, bytes]]:
    """Shard bytes in the given order, ``depth`` shards read ahead."""
    return prefetch(lambda info: read_shard(root, info, verify), shards, depth)


def iter_samples(root: str, shards: Iterable[ShardInfo], verify: str = "size", want_json: bool = True,
                 depth: int = 2) -> Iterator[tuple[ShardInfo, dict[str, Any]]]:
    """Every sample of the given shards, in shard then tar order, each with its shard's info."""
    for info, data in iter_shards(root, shards, verify, depth):
        where = storage.join(root, info.name)
        for entry in index_shard(data, where, expect=info.samples):
            yield info, decode_sample(data, entry, where, want_json)
