"""Text→image sampling end to end: the image-text pipeline on the shipped images → a few training
steps → ``run_sample`` with task image → a PNG of the right size (a grid for ``num > 1``).

The image tokenizer is a tiny random MoVQGAN (decoded images are noise): this checks the
plumbing -- the manifest's tokenizer entry (path, grid) reaching the checkpoint, the template
length, decoding, the grid -- not image quality.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trimodal.pipelines.image_text import ImageTextPipelineConfig, run_image_text_pipeline
from trimodal.shards.loader import SourceConfig
from trimodal.tokenizers.movqgan import MoVQGANTokenizer
from trimodal.train.generate import SampleConfig, run_sample
from trimodal.train.trainer import TrainConfig, train

IMAGES = resources.files("trimodal") / "data" / "images"




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sp_model, movq_ckpt) -> Path:
    root = tmp_path_factory.mktemp("imgsample")
    ds = str(root / "image_text")
    m = run_image_text_pipeline(ImageTextPipelineConfig(
        inputs=[str(IMAGES)], captions=str(IMAGES / "captions.jsonl"), format="folder", text_tokenizer=sp_model,
        image_tokenizer=movq_ckpt, out=ds, image_size=64, device="cpu", target_shard_bytes=4000), ["--runner=DirectRunner"])
    assert m.counts["written"] == 12 and m.tokenizers["image"].grid == (8, 8)
    out = root / "run"
    cfg = TrainConfig.load(None, [
        f"run.out_dir={out}", "run.steps=4", "run.batch_size=4", "run.device=cpu", "run.progress=false",
        "run.log_every=1", "run.ckpt_every=4", "data.seq_len=128", "data.num_streams=2",
        "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=128",
        "optim.lr=3e-3", "optim.warmup_steps=1", "optim.weight_decay=0.0",
    ])
    cfg.data.sources = [SourceConfig(root=ds)]
    res = train(cfg)
    assert np.isfinite(res["losses"]).all()
    return out


def _args(run_dir: Path, out: Path, **kw) -> SampleConfig:
    base = dict(checkpoint=str(run_dir), task="image", prompt="a red circle on a white background", out=str(out),
                steps=4, length=16, seconds=1.0, device="cpu")
    return SampleConfig(**{**base, **kw})


def test_one_image_png_has_the_tokenizers_resolution(run_dir, tmp_path):
    out = tmp_path / "one.png"
    lines = run_sample(_args(run_dir, out))
    assert "1 image(s) of 64x64" in lines[-1]
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"


def test_several_images_make_a_grid(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    run_sample(_args(run_dir, out, num=4, order="confidence", cfg=1.0))
    assert Image.open(out).size == (128, 128)  # 2 x 2 tiles of 64 px
    out3 = tmp_path / "grid3.png"
    run_sample(_args(run_dir, out3, num=3, prompt=""))
    arr = np.asarray(Image.open(out3))
    assert arr.shape == (128, 128, 3)
    assert (arr[64:, 64:] == 255).all()  # the unused fourth tile stays white


def test_checkpoint_records_tokenizer_path_and_grid(run_dir, movq_ckpt, tmp_path):
    state_file = sorted((run_dir / "checkpoints").iterdir())[-1] / "state.json"
    image = json.loads(state_file.read_text())["tokenizers"]["image"]
    assert image["grid"] == [8, 8] and Path(image["path"]) == Path(movq_ckpt).resolve()
    # an explicit --image-tokenizer overrides the recorded path; the grid still comes from the state
    out = tmp_path / "override.png"
    run_sample(_args(run_dir, out, image_tokenizer=movq_ckpt, seed=3))
    assert Image.open(out).size == (64, 64)
    assert MoVQGANTokenizer.from_path(movq_ckpt).grid == (8, 8)  # the fallback when a state has no grid
