"""One logical stream: a deterministic, resumable iterator of rows.

Each row's source is drawn by weight from a PCG64 generator seeded by ``(seed, stream)`` (one draw
per row; the generator is restored by ``PCG64.advance``, so the state stays a plain integer).
Text sources pack documents with a per-(stream, source) :class:`~trimodal.shards.rows.TextPacker`;
a paired source gives one sample per row; a mixed source gives its stored rows.

A paired sample whose media do not fit a row: images are skipped (counted); audio follows
``audio_overflow``: ``crop`` keeps the transcript whole and the first audio frames that fit
after it (the paper "truncated to a maximum token budget"; the transcript may then describe
speech past the cut), ``skip`` drops the clip, ``error`` stops the run. Every case is counted
(``docs/loader.md`` lists the counters).
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from trimodal.shards.format import ShardError
from trimodal.shards.loader.cursor import Cursor
from trimodal.shards.loader.sources import LoaderConfig, Source
from trimodal.shards.rows import PAIRED_FRAMING, TextPacker, layout_ids, media_to_global, paired_length, write_paired
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TASKS, VocabLayout

_MEDIA = {"image_text": ("image", IMAGE), "audio_text": ("audio", AUDIO)}
_CHOICE_SALT = 0x6D6978  # "mix"


def new_counters(sources: list[Source]) -> dict[str, int]:
    c = {f"rows_{t}": 0 for t in TASKS}
    c.update({f"tokens_{m}": 0 for m in ("text", "image", "audio", "task")})
    c.update(pad_tokens=0, rows_skipped_too_long=0, image_too_long_skipped=0, audio_too_long_skipped=0,
             audio_too_long_cropped=0, audio_frames_dropped=0, shards_skipped_corrupt=0, captions_truncated=0,
             text_tokens_dropped=0)
    c.update({f"rows_source/{s.name}": 0 for s in sources})
    return c


class Context:
    """What every stream of a dataset shares (per process)."""

    def __init__(self, config: LoaderConfig, seed: int, layout: VocabLayout, sources: list[Source], signature: str) -> None:
        self.config, self.seed, self.layout, self.sources, self.signature = config, seed, layout, sources, signature
        self.ids = layout_ids(layout)
        self.index_cache: dict = {}  # cursor.SharedShards: shards read once per process; not pickled

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["index_cache"] = {}
        return d


class Stream:
    """Rows ``(tokens, valid, task index, source index)`` of one logical stream."""

    def __init__(self, ctx: Context, stream: int) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.stream = stream
        self.counters = new_counters(ctx.sources)
        self.cursors = [
            Cursor(s, stream, cfg.num_streams, ctx.seed, verify=cfg.verify, on_corrupt=cfg.on_corrupt, cycle=cfg.cycle,
                   counters=self.counters, index_cache=ctx.index_cache)
            for s in ctx.sources
        ]
        self.packers = {i: TextPacker(ctx.layout, cfg.seq_len) for i, s in enumerate(ctx.sources)
                        if s.kind == "tokenized" and s.task == "text"}
        self.draws = 0
        self.rows = 0
        self._active_key: tuple | None = None
        self._active: list[int] = []
        self._cum: list[float] = []
        self._gen_at = -1
        self._gen: np.random.Generator | None = None
        self.segments_only = False  # PackedStream: paired rows without their PAD tail
        self.parts: tuple[tuple[int, int, int], ...] | None = None  # the last row's make-up (next_row)
        self.comp: tuple[int, int, int, int] | None = None

    # -- state
    def state_dict(self) -> dict[str, Any]:
        sources = {}
        for i, (s, c) in enumerate(zip(self.ctx.sources, self.cursors)):
            d = c.state_dict()
            if i in self.packers:
                d["pending"] = self.packers[i].state_dict()["pending"]
            sources[s.name] = d
        return {"signature": self.ctx.signature, "draws": self.draws, "rows": self.rows, "sources": sources,
                "counters": dict(self.counters)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("packed"):
            raise ValueError("the saved loader state is of packed rows; data.pack_paired must match the saved run")
        if d.get("signature") != self.ctx.signature:
            raise ValueError(
                f"stream {self.stream}: saved loader state was made with another seed, num_streams or set of "
                f"sources/shards (signature {d.get('signature')} vs {self.ctx.signature}); refusing to resume"
            )
        self.draws = int(d["draws"])
        self.rows = int(d["rows"])
        for i, (s, c) in enumerate(zip(self.ctx.sources, self.cursors)):
            sd = d["sources"][s.name]
            c.load_state_dict(sd)
            if i in self.packers:
                self.packers[i].load_state_dict({"pending": sd.get("pending", [])})
        self.counters.clear()
        self.counters.update(new_counters(self.ctx.sources))
        self.counters.update({k: int(v) for k, v in d.get("counters", {}).items()})
        self._gen = None

    # -- source choice
    def _uniform(self) -> float:
        if self._gen is None or self._gen_at != self.draws:
            bg = np.random.PCG64(np.random.SeedSequence([self.ctx.seed, self.stream, _CHOICE_SALT]))
            if self.draws:
                bg.advance(self.draws)
            self._gen = np.random.Generator(bg)
        u = float(self._gen.random())
        self.draws += 1
        self._gen_at = self.draws
        return u

    def _choose(self) -> int | None:
        key = tuple(c.exhausted for c in self.cursors)
        if key != self._active_key:
            active = [i for i, (s, c) in enumerate(zip(self.ctx.sources, self.cursors)) if not c.exhausted and s.weight > 0]
            self._active = active
            self._cum = np.cumsum([self.ctx.sources[i].weight for i in active]).tolist()
            self._active_key = key
        active = self._active
        if not active:
            return None
        u = self._uniform()  # one draw per choice, even with one source: keeps draws == choices
        if len(active) == 1:
            return active[0]
        k = bisect.bisect_right(self._cum, u * self._cum[-1])
        return active[min(k, len(active) - 1)]

    # -- rows
    def next_row(self) -> tuple[np.ndarray, int, int] | None:
        """``(tokens int64[L], task index, source index)`` or None when every source is exhausted.

        The row's make-up is left in ``self.parts`` (per segment ``(positions, media positions,
        media modality)``: a segment is its task token, its media block with BOS/EOS, then
        text; None when only the tokens say: a stored mixed row) and ``self.comp`` (``(image,
        audio, task, PAD)`` positions, or None), so neither the segments, the modality nor the
        counters need a pass over the row. Valid positions are the
        non-PAD ones (PAD is never inside a text or paired segment). With ``segments_only`` a
        paired row is returned without its PAD tail (the packed stream packs it)."""
        while True:
            i = self._choose()
            if i is None:
                return None
            source = self.ctx.sources[i]
            if source.kind == "mixed":
                out = self._mixed_row(i)
            elif source.task == "text":
                out = self._text_row(i)
            else:
                out = self._paired_row(i)
            if out is None:  # this source just ran out (no cycling); draw again among the others
                continue
            self.rows += 1
            return (*out, i)

    def _text_row(self, i: int) -> tuple[np.ndarray, int] | None:
        packer, cursor = self.packers[i], self.cursors[i]
        names = ("text",)
        codes = self.ctx.ids.text_codes
        need = packer.seq_len - 1
        while not packer.ready():
            loaded = cursor._loaded
            col = loaded[2].get("text") if loaded is not None else None
            if col is not None and col.clean(codes):
                # the shard's column is checked whole: take its next documents as slices, moving
                # the cursor's state exactly as one next_columns call per document would
                perm, pos, starts, ends, values = cursor._perm, cursor.sample_pos, col.starts, col.ends, col.values
                n = len(perm)
                while pos < n and packer._n < need:
                    j = perm[pos]
                    e = ends[j]
                    if e < 0:
                        break  # no text.npy: the per-sample path below raises it
                    packer.add_checked(values[starts[j]:e])
                    pos += 1
                if pos > cursor.sample_pos:
                    cursor._failures = 0
                    cursor.sample_pos = pos
                    if pos >= n:
                        cursor._advance_shard()
                    continue
            got = cursor.next_columns(names)  # no sample dict: a text row needs the one array
            if got is None:
                self.counters["text_tokens_dropped"] += packer.clear()
                return None
            key, j, (column,), (text,) = got
            if text is None:
                raise ShardError(self.ctx.sources[i].root, "text sample has no text.npy", key)
            try:
                column.check(j, text, codes, "text")
            except ValueError as e:  # a code out of the tokenizer's range: damage, named like other damage
                raise ShardError(cursor.where, str(e), f"{key}.text.npy") from None
            packer.add_checked(text)
        tokens = packer.pop()
        self.parts, self.comp = ((tokens.size, 0, 0),), _TEXT_ROW
        return tokens, 0

    def _fit_media(self, task: str, media: np.ndarray, text: np.ndarray, key: str, source: int) -> np.ndarray | None:
        """The media ids to put in a row (cropped per ``audio_overflow``), or None to skip.

        An image fits when the image alone does (a caption that does not fit after it is cut); a
        clip fits when the clip *and its transcript* do, the rule ``shards stats --seq-len`` and
        the trainer's start-up warning count by: ``crop`` keeps the transcript whole."""
        seq_len = self.ctx.config.seq_len
        c = self.counters
        if task == "image_text":
            if media.size + PAIRED_FRAMING <= seq_len:
                return media
            c["image_too_long_skipped"] += 1
            c["rows_skipped_too_long"] += 1
            return None
        if media.size + text.size + PAIRED_FRAMING <= seq_len:
            return media
        mode = self.ctx.config.audio_overflow
        levels = self.ctx.layout.audio_levels
        frames = (seq_len - PAIRED_FRAMING - text.size) // levels
        if mode == "error":
            alone = f"; its transcript alone takes {text.size + PAIRED_FRAMING}" if frames < 1 else ""
            raise ValueError(f"audio sample {key} of source {self.ctx.sources[source].name!r} needs "
                             f"{media.size + text.size + PAIRED_FRAMING} positions, rows have {seq_len}{alone} "
                             f"(data.audio_overflow=error; use crop or skip, or raise data.seq_len)")
        if mode == "skip" or frames < 1:
            c["audio_too_long_skipped"] += 1
            c["rows_skipped_too_long"] += 1
            return None
        c["audio_too_long_cropped"] += 1
        c["audio_frames_dropped"] += media.size // levels - frames
        return media[: frames * levels]

    def _paired_sample(self, i: int) -> tuple[str, np.ndarray, int, np.ndarray, str] | None:
        """``(key, media, media offset, text, its column check)`` of the next paired sample:
        images as checked local codes read from the shard's columns (offset added when the row
        is written), audio as global ids (its levels are interleaved frame-major)."""
        source, cursor = self.ctx.sources[i], self.cursors[i]
        ids, layout = self.ctx.ids, self.ctx.layout
        if source.task == "image_text":
            got = cursor.next_columns(("image", "text"))
            if got is None:
                return None
            key, j, (mcol, tcol), (media, text) = got
            if media is None:
                raise ShardError(source.root, "image_text sample has no image.npy", key)
            mcol.check(j, media, ids.image_codes, "image")
            if text is None:
                text = _NO_TEXT
            return key, media, ids.image_offset, text, (tcol, j)
        sample = cursor.next()
        if sample is None:
            return None
        media = sample.get("audio")
        if media is None:
            raise ShardError(source.root, "audio_text sample has no audio.npy", sample.get("__key__"))
        text = sample.get("text")
        text = _NO_TEXT if text is None else text.reshape(-1)
        return sample["__key__"], media_to_global(ids, layout, AUDIO, media), 0, text, None

    def _paired_row(self, i: int) -> tuple[np.ndarray, int] | None:
        source = self.ctx.sources[i]
        ids, seq_len = self.ctx.ids, self.ctx.config.seq_len
        task = source.task
        skipped, need = 0, None
        while True:
            got = self._paired_sample(i)
            if got is None:
                return None
            key, media, offset, text, check = got
            whole = paired_length(media.size, text.size)
            media = self._fit_media(task, media, text, key, i)
            if media is None:
                skipped += 1
                need = whole if need is None else min(need, whole)
                if skipped > self.cursors[i].total:
                    raise ValueError(f"source {source.name!r}: no {task} sample of stream {self.stream} fits in "
                                     f"data.seq_len {seq_len}: the shortest takes {need:,} positions (tokens + "
                                     f"{PAIRED_FRAMING} framing); raise data.seq_len to {need:,} or filter the data")
                continue
            try:
                if check is None:
                    _checked_text(text, ids.text_codes)
                else:
                    check[0].check(check[1], text, ids.text_codes, "text")
            except ValueError as e:  # a code out of the tokenizer's range: damage, named like other damage
                raise ShardError(self.cursors[i].where, str(e), f"{key}.text.npy") from None
            if text.size > seq_len - media.size - PAIRED_FRAMING:
                self.counters["captions_truncated"] += 1
            if self.segments_only:
                n = paired_length(media.size, min(text.size, seq_len - paired_length(media.size, 0)))
                tokens = np.empty(n, dtype=np.int64)
                write_paired(tokens, ids, task, media, offset, text, seq_len)
            else:
                tokens = np.empty(seq_len, dtype=np.int64)
                n = write_paired(tokens, ids, task, media, offset, text, seq_len)
                tokens[n:] = ids.pad
            m = media.size + 2  # with BOS_m, EOS_m (their block's modality)
            if task == "image_text":
                self.parts, self.comp = ((n, m, IMAGE),), (m, 0, 1, seq_len - n)
            else:
                self.parts, self.comp = ((n, m, AUDIO),), (0, m, 1, seq_len - n)
            return tokens, TASKS.index(task)

    def _mixed_row(self, i: int) -> tuple[np.ndarray, int] | None:
        source, ids = self.ctx.sources[i], self.ctx.ids
        sample = self.cursors[i].next()
        if sample is None:
            return None
        tokens = sample.get("tokens")
        key = sample.get("__key__")
        if tokens is None or tokens.ndim != 1 or tokens.size != self.ctx.config.seq_len:
            raise ShardError(source.root, f"mixed rows need 1-D tokens of length {self.ctx.config.seq_len}", key)
        tokens = tokens.astype(np.int64)
        if tokens.min() < 0 or tokens.max() >= ids.modality_lut.size:
            raise ShardError(source.root, f"id outside the vocabulary [0, {ids.modality_lut.size})", key)
        task = int(tokens[0]) - ids.task[0]
        if not 0 <= task < len(TASKS):
            raise ShardError(source.root, "row does not start with a task token", key)
        self.parts = self.comp = None  # only the tokens say
        return tokens, task

    def count(self, tokens: np.ndarray, task: int, source: int, comp: tuple[int, int, int, int] | None) -> None:
        """Count a row: from its make-up ``comp`` (``(image, audio, task, PAD)`` positions) when
        the stream knows it, else from its tokens."""
        c = self.counters
        c[f"rows_{TASKS[task]}"] += 1
        c[f"rows_source/{self.ctx.sources[source].name}"] += 1
        if comp is None:
            modality = self.ctx.ids.modality_lut[tokens]
            # np.bincount costs several times these three compares on a row of a few thousand
            image = int(np.count_nonzero(modality == IMAGE))
            audio = int(np.count_nonzero(modality == AUDIO))
            task_tokens = int(np.count_nonzero(modality == TASK))
            pads = tokens.size - int(np.count_nonzero(tokens != self.ctx.ids.pad))
        else:
            image, audio, task_tokens, pads = comp
        c["tokens_text"] += tokens.size - image - audio - task_tokens - pads  # PAD counts as TEXT in `modality`
        c["tokens_image"] += image
        c["tokens_audio"] += audio
        c["tokens_task"] += task_tokens
        c["pad_tokens"] += pads


_TEXT_ROW = (0, 0, 1, 0)  # a packed text row: TASK_text, then L - 1 text positions, no PAD
_NO_TEXT = np.zeros(0, dtype=np.int64)


def _checked_text(text: np.ndarray, codes: int) -> None:
    if text.size and (int(text.min()) < 0 or int(text.max()) >= codes):
        raise ValueError(f"text code out of range [0, {codes})")
