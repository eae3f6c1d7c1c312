"""Pipeline steps and their counters: one record in, at most one out, every outcome counted.

A step is a small DoFn that emits good records on its main output and :class:`DeadLetter`\\ s on
the ``filtered`` / ``rejected`` tagged outputs. Each outcome bumps a Beam counter
(``<stage>/<outcome>/<reason>``) that the Dataflow UI shows live, and the local progress line
(:mod:`trimodal.pipelines.progress`); the manifest stores the totals, computed from the data.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from trimodal.pipelines import progress
from trimodal.pipelines.records import FILTERED, REJECTED, DeadLetter, Drop, Record

NAMESPACE = "trimodal"

__all__ = ["FILTERED", "REJECTED", "NAMESPACE", "Step", "count", "dead_letter", "run_step"]


def count(stage: str, outcome: str, reason: str = "", n: int = 1) -> None:
    name = f"{stage}/{outcome}" + (f"/{reason}" if reason else "")
    Metrics.counter(NAMESPACE, name).inc(n)
    if outcome in (FILTERED, REJECTED, "written", "read"):
        progress.bump(outcome, n)


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


def run_step(pcoll: beam.PCollection, step: Step, label: str) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """Apply ``step``; returns (good, filtered, rejected)."""
    res = pcoll | label >> beam.ParDo(step).with_outputs(FILTERED, REJECTED, main="ok")
    return res.ok, res[FILTERED], res[REJECTED]
