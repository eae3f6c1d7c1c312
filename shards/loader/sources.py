"""What the loader reads: its config, the resolved sources and their mixing weights.

A source is one dataset root (its manifest); the loader reads only the shards of one split
(``train`` by default). Weights: either every source has a ``weight`` (normalised over the
sources), or none has, and then each task present gets ``task_weights[task]`` (default: equal, ⅓
each with three tasks [paper]), split equally among that task's sources. The task of a source is
its manifest's ``modality`` (``text``, ``image_text``, ``audio_text``; a mixed root counts as its
own kind). ``docs/loader.md`` describes streams, ownership and resume.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trimodal.config import option
from trimodal.shards.manifest import Manifest, ShardInfo, merged_tokenizers
from trimodal.shards.reader import VERIFY_MODES
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.vocab import TASKS, VocabLayout

OVERFLOW_MODES = ("skip", "crop", "error")


@dataclass
class SourceConfig:
    """One dataset root. ``weight=None`` → the default split (see :class:`LoaderConfig`);
    ``name`` defaults to the root's last path component and must be unique."""

    root: str
    weight: float | None = None
    name: str | None = None


@dataclass
class LoaderConfig:
    """What to read and how to assemble rows of ``seq_len`` positions."""

    sources: list[SourceConfig] = option(default_factory=list, help="dataset roots (and optional weights)")
    seq_len: int = option(3256, help="row length L")
    seed: int | None = option(None, help="shuffle/mixing seed (null: the run's seed)")
    num_streams: int = option(8, help="logical streams, fixed for a run; a multiple of every world size used")
    num_workers: int = option(0, help="StatefulDataLoader worker processes per rank (0: load in the training process)")
    split: str = option("train", help="which split of each dataset to read")
    verify: Literal["none", "size", "xxh3", "sha256"] = option("xxh3", help="check each shard against the manifest before use: size + xxh3 content hash (catches a rewrite before its samples are used), size only, sha256, or none")
    on_corrupt: Literal["error", "skip"] = option("error", help="a damaged shard stops the run, or is skipped and counted")
    cycle: bool = option(True, help="restart every source when it runs out (training); false: one pass")
    task_weights: dict[str, float] | None = option(None, help="mixing weight per task (default: equal)")
    audio_overflow: Literal["skip", "crop", "error"] = option(
        "crop", help="an audio clip longer than the row: cut to the frames that fit, skip it, or stop")
    pack_paired: bool = option(False, help="several paired samples (and a text filler) share one row; attention per sample")
    pack_lookahead: int = option(8, help="packed rows: samples held back to fill rows first-fit")
    document_attention: bool = option(False, help="text: attention restricted to each document (else across the row)")

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if not isinstance(self.num_streams, int) or self.num_streams < 1:
            raise ValueError(f"num_streams must be a positive integer, got {self.num_streams!r}")
        from trimodal.shards.rows import check_seq_len

        check_seq_len(self.seq_len, "data.seq_len")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {self.verify!r}")
        if self.pack_lookahead < 1:
            raise ValueError(f"pack_lookahead must be >= 1, got {self.pack_lookahead}")
        if self.audio_overflow not in OVERFLOW_MODES:
            raise ValueError(f"audio_overflow must be one of {OVERFLOW_MODES}, got {self.audio_overflow!r}")


@dataclass
class Source:
    """A resolved source: its manifest, the shards of the split read, weight and seed salt."""

    name: str
    root: str
    manifest: Manifest
    task: str  # "text" | "image_text" | "audio_text" | the kind of a mixed root
    kind: str  # "tokenized" | "mixed"
    weight: float
    salt: int  # stable per-source seed component
    shards: list[ShardInfo] = field(default_factory=list)


def default_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or root


def load_manifests(config: LoaderConfig) -> dict[str, Manifest]:
    """Each source's manifest, loaded once (``root → manifest``, in config order)."""
    from trimodal.shards.lock import check_readable

    if not config.sources:
        raise ValueError("data.sources is empty: give at least one dataset root")
    out = {}
    for sc in config.sources:
        m = Manifest.load(sc.root)
        check_readable(sc.root, m.run_id)
        out[sc.root] = m
    return out


def check_tokenizers(layout: VocabLayout, m: Manifest, where: str) -> None:
    """Refuse a dataset whose ids mean something else under ``layout``: another tokenizer
    (fingerprints, naming both), a larger vocabulary, or a mixed root with another layout."""
    if m.layout is not None:
        other = VocabLayout.from_dict(m.layout)
        if other != layout:
            raise ValueError(f"{where}: vocabulary layout {other.to_dict()} differs from the run's {layout.to_dict()}")
    for name, info in m.tokenizers.items():
        want = layout.fingerprints.get(name)
        if want is not None and want != info.fingerprint:
            raise ValueError(
                f"{where}: {name} tokenizer fingerprint is {info.fingerprint} ({info.kind}), the run's is {want}: "
                "these ids come from a different tokenizer"
            )
        codes = {"text": layout.text_codes, "image": layout.image_codes, "audio": layout.audio_codes}.get(name)
        if codes is not None and info.vocab_size > codes:
            raise ValueError(
                f"{where}: {name} tokenizer has vocab_size {info.vocab_size} but the layout has only {codes} "
                f"{name} codes: these shards were made with a different tokenizer"
            )


