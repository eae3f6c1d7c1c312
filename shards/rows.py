"""Row assembly: modality-local codes in, fixed-length rows of global ids out (``docs/vocabulary.md``).

The one owner of the row framing: what a row costs in positions (:func:`paired_length`,
:func:`text_rows`) is read from here by the loader, the mix job, stats and the sampler.

Pure numpy, no I/O, no torch except in :func:`row_dict`. Every function works on whole arrays
(slices and concatenation), never per token, because the loader calls it once per row.

Row layouts, with L the sequence length:

- paired (image-text, audio-text): ``[TASK_m, BOS_m, media…, EOS_m, BOS_text, text…, EOS_text,
  PAD…]`` — media first, text second [paper]; PAD positions are ``valid == False``.
  :func:`paired_row` builds one; a row that does not fit loses the tail of its *text* (the text
  keeps its BOS/EOS framing); media are never cut, so a sample whose media framing alone
  (``len(media) + 5`` positions) exceeds L raises :class:`RowTooLong` and the loader skips it.
- text-only: documents packed to exactly L, no padding [paper]. :class:`TextPacker` frames each
  document as ``BOS_text doc… EOS_text``, concatenates the framed documents into one token
  stream and cuts rows of L-1 stream tokens, each row opened by ``TASK_text``.
"""

from __future__ import annotations

from functools import lru_cache
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from trimodal.tokenizers.vocab import AUDIO, TASK_MEDIA, TASKS, VocabLayout


PAIRED_FRAMING = 5  # TASK_m, BOS_m, EOS_m, BOS_text, EOS_text around a paired sample
DOC_FRAMING = 2  # BOS_text, EOS_text around each packed text document
ROW_OPENER = 1  # TASK_text at the start of every packed text row


def paired_length(media: int, text: int) -> int:
    """Positions a paired sample takes before padding: ``media + text + 5``."""
    return media + text + PAIRED_FRAMING


def paired_media_fits(media: int, seq_len: int) -> bool:
    """Whether a sample's media (with its framing and an empty text) fit a row of ``seq_len``."""
    return paired_length(media, 0) <= seq_len


