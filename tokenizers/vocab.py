"""The unified vocabulary: disjoint id blocks per modality, their special tokens and task tokens.

One object describes the whole id space; the pipeline, loader, trainer and sampler all read it,
and it is serialised into manifests and checkpoints so that ids never silently change meaning.

Layout (offsets grow in this order; the paper fixes the counts, not the order)::

    text  block: [sentencepiece ids 0..T-1] BOS_text EOS_text MASK_text PAD
    image block: [codebook 0..I-1]          BOS_image EOS_image MASK_image
    audio block: [codes 0..A*levels-1]      BOS_audio EOS_audio MASK_audio
    task  block: TASK_text TASK_image_text TASK_audio_text

Inside every block the *predictable* ids (what the model may output at a position of that
modality) are the codes plus BOS and EOS; MASK, PAD and task tokens are never targets.
With the paper's sizes (T=100,277, I=16,384, A=1,024 shared by all levels) the total is 117,698.
``docs/vocabulary.md`` describes the layout and the row formats built on it.

Names: a *modality* is one of the three token kinds (``MODALITIES``: text, image, audio); a
*task* is one of the three row kinds (``TASKS``: text, image_text, audio_text), named after what
a row holds. Manifests and the loader speak of tasks; the vocabulary and the model of modalities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from trimodal.config import option

if TYPE_CHECKING:
    from trimodal.tokenizers.base import TokenizerInfo

TEXT, IMAGE, AUDIO, TASK = 0, 1, 2, 3
MODALITIES = ("text", "image", "audio")
MODALITY_IDS = {"text": TEXT, "image": IMAGE, "audio": AUDIO}
TASKS = ("text", "image_text", "audio_text")
# Which media modality a task carries (text rows carry only text).
TASK_MEDIA = {"text": TEXT, "image_text": IMAGE, "audio_text": AUDIO}


@dataclass(frozen=True)
class Block:
    """A contiguous id range: ``codes`` content ids, then BOS, EOS, MASK (and PAD for text)."""

    name: str
    offset: int
    codes: int
    has_pad: bool = False

    @property
    def bos(self) -> int:
        return self.offset + self.codes

    @property
    def eos(self) -> int:
        return self.offset + self.codes + 1

    @property
    def mask(self) -> int:
        return self.offset + self.codes + 2

    @property
    def pad(self) -> int:
        if not self.has_pad:
            raise AttributeError(f"block {self.name} has no PAD token")
        return self.offset + self.codes + 3

    @property
    def size(self) -> int:
        """All ids of the block, specials included."""
        return self.codes + (4 if self.has_pad else 3)

    @property
    def predictable(self) -> int:
        """Number of ids a position of this modality may be predicted as: codes, BOS, EOS."""
        return self.codes + 2

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class BlockDefaults:
    """Block sizes for modalities that no dataset of a run brings a tokenizer for (a text-only
    run still has image and audio blocks, so its checkpoint can be trained on later)."""

    image_codes: int = option(16384, help="image block size when no dataset brings an image tokenizer")
    audio_codes: int = option(1024, help="audio codebook size when no dataset brings an audio tokenizer")
    audio_levels: int = option(4, help="audio codebooks kept per frame, when no dataset says")
    audio_shared_block: bool = option(True, help="all audio levels share one id block (else one block per level)")


@dataclass(frozen=True)
class VocabLayout:
    """Sizes and fingerprints of the three tokenizers; every id offset derives from them.

    ``audio_levels`` is the number of residual codebooks kept (k). With ``audio_shared_block``
    all levels share one ``audio_codes``-id range (the paper's choice: the level is known only
    from its position); otherwise level j uses ids ``j*audio_codes .. (j+1)*audio_codes-1``.
    """

    text_codes: int
    image_codes: int = 16384
    audio_codes: int = 1024
    audio_levels: int = 4
    audio_shared_block: bool = True
    fingerprints: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("text_codes", "image_codes", "audio_codes", "audio_levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VocabLayout.{name} must be a positive integer, got {value!r}")

    # ---- blocks -------------------------------------------------------------------------
    @cached_property
    def text(self) -> Block:
        return Block("text", 0, self.text_codes, has_pad=True)

    @cached_property
    def image(self) -> Block:
        return Block("image", self.text.end, self.image_codes)

    @cached_property
    def audio(self) -> Block:
        codes = self.audio_codes if self.audio_shared_block else self.audio_codes * self.audio_levels
        return Block("audio", self.image.end, codes)

    @cached_property
    def blocks(self) -> tuple[Block, Block, Block]:
        """Blocks indexed by modality id (TEXT, IMAGE, AUDIO)."""
        return (self.text, self.image, self.audio)

    @cached_property
    def task_offset(self) -> int:
        return self.audio.end

    def task_token(self, task: str) -> int:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return self.task_offset + TASKS.index(task)

    @property
    def pad(self) -> int:
        return self.text.pad

    @cached_property
    def vocab_size(self) -> int:
        return self.task_offset + len(TASKS)

    # ---- id arithmetic ------------------------------------------------------------------
    def to_global(self, modality: int, local: np.ndarray) -> np.ndarray:
        """Modality-local codes → global ids. Audio codes come as a (levels, frames) matrix
        and are flattened frame-major (f0c0 f0c1 … f1c0 …)."""
        if modality == AUDIO:
            return self.audio_to_global(local)
        local = np.asarray(local, dtype=np.int64).reshape(-1)
        block = self.blocks[modality]
        if local.size and (local.min() < 0 or local.max() >= block.codes):
            raise ValueError(f"{block.name} code out of range [0, {block.codes})")
        return local + block.offset

    def audio_to_global(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2:
            raise ValueError(f"audio codes must be (levels, frames), got shape {codes.shape}")
        if codes.shape[0] < self.audio_levels:
            raise ValueError(f"audio codes have {codes.shape[0]} levels, layout needs {self.audio_levels}")
        codes = codes[: self.audio_levels]
        if codes.size and (codes.min() < 0 or codes.max() >= self.audio_codes):
            raise ValueError(f"audio code out of range [0, {self.audio_codes})")
        if not self.audio_shared_block:
            codes = codes + (np.arange(self.audio_levels, dtype=np.int64) * self.audio_codes)[:, None]
        return codes.T.reshape(-1) + self.audio.offset

    def audio_from_global(self, ids: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`audio_to_global`; a trailing partial frame is dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        frames = ids.size // self.audio_levels
        codes = (ids[: frames * self.audio_levels] - self.audio.offset).reshape(frames, self.audio_levels).T
        if not self.audio_shared_block:
            codes = codes - (np.arange(self.audio_levels, dtype=np.int64) * self.audio_codes)[:, None]
        return np.ascontiguousarray(codes)

    def modality_of(self, ids: np.ndarray) -> np.ndarray:
        """Per-id modality (TEXT/IMAGE/AUDIO, TASK for task tokens); PAD counts as TEXT."""
        ids = np.asarray(ids)
        out = np.full(ids.shape, TASK, dtype=np.int8)
        for m, block in enumerate(self.blocks):
            out[(ids >= block.offset) & (ids < block.end)] = m
        if (ids < 0).any() or (ids >= self.vocab_size).any():
            raise ValueError(f"id outside vocabulary [0, {self.vocab_size})")
        return out

    # ---- construction and serialisation -------------------------------------------------
    @classmethod
    def from_tokenizers(cls, tokenizers: Mapping[str, "TokenizerInfo"], defaults: BlockDefaults | None = None) -> "VocabLayout":
        """The one way a layout is built from tokenizers: text codes = the text tokenizer's
        vocabulary, image codes = the image codebook, audio codes / levels = the codec's codebook
        size and kept levels; modalities without a tokenizer take ``defaults``. The fingerprints
        are kept so that data from other tokenizers is refused."""
        d = defaults or BlockDefaults()
        text = tokenizers.get("text")
        if text is None:
            raise ValueError("no text tokenizer: every row kind carries text, so a layout needs one")
        image, audio = tokenizers.get("image"), tokenizers.get("audio")
        return cls(
            text_codes=text.vocab_size,
            image_codes=image.vocab_size if image else d.image_codes,
            audio_codes=audio.vocab_size if audio else d.audio_codes,
            audio_levels=(audio.levels or d.audio_levels) if audio else d.audio_levels,
            audio_shared_block=d.audio_shared_block,
            fingerprints={k: v.fingerprint for k, v in sorted(tokenizers.items())},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vocab_size"] = self.vocab_size
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VocabLayout":
        d = dict(d)
        expected = d.pop("vocab_size", None)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown VocabLayout keys: {sorted(unknown)}")
        layout = cls(**d)
        if expected is not None and expected != layout.vocab_size:
            raise ValueError(f"serialised vocab_size {expected} != derived {layout.vocab_size}")
        return layout

    def check_compatible(self, other: "VocabLayout", what: str = "data") -> None:
        """Refuse to mix ids from different tokenizers or layouts, with a clear message."""
        if self != other:
            raise ValueError(f"vocabulary layout of {what} differs: {other.to_dict()} vs {self.to_dict()}")
        for key in set(self.fingerprints) & set(other.fingerprints):
            if self.fingerprints[key] != other.fingerprints[key]:
                raise ValueError(
                    f"{key} tokenizer fingerprint of {what} is {other.fingerprints[key]}, "
                    f"expected {self.fingerprints[key]}: these ids come from a different tokenizer"
                )
