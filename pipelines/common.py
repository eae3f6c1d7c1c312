"""What every tokenize pipeline shares: options, input expansion, the read → … → sink frame.

A modality pipeline supplies a reader (file URL → records or dead-letter dicts) and a list of
steps; :func:`build` wires them with the counting and the shard sink, and :func:`run` executes
on whatever runner the Beam options name (DirectRunner by default) and prints a summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, run_step
from trimodal.pipelines.sink import SinkConfig, WriteDataset
from trimodal.shards import storage
from trimodal.shards.manifest import MANIFEST_NAME, Manifest

DEFAULT_BEAM_ARGS = ["--runner=DirectRunner"]


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options pass through unchanged; only a missing ``--runner`` gets the DirectRunner
    (naming it avoids the Prism runner's binary download)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    return PipelineOptions(args)


def is_dead(x: dict[str, Any]) -> bool:
    return "outcome" in x and "reason" in x and "stage" in x


READ_ERRORS = "read_errors"


class _ReadFile(beam.DoFn):
    """One input file → records (main output) and dead-letter dicts (``read_errors``)."""

    def __init__(self, read_file: Callable[[str], Iterator[dict[str, Any]]]):
        self.read_file = read_file

    def process(self, url: str):
        for x in self.read_file(url):
            yield beam.pvalue.TaggedOutput(READ_ERRORS, x) if is_dead(x) else x


def build(
    p: beam.Pipeline,
    inputs: list[str],
    read_file: Callable[[str], Iterator[dict[str, Any]]],
    steps: Sequence[tuple[str, Step]],
    sink: SinkConfig,
    batch_step: tuple[str, beam.PTransform] | None = None,
) -> beam.PCollection:
    """read → steps → (batched tokenization) → shards + dead-letter + manifest."""
    read = (
        p
        | "Inputs" >> beam.Create(inputs)
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


def run(build_fn: Callable[[beam.Pipeline], Any], root: str, beam_args: Sequence[str]) -> Manifest | None:
    """Run the job; returns the new manifest, or None for a Dataflow ``--dry_run`` (the job
    graph is built and checked, nothing runs, and an existing dataset is left untouched)."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = pipeline_options(beam_args)
    dry_run = bool(options.get_all_options().get("dry_run"))
    if not dry_run:
        prepare_output(root)
    with beam.Pipeline(options=options) as p:
        build_fn(p)
    return None if dry_run else Manifest.load(root)


def summary(manifest: Manifest, root: str) -> str:
    c = manifest.counts
    if manifest.kind == "mixed":  # rows, not samples: read != written + filtered + rejected
        lines = [
            f"wrote {c['written']} rows of {manifest.seq_len} tokens in {len(manifest.shards)} shards to {root}",
            f"  read {c['read']} input samples; filtered {sum(c['filtered'].values())}"
            + (f"; stopped: {c['stopped']}" if c.get("stopped") else ""),
        ]
        for name, s in (c.get("sources") or {}).items():
            lines.append(
                f"  {name} ({s['modality']}, weight {s['weight']:.3g}): {s['rows']} of {s['rows_available']} rows, "
                f"{s['samples_consumed']} of {s['samples']} samples"
            )
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
    for outcome in ("filtered", "rejected"):
        for reason, n in c[outcome].items():
            lines.append(f"  {outcome} {reason}: {n}")
    if manifest.dead_letter:
        lines.append(f"  dead-letter records: {storage.join(root, manifest.dead_letter)}/")
    return "\n".join(lines)
