"""Image decoding and the paper's 256 px preprocessing, as pure functions (docs/tokenizers.md).

Why separate from the model: the pipeline decodes and preprocesses on CPU workers, rejects bad
records with a machine-readable reason (never stopping the job), and only then batches tensors
for the tokenizer. Preprocessing is seeded per record so that a re-run yields the same tokens.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "REJECT_REASONS",
    "ImageRejected",
    "load_image",
    "preprocess",
    "record_seed",
    "to_rgb",
]

#: Every reason :class:`ImageRejected` can carry (for counters and manifests).
REJECT_REASONS = (
    "empty",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_small",
    "decompression_bomb",
    "unsupported_mode",
)

_WHITE = (255, 255, 255)


class ImageRejected(ValueError):
    """A record whose image cannot be used; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _detail(e: BaseException) -> str:
    """PIL's message without object addresses (``<_io.BytesIO object at 0x7f...>``): a dead
    letter must be the same bytes on every run and every worker."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(e))


def _decode_error(e: BaseException) -> ImageRejected:
    """PIL reports a short file as OSError("... truncated ...") or EOFError; all else is corrupt."""
    if isinstance(e, EOFError) or (isinstance(e, OSError) and "truncated" in str(e).lower()):
        return ImageRejected("truncated", _detail(e))
    return ImageRejected("corrupt", f"{type(e).__name__}: {_detail(e)}")


def load_image(data: bytes, max_pixels: int = 64_000_000, min_side: int = 16) -> Image.Image:
    """Decode image bytes to an RGB ``PIL.Image`` or raise :class:`ImageRejected`.

    The header's size is checked against ``max_pixels`` (and ``min_side``) before any pixel is
    decoded, so a small file claiming a huge canvas costs nothing. Only the first frame of
    animations is used; EXIF orientation is applied.
    """
    if not data:
        raise ImageRejected("empty")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own (global) limit, checked in open()
        raise ImageRejected("decompression_bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", _detail(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        raise _decode_error(e) from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRejected("decompression_bomb", f"{w}x{h} > {max_pixels} pixels")
    if min(w, h) < min_side:
        raise ImageRejected("too_small", f"{w}x{h} < {min_side} px")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global: truncation would pass silently
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated images would be accepted")
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError) as e:
        raise _decode_error(e) from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels, unrotated
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, 16/32-bit grey scaled from 0..65535."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG/TIFF); PIL's own I->L conversion would clip at 255, not rescale.
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageRejected("unsupported_mode", f"{mode}: {e}") from e


def record_seed(record_id: str, seed: int = 0) -> int:
    """A per-record seed that is stable across processes and runs (unlike Python's ``hash``)."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _random_resized_crop_box(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling (10 tries, then a ratio-clamped centre crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def preprocess(
    img: Image.Image,
    size: int = 256,
    *,
    seed: int,
    p_crop: float = 0.5,
    crop_scale: tuple[float, float] = (0.8, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """RGB image -> float32 [3, size, size] in [-1, 1], deterministic for a given ``seed``.

    With probability ``p_crop`` a random resized crop (``crop_scale`` of the area, aspect ratio in
    ``crop_ratio``) resized to the square; otherwise the whole image resized to fit, keeping its
    aspect ratio, and padded with white to the square [paper].
    """
    img = to_rgb(img)
    rng = np.random.default_rng(seed)
    width, height = img.size
    if rng.random() < p_crop:
        box = _random_resized_crop_box(rng, width, height, crop_scale, crop_ratio)
        out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    else:
        s = size / max(width, height)
        new_w, new_h = max(1, min(size, round(width * s))), max(1, min(size, round(height * s)))
        resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        out = Image.new("RGB", (size, size), _WHITE)
        out.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    arr = np.asarray(out, dtype=np.float32)
    return np.ascontiguousarray((arr / 127.5 - 1.0).transpose(2, 0, 1))
