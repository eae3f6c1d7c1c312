"""What every tokenize pipeline shares: its config, the read → steps → sink frame, and the run.

A modality pipeline supplies a reader (file URL → records and dead letters) and a list of
steps; :func:`build` wires them with the counting and the shard sink, and :func:`run` executes
on whatever runner the Beam options name (DirectRunner by default): it takes the dataset's
writer lock first, shows a live count on local runs, and returns the new manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import progress
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, run_step
from trimodal.pipelines.records import DeadLetter, Record
from trimodal.pipelines.sink import SinkConfig, WriteDataset
from trimodal.shards.lock import DatasetLock
from trimodal.shards.manifest import MANIFEST_NAME, Manifest

DEFAULT_BEAM_ARGS = ["--runner=DirectRunner"]
READ_ERRORS = "read_errors"


def _mb(value: float) -> int:
    return int(round(float(value) * 1e6))


@dataclass
class PipelineConfig:
    """Options every tokenize pipeline takes (each pipeline's config adds its own)."""

    inputs: list[str] = option(default_factory=list, flag="input", help="input files, globs or brace ranges (fsspec URLs)")
    out: str = option("", help="dataset root to write (fsspec URL)")
    text_tokenizer: str = option("", help="SentencePiece .model, a .tiktoken file, or a tiktoken encoding name")
    source: str = option("", help="source name recorded per sample (default: the input file's stem)")
    target_shard_bytes: int = option(128 * 2**20, flag="shard-mb", convert=_mb, help="target shard size (flag in MB)")
    compression: Literal["none", "zstd"] = option("none", help="shard compression")
    val_fraction: float = option(0.0, help="share of records (by a hash of their id) written to the val split")
    max_record_bytes: int = option(256 * 2**20, help="one input record (JSON line, tar member, media file) at most")
    progress: bool = option(True, help="live count of records on local runs")

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not self.inputs:
            raise ValueError("--input is required: give at least one input file or pattern")
        if not self.out:
            raise ValueError("--out is required: the dataset root to write")
        if not self.text_tokenizer:
            raise ValueError("--text-tokenizer is required")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.target_shard_bytes is None or self.target_shard_bytes < 1:
            raise ValueError(f"target_shard_bytes must be positive, got {self.target_shard_bytes}")
        if self.compression not in ("none", "zstd"):
            raise ValueError(f"compression must be none or zstd, got {self.compression!r}")

    def recorded(self) -> dict[str, Any]:
        """What the manifest records of the config (not the inputs or the output)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("inputs", "out", "progress")}


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options pass through unchanged; only a missing ``--runner`` gets the DirectRunner
    (naming it avoids the Prism runner's binary download)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    return PipelineOptions(args)


class _ReadFile(beam.DoFn):
    """One input file → records (main output) and dead letters (``read_errors``)."""

    def __init__(self, read_file: Callable[[str], Iterator[Record | DeadLetter]]):
        self.read_file = read_file

    def process(self, url: bytes):
        # inputs travel as bytes: a local file name need not be valid UTF-8 (Beam's str coder
        # insists on it), and os.fsdecode gives back the exact name to open
        for x in self.read_file(url.decode("utf-8", "surrogateescape")):
            yield beam.pvalue.TaggedOutput(READ_ERRORS, x) if isinstance(x, DeadLetter) else x


def build(p: beam.Pipeline, inputs: list[str], read_file: Callable[[str], Iterator[Record | DeadLetter]],
          steps: Sequence[tuple[str, Step]], sink: SinkConfig,
          batch_step: tuple[str, beam.PTransform] | None = None) -> beam.PCollection:
    """read → steps → (batched tokenization) → shards + dead-letter + manifest."""
    read = (
        p
        | "Inputs" >> beam.Create([u.encode("utf-8", "surrogateescape") for u in inputs])
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadFile(read_file)).with_outputs(READ_ERRORS, main="ok")
    )
    good, dead = read.ok, [read[READ_ERRORS]]
    n_read = (good, read[READ_ERRORS]) | "AllRead" >> beam.Flatten() | "CountRead" >> beam.combiners.Count.Globally()
    good = good | "Rebalance" >> beam.Reshuffle()
    for label, step in steps:
        good, filt, rej = run_step(good, step, label)
        dead += [filt, rej]
    if batch_step is not None:
        label, transform = batch_step
        res = good | label >> transform
        good = res.ok
        dead += [res[FILTERED], res[REJECTED]]
    all_dead = dead | "AllDeadLetter" >> beam.Flatten()
    return (good, all_dead, n_read) | "WriteDataset" >> WriteDataset(sink)


def prepare_output(root: str) -> None:
    """A re-run first removes the old manifest: until the new one is written the root is
    incomplete, so no reader can pair an old manifest with new shards."""
    url = storage.join(root, MANIFEST_NAME)
    fs, path = storage.fs_and_path(url)
    if fs.exists(path):
        fs.rm(path)


def is_local_runner(options: PipelineOptions) -> bool:
    runner = str(options.get_all_options().get("runner") or "DirectRunner")
    return runner.split(".")[-1] in ("DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def run(build_fn: Callable[[beam.Pipeline, str], Any], root: str, beam_args: Sequence[str],
        show_progress: bool = True) -> Manifest | None:
    """Run the job; returns the new manifest, or None for a Dataflow ``--dry_run`` (the job graph
    is built and checked, nothing runs, and an existing dataset is left untouched).

    ``build_fn(p, run_id)`` wires the job. The dataset's writer lock is taken first (a second
    writer of the same root refuses at once) and released by the job's last step, after the
    manifest; a job that fails leaves it, naming its run, until the next run on the same host
    finds its process gone or someone removes it."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = pipeline_options(beam_args)
    dry_run = bool(options.get_all_options().get("dry_run"))
    if dry_run:
        with beam.Pipeline(options=options) as p:
            build_fn(p, "dry-run")
        return None
    lock = DatasetLock.acquire(root)
    try:
        prepare_output(root)
        with progress.report(show_progress and is_local_runner(options)):
            with beam.Pipeline(options=options) as p:
                build_fn(p, lock.run_id)
    except BaseException:
        if is_local_runner(options):
            lock.release()  # the local job is over: nothing else writes under this lock
        raise
    lock.release()  # normally released by the job's last step already; idempotent
    return Manifest.load(root)


