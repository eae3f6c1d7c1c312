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
spill instead (:class:`SpillWriter`, :func:`assemble`, :class:`AssembleDataset`), in two phases:

1. *Spill.* The step that makes the samples appends each one, already framed as tar members,
   to a spill part on local disk (the system temp folder, :func:`spill_folder`), with one index
   row (split, 64-bit bucket hash, key, offset, length, token counts) and its split's totals; dead
   letters go as their final JSON lines. A part closes at :data:`SPILL_PART_BYTES` /
   :data:`SPILL_PART_ROWS`; the step emits only the small part descriptions.
2. *Assemble*, once every part is in (one GroupByKey of the descriptions): N per split from the
   summed totals, exactly as the Combine computes it; each part's index is sorted by global
   bucket (``hash % N``, train buckets first) and written back, so one shard's samples are one
   slice of each part's index; each shard is then read from the parts (``pread``), sorted by key,
   written; dead-letter files likewise (``ceil(dead / per_file)`` files, bucketed by id and
   stage, sorted by id, stage, reason); then the manifest, and the spill folder is removed.

Memory is bounded whatever the corpus size: one batch while spilling, about one shard (plus one
part's index) while assembling: roughly 2× ``target_shard_bytes`` (3× with zstd) above the
runtime's own ~0.2 GB. Disk: the spill holds about one copy of the output. A re-run is
idempotent (same bytes); a killed launcher's spill folder is swept by the next local run
(:func:`sweep_spills`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np

from trimodal import storage
from trimodal.pipelines.outcomes import Tally, count
from trimodal.pipelines.records import FILTERED, REJECTED, DeadLetter, Record, safe_json
from trimodal.shards.format import ARRAY_NAMES, key_from_id
from trimodal.shards.lock import DatasetLock, pid_alive
from trimodal.shards.manifest import Manifest, ShardInfo
from trimodal.shards.writer import fast_encode_sample, frame_sample, sample_tokens, shard_name, write_framed
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


def _bucket(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % n


def split_of(record_id: str, val_fraction: float) -> str:
    """``val`` for a fixed ``val_fraction`` share of ids (a hash of the id, not its order)."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha256(b"split:" + record_id.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def make_sample(record: Record, modality: str, lengths: dict[str, Any], arrays: dict[str, np.ndarray],
                tally: Tally | None = None) -> dict[str, Any]:
    """The sample a tokenize step hands to the sink, already serialised: tar members made once, in
    the (parallel, fused) step that produced the sample, so the shard GroupByKey moves bytes
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
        "members": fast_encode_sample(key, meta, arrays),
        "tokens": sample_tokens(arrays),
        "size": 1024 + sum(int(np.asarray(a).nbytes) for a in arrays.values()),
        "text_bytes": len(record.text.encode("utf-8")),
    }


def _num_shards(total_bytes: int, n_samples: int, target: int) -> int:
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
            framed.append((s["key"].encode(), frame_sample(s["members"])))
            for k, v in s["tokens"].items():
                tokens[k] = tokens.get(k, 0) + v
            text_bytes += s["text_bytes"]
        yield _write_shard(self.cfg, split, index, n_shards[split], framed, tokens, text_bytes)


def _write_shard(cfg: SinkConfig, split: str, index: int, n: int, framed: list[tuple[bytes, bytes]],
                 tokens: dict[str, int], text_bytes: int) -> ShardInfo:
    """One shard from ``(key, framed sample)`` pairs in any order: sorted by key (then by bytes,
    so that even duplicate ids give the same shard on every runner)."""
    framed.sort()
    name = _split_shard_name(split, index, n, cfg.compression)
    samples, nbytes, sha = write_framed(cfg.root, name, (f for _, f in framed), cfg.compression)
    return ShardInfo(name=name, samples=samples, tokens=tokens, bytes=nbytes, sha256=sha, split=split,
                     text_bytes=text_bytes)


def _dead_line(r: DeadLetter) -> str:
    return json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False) + "\n"


def _write_dead_file(root: str, index: int, n_files: int, lines: list[tuple[tuple[str, str, str], str]]) -> str:
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
        yield _write_dead_file(self.root, index, n_files, [((r.id, r.stage, r.reason), _dead_line(r)) for r in records])


def _reason_counts(counts: list[tuple[tuple[str, str], int]], outcome: str) -> dict[str, int]:
    return dict(sorted((reason, n) for (o, reason), n in counts if o == outcome))


def _finalize(_, cfg: SinkConfig, shards: list[ShardInfo], dead: list[tuple[tuple[str, str], int]], dead_files: list[str], n_read: int):
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
    """Delete shards/dead-letter files of earlier runs and temporary leftovers under ``root``."""
    fs, path = storage.fs_and_path(root)
    removed = []
    candidates = fs.glob(f"{path}/shard-*") + fs.glob(f"{path}/*-shard-*") + fs.glob(f"{path}/{DEAD_LETTER_DIR}/*")
    for full in candidates:
        rel = full[len(path) :].lstrip("/")
        if rel in keep_shards or rel in keep_dead:
            continue
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
            | "NumShards" >> beam.MapTuple(lambda split, nb: (split, _num_shards(nb[1], nb[0], cfg.target_shard_bytes)))
        )
        shards = (
            keyed
            | "AssignShard" >> beam.Map(lambda kv, n: ((kv[0], _bucket(kv[1]["key"], n[kv[0]])), kv[1]),
                                        n=beam.pvalue.AsDict(n_shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShard(cfg), n_shards=beam.pvalue.AsDict(n_shards))
        )
        n_dead = dead | "CountDead" >> beam.combiners.Count.Globally()
        n_dead_files = n_dead | "NumDeadFiles" >> beam.Map(lambda n: max(1, math.ceil(n / cfg.dead_letter_records_per_file)))
        dead_files = (
            dead
            | "AssignDead" >> beam.Map(lambda r, n: (_bucket(r.id + r.stage, n), r), n=beam.pvalue.AsSingleton(n_dead_files))
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
                _finalize,
                cfg=cfg,
                shards=beam.pvalue.AsList(shards),
                dead=beam.pvalue.AsList(reasons),
                dead_files=beam.pvalue.AsList(dead_files),
                n_read=beam.pvalue.AsSingleton(n_read),
            )
        )


