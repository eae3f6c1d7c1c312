"""The shard sink: tokenized samples → WebDataset tars + dead-letter files + the manifest.

Deterministic and idempotent without a global sort: the number of shards N of a split comes
from its total payload size (``ceil(bytes / target_shard_bytes)``, a global Combine used as a
side input); a sample goes to shard ``hash(key) % N`` and samples inside a shard are ordered by
key (then by their bytes, so that even duplicate ids give one order). The same input and config
therefore give the same shard names and bytes on any runner, any worker count, either of the two
sinks below. Each shard is written atomically (temporary name, then rename/commit); the
manifest is written last, so a dataset root with a manifest is complete; then the writer lock
is released. Shards left by an earlier run with other names are removed once the new manifest
is in place.

**Splits.** With ``val_fraction`` F > 0 a record goes to the ``val`` split when a hash of its id
falls below F (deterministic, the same on every runner); val shards are named
``val-shard-i-of-M.tar``. With F = 0 there is no val split and the output is exactly what it
was before splits existed.

**Two sinks, the same bytes.** :class:`WriteDataset` is the plain Beam graph (Dataflow): a
Combine counts the samples and bytes of each split, a GroupByKey on (split, shard) gathers
them. On a local runner that GroupByKey would hold the whole corpus in memory, so local runs
spill to disk and assemble instead (:mod:`trimodal.pipelines.spill`), writing the same bytes
with the shard and dead-letter helpers defined here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np

from trimodal import storage
from trimodal.pipelines.outcomes import Tally, count
from trimodal.pipelines.records import FILTERED, REJECTED, DeadLetter, Record, safe_json
from trimodal.shards.format import key_from_id
from trimodal.shards.lock import DatasetLock
from trimodal.shards.manifest import Manifest, ShardInfo
from trimodal.shards.writer import (fast_encode_sample, frame_sample, frame_samples, sample_tokens, shard_name,
                                    write_framed)
from trimodal.tokenizers.base import TokenizerInfo

DEAD_LETTER_DIR = "deadletter"


@dataclass
class SinkConfig:
    root: str
    modality: str
    tokenizers: dict[str, TokenizerInfo]
    target_shard_bytes: int = 128 * 2**20
    compression: str = "none"
    val_fraction: float = 0.0
    run_id: str | None = None
    dead_letter_records_per_file: int = 1_000_000
    config: dict[str, Any] = field(default_factory=dict)


def hash64(key: str) -> int:
    """The 64-bit hash a sample's shard comes from (both sinks: they must agree bit for bit)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def bucket_of(key: str, n: int) -> int:
    return hash64(key) % n


def split_hash(record_id: str) -> float:
    """Where an id falls in [0, 1) for the val split: below ``val_fraction`` is ``val``."""
    return int.from_bytes(hashlib.sha256(b"split:" + record_id.encode()).digest()[:8], "big") / 2**64


def split_of(record_id: str, val_fraction: float) -> str:
    """``val`` for a fixed ``val_fraction`` share of ids (a hash of the id, not its order)."""
    if val_fraction <= 0:
        return "train"
    return "val" if split_hash(record_id) < val_fraction else "train"


def make_sample(record: Record, modality: str, lengths: dict[str, Any], arrays: dict[str, np.ndarray],
                tally: Tally | None = None) -> dict[str, Any]:
    """The sample a tokenize step hands to the sink, already serialised: its tar members made and
    framed once, in the (parallel, fused) step that produced the sample, so the sink moves bytes
    rather than pickled arrays. Also its token counts, payload size and text bytes (UTF-8 bytes
    of the document, caption or transcript: the manifest's bits-per-byte denominator).
    ``sink/written`` is counted here, or in ``tally`` when a batch step passes one."""
    key = key_from_id(record.id)
    meta = {"id": record.id, "source": record.source, "modality": modality, "lengths": lengths,
            "provenance": safe_json(record.provenance)}
    if tally is None:
        count("sink", "written")
    else:
        tally.add("sink", "written")
    return {
        "key": key,
        "id": record.id,
        "framed": frame_sample(fast_encode_sample(key, meta, arrays)),
        "tokens": sample_tokens(arrays),
        "size": 1024 + sum(int(np.asarray(a).nbytes) for a in arrays.values()),
        "text_bytes": len(record.text.encode("utf-8")),
    }


_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode  # json.dumps(x, sort_keys=True, ensure_ascii=False)
_STR = json.encoder.encode_basestring  # what that encoder writes for a str (C), without its dispatch


