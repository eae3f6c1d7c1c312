"""One source's share of one logical stream: epochs → shard permutation → sample permutation.

Stream ``s`` of ``n`` reads the source's shards with index ``i ≡ s (mod n)`` when the source has at
least ``n`` shards (shard striding), else every shard keeping the samples with index
``j ≡ s (mod n)`` (sample striding), so the streams partition the source. Per epoch the shard
order is a permutation seeded by ``(seed, epoch, stream, source)`` and the sample order inside a
shard one seeded by ``(seed, epoch, stream, source, shard)``. The state is three integers and a
flag; everything else is rebuilt from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.format import ShardError
from trimodal.shards.loader.sources import Source
from trimodal.shards.reader import Entry, decode_sample, index_shard, read_shard


class Cursor:
    """Yields the samples (dicts of zero-copy arrays) of ``source`` that belong to ``stream``."""

    def __init__(self, source: Source, stream: int, num_streams: int, seed: int, *, verify: str, on_corrupt: str,
                 cycle: bool, counters: dict[str, int], index_cache: dict) -> None:
        self.source, self.stream, self.n, self.seed = source, stream, num_streams, seed
        self.verify, self.on_corrupt, self.cycle = verify, on_corrupt, cycle
        self.counters = counters
        self.index_cache = index_cache  # shared by the streams of one process (sample striding)
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
        self._loaded: tuple[bytes, list[Entry], str] | None = None
        self._perm: np.ndarray | None = None
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
            rng = np.random.default_rng([self.seed, self.epoch, self.stream, self.source.salt])
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

    def _index(self, info, data: bytes, where: str) -> list[Entry]:
        """Under sample striding every stream of this process reads the same few shards (a source
        has fewer shards than streams then: bounded), so their indexes are kept and each is
        walked once instead of once per stream."""
        key = (self.source.root, info.name, info.sha256, len(data))
        if self.stride and key in self.index_cache:
            return self.index_cache[key]
        entries = index_shard(data, where, expect=info.samples)
        if self.stride:
            self.index_cache[key] = entries
        return entries

    def _load(self, shard: int) -> bool:
        """Read and index shard ``shard`` (arrays are decoded lazily, only for this stream's
        samples); False when it was damaged and skipped."""
        info = self.source.shards[shard]
        where = storage.join(self.source.root, info.name)
        try:
            data = read_shard(self.source.root, info, self.verify)
            entries = self._index(info, data, where)
        except ShardError as e:
            self._corrupt(e)
            return False
        idx = np.arange(self.stream, len(entries), self.n) if self.stride else np.arange(len(entries))
        rng = np.random.default_rng([self.seed, self.epoch, self.stream, self.source.salt, shard])
        self._perm = idx[rng.permutation(idx.size)]
        self._loaded = (data, entries, where)
        return True

    def _advance_shard(self) -> None:
        self._loaded = self._perm = None
        self.shard_pos += 1
        self.sample_pos = 0

    def next(self) -> dict[str, Any] | None:
        """The next sample of this source in this stream, or None when exhausted (no cycling)."""
        while not self.exhausted:
            order = self._shard_order()
            if self.shard_pos >= len(order):
                self.epoch += 1
                self.shard_pos = self.sample_pos = 0
                if not self.cycle:
                    self.exhausted = True
                continue
            shard = int(order[self.shard_pos])
            if self._loaded is None and (self.view_counts[shard] == 0 or not self._load(shard)):
                self._advance_shard()
                continue
            if self.sample_pos >= self._perm.size:
                self._advance_shard()
                continue
            data, entries, where = self._loaded
            try:
                sample = decode_sample(data, entries[int(self._perm[self.sample_pos])], where, want_json=False)
            except ShardError as e:  # skip the rest of this shard
                self._advance_shard()
                self._corrupt(e)
                continue
            self._failures = 0
            self.sample_pos += 1
            if self.sample_pos >= self._perm.size:  # shard done: a state saved now points past it
                self._advance_shard()
            return sample
        return None
