"""``trimodal pipeline image-text``: an image-caption corpus → tokenized WebDataset shards.

read (WebDataset tars / Parquet / folder + captions file, :mod:`trimodal.pipelines.image_readers`)
→ caption normalise + SentencePiece encode → image fetch + decode + validate + seeded preprocessing
to the tokenizer's resolution (or ``image_size``) → batched MoVQGAN encode (model loaded once per worker process through
``apache_beam.utils.shared.Shared``; fixed-size batches from ``BatchElements``) → shards +
dead-letter + manifest.

Outcomes (besides the readers' own reasons, stage ``read``):

- caption (stage ``caption``): ``empty_caption`` (filtered: nothing left after whitespace
  stripping), ``caption_too_long`` (filtered, only with ``max_caption_tokens``);
- image (stage ``image``): :func:`~trimodal.tokenizers.image_preprocess.load_image`'s reasons.
  ``too_small`` (a side under ``min_side``) is **filtered**: a valid image we chose not to keep.
  ``empty``, ``not_an_image``, ``truncated``, ``corrupt``, ``unsupported_mode`` and
  ``decompression_bomb`` (header claims more than ``max_pixels``; the pixels are never decoded)
  are **rejected**: records we cannot (or will not risk to) process. For lazily read inputs
  (folder, Parquet ``path`` rows) ``missing_file`` / ``unreadable_file`` are rejected here too.

**Determinism.** The crop/pad choice and crop box of a record come from
``record_seed(id, seed)``: a re-run gives the same pixels, hence the same codes (CPU; on GPU too
wherever the nearest codebook entry is not a near tie -- TF32 stays off unless ``allow_tf32``).
Preprocessed images travel between steps as uint8 ``[3, S, S]`` (the exact pixels
``preprocess`` produced, a quarter of the float32 size) and are mapped to [-1, 1] with
``preprocess``'s own formula just before encoding, so a sample's codes equal
``tokenizer.encode(preprocess(load_image(bytes), S, seed=record_seed(id)))`` bit for bit.

**Batches.** All images of a run share one size, so a batch is a plain stack. ``BatchElements``
gets ``min_batch_size == max_batch_size == batch_size`` (fixed batches, the last of a bundle
smaller): its adaptive sizing would start at one image per forward pass. ``device="auto"``
picks CUDA on a worker that has it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import common
from trimodal.pipelines.image_readers import FORMATS, FetchError, ImageTextReader, expand_image_inputs, fetch_image
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, count
from trimodal.pipelines.records import Record, filtered, rejected
from trimodal.pipelines.sink import SinkConfig, make_sample
from trimodal.pipelines.text import EncodePairedText
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.image_preprocess import ImageRejected, load_image, preprocess, record_seed
from trimodal.tokenizers.movqgan import MoVQGANTokenizer
from trimodal.tokenizers.registry import load_text_tokenizer
from trimodal.tokenizers.runtime import resolve_device

#: load_image reasons that are a choice (filtered), not a failure (rejected).
FILTERED_IMAGE_REASONS = frozenset({"too_small"})


@dataclass
class ImageTextPipelineConfig(common.PipelineConfig):
    image_tokenizer: str = option("", help="MoVQGAN checkpoint path")
    format: str = option("auto", help=f"input format: {', '.join(FORMATS)}")
    captions: str | None = option(None, help="folder format: captions JSON-lines file (default <folder>/captions.jsonl)")
    image_size: int | None = option(
        None, help="side of the square images the tokenizer sees (default: the tokenizer's own resolution, "
                   "256 px for the public MoVQGANs = 32x32 = 1,024 codes per image)")
    device: str = option("auto", help="tokenizer device: auto, cpu, cuda, cuda:N")
    batch_size: int = option(16, help="images per tokenizer call")
    image_field: str | None = option(None, help="parquet image column (default: jpg, image, ...)")
    caption_field: str | None = option(None, help="caption column / JSON field (default: caption, text)")
    id_field: str | None = option(None, help="parquet id column (default: the row number)")
    file_field: str = option("file", help="folder format: the captions file's image-path field")
    report_uncaptioned: bool = option(True, help="folder format: uncaptioned images become missing_caption rejects")
    max_pixels: int = option(64_000_000, help="larger images are rejected unread (decompression_bomb)")
    min_side: int = option(16, help="images with a shorter side are filtered (too_small)")
    p_crop: float = option(0.5, help="[paper] random resized crop with this probability, else resize + white padding")
    crop_scale: tuple[float, float] = option((0.8, 1.0), help="[paper] crop area range", cli=False)
    seed: int = option(0, help="salt of the per-record preprocessing seed")
    max_caption_tokens: int | None = option(None, help="longer captions are filtered (default: keep all)")
    allow_tf32: bool = option(False, help="faster on GPU; codes may then differ from CPU-made shards")
    batch_invariant: bool = option(True, help="CPU: encode each image alone with oneDNN off, so codes do not depend "
                                              "on batch-mates or threads (byte-identical on any runner); ~3x slower")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.image_tokenizer:
            raise ValueError("--image-tokenizer is required")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.batch_size is None or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 <= self.p_crop <= 1.0:
            raise ValueError(f"p_crop must be in [0, 1], got {self.p_crop}")
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))


# ----------------------------------------------------------------------------- model per worker

# One image tokenizer per worker process, shared by that process's DoFn instances (threads).
_IMAGE_TOKENIZERS = shared.Shared()


class _ImageTokenizerHolder:
    def __init__(self, tok: MoVQGANTokenizer):
        self.tok = tok


def load_image_tokenizer_shared(path: str, device: str, batch_size: int, allow_tf32: bool = False,
                                batch_invariant: bool = True) -> MoVQGANTokenizer:
    device = str(resolve_device(device))
    return _IMAGE_TOKENIZERS.acquire(
        lambda: _ImageTokenizerHolder(
            MoVQGANTokenizer.from_path(path, device=device, batch_size=batch_size, allow_tf32=allow_tf32,
                                       batch_invariant=batch_invariant)
        ),
        tag=f"movqgan:{path}:{device}:{batch_size}:{allow_tf32}:{batch_invariant}",
    ).tok


# ----------------------------------------------------------------------------- pixels


def to_uint8(x: np.ndarray) -> np.ndarray:
    """``preprocess`` output (float32 [3,S,S], ``u8 / 127.5 - 1``) → the uint8 pixels it came from."""
    return np.rint((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., 3, S, S] → float32 in [-1, 1], with ``preprocess``'s exact arithmetic."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def preprocess_record(data: bytes, record_id: str, cfg: ImageTextPipelineConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes → (uint8 [3, S, S], original (width, height)); raises ImageRejected."""
    img = load_image(data, cfg.max_pixels, cfg.min_side)
    x = preprocess(img, cfg.image_size, seed=record_seed(record_id, cfg.seed), p_crop=cfg.p_crop,
                   crop_scale=cfg.crop_scale)
    return to_uint8(x), img.size


