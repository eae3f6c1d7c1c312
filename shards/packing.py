"""Packed rows: several samples share one row of length L instead of one sample and padding.

An image-text sample at the paper's L = 3,256 is ~1,100 positions and the rest of its row is
PAD (60–65 %): positions that cost the full matmuls and carry nothing. Packing puts several
*segments* in a row; each segment is exactly what a sample's own unpadded row would be
(``[TASK_m, BOS_m, media…, EOS_m, BOS_text, text…, EOS_text]``, or ``[TASK_text, text stream…]``),
so a segment starts at its task token and segment ids follow from the tokens alone
(:func:`segment_ids`). Attention is block-diagonal over segments, RoPE positions restart at
each segment and t is drawn once per segment: the loss of a packed row is exactly the loss of
its samples unpacked (``docs/vocabulary.md``).

:class:`RowPacker` is the packing decision, a pure function of the order samples arrive in: it
keeps a small look-ahead of pending segments, places them first-fit, and fills what room is left
with a text segment when a text stream is available (so PAD stays near zero), else pads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from trimodal.shards.rows import layout_ids
from trimodal.tokenizers.vocab import VocabLayout

MIN_FILL = 8  # a text filler shorter than this is not worth a segment: the room stays PAD


def segment_ids(tokens: np.ndarray, valid: np.ndarray, layout: VocabLayout, documents: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(segments, positions)`` int64 [L] of one row: a new segment at every task token (and,
    with ``documents``, at every ``BOS_text`` inside a text segment: per-document attention);
    PAD positions get segment −1 and position 0. Positions count from 0 within each segment."""
    ids = layout_ids(layout)
    tokens = np.asarray(tokens)
    starts = (tokens >= ids.task[0]) & (tokens <= ids.task[-1])
    if documents:
        idx = np.arange(tokens.size)
        last_task = np.maximum.accumulate(np.where(starts, idx, 0))  # position of the segment's task token
        in_text = tokens[last_task] == ids.task[0]
        after_task = np.zeros_like(starts)
        after_task[1:] = starts[:-1]
        starts = starts | ((tokens == ids.text_bos) & in_text & ~after_task)
    starts[0] = True
    # a row holds few segments: expand their start positions rather than scanning the row again
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, tokens.size))
    seg = np.repeat(np.arange(first.size, dtype=np.int64), lengths)
    pos = np.arange(tokens.size, dtype=np.int64) - np.repeat(first, lengths)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != tokens.shape:
        raise ValueError(f"valid has shape {valid.shape}, tokens {tokens.shape}")
    if valid.all():
        return seg, pos
    return np.where(valid, seg, -1), np.where(valid, pos, 0)


def segments_from_lengths(lengths: tuple[int, ...] | list[int], segments: np.ndarray, positions: np.ndarray) -> None:
    """Write what :func:`segment_ids` finds into ``segments``/``positions`` (int64 [L]) from the
    lengths of a row's segments, which the packer knows (no pass over the tokens): segment k
    over its positions counted from 0, then PAD (segment −1, position 0)."""
    a = 0
    ramp = _ramp(segments.size)
    for k, n in enumerate(lengths):
        segments[a : a + n] = k
        positions[a : a + n] = ramp[:n]
        a += n
    segments[a:] = -1
    positions[a:] = 0


_RAMPS: dict[int, np.ndarray] = {}


def _ramp(n: int) -> np.ndarray:
    r = _RAMPS.get(n)
    if r is None:
        r = _RAMPS[n] = np.arange(n, dtype=np.int64)
        r.setflags(write=False)
    return r


