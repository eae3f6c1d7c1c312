"""The local runs' sink: spill samples to disk, then assemble the shards (bounded memory).

On a local runner the Beam graph sink's GroupByKey (:class:`~trimodal.pipelines.sink.WriteDataset`)
would hold the whole corpus in memory, so local runs write the same bytes in two phases:

1. *Spill.* The step that makes the samples appends each one, already framed as tar members,
   to a spill part on local disk (the system temp folder, ``TMPDIR``: :func:`spill_folder`), with
   one index row (split, 64-bit bucket hash, key, offset, length, token counts) and its split's
   totals; dead letters go as their final JSON lines. A part closes at :data:`SPILL_PART_BYTES` /
   :data:`SPILL_PART_ROWS`; the step emits only the small part descriptions.
2. *Assemble*, once every part is in (one GroupByKey of the descriptions): N per split from the
   summed totals, exactly as the graph sink's Combine computes it; each part's index is sorted by
   global bucket (``hash % N``, train buckets first) and written back, so one shard's samples are
   one slice of each part's index; each shard is then read from the parts (``pread``), sorted by
   key, written; dead-letter files likewise (``ceil(dead / per_file)`` files, bucketed by id and
   stage, sorted by id, stage, reason); then the manifest, and the spill folder is removed.

Memory is bounded whatever the corpus size: one batch while spilling, about one shard (plus one
part's index) while assembling: roughly 2× ``target_shard_bytes`` (3× with zstd) above the
runtime's own ~0.2 GB. Disk: the spill holds about one copy of the output. A re-run is
idempotent (same bytes); a killed launcher's spill folder is swept by the next local run
(:func:`sweep_spills`).
"""

from __future__ import annotations

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

from trimodal.pipelines.outcomes import count
from trimodal.pipelines.records import DeadLetter
from trimodal.pipelines.sink import (SinkConfig, bucket_of, dead_line, finalize_dataset, hash64, num_shards, split_of,
                                     write_dead_file, write_split_shard)
from trimodal.shards.format import ARRAY_NAMES
from trimodal.shards.lock import pid_alive
from trimodal.shards.manifest import Manifest

SPLITS = ("train", "val")
SPILL_PART_BYTES = 256 * 2**20  # framed samples in one spill part
SPILL_PART_ROWS = 1 << 18  # samples in one spill part (bounds the index held while spilling)
SPILL_PREFIX = "trimodal-spill-"
_INDEX_HEAD = [("split", "u1"), ("h", "<u8")]
_INDEX_TAIL = [("offset", "<u8"), ("length", "<u8"), ("text_bytes", "<u8")] + [(f"tok_{n}", "<i8") for n in ARRAY_NAMES]


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
        rows, vf, offset = self._rows, self.val_fraction, self._offset
        samples = list(samples)
        framed = [s["framed"] for s in samples]
        self._data.write(b"".join(framed))  # one write a batch
        totals = part.totals
        for s, f in zip(samples, framed):
            split = split_of(s["id"], vf) if vf > 0 else "train"
            tok = s["tokens"]
            n = len(f)
            rows.append((split == "val", hash64(s["key"]), s["key"].encode(), offset, n,
                         s["text_bytes"], *[tok.get(a, -1) for a in ARRAY_NAMES]))
            offset += n
            t = totals.get(split)
            if t is None:
                t = totals[split] = [0, 0]
            t[0] += 1
            t[1] += s["size"]
        self._offset = offset
        lines = []
        for d in dead:
            lines.append(dead_line(d))
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
    n_shards = {s: num_shards(totals[s][1], totals[s][0], cfg.target_shard_bytes) for s in SPLITS if s in totals}
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
                count("AssembleDataset", "shards")  # which sink ran: the job's counters say
                shards.append(write_split_shard(cfg, split, i, n_shards[split], framed, tokens, text_bytes))
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
                    if n_files == 1 or bucket_of(d["id"] + d["stage"], n_files) == j:
                        lines.append(((d["id"], d["stage"], d["reason"]), line))
        if lines:
            dead_files.append(write_dead_file(cfg.root, j, n_files, lines))
        del lines
    return finalize_dataset(None, cfg, shards, list(reasons.items()), dead_files, sum(p.n_read for p in parts))


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