# ----------------------------------------------------------------------------- steps


def PrepareCaption(tokenizer_path: str, max_tokens: int | None = None) -> EncodePairedText:
    """Caption normalisation + encoding (``empty_caption`` / ``caption_too_long`` filtered)."""
    return EncodePairedText(tokenizer_path, name="caption", max_tokens=max_tokens)


class DecodeImage(Step):
    """Fetch (lazy records) + decode + validate + seeded preprocessing → uint8 pixels."""

    stage = "image"

    def __init__(self, cfg: ImageTextPipelineConfig):
        self.cfg = cfg

    def apply(self, record: Record) -> Record:
        data = record.media
        if data is None:
            try:
                data = fetch_image(record.media_url)
            except FetchError as e:
                raise rejected(e.reason, e.detail) from None
        try:
            pixels, (w, h) = preprocess_record(data, record.id, self.cfg)
        except ImageRejected as e:
            raise (filtered if e.reason in FILTERED_IMAGE_REASONS else rejected)(e.reason, e.detail) from None
        record.provenance = {**record.provenance, "width": int(w), "height": int(h), "bytes": len(data)}
        record.media = record.media_url = None
        record.pixels = pixels
        return record


class EncodeImages(beam.DoFn):
    """A batch of preprocessed records → one tokenized sample each (codes [h, w] uint16)."""

    stage = "encode"

    def __init__(self, tokenizer_path: str, device: str, batch_size: int, allow_tf32: bool = False,
                 batch_invariant: bool = True):
        self.tokenizer_path, self.device, self.batch_size, self.allow_tf32 = tokenizer_path, device, batch_size, allow_tf32
        self.batch_invariant = batch_invariant

    def setup(self) -> None:
        self.tok = load_image_tokenizer_shared(self.tokenizer_path, self.device, self.batch_size, self.allow_tf32,
                                               self.batch_invariant)

    def process(self, batch: list[Record]):
        t0 = time.perf_counter()
        x = to_model_input(np.stack([r.pixels for r in batch]))
        codes = self.tok.encode(x)
        count(self.stage, "batches")
        count(self.stage, "model_ms", n=int(round((time.perf_counter() - t0) * 1000)))
        for record, grid in zip(batch, codes):
            count(self.stage, "ok")
            text = np.asarray(record.text_ids)
            yield make_sample(record, "image_text", {"image": int(grid.size), "text": int(text.size)},
                              {"image": np.ascontiguousarray(grid), "text": text})


