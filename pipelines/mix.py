"""``trimodal pipeline mix``: tokenized datasets → *mixed* shards of rows already packed to L.

For a fixed production run: the rows a training run will see are decided once, here, by the
mixing weights and a seed; the loader then reads them as they are (``kind="mixed"``).

What it writes
==============
Shards ``shard-NNNNN-of-MMMMM.tar`` (ordinary WebDataset tars, :mod:`trimodal.shards.format`);
sample ``i`` is output row ``i``: key ``"%012d" % i``, ``tokens.npy`` (uint32[L], global ids of
the :class:`~trimodal.tokenizers.vocab.VocabLayout` built from the inputs' tokenizers) and a
``.json`` ``{"row": i, "task": "text"|"image_text"|"audio_text", "sources": [dataset name],
"samples": [input sample keys whose tokens are in the row]}``. Rows are laid out as ``docs/vocabulary.md``
says: text documents packed with :class:`~trimodal.shards.rows.TextPacker` (exactly L, no PAD,
documents continue across rows), paired samples with :func:`~trimodal.shards.rows.paired_row`
(PAD after the caption/transcript; a sample whose media alone does not fit is *filtered* with
reason ``too_long_for_seq_len``). With ``--pack-paired`` a paired row holds several samples of
one source as segments (the loader's :class:`~trimodal.shards.packing.RowPacker`: first fit
within ``--pack-lookahead`` samples, the packer restarted at each unit, so rows depend on
``--group-bytes``), and the room left (≥ ``MIN_FILL``) gets a text segment cut from the filler
text input's stream after the rows the plan used (:func:`~trimodal.pipelines.mix_plan.plan_filler`;
the row's json says where: ``"filler": {"source", "start", "tokens"}``). The manifest's config
records ``pack_paired``; training must set ``data.pack_paired=true`` (the loader refuses otherwise).
The manifest (``kind="mixed"``, ``modality="mixed"``,
``layout``, ``seq_len``, the merged tokenizers) is written last.

Counts: ``read`` = input samples consumed (those whose tokens reached a written row, plus the
filtered ones among them), ``written`` = rows, ``filtered.too_long_for_seq_len`` = too-long
samples among those consumed; ``counts["sources"]`` has per input dataset its weight, samples,
rows available, rows used, samples consumed, too-long samples (in the consumed prefix and in
total) and captions truncated; ``counts["rows_per_task"]``; ``counts["stopped"]`` says why the
row plan ended.

Design
======
1. **Launcher** (no data read; :mod:`~trimodal.pipelines.mix_plan`): loads every input manifest,
   refuses foreign tokenizers, builds the layout, cuts each source's train split into units.
2. **Pack** (parallel per unit; :mod:`~trimodal.pipelines.mix_pack`): reads its shards through the
   shared reader (checksums checked) and turns samples into *candidate rows*; text fragments at
   unit edges are stitched by a ``GroupByKey`` on (source, row).
3. **Plan** (one small step; :func:`~trimodal.pipelines.mix_plan.make_plan`): which source each
   output row comes from; asking for more rows than all sources hold is an error (checked up
   front against the manifests where possible).
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

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from trimodal.config import option
from trimodal.pipelines import common
from trimodal.pipelines.mix_pack import FRAGMENT, ROW, STATS, pack_unit, stitch
from trimodal.pipelines.mix_plan import (
    Plan, Source, Unit, filler_source, load_sources, make_plan, make_units, plan_sources, rows_per_shard, tokenizers_of,
)
from trimodal.pipelines.outcomes import FILTERED, count
from trimodal.pipelines.sink import remove_stale
from trimodal.shards.lock import DatasetLock
from trimodal.shards.manifest import Manifest, ShardInfo
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.vocab import TASKS, BlockDefaults, VocabLayout

STAGE = "mix"
TOO_LONG = "too_long_for_seq_len"


@dataclass
class MixPipelineConfig:
    """``inputs``: tokenized dataset roots (``NAME=ROOT`` names one; default name: the root's
    last path component); ``weights``: one per input (normalised); ``rows``: output rows
    (None: until the first source is exhausted)."""

    inputs: list[str] = option(default_factory=list, help="tokenized dataset roots (NAME=ROOT names one)")
    weights: list[float] = option(default_factory=list, help="one mixing weight per input")
    seq_len: int = option(0, help="row length L")
    out: str = option("", help="dataset root to write")
    rows: int | None = option(None, help="rows to write (default: one pass of the smallest source)")
    seed: int = option(0, help="seed of the row plan")
    target_shard_bytes: int | None = option(128_000_000, flag="shard-mb", convert=common._mb,
                                            help="target shard size (the flag in MB, the config key in bytes)")
    compression: str = option("zstd", help="shard compression: zstd (level 3) or none (plain tars)")
    group_bytes: int = option(64 * 2**20, help="input bytes per packing unit")
    verify_inputs: bool = option(True, help="check each input shard's sha256 (else its size and xxh3 content hash)")
    audio_shared_block: bool = option(True, help="all audio levels share one id block [paper]")
    pack_paired: bool = option(False, help="several paired samples of a source share a row (train with data.pack_paired=true)")
    pack_lookahead: int = option(8, help="with --pack-paired: samples held back to fill rows first-fit")
    filler: str | None = option(None, help="with --pack-paired: the text input whose unused text fills the rows' leftover "
                                           "room (default: the text input of largest weight; 'none': leave it PAD)")
    progress: bool = option(True, help="live count of records on local runs")

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("--inputs is required: the tokenized dataset roots to mix")
        if not self.out:
            raise ValueError("--out is required")
        if len(self.weights) != len(self.inputs):
            raise ValueError(f"--weights has {len(self.weights)} values for {len(self.inputs)} --inputs")
        from trimodal.shards.rows import check_seq_len

        check_seq_len(self.seq_len, "--seq-len")
        if self.rows is not None and self.rows < 1:
            raise ValueError(f"--rows must be positive, got {self.rows}")
        if self.compression not in ("none", "zstd"):
            raise ValueError(f"unknown compression {self.compression!r}; expected 'none' or 'zstd'")
        if self.pack_lookahead < 1:
            raise ValueError(f"--pack-lookahead must be >= 1, got {self.pack_lookahead}")
        if self.filler is not None and not self.pack_paired:
            raise ValueError("--filler only applies with --pack-paired")


class PackUnit(beam.DoFn):
    """Beam's face of :func:`~trimodal.pipelines.mix_pack.pack_unit`: rows on the main output,
    fragments and stats on tagged ones."""

    def __init__(self, layout: dict[str, Any], seq_len: int, verify: str, pack: bool = False, lookahead: int = 8):
        self.layout_dict, self.seq_len, self.verify = layout, seq_len, verify
        self.pack, self.lookahead = pack, lookahead

    def setup(self) -> None:
        self.layout = VocabLayout.from_dict(self.layout_dict)

    def process(self, unit: Unit):
        for kind, item in pack_unit(unit, self.layout, self.seq_len, self.verify, self.pack, self.lookahead):
            if kind == ROW:
                yield item
            else:
                if kind == STATS:
                    src, group, rows, samples, too_long = item[:5]
                    count(STAGE, "candidates", unit.task, rows)
                    if too_long:
                        count(STAGE, FILTERED, TOO_LONG, too_long)
                yield beam.pvalue.TaggedOutput(kind, item)


def _assign(item, plan: Plan, seq_len: int, text_bos: int):
    """Candidate → ``(output shard, (output row, source, payload, None))`` when the plan uses it;
    an unused row of the filler source → ``(output shard, (output row, source, piece, offset))``
    for each filler its text overlaps (``offset``: where the piece starts in that filler). A
    piece's sample end leaves out the row's documents that start after it (their ``BOS_text``
    lies past the piece), so the filler input's ``samples_consumed`` is exact."""
    src, group, k, payload = item
    if group is not None:
        k += plan.paired_offsets[(src, group)]
    rows = plan.out_rows[src]
    if k < rows.size:
        out = int(rows[k])
        yield out // plan.rows_per_shard, (out, src, payload, None)
        return
    f = plan.filler
    if f is None or src != f.source:
        return
    S = seq_len - 1
    lo, body = k * S, payload[0][1:]  # a text row: TASK_text, then its S stream tokens
    for j in f.spans(lo, lo + S):
        a, b = max(int(f.start[j]), lo), min(int(f.start[j] + f.length[j]), lo + S)
        out = int(f.rows[j])
        later = int(np.count_nonzero(body[b - lo :] == text_bos))
        piece = (body[a - lo : b - lo], (), payload[2] - later, 0, 0)
        yield out // plan.rows_per_shard, (out, src, piece, a - int(f.start[j]))