# ---- local runs: spill to disk, then assemble (bounded memory) ----

SPLITS = ("train", "val")
SPILL_PART_BYTES = 256 * 2**20  # framed samples in one spill part
SPILL_PART_ROWS = 1 << 18  # samples in one spill part (bounds the index held while spilling)
SPILL_PREFIX = "trimodal-spill-"
_INDEX_HEAD = [("split", "u1"), ("h", "<u8")]
_INDEX_TAIL = [("offset", "<u8"), ("length", "<u8"), ("text_bytes", "<u8")] + [(f"tok_{n}", "<i8") for n in ARRAY_NAMES]


def _hash64(key: str) -> int:
    """What :func:`_bucket` takes the remainder of."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def spill_folder(run_id: str | None) -> str:
    """The local scratch folder of one run's spill parts (under the system temp folder, also for
    an object-storage root); named by the launcher's pid so a later run can sweep it if the
    launcher was killed."""
    return os.path.join(tempfile.gettempdir(), f"{SPILL_PREFIX}{os.getpid()}-{run_id or uuid.uuid4().hex[:12]}")


def remove_spill(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def sweep_spills() -> list[str]:
    """Remove the spill folders of launchers that are gone (killed runs leave theirs)."""
    removed = []
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(SPILL_PREFIX):
            continue
        pid = name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            remove_spill(os.path.join(root, name))
            removed.append(name)
    return removed


    return True


@dataclass
class SpillPart:
    """One closed spill part: framed samples (``data``), their index (``.npy``: split, bucket
    hash, key, offset, length, text bytes, tokens per array), dead-letter lines (``dead``, in
    their final form) and the totals the assembly needs before it reads any of them."""

    data: str
    index: str
    dead: str
    samples: int = 0
    n_read: int = 0
    n_dead: int = 0
    totals: dict[str, list[int]] = field(default_factory=dict)  # split -> [samples, payload bytes]
    reasons: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome, reason) -> n


class SpillWriter:
    """Samples and dead letters of one bundle → spill parts under ``folder``, each closed part
    at most :data:`SPILL_PART_BYTES` of samples or :data:`SPILL_PART_ROWS` samples."""

    def __init__(self, folder: str, val_fraction: float, part_bytes: int | None = None,
                 part_rows: int | None = None) -> None:
        self.folder, self.val_fraction = folder, val_fraction
        self.part_bytes = SPILL_PART_BYTES if part_bytes is None else part_bytes
        self.part_rows = SPILL_PART_ROWS if part_rows is None else part_rows
        self.closed: list[SpillPart] = []
        self.part: SpillPart | None = None
        self.handed = 0
        os.makedirs(folder, exist_ok=True)

    def _open(self) -> SpillPart:
        stem = os.path.join(self.folder, uuid.uuid4().hex)
        self.part = SpillPart(data=stem + ".data", index=stem + ".index.npy", dead=stem + ".dead.jsonl")
        self._data = open(self.part.data, "wb")
        self._dead = None
        self._rows: list[tuple] = []
        self._offset = 0
        return self.part

    def add(self, samples: Iterable[dict[str, Any]], dead: Iterable[DeadLetter], n_read: int) -> None:
        part = self.part or self._open()
        part.n_read += n_read
        rows, write, vf = self._rows, self._data.write, self.val_fraction
        for s in samples:
            framed = frame_sample(s["members"])
            split = split_of(s["id"], vf)
            tok = s["tokens"]
            rows.append((split == "val", _hash64(s["key"]), s["key"].encode(), self._offset, len(framed),
                         s["text_bytes"], *(tok.get(n, -1) for n in ARRAY_NAMES)))
            write(framed)
            self._offset += len(framed)
            t = part.totals.setdefault(split, [0, 0])
            t[0] += 1
            t[1] += s["size"]
        lines = []
        for d in dead:
            lines.append(_dead_line(d))
            part.reasons[(d.outcome, d.reason)] = part.reasons.get((d.outcome, d.reason), 0) + 1
        if lines:
            if self._dead is None:
                self._dead = open(part.dead, "wb")
            self._dead.write("".join(lines).encode())
            part.n_dead += len(lines)
        if self._offset >= self.part_bytes or len(rows) >= self.part_rows:
            self._close_part()

    def _close_part(self) -> None:
        part, rows = self.part, self._rows
        self._data.close()
        if self._dead is not None:
            self._dead.close()
        width = max((len(r[2]) for r in rows), default=1)
        np.save(part.index, np.array(rows, dtype=_INDEX_HEAD + [("key", f"S{width}")] + _INDEX_TAIL))
        part.samples = len(rows)
        self.closed.append(part)
        self.part, self._rows = None, []

    def take(self) -> list[SpillPart]:
        """The parts closed since the last call (each handed out once)."""
        out, self.closed = self.closed, []
        self.handed += len(out)
        return out

    def close(self) -> list[SpillPart]:
        """Close the open part and hand out all; at least one part per writer, even an empty one
        (it carries the read count, and the assembly runs once a part is in)."""
        if self.part is None and not self.handed and not self.closed:
            self._open()
        if self.part is not None:
            self._close_part()
        return self.take()


def assemble(parts: list[SpillPart], cfg: SinkConfig) -> Manifest:
    """Spill parts → the shards, dead-letter files and manifest :class:`WriteDataset` writes for the
    same samples and dead letters, holding about one shard in memory.

    The shard counts come from the parts' totals; then each part's index is sorted by global
    bucket (train buckets first, then val) and written back, so a shard's samples are one slice
    of each part's index; a shard reads its samples from the parts, sorts them by key and is
    written. Dead-letter files are made the same way (one pass over the dead lines per file)."""
    totals: dict[str, list[int]] = {}
    reasons: dict[tuple[str, str], int] = {}
    for p in parts:
        for split, (n, b) in p.totals.items():
            t = totals.setdefault(split, [0, 0])
            t[0] += n
            t[1] += b
        for k, n in p.reasons.items():
            reasons[k] = reasons.get(k, 0) + n
    n_shards = {s: _num_shards(totals[s][1], totals[s][0], cfg.target_shard_bytes) for s in SPLITS if s in totals}
    base = {}
    g = 0
    for s in SPLITS:
        base[s] = g
        g += n_shards.get(s, 0)
    mod = np.array([n_shards.get(s, 1) for s in SPLITS], dtype=np.uint64)
    off = np.array([base[s] for s in SPLITS], dtype=np.uint64)
    layout: list[tuple[SpillPart, np.ndarray]] = []
    for p in parts:
        if not p.samples:
            continue
        idx = np.load(p.index)
        gid = off[idx["split"]] + idx["h"] % mod[idx["split"]]
        order = np.argsort(gid, kind="stable")
        np.save(p.index, idx[order])
        layout.append((p, np.searchsorted(gid[order], np.arange(g + 1, dtype=np.uint64))))
        del idx, gid, order
    shards = []
    for split in SPLITS:
        for i in range(n_shards.get(split, 0)):
            gi = base[split] + i
            framed: list[tuple[bytes, bytes]] = []
            tokens: dict[str, int] = {}
            text_bytes = 0
            for p, starts in layout:
                lo, hi = int(starts[gi]), int(starts[gi + 1])
                if hi <= lo:
                    continue
                rows = np.load(p.index, mmap_mode="r")[lo:hi]
                with open(p.data, "rb") as f:
                    fd = f.fileno()
                    for key, at, n in zip(rows["key"].tolist(), rows["offset"].tolist(), rows["length"].tolist()):
                        framed.append((key, os.pread(fd, n, at)))
                text_bytes += int(rows["text_bytes"].sum())
                for name in ARRAY_NAMES:
                    col = rows[f"tok_{name}"]
                    if (col >= 0).any():
                        tokens[name] = tokens.get(name, 0) + int(col[col >= 0].sum())
                del rows
            if framed:
                shards.append(_write_shard(cfg, split, i, n_shards[split], framed, tokens, text_bytes))
            del framed
    n_dead = sum(p.n_dead for p in parts)
    n_files = max(1, math.ceil(n_dead / cfg.dead_letter_records_per_file))
    dead_files = []
    for j in range(n_files if n_dead else 0):
        lines = []
        for p in parts:
            if not p.n_dead:
                continue
            with open(p.dead, "rb") as f:
                for raw in f:
                    line = raw.decode()
                    d = json.loads(line)
                    if n_files == 1 or _bucket(d["id"] + d["stage"], n_files) == j:
                        lines.append(((d["id"], d["stage"], d["reason"]), line))
        if lines:
            dead_files.append(_write_dead_file(cfg.root, j, n_files, lines))
        del lines
    return _finalize(None, cfg, shards, list(reasons.items()), dead_files, sum(p.n_read for p in parts))


class AssembleDataset(beam.PTransform):
    """Spill parts (from every worker, as ``(None, part)``) → shards, dead-letter files, manifest:
    the local runners' counterpart of :class:`WriteDataset`, one :func:`assemble` after the last
    part is in. Returns a PCollection holding the final Manifest; the spill folder is removed."""

    def __init__(self, cfg: SinkConfig, folder: str):
        super().__init__()
        self.cfg, self.folder = cfg, folder

    def expand(self, parts):
        cfg, folder = self.cfg, self.folder

        def run(kv):
            try:
                return assemble(list(kv[1]), cfg)
            finally:
                remove_spill(folder)

        return parts | "GroupParts" >> beam.GroupByKey() | "Assemble" >> beam.Map(run)