class _Encode(beam.PTransform):
    def __init__(self, cfg: ImageTextPipelineConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        cfg = self.cfg
        return (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=cfg.batch_size, max_batch_size=cfg.batch_size)
            | "EncodeImages" >> beam.ParDo(
                EncodeImages(cfg.image_tokenizer, cfg.device, cfg.batch_size, cfg.allow_tf32, cfg.batch_invariant)
            ).with_outputs(FILTERED, REJECTED, main="ok")
        )


# ----------------------------------------------------------------------------- wiring


def image_tokenizer_info(tok: MoVQGANTokenizer, path: str, image_size: int,
                         cfg: ImageTextPipelineConfig | None = None) -> TokenizerInfo:
    """What the manifest records about the image tokenizer (the layout reads ``vocab_size``,
    the sampler ``path`` and ``grid``)."""
    h, w = tok.model.latent_grid(image_size, image_size)
    extra: dict[str, Any] = {"downsample_factor": tok.config.downsample_factor}
    if cfg is not None:
        extra["preprocess"] = {"p_crop": cfg.p_crop, "crop_scale": list(cfg.crop_scale), "seed": cfg.seed}
    return TokenizerInfo(modality="image", kind="movqgan", fingerprint=tok.fingerprint, vocab_size=tok.vocab_size,
                         path=storage.absolute(path), grid=(h, w), image_size=image_size,
                         extra=extra)


def checked_image_size(tok: MoVQGANTokenizer, image_size: int | None) -> int:
    """The image side to tokenize at: the tokenizer's own resolution unless given. A size the
    model cannot take is an error; another size than the tokenizer's is said once, with the
    codes per image it gives (every code is a position of a training row)."""
    native = tok.config.resolution
    if image_size is None:
        image_size = native
    try:
        h, w = tok.model.latent_grid(image_size, image_size)
    except ValueError as e:
        raise ValueError(f"--image-size {image_size}: {e} (the tokenizer's downsample factor); "
                         f"its own resolution is {native}") from None
    if image_size != native:
        print(f"note: --image-size {image_size} differs from the image tokenizer's resolution {native}: "
              f"each image gives {h}x{w} = {h * w:,} codes (at {native}: {(native // tok.config.downsample_factor) ** 2:,})",
              flush=True)
    return image_size


def build_image_text_pipeline(p: beam.Pipeline, cfg: ImageTextPipelineConfig, inputs: list[str], text_tok,
                              image_tok: MoVQGANTokenizer, run_id: str | None = None):
    if cfg.image_size is None:
        cfg.image_size = image_tok.config.resolution
    sink = SinkConfig(
        root=cfg.out, modality="image_text",
        tokenizers={"text": text_tok.info(), "image": image_tokenizer_info(image_tok, cfg.image_tokenizer, cfg.image_size, cfg)},
        target_shard_bytes=cfg.target_shard_bytes, compression=cfg.compression, val_fraction=cfg.val_fraction,
        run_id=run_id, config=cfg.recorded(),
    )
    reader = ImageTextReader(cfg.format, cfg.source, cfg.captions, cfg.image_field, cfg.caption_field, cfg.id_field,
                             cfg.file_field, lazy=True, report_uncaptioned=cfg.report_uncaptioned,
                             max_bytes=cfg.max_record_bytes)
    return common.build(
        p, inputs, reader,
        steps=[("Caption", PrepareCaption(cfg.text_tokenizer, cfg.max_caption_tokens)), ("DecodeImage", DecodeImage(cfg))],
        sink=sink, batch_step=("Encode", _Encode(cfg)),
    )


def run_image_text_pipeline(cfg: ImageTextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs, both tokenizers and the image size up front (clear error, nothing
    written), then run on the named runner. The image tokenizer is loaded here on the CPU only
    for its fingerprint and grid; workers load their own on ``cfg.device``."""
    inputs = expand_image_inputs(cfg.inputs, cfg.format)
    text_tok = load_text_tokenizer(cfg.text_tokenizer)
    image_tok = MoVQGANTokenizer.from_path(cfg.image_tokenizer, device="cpu")
    cfg.image_size = checked_image_size(image_tok, cfg.image_size)
    return common.run(lambda p, run_id: build_image_text_pipeline(p, cfg, inputs, text_tok, image_tok, run_id),
                      cfg.out, beam_args or [], cfg.progress)


__all__ = [
    "ImageTextPipelineConfig", "run_image_text_pipeline", "build_image_text_pipeline", "PrepareCaption",
    "DecodeImage", "EncodeImages", "FILTERED_IMAGE_REASONS", "image_tokenizer_info",
    "load_image_tokenizer_shared", "resolve_device", "preprocess_record", "to_model_input", "to_uint8",
    "checked_image_size",
]
