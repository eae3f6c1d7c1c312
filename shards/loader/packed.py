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
from trimodal.tokenizers.vocab import IMAGE, TASKS


class PackedStream:
    """Same interface as :class:`Stream` (``next_row``, ``count``, ``counters``, ``parts``,
    ``comp``, state).

    The packer's segments carry their make-up as tags (``(media positions, media modality)``),
    so a packed row's counters, modality and segment lengths come from the packer, not from a pass over the
    row; segments restored from a saved state carry none, and their rows are counted from the
    tokens (the same numbers). The filler is a numpy buffer with a read position."""

    def __init__(self, inner: Stream, lookahead: int = 8) -> None:
        self.inner = inner
        inner.segments_only = True
        ctx = inner.ctx
        self.packer = RowPacker(ctx.layout, ctx.config.seq_len, lookahead)
        self.text_sources = [i for i, s in enumerate(ctx.sources) if s.kind == "tokenized" and s.task == "text"]
        w = [ctx.sources[i].weight for i in self.text_sources]
        self._cum = np.cumsum(w).tolist() if self.text_sources and sum(w) > 0 else []
        self._fbuf = _EMPTY  # text stream tokens (after a row's TASK_text); those from _fpos on are unused
        self._fpos = 0
        self.counters = inner.counters
        self._init_counters()
        self._task_text = ctx.ids.task[0]
        self._last_source = 0
        self.parts: tuple[tuple[int, int, int], ...] | None = None
        self.comp: tuple[int, int, int, int] | None = None

    @property
    def ctx(self):
        return self.inner.ctx

    @property
    def filler(self) -> list[int]:
        """The unused filler tokens (what the state saves)."""
        return self._fbuf[self._fpos:].tolist()

    # -- filler
    def _text_tokens(self, n: int) -> np.ndarray | None:
        """``n`` text stream tokens from the text sources (None when they have run out)."""
        while self._fbuf.size - self._fpos < n:
            if not self._cum:
                return None
            u = self.inner._uniform()
            i = self.text_sources[min(bisect.bisect_right(self._cum, u * self._cum[-1]), len(self.text_sources) - 1)]
            row = self.inner._text_row(i)
            if row is None:
                return None
            # drop the row's TASK_text: the filler has its own
            self._fbuf = np.concatenate([self._fbuf[self._fpos:], row[0][1:]])
            self._fpos = 0
        out = self._fbuf[self._fpos : self._fpos + n]
        self._fpos += n
        return out

    def _fill(self, room: int) -> np.ndarray:
        body = self._text_tokens(room - 1)
        if body is None:
            raise _NoText
        self.counters["filler_tokens"] += room
        self.counters["segments_text"] += 1
        out = np.empty(room, dtype=np.int64)
        out[0] = self._task_text
        out[1:] = body
        return out

    def _pop(self) -> np.ndarray:
        try:
            tokens, _ = self.packer.pop(self._fill if self._cum else None)
        except _NoText:  # the text sources ran out (no cycling): pad the rest
            self._cum = []
            self.counters["text_tokens_dropped"] += self._fbuf.size - self._fpos
            self._fbuf, self._fpos = _EMPTY, 0
            tokens, _ = self.packer.pop(None)
        self.counters["packed_rows"] += 1
        lengths, placed = self.packer.lengths, self.packer.placed
        if None in placed:  # a segment restored from a state: counted and segmented from the tokens
            self.parts = self.comp = None
            return tokens
        image = audio = 0
        parts = []
        for n, (mp, mm) in zip(lengths, placed):
            parts.append((n, mp, mm))
            if mm == IMAGE:
                image += mp
            else:
                audio += mp
        if len(lengths) > len(placed):  # the text filler
            parts.append((lengths[-1], 0, 0))
        self.parts = tuple(parts)
        self.comp = (image, audio, len(lengths), tokens.size - sum(lengths))
        return tokens

    # -- rows
    def next_row(self) -> tuple[np.ndarray, int, int] | None:
        inner = self.inner
        while not self.packer.ready():
            out = inner.next_row()
            if out is None:
                if not self.packer.queue:
                    return None
                break
            tokens, task, source = out
            if task == 0 or self.ctx.sources[source].kind == "mixed":
                self.parts, self.comp = inner.parts, inner.comp
                return out
            _, mp, mm = inner.parts[0]
            self.packer.add(tokens, (mp, mm))
            self.counters[f"segments_{TASKS[task]}"] += 1
            self._last_source = source
        tokens = self._pop()
        task = int(tokens[0]) - self._task_text
        return tokens, task, self._last_source

    def count(self, tokens: np.ndarray, task: int, source: int, comp: tuple[int, int, int, int] | None) -> None:
        self.inner.count(tokens, task, source, comp)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {"packed": True, "stream": self.inner.state_dict(), "packer": self.packer.state_dict(),
                "filler": self.filler, "last_source": self._last_source}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if not d.get("packed"):
            raise ValueError("the saved loader state is of unpacked rows; data.pack_paired must match the saved run")
        self.inner.load_state_dict(d["stream"])
        self.packer.load_state_dict(d["packer"])
        self._fbuf = np.asarray([int(x) for x in d.get("filler", [])], dtype=np.int64)
        self._fpos = 0
        self._last_source = int(d.get("last_source", 0))
        self.counters = self.inner.counters
        self._init_counters()

    def _init_counters(self) -> None:
        for k in ("packed_rows", "filler_tokens", *(f"segments_{t}" for t in TASKS)):
            self.counters.setdefault(k, 0)


_EMPTY = np.zeros(0, dtype=np.int64)


class _NoText(Exception):
    pass
