"""``trimodal pipeline mix``: tokenized datasets → *mixed* shards of rows already packed to L.

For a fixed production run: the rows a training run will see are decided once, here, by the
mixing weights and a seed; the loader then reads them as they are (``kind="mixed"``).

What it writes
==============
Shards ``shard-NNNNN-of-MMMMM.tar`` (ordinary WebDataset tars, :mod:`trimodal.shards.format`);
sample ``i`` is output row ``i``: key ``"%012d" % i``, ``tokens.npy`` (uint32[L], global ids of
the :class:`~trimodal.tokenizers.vocab.VocabLayout` built from the inputs' tokenizers) and a
``.json`` ``{"row": i, "task": "text"|"image_text"|"audio_text", "sources": [dataset name],
"samples": [input sample keys whose tokens are in the row]}``. Rows are laid out as SPEC §3
says: text documents packed with :class:`~trimodal.shards.rows.TextPacker` (exactly L, no PAD,
documents continue across rows), paired samples with :func:`~trimodal.shards.rows.paired_row`
(PAD after the caption/transcript; a sample whose media alone does not fit is *filtered* with
reason ``too_long_for_seq_len``). The manifest (``kind="mixed"``, ``modality="mixed"``,
``layout``, ``seq_len``, the merged tokenizers) is written last.

Counts: ``read`` = input samples consumed (those whose tokens reached a written row, plus the
filtered ones among them), ``written`` = rows, ``filtered.too_long_for_seq_len`` = too-long
samples among those consumed; ``counts["sources"]`` has per input dataset its weight, samples,
rows available, rows used, samples consumed, too-long samples (in the consumed prefix and in
total) and captions truncated; ``counts["rows_per_task"]``; ``counts["stopped"]`` says why the
row plan ended.

Design
======
1. **Launcher** (no data read): loads every input manifest (never lists a bucket), refuses
   foreign tokenizers (:func:`~trimodal.shards.manifest.check_same_tokenizers`), builds the
   layout, and cuts each source into *units*: runs of consecutive shards of about
   ``group_bytes``, in manifest order. For text, a unit's offset in its source's packed token
   stream (``Σ (tokens + 2·samples)`` of the shards before it: each document is framed
   ``BOS … EOS``) is known from the manifest alone.
2. **Pack** (parallel per unit): reads its shards in manifest order (checksums checked) and
   turns samples into *candidate rows*. Text: the unit's documents go through a
   :class:`TextPacker` whose pending state is primed so that its rows line up with the rows of
   one sequential packer over the whole source; the partial rows at the unit's two ends are
   emitted as fragments, and ``GroupByKey`` on (source, row) stitches them. The result is
   exactly what one sequential ``TextPacker`` over the source in manifest order produces, for
   any grouping and any number of workers. Paired: one candidate per sample that fits.
3. **Plan** (one small step): from the per-unit counts, the number of rows each source offers;
   a PCG64 generator seeded by ``seed`` draws the source of each output row by weight, and row
   ``i`` takes the next unused candidate of its source (per source, candidates are used in
   manifest order). Without ``rows`` the plan stops just before the first draw that finds its
   source exhausted ("until the first source is exhausted"); with ``rows`` an exhausted source
   leaves the draw and the others are renormalised, and asking for more rows than all sources
   hold is an error (checked up front against the manifests where possible).
4. **Write** (parallel per output shard): candidates are keyed by output shard
   (``row // rows_per_shard``, ``rows_per_shard`` from ``target_shard_bytes``), grouped, sorted
   by row and written atomically (:func:`~trimodal.shards.writer.write_shard`); then the manifest,
   then shards of an earlier run with other names are removed
   (:func:`~trimodal.pipelines.sink.remove_stale`).

Same inputs + config + seed → byte-identical shards and manifest, on any runner and worker count:
every order is fixed by indices (unit, row, shard), never by arrival.

Limits
======
- Every input shard is read in full once, and every source is packed in full, even when the plan
  uses only a prefix of it (a source's row count is only known after packing: paired samples may
  be filtered). Size the inputs near the mix you want; unused candidates cost read + shuffle.
- Candidate rows go through one shuffle (paired rows without their PAD tail).
- The plan is a side input held by every worker: 4 bytes per output row (100 M rows ≈ 400 MB).
- The unit list (about 200 bytes per input shard) is part of the job graph (``beam.Create``):
  fine for tens of thousands of input shards; beyond that, use bigger input shards.
- No repetition: a source is never read twice (no epochs, no upsampling beyond its size).
- A corrupt input shard (checksum, parse, or a token stream that disagrees with the manifest)
  fails the job loudly: run ``trimodal shards verify`` on inputs first.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np

from trimodal.pipelines import common
from trimodal.pipelines.outcomes import FILTERED, count
from trimodal.pipelines.sink import remove_stale
from trimodal.shards import storage
from trimodal.shards.format import ShardFormatError, iter_tar, npy_view
from trimodal.shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, check_same_tokenizers
from trimodal.shards.reader import ShardCorrupted, read_shard_bytes
from trimodal.shards.rows import RowTooLong, TextPacker, paired_row
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASKS, VocabLayout

STAGE = "mix"
TOO_LONG = "too_long_for_seq_len"
MODALITIES = ("text", "image_text", "audio_text")
DEFAULT_IMAGE_CODES = 16384
DEFAULT_AUDIO_CODES = 1024
DEFAULT_AUDIO_LEVELS = 4
ROW_OVERHEAD_BYTES = 2048  # tar headers + .json + .npy header per row, for shard sizing
_PLAN_SALT = 0x706C616E  # "plan"
_PLAN_CHUNK = 1 << 16
_NAME_RE = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")
_FRAGMENTS = "fragments"
_STATS = "stats"


@dataclass
class MixPipelineConfig:
    """``inputs``: tokenized dataset roots (``NAME=ROOT`` names one; default name: the root's
    last path component); ``weights``: one per input (normalised); ``rows``: output rows
    (None: until the first source is exhausted)."""

    inputs: list[str]
    weights: list[float]
    seq_len: int
    out: str
    rows: int | None = None
    seed: int = 0
    target_shard_bytes: int | None = 128 * 2**20
    compression: str = "none"
    group_bytes: int = 64 * 2**20
    verify_inputs: bool = True
    audio_shared_block: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ---- launcher side --------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    index: int
    name: str
    root: str
    modality: str  # text | image_text | audio_text
    weight: float  # normalised
    manifest: Manifest
    manifest_sha256: str

    @property
    def stream_tokens(self) -> int:
        """Text: length of the framed token stream (each document ``BOS … EOS``)."""
        return sum(int(s.tokens.get("text", 0)) + 2 * s.samples for s in self.manifest.shards)

    def max_rows(self, seq_len: int) -> int:
        """Rows this source can give: exact for text, an upper bound for paired sources."""
        if self.modality == "text":
            return self.stream_tokens // (seq_len - 1)
        return self.manifest.samples


@dataclass(frozen=True)
class Unit:
    """A run of consecutive shards of one source, packed by one worker."""

    source: int
    group: int
    root: str
    modality: str
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
        url = storage.join(root, MANIFEST_NAME)
        try:
            raw = storage.read_bytes(url)
        except FileNotFoundError:
            raise FileNotFoundError(f"no manifest at {url}: not a dataset root, or its pipeline did not finish") from None
        m = Manifest.from_dict(json.loads(raw), where=url)
        if m.kind != "tokenized":
            raise ValueError(f"input {name!r} ({root}) is a {m.kind!r} dataset; mix reads tokenized datasets only")
        if m.modality not in MODALITIES:
            raise ValueError(f"input {name!r} ({root}): unknown modality {m.modality!r}; expected one of {MODALITIES}")
        manifests[root] = m
        sources.append(Source(i, name, root, m.modality, w[i] / sum(w), m, hashlib.sha256(raw).hexdigest()))
    check_same_tokenizers(manifests)
    return sources


def merged_tokenizers(sources: list[Source]) -> dict[str, dict[str, Any]]:
    """Union of the inputs' tokenizers (identical fingerprints were checked; first one wins)."""
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        for name, info in sorted(s.manifest.tokenizers.items()):
            out.setdefault(name, info)
    return out


