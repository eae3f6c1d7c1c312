"""The Beam graph sink for batches: :class:`~trimodal.pipelines.sink.WriteDataset` with lists of
samples and lists of dead letters as elements, not one sample or dead letter each.

Beam's per-element cost (~0.3 ms on the portable runners) is many times the encode of a short
document, so a batched pipeline keeps its batches as elements all the way to the shard writer:
each batch is split by (split, shard) inside one element and only those pieces are grouped.
The shard count, the bucket of each sample and dead letter, the sort inside a shard and the
manifest are :mod:`trimodal.pipelines.sink`'s, so the bytes are the same as its per-sample graph.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import apache_beam as beam

from trimodal.pipelines.records import DeadLetter
from trimodal.pipelines.sink import (SinkConfig, _WriteDeadLetter, _WriteShard, bucket_of, finalize_dataset,
                                     num_shards, split_of)


def split_sizes(samples: list[dict[str, Any]], val_fraction: float) -> list[tuple[str, tuple[int, int]]]:
    """(split, (samples, payload bytes)) of one batch: the inputs of the shard count."""
    sizes: dict[str, list[int]] = {}
    for s in samples:
        acc = sizes.setdefault(split_of(s["id"], val_fraction), [0, 0])
        acc[0] += 1
        acc[1] += s["size"]
    return [(split, (n, b)) for split, (n, b) in sizes.items()]


def sum_pairs(pairs) -> tuple[int, int]:
    n = b = 0
    for an, ab in pairs:
        n, b = n + an, b + ab
    return n, b


def shard_pieces(samples: list[dict[str, Any]], val_fraction: float, n_shards: dict[str, int]):
    """One batch → ((split, shard index), its samples of that shard) pieces."""
    pieces: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in samples:
        split = split_of(s["id"], val_fraction)
        pieces.setdefault((split, bucket_of(s["key"], n_shards[split])), []).append(s)
    return pieces.items()


def dead_pieces(dead: list[DeadLetter], n_files: int):
    """One batch of dead letters → (file index, its dead letters of that file) pieces."""
    pieces: dict[int, list[DeadLetter]] = {}
    for r in dead:
        pieces.setdefault(bucket_of(r.id + r.stage, n_files), []).append(r)
    return pieces.items()


class _WriteShardPieces(_WriteShard):
    def process(self, item, n_shards: dict[str, int]):
        key, pieces = item
        yield from super().process((key, itertools.chain.from_iterable(pieces)), n_shards)


class _WriteDeadPieces(_WriteDeadLetter):
    def process(self, item, n_files: int):
        index, pieces = item
        yield from super().process((index, itertools.chain.from_iterable(pieces)), n_files)


class WriteBatches(beam.PTransform):
    """(batches of samples, batches of dead letters, read count) → shards, dead-letter files,
    manifest; the same files as :class:`~trimodal.pipelines.sink.WriteDataset` of their items."""

    def __init__(self, cfg: SinkConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        batches, dead, n_read = inputs
        cfg = self.cfg
        vf = cfg.val_fraction
        n_shards = (
            batches
            | "Split" >> beam.FlatMap(split_sizes, vf)
            | "CountAndBytes" >> beam.CombinePerKey(sum_pairs)
            | "NumShards" >> beam.MapTuple(lambda split, nb: (split, num_shards(nb[1], nb[0], cfg.target_shard_bytes)))
        )
        shards = (
            batches
            | "AssignShard" >> beam.FlatMap(shard_pieces, vf, n_shards=beam.pvalue.AsDict(n_shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardPieces(cfg), n_shards=beam.pvalue.AsDict(n_shards))
        )
        n_dead = dead | "CountDead" >> beam.Map(len) | "SumDead" >> beam.CombineGlobally(sum)
        n_dead_files = n_dead | "NumDeadFiles" >> beam.Map(lambda n: max(1, math.ceil(n / cfg.dead_letter_records_per_file)))
        dead_files = (
            dead
            | "AssignDead" >> beam.FlatMap(dead_pieces, n_files=beam.pvalue.AsSingleton(n_dead_files))
            | "GroupDead" >> beam.GroupByKey()
            | "WriteDead" >> beam.ParDo(_WriteDeadPieces(cfg.root), n_files=beam.pvalue.AsSingleton(n_dead_files))
        )
        reasons = (
            dead
            | "DeadReasons" >> beam.FlatMap(lambda rs: Counter((r.outcome, r.reason) for r in rs).items())
            | "CountReasons" >> beam.CombinePerKey(sum)
        )
        return (
            batches.pipeline
            | "Finalize" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(
                finalize_dataset,
                cfg=cfg,
                shards=beam.pvalue.AsList(shards),
                dead=beam.pvalue.AsList(reasons),
                dead_files=beam.pvalue.AsList(dead_files),
                n_read=beam.pvalue.AsSingleton(n_read),
            )
        )
