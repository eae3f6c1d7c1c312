"""Check this package's FID against the reference implementation (pytorch-fid) on one machine.

pytorch-fid needs torchvision, which cannot be installed beside the CPU torch this project pins
(PyPI's torchvision wheels are built against CUDA torch), so the reference runs in a second
Python environment given by ``--python`` (e.g. ``python -m venv /tmp/pfid && /tmp/pfid/bin/pip
install pytorch-fid==0.3.0 torchvision``; a CUDA build of torch runs on a CPU too). Both sides
load the same Inception weights file (the real ``pt_inception-2015-12-05-6726825d.pth`` if given,
else random weights written in its format), see the same uint8 images of several sizes, and the
check prints the largest feature difference and the FID of two image sets computed both ways::

    python -m trimodal.quality.reference_check --python /tmp/pfid/bin/python [--weights FILE]

Nothing is downloaded: the reference's weight download is replaced by loading the given file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Runs in the reference environment: pytorch-fid's own model and Fréchet distance.
REFERENCE = r"""
import json, sys
import numpy as np, torch
import pytorch_fid.inception as pi
from pytorch_fid.fid_score import calculate_frechet_distance
weights, images, out = sys.argv[1:4]
pi.load_state_dict_from_url = lambda *a, **k: torch.load(weights, map_location="cpu", weights_only=True)
torch.set_num_threads(1)
model = pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
data = np.load(images, allow_pickle=False)
feats = []
with torch.no_grad():
    for k in sorted(data.files, key=int):
        x = torch.from_numpy(data[k]).permute(2, 0, 1)[None].float() / 255.0  # what TF.ToTensor gives
        feats.append(model(x)[0].squeeze(-1).squeeze(-1).double().numpy())
f = np.concatenate(feats)
half = len(f) // 2
a, b = f[:half], f[half:]
fid = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
np.save(out, f)
print(json.dumps({"fid": float(fid), "torch": torch.__version__}))
"""


def sample_images(n: int, seed: int) -> list[np.ndarray]:
    """Smooth random images (not white noise: features of noise barely move) of several sizes,
    below, at and above the network's 299 px input."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (48, 80), (299, 299), (384, 512)]
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float64)
        ys = np.linspace(0, coarse.shape[0] - 1, h)
        xs = np.linspace(0, coarse.shape[1] - 1, w)
        img = coarse[np.round(ys).astype(int)][:, np.round(xs).astype(int)]
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True, help="interpreter of an environment with pytorch-fid and torchvision")
    ap.add_argument("--weights", help="pt_inception-2015-12-05-6726825d.pth (default: random weights in its format)")
    ap.add_argument("--images", type=int, default=16, help="images (two sets of half each for the FID)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from trimodal.quality.fid import image_features
    from trimodal.quality.frechet import FeatureStats, stats_distance
    from trimodal.quality.inception import load_fid_inception
    from trimodal.quality.tiny import write_inception

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or str(write_inception(Path(tmp) / "inception", seed=args.seed))
        images = sample_images(args.images, args.seed)
        np.savez(Path(tmp) / "images.npz", **{str(i): a for i, a in enumerate(images)})
        proc = subprocess.run([args.python, "-c", REFERENCE, weights, str(Path(tmp) / "images.npz"),
                               str(Path(tmp) / "ref.npy")], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"the reference environment failed: {proc.stderr.strip().splitlines()[-1:]}")
        ref_info = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = np.load(Path(tmp) / "ref.npy", allow_pickle=False)
        ours = image_features(load_fid_inception(weights), images, batch_size=1)
    half = len(ours) // 2
    fid = stats_distance(FeatureStats.of(ours[:half]), FeatureStats.of(ours[half:]))
    diff = np.abs(ours - ref)
    result = {"images": len(images), "weights": args.weights or "random (pt_inception format)",
              "reference_torch": ref_info["torch"], "torch": torch.__version__,
              "feature_max_abs_diff": float(diff.max()), "feature_scale": float(np.abs(ref).max()),
              "feature_max_rel_diff": float((diff / (np.abs(ref) + 1e-3 * np.abs(ref).max())).max()),
              "fid_ours": fid, "fid_reference": ref_info["fid"], "fid_rel_diff": abs(fid - ref_info["fid"]) / ref_info["fid"]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
