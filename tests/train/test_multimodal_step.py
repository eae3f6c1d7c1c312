"""Training steps on image-text rows (alone and mixed with text) through ``trainer.train``.

The datasets are written directly with ``shards.writer.write_shard`` + ``Manifest`` (the layout
the image-text pipeline writes: uint16 code grids + caption ids, an image tokenizer entry with
``vocab_size`` and ``grid``), so the test costs seconds, not a Beam run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trimodal.shards.loader import SourceConfig
from trimodal.shards.manifest import Manifest
from trimodal.shards.writer import write_shard
from trimodal.tokenizers.text import TextTokenizer
from trimodal.train.trainer import TrainConfig, train

GRID = (8, 8)
IMAGE_CODES = 512
CAPTIONS = ["a red circle on white", "images and audio share one sequence", "the model reads a corpus",
            "masked tokens with words that fit", "a corpus of images", "documents and captions"]
DOCS = ["the model reads a corpus of documents and learns to fill masked tokens",
        "images and audio share one sequence with captions and transcripts",
        "words that fit their context while images share one sequence"]


def image_text_dataset(root: Path, sp_model: str, n: int = 24, shards: int = 2, seed: int = 0) -> str:
    tok = TextTokenizer.from_path(sp_model)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        codes = rng.integers(0, IMAGE_CODES, GRID).astype(np.uint16)
        text = tok.encode_one(CAPTIONS[i % len(CAPTIONS)])
        meta = {"id": f"img:{i}", "source": "synthetic", "modality": "image_text",
                "lengths": {"image": codes.size, "text": int(text.size)}, "provenance": {}}
        samples.append((f"k{i:05d}", meta, {"image": codes, "text": text}))
    infos = [write_shard(str(root), f"shard-{s:05d}-of-{shards:05d}.tar", samples[s::shards]) for s in range(shards)]
    image_info = {"kind": "movqgan", "fingerprint": "0123456789abcdef", "vocab_size": IMAGE_CODES, "grid": list(GRID),
                  "image_size": 64, "path": str(root / "movqgan.ckpt")}
    Manifest(kind="tokenized", modality="image_text", tokenizers={"text": tok.info(), "image": image_info},
             shards=infos, counts={"read": n, "written": n, "filtered": {}, "rejected": {}}).save(str(root))
    return str(root)


def audio_text_dataset(root: Path, sp_model: str, n: int = 24, seed: int = 0) -> str:
    """Clips of 2 codebooks × 10 or × 40 frames: at L = 96 the long ones (80 + transcript + 5)
    do not fit a row."""
    tok = TextTokenizer.from_path(sp_model)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        codes = rng.integers(0, 32, (2, 40 if i % 3 == 0 else 10)).astype(np.uint16)
        text = tok.encode_one(CAPTIONS[i % len(CAPTIONS)])
        meta = {"id": f"clip:{i}", "source": "synthetic", "modality": "audio_text", "provenance": {}}
        samples.append((f"a{i:05d}", meta, {"audio": codes, "text": text}))
    info = write_shard(str(root), "shard-00000-of-00001.tar", samples)
    audio_info = {"kind": "dac", "fingerprint": "fedcba9876543210", "vocab_size": 32, "n_keep": 2}
    Manifest(kind="tokenized", modality="audio_text", tokenizers={"text": tok.info(), "audio": audio_info},
             shards=[info], counts={"read": n, "written": n, "filtered": {}, "rejected": {}}).save(str(root))
    return str(root)


def text_dataset(root: Path, sp_model: str) -> str:
    tok = TextTokenizer.from_path(sp_model)
    samples = [(f"d{i:05d}", {"id": str(i), "source": "tiny", "modality": "text"}, {"text": tok.encode_one(d)})
               for i, d in enumerate(DOCS * 4)]
    info = write_shard(str(root), "shard-00000-of-00001.tar", samples)
    Manifest(kind="tokenized", modality="text", tokenizers={"text": tok.info()}, shards=[info]).save(str(root))
    return str(root)


def _cfg(sources: list[str], out: Path, steps: int, **extra) -> TrainConfig:
    sets = [
        f"run.out_dir={out}", f"run.steps={steps}", "run.batch_size=4", "run.device=cpu", "run.progress=false",
        "run.log_every=1", f"run.ckpt_every={steps}", "data.seq_len=96", "data.num_streams=2",
        "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96",
        "optim.lr=3e-3", "optim.warmup_steps=1", "optim.weight_decay=0.0",
    ] + [f"{k}={v}" for k, v in extra.items()]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=r) for r in sources]
    return cfg


def _log(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_image_text_step_logs_per_modality_losses(sp_model, tmp_path):
    ds = image_text_dataset(tmp_path / "img", sp_model)
    out = tmp_path / "run"
    res = train(_cfg([ds], out, 3))
    assert all(math.isfinite(x) for x in res["losses"]) and len(res["losses"]) == 3
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:  # every row is image + caption: both modalities every step
        assert math.isfinite(r["loss"]) and math.isfinite(r["loss/image"]) and math.isfinite(r["loss/text"])
        assert r["tokens/image"] == 4 * (GRID[0] * GRID[1] + 2)  # codes + BOS/EOS per row
        assert "loss/audio" not in r
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["layout"]["image_codes"] == IMAGE_CODES
    # the checkpoint carries the image tokenizer entry the sampler needs (path, grid)
    state = json.loads(next((out / "checkpoints").iterdir()).joinpath("state.json").read_text())
    assert state["tokenizers"]["image"]["grid"] == list(GRID)
    assert state["layout"]["image_codes"] == IMAGE_CODES


def test_mixed_text_and_image_text_steps(sp_model, tmp_path):
    img = image_text_dataset(tmp_path / "img", sp_model)
    txt = text_dataset(tmp_path / "txt", sp_model)
    out = tmp_path / "mixed"
    res = train(_cfg([txt, img], out, 4))
    assert all(math.isfinite(x) for x in res["losses"])
    log = _log(out)
    assert all("loss/text" in r and math.isfinite(r["loss/text"]) for r in log)
    assert any("loss/image" in r for r in log)
    assert all(math.isfinite(r["loss/image"]) for r in log if "loss/image" in r)


def test_shards_of_another_image_tokenizer_are_refused(sp_model, tmp_path):
    """Two image-text datasets made with different image tokenizers must not train together."""
    img = image_text_dataset(tmp_path / "img", sp_model)
    other = image_text_dataset(tmp_path / "img2", sp_model, seed=1)
    m = Manifest.load(other)
    from dataclasses import replace

    m.tokenizers["image"] = replace(m.tokenizers["image"], fingerprint="fedcba9876543210")
    m.save(other)
    with pytest.raises(ValueError, match="image tokenizer"):
        train(_cfg([img, other], tmp_path / "refused", 1))


def test_packed_training_cuts_padding_and_keeps_the_loss_finite(sp_model, tmp_path):
    """``data.pack_paired``: image-text samples (66 + caption positions) share rows of 200 with a
    text filler; the logged padding falls from most of the row to a few percent."""
    img = image_text_dataset(tmp_path / "img", sp_model)
    txt = text_dataset(tmp_path / "txt", sp_model)
    extra = {"data.seq_len": 200, "model.max_seq_len": 200}
    plain = tmp_path / "plain"
    train(_cfg([txt, img], plain, 3, **extra, **{"data.task_weights": '{"text": 0.2, "image_text": 0.8}'}))
    packed = tmp_path / "packed"
    res = train(_cfg([txt, img], packed, 3, **extra, **{"data.task_weights": '{"text": 0.2, "image_text": 0.8}',
                                                       "data.pack_paired": "true"}))
    assert all(math.isfinite(x) for x in res["losses"])
    pad_plain = np.mean([r["padding"] for r in _log(plain)])
    pad_packed = np.mean([r["padding"] for r in _log(packed)])
    assert pad_plain > 0.3 and pad_packed < 0.05, (pad_plain, pad_packed)
    assert all("loss/image" in r for r in _log(packed))


@pytest.mark.parametrize("mode", ["crop", "skip"])
def test_audio_that_does_not_fit_is_warned_at_start_and_counted_in_the_log(sp_model, tmp_path, mode):
    audio = audio_text_dataset(tmp_path / "audio", sp_model)
    out = tmp_path / f"run-{mode}"
    train(_cfg([audio], out, 3, **{"data.audio_overflow": mode}))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r.get("event") == "start")
    assert any("8 of 24 audio clips" in w and "do not fit a row of 96" in w for w in start["warnings"])
    last = _log(out)[-1]
    if mode == "crop":
        assert last["data/audio_too_long_cropped"] > 0 and last["data/audio_frames_dropped"] > 0
        assert "data/audio_too_long_skipped" not in last
    else:
        assert last["data/audio_too_long_skipped"] > 0 and "data/audio_too_long_cropped" not in last
