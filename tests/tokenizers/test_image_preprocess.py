"""Image decoding, mode conversion, rejection reasons and seeded 256 px preprocessing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from trimodal.tokenizers.image_preprocess import (
    REJECT_REASONS,
    ImageRejected,
    load_image,
    preprocess,
    record_seed,
    to_rgb,
)

MAX_PIXELS = 10_000_000


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _mode_images() -> dict[str, bytes]:
    """One real encoded file per input mode the pipeline meets."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    alpha = np.zeros((40, 60), dtype=np.uint8)  # fully transparent -> must come out white
    rgba = np.dstack([grey, grey, grey, alpha])
    pal = Image.fromarray(grey, "L").convert("P")
    pal_bytes = _bytes(pal, "PNG", transparency=0)
    i16 = Image.fromarray(grey.astype(np.uint16) * 257)  # uint16 -> mode I;16
    return {
        "L": _bytes(Image.fromarray(grey, "L"), "PNG"),
        "LA": _bytes(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"),
        "RGBA": _bytes(Image.fromarray(rgba, "RGBA"), "PNG"),
        "P": pal_bytes,
        "CMYK": _bytes(Image.fromarray(np.dstack([grey] * 4), "CMYK"), "JPEG"),
        "I;16": _bytes(i16, "PNG"),
        "RGB": _bytes(_noise(40, 60), "JPEG"),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "RGB"])
def test_each_mode_becomes_rgb_in_range(mode: str) -> None:
    data = _mode_images()[mode]
    src = Image.open(io.BytesIO(data))
    if mode == "I;16":
        assert src.mode.startswith("I"), src.mode
    else:
        assert src.mode == mode, src.mode
    img = load_image(data, MAX_PIXELS)
    assert img.mode == "RGB" and img.size == (60, 40)
    x = preprocess(img, 256, seed=3)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert np.isfinite(x).all()


def test_transparent_pixels_composite_on_white() -> None:
    for mode in ("LA", "RGBA"):
        arr = np.asarray(load_image(_mode_images()[mode], MAX_PIXELS))
        assert (arr == 255).all(), mode  # alpha was 0 everywhere
    # palette index 0 is transparent: those pixels are white, the others keep their grey
    grey = np.asarray(Image.open(io.BytesIO(_mode_images()["P"])).convert("L"))
    rgb = np.asarray(load_image(_mode_images()["P"], MAX_PIXELS))
    idx = np.asarray(Image.open(io.BytesIO(_mode_images()["P"])))
    assert (rgb[idx == 0] == 255).all()
    assert (rgb[idx != 0][:, 0] == grey[idx != 0]).all()


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)
    img = load_image(_bytes(Image.fromarray(ramp), "PNG"), MAX_PIXELS)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert arr.max() > 200  # a clip at 255 of 16-bit values would saturate almost everything
    assert (arr == 255).mean() < 0.05


def test_cmyk_matches_pil_conversion() -> None:
    cmyk = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 4), dtype=np.uint8), "CMYK")
    rgb = to_rgb(cmyk)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb), np.asarray(cmyk.convert("RGB")))


def test_preprocess_is_deterministic_per_seed_and_uses_both_branches() -> None:
    # 150x120 (aspect 1.25): crops of 80-100% area with aspect 3/4-4/3 fit, so they vary.
    # (A far-from-square image always falls back to a centre crop, as in torchvision.)
    img = _noise(120, 150)
    a = preprocess(img, 64, seed=11)
    b = preprocess(img, 64, seed=11)
    np.testing.assert_array_equal(a, b)
    padded = cropped = 0
    outs = []
    for seed in range(40):
        x = preprocess(img, 64, seed=seed)
        outs.append(x)
        # pad branch: a 150x120 image fits as 64x51, leaving white rows top and bottom
        if (x[:, :5, :] == 1.0).all() and (x[:, -5:, :] == 1.0).all():
            padded += 1
        else:
            cropped += 1
    assert padded > 0 and cropped > 0
    assert len({o.tobytes() for o in outs}) > padded  # crops differ from seed to seed
    # p_crop pins the branch
    assert (preprocess(img, 64, seed=5, p_crop=0.0)[:, :5] == 1.0).all()
    assert not (preprocess(img, 64, seed=5, p_crop=1.0)[:, :5] == 1.0).all()
    assert 0.2 < cropped / 40 < 0.8


def test_pad_branch_keeps_aspect_and_centres() -> None:
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    x = preprocess(img, 64, seed=0, p_crop=0.0)
    rows_black = (x == -1.0).all(axis=(0, 2))
    assert rows_black.sum() == 32 and rows_black[16:48].all()


def test_crop_branch_covers_most_of_the_image() -> None:
    # left half black, right half white: a crop of >= 80% area keeps both colours
    arr = np.zeros((100, 100, 3), dtype=np.uint8)
    arr[:, 50:] = 255
    for seed in range(10):
        x = preprocess(Image.fromarray(arr), 32, seed=seed, p_crop=1.0)
        assert (x == -1.0).any() and (x == 1.0).any()


def test_record_seed_is_stable_and_distinct() -> None:
    assert record_seed("abc", 0) == record_seed("abc", 0)
    assert record_seed("abc", 0) != record_seed("abd", 0)
    assert record_seed("abc", 0) != record_seed("abc", 1)
    # pinned: a seed must not depend on the process (Python's hash() is salted per process)
    assert record_seed("abc") == 8_676_661_944_314_138_200


def _png_with_claimed_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is rewritten (with a valid CRC) to claim another size."""
    data = bytearray(_bytes(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageRejected) as info:
        load_image(data, kw.pop("max_pixels", MAX_PIXELS), **kw)
    assert info.value.reason in REJECT_REASONS
    return info.value.reason


def test_rejection_reasons() -> None:
    png = _bytes(_noise(64, 64), "PNG")
    assert _reason(b"") == "empty"
    assert _reason(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()) == "not_an_image"
    assert _reason(png[: len(png) // 2]) == "truncated"
    assert _reason(_bytes(_noise(64, 64), "JPEG")[:1500]) == "truncated"
    garbled = bytearray(png)
    garbled[len(png) // 2 : len(png) // 2 + 64] = bytes(64)  # inside IDAT: CRC/zlib stream broken
    assert _reason(bytes(garbled)) == "corrupt"
    assert _reason(_bytes(Image.new("RGB", (4, 4)), "PNG")) == "too_small"
    assert _reason(_bytes(Image.new("RGB", (40, 10)), "PNG")) == "too_small"
    assert load_image(_bytes(Image.new("RGB", (40, 10)), "PNG"), MAX_PIXELS, min_side=8).size == (40, 10)
    # header says 64x64 (real pixels): refused before decoding with a small budget
    assert _reason(png, max_pixels=1000) == "decompression_bomb"
    # header claims 50,000 x 50,000 in a ~70-byte file: our limit, then PIL's own limit
    bomb = _png_with_claimed_size(50_000, 50_000)
    assert len(bomb) < 100
    assert _reason(bomb) == "decompression_bomb"
    assert _reason(bomb, max_pixels=10**12) == "decompression_bomb"


def test_rejection_message_is_machine_readable() -> None:
    with pytest.raises(ImageRejected) as info:
        load_image(b"", MAX_PIXELS)
    assert info.value.reason == "empty" and str(info.value).startswith("empty")
    with pytest.raises(ValueError):
        ImageRejected("no_such_reason")
