"""A logical stream whose paired samples share rows (``data.pack_paired``).

It wraps a :class:`~trimodal.shards.loader.stream.Stream` and keeps its draws: the stream still
decides, row by row, which source comes next, so the mixture of samples is exactly the unpacked
one. Text rows pass through (they are full already). A paired row's samples become segments (the
row without its PAD tail) of a :class:`~trimodal.shards.packing.RowPacker`, which emits a packed
row once it holds a row's worth; the room it cannot fill with paired segments is filled with a
text segment (``[TASK_text, text stream…]``, from a text source chosen by weight) when the run
has text, so PAD stays near zero. The filler consumes the text sources' streams: the text share
of positions grows by at most the padding it replaces; no token is dropped or repeated.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from trimodal.shards.loader.stream import Stream
from trimodal.shards.packing import RowPacker
from trimodal.tokenizers.vocab import TASKS


class PackedStream:
    """Same interface as :class:`Stream` (``next_row``, ``count``, ``counters``, state)."""

    def __init__(self, inner: Stream, lookahead: int = 8) -> None:
        self.inner = inner
        ctx = inner.ctx
        self.packer = RowPacker(ctx.layout, ctx.config.seq_len, lookahead)
        self.text_sources = [i for i, s in enumerate(ctx.sources) if s.kind == "tokenized" and s.task == "text"]
        w = [ctx.sources[i].weight for i in self.text_sources]
        self._cum = np.cumsum(w).tolist() if self.text_sources and sum(w) > 0 else []
        self.filler: list[int] = []  # text stream tokens (after a row's TASK_text) not yet used
        self.counters = inner.counters
        self._init_counters()
        self._task_text = ctx.ids.task[0]
        self._last_source = 0

    @property
    def ctx(self):
        return self.inner.ctx

    # -- filler
    def _text_tokens(self, n: int) -> np.ndarray | None:
        """``n`` text stream tokens from the text sources (None when they have run out)."""
        while len(self.filler) < n:
            if not self._cum:
                return None
            u = self.inner._uniform()
            i = self.text_sources[min(bisect.bisect_right(self._cum, u * self._cum[-1]), len(self.text_sources) - 1)]
            row = self.inner._text_row(i)
            if row is None:
                return None
            self.filler.extend(row[0][1:].tolist())  # drop the row's TASK_text: the filler has its own
        out = np.asarray(self.filler[:n], dtype=np.int64)
        del self.filler[:n]
        return out

    def _fill(self, room: int) -> np.ndarray:
        body = self._text_tokens(room - 1)
        if body is None:
            raise _NoText
        self.counters["filler_tokens"] += room
        self.counters["segments_text"] += 1
        return np.concatenate([[self._task_text], body])

    def _pop(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            tokens, valid = self.packer.pop(self._fill if self._cum else None)
        except _NoText:  # the text sources ran out (no cycling): pad the rest
            self._cum = []
            self.counters["text_tokens_dropped"] += len(self.filler)
            self.filler = []
            tokens, valid = self.packer.pop(None)
        self.counters["packed_rows"] += 1
        return tokens, valid

    # -- rows
    def next_row(self) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        while not self.packer.ready():
            out = self.inner.next_row()
            if out is None:
                if not self.packer.queue:
                    return None
                break
            tokens, valid, task, source = out
            src = self.ctx.sources[source]
            if task == 0 or src.kind == "mixed":
                return out
            n = int(np.count_nonzero(valid))
            self.packer.add(tokens[:n])
            self.counters[f"segments_{TASKS[task]}"] += 1
            self._last_source = source
        tokens, valid = self._pop()
        task = int(tokens[0]) - self._task_text
        return tokens, valid, task, self._last_source

    def count(self, valid: np.ndarray, modality: np.ndarray, task: int, source: int) -> None:
        self.inner.count(valid, modality, task, source)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {"packed": True, "stream": self.inner.state_dict(), "packer": self.packer.state_dict(),
                "filler": list(self.filler), "last_source": self._last_source}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if not d.get("packed"):
            raise ValueError("the saved loader state is of unpacked rows; data.pack_paired must match the saved run")
        self.inner.load_state_dict(d["stream"])
        self.packer.load_state_dict(d["packer"])
        self.filler = [int(x) for x in d.get("filler", [])]
        self._last_source = int(d.get("last_source", 0))
        self.counters = self.inner.counters
        self._init_counters()

    def _init_counters(self) -> None:
        for k in ("packed_rows", "filler_tokens", *(f"segments_{t}" for t in TASKS)):
            self.counters.setdefault(k, 0)


class _NoText(Exception):
    pass
