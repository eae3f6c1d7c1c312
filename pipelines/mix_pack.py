"""The mix job's packing, as plain generators over the shared shard reader (no Beam).

Text units go through a :class:`~trimodal.shards.rows.TextPacker` primed so that its rows line up
with the rows of one sequential packer over the whole source; the partial rows at a unit's two
ends are emitted as fragments and stitched back together (:func:`stitch`). The result is exactly
what one sequential packer over the source in manifest order produces, for any grouping and any
number of workers. Paired units give one candidate per sample whose media fit the row, or, with
``pack``, rows in which several samples are segments (:class:`~trimodal.shards.packing.RowPacker`,
the loader's packer: first fit within a look-ahead, restarted at each unit).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from trimodal import storage
from trimodal.pipelines.mix_plan import Unit
from trimodal.shards.format import ShardError
from trimodal.shards.packing import RowPacker
from trimodal.shards.reader import decode_sample, index_shard, read_shard
from trimodal.shards.rows import ROW_OPENER, RowTooLong, TextPacker, layout_ids, media_to_global, paired_length, paired_row
from trimodal.tokenizers.vocab import AUDIO, IMAGE, VocabLayout

ROW, FRAGMENT, STATS = "row", "fragment", "stats"


def unit_samples(unit: Unit, verify: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``(key, arrays)`` of the unit's samples in manifest order (the json is not parsed)."""
    for info in unit.shards:
        data = read_shard(unit.root, info, verify)
        where = storage.join(unit.root, info.name)
        for entry in index_shard(data, where, expect=info.samples):
            sample = decode_sample(data, entry, where, want_json=False)
            yield sample.pop("__key__"), sample


def pack_unit(unit: Unit, layout: VocabLayout, seq_len: int, verify: str, pack: bool = False,
              lookahead: int = 8) -> Iterator[tuple[str, Any]]:
    """A unit → ``("row", (source, group | None, index, payload))`` candidates, text
    ``("fragment", ((source, row), (offset, tokens, keys, sample_end)))`` pieces and one
    ``("stats", (source, group, rows, samples, too_long, stream_tokens, lengths))`` (``lengths``:
    the used positions of each packed row, uint32, for the filler plan; else None).

    A payload is ``(tokens uint32, keys, sample_end, truncated, too_long)``: the row's tokens
    without its PAD tail, the input sample keys in it, 1 + the source index of its last sample,
    how many of its captions/transcripts were cut to fit, and (packed rows) how many too-long
    samples the packer met since the unit's previous row."""
    if unit.task == "text":
        yield from _pack_text(unit, layout, seq_len, verify)
    elif pack:
        yield from _pack_paired_rows(unit, layout, seq_len, verify, lookahead)
    else:
        yield from _pack_paired(unit, layout, seq_len, verify)


def _pack_text(unit: Unit, layout: VocabLayout, L: int, verify: str) -> Iterator[tuple[str, Any]]:
    """Rows of the unit's documents, aligned with one sequential packer over the whole source:
    the packer is primed with the part of row ``r`` that earlier units hold, and the partial rows
    at the unit's two ends become fragments (stitched by :func:`stitch`)."""
    S = L - ROW_OPENER
    packer = TextPacker(layout, L)
    a = unit.stream_start
    r, off = divmod(a, S)
    if off:  # placeholders for the part of row r that earlier units hold
        packer.load_state_dict({"pending": [layout.pad] * off})
    partial = off > 0
    row_start = r * S
    docs: deque[tuple[int, int, str, int]] = deque()  # (start, end, key, sample index)
    pos, idx, full = a, unit.first_sample, 0

    def span(lo: int, hi: int) -> tuple[tuple[str, ...], int]:
        inside = [d for d in docs if d[0] < hi and d[1] > lo]
        return tuple(d[2] for d in inside), (max(d[3] for d in inside) + 1 if inside else 0)

    for key, arrays in unit_samples(unit, verify):
        text = arrays.get("text")
        if text is None:
            raise ShardError(unit.root, "text sample has no text.npy", key)
        packer.add(text)
        n = int(text.size) + 2
        docs.append((pos, pos + n, key, idx))
        pos += n
        idx += 1
        while packer.ready():
            row = packer.pop()
            row_end = row_start + S
            keys, end = span(row_start, row_end)
            if partial:
                yield FRAGMENT, ((unit.source, r), (off, row[1 + off :], keys, end))
                partial = False
            else:
                full += 1
                yield ROW, (unit.source, None, r, (row.astype(np.uint32), keys, end, 0, 0))
            while docs and docs[0][1] <= row_end:
                docs.popleft()
            r += 1
            row_start = row_end
    if pos - a != unit.stream_len:
        raise ShardError(unit.root, f"shards {unit.shards[0].name}..{unit.shards[-1].name} hold {pos - a} framed "
                                    f"text tokens, the manifest says {unit.stream_len}")
    pending = np.asarray(packer.state_dict()["pending"], dtype=np.int64)
    lo = off if partial else 0
    if pending.size > lo:
        keys, end = span(row_start, pos)
        yield FRAGMENT, ((unit.source, r), (lo, pending[lo:], keys, end))
    yield STATS, (unit.source, unit.group, full, idx - unit.first_sample, 0, pos - a, None)


