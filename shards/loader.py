"""The streaming loader: sources → mixed, packed rows of length L, with exact resume.

Design (why the state is shaped the way it is)
==============================================

**Logical streams.** The data is split into ``num_streams`` logical streams (default 8), fixed
for a run and independent of the world size and of the number of dataloader workers. Stream
``s`` of a source reads

- the source's shards with index ``i ≡ s (mod num_streams)``, when the source has at least
  ``num_streams`` shards (shard striding);
- otherwise every shard, keeping only the samples with index ``j ≡ s (mod num_streams)`` inside
  each shard (sample striding; each stream then reads every shard of that small source).

so the streams partition every source's samples. Each stream is a self-contained, seeded
iterator of rows: per epoch its shard order is a permutation seeded by
``(seed, epoch, stream, source)``, the order of its samples inside a shard is a permutation
seeded by ``(seed, epoch, stream, source, shard)`` (the seeded shuffle), the source of each row is
drawn by weight from a PCG64 generator seeded by ``(seed, stream)``, text documents are packed by
a per-(stream, source) :class:`~trimodal.shards.rows.TextPacker`. A stream's state is O(1):
per source ``(epoch, shard position, sample position)`` plus the packer's pending tokens, and
the number of weighted draws made so far (the generator is restored by ``PCG64.advance``,
which is equivalent to saving its full state but stays a plain integer), plus its counters.

**Ownership.** Rank ``r`` of ``W`` owns streams ``{s : s % W == r}`` (``num_streams % W == 0``
is required); inside a rank, dataloader worker ``w`` of ``n`` owns every n-th of those
(``(num_streams / W) % n == 0`` is required), and yields rows round-robin over its streams.
A stream's rows do not depend on who reads it, so the rows of a whole run are the union of
per-stream prefixes, whatever the world size. With ``cycle=True`` (training) every stream is
infinite, so every rank yields the same number of steps.

**Resume.** ``state_dict()`` / ``load_state_dict()`` save and restore a worker's streams plus
its round-robin position, and are what ``torchdata``'s ``StatefulDataLoader`` calls inside each
worker: a resumed run with the same world size and worker count yields exactly the rows it
would have yielded. To resume with a *different* world size or worker count, gather every
rank's stream states (:meth:`TrimodalDataset.stream_states`, or
:func:`stream_states_from_loader_state` on a ``StatefulDataLoader.state_dict()``), take their
union (a dict ``stream → state``), and call :meth:`TrimodalDataset.load_stream_states` on a new
dataset before building the loader: each rank and worker picks its own streams. No row is
repeated and none is skipped (only the interleaving of streams changes).

**Mixing.** Weights choose the source of each *row* (one draw per row; a text row packs several
documents, a paired row holds one sample). Defaults: ⅓ per modality over the modalities present
[paper], split equally among the sources of a modality; ``modality_weights`` or per-source
``weight`` override that. With ``cycle=False`` an exhausted source leaves the draw and the
others are renormalised; the tail of packed text shorter than a row is dropped (counted).

Shards are read whole through fsspec (one ``cat_file`` per shard) and parsed zero-copy
(:mod:`trimodal.shards.format`); at most one shard per (stream, source) is held in memory.
Changing weights or ``seq_len`` between runs is allowed (positions stay valid, rows differ);
changing the seed, ``num_streams`` or the sources is refused on load.
"""

from __future__ import annotations

import bisect
import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from trimodal.shards.format import ShardFormatError, iter_tar_offsets, npy_view
from trimodal.shards.manifest import Manifest, check_same_tokenizers
from trimodal.shards.reader import ShardCorrupted, read_shard_bytes
from trimodal.shards.rows import RowTooLong, TextPacker, layout_ids, paired_row, row_dict
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASKS, VocabLayout

STATE_FORMAT = "trimodal-loader"
STATE_VERSION = 1
TOKENIZED_MODALITIES = ("text", "image_text", "audio_text")
_MEDIA = {"image_text": ("image", IMAGE), "audio_text": ("audio", AUDIO)}
_CHOICE_SALT = 0x6D6978  # "mix"


# ---- configuration ----------------------------------------------------------------------
@dataclass
class SourceConfig:
    """One dataset root. ``weight=None`` → the default split (see :class:`LoaderConfig`);
    ``name`` defaults to the root's last path component and must be unique."""

    root: str
    weight: float | None = None
    name: str | None = None


