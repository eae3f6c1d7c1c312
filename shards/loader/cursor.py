"""One source's share of one logical stream: epochs → shard permutation → sample permutation.

Stream ``s`` of ``n`` reads the source's shards with index ``i ≡ s (mod n)`` when the source has at
least ``n`` shards (shard striding), else every shard keeping the samples with index
``j ≡ s (mod n)`` (sample striding), so the streams partition the source.

Per epoch the shard order is a permutation seeded by ``(seed, epoch, stream, source)`` under
shard striding, and by ``(seed, epoch, source)`` under sample striding: there every stream of a
source walks the *same* shard order, in step, so the streams of one process read each shard once
per pass and share its bytes and index (a small per-process cache, :class:`SharedShards`)
instead of each reading every whole shard. The sample order inside a shard is a permutation
seeded by ``(seed, epoch, stream, source, shard)``. The state is three integers and a flag;
everything else is rebuilt from them.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.format import ShardError
from trimodal.shards.loader.columns import Column
from trimodal.shards.loader.sources import Source
from trimodal.shards.manifest import ShardInfo
from trimodal.shards.reader import Sample, ShardIndex, index_shard, read_shard

SHARED_PER_SOURCE = 2  # shards kept per source: the one the streams are on and the next


class SharedShards:
    """The shard bytes and indexes the streams of one process share under sample striding,
    keyed by ``(root, shard name, sha256)``: at most ``per_source`` shards of each source (least
    recently used evicted), so memory stays at about two shards per source however many streams
    there are. Streams walk a source's shards in step (one shard order), so each shard is read
    and indexed once per pass; a stream that falls more than ``per_source`` shards behind reads
    again (correct, only slower). The store is a plain dict the process owns (``Context`` drops
    it when pickled into a dataloader worker)."""

    def __init__(self, store: dict, per_source: int = SHARED_PER_SOURCE) -> None:
        self.store, self.per_source = store, per_source

    def get(self, root: str, info: ShardInfo, verify: str, where: str) -> tuple[bytes, ShardIndex]:
        key = (root, info.name, info.sha256)
        hit = self.store.pop(key, None)
        if hit is None:
            data = read_shard(root, info, verify)
            hit = (data, index_shard(data, where, expect=info.samples))
            same = [k for k in self.store if k[0] == root]
            for k in same[: max(0, len(same) - self.per_source + 1)]:
                del self.store[k]
        self.store[key] = hit  # most recently used last
        return hit


class Cursor:
    """Yields the samples (dicts of zero-copy arrays) of ``source`` that belong to ``stream``."""

    def __init__(self, source: Source, stream: int, num_streams: int, seed: int, *, verify: str, on_corrupt: str,
                 cycle: bool, counters: dict[str, int], index_cache: dict) -> None:
        self.source, self.stream, self.n, self.seed = source, stream, num_streams, seed
        self.verify, self.on_corrupt, self.cycle = verify, on_corrupt, cycle
        self.counters = counters
        self.where = source.root  # the shard of the sample returned last (errors name it)
        self.shared = SharedShards(index_cache)  # one store per process, shared by its streams
        shards = source.shards
        self.stride = len(shards) < num_streams
        if self.stride:
            self.shard_ids = list(range(len(shards)))
            counts = [len(range(stream, s.samples, num_streams)) for s in shards]
        else:
            self.shard_ids = list(range(stream, len(shards), num_streams))
            counts = [shards[i].samples for i in self.shard_ids]
        self.view_counts = dict(zip(self.shard_ids, counts))
        self.total = sum(counts)  # samples of this source in this stream, per epoch
        # state
        self.epoch = 0
        self.shard_pos = 0
        self.sample_pos = 0
        self.exhausted = self.total == 0
        # live (rebuilt from the state)
        self._order: np.ndarray | None = None
        self._order_epoch = -1
        self._loaded: tuple[bytes, ShardIndex, dict] | None = None
        self._perm: list[int] | None = None
        self._failures = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sample_pos": self.sample_pos, "exhausted": self.exhausted}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.epoch = int(d["epoch"])
        self.shard_pos = int(d["shard_pos"])
        self.sample_pos = int(d["sample_pos"])
        self.exhausted = bool(d["exhausted"]) or self.total == 0
        self._loaded = self._perm = None

    def _shard_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            # sample striding: no stream in the seed, so every stream of the source walks the same
            # order and the streams of a process share each shard's bytes (module docstring)
            parts = [self.seed, self.epoch, self.source.salt] if self.stride else \
                [self.seed, self.epoch, self.stream, self.source.salt]
            rng = np.random.default_rng(parts)
            self._order = np.asarray(self.shard_ids, dtype=np.int64)[rng.permutation(len(self.shard_ids))]
            self._order_epoch = self.epoch
        return self._order

    def _corrupt(self, err: ShardError) -> None:
        """Count a damaged shard (``on_corrupt="skip"``) or re-raise it."""
        if self.on_corrupt != "skip":
            raise err
        self.counters["shards_skipped_corrupt"] += 1
        self._failures += 1
        if self._failures > len(self.shard_ids):
            raise ShardError(self.source.root, f"every shard of stream {self.stream} is damaged (last: {err})")

    def _check_not_rewritten(self, where: str) -> None:
        """Each shard open asks whether a pipeline holds the root's writer lock for another run
        than the manifest's (one small read): a rewrite is refused from its first moment, before
        any rewritten shard is opened; the content hash catches one that already finished."""
        from trimodal.shards.lock import DatasetLocked, check_readable

        try:
            check_readable(self.source.root, self.source.manifest.run_id)
        except DatasetLocked as e:
            raise DatasetLocked(f"{where}: not opened: {e}") from None

    def _load(self, shard: int) -> bool:
        """Read and index shard ``shard`` (arrays are decoded lazily, only for this stream's
        samples); False when it was damaged and skipped. Under sample striding the bytes and
        index come from :class:`SharedShards` (each shard read once by the process's streams)."""
        info = self.source.shards[shard]
        where = storage.join(self.source.root, info.name)
        if self.verify != "none":
            self._check_not_rewritten(where)
        try:
            if self.stride:
                data, index = self.shared.get(self.source.root, info, self.verify, where)
            else:
                data = read_shard(self.source.root, info, self.verify)
                index = index_shard(data, where, expect=info.samples)
        except ShardError as e:
            self._corrupt(e)
            return False
        idx = np.arange(self.stream, len(index), self.n) if self.stride else np.arange(len(index))
        rng = np.random.default_rng([self.seed, self.epoch, self.stream, self.source.salt, shard])
        self._perm = idx[rng.permutation(idx.size)].tolist()
        columns = _COLUMNS.get(index)
        if columns is None:
            columns = _COLUMNS[index] = {}
        self._loaded = (data, index, columns)
        return True

    def _advance_shard(self) -> None:
        self._loaded = self._perm = None
        self.shard_pos += 1
        self.sample_pos = 0

    def _next_index(self) -> tuple[tuple[bytes, ShardIndex, dict], int, tuple[int, int]] | None:
        """``((shard bytes, index, columns), sample, (epoch, shard position))`` of the next sample of this
        source in this stream, or None when exhausted (no cycling); the state has moved past it."""
        while not self.exhausted:
            if self._loaded is None:
                order = self._shard_order()
                if self.shard_pos >= len(order):
                    self.epoch += 1
                    self.shard_pos = self.sample_pos = 0
                    if not self.cycle:
                        self.exhausted = True
                    continue
                shard = int(order[self.shard_pos])
                if self.view_counts[shard] == 0 or not self._load(shard):
                    self._advance_shard()
                    continue
            perm = self._perm
            pos = self.sample_pos
            if pos >= len(perm):
                self._advance_shard()
                continue
            loaded = self._loaded
            at = (self.epoch, self.shard_pos)
            self.sample_pos = pos + 1
            if pos + 1 >= len(perm):  # shard done: a state saved now points past it
                self._advance_shard()
            return loaded, perm[pos], at
        return None

    def next(self) -> Sample | None:
        """The next sample of this source in this stream, or None when exhausted (no cycling)."""
        return self._read(lambda loaded, i: loaded[1].sample(loaded[0], i))

    def next_array(self, name: str) -> tuple[str, np.ndarray | None] | None:
        """``(key, its <name>.npy array or None)`` of the next sample, or None when exhausted:
        :meth:`next` without the sample dict (what a text source needs)."""
        return self._read(lambda loaded, i: (loaded[1].keys[i], loaded[1].array(loaded[0], i, name)))

    def next_columns(self, names: tuple[str, ...]) -> tuple[str, int, list[Column], list[np.ndarray | None]] | None:
        """``(key, sample, its shard's columns of names, the sample's arrays)`` of the next
        sample, or None when exhausted; arrays are 1-D in the stored dtype (None when absent),
        not yet range-checked: ``column.check`` does that (:mod:`~trimodal.shards.loader.columns`:
        each column is gathered and range-checked once per shard, not per sample)."""
        return self._read(lambda loaded, i: _arrays(loaded, i, names))

    def _read(self, decode):
        """``decode((data, index, columns), i)`` of the next sample that decodes; a damaged one
        skips the rest of its shard (counted, or raised: :meth:`_skip_after_damage`)."""
        while True:
            got = self._next_index()
            if got is None:
                return None
            loaded, i, at = got
            try:
                out = decode(loaded, i)
            except ShardError as e:  # skip the rest of this shard
                self._skip_after_damage(at, e)
                continue
            self._failures = 0
            self.where = loaded[1].where
            return out

    def _skip_after_damage(self, at: tuple[int, int], err: ShardError) -> None:
        """Skip the rest of the shard a sample failed to decode in, then count or raise."""
        if (self.epoch, self.shard_pos) == at:  # still on that shard: leave it
            self._advance_shard()
        self._corrupt(err)


# a shard index's columns by name, while the index lives: the streams of a process that share a
# shard (SharedShards) share its columns too; a column holds no reference to its index or bytes
_COLUMNS: weakref.WeakKeyDictionary[ShardIndex, dict[str, Column]] = weakref.WeakKeyDictionary()


def _column(loaded: tuple[bytes, ShardIndex, dict], name: str) -> Column:
    """The shard's column ``name``, built on first use."""
    col = loaded[2].get(name)
    if col is None:
        col = loaded[2][name] = Column(loaded[0], loaded[1], name)
    return col


def _arrays(loaded: tuple[bytes, ShardIndex, dict], i: int, names: tuple[str, ...]):
    cols = [_column(loaded, n) for n in names]
    return loaded[1].keys[i], i, cols, [c.get(loaded[0], loaded[1], i) for c in cols]  # a damaged member raises ShardError here
