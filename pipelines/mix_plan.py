"""The mix job's plan, as pure numpy (no Beam): the sources, their units of work, and which
source each output row comes from.

1. **Sources and units** (no data read): every input manifest is loaded (never a bucket
   listing), foreign tokenizers are refused, and each source (its train split) is cut into
   *units*: runs of consecutive shards of about ``group_bytes``, in manifest order. For text, a
   unit's offset in its source's packed token stream (``Σ (tokens + 2·samples)`` of the shards
   before it: each document is framed ``BOS … EOS``) is known from the manifest alone.
2. **The plan**, once the packing step has counted each unit's candidate rows: a PCG64
   generator seeded by ``seed`` draws the source of each output row by weight, and row ``i``
   takes the next unused candidate of its source (per source, candidates are used in manifest
   order). Without ``rows`` the plan stops just before the first draw that finds its source
   exhausted; with ``rows`` an exhausted source leaves the draw and the others are renormalised.
3. **The filler** (``--pack-paired``): the room a packed paired row leaves (at least
   ``MIN_FILL`` positions) is filled with a text segment from the *filler* text source, taken from
   the part of its packed stream the plan leaves unused (after its last used row), rows in output
   order; once that text runs out, the remaining rows keep their PAD. The source choice per row is
   not changed by the filler.

See :mod:`trimodal.pipelines.mix` for the whole job.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from trimodal.shards.format import ShardError
from trimodal.shards.manifest import Manifest, ShardInfo, merged_tokenizers
from trimodal.shards.packing import MIN_FILL
from trimodal.shards.rows import ROW_OPENER, framed_tokens
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.vocab import TASKS

ROW_OVERHEAD_BYTES = 2048  # tar headers + .json + .npy header per row, for shard sizing
_PLAN_SALT = 0x706C616E  # "plan"
_PLAN_CHUNK = 1 << 16
_NAME_RE = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


# ---- sources and units ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    index: int
    name: str
    root: str
    task: str  # text | image_text | audio_text
    weight: float  # normalised
    manifest: Manifest
    manifest_sha256: str

    @property
    def shards(self) -> list[ShardInfo]:
        """The shards mixed: the train split (a val split stays out of a training mix)."""
        return self.manifest.split_shards("train")

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def stream_tokens(self) -> int:
        """Text: length of the framed token stream (each document ``BOS … EOS``)."""
        return sum(framed_tokens(int(s.tokens.get("text", 0)), s.samples) for s in self.shards)

    def max_rows(self, seq_len: int) -> int:
        """Rows this source can give: exact for text, an upper bound for paired sources."""
        if self.task == "text":
            return self.stream_tokens // (seq_len - ROW_OPENER)
        return self.samples


@dataclass(frozen=True)
class Unit:
    """A run of consecutive shards of one source, packed by one worker."""

    source: int
    group: int
    root: str
    task: str
    shards: tuple[ShardInfo, ...]
    first_sample: int  # index (in the source, manifest order) of the unit's first sample
    stream_start: int  # text: offset of the unit's first token in the source's framed stream
    stream_len: int  # text: framed tokens the manifest promises for the unit


def parse_input(spec: str) -> tuple[str | None, str]:
    m = _NAME_RE.match(spec)
    if m and "/" not in m.group(1) and ":" not in m.group(1):
        return m.group(1), m.group(2)
    return None, spec


def load_sources(inputs: list[str], weights: list[float]) -> list[Source]:
    if not inputs:
        raise ValueError("mix needs at least one input dataset")
    if len(weights) != len(inputs):
        raise ValueError(f"{len(weights)} weights for {len(inputs)} inputs: give one weight per input")
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"mixing weights must be finite, >= 0 and not all 0, got {weights}")
    sources: list[Source] = []
    manifests: dict[str, Manifest] = {}
    names: set[str] = set()
    for i, spec in enumerate(inputs):
        name, root = parse_input(spec)
        root = root.rstrip("/")
        name = name or root.rsplit("/", 1)[-1] or root
        if name in names:
            raise ValueError(f"two inputs are named {name!r}: name them with NAME=ROOT")
        names.add(name)
        m, raw = Manifest.load_raw(root)
        if m.kind != "tokenized":
            raise ValueError(f"input {name!r} ({root}) is a {m.kind!r} dataset; mix reads tokenized datasets only")
        if m.modality not in TASKS:
            raise ValueError(f"input {name!r} ({root}): unknown task {m.modality!r}; expected one of {TASKS}")
        manifests[root] = m
        sources.append(Source(i, name, root, m.modality, w[i] / sum(w), m, hashlib.sha256(raw).hexdigest()))
    merged_tokenizers(manifests)
    return sources


def tokenizers_of(sources: list[Source]) -> dict[str, TokenizerInfo]:
    """Union of the inputs' tokenizers (differing ones were refused by :func:`load_sources`)."""
    return merged_tokenizers({s.root: s.manifest for s in sources})