@dataclass
class LoaderConfig:
    """What to read and how to assemble rows.

    Weights: either every source has a ``weight`` (normalised over the sources), or none has,
    and then each modality present gets ``modality_weights[modality]`` (default: equal, ⅓ each
    with three modalities [paper]), split equally among that modality's sources. The modality
    of a source is its manifest's ``modality`` (mixed roots count as their own modality).
    """

    sources: list[SourceConfig]
    seq_len: int
    seed: int = 0
    num_streams: int = 8
    verify_checksums: bool = False
    on_corrupt: str = "error"
    cycle: bool = True
    modality_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if not self.sources:
            raise ValueError("LoaderConfig needs at least one source")
        if self.on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {self.on_corrupt!r}")
        if not isinstance(self.num_streams, int) or self.num_streams < 1:
            raise ValueError(f"num_streams must be a positive integer, got {self.num_streams!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 8:
            raise ValueError(f"seq_len must be an integer >= 8, got {self.seq_len!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoaderConfig":
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- sources ----------------------------------------------------------------------------
@dataclass
class _Source:
    name: str
    root: str
    manifest: Manifest
    modality: str  # manifest modality ("text", "image_text", "audio_text", or anything for mixed)
    kind: str  # "tokenized" | "mixed"
    weight: float
    salt: int  # stable per-source seed component


def _default_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or root


def _check_tokenizers(layout: VocabLayout, m: Manifest, where: str) -> None:
    fps = m.fingerprints()
    if m.layout is not None:
        other = VocabLayout.from_dict(m.layout)
        other = dataclasses.replace(other, fingerprints={**other.fingerprints, **fps})
    else:
        other = dataclasses.replace(layout, fingerprints=fps)
    layout.check_compatible(other, what=where)
    codes = {"text": layout.text_codes, "image": layout.image_codes, "audio": layout.audio_codes}
    for name, info in m.tokenizers.items():
        size = info.get("vocab_size") if isinstance(info, dict) else None
        if name in codes and size is not None and int(size) > codes[name]:
            raise ValueError(
                f"{where}: {name} tokenizer has vocab_size {size} but the layout has only {codes[name]} "
                f"{name} codes: these shards were made with a different tokenizer"
            )


def _resolve_sources(config: LoaderConfig, layout: VocabLayout) -> list[_Source]:
    manifests: dict[str, Manifest] = {}
    names: list[str] = []
    for sc in config.sources:
        name = sc.name or _default_name(sc.root)
        if name in names:
            raise ValueError(f"two sources are named {name!r}; give them distinct SourceConfig.name values")
        names.append(name)
        m = Manifest.load(sc.root)
        where = f"source {name!r} ({sc.root})"
        if m.kind not in ("tokenized", "mixed"):
            raise ValueError(f"{where}: unknown manifest kind {m.kind!r}")
        if m.kind == "tokenized" and m.modality not in TOKENIZED_MODALITIES:
            raise ValueError(f"{where}: unknown modality {m.modality!r}; expected one of {TOKENIZED_MODALITIES}")
        if m.kind == "mixed":
            if m.layout is None:
                raise ValueError(f"{where}: mixed manifest without a layout")
            if m.seq_len != config.seq_len:
                raise ValueError(f"{where}: rows were packed to seq_len {m.seq_len}, the loader wants {config.seq_len}")
        _check_tokenizers(layout, m, where)
        manifests[sc.root] = m
    check_same_tokenizers(manifests)

    given = [sc.weight is not None for sc in config.sources]
    if any(given) and not all(given):
        raise ValueError("give a weight to every source or to none (then modality defaults apply)")
    mods = [manifests[sc.root].modality for sc in config.sources]
    if all(given):
        if config.modality_weights is not None:
            raise ValueError("modality_weights and per-source weights are exclusive")
        weights = [float(sc.weight) for sc in config.sources]
    else:
        present = list(dict.fromkeys(mods))
        mw = config.modality_weights
        if mw is None:
            mw = {m: 1.0 / len(present) for m in present}
        unknown = set(mw) - set(present)
        if unknown:
            raise ValueError(f"modality_weights names modalities with no source: {sorted(unknown)} (present: {present})")
        weights = [float(mw.get(m, 0.0)) / mods.count(m) for m in mods]
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixing weights must be finite, >= 0 and not all 0, got {weights}")
    total = sum(weights)
    return [
        _Source(
            name=name,
            root=sc.root,
            manifest=manifests[sc.root],
            modality=mod,
            kind=manifests[sc.root].kind,
            weight=w / total,
            salt=zlib.crc32(name.encode()),
        )
        for name, sc, mod, w in zip(names, config.sources, mods, weights)
    ]


def _signature(config: LoaderConfig, sources: list[_Source]) -> str:
    """What a stream state is only valid for: seed, stream count, sources and their shards."""
    parts = [str(config.seed), str(config.num_streams)]
    for s in sorted(sources, key=lambda s: s.name):
        parts.append(f"{s.name}:{len(s.manifest.shards)}:{s.manifest.samples}")
    return f"{zlib.crc32('|'.join(parts).encode()):08x}"


def _new_counters(sources: list[_Source]) -> dict[str, int]:
    c = {f"rows_{t}": 0 for t in TASKS}
    c.update({f"tokens_{m}": 0 for m in ("text", "image", "audio", "task")})
    c.update(
        pad_tokens=0,
        rows_skipped_too_long=0,
        shards_skipped_corrupt=0,
        captions_truncated=0,
        text_tokens_dropped=0,
    )
    c.update({f"rows_source/{s.name}": 0 for s in sources})
    return c


# ---- one source inside one stream -------------------------------------------------------
class _Cursor:
    """Walks one source's share of one stream: epochs → shard permutation → sample permutation."""

    def __init__(self, source: _Source, stream: int, ctx: "_Context", counters: dict[str, int]) -> None:
        self.source = source
        self.stream = stream
        self.ctx = ctx
        self.counters = counters
        n = ctx.config.num_streams
        shards = source.manifest.shards
        self.stride = len(shards) < n
        if self.stride:
            self.shard_ids = list(range(len(shards)))
            counts = [len(range(stream, s.samples, n)) for s in shards]
        else:
            self.shard_ids = list(range(stream, len(shards), n))
            counts = [shards[i].samples for i in self.shard_ids]
        self.view_counts = dict(zip(self.shard_ids, counts))
        self.total = sum(counts)  # samples of this source in this stream, per epoch
        # state
        self.epoch = 0
        self.shard_pos = 0
        self.sample_pos = 0
        self.exhausted = self.total == 0
        # live (not state)
        self._order: np.ndarray | None = None
        self._order_epoch = -1
        self._samples: tuple[memoryview, list[tuple[str, list[tuple[str, int, int]]]]] | None = None
        self._perm: np.ndarray | None = None
        self._shard = -1
        self._failures = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sample_pos": self.sample_pos, "exhausted": self.exhausted}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.epoch = int(d["epoch"])
        self.shard_pos = int(d["shard_pos"])
        self.sample_pos = int(d["sample_pos"])
        self.exhausted = bool(d["exhausted"]) or self.total == 0
        self._samples = self._perm = None

    def _shard_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.ctx.config.seed, self.epoch, self.stream, self.source.salt])
            self._order = np.asarray(self.shard_ids, dtype=np.int64)[rng.permutation(len(self.shard_ids))]
            self._order_epoch = self.epoch
        return self._order

    def _where(self, shard: int) -> str:
        return f"{self.source.root.rstrip('/')}/{self.source.manifest.shards[shard].name}"

    def _corrupt(self, err: ShardCorrupted) -> None:
        """Count a corrupt shard (on_corrupt="skip") or re-raise."""
        if self.ctx.config.on_corrupt != "skip":
            raise err
        self.counters["shards_skipped_corrupt"] += 1
        self._failures += 1
        if self._failures > len(self.shard_ids):
            raise ShardCorrupted(f"source {self.source.name!r}: every shard of stream {self.stream} is corrupt ({err})")

    def _index(self, shard: int, data: bytes, where: str) -> list[tuple[str, list[tuple[str, int, int]]]]:
        """The shard's samples as ``(key, [(ext, start, end), ...])`` in tar order (offsets into
        ``data``). Under sample striding every stream of this process reads the same few shards,
        so their indexes are kept (a source has fewer shards than streams then: bounded) and each
        stream walks the tar headers once instead of once per stream."""
        info = self.source.manifest.shards[shard]
        cache_key = (self.source.root, info.name, info.sha256)
        if self.stride:
            cached = self.ctx.shard_index.get(cache_key)
            if cached is not None and cached[0] == len(data):
                return cached[1]
        groups: list[tuple[str, list[tuple[str, int, int]]]] = []
        last = None
        try:
            for member, start, end in iter_tar_offsets(data, where):
                key, _, ext = member.partition(".")
                if key != last:
                    members: list[tuple[str, int, int]] = []
                    groups.append((key, members))
                    last = key
                members.append((ext, start, end))
        except ShardFormatError as e:
            raise ShardCorrupted(str(e)) from None
        if len(groups) != info.samples:
            raise ShardCorrupted(f"shard {where}: {len(groups)} samples, manifest says {info.samples}")
        if self.stride:
            self.ctx.shard_index[cache_key] = (len(data), groups)
        return groups

    def _load(self, shard: int) -> bool:
        """Read shard ``shard`` and index its samples (arrays are decoded lazily, only for the
        samples of this stream); False when it was corrupt and skipped."""
        info = self.source.manifest.shards[shard]
        where = self._where(shard)
        try:
            data = read_shard_bytes(self.source.root, info, verify=self.ctx.config.verify_checksums)
            groups = self._index(shard, data, where)
        except ShardCorrupted as e:
            self._corrupt(e)
            return False
        n = self.ctx.config.num_streams
        idx = np.arange(self.stream, len(groups), n) if self.stride else np.arange(len(groups))
        rng = np.random.default_rng([self.ctx.config.seed, self.epoch, self.stream, self.source.salt, shard])
        self._perm = idx[rng.permutation(idx.size)]
        self._samples = (memoryview(data), groups)
        self._shard = shard
        return True

    def _decode(self, view: memoryview, group: tuple[str, list[tuple[str, int, int]]]) -> dict[str, Any]:
        key, members = group
        sample: dict[str, Any] = {"__key__": key}
        try:
            for ext, start, end in members:
                if ext.endswith(".npy"):
                    sample[ext[:-4]] = npy_view(view[start:end])
                elif ext != "json":  # the loader needs only the arrays (and the key)
                    sample[ext] = view[start:end]
        except (ShardFormatError, ValueError) as e:
            raise ShardCorrupted(f"shard {self._where(self._shard)}: sample {key}: {e}") from None
        return sample

    def next(self) -> dict[str, Any] | None:
        """The next sample of this source in this stream, or None when exhausted (cycle=False)."""
        while not self.exhausted:
            order = self._shard_order()
            if self.shard_pos >= len(order):
                self.epoch += 1
                self.shard_pos = self.sample_pos = 0
                if not self.ctx.config.cycle:
                    self.exhausted = True
                continue
            shard = int(order[self.shard_pos])
            if self._samples is None:
                if self.view_counts[shard] == 0 or not self._load(shard):
                    self.shard_pos += 1
                    self.sample_pos = 0
                    continue
            if self.sample_pos >= self._perm.size:
                self._samples = self._perm = None
                self.shard_pos += 1
                self.sample_pos = 0
                continue
            view, groups = self._samples
            try:
                sample = self._decode(view, groups[int(self._perm[self.sample_pos])])
            except ShardCorrupted as e:  # skip the rest of this shard
                self._samples = self._perm = None
                self.shard_pos += 1
                self.sample_pos = 0
                self._corrupt(e)
                continue
            self._failures = 0
            self.sample_pos += 1
            if self.sample_pos >= self._perm.size:  # shard done: a state saved now points past it
                self._samples = self._perm = None
                self.shard_pos += 1
                self.sample_pos = 0
            return sample
        return None


