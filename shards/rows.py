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

from collections import deque
from functools import lru_cache
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from trimodal.tokenizers.vocab import AUDIO, TASK_MEDIA, TASKS, VocabLayout


PAIRED_FRAMING = 5  # TASK_m, BOS_m, EOS_m, BOS_text, EOS_text around a paired sample
#: the shortest row length anything takes (loader, `shards stats --seq-len`, `pipeline mix`): one rule
MIN_SEQ_LEN = 8


def check_seq_len(seq_len: object, name: str = "seq_len") -> int:
    """The one row-length rule, with one message: an integer >= :data:`MIN_SEQ_LEN` (room for a
    paired sample's 5 framing tokens and some content)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < MIN_SEQ_LEN:
        raise ValueError(f"{name} must be an integer >= {MIN_SEQ_LEN}, got {seq_len!r}")
    return seq_len
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


def _checked(local: np.ndarray, codes: int, what: str) -> np.ndarray:
    """``local`` as a 1-D array, its ids checked to lie in ``[0, codes)`` without converting it
    (a reduction over the stored dtype: ``max`` of a uint16 array, nothing when the dtype cannot
    hold an id that large)."""
    if type(local) is not np.ndarray:
        local = np.asarray(local)
    if local.ndim != 1:
        local = local.reshape(-1)
    if local.size:
        dtype = local.dtype
        if dtype.kind == "u":
            if (dtype.itemsize >= 8 or codes <= _UINT_MAX[dtype.itemsize]) and _max(local) >= codes:
                raise ValueError(f"{what} code out of range [0, {codes})")
        elif _min(local) < 0 or _max(local) >= codes:
            raise ValueError(f"{what} code out of range [0, {codes})")
    return local


_UINT_MAX = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}  # below: every value of the dtype is a valid id
_max, _min = np.maximum.reduce, np.minimum.reduce  # without ndarray.max's Python-level wrapper


def _to_int64(local: np.ndarray, offset: int) -> np.ndarray:
    """One conversion: ``local + offset`` computed straight into a new int64 array."""
    if offset:
        return np.add(local, offset, dtype=np.int64)
    return local.astype(np.int64)


def text_to_global(ids: _Ids, local: np.ndarray) -> np.ndarray:
    """SentencePiece ids → global int64 ids, range-checked (what ``layout.to_global(TEXT, …)`` does)."""
    return _to_int64(_checked(local, ids.text_codes, "text"), ids.text_offset)


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


def write_paired(out: np.ndarray, ids: _Ids, task: str, media: np.ndarray, media_offset: int,
                 text: np.ndarray, seq_len: int) -> int:
    """Write the paired segment ``[TASK_m, BOS_m, media…, EOS_m, BOS_text, text…, EOS_text]``
    into ``out[:n]`` and return ``n`` (what :func:`paired_row` builds, without its PAD tail).

    ``media`` are range-checked 1-D codes (``media_offset`` added while copying: local codes of
    any integer dtype, or global ids with offset 0); ``text`` range-checked SentencePiece ids, cut
    to the room ``seq_len`` leaves (EOS_text kept). Each piece is converted once, by the copy
    into ``out``. The caller checks that the media fit (:func:`paired_media_fits`)."""
    m = media.size
    t = min(text.size, seq_len - paired_length(m, 0))
    out[0] = ids.task[TASKS.index(task)]
    out[1] = ids.media_bos[task]
    if media_offset:
        np.add(media, media_offset, out=out[2 : 2 + m], dtype=np.int64)
    else:
        out[2 : 2 + m] = media
    out[2 + m] = ids.media_eos[task]
    out[3 + m] = ids.text_bos
    if t:
        np.add(text[:t], ids.text_offset, out=out[4 + m : 4 + m + t], dtype=np.int64)
    out[4 + m + t] = ids.text_eos
    return m + t + PAIRED_FRAMING


class TextPacker:
    """Packs text documents into rows of exactly ``seq_len`` ids, no padding.

    Documents are framed ``BOS_text doc… EOS_text`` and concatenated into one stream; each row
    is ``TASK_text`` followed by the next ``seq_len - 1`` stream tokens, so a row looks like
    ``[TASK_text, BOS_text, doc…, EOS_text, BOS_text, doc2…]``.

    **Documents that do not fit continue in the next row**: that row starts with ``TASK_text``
    and then the document's remaining tokens (no second BOS_text; the document's EOS_text comes
    where the document really ends). Nothing is dropped or padded, so every document token is
    seen exactly once, in order. By default attention is *not* masked per document (the paper
    leaves it open): a row attends across document boundaries, which BOS/EOS mark;
    ``data.document_attention`` restricts it to each document (segments from the BOS/EOS marks).

    The state is the pending (already framed, global-id) tokens not yet emitted, at most one
    row plus the last document fed: ``state_dict() == {"pending": [int, ...]}``.

    Why documents are kept as they were fed (the local, e.g. uint16, views with a cut position)
    rather than framed int64 copies: per-document numpy calls were the loader's cost, so
    :meth:`add` only range-checks (a ``max`` over the stored dtype) and :meth:`pop` converts each
    piece once, straight into the row.
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
        # pending pieces, oldest first: [array, cut, framed]. framed: a local document standing
        # for [BOS, doc…, EOS] with `cut` framed tokens already emitted; else global int64 ids
        # (a loaded state) from `cut` on
        self._pieces: deque[list] = deque()
        self._n = 0

    @property
    def pending(self) -> int:
        """Tokens fed but not yet emitted."""
        return self._n

    def ready(self) -> bool:
        """Whether :meth:`pop` can emit a full row."""
        return self._n >= self.seq_len - 1

    def add(self, text_ids_local: np.ndarray) -> None:
        """Feed one document (SentencePiece ids, 1-D). The array is kept, not copied, until its
        tokens are emitted (a shard's read-only view here): do not change it in between."""
        self.add_checked(_checked(text_ids_local, self._ids.text_codes, "text"))

    def add_checked(self, doc: np.ndarray) -> None:
        """:meth:`add` of a 1-D document whose ids the caller has range-checked already (the
        loader checks a shard's whole column at once)."""
        self._pieces.append([doc, 0, True])
        self._n += doc.size + DOC_FRAMING

    def pop(self) -> np.ndarray:
        """The next row, int64[seq_len]; raises ``ValueError`` when not :meth:`ready`.

        Each piece (a document's view, or its part that fits) is converted once, by the slice
        assignment that writes it into the row; no per-document int64 copy."""
        need = self.seq_len - 1
        if self._n < need:
            raise ValueError(f"TextPacker has {self._n} pending tokens, a row needs {need}")
        row = np.empty(self.seq_len, dtype=np.int64)
        row[0] = self._task
        pos = 1
        pieces = self._pieces
        off = self._ids.text_offset
        while need:
            piece = pieces[0]
            arr, cut, framed = piece
            n = arr.size
            left = (n + DOC_FRAMING if framed else n) - cut
            k = left if left <= need else need
            if not framed:
                row[pos : pos + k] = arr[cut : cut + k]
            else:  # framed tokens cut .. cut+k of [BOS, doc…, EOS]
                p, c, end = pos, cut, cut + k
                if c == 0:
                    row[p] = self._bos
                    p += 1
                    c = 1
                stop = end - 1 if end - 1 < n else n
                if stop > c - 1:
                    if off:
                        np.add(arr[c - 1 : stop], off, out=row[p : p + stop - c + 1], dtype=np.int64)
                    else:
                        row[p : p + stop - c + 1] = arr if c == 1 and stop == n else arr[c - 1 : stop]
                    p += stop - c + 1
                if end == n + DOC_FRAMING:
                    row[p] = self._eos
            pos += k
            need -= k
            if k == left:
                pieces.popleft()
            else:
                piece[1] = cut + k
                if framed and arr.base is not None:  # a view of a shard: do not keep the shard alive
                    piece[0] = arr.copy()
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
        self._pieces = deque()
        self._n = 0
        return n

    def _pending_ids(self) -> np.ndarray:
        """The pending tokens as global int64 ids (the framed stream not yet emitted)."""
        off = self._ids.text_offset
        parts = []
        for arr, cut, framed in self._pieces:
            if not framed:
                parts.append(arr[cut:])
                continue
            framed_ids = np.empty(arr.size + DOC_FRAMING, dtype=np.int64)
            framed_ids[0] = self._bos
            framed_ids[1:-1] = arr
            framed_ids[1:-1] += off
            framed_ids[-1] = self._eos
            parts.append(framed_ids[cut:])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        if not self._pieces:
            return {"pending": []}
        pending = self._pending_ids()
        self._pieces = deque([[pending, 0, False]])
        return {"pending": pending.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pending = np.asarray(state.get("pending", []), dtype=np.int64).reshape(-1)
        self._pieces = deque([[pending, 0, False]]) if pending.size else deque()
        self._n = int(pending.size)


def media_to_global(ids: _Ids, layout: VocabLayout, modality: int, local: np.ndarray) -> np.ndarray:
    """Image code grid or audio code matrix → global ids (audio: frame-major, first
    ``audio_levels`` levels), range-checked; images take a fast path without the layout
    (checked on the stored dtype, converted once)."""
    if modality == AUDIO:
        return layout.audio_to_global(local)
    return _to_int64(_checked(local, ids.image_codes, "image"), ids.image_offset)


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
