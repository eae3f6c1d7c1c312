"""``trimodal shards show``: decode a few samples of a dataset back to what a person can check:
text, a PNG grid of the images, WAV files of the audio (through the tokenizers the manifest
recorded)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import islice

import numpy as np

from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples


def image_grid(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 → one near-square grid image (white where the grid has no image)."""
    import math

    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return grid


def show(root: str, n: int, out: str, split: str = "train", device: str = "cpu") -> Iterator[str]:
    """Lines describing the first ``n`` samples of ``split``; media are written under ``out``."""
    from trimodal.tokenizers.registry import load_from_info

    manifest = Manifest.load(root)
    if manifest.kind != "tokenized":
        raise ValueError(f"{root} is a {manifest.kind} dataset: show decodes tokenized datasets")
    shards = manifest.split_shards(split)
    if not shards:
        raise ValueError(f"{root} has no {split!r} split (it has {manifest.splits()})")
    toks = {}
    for name in ("text", "image", "audio"):
        if name in manifest.tokenizers:
            toks[name] = load_from_info(manifest.tokenizers[name], device=device)
    os.makedirs(out, exist_ok=True)
    images, i = [], 0
    for i, (info, s) in enumerate(islice(iter_samples(root, shards), n)):
        meta = s.get("json") or {}
        text = toks["text"].decode(s["text"]) if "text" in s and "text" in toks else ""
        line = f"[{i}] {meta.get('id')} ({info.name})"
        if "image" in s and "image" in toks:
            images.append(s["image"].astype(np.int64))
            line += f" image {s['image'].shape}"
        if "audio" in s and "audio" in toks:
            from trimodal.tokenizers.audio_io import write_wav

            path = os.path.join(out, f"sample_{i}.wav")
            codes = s["audio"][: manifest.tokenizers["audio"].levels or s["audio"].shape[0]]
            write_wav(path, toks["audio"].decode(np.asarray(codes)), toks["audio"].sample_rate)
            line += f" audio {s['audio'].shape} -> {path}"
        yield f"{line}: {text!r}"
    if images:
        from PIL import Image

        grid = image_grid(toks["image"].decode(np.stack(images)))
        path = os.path.join(out, "images.png")
        Image.fromarray(grid).save(path)
        yield f"wrote {path} ({len(images)} image(s))"