class _Context:
    def __init__(self, config: LoaderConfig, layout: VocabLayout, sources: list[_Source], signature: str) -> None:
        self.config = config
        self.layout = layout
        self.sources = sources
        self.signature = signature
        self.ids = layout_ids(layout)
        self.image_offset = layout.image.offset
        self.image_codes = layout.image.codes
        # (root, shard name, sha256) -> (bytes, sample index); see _Cursor._index. Per process.
        self.shard_index: dict[tuple[str, str, str], tuple[int, list]] = {}

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["shard_index"] = {}  # rebuilt by whoever iterates (a dataloader worker)
        return d

    def media_to_global(self, modality: int, local: np.ndarray) -> np.ndarray:
        if modality == AUDIO:
            return self.layout.audio_to_global(local)  # frame-major, first audio_levels levels
        local = np.asarray(local).reshape(-1)
        if local.size and ((local.dtype.kind != "u" and local.min() < 0) or local.max() >= self.image_codes):
            raise ValueError(f"image code out of range [0, {self.image_codes})")
        return local.astype(np.int64) + self.image_offset


# ---- one logical stream -----------------------------------------------------------------
class _Stream:
    """A deterministic, resumable iterator of rows (dicts of numpy arrays + task index)."""

    def __init__(self, ctx: _Context, stream: int) -> None:
        self.ctx = ctx
        self.stream = stream
        self.counters = _new_counters(ctx.sources)
        self.cursors = [_Cursor(s, stream, ctx, self.counters) for s in ctx.sources]
        self.packers = {
            i: TextPacker(ctx.layout, ctx.config.seq_len)
            for i, s in enumerate(ctx.sources)
            if s.kind == "tokenized" and s.modality == "text"
        }
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
        return {
            "signature": self.ctx.signature,
            "draws": self.draws,
            "rows": self.rows,
            "sources": sources,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
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
        self.counters.update(_new_counters(self.ctx.sources))
        self.counters.update({k: int(v) for k, v in d.get("counters", {}).items()})
        self._gen = None

    # -- source choice
    def _uniform(self) -> float:
        if self._gen is None or self._gen_at != self.draws:
            bg = np.random.PCG64(np.random.SeedSequence([self.ctx.config.seed, self.stream, _CHOICE_SALT]))
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
            elif source.modality == "text":
                out = self._text_row(i)
            else:
                out = self._paired_row(i)
            if out is None:  # this source just ran out (cycle=False); draw again among the others
                continue
            self.rows += 1
            return (*out, i)

    def _text_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        packer = self.packers[i]
        cursor = self.cursors[i]
        while not packer.ready():
            sample = cursor.next()
            if sample is None:
                self.counters["text_tokens_dropped"] += packer.clear()
                return None
            text = sample.get("text")
            if text is None:
                raise ShardCorrupted(f"source {self.ctx.sources[i].name!r}: sample {sample.get('__key__')} has no text")
            packer.add(text)
        tokens = packer.pop()
        return tokens, np.ones(tokens.size, dtype=bool), 0

    def _paired_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        source = self.ctx.sources[i]
        cursor = self.cursors[i]
        layout = self.ctx.layout
        seq_len = self.ctx.config.seq_len
        key, modality = _MEDIA[source.modality]
        skipped = 0
        while True:
            sample = cursor.next()
            if sample is None:
                return None
            media = sample.get(key)
            if media is None:
                raise ShardCorrupted(f"source {source.name!r}: {source.modality} sample {sample.get('__key__')} has no {key}")
            text = sample.get("text")
            if text is None:
                text = np.zeros(0, dtype=np.int64)
            media = self.ctx.media_to_global(modality, media)
            try:
                tokens, valid = paired_row(layout, source.modality, media, text, seq_len)
            except RowTooLong:
                self.counters["rows_skipped_too_long"] += 1
                skipped += 1
                if skipped > cursor.total:
                    raise ValueError(
                        f"source {source.name!r}: no {source.modality} sample of stream {self.stream} fits in "
                        f"seq_len {seq_len}; raise seq_len or filter the data"
                    ) from None
                continue
            if text.size > seq_len - media.size - 5:
                self.counters["captions_truncated"] += 1
            return tokens, valid, TASKS.index(source.modality)

    def _mixed_row(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        source = self.ctx.sources[i]
        ids = self.ctx.ids
        sample = self.cursors[i].next()
        if sample is None:
            return None
        tokens = sample.get("tokens")
        where = f"source {source.name!r} sample {sample.get('__key__')}"
        if tokens is None or tokens.ndim != 1 or tokens.size != self.ctx.config.seq_len:
            raise ShardCorrupted(f"{where}: mixed rows need 1-D tokens of length {self.ctx.config.seq_len}")
        tokens = tokens.astype(np.int64)
        if tokens.min() < 0 or tokens.max() >= ids.modality_lut.size:
            raise ShardCorrupted(f"{where}: id outside the vocabulary [0, {ids.modality_lut.size})")
        task = int(tokens[0]) - ids.task[0]
        if not 0 <= task < len(TASKS):
            raise ShardCorrupted(f"{where}: row does not start with a task token")
        return tokens, tokens != ids.pad, task

    def count(self, tokens: np.ndarray, valid: np.ndarray, modality: np.ndarray, task: int, source: int) -> None:
        c = self.counters
        c[f"rows_{TASKS[task]}"] += 1
        c[f"rows_source/{self.ctx.sources[source].name}"] += 1
        per = np.bincount(modality, minlength=4).tolist()
        pads = valid.size - int(np.count_nonzero(valid))
        c["tokens_text"] += per[0] - pads  # PAD positions count as TEXT in `modality`
        c["tokens_image"] += per[1]
        c["tokens_audio"] += per[2]
        c["tokens_task"] += per[3]
        c["pad_tokens"] += pads


# ---- the dataset ------------------------------------------------------------------------
def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class TrimodalDataset(IterableDataset):
    """Rows of length ``seq_len`` from tokenized and/or mixed roots; see the module docstring.

    Yields dicts of tensors: ``tokens`` int64[L] (global ids), ``modality`` int64[L]
    (TEXT/IMAGE/AUDIO/TASK, PAD counted as TEXT), ``valid`` bool[L] (False on PAD) and ``task``
    int64 scalar (index in ``TASKS``: 0 text, 1 image_text, 2 audio_text).

    ``rank``/``world_size`` default to ``torch.distributed`` when it is initialised, else 0/1.
    Each ``iter()`` starts from the state last loaded (``load_state_dict`` /
    ``load_stream_states``), or else from the beginning.
    """

    def __init__(
        self,
        config: LoaderConfig,
        layout: VocabLayout,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world_size = dist.get_world_size() if world_size is None else world_size
            else:
                rank = 0 if rank is None else rank
                world_size = 1 if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} / world_size {world_size}")
        if config.num_streams % world_size:
            raise ValueError(
                f"num_streams={config.num_streams} is not divisible by world_size={world_size}: every rank must "
                f"own the same number of logical streams; choose num_streams as a multiple of the world sizes you use"
            )
        self.config = config
        self.layout = layout
        self.rank = rank
        self.world_size = world_size
        self.sources = _resolve_sources(config, layout)
        self.signature = _signature(config, self.sources)
        self._ctx = _Context(config, layout, self.sources, self.signature)
        self._pending: dict[str, Any] | None = None
        self._streams: dict[int, _Stream] | None = None
        self._owned: list[int] = []
        self._owner: tuple[int, int] | None = None
        self._rr = 0
        self._fresh = False

    # -- ownership
    def rank_streams(self) -> list[int]:
        """Streams owned by this rank."""
        return [s for s in range(self.config.num_streams) if s % self.world_size == self.rank]

    def owned_streams(self, worker: int | None = None, num_workers: int | None = None) -> list[int]:
        """Streams owned by a dataloader worker of this rank (default: the calling one)."""
        if worker is None or num_workers is None:
            worker, num_workers = _worker()
        mine = self.rank_streams()
        if len(mine) % num_workers:
            raise ValueError(
                f"rank {self.rank} owns {len(mine)} streams (num_streams={self.config.num_streams}, "
                f"world_size={self.world_size}), not divisible among num_workers={num_workers} dataloader workers"
            )
        return mine[worker::num_workers]

    def check_num_workers(self, num_workers: int) -> None:
        """Raise ``ValueError`` now if ``num_workers`` workers cannot split this rank's streams."""
        self.owned_streams(0, max(1, num_workers))

    # -- streams
    def _live_state(self) -> dict[str, Any]:
        return {
            "streams": {str(s): st.state_dict() for s, st in self._streams.items()},
            "owned": list(self._owned),
            "rr": self._rr,
        }

    def _check_owner(self) -> None:
        """Streams built in another process or worker (e.g. inherited through fork by a
        dataloader worker) are handed over as a pending state, so each worker picks its own."""
        if self._streams is not None and self._owner != _worker():
            self._pending = self._live_state()
            self._streams = None

    def _materialise(self) -> None:
        owned = self.owned_streams()
        streams = {s: _Stream(self._ctx, s) for s in owned}
        rr = 0
        pending = self._pending
        if pending is not None:
            states = pending["streams"]
            missing = [s for s in owned if str(s) not in states]
            if missing:
                raise ValueError(
                    f"loaded loader state has no state for streams {missing}: pass the union of all ranks' "
                    f"stream states (load_stream_states) when the world size or worker count changed"
                )
            for s in owned:
                streams[s].load_state_dict(states[str(s)])
            if pending.get("owned") == owned:
                rr = int(pending.get("rr", 0)) % len(owned)
        self._streams = streams
        self._owned = owned
        self._owner = _worker()
        self._rr = rr
        self._fresh = True

    def __iter__(self):
        self._check_owner()
        if self._streams is None or not self._fresh:
            self._materialise()
        self._fresh = False
        self._pending = None
        return self._generate(self._streams, self._owned)

    def _generate(self, streams: dict[int, _Stream], owned: list[int]):
        lut = self._ctx.ids.modality_lut
        order = [streams[s] for s in owned]
        done = [False] * len(order)
        n = len(order)
        while not all(done):
            k = self._rr
            self._rr = (k + 1) % n
            if done[k]:
                continue
            st = order[k]
            out = st.next_row()
            if out is None:
                done[k] = True
                continue
            tokens, valid, task, source = out
            modality = lut[tokens]
            st.count(tokens, valid, modality, task, source)
            yield row_dict(tokens, valid, modality, task)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        """This worker's streams and round-robin position (what ``StatefulDataLoader`` saves)."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        worker, num_workers = _worker()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "num_streams": self.config.num_streams,
            "rank": self.rank,
            "world_size": self.world_size,
            "worker": worker,
            "num_workers": num_workers,
            "owned": list(self._owned),
            "rr": self._rr,
            "streams": {str(s): st.state_dict() for s, st in self._streams.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; applied by the next ``iter()``."""
        _check_state(state, self.config.num_streams)
        self._pending = {"streams": dict(state["streams"]), "owned": list(state.get("owned", [])), "rr": state.get("rr", 0)}
        self._streams = None

    def stream_states(self) -> dict[int, dict[str, Any]]:
        """``stream → state`` for the streams this process iterates (gather the union over
        ranks). Under dataloader workers the live streams are in the workers: use
        :func:`stream_states_from_loader_state` on ``StatefulDataLoader.state_dict()`` instead."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        return {s: st.state_dict() for s, st in self._streams.items()}

    def load_stream_states(self, states: dict[int | str, dict[str, Any]]) -> None:
        """Load the union of stream states (any earlier world size / worker count); each rank
        and worker picks its own streams when iterated. Must cover every stream it will own."""
        self._pending = {"streams": {str(k): v for k, v in states.items()}, "owned": None, "rr": 0}
        self._streams = None

    def counters(self) -> dict[str, int]:
        """Counters of the streams this process holds (rows per task and source, tokens per
        modality, padding, skipped rows/shards…). Under dataloader workers use
        :func:`counters_from_loader_state` on the loader's state instead."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        return _sum_counters(st.counters for st in self._streams.values())

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into dataloader workers: live streams (and their shard buffers) stay here;
        # their state travels as a pending union state so that each worker picks its streams.
        d = self.__dict__.copy()
        if self._streams is not None:
            d["_pending"] = self._live_state()
        d["_streams"] = None
        d["_fresh"] = False
        return d


def _check_state(state: dict[str, Any], num_streams: int) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a trimodal loader state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported loader state version {state.get('version')!r}")
    if state.get("num_streams") != num_streams:
        raise ValueError(f"loader state has num_streams={state.get('num_streams')}, config has {num_streams}")


def _sum_counters(items) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in items:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def stream_states_from_loader_state(state: Any) -> dict[int, dict[str, Any]]:
    """Every stream state found in a (possibly nested) state dict: a ``StatefulDataLoader``
    state with any number of workers, a dataset ``state_dict()``, or a list of them (one per rank)."""
    found: dict[int, dict[str, Any]] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if x.get("format") == STATE_FORMAT and isinstance(x.get("streams"), dict):
                for s, v in x["streams"].items():
                    found[int(s)] = v
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return found


def counters_from_stream_states(states: dict[Any, dict[str, Any]]) -> dict[str, int]:
    return _sum_counters(v.get("counters", {}) for v in states.values())


def counters_from_loader_state(state: Any) -> dict[str, int]:
    """Counters summed over the streams of a ``StatefulDataLoader`` (or dataset) state."""
    return counters_from_stream_states(stream_states_from_loader_state(state))


__all__ = [
    "LoaderConfig",
    "SourceConfig",
    "TrimodalDataset",
    "ShardCorrupted",
    "RowTooLong",
    "stream_states_from_loader_state",
    "counters_from_loader_state",
    "counters_from_stream_states",
]