def _flat_json(d: Any) -> str | None:
    """``json.dumps(d, sort_keys=True, ensure_ascii=False)`` for a dict of str keys and str, int
    or None values (what the readers write for provenance, and every lengths dict), else None."""
    if type(d) is not dict:
        return None
    parts = []
    for k in sorted(d) if all(type(k) is str for k in d) else ():
        v = d[k]
        t = type(v)
        if t is str:
            parts.append(f"{_STR(k)}: {_STR(v)}")
        elif t is int:
            parts.append(f"{_STR(k)}: {v}")
        elif v is None:
            parts.append(f"{_STR(k)}: null")
        else:
            return None
    if len(parts) != len(d):
        return None
    return "{" + ", ".join(parts) + "}"


def _meta_json(record: Record, modality: str, lengths: dict[str, Any]) -> bytes:
    """The sample's json member, the bytes :func:`make_sample` writes for the same fields
    (``json.dumps(meta, sort_keys=True, ensure_ascii=False)``, keys in sorted order) without
    building the dict; a value outside :func:`_flat_json`'s plain case goes through ``json``."""
    prov = _flat_json(record.provenance)
    if prov is None:
        prov = _JSON(safe_json(record.provenance))
    text = (f'{{"id": {_STR(record.id)}, "lengths": {_flat_json(lengths) or _JSON(lengths)}, '
            f'"modality": {_STR(modality)}, "provenance": {prov}, "source": {_JSON(record.source)}}}')
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate in the provenance: escaped as make_sample does
        meta = {"id": record.id, "source": record.source, "modality": modality, "lengths": lengths,
                "provenance": safe_json(record.provenance)}
        return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()


def make_samples(records: list[Record], modality: str, lengths: list[dict[str, Any]], name: str,
                 arrays: list[np.ndarray], tally: Tally) -> list[dict[str, Any]]:
    """:func:`make_sample` for a batch of samples of one array each (``{name: array}``), the same
    samples and bytes, with the batch's tar framing done at once
    (:func:`~trimodal.shards.writer.frame_samples`): per-document Python was what bounded a
    pipeline of short documents."""
    arrays = [np.asarray(a) for a in arrays]
    keys = [key_from_id(r.id) for r in records]
    framed = frame_samples(keys, [_meta_json(r, modality, n) for r, n in zip(records, lengths)], name, arrays)
    tally.add("sink", "written", n=len(records))
    return [{"key": key, "id": r.id, "framed": f, "tokens": {name: int(a.size)}, "size": 1024 + int(a.nbytes),
             "text_bytes": len(r.text) if r.text.isascii() else len(r.text.encode("utf-8"))}
            for key, r, f, a in zip(keys, records, framed, arrays)]


def num_shards(total_bytes: int, n_samples: int, target: int) -> int:
    return max(1, min(n_samples, math.ceil(total_bytes / target)))