def check_image_fits(m: Manifest, seq_len: int, where: str) -> None:
    """Refuse an image-text dataset whose images cannot fit a row, naming the tokens an image
    takes and the L it needs (every image of a dataset has the manifest's grid, so this is exact
    and the same for the train and the val split, whichever is read first)."""
    from trimodal.shards.rows import paired_length

    info = m.tokenizers.get("image")
    if info is None or not info.grid:
        return
    codes = int(info.grid[0]) * int(info.grid[1])
    need = paired_length(codes, 0)
    if need > seq_len:
        size = f" from {info.image_size}-px images" if info.image_size else ""
        raise ValueError(
            f"{where}: each image is {codes:,} tokens (a {info.grid[0]}x{info.grid[1]} grid{size}), a row needs "
            f"data.seq_len >= {need:,} ({codes:,} + {need - codes} framing tokens) and data.seq_len is {seq_len}: "
            f"raise data.seq_len (and model.max_seq_len), or tokenize the images at a smaller --image-size")


def tokenizers_of(manifests: dict[str, Manifest]) -> dict[str, TokenizerInfo]:
    """The tokenizers of a run's datasets (one per modality; differing ones are refused)."""
    return merged_tokenizers(manifests)


def resolve_sources(config: LoaderConfig, layout: VocabLayout, manifests: dict[str, Manifest] | None = None) -> list[Source]:
    """Check every source against ``layout`` and compute normalised mixing weights."""
    manifests = manifests if manifests is not None else load_manifests(config)
    merged_tokenizers(manifests)
    names: list[str] = []
    tasks: list[str] = []
    for sc in config.sources:
        name = sc.name or default_name(sc.root)
        if name in names:
            raise ValueError(f"two sources are named {name!r}; give them distinct SourceConfig.name values")
        names.append(name)
        m = manifests[sc.root]
        where = f"source {name!r} ({sc.root})"
        if m.kind not in ("tokenized", "mixed"):
            raise ValueError(f"{where}: unknown manifest kind {m.kind!r}")
        if m.kind == "tokenized" and m.modality not in TASKS:
            raise ValueError(f"{where}: unknown task {m.modality!r}; expected one of {TASKS}")
        if m.kind == "mixed":
            if m.layout is None:
                raise ValueError(f"{where}: mixed manifest without a layout")
            if m.seq_len != config.seq_len:
                raise ValueError(f"{where}: rows were packed to seq_len {m.seq_len}, the loader wants {config.seq_len}")
            if (m.config or {}).get("pack_paired") and not config.pack_paired:
                raise ValueError(f"{where}: its rows hold several samples each (pipeline mix --pack-paired); set "
                                 f"data.pack_paired=true so attention, positions and t follow the samples "
                                 f"(evaluation reads unpacked rows: give it the tokenized inputs' val splits)")
        check_tokenizers(layout, m, where)
        if m.kind == "tokenized" and m.modality == "image_text":
            check_image_fits(m, config.seq_len, where)
        if config.split not in m.splits() and m.shards:
            raise ValueError(f"{where} has no {config.split!r} split (it has {m.splits()})")
        tasks.append(m.modality)

    given = [sc.weight is not None for sc in config.sources]
    if any(given) and not all(given):
        raise ValueError("give a weight to every source or to none (then task defaults apply)")
    if all(given):
        if config.task_weights is not None:
            raise ValueError("task_weights and per-source weights are exclusive")
        weights = [float(sc.weight) for sc in config.sources]
    else:
        present = list(dict.fromkeys(tasks))
        tw = config.task_weights if config.task_weights is not None else {t: 1.0 / len(present) for t in present}
        unknown = set(tw) - set(present)
        if unknown:
            raise ValueError(f"task_weights names tasks with no source: {sorted(unknown)} (present: {present})")
        weights = [float(tw.get(t, 0.0)) / tasks.count(t) for t in tasks]
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixing weights must be finite, >= 0 and not all 0, got {weights}")
    total = sum(weights)
    return [
        Source(name=name, root=sc.root, manifest=manifests[sc.root], task=task, kind=manifests[sc.root].kind,
               weight=w / total, salt=zlib.crc32(name.encode()), shards=manifests[sc.root].split_shards(config.split))
        for name, sc, task, w in zip(names, config.sources, tasks, weights)
    ]


def signature(config: LoaderConfig, seed: int, sources: list[Source]) -> str:
    """What a stream state is only valid for: seed, stream count, sources and their shards."""
    parts = [str(seed), str(config.num_streams)]
    for s in sorted(sources, key=lambda s: s.name):
        parts.append(f"{s.name}:{len(s.shards)}:{sum(x.samples for x in s.shards)}")
    return f"{zlib.crc32('|'.join(parts).encode()):08x}"


def audio_overflow_estimate(source: Source, seq_len: int, levels: int, max_shards: int = 4) -> tuple[int, int]:
    """(clips whose row would be longer than ``seq_len``, clips looked at) over the first
    ``max_shards`` shards of an audio-text source: an estimate for a warning before training
    (``trimodal shards stats --seq-len L`` counts every clip)."""
    from trimodal import storage
    from trimodal.shards.reader import decode_sample, index_shard, read_shard
    from trimodal.shards.rows import paired_length

    over = seen = 0
    for info in source.shards[:max_shards]:
        data = read_shard(source.root, info, "none")
        where = storage.join(source.root, info.name)
        for entry in index_shard(data, where):
            s = decode_sample(data, entry, where, want_json=False)
            audio, text = s.get("audio"), s.get("text")
            if audio is None:
                continue
            frames = audio.shape[-1] if audio.ndim == 2 else audio.size
            seen += 1
            over += paired_length(frames * levels, 0 if text is None else text.size) > seq_len
    return over, seen
