"""Pipeline steps and their counters: one record in, at most one out, every outcome counted.

A step is a small DoFn that emits good records on its main output and :class:`DeadLetter`\\ s on
the ``filtered`` / ``rejected`` tagged outputs; a :class:`BatchStep` does the same for a whole
batch of records at once, counting through a :class:`Tally`. Each outcome bumps a Beam counter
(``<stage>/<outcome>/<reason>``) that the Dataflow UI shows live, and the local progress line
(:mod:`trimodal.pipelines.progress`); the manifest stores the totals, computed from the data.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from trimodal.pipelines import progress
from trimodal.pipelines.records import FILTERED, REJECTED, DeadLetter, Drop, Record

NAMESPACE = "trimodal"

__all__ = ["FILTERED", "REJECTED", "NAMESPACE", "BatchStep", "Step", "Tally", "count", "dead_letter", "run_step"]


def count(stage: str, outcome: str, reason: str = "", n: int = 1) -> None:
    name = f"{stage}/{outcome}" + (f"/{reason}" if reason else "")
    Metrics.counter(NAMESPACE, name).inc(n)
    if outcome in (FILTERED, REJECTED, "written", "read"):
        progress.bump(outcome, n)


class Tally:
    """Counts of one batch, flushed as one increment per counter: the same totals as one
    :func:`count` per record, whose cost (~3 µs) is a real share of the work on a short document."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def add(self, stage: str, outcome: str, reason: str = "", n: int = 1) -> None:
        if n:
            key = (stage, outcome, reason)
            self.counts[key] = self.counts.get(key, 0) + n

    def dead(self, record: Record, err: Drop, stage: str) -> DeadLetter:
        """The dead letter of ``record`` (counted, like :func:`dead_letter`)."""
        self.add(stage, err.outcome, err.reason)
        return DeadLetter(record.id, record.source, err.outcome, err.reason, stage, err.detail)

    def flush(self) -> None:
        for (stage, outcome, reason), n in self.counts.items():
            count(stage, outcome, reason, n)
        self.counts.clear()


def dead_letter(record: Record, err: Drop, stage: str) -> pvalue.TaggedOutput:
    count(stage, err.outcome, err.reason)
    return pvalue.TaggedOutput(err.outcome, DeadLetter(record.id, record.source, err.outcome, err.reason, stage, err.detail))


class Step(beam.DoFn):
    """A one-record-in, at-most-one-out step; subclasses implement :meth:`apply`.

    ``apply`` returns the transformed record, or raises :class:`Drop`; any other exception is a
    bug and fails the job loudly rather than being swallowed into the dead-letter."""

    stage = "step"

    def apply(self, record: Record) -> Record:
        raise NotImplementedError

    def process(self, record: Record):
        try:
            out = self.apply(record)
        except Drop as err:
            yield dead_letter(record, err, self.stage)
            return
        count(self.stage, "ok")
        yield out


class BatchStep(beam.DoFn):
    """A batch of records in, finished samples and dead letters out; subclasses implement
    :meth:`apply_batch` (one tokenizer call per batch instead of per-record work in Beam).

    In a Beam graph, ``process`` emits each sample on the main output and each dead letter on its
    ``filtered`` / ``rejected`` output; a local run calls :meth:`apply_batch` directly from the
    step that spills to disk (:mod:`trimodal.pipelines.common`). Counters as with :class:`Step`."""

    stage = "step"

    def apply_batch(self, records: list[Record], tally: Tally) -> tuple[list[Any], list[DeadLetter]]:
        raise NotImplementedError

    def begin(self, records: list[Record], tally: Tally) -> Any:
        """Start a batch, :meth:`end` finishes it: a caller may prepare the next batch in between.
        A step with work that runs off the GIL (an encode in C++) overrides both to start that work
        here, in the background; the default does everything in :meth:`end`."""
        return records

    def end(self, state: Any, tally: Tally) -> tuple[list[Any], list[DeadLetter]]:
        return self.apply_batch(state, tally)

    def process(self, batch: list[Record]):
        tally = Tally()
        samples, dead = self.apply_batch(batch, tally)
        tally.flush()
        for d in dead:
            yield pvalue.TaggedOutput(d.outcome, d)
        yield from samples


def run_step(pcoll: beam.PCollection, step: Step, label: str) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """Apply ``step``; returns (good, filtered, rejected)."""
    res = pcoll | label >> beam.ParDo(step).with_outputs(FILTERED, REJECTED, main="ok")
    return res.ok, res[FILTERED], res[REJECTED]