class RowPacker:
    """Packs segments (1-D int64 global ids, each ≤ L) into rows of exactly ``seq_len``.

    ``add`` queues a segment; ``ready()`` is true once the queue holds a row's worth (or
    ``lookahead`` segments); ``pop(filler)`` builds a row: queued segments first-fit in arrival
    order, then, if ``filler`` is given and at least ``MIN_FILL`` positions remain, one text
    segment ``filler(room)`` of exactly that length, then PAD. Returns ``(tokens, valid)``.
    The state is the queue: ``state_dict() == {"queue": [[ids…], …]}``.

    ``add(segment, tag)`` may tag a segment (the mix job tags each with its input sample key);
    after ``pop``, ``placed`` holds the tags of the segments that went into the row, in row
    order, and ``lengths`` the lengths of the row's segments (the filler's last), from which
    :func:`segments_from_lengths` writes what :func:`segment_ids` would find. Tags are
    bookkeeping for the caller and are not part of the state."""

    def __init__(self, layout: VocabLayout, seq_len: int, lookahead: int = 8) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        self.seq_len, self.lookahead = int(seq_len), int(lookahead)
        self.pad = layout.pad
        self.queue: list[np.ndarray] = []
        self.tags: list[Any] = []
        self.placed: list[Any] = []
        self.lengths: list[int] = []

    @property
    def queued(self) -> int:
        return sum(s.size for s in self.queue)

    def add(self, segment: np.ndarray, tag: Any = None) -> None:
        if type(segment) is not np.ndarray or segment.dtype != np.int64 or segment.ndim != 1:
            segment = np.asarray(segment, dtype=np.int64).reshape(-1)
        if not 0 < segment.size <= self.seq_len:
            raise ValueError(f"a segment of {segment.size} positions does not fit a row of {self.seq_len}")
        self.queue.append(segment)
        self.tags.append(tag)

    def ready(self) -> bool:
        return self.queued >= self.seq_len or len(self.queue) >= self.lookahead

    def pop(self, filler: Callable[[int], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        tokens = np.full(L, self.pad, dtype=np.int64)
        used, kept, kept_tags, placed, lengths = 0, [], [], [], []
        tags = self.tags if len(self.tags) == len(self.queue) else [None] * len(self.queue)
        for seg, tag in zip(self.queue, tags):
            if used + seg.size <= L:
                tokens[used : used + seg.size] = seg
                used += seg.size
                placed.append(tag)
                lengths.append(seg.size)
            else:
                kept.append(seg)
                kept_tags.append(tag)
        if used == 0 and kept:  # cannot happen (every segment fits an empty row); kept as a guard
            raise AssertionError("no queued segment fits an empty row")
        if filler is not None and L - used >= MIN_FILL:
            fill = np.asarray(filler(L - used), dtype=np.int64)  # may raise: the queue is not touched yet
            if fill.size != L - used:
                raise ValueError(f"filler gave {fill.size} positions for {L - used}")
            tokens[used:] = fill
            lengths.append(L - used)
            used = L
        self.queue, self.tags, self.placed, self.lengths = kept, kept_tags, placed, lengths
        valid = np.zeros(L, dtype=bool)
        valid[:used] = True
        return tokens, valid

    def state_dict(self) -> dict[str, Any]:
        return {"queue": [s.tolist() for s in self.queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [np.asarray(s, dtype=np.int64) for s in state.get("queue", [])]
        self.tags = [None] * len(self.queue)


def pad_share_packed(lengths: np.ndarray, seq_len: int, text_available: bool, lookahead: int = 8,
                     seed: int = 0) -> tuple[int, int]:
    """(PAD positions, row slots) of packing paired samples of the given row lengths in a seeded
    random order with :class:`RowPacker` (what ``shards stats --packed`` reports; text rows are
    full and add slots without PAD, the caller counts them)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(lengths.size)
    queue: list[int] = []
    pad = slots = 0

    def pop() -> None:
        nonlocal pad, slots, queue
        used, kept = 0, []
        for n in queue:
            if used + n <= seq_len:
                used += n
            else:
                kept.append(n)
        queue = kept
        if text_available and seq_len - used >= MIN_FILL:
            used = seq_len
        pad += seq_len - used
        slots += seq_len

    for i in order.tolist():
        queue.append(int(min(lengths[i], seq_len)))
        if sum(queue) >= seq_len or len(queue) >= lookahead:
            pop()
    while queue:
        pop()
    return pad, slots