def _consumed(item):
    _, (_, src, (_, keys, sample_end, truncated, too_long), _) = item
    return src, (sample_end, truncated, len(keys), too_long)


def _merge_consumed(values) -> tuple[int, int, int, int]:
    """(last sample end, captions truncated, samples in the rows, too-long charged to the rows)."""
    end = truncated = samples = too_long = 0
    for e, t, n, x in values:
        end = max(end, e)
        truncated += t
        samples += n
        too_long += x
    return end, truncated, samples, too_long


class WriteRows(beam.DoFn):
    """One output shard: its rows sorted by row index, each with its filler text (if any), padded
    to L, written atomically."""

    def __init__(self, root: str, seq_len: int, pad: int, task_text: int, names: list[str], tasks: list[str],
                 compression: str):
        self.root, self.seq_len, self.pad, self.task_text = root, seq_len, pad, task_text
        self.names, self.tasks, self.compression = names, tasks, compression

    def process(self, item, plan: Plan):
        index, items = item
        rows = sorted((x for x in items if x[3] is None), key=lambda x: x[0])
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
        for out, _, piece, offset in items:
            if offset is not None:
                pieces.setdefault(out, []).append((offset, piece[0]))
        L, f = self.seq_len, plan.filler

        def samples():
            for out, src, (tokens, keys, *_), _ in rows:
                full = np.full(L, self.pad, dtype=np.uint32)
                full[: tokens.size] = tokens
                meta = {"row": out, "task": self.tasks[src], "sources": [self.names[src]], "samples": list(keys)}
                j = f.of_row(out) if f is not None else None
                if j is not None:
                    text = np.concatenate([p for _, p in sorted(pieces.pop(out, []), key=lambda x: x[0])] or [[]])
                    if text.size != int(f.length[j]) or tokens.size + 1 + text.size != L:
                        raise RuntimeError(f"row {out}: filler of {text.size} tokens, the plan has {int(f.length[j])}")
                    full[tokens.size] = self.task_text
                    full[tokens.size + 1 :] = text
                    meta["sources"].append(self.names[f.source])
                    meta["filler"] = {"source": self.names[f.source], "start": int(f.start[j]), "tokens": int(text.size)}
                yield f"{out:012d}", meta, {"tokens": full}

        info = write_shard(self.root, shard_name(index, plan.n_shards, self.compression), samples(),
                           compression=self.compression)
        if pieces:
            raise RuntimeError(f"shard {index}: filler text for rows {sorted(pieces)[:5]} that are not in it")
        count(STAGE, "written", "rows", info.samples)
        yield info