def make_units(sources: list[Source], group_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    for s in sources:
        shards = s.shards
        group = 0
        i = 0
        first = 0
        stream = 0
        while i < len(shards):
            j, size = i, 0
            while j < len(shards) and (j == i or size + shards[j].bytes <= group_bytes):
                size += shards[j].bytes
                j += 1
            run = tuple(shards[i:j])
            samples = sum(x.samples for x in run)
            stream_len = sum(framed_tokens(int(x.tokens.get("text", 0)), x.samples) for x in run)
            if samples:
                units.append(Unit(s.index, group, s.root, s.task, run, first, stream, stream_len))
                group += 1
            first += samples
            stream += stream_len
            i = j
    return units


def rows_per_shard(seq_len: int, target_shard_bytes: int | None) -> int:
    target = target_shard_bytes or 128 * 2**20
    return max(1, int(target) // (4 * seq_len + ROW_OVERHEAD_BYTES))


# ---- the row plan -----------------------------------------------------------------------------
@dataclass
class Filler:
    """Text segments for packed paired rows: output row ``rows[j]`` gets ``TASK_text`` + the
    filler source's stream tokens ``[start[j], start[j] + length[j])``. ``unfilled``: rows with
    room that got none (the source's unused text ran out)."""

    source: int
    rows: np.ndarray  # int64, ascending
    start: np.ndarray  # int64, ascending, contiguous: start[j + 1] == start[j] + length[j]
    length: np.ndarray  # int64
    unfilled: int

    def spans(self, lo: int, hi: int) -> range:
        """Indices j whose text overlaps stream positions ``[lo, hi)``."""
        end = self.start + self.length
        return range(int(np.searchsorted(end, lo, side="right")), int(np.searchsorted(self.start, hi, side="left")))

    def of_row(self, out: int) -> int | None:
        j = int(np.searchsorted(self.rows, out))
        return j if j < self.rows.size and int(self.rows[j]) == out else None


@dataclass
class Plan:
    rows: int
    rows_per_shard: int
    n_shards: int
    available: list[int]  # candidate rows per source
    out_rows: list[np.ndarray]  # per source: output row of its k-th candidate (k < used)
    paired_offsets: dict[tuple[int, int], int]  # (source, group) → dense index of its first row
    stopped: str
    filler: Filler | None = None
    too_long_between: list[int] | None = None  # packed: too-long samples of row-less units before a used row


    @property
    def used(self) -> list[int]:
        return [int(a.size) for a in self.out_rows]


def filler_source(sources: list[Source], name: str | None) -> int | None:
    """Index of the filler text source: ``name`` (an input name), None → the text input of
    largest weight (first on ties; None without text inputs), ``"none"`` → None."""
    if name == "none":
        return None
    text = [s for s in sources if s.task == "text"]
    if name is not None:
        hit = [s for s in text if s.name == name]
        if not hit:
            raise ValueError(f"--filler {name!r} is not a text input (text inputs: {[s.name for s in text]})")
        return hit[0].index
    if not text:
        return None
    return max(text, key=lambda s: (s.weight, -s.index)).index


def plan_filler(out_rows: list[np.ndarray], lengths: dict[int, np.ndarray], source: int, available: int,
                seq_len: int) -> Filler:
    """Which packed paired rows get how much of the filler source's unused text.

    ``lengths[s]``: used positions of source ``s``'s candidate rows (dense index), for the packed
    paired sources; ``available``: the filler source's candidate rows (each ``seq_len - 1``
    stream tokens). The text starts after the source's last used row and is dealt in output-row
    order; a row whose text would pass the end of the stream, and every row after it, gets none."""
    rows, need = [], []
    for s, lens in lengths.items():
        used = out_rows[s]
        room = seq_len - lens[: used.size].astype(np.int64)
        keep = room >= MIN_FILL
        rows.append(used[keep].astype(np.int64))
        need.append(room[keep] - 1)  # the segment's TASK_text takes one position
    rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    need_a = np.concatenate(need) if need else np.zeros(0, np.int64)
    order = np.argsort(rows_a, kind="stable")
    rows_a, need_a = rows_a[order], need_a[order]
    base = int(out_rows[source].size) * (seq_len - ROW_OPENER)
    cap = int(available) * (seq_len - ROW_OPENER)
    end = base + np.cumsum(need_a)
    n = int(np.searchsorted(end, cap, side="right"))
    start = end[:n] - need_a[:n]
    return Filler(source, rows_a[:n], start.astype(np.int64), need_a[:n].astype(np.int64), int(rows_a.size - n))


def plan_sources(weights: list[float], available: list[int], rows: int | None, seed: int, names: list[str] | None = None) -> tuple[np.ndarray, str]:
    """Source of every output row (int32 array) and why the plan stopped.

    One uniform draw per row from ``PCG64([seed, salt])`` picks a source by weight among the
    active ones. ``rows=None``: stop before the first draw whose source is exhausted. Otherwise an
    exhausted source leaves the draw (same uniform re-mapped over the remaining sources) and the
    plan runs to ``rows``; ValueError when every source runs out first.
    """
    names = names or [str(i) for i in range(len(weights))]
    w = np.asarray(weights, dtype=np.float64)
    room = np.asarray(available, dtype=np.int64).copy()
    active = [i for i in range(len(w)) if w[i] > 0]
    rng = np.random.default_rng([int(seed), _PLAN_SALT])
    parts: list[np.ndarray] = []
    total = 0
    stopped = "rows"
    while rows is None or total < rows:
        n = _PLAN_CHUNK if rows is None else min(_PLAN_CHUNK, rows - total)
        u = rng.random(n)
        i = 0
        halt = False
        while i < n:
            if not active:
                raise ValueError(f"the inputs hold only {total} rows at this seq_len; asked for {rows}")
            act = np.asarray(active, dtype=np.int64)
            cum = np.cumsum(w[act])
            pick = np.minimum(np.searchsorted(cum, u[i:] * cum[-1], side="right"), act.size - 1)
            c = act[pick]
            cut, gone = c.size, -1
            for s in active:
                pos = np.flatnonzero(c == s)
                if pos.size > room[s] and pos[room[s]] < cut:
                    cut, gone = int(pos[room[s]]), s
            take = c[:cut]
            parts.append(take.astype(np.int32))
            room -= np.bincount(take, minlength=len(w)).astype(np.int64)
            total += int(take.size)
            i += cut
            if gone < 0:
                break
            if rows is None:
                stopped = f"source {names[gone]!r} exhausted"
                halt = True
                break
            active.remove(gone)
        if halt:
            break
    choice = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return choice, stopped


def make_plan(stats: list[tuple], spec: dict[str, Any]) -> Plan:
    """The plan from the packing step's per-unit stats ``(source, group, rows, samples,
    too_long, stream_tokens, lengths)`` and the launcher's spec (``lengths``: the used positions
    of each packed paired candidate row, else None)."""
    n_src = len(spec["weights"])
    available = [0] * n_src
    per_group: dict[tuple[int, int], int] = {}
    group_lengths: dict[tuple[int, int], np.ndarray] = {}
    group_too_long: dict[tuple[int, int], int] = {}
    stream = [0] * n_src
    for src, group, n_rows, _samples, too_long, n_stream, lens in stats:
        per_group[(src, group)] = n_rows
        group_too_long[(src, group)] = too_long
        stream[src] += n_stream
        if lens is not None:
            group_lengths[(src, group)] = lens
    offsets: dict[tuple[int, int], int] = {}
    for src in range(n_src):
        if spec["tasks"][src] == "text":
            if stream[src] != spec["stream_tokens"][src]:
                raise ShardError(spec["names"][src], f"packed {stream[src]} stream tokens, manifest says "
                                                     f"{spec['stream_tokens'][src]}")
            available[src] = stream[src] // (spec["seq_len"] - ROW_OPENER)
        else:
            acc = 0
            for (s, g) in sorted(k for k in per_group if k[0] == src):
                offsets[(s, g)] = acc
                acc += per_group[(s, g)]
            available[src] = acc
    choice, stopped = plan_sources(spec["weights"], available, spec["rows"], spec["seed"], spec["names"])
    if choice.size == 0:
        detail = ", ".join(f"{n}: {a}" for n, a in zip(spec["names"], available))
        raise ValueError(f"the mix has no rows at seq_len {spec['seq_len']} (rows available per input: {detail})")
    dtype = np.uint32 if choice.size < 2**32 else np.int64
    out_rows = [np.flatnonzero(choice == s).astype(dtype) for s in range(n_src)]
    # packed units charge a too-long sample to one of their rows; a unit with no row at all has
    # none, so its too-long samples count when a later row of the source is used
    between = [0] * n_src
    for (src, g), n in per_group.items():
        if n == 0 and (src, g) in offsets and offsets[(src, g)] < out_rows[src].size:
            between[src] += group_too_long[(src, g)]
    filler = None
    if spec.get("filler") is not None:
        lengths = {}
        for src in range(n_src):
            keys = sorted(k for k in group_lengths if k[0] == src)
            if keys:
                lengths[src] = np.concatenate([group_lengths[k] for k in keys])
        f = spec["filler"]
        filler = plan_filler(out_rows, lengths, f, available[f], spec["seq_len"])
    rps = spec["rows_per_shard"]
    n = int(choice.size)
    return Plan(rows=n, rows_per_shard=rps, n_shards=-(-n // rps), available=available, out_rows=out_rows,
                paired_offsets=offsets, stopped=stopped, filler=filler, too_long_between=between)


