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
from trimodal.shards.rows import PAIRED_FRAMING, RowTooLong, TextPacker, layout_ids, media_to_global, paired_row
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
    def next_row(self) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """``(tokens, valid, task index, source index)`` or None when every source is exhausted."""
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

    def _text_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        packer, cursor = self.packers[i], self.cursors[i]
        while not packer.ready():
            got = cursor.next_array("text")  # no sample dict: a text row needs the one array
            if got is None:
                self.counters["text_tokens_dropped"] += packer.clear()
                return None
            key, text = got
            if text is None:
                raise ShardError(self.ctx.sources[i].root, "text sample has no text.npy", key)
            try:
                packer.add(text)
            except ValueError as e:  # a code out of the tokenizer's range: damage, named like other damage
                raise ShardError(cursor.where, str(e), f"{key}.text.npy") from None
        tokens = packer.pop()
        valid = np.ones(tokens.size, dtype=bool)
        self._packed_valid = valid  # count() knows this row's make-up without looking at it
        return tokens, valid, 0

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

    def _paired_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        source, cursor = self.ctx.sources[i], self.cursors[i]
        layout, ids, seq_len = self.ctx.layout, self.ctx.ids, self.ctx.config.seq_len
        key, modality = _MEDIA[source.task]
        skipped = 0
        while True:
            sample = cursor.next()
            if sample is None:
                return None
            media = sample.get(key)
            if media is None:
                raise ShardError(source.root, f"{source.task} sample has no {key}.npy", sample.get("__key__"))
            text = sample.get("text")
            if text is None:
                text = np.zeros(0, dtype=np.int64)
            try:
                media = media_to_global(ids, layout, modality, media)
            except ValueError as e:  # a code out of the tokenizer's range: damage, named like other damage
                raise ShardError(cursor.where, str(e), f"{sample['__key__']}.{key}.npy") from None
            media = self._fit_media(source.task, media, text, sample["__key__"], i)
            if media is None:
                skipped += 1
                if skipped > cursor.total:
                    raise ValueError(f"source {source.name!r}: no {source.task} sample of stream {self.stream} fits in "
                                     f"seq_len {seq_len}; raise seq_len or filter the data")
                continue
            try:
                tokens, valid = paired_row(layout, source.task, media, text, seq_len)
            except RowTooLong:  # cannot happen after _fit_media; kept as a guard
                raise AssertionError("media were fitted to the row") from None
            except ValueError as e:  # a text code out of range (media were checked above)
                raise ShardError(cursor.where, str(e), f"{sample['__key__']}.text.npy") from None
            if text.size > seq_len - media.size - PAIRED_FRAMING:
                self.counters["captions_truncated"] += 1
            return tokens, valid, TASKS.index(source.task)

    def _mixed_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
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
        return tokens, tokens != ids.pad, task

    def count(self, valid: np.ndarray, modality: np.ndarray, task: int, source: int) -> None:
        c = self.counters
        c[f"rows_{TASKS[task]}"] += 1
        c[f"rows_source/{self.ctx.sources[source].name}"] += 1
        if valid is getattr(self, "_packed_valid", None):
            # a packed text row (the one _text_row just built): TASK_text, then L - 1 text
            # positions (ids and their BOS/EOS), no PAD; no pass over the row needed
            c["tokens_text"] += valid.size - 1
            c["tokens_task"] += 1
            self._packed_valid = None
            return
        # np.bincount costs several times these three compares on a row of a few thousand
        image = int(np.count_nonzero(modality == IMAGE))
        audio = int(np.count_nonzero(modality == AUDIO))
        task_tokens = int(np.count_nonzero(modality == TASK))
        pads = valid.size - int(np.count_nonzero(valid))
        c["tokens_text"] += valid.size - image - audio - task_tokens - pads  # PAD counts as TEXT in `modality`
        c["tokens_image"] += image
        c["tokens_audio"] += audio
        c["tokens_task"] += task_tokens
        c["pad_tokens"] += pads