def summary(manifest: Manifest, root: str) -> str:
    c = manifest.counts
    if manifest.kind == "mixed":  # rows, not samples: read != written + filtered + rejected
        lines = [
            f"wrote {c['written']} rows of {manifest.seq_len} tokens in {len(manifest.shards)} shards to {root}",
            f"  read {c['read']} input samples; filtered {sum(c['filtered'].values())}"
            + (f"; stopped: {c['stopped']}" if c.get("stopped") else ""),
        ]
        for name, s in (c.get("sources") or {}).items():
            lines.append(f"  {name} ({s.get('task', s.get('modality'))}, weight {s['weight']:.3g}): {s['rows']} of {s['rows_available']} rows, "
                         f"{s['samples_consumed']} of {s['samples']} samples")
        for reason, n in c["filtered"].items():
            lines.append(f"  filtered {reason}: {n}")
        return "\n".join(lines)
    filt = sum(c["filtered"].values())
    rej = sum(c["rejected"].values())
    lines = [
        f"wrote {c['written']} samples in {len(manifest.shards)} shards to {root}",
        f"  read {c['read']} = written {c['written']} + filtered {filt} + rejected {rej}",
        f"  tokens: {manifest.tokens()}",
    ]
    splits = manifest.splits()
    if len(splits) > 1 or splits == ["val"]:
        lines.append("  splits: " + ", ".join(f"{s} {sum(x.samples for x in manifest.split_shards(s))} samples"
                                              for s in splits))
    for outcome in ("filtered", "rejected"):
        for reason, n in c[outcome].items():
            lines.append(f"  {outcome} {reason}: {n}")
    if manifest.dead_letter:
        lines.append(f"  dead-letter records: {storage.join(root, manifest.dead_letter)}/")
    return "\n".join(lines)
