"""Every record a pipeline reads ends as exactly one outcome: written, filtered or rejected.

A pipeline step is a small DoFn that emits good elements on its main output and bad ones on the
``filtered`` / ``rejected`` tagged outputs as :func:`dead_letter` dicts (record id, source,
reason, detail). Each outcome bumps a Beam counter (``<step>/<outcome>/<reason>``), so the
Dataflow UI shows them live; the manifest stores the totals, computed from the data itself.

Filtered = a valid record we chose not to keep (empty text, too short, too long).
Rejected = a record we could not process (undecodable bytes, bad JSON, missing field, corrupt
media). Both go to the dead-letter files with their reason; nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

FILTERED = "filtered"
REJECTED = "rejected"
NAMESPACE = "trimodal"


class Bad(Exception):
    """Raised inside a step to route the current record to the dead-letter."""

    def __init__(self, outcome: str, reason: str, detail: str = ""):
        super().__init__(f"{outcome}: {reason}: {detail}")
        self.outcome = outcome
        self.reason = reason
        self.detail = detail


def filtered(reason: str, detail: str = "") -> Bad:
    return Bad(FILTERED, reason, detail)


def rejected(reason: str, detail: str = "") -> Bad:
    return Bad(REJECTED, reason, detail)


def dead_letter(record_id: str, source: str, outcome: str, reason: str, stage: str, detail: str = "") -> dict[str, Any]:
    return {"id": record_id, "source": source, "outcome": outcome, "reason": reason, "stage": stage, "detail": detail[:500]}


def count(stage: str, outcome: str, reason: str = "", n: int = 1) -> None:
    name = f"{stage}/{outcome}" + (f"/{reason}" if reason else "")
    Metrics.counter(NAMESPACE, name).inc(n)


def bad_output(record: dict[str, Any], err: Bad, stage: str) -> pvalue.TaggedOutput:
    count(stage, err.outcome, err.reason)
    return pvalue.TaggedOutput(
        err.outcome, dead_letter(record.get("id", "?"), record.get("source", "?"), err.outcome, err.reason, stage, err.detail)
    )


class Step(beam.DoFn):
    """A one-record-in, at-most-one-out step; subclasses implement :meth:`apply`.

    ``apply`` returns the transformed record, or raises :class:`Bad`; any other exception is a
    bug and fails the job loudly rather than being swallowed into the dead-letter.
    """

    stage = "step"

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, record: dict[str, Any]):
        try:
            out = self.apply(record)
        except Bad as err:
            yield bad_output(record, err, self.stage)
            return
        count(self.stage, "ok")
        yield out


def run_step(pcoll: beam.PCollection, step: Step, label: str) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """Apply ``step``; returns (good, filtered, rejected)."""
    res = pcoll | label >> beam.ParDo(step).with_outputs(FILTERED, REJECTED, main="ok")
    return res.ok, res[FILTERED], res[REJECTED]
