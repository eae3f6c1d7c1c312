"""Synthetic tri-modal datasets with learnable structure, written directly as tokenized shards.

Why: the paper's findings are about held-out ELBO differences between runs; at CPU scale we need
data where a tiny model's ELBO moves measurably within a few hundred steps, where captions
really describe their images and transcripts their audio, and where nothing has to be
downloaded or tokenized. Three dataset roots are written (each with ``train`` and ``val``
shards, the split chosen per record id by :func:`trimodal.pipelines.sink.split_of`):

- ``text``: documents from a topic-dependent first-order Markov chain over the first 256 text
  ids (8 topics, each with its own 48-id sub-vocabulary and 4 weighted successors per id);
- ``image_text``: 8×8 code grids of one object (colour, shape, size, quadrant) on a background
  texture, with a caption naming exactly those attributes (two word orders), 3 % code noise;
- ``audio_text``: a transcript of 3–7 lexicon words (a Markov chain over 48 words) and its
  2-level code matrix: each word is a fixed phone sequence, each phone lasts 1–2 frames, level 1
  is a function of the phone and a per-clip speaker, silence frames may separate words.

The "world" (chains, lexicon, shapes) is drawn from ``world_seed``; the samples from ``seed``.
Run as ``python -m trimodal.experiments.synthetic --out DIR`` (from a folder outside the
repository root) or call :func:`write_synthetic`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from trimodal.config import option

TEXT_VOCAB = 384  # 0..255 document words, 256..319 caption words, 320..383 transcript words
IMAGE_VOCAB = 256
AUDIO_VOCAB = 128
AUDIO_LEVELS = 2
GRID = (8, 8)
TASKS = ("text", "image_text", "audio_text")

# caption words (text ids)
_A, _SIZE0, _COLOR0, _SHAPE0, _AT, _POS0, _ON, _TEX0, _WITH, _IMAGE = 256, 257, 259, 267, 273, 274, 278, 279, 283, 284
N_COLORS, N_SHAPES, N_POSITIONS, N_TEXTURES = 8, 6, 4, 4
_LEXICON0, N_WORDS, N_PHONES = 320, 48, 63  # phone 0 is silence; phones 1..63


@dataclass
class SyntheticConfig:
    out: str = option("", help="folder to write text/, image_text/ and audio_text/ under")
    seed: int = option(0, help="seed of the samples")
    world_seed: int = option(1234, help="seed of the structure (chains, lexicon, shapes)")
    text_docs: int = option(12000, help="text documents")
    image_samples: int = option(6000, help="image-caption samples")
    audio_samples: int = option(6000, help="audio-transcript samples")
    val_fraction: float = option(0.05, help="share of record ids in the val split")
    samples_per_shard: int = option(2000, help="samples per shard")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("text_docs", "image_samples", "audio_samples", "samples_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ---- the world ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """The fixed structure every sample is drawn from."""

    topic_vocab: np.ndarray  # [topics, 48] text ids
    successors: np.ndarray  # [topics, 48, 4] indices into the topic vocabulary
    word_next: np.ndarray  # [words, 3] lexicon successors
    phones: tuple[np.ndarray, ...]  # per word, 2-4 phones in 1..63
    shape_masks: np.ndarray  # [shapes, 4, 4] bool: which cells of the box are the object


SUCCESSOR_P = np.array([0.55, 0.25, 0.15, 0.05])
WORD_NEXT_P = np.array([0.6, 0.3, 0.1])


def make_world(seed: int) -> World:
    rng = np.random.default_rng(seed)
    topics, per_topic = 8, 48
    topic_vocab = np.stack([rng.choice(256, per_topic, replace=False) for _ in range(topics)])
    successors = np.stack([np.stack([rng.choice(per_topic, 4, replace=False) for _ in range(per_topic)])
                           for _ in range(topics)])
    word_next = np.stack([rng.choice(N_WORDS, 3, replace=False) for _ in range(N_WORDS)])
    phones = tuple(rng.integers(1, N_PHONES + 1, rng.integers(2, 5)) for _ in range(N_WORDS))
    i, j = np.mgrid[0:4, 0:4]
    masks = np.stack([
        np.ones((4, 4), bool),  # square
        ~(((i == 0) | (i == 3)) & ((j == 0) | (j == 3))),  # circle: a square without corners
        j <= i,  # triangle
        (i == 1) | (i == 2) | (j == 1) | (j == 2),  # cross
        (i == 1) | (i == 2),  # bar
        (i == 0) | (i == 3) | (j == 0) | (j == 3),  # ring
    ])
    return World(topic_vocab, successors, word_next, phones, masks)


# ---- samples (pure functions of a world and a generator) -------------------------------------------
def text_doc(world: World, rng: np.random.Generator) -> np.ndarray:
    """One Markov-chain document of 16–64 ids."""
    topic = int(rng.integers(len(world.topic_vocab)))
    n = int(rng.integers(16, 65))
    idx = np.empty(n, dtype=np.int64)
    idx[0] = rng.integers(world.topic_vocab.shape[1])
    choices = rng.choice(4, n, p=SUCCESSOR_P)
    for k in range(1, n):
        idx[k] = world.successors[topic, idx[k - 1], choices[k]]
    return world.topic_vocab[topic, idx].astype(np.uint16)


def image_caption(world: World, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(codes [8, 8] uint16, caption ids uint16, attributes)."""
    c, s, p, z, b = (int(rng.integers(k)) for k in (N_COLORS, N_SHAPES, N_POSITIONS, 2, N_TEXTURES))
    i, j = np.mgrid[0:GRID[0], 0:GRID[1]]
    pattern = [np.zeros_like(i), i % 2, (i + j) % 2, 2 * ((i % 2 == 0) & (j % 2 == 0))][b]
    codes = 4 * b + pattern
    side = 4 if z else 3
    r0 = 4 * (p // 2) + int(rng.integers(0, 5 - side))
    c0 = 4 * (p % 2) + int(rng.integers(0, 5 - side))
    mask = world.shape_masks[s]
    if side == 3:  # the 3×3 version of a shape: its 4×4 mask without the third row and column
        mask = mask[[0, 1, 3]][:, [0, 1, 3]]
    edge = np.zeros((side, side), bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    obj = 16 + 2 * (c * N_SHAPES + s) + edge.astype(np.int64)
    box = codes[r0:r0 + side, c0:c0 + side]
    box[mask] = obj[mask]
    noise = rng.random(GRID) < 0.03
    codes[noise] = rng.integers(0, IMAGE_VOCAB, int(noise.sum()))
    size, color, shape, pos, tex = _SIZE0 + z, _COLOR0 + c, _SHAPE0 + s, _POS0 + p, _TEX0 + b
    if rng.random() < 0.5:
        caption = [_A, size, color, shape, _AT, pos, _ON, tex]
    else:
        caption = [tex, _IMAGE, _WITH, _A, size, color, shape, _AT, pos]
    return codes.astype(np.uint16), np.array(caption, dtype=np.uint16), {"color": c, "shape": s, "position": p,
                                                                         "size": z, "texture": b}


def audio_transcript(world: World, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(codes [2, frames] uint16, transcript ids uint16)."""
    n = int(rng.integers(3, 8))
    words = [int(rng.integers(N_WORDS))]
    for _ in range(n - 1):
        words.append(int(world.word_next[words[-1], rng.choice(3, p=WORD_NEXT_P)]))
    speaker = int(rng.integers(4))
    phones: list[int] = []
    for k, w in enumerate(words):
        if k and rng.random() < 0.5:
            phones.append(0)  # silence between words
        for ph in world.phones[w]:
            phones.extend([int(ph)] * int(rng.integers(1, 3)))
    level0 = np.array(phones, dtype=np.int64)
    level1 = 64 + (level0 * 5 + speaker * 13) % 64
    return np.stack([level0, level1]).astype(np.uint16), (np.array(words) + _LEXICON0).astype(np.uint16)


# ---- writing -----------------------------------------------------------------------------------
def tokenizer_infos(cfg: SyntheticConfig) -> dict[str, Any]:
    from trimodal.tokenizers.base import TokenizerInfo, fingerprint_of

    world = {"world_seed": cfg.world_seed, "version": 1}
    return {
        "text": TokenizerInfo("text", "synthetic", fingerprint_of("synthetic-text", world), TEXT_VOCAB),
        "image": TokenizerInfo("image", "synthetic", fingerprint_of("synthetic-image", world), IMAGE_VOCAB,
                               grid=GRID, image_size=GRID[0]),
        "audio": TokenizerInfo("audio", "synthetic", fingerprint_of("synthetic-audio", world), AUDIO_VOCAB,
                               levels=AUDIO_LEVELS, codebooks=AUDIO_LEVELS),
    }


def _samples(task: str, n: int, world: World, seed: int):
    """``(record id, meta, arrays)`` of one task, in id order."""
    rng = np.random.default_rng([seed, TASKS.index(task)])
    for i in range(n):
        rid = f"{task}:{i}"
        if task == "text":
            arrays = {"text": text_doc(world, rng)}
            lengths = {"text": int(arrays["text"].size)}
        elif task == "image_text":
            codes, caption, _ = image_caption(world, rng)
            arrays = {"image": codes, "text": caption}
            lengths = {"image": int(codes.size), "text": int(caption.size)}
        else:
            codes, words = audio_transcript(world, rng)
            arrays = {"audio": codes, "text": words}
            lengths = {"audio": int(codes.shape[1]), "text": int(words.size)}
        meta = {"id": rid, "source": "synthetic", "modality": task, "lengths": lengths, "provenance": {}}
        yield rid, meta, arrays


def write_dataset(root: str, task: str, n: int, cfg: SyntheticConfig, world: World) -> str:
    """One tokenized dataset root (train and val shards, then the manifest)."""
    from trimodal.pipelines.sink import split_of
    from trimodal.shards.format import key_from_id
    from trimodal.shards.manifest import Manifest
    from trimodal.shards.writer import write_shard

    by_split: dict[str, list] = {"train": [], "val": []}
    for rid, meta, arrays in _samples(task, n, world, cfg.seed):
        by_split[split_of(rid, cfg.val_fraction)].append((key_from_id(rid), meta, arrays))
    infos = []
    for split, samples in by_split.items():
        count = max(1, -(-len(samples) // cfg.samples_per_shard))
        prefix = "" if split == "train" else "val-"
        for k in range(count if samples else 0):
            part = samples[k * cfg.samples_per_shard:(k + 1) * cfg.samples_per_shard]
            info = write_shard(root, f"{prefix}shard-{k:05d}-of-{count:05d}.tar", part)
            infos.append(dataclasses.replace(info, split=split))
    tok = tokenizer_infos(cfg)
    needed = {"text": ["text"], "image_text": ["text", "image"], "audio_text": ["text", "audio"]}[task]
    Manifest(kind="tokenized", modality=task, tokenizers={k: tok[k] for k in needed}, shards=infos,
             counts={"read": n, "written": n, "filtered": {}, "rejected": {}},
             config={"synthetic": dataclasses.asdict(cfg)}).save(root)
    return root


def write_synthetic(cfg: SyntheticConfig) -> dict[str, str]:
    """Write the three roots under ``cfg.out``; returns ``{task: root}``."""
    from trimodal import storage

    world = make_world(cfg.world_seed)
    counts = {"text": cfg.text_docs, "image_text": cfg.image_samples, "audio_text": cfg.audio_samples}
    return {t: write_dataset(storage.join(cfg.out, t), t, counts[t], cfg, world) for t in TASKS}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trimodal.config import add_flags, build, describe, flag_values

    p = argparse.ArgumentParser(prog="python -m trimodal.experiments.synthetic", description=__doc__.splitlines()[0],
                                epilog=describe(SyntheticConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    dests = add_flags(p, SyntheticConfig)
    args = p.parse_args(argv)
    try:
        cfg = build(SyntheticConfig, None, flag_values(args, SyntheticConfig, dests), args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for task, root in write_synthetic(cfg).items():
        from trimodal.shards.manifest import Manifest

        m = Manifest.load(root)
        print(f"{task}: {root}: {m.samples} samples, splits {m.splits()}, tokens {m.tokens()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