def text_rows(framed_tokens: int, seq_len: int) -> int:
    """Packed text rows needed for ``framed_tokens`` stream tokens (documents incl. their
    BOS/EOS): each row holds ``seq_len - 1`` of them after its TASK_text."""
    return -(-framed_tokens // (seq_len - ROW_OPENER))


def framed_tokens(text_tokens: int, documents: int) -> int:
    """Length of the packed text stream of ``documents`` documents holding ``text_tokens``."""
    return text_tokens + DOC_FRAMING * documents


class RowTooLong(ValueError):
    """The media of a paired sample (with its framing) does not fit in one row."""


class _Ids(NamedTuple):
    """Special ids of a layout, computed once (the layout's block properties are not cached)."""

    text_offset: int
    text_codes: int
    text_bos: int
    text_eos: int
    pad: int
    task: tuple[int, int, int]
    media_bos: dict[str, int]
    media_eos: dict[str, int]
    image_offset: int
    image_codes: int
    modality_lut: np.ndarray  # global id -> modality, int64


@lru_cache(maxsize=16)
def layout_ids(layout: VocabLayout) -> _Ids:
    blocks = layout.blocks
    lut = layout.modality_of(np.arange(layout.vocab_size)).astype(np.int64)
    lut.setflags(write=False)
    return _Ids(
        text_offset=layout.text.offset,
        text_codes=layout.text.codes,
        text_bos=layout.text.bos,
        text_eos=layout.text.eos,
        pad=layout.pad,
        task=tuple(layout.task_token(t) for t in TASKS),
        media_bos={t: blocks[TASK_MEDIA[t]].bos for t in TASKS},
        media_eos={t: blocks[TASK_MEDIA[t]].eos for t in TASKS},
        image_offset=layout.image.offset,
        image_codes=layout.image.codes,
        modality_lut=lut,
    )


def text_to_global(ids: _Ids, local: np.ndarray) -> np.ndarray:
    """SentencePiece ids → global int64 ids, range-checked (what ``layout.to_global(TEXT, …)`` does)."""
    local = np.asarray(local).reshape(-1)
    if local.size:
        if (local.dtype.kind != "u" and local.min() < 0) or local.max() >= ids.text_codes:
            raise ValueError(f"text code out of range [0, {ids.text_codes})")
    return local.astype(np.int64) + ids.text_offset


def _task_index(task: str | int) -> int:
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return TASKS.index(task)
    task = int(task)
    if not 0 <= task < len(TASKS):
        raise ValueError(f"task index {task} outside [0, {len(TASKS)})")
    return task


def paired_row(
    layout: VocabLayout,
    task: str,
    media_ids_global: np.ndarray,
    text_ids_local: np.ndarray,
    seq_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One paired row ``[TASK_m, BOS_m, media…, EOS_m, BOS_text, text…, EOS_text, PAD…]``.

    ``task`` is ``"image_text"`` or ``"audio_text"``; ``media_ids_global`` are global ids (from
    :meth:`VocabLayout.to_global`, audio already flattened frame-major); ``text_ids_local`` are
    SentencePiece ids (range-checked here). Returns ``(tokens int64[L], valid bool[L])``.
    Text that does not fit is truncated (its EOS_text is kept); media that do not fit raise
    :class:`RowTooLong`.
    """
    if task not in ("image_text", "audio_text"):
        raise ValueError(f"paired rows are for tasks image_text/audio_text, got {task!r}")
    ids = layout_ids(layout)
    media = np.asarray(media_ids_global).reshape(-1)
    text = text_to_global(ids, text_ids_local)
    m = media.size
    media_end = 3 + m  # TASK, BOS_m, media, EOS_m
    room = seq_len - paired_length(m, 0)  # text tokens that fit between BOS_text and EOS_text
    if room < 0:
        raise RowTooLong(f"{task} sample with {m} media tokens needs {paired_length(m, 0)} positions, row has {seq_len}")
    t = min(text.size, room)
    used = media_end + t + 2
    tokens = np.empty(seq_len, dtype=np.int64)
    tokens[0] = ids.task[TASKS.index(task)]
    tokens[1] = ids.media_bos[task]
    tokens[2 : media_end - 1] = media
    tokens[media_end - 1] = ids.media_eos[task]
    tokens[media_end] = ids.text_bos
    tokens[media_end + 1 : media_end + 1 + t] = text[:t]
    tokens[used - 1] = ids.text_eos
    tokens[used:] = ids.pad
    valid = np.zeros(seq_len, dtype=bool)
    valid[:used] = True
    return tokens, valid


class TextPacker:
    """Packs text documents into rows of exactly ``seq_len`` ids, no padding.

    Documents are framed ``BOS_text doc… EOS_text`` and concatenated into one stream; each row
    is ``TASK_text`` followed by the next ``seq_len - 1`` stream tokens, so a row looks like
    ``[TASK_text, BOS_text, doc…, EOS_text, BOS_text, doc2…]``.

    **Documents that do not fit continue in the next row**: that row starts with ``TASK_text``
    and then the document's remaining tokens (no second BOS_text; the document's EOS_text comes
    where the document really ends). Nothing is dropped or padded, so every document token is
    seen exactly once, in order. Attention is *not* masked per document (the paper leaves it
    open): a row attends across document boundaries, which BOS/EOS mark.

    The state is the pending (already framed, global-id) tokens not yet emitted, at most one
    row plus the last document fed: ``state_dict() == {"pending": [int, ...]}``.
    """

    def __init__(self, layout: VocabLayout, seq_len: int) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 for text rows, got {seq_len}")
        self.layout = layout
        self.seq_len = int(seq_len)
        self._ids = layout_ids(layout)
        self._task = self._ids.task[0]
        self._bos = self._ids.text_bos
        self._eos = self._ids.text_eos
        self._chunks: list[np.ndarray] = []  # framed global ids, int64
        self._n = 0

    @property
    def pending(self) -> int:
        """Tokens fed but not yet emitted."""
        return self._n

    def ready(self) -> bool:
        """Whether :meth:`pop` can emit a full row."""
        return self._n >= self.seq_len - 1

    def add(self, text_ids_local: np.ndarray) -> None:
        """Feed one document (SentencePiece ids, 1-D)."""
        doc = text_to_global(self._ids, text_ids_local)
        framed = np.empty(doc.size + 2, dtype=np.int64)
        framed[0] = self._bos
        framed[1:-1] = doc
        framed[-1] = self._eos
        self._chunks.append(framed)
        self._n += framed.size

    def pop(self) -> np.ndarray:
        """The next row, int64[seq_len]; raises ``ValueError`` when not :meth:`ready`."""
        need = self.seq_len - 1
        if self._n < need:
            raise ValueError(f"TextPacker has {self._n} pending tokens, a row needs {need}")
        row = np.empty(self.seq_len, dtype=np.int64)
        row[0] = self._task
        pos = 1
        chunks = self._chunks
        i = 0
        while need:
            c = chunks[i]
            if c.size <= need:
                row[pos : pos + c.size] = c
                pos += c.size
                need -= c.size
                i += 1
            else:
                row[pos:] = c[:need]
                chunks[i] = c[need:]
                need = 0
        del chunks[:i]
        self._n -= self.seq_len - 1
        return row

    def rows(self, documents: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Feed documents one by one, yielding each row as soon as it is full."""
        for doc in documents:
            self.add(doc)
            while self.ready():
                yield self.pop()

    def clear(self) -> int:
        """Drop the pending tokens; returns how many were dropped."""
        n = self._n
        self._chunks = []
        self._n = 0
        return n

    def state_dict(self) -> dict[str, Any]:
        if not self._chunks:
            return {"pending": []}
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return {"pending": self._chunks[0].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pending = np.asarray(state.get("pending", []), dtype=np.int64).reshape(-1)
        self._chunks = [pending] if pending.size else []
        self._n = int(pending.size)


def media_to_global(ids: _Ids, layout: VocabLayout, modality: int, local: np.ndarray) -> np.ndarray:
    """Image code grid or audio code matrix → global ids (audio: frame-major, first
    ``audio_levels`` levels), range-checked; images take a fast path without the layout."""
    if modality == AUDIO:
        return layout.audio_to_global(local)
    local = np.asarray(local).reshape(-1)
    if local.size and ((local.dtype.kind != "u" and local.min() < 0) or local.max() >= ids.image_codes):
        raise ValueError(f"image code out of range [0, {ids.image_codes})")
    return local.astype(np.int64) + ids.image_offset


def row_dict(tokens: np.ndarray, valid: np.ndarray, modality: np.ndarray, task: str | int) -> dict[str, Any]:
    """The loader's row: ``tokens`` int64[L], ``modality`` int64[L], ``valid`` bool[L] and
    ``task`` an int64 scalar tensor holding the task's index in ``TASKS``
    (0 text, 1 image_text, 2 audio_text). Arrays are shared with torch, not copied, when they
    already have the right dtype."""
    import torch

    return {
        "tokens": torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)),
        "modality": torch.from_numpy(np.ascontiguousarray(modality, dtype=np.int64)),
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)),
        "task": torch.from_numpy(np.array(_task_index(task), dtype=np.int64)),
    }