def _paired_segments(unit: Unit, layout: VocabLayout, L: int, verify: str
                     ) -> Iterator[tuple[str, int, np.ndarray | None, int]]:
    """``(key, 1 + source index, segment, truncated)`` per sample: the sample's row without its
    PAD tail, or ``None`` when its media alone do not fit a row of L."""
    media_key, modality = ("image", IMAGE) if unit.task == "image_text" else ("audio", AUDIO)
    ids = layout_ids(layout)
    empty = np.zeros(0, dtype=np.int64)
    idx = unit.first_sample
    for key, arrays in unit_samples(unit, verify):
        media = arrays.get(media_key)
        if media is None:
            raise ShardError(unit.root, f"{unit.task} sample has no {media_key}.npy", key)
        text = arrays.get("text")
        text = empty if text is None else text
        media = media_to_global(ids, layout, modality, media)
        idx += 1
        try:
            tokens, valid = paired_row(layout, unit.task, media, text, L)
        except RowTooLong:
            yield key, idx, None, 0
            continue
        truncated = int(text.size > L - paired_length(media.size, 0))
        yield key, idx, tokens[: int(np.count_nonzero(valid))], truncated


def _pack_paired(unit: Unit, layout: VocabLayout, L: int, verify: str) -> Iterator[tuple[str, Any]]:
    """One candidate row per sample whose media fit; the others are counted as too long."""
    local = too_long = 0
    idx = unit.first_sample
    for key, idx, segment, truncated in _paired_segments(unit, layout, L, verify):
        if segment is None:
            too_long += 1
            continue
        yield ROW, (unit.source, unit.group, local, (segment.astype(np.uint32), (key,), idx, truncated, 0))
        local += 1
    yield STATS, (unit.source, unit.group, local, idx - unit.first_sample, too_long, 0, None)


def _pack_paired_rows(unit: Unit, layout: VocabLayout, L: int, verify: str, lookahead: int
                      ) -> Iterator[tuple[str, Any]]:
    """Packed candidate rows: the unit's samples as segments, first fit within ``lookahead``
    (the text filler is added at write time, from the plan). A too-long sample is charged to the
    unit's next row (or its last, at the unit's end), so the manifest can count it with the rows
    used."""
    packer = RowPacker(layout, L, lookahead)
    local = too_long = charge = 0
    idx = unit.first_sample
    last: tuple | None = None
    lengths: list[int] = []

    def pop() -> tuple:
        nonlocal charge
        tokens, valid = packer.pop()
        placed = packer.placed
        used = int(np.count_nonzero(valid))
        lengths.append(used)
        payload = (tokens[:used].astype(np.uint32), tuple(t[0] for t in placed),
                   max(t[1] for t in placed), sum(t[2] for t in placed), charge)
        charge = 0
        return payload

    for key, idx, segment, truncated in _paired_segments(unit, layout, L, verify):
        if segment is None:
            too_long += 1
            charge += 1
            continue
        packer.add(segment, (key, idx, truncated))
        if packer.ready():
            if last is not None:
                yield ROW, (unit.source, unit.group, local - 1, last)
            last = pop()
            local += 1
    while packer.queue:
        if last is not None:
            yield ROW, (unit.source, unit.group, local - 1, last)
        last = pop()
        local += 1
    if last is not None:
        if charge:  # too-long samples after the unit's last row
            last = (*last[:4], last[4] + charge)
        yield ROW, (unit.source, unit.group, local - 1, last)
    yield STATS, (unit.source, unit.group, local, idx - unit.first_sample, too_long, 0,
                  np.asarray(lengths, dtype=np.uint32))


def stitch(item, seq_len: int, task_text: int):
    """Fragments of one text row → the row; the source's final partial row is dropped."""
    (src, r), frags = item
    frags = sorted(frags, key=lambda f: f[0])
    pos = 0
    for off, tokens, _, _ in frags:
        if off != pos:
            raise ValueError(f"text row {r} of input {src}: fragments do not tile (offset {off}, expected {pos})")
        pos += int(tokens.size)
    if pos < seq_len - 1:
        return
    if pos != seq_len - 1:
        raise ValueError(f"text row {r} of input {src}: {pos} tokens, expected {seq_len - 1}")
    row = np.empty(seq_len, dtype=np.uint32)
    row[0] = task_text
    row[1:] = np.concatenate([f[1] for f in frags])
    keys = tuple(dict.fromkeys(k for f in frags for k in f[2]))
    yield src, None, r, (row, keys, max(f[3] for f in frags), 0, 0)
