"""The two things that flow through a pipeline: a :class:`Record` on its way to a sample, and a
:class:`DeadLetter` saying why a record was not written.

Every record a pipeline reads ends as exactly one outcome: written, filtered or rejected.
*Filtered* is a valid record we chose not to keep (empty text, too short, too long); *rejected*
is one we could not process (undecodable bytes, bad JSON, a missing field, corrupt media). Both
become dead letters with their reason; nothing is dropped silently. A step says a record is out
by raising :class:`Drop` (made by :func:`filtered` / :func:`rejected`).

Ids are kept printable: a name that is not valid UTF-8 (a tar member, a file on disk) is kept
with its undecodable bytes escaped (``\\xff``), so it can be written to the shards and the
dead-letter files like any other id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FILTERED = "filtered"
REJECTED = "rejected"


def safe_text(s: str) -> str:
    """``s`` with lone surrogates (from undecodable bytes) escaped, so it encodes as UTF-8."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_json(x: Any) -> Any:
    """``x`` (dicts, lists, strings) with every string made encodable (see :func:`safe_text`)."""
    if isinstance(x, str):
        return safe_text(x)
    if isinstance(x, dict):
        return {safe_text(str(k)): safe_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [safe_json(v) for v in x]
    return x


@dataclass
class Record:
    """One input record. Readers fill ``id``, ``source``, ``text`` (the document, caption or
    transcript), ``media`` (image/audio bytes) or ``media_url`` (read later, on a worker) and
    ``provenance``; the steps then add their products (``text_ids``, ``pixels``, ``wav``)."""

    id: str
    source: str
    text: str = ""
    media: bytes | None = None
    media_url: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    text_ids: np.ndarray | None = None
    pixels: np.ndarray | None = None
    wav: np.ndarray | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        self.id, self.source = safe_text(self.id), safe_text(self.source)


@dataclass(frozen=True)
class DeadLetter:
    """Why one record was not written: ``outcome`` (filtered/rejected), a short stable ``reason``,
    the ``stage`` that said so and a human ``detail``."""

    id: str
    source: str
    outcome: str
    reason: str
    stage: str
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", safe_text(self.id))
        object.__setattr__(self, "source", safe_text(self.source))
        object.__setattr__(self, "detail", safe_text(self.detail)[:500])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Drop(Exception):
    """Raised inside a step to route the current record to the dead-letter output."""

    def __init__(self, outcome: str, reason: str, detail: str = ""):
        super().__init__(f"{outcome}: {reason}: {detail}")
        self.outcome, self.reason, self.detail = outcome, reason, detail


def filtered(reason: str, detail: str = "") -> Drop:
    return Drop(FILTERED, reason, detail)


def rejected(reason: str, detail: str = "") -> Drop:
    return Drop(REJECTED, reason, detail)