def _finalize(_, plan: Plan, shards: list[ShardInfo], consumed: list[tuple[int, tuple[int, int, int, int]]],
              spec: dict[str, Any]) -> Manifest:
    shards = sorted(shards, key=lambda s: s.name)
    by_src = dict(consumed)
    used = plan.used
    per_source: dict[str, Any] = {}
    rows_per_task = {t: 0 for t in TASKS}
    read = too_long = 0
    for i, name in enumerate(spec["names"]):
        end, truncated, in_rows, charged = by_src.get(i, (0, 0, 0, 0))
        task = spec["tasks"][i]
        filt = 0
        if task != "text" and spec["pack_paired"]:  # packed rows: the samples in them + those filtered on the way
            filt = charged + (plan.too_long_between or [0] * len(spec["names"]))[i]
            end = in_rows + filt
        elif task != "text":  # one sample per row: every earlier sample not in a row was too long
            filt = end - used[i]
        per_source[name] = {
            "task": task,
            "weight": spec["weights"][i],
            "samples": spec["samples"][i],
            "rows_available": plan.available[i],
            "rows": used[i],
            "samples_consumed": end,
            TOO_LONG: filt,
            f"{TOO_LONG}_total": spec["too_long_total"].get(i, 0),
            "captions_truncated": truncated,
        }
        rows_per_task[task] += used[i]
        read += end
        too_long += filt
    f = plan.filler
    if f is not None:
        per_source[spec["names"][f.source]]["filler_tokens"] = int(f.length.sum())
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
            **({"filler": {"source": spec["names"][f.source], "rows": int(f.rows.size), "tokens": int(f.length.sum()),
                           "rows_left_padded": f.unfilled}} if f is not None else {}),
        },
        layout=spec["layout"],
        seq_len=spec["seq_len"],
        config=spec["config"],
        run_id=spec["run_id"],
    )
    manifest.save(spec["out"])
    remove_stale(spec["out"], {s.name for s in shards}, set())
    if spec["run_id"]:
        DatasetLock(spec["out"], spec["run_id"]).release()
    return manifest




