"""``trimodal pipeline image-text``: an image-caption corpus → tokenized WebDataset shards.

read (WebDataset tars / Parquet / folder + captions file, :mod:`trimodal.pipelines.image_readers`)
→ caption normalise + SentencePiece encode → image fetch + decode + validate + seeded 256 px
preprocessing → batched MoVQGAN encode (model loaded once per worker process through
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

import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from trimodal.pipelines import common
from trimodal.pipelines.image_readers import FORMATS, FetchError, expand_image_inputs, fetch_image, read_image_text_file
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, count, filtered, rejected
from trimodal.pipelines.sink import SinkConfig, make_sample
from trimodal.pipelines.text import EncodePairedText
from trimodal.tokenizers.image_preprocess import ImageRejected, load_image, preprocess, record_seed
from trimodal.tokenizers.movqgan import MoVQGANTokenizer
from trimodal.tokenizers.text import TextTokenizer

#: load_image reasons that are a choice (filtered), not a failure (rejected).
FILTERED_IMAGE_REASONS = frozenset({"too_small"})


@dataclass
class ImageTextPipelineConfig:
    inputs: list[str]
    text_tokenizer: str
    image_tokenizer: str
    out: str
    format: str = "auto"  # auto | webdataset | parquet | folder
    captions: str | None = None  # folder format: captions JSON-lines (default <folder>/captions.jsonl)
    source: str = ""
    image_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 16
    target_shard_bytes: int = 128 * 2**20
    compression: str = "none"
    image_field: str | None = None  # parquet image column (default: jpg, image, ...)
    caption_field: str | None = None  # caption column / JSON field (default: caption, text)
    id_field: str | None = None  # parquet id column (default: the row number)
    file_field: str = "file"  # folder format: the captions file's image-path field
    report_uncaptioned: bool = True  # folder format: uncaptioned images become missing_caption rejects
    max_pixels: int = 64_000_000  # header size above this → decompression_bomb (never decoded)
    min_side: int = 16  # a shorter side → too_small (filtered)
    p_crop: float = 0.5  # [paper] random resized crop with p=0.5, else resize + white padding
    crop_scale: tuple[float, float] = (0.8, 1.0)  # [paper]
    seed: int = 0  # salt of the per-record preprocessing seed
    max_caption_tokens: int | None = None  # longer captions are filtered (None: keep all)
    allow_tf32: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.batch_size is None or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 <= self.p_crop <= 1.0:
            raise ValueError(f"p_crop must be in [0, 1], got {self.p_crop}")
        if self.target_shard_bytes is None:
            self.target_shard_bytes = 128 * 2**20
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))


# ----------------------------------------------------------------------------- model per worker

# One image tokenizer per worker process, shared by that process's DoFn instances (threads).
_IMAGE_TOKENIZERS = shared.Shared()


class _ImageTokenizerHolder:
    def __init__(self, tok: MoVQGANTokenizer):
        self.tok = tok


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_image_tokenizer_shared(path: str, device: str, batch_size: int, allow_tf32: bool = False) -> MoVQGANTokenizer:
    device = resolve_device(device)
    return _IMAGE_TOKENIZERS.acquire(
        lambda: _ImageTokenizerHolder(
            MoVQGANTokenizer.from_path(path, device=device, batch_size=batch_size, allow_tf32=allow_tf32)
        ),
        tag=f"movqgan:{path}:{device}:{batch_size}:{allow_tf32}",
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
    return EncodePairedText(tokenizer_path, field="caption", name="caption", max_tokens=max_tokens)


class DecodeImage(Step):
    """Fetch (lazy records) + decode + validate + seeded preprocessing → uint8 pixels."""

    stage = "image"

    def __init__(self, cfg: ImageTextPipelineConfig):
        self.cfg = cfg

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        data = record.get("image")
        if data is None:
            try:
                data = fetch_image(record["image_url"])
            except FetchError as e:
                raise rejected(e.reason, e.detail) from None
        try:
            pixels, (w, h) = preprocess_record(data, record["id"], self.cfg)
        except ImageRejected as e:
            raise (filtered if e.reason in FILTERED_IMAGE_REASONS else rejected)(e.reason, e.detail) from None
        out = {k: v for k, v in record.items() if k not in ("image", "image_url")}
        prov = {**record.get("provenance", {}), "width": int(w), "height": int(h), "bytes": len(data)}
        return {**out, "pixels": pixels, "provenance": prov}


class EncodeImages(beam.DoFn):
    """A batch of preprocessed records → one tokenized sample each (codes [h, w] uint16)."""

    stage = "encode"

    def __init__(self, tokenizer_path: str, device: str, batch_size: int, allow_tf32: bool = False):
        self.tokenizer_path, self.device, self.batch_size, self.allow_tf32 = tokenizer_path, device, batch_size, allow_tf32

    def setup(self) -> None:
        self.tok = load_image_tokenizer_shared(self.tokenizer_path, self.device, self.batch_size, self.allow_tf32)

    def process(self, batch: list[dict[str, Any]]):
        t0 = time.perf_counter()
        x = to_model_input(np.stack([r["pixels"] for r in batch]))
        codes = self.tok.encode(x)
        count(self.stage, "batches")
        count(self.stage, "model_ms", n=int(round((time.perf_counter() - t0) * 1000)))
        for record, grid in zip(batch, codes):
            count(self.stage, "ok")
            text = np.asarray(record["text_ids"])
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
                EncodeImages(cfg.image_tokenizer, cfg.device, cfg.batch_size, cfg.allow_tf32)
            ).with_outputs(FILTERED, REJECTED, main="ok")
        )


# ----------------------------------------------------------------------------- wiring


def _local_abspath(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def image_tokenizer_info(tok: MoVQGANTokenizer, path: str, image_size: int, cfg: ImageTextPipelineConfig | None = None) -> dict[str, Any]:
    """What the manifest records about the image tokenizer (the trainer reads ``vocab_size``,
    the sampler ``path`` and ``grid``)."""
    h, w = tok.model.latent_grid(image_size, image_size)
    info: dict[str, Any] = {
        "kind": "movqgan",
        "fingerprint": tok.fingerprint,
        "vocab_size": tok.vocab_size,
        "grid": [h, w],
        "image_size": image_size,
        "downsample_factor": tok.config.downsample_factor,
        "path": _local_abspath(path),
    }
    if cfg is not None:
        info["preprocess"] = {"p_crop": cfg.p_crop, "crop_scale": list(cfg.crop_scale), "seed": cfg.seed}
    return info


def build_image_text_pipeline(p: beam.Pipeline, cfg: ImageTextPipelineConfig, inputs: list[str],
                              text_tok: TextTokenizer, image_tok: MoVQGANTokenizer):
    sink = SinkConfig(
        root=cfg.out,
        modality="image_text",
        tokenizers={"text": text_tok.info(), "image": image_tokenizer_info(image_tok, cfg.image_tokenizer, cfg.image_size, cfg)},
        target_shard_bytes=cfg.target_shard_bytes,
        compression=cfg.compression,
        config={k: v for k, v in asdict(cfg).items() if k not in ("inputs", "out")},
    )
    reader = partial(read_image_text_file, fmt=cfg.format, source=cfg.source, captions=cfg.captions,
                     image_field=cfg.image_field, caption_field=cfg.caption_field, id_field=cfg.id_field,
                     file_field=cfg.file_field, lazy=True, report_uncaptioned=cfg.report_uncaptioned)
    return common.build(
        p,
        inputs,
        reader,
        steps=[
            ("Caption", PrepareCaption(cfg.text_tokenizer, cfg.max_caption_tokens)),
            ("DecodeImage", DecodeImage(cfg)),
        ],
        sink=sink,
        batch_step=("Encode", _Encode(cfg)),
    )


def run_image_text_pipeline(cfg: ImageTextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs, both tokenizers and the image size up front (clear error, nothing
    written), then run on the named runner. The image tokenizer is loaded here on the CPU only
    for its fingerprint and grid; workers load their own on ``cfg.device``."""
    inputs = expand_image_inputs(cfg.inputs, cfg.format)
    text_tok = TextTokenizer.from_path(cfg.text_tokenizer)
    image_tok = MoVQGANTokenizer.from_path(cfg.image_tokenizer, device="cpu")
    image_tok.model.latent_grid(cfg.image_size, cfg.image_size)  # a size the model cannot take fails here
    return common.run(lambda p: build_image_text_pipeline(p, cfg, inputs, text_tok, image_tok), cfg.out, beam_args or [])


__all__ = [
    "ImageTextPipelineConfig",
    "run_image_text_pipeline",
    "build_image_text_pipeline",
    "PrepareCaption",
    "DecodeImage",
    "EncodeImages",
    "FILTERED_IMAGE_REASONS",
    "image_tokenizer_info",
    "load_image_tokenizer_shared",
    "preprocess_record",
    "to_model_input",
    "to_uint8",
]