class _CountAndBytes(beam.CombineFn):
    """(samples, payload bytes) in one pass: both decide the shard count."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, acc: tuple[int, int], sample: dict[str, Any]) -> tuple[int, int]:  # noqa: D401
        return acc[0] + 1, acc[1] + sample["size"]

    def merge_accumulators(self, accs) -> tuple[int, int]:
        n = b = 0
        for an, ab in accs:
            n, b = n + an, b + ab
        return n, b

    def extract_output(self, acc: tuple[int, int]) -> tuple[int, int]:
        return acc


def _split_shard_name(split: str, index: int, count: int, compression: str) -> str:
    name = shard_name(index, count, compression)
    return name if split == "train" else f"{split}-{name}"


class _WriteShard(beam.DoFn):
    def __init__(self, cfg: SinkConfig):
        self.cfg = cfg

    def process(self, item, n_shards: dict[str, int]):
        (split, index), samples = item
        framed = []
        tokens: dict[str, int] = {}
        text_bytes = 0
        for s in samples:
            framed.append((s["key"].encode(), s["framed"]))
            for k, v in s["tokens"].items():
                tokens[k] = tokens.get(k, 0) + v
            text_bytes += s["text_bytes"]
        count("WriteDataset", "shards")  # which sink ran: the job's counters say
        yield write_split_shard(self.cfg, split, index, n_shards[split], framed, tokens, text_bytes)


def write_split_shard(cfg: SinkConfig, split: str, index: int, n: int, framed: list[tuple[bytes, bytes]],
                 tokens: dict[str, int], text_bytes: int) -> ShardInfo:
    """One shard from ``(key, framed sample)`` pairs in any order: sorted by key (then by bytes,
    so that even duplicate ids give the same shard on every runner)."""
    framed.sort()
    name = _split_shard_name(split, index, n, cfg.compression)
    samples, nbytes, sha, xxh3 = write_framed(cfg.root, name, (f for _, f in framed), cfg.compression)
    return ShardInfo(name=name, samples=samples, tokens=tokens, bytes=nbytes, sha256=sha, split=split,
                     text_bytes=text_bytes, xxh3=xxh3)


def dead_line(r: DeadLetter) -> str:
    return json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False) + "\n"


def write_dead_file(root: str, index: int, n_files: int, lines: list[tuple[tuple[str, str, str], str]]) -> str:
    """Dead letters ``((id, stage, reason), JSON line)`` sorted (by their line on a tie), written."""
    lines.sort()
    name = f"{DEAD_LETTER_DIR}/deadletter-{index:05d}-of-{n_files:05d}.jsonl"
    storage.write_atomic(storage.join(root, name), "".join(line for _, line in lines).encode())
    return name


class _WriteDeadLetter(beam.DoFn):
    def __init__(self, root: str):
        self.root = root

    def process(self, item, n_files: int):
        index, records = item
        yield write_dead_file(self.root, index, n_files, [((r.id, r.stage, r.reason), dead_line(r)) for r in records])


def _reason_counts(counts: list[tuple[tuple[str, str], int]], outcome: str) -> dict[str, int]:
    return dict(sorted((reason, n) for (o, reason), n in counts if o == outcome))


def finalize_dataset(_, cfg: SinkConfig, shards: list[ShardInfo], dead: list[tuple[tuple[str, str], int]], dead_files: list[str], n_read: int):
    shards = sorted(shards, key=lambda s: s.name)
    manifest = Manifest(
        kind="tokenized",
        modality=cfg.modality,
        tokenizers=cfg.tokenizers,
        shards=shards,
        counts={
            "read": n_read,
            "written": sum(s.samples for s in shards),
            "filtered": _reason_counts(dead, FILTERED),
            "rejected": _reason_counts(dead, REJECTED),
        },
        dead_letter=DEAD_LETTER_DIR if dead_files else None,
        config=cfg.config,
        run_id=cfg.run_id,
    )
    manifest.save(cfg.root)
    remove_stale(cfg.root, {s.name for s in shards}, set(dead_files))
    if cfg.run_id:
        DatasetLock(cfg.root, cfg.run_id).release()
    return manifest


def remove_stale(root: str, keep_shards: set[str], keep_dead: set[str]) -> list[str]:
    """Delete shards/dead-letter files of earlier runs and temporary leftovers under ``root``.

    Never follows a link: a symlinked ``deadletter/`` is not listed, and a link among the
    candidates is removed itself (``os.unlink``), never what it points to."""
    fs, path = storage.fs_and_path(root)
    local = storage.is_local(root)
    removed = []
    candidates = fs.glob(f"{path}/shard-*") + fs.glob(f"{path}/*-shard-*")
    if not (local and os.path.islink(f"{path}/{DEAD_LETTER_DIR}")):
        candidates += fs.glob(f"{path}/{DEAD_LETTER_DIR}/*")
    for full in candidates:
        rel = full[len(path) :].lstrip("/")
        if rel in keep_shards or rel in keep_dead:
            continue
        if local and os.path.islink(full):
            os.unlink(full)
        else:
            fs.rm(full)
        removed.append(rel)
    return removed


class WriteDataset(beam.PTransform):
    """(samples, dead-letter records, read count) → shards, dead-letter files, manifest.

    A sample is what :func:`make_sample` returns; dead letters are :class:`DeadLetter`\\ s from
    :mod:`trimodal.pipelines.outcomes`. Returns a PCollection holding the final Manifest.
    """

    def __init__(self, cfg: SinkConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        samples, dead, n_read = inputs
        cfg = self.cfg
        keyed = samples | "Split" >> beam.Map(lambda s: (split_of(s["id"], cfg.val_fraction), s))
        n_shards = (
            keyed
            | "CountAndBytes" >> beam.CombinePerKey(_CountAndBytes())
            | "NumShards" >> beam.MapTuple(lambda split, nb: (split, num_shards(nb[1], nb[0], cfg.target_shard_bytes)))
        )
        shards = (
            keyed
            | "AssignShard" >> beam.Map(lambda kv, n: ((kv[0], bucket_of(kv[1]["key"], n[kv[0]])), kv[1]),
                                        n=beam.pvalue.AsDict(n_shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShard(cfg), n_shards=beam.pvalue.AsDict(n_shards))
        )
        n_dead = dead | "CountDead" >> beam.combiners.Count.Globally()
        n_dead_files = n_dead | "NumDeadFiles" >> beam.Map(lambda n: max(1, math.ceil(n / cfg.dead_letter_records_per_file)))
        dead_files = (
            dead
            | "AssignDead" >> beam.Map(lambda r, n: (bucket_of(r.id + r.stage, n), r), n=beam.pvalue.AsSingleton(n_dead_files))
            | "GroupDead" >> beam.GroupByKey()
            | "WriteDead" >> beam.ParDo(_WriteDeadLetter(cfg.root), n_files=beam.pvalue.AsSingleton(n_dead_files))
        )
        reasons = (
            dead
            | "DeadReasons" >> beam.Map(lambda r: ((r.outcome, r.reason), 1))
            | "CountReasons" >> beam.CombinePerKey(sum)
        )
        return (
            samples.pipeline
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