# ---- wiring -----------------------------------------------------------------------------------
@dataclass
class MixJob:
    """Everything the launcher resolved: what :func:`build_mix_pipeline` wires."""

    cfg: MixPipelineConfig
    sources: list[Source]
    layout: VocabLayout
    tokenizers: dict[str, TokenizerInfo]
    units: list[Unit]
    filler: int | None = None  # index of the filler text source (--pack-paired)

    def spec(self, run_id: str | None = None) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "names": [s.name for s in self.sources],
            "tasks": [s.task for s in self.sources],
            "weights": [s.weight for s in self.sources],
            "samples": [s.samples for s in self.sources],
            "stream_tokens": [s.stream_tokens if s.task == "text" else 0 for s in self.sources],
            "run_id": run_id,
            "rows": cfg.rows,
            "seed": cfg.seed,
            "seq_len": cfg.seq_len,
            "rows_per_shard": rows_per_shard(cfg.seq_len, cfg.target_shard_bytes),
            "pack_paired": cfg.pack_paired,
            "filler": self.filler,
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
                **({"pack_paired": True, "pack_lookahead": cfg.pack_lookahead,
                    "filler": None if self.filler is None else self.sources[self.filler].name} if cfg.pack_paired else {}),
            },
        }


def prepare_mix(cfg: MixPipelineConfig) -> MixJob:
    """Validate everything that can be checked from manifests alone (nothing is written)."""
    sources = load_sources(cfg.inputs, cfg.weights)
    tokenizers = tokenizers_of(sources)
    layout = VocabLayout.from_tokenizers(tokenizers, BlockDefaults(audio_shared_block=cfg.audio_shared_block))
    live = [s for s in sources if s.weight > 0]
    bound = sum(s.max_rows(cfg.seq_len) for s in live)
    if cfg.rows is not None and cfg.rows > bound:
        raise ValueError(f"--rows {cfg.rows} is more than the inputs can hold at seq_len {cfg.seq_len} (at most {bound})")
    if cfg.rows is None:
        empty = [s.name for s in live if s.max_rows(cfg.seq_len) == 0]
        if empty:
            raise ValueError(f"input(s) {empty} give no row at seq_len {cfg.seq_len}: the mix would be empty")
    units = make_units(sources, max(1, int(cfg.group_bytes)))
    filler = filler_source(sources, cfg.filler) if cfg.pack_paired else None
    return MixJob(cfg, sources, layout, tokenizers, units, filler)


def build_mix_pipeline(p: beam.Pipeline, job: MixJob, run_id: str | None = None) -> beam.PCollection:
    """Wire the mix job into ``p``; returns a PCollection holding the final Manifest."""
    spec = job.spec(run_id)
    L = job.cfg.seq_len
    packed = (
        p
        | "Units" >> beam.Create(job.units)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Pack" >> beam.ParDo(PackUnit(spec["layout"], L, "sha256" if job.cfg.verify_inputs else "xxh3",
                                        job.cfg.pack_paired, job.cfg.pack_lookahead)).with_outputs(
            FRAGMENT, STATS, main="rows")
    )
    stitched = (
        packed[FRAGMENT]
        | "GroupFragments" >> beam.GroupByKey()
        | "Stitch" >> beam.FlatMap(stitch, seq_len=L, task_text=job.layout.task_token("text"))
    )
    candidates = (packed.rows, stitched) | "Candidates" >> beam.Flatten()
    plan = (
        p
        | "PlanSeed" >> beam.Create([None])
        | "Plan" >> beam.Map(lambda _, stats: make_plan(stats, spec), stats=beam.pvalue.AsList(packed[STATS]))
    )
    too_long = (
        packed[STATS]
        | "TooLongPerSource" >> beam.Map(lambda s: (s[0], s[4]))
        | "SumTooLong" >> beam.CombinePerKey(sum)
    )
    assigned = candidates | "Assign" >> beam.FlatMap(_assign, plan=beam.pvalue.AsSingleton(plan), seq_len=L,
                                                     text_bos=job.layout.text.bos)
    consumed = assigned | "ConsumedKeys" >> beam.Map(_consumed) | "Consumed" >> beam.CombinePerKey(_merge_consumed)
    shards = (
        assigned
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards"
        >> beam.ParDo(
            WriteRows(spec["out"], L, job.layout.pad, job.layout.task_token("text"), spec["names"], spec["tasks"],
                      job.cfg.compression),
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
    return common.run(lambda p, run_id: build_mix_pipeline(p, job, run_id), cfg.out, beam_args or [], cfg.progress)


__all__ = [
    "MixPipelineConfig",
    "MixJob",
    "Plan",
    "Source",
    "Unit",
    "build_mix_pipeline",
    "load_sources",
    "plan_sources",
    "prepare_mix",
    "run_mix_pipeline",
]