def layout_from_tokenizers(tokenizers: dict[str, dict[str, Any]], audio_shared_block: bool = True) -> VocabLayout:
    """text codes = text ``vocab_size``; image codes = image ``vocab_size`` (default 16384); audio
    codes / levels = audio ``vocab_size`` / ``n_keep`` (default 1024 / 4)."""
    text = tokenizers.get("text") or {}
    if "vocab_size" not in text:
        raise ValueError("the inputs have no text tokenizer with a vocab_size; every modality needs one")
    image = tokenizers.get("image") or {}
    audio = tokenizers.get("audio") or {}
    return VocabLayout(
        text_codes=int(text["vocab_size"]),
        image_codes=int(image.get("vocab_size", DEFAULT_IMAGE_CODES)),
        audio_codes=int(audio.get("vocab_size", DEFAULT_AUDIO_CODES)),
        audio_levels=int(audio.get("n_keep", DEFAULT_AUDIO_LEVELS)),
        audio_shared_block=audio_shared_block,
        fingerprints={k: v["fingerprint"] for k, v in sorted(tokenizers.items()) if "fingerprint" in v},
    )


def make_units(sources: list[Source], group_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    for s in sources:
        shards = s.manifest.shards
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
            stream_len = sum(int(x.tokens.get("text", 0)) + 2 * x.samples for x in run)
            if samples:
                units.append(Unit(s.index, group, s.root, s.modality, run, first, stream, stream_len))
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
class Plan:
    rows: int
    rows_per_shard: int
    n_shards: int
    available: list[int]  # candidate rows per source
    out_rows: list[np.ndarray]  # per source: output row of its k-th candidate (k < used)
    paired_offsets: dict[tuple[int, int], int]  # (source, group) → dense index of its first row
    stopped: str

    @property
    def used(self) -> list[int]:
        return [int(a.size) for a in self.out_rows]


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


def _make_plan(_, stats: list[tuple], spec: dict[str, Any]) -> Plan:
    n_src = len(spec["weights"])
    available = [0] * n_src
    per_group: dict[tuple[int, int], int] = {}
    stream = [0] * n_src
    for src, group, n_rows, _samples, _too_long, n_stream in stats:
        per_group[(src, group)] = n_rows
        stream[src] += n_stream
    offsets: dict[tuple[int, int], int] = {}
    for src in range(n_src):
        if spec["modalities"][src] == "text":
            if stream[src] != spec["stream_tokens"][src]:
                raise ShardCorrupted(
                    f"input {spec['names'][src]!r}: packed {stream[src]} stream tokens, manifest says {spec['stream_tokens'][src]}"
                )
            available[src] = stream[src] // (spec["seq_len"] - 1)
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
    rps = spec["rows_per_shard"]
    return Plan(
        rows=int(choice.size),
        rows_per_shard=rps,
        n_shards=-(-int(choice.size) // rps),
        available=available,
        out_rows=out_rows,
        paired_offsets=offsets,
        stopped=stopped,
    )


# ---- workers ----------------------------------------------------------------------------------
def _unit_samples(unit: Unit, verify: bool) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``(key, arrays)`` of the unit's samples in manifest order; the json is not parsed."""
    for info in unit.shards:
        data = read_shard_bytes(unit.root, info, verify=verify)
        where = storage.join(unit.root, info.name)
        n = 0
        key: str | None = None
        arrays: dict[str, np.ndarray] = {}
        try:
            for member, payload in iter_tar(data, where):
                k, _, ext = member.partition(".")
                if k != key:
                    if key is not None:
                        yield key, arrays
                        n += 1
                    key, arrays = k, {}
                if ext.endswith(".npy"):
                    arrays[ext[:-4]] = npy_view(payload)
            if key is not None:
                yield key, arrays
                n += 1
        except ShardFormatError as e:
            raise ShardCorrupted(str(e)) from None
        if n != info.samples:
            raise ShardCorrupted(f"shard {where}: {n} samples, manifest says {info.samples}")


class PackUnit(beam.DoFn):
    """A unit → candidate rows (main output ``(source, group | None, index, payload)``), text
    fragments (``((source, row), (offset, tokens, keys, sample_end))``) and one stats tuple
    ``(source, group, rows, samples, too_long, stream_tokens)``.

    A payload is ``(tokens uint32, keys, sample_end, truncated)``: the row's tokens without its
    PAD tail, the input sample keys in it, 1 + the source index of its last sample, and 1 when
    a caption/transcript was cut to fit."""

    def __init__(self, layout: dict[str, Any], seq_len: int, verify: bool):
        self.layout_dict = layout
        self.seq_len = seq_len
        self.verify = verify

    def setup(self) -> None:
        self.layout = VocabLayout.from_dict(self.layout_dict)

    def process(self, unit: Unit):
        if unit.modality == "text":
            yield from self._text(unit)
        else:
            yield from self._paired(unit)

    def _text(self, unit: Unit):
        L, S = self.seq_len, self.seq_len - 1
        packer = TextPacker(self.layout, L)
        a = unit.stream_start
        r, off = divmod(a, S)
        if off:  # placeholders for the part of row r that earlier units hold
            packer.load_state_dict({"pending": [self.layout.pad] * off})
        partial = off > 0
        row_start = r * S
        docs: deque[tuple[int, int, str, int]] = deque()  # (start, end, key, sample index)
        pos, idx, full = a, unit.first_sample, 0

        def span(lo: int, hi: int) -> tuple[tuple[str, ...], int]:
            inside = [d for d in docs if d[0] < hi and d[1] > lo]
            return tuple(d[2] for d in inside), (max(d[3] for d in inside) + 1 if inside else 0)

        for key, arrays in _unit_samples(unit, self.verify):
            text = arrays.get("text")
            if text is None:
                raise ShardCorrupted(f"{unit.root}: text sample {key} has no text.npy")
            packer.add(text)
            n = int(text.size) + 2
            docs.append((pos, pos + n, key, idx))
            pos += n
            idx += 1
            while packer.ready():
                row = packer.pop()
                row_end = row_start + S
                keys, end = span(row_start, row_end)
                if partial:
                    yield beam.pvalue.TaggedOutput(_FRAGMENTS, ((unit.source, r), (off, row[1 + off :], keys, end)))
                    partial = False
                else:
                    full += 1
                    yield unit.source, None, r, (row.astype(np.uint32), keys, end, 0)
                while docs and docs[0][1] <= row_end:
                    docs.popleft()
                r += 1
                row_start = row_end
        if pos - a != unit.stream_len:
            raise ShardCorrupted(
                f"{unit.root}: shards {unit.shards[0].name}..{unit.shards[-1].name} hold {pos - a} framed text tokens, "
                f"the manifest says {unit.stream_len}"
            )
        pending = np.asarray(packer.state_dict()["pending"], dtype=np.int64)
        lo = off if partial else 0
        if pending.size > lo:
            keys, end = span(row_start, pos)
            yield beam.pvalue.TaggedOutput(_FRAGMENTS, ((unit.source, r), (lo, pending[lo:], keys, end)))
        count(STAGE, "candidates", "text", full)
        yield beam.pvalue.TaggedOutput(_STATS, (unit.source, unit.group, full, idx - unit.first_sample, 0, pos - a))

    def _paired(self, unit: Unit):
        media_key, modality = ("image", IMAGE) if unit.modality == "image_text" else ("audio", AUDIO)
        layout, L = self.layout, self.seq_len
        empty = np.zeros(0, dtype=np.int64)
        local = too_long = 0
        idx = unit.first_sample
        for key, arrays in _unit_samples(unit, self.verify):
            media = arrays.get(media_key)
            if media is None:
                raise ShardCorrupted(f"{unit.root}: {unit.modality} sample {key} has no {media_key}.npy")
            text = arrays.get("text")
            text = empty if text is None else text
            media = layout.to_global(modality, media)
            idx += 1
            try:
                tokens, valid = paired_row(layout, unit.modality, media, text, L)
            except RowTooLong:
                too_long += 1
                continue
            used = int(np.count_nonzero(valid))
            truncated = int(text.size > L - media.size - 5)
            yield unit.source, unit.group, local, (tokens[:used].astype(np.uint32), (key,), idx, truncated)
            local += 1
        count(STAGE, "candidates", unit.modality, local)
        if too_long:
            count(STAGE, FILTERED, TOO_LONG, too_long)
        yield beam.pvalue.TaggedOutput(_STATS, (unit.source, unit.group, local, idx - unit.first_sample, too_long, 0))


def _stitch(item, seq_len: int, task_text: int):
    """Fragments of one text row → the row; the source's final partial row is dropped."""
    (src, r), frags = item
    frags = sorted(frags, key=lambda f: f[0])
    pos = 0
    for off, tokens, _, _ in frags:
        if off != pos:
            raise ValueError(f"text row {r} of input {src}: fragments do not tile (offset {off}, expected {pos})")
        pos += int(tokens.size)
    if pos < seq_len - 1:
        return
    if pos != seq_len - 1:
        raise ValueError(f"text row {r} of input {src}: {pos} tokens, expected {seq_len - 1}")
    row = np.empty(seq_len, dtype=np.uint32)
    row[0] = task_text
    row[1:] = np.concatenate([f[1] for f in frags])
    keys = tuple(dict.fromkeys(k for f in frags for k in f[2]))
    yield src, None, r, (row, keys, max(f[3] for f in frags), 0)


def _assign(item, plan: Plan):
    """Candidate → ``(output shard, (output row, source, payload))`` when the plan uses it."""
    src, group, k, payload = item
    if group is not None:
        k += plan.paired_offsets[(src, group)]
    rows = plan.out_rows[src]
    if k < rows.size:
        out = int(rows[k])
        yield out // plan.rows_per_shard, (out, src, payload)


def _consumed(item):
    _, (_, src, (_, _, sample_end, truncated)) = item
    return src, (sample_end, truncated)


def _merge_consumed(values) -> tuple[int, int]:
    end = truncated = 0
    for e, t in values:
        end = max(end, e)
        truncated += t
    return end, truncated


class WriteRows(beam.DoFn):
    """One output shard: its rows sorted by row index, padded to L, written atomically."""

    def __init__(self, root: str, seq_len: int, pad: int, names: list[str], tasks: list[str], compression: str):
        self.root, self.seq_len, self.pad = root, seq_len, pad
        self.names, self.tasks, self.compression = names, tasks, compression

    def process(self, item, plan: Plan):
        index, rows = item
        rows = sorted(rows, key=lambda x: x[0])
        L = self.seq_len

        def samples():
            for out, src, (tokens, keys, _, _) in rows:
                full = np.full(L, self.pad, dtype=np.uint32)
                full[: tokens.size] = tokens
                meta = {"row": out, "task": self.tasks[src], "sources": [self.names[src]], "samples": list(keys)}
                yield f"{out:012d}", meta, {"tokens": full}

        info = write_shard(self.root, shard_name(index, plan.n_shards, self.compression), samples(), compression=self.compression)
        count(STAGE, "written", "rows", info.samples)
        yield info


def _finalize(_, plan: Plan, shards: list[ShardInfo], consumed: list[tuple[int, tuple[int, int]]], spec: dict[str, Any]) -> Manifest:
    shards = sorted(shards, key=lambda s: s.name)
    by_src = dict(consumed)
    used = plan.used
    per_source: dict[str, Any] = {}
    rows_per_task = {t: 0 for t in TASKS}
    read = too_long = 0
    for i, name in enumerate(spec["names"]):
        end, truncated = by_src.get(i, (0, 0))
        mod = spec["modalities"][i]
        filt = end - used[i] if mod != "text" else 0
        per_source[name] = {
            "modality": mod,
            "weight": spec["weights"][i],
            "samples": spec["samples"][i],
            "rows_available": plan.available[i],
            "rows": used[i],
            "samples_consumed": end,
            TOO_LONG: filt,
            f"{TOO_LONG}_total": spec["too_long_total"].get(i, 0),
            "captions_truncated": truncated,
        }
        rows_per_task[mod] += used[i]
        read += end
        too_long += filt
    written = sum(s.samples for s in shards)
    if written != plan.rows:
        raise RuntimeError(f"wrote {written} rows, the plan has {plan.rows}")
    manifest = Manifest(
        kind="mixed",
        modality="mixed",
        tokenizers=spec["tokenizers"],
        shards=shards,
        counts={
            "read": read,
            "written": written,
            "filtered": {TOO_LONG: too_long},
            "rejected": {},
            "rows_per_task": rows_per_task,
            "sources": per_source,
            "stopped": plan.stopped,
        },
        layout=spec["layout"],
        seq_len=spec["seq_len"],
        config=spec["config"],
    )
    manifest.save(spec["out"])
    remove_stale(spec["out"], {s.name for s in shards}, set())
    return manifest


# ---- wiring -----------------------------------------------------------------------------------
@dataclass
class MixJob:
    """Everything the launcher resolved: what :func:`build_mix_pipeline` wires."""

    cfg: MixPipelineConfig
    sources: list[Source]
    layout: VocabLayout
    tokenizers: dict[str, dict[str, Any]]
    units: list[Unit]

    def spec(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "names": [s.name for s in self.sources],
            "modalities": [s.modality for s in self.sources],
            "weights": [s.weight for s in self.sources],
            "samples": [s.manifest.samples for s in self.sources],
            "stream_tokens": [s.stream_tokens if s.modality == "text" else 0 for s in self.sources],
            "rows": cfg.rows,
            "seed": cfg.seed,
            "seq_len": cfg.seq_len,
            "rows_per_shard": rows_per_shard(cfg.seq_len, cfg.target_shard_bytes),
            "tokenizers": self.tokenizers,
            "layout": self.layout.to_dict(),
            "out": cfg.out.rstrip("/"),
            "config": {
                "inputs": {s.name: s.root for s in self.sources},
                "input_manifests_sha256": {s.name: s.manifest_sha256 for s in self.sources},
                "weights": {s.name: float(cfg.weights[s.index]) for s in self.sources},
                "seq_len": cfg.seq_len,
                "rows": cfg.rows,
                "seed": cfg.seed,
                "target_shard_bytes": cfg.target_shard_bytes,
                "compression": cfg.compression,
                "group_bytes": cfg.group_bytes,
                "audio_shared_block": cfg.audio_shared_block,
                **cfg.extra,
            },
        }


def prepare_mix(cfg: MixPipelineConfig) -> MixJob:
    """Validate everything that can be checked from manifests alone (nothing is written)."""
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 8:
        raise ValueError(f"--seq-len must be an integer >= 8, got {cfg.seq_len!r}")
    if cfg.rows is not None and cfg.rows < 1:
        raise ValueError(f"--rows must be positive, got {cfg.rows}")
    if cfg.compression not in ("none", "zstd"):
        raise ValueError(f"unknown compression {cfg.compression!r}; expected 'none' or 'zstd'")
    sources = load_sources(cfg.inputs, cfg.weights)
    tokenizers = merged_tokenizers(sources)
    layout = layout_from_tokenizers(tokenizers, cfg.audio_shared_block)
    live = [s for s in sources if s.weight > 0]
    bound = sum(s.max_rows(cfg.seq_len) for s in live)
    if cfg.rows is not None and cfg.rows > bound:
        raise ValueError(f"--rows {cfg.rows} is more than the inputs can hold at seq_len {cfg.seq_len} (at most {bound})")
    if cfg.rows is None:
        empty = [s.name for s in live if s.max_rows(cfg.seq_len) == 0]
        if empty:
            raise ValueError(f"input(s) {empty} give no row at seq_len {cfg.seq_len}: the mix would be empty")
    units = make_units(sources, max(1, int(cfg.group_bytes)))
    return MixJob(cfg, sources, layout, tokenizers, units)


def build_mix_pipeline(p: beam.Pipeline, job: MixJob) -> beam.PCollection:
    """Wire the mix job into ``p``; returns a PCollection holding the final Manifest."""
    spec = job.spec()
    L = job.cfg.seq_len
    packed = (
        p
        | "Units" >> beam.Create(job.units)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Pack" >> beam.ParDo(PackUnit(spec["layout"], L, job.cfg.verify_inputs)).with_outputs(_FRAGMENTS, _STATS, main="rows")
    )
    stitched = (
        packed[_FRAGMENTS]
        | "GroupFragments" >> beam.GroupByKey()
        | "Stitch" >> beam.FlatMap(_stitch, seq_len=L, task_text=job.layout.task_token("text"))
    )
    candidates = (packed.rows, stitched) | "Candidates" >> beam.Flatten()
    plan = (
        p
        | "PlanSeed" >> beam.Create([None])
        | "Plan" >> beam.Map(_make_plan, stats=beam.pvalue.AsList(packed[_STATS]), spec=spec)
    )
    too_long = (
        packed[_STATS]
        | "TooLongPerSource" >> beam.Map(lambda s: (s[0], s[4]))
        | "SumTooLong" >> beam.CombinePerKey(sum)
    )
    assigned = candidates | "Assign" >> beam.FlatMap(_assign, plan=beam.pvalue.AsSingleton(plan))
    consumed = assigned | "ConsumedKeys" >> beam.Map(_consumed) | "Consumed" >> beam.CombinePerKey(_merge_consumed)
    shards = (
        assigned
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards"
        >> beam.ParDo(
            WriteRows(spec["out"], L, job.layout.pad, spec["names"], spec["modalities"], job.cfg.compression),
            plan=beam.pvalue.AsSingleton(plan),
        )
    )
    return (
        p
        | "Finalize" >> beam.Create([None])
        | "WriteManifest"
        >> beam.Map(
            lambda x, plan, shards, consumed, too_long: _finalize(x, plan, shards, consumed, {**spec, "too_long_total": dict(too_long)}),
            plan=beam.pvalue.AsSingleton(plan),
            shards=beam.pvalue.AsList(shards),
            consumed=beam.pvalue.AsList(consumed),
            too_long=beam.pvalue.AsList(too_long),
        )
    )


def run_mix_pipeline(cfg: MixPipelineConfig, beam_args: list[str] | None = None) -> Manifest:
    """Validate from the manifests (clear error, nothing written), then run on the named runner."""
    job = prepare_mix(cfg)
    return common.run(lambda p: build_mix_pipeline(p, job), cfg.out, beam_args or [])


__all__ = [
    "MixPipelineConfig",
    "MixJob",
    "Plan",
    "Source",
    "Unit",
    "build_mix_pipeline",
    "layout_from_tokenizers",
    "load_sources",
    "plan_sources",
    "prepare_mix",
    "run_mix_pipeline",
]
