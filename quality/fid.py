"""FID: Inception-v3 pool features of generated images against reference statistics.

Reference statistics are computed once and stored (``.npz``, :mod:`trimodal.quality.frechet`)
from a folder of images, a tokenized shard root's images (decoded through the image tokenizer its
manifest recorded) or an existing ``.npz`` (pytorch-fid's precomputed files included). Images
enter as uint8 RGB, are scaled to [0, 1] and resized by the network as the reference does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from trimodal.quality.frechet import FeatureStats, stats_distance

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@torch.no_grad()
def image_features(net: torch.nn.Module, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """[N, D] float64 features of uint8 [H, W, 3] images (sizes may differ: each is resized
    by the network's own preprocessing)."""
    from trimodal.quality.inception import preprocess

    device = next(net.parameters()).device
    out, batch = [], []

    def flush() -> None:
        if batch:
            out.append(net(torch.cat(batch).to(device)).double().cpu().numpy())
            batch.clear()

    for img in images:
        a = np.asarray(img)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [H, W, 3], got {a.dtype} {a.shape}")
        x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0
        batch.append(preprocess(x))
        if len(batch) == batch_size:
            flush()
    flush()
    if not out:
        raise ValueError("no images to compute features of")
    return np.concatenate(out)


def folder_images(folder: str | Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 arrays of the image files under ``folder`` (recursive, sorted by path)."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for p in islice(paths, limit):
        with Image.open(p) as im:
            yield np.asarray(im.convert("RGB"))


def shard_images(root: str, split: str = "train", limit: int | None = None, batch: int = 16) -> Iterator[np.ndarray]:
    """The images of a tokenized root's ``split``, decoded through its recorded image tokenizer."""
    from trimodal.shards.manifest import Manifest
    from trimodal.shards.reader import iter_samples
    from trimodal.tokenizers.registry import load_from_info

    manifest = Manifest.load(root)
    if manifest.kind != "tokenized" or "image" not in manifest.tokenizers:
        raise ValueError(f"{root} is not a tokenized dataset with images")
    shards = manifest.split_shards(split)
    if not shards:
        raise ValueError(f"{root} has no {split!r} split (it has {manifest.splits()})")
    tok = load_from_info(manifest.tokenizers["image"], device="cpu")
    codes = []
    for s in islice((s for _, s in iter_samples(root, shards) if "image" in s), limit):
        codes.append(s["image"].astype(np.int64))
        if len(codes) == batch:
            yield from tok.decode(np.stack(codes))
            codes = []
    if codes:
        yield from tok.decode(np.stack(codes))


def reference_stats(source: str, net: torch.nn.Module | None = None, out: str | None = None, split: str = "train",
                    limit: int | None = None, batch_size: int = 32) -> FeatureStats:
    """Statistics of ``source`` (an ``.npz``, a tokenized shard root or an image folder); written
    to ``out`` when given, so later runs load them instead of recomputing."""
    p = Path(source)
    if p.suffix == ".npz":
        stats = FeatureStats.load(p)
    else:
        if net is None:
            raise ValueError(f"computing statistics of {source} needs the Inception weights")
        if (p / "manifest.json").exists():
            images = shard_images(source, split, limit)
        elif p.is_dir():
            images = folder_images(p, limit)
        else:
            raise FileNotFoundError(f"FID reference {source}: not an .npz, a shard root or an image folder")
        stats = FeatureStats.of(image_features(net, images, batch_size))
    if out:
        stats.save(out)
    return stats


def fid(net: torch.nn.Module, images: Iterable[np.ndarray], reference: FeatureStats, batch_size: int = 32) -> float:
    return stats_distance(FeatureStats.of(image_features(net, images, batch_size)), reference)
