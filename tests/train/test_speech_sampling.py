"""``trimodal sample --task speech``: checkpoint → template → sampler → DAC decode → WAV.

A tiny Transformer over a layout with audio codes 1024 × 4 levels is saved the way the trainer
saves it (``train/checkpoint.py``: DCP files + state.json with config, layout and the dataset
tokenizers' paths), then the real command line samples from it. The WAV must have the requested
duration at the codec's rate, whatever the duration's fraction of a codec frame.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from trimodal.cli import main
from trimodal.tokenizers.dac import DAC, DACConfig, DACTokenizer, save_dac
from trimodal.tokenizers.text import TextTokenizer
from trimodal.tokenizers.vocab import VocabLayout
from trimodal.train import checkpoint as ckpt
from trimodal.train.distributed import DistInfo
from trimodal.train.model import ModelConfig, Transformer

SR, HOP = 16000, 320  # the tiny codec: 50 frames/s


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sp_model) -> Path:
    root = tmp_path_factory.mktemp("speech_run")
    torch.manual_seed(0)
    dac_path = root / "dac_tiny.pth"
    save_dac(DAC(DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                           n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=SR)), dac_path)
    text = TextTokenizer.from_path(sp_model)  # the session's SentencePiece model (tests/conftest.py)
    dac = DACTokenizer.from_path(dac_path, n_keep=4)
    layout = VocabLayout(text_codes=text.vocab_size, image_codes=16, audio_codes=1024, audio_levels=4,
                         fingerprints={"text": text.fingerprint, "audio": dac.fingerprint})
    model_cfg = ModelConfig.tiny(max_seq_len=256)
    model = Transformer(model_cfg, layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # what the trainer records: tokenizers as the dataset manifests describe them (paths included)
    state = {
        "layout": layout.to_dict(),
        "config": {"model": asdict(model_cfg), "data": {"seq_len": 256}},
        "tokenizers": {"text": text.info().to_dict(), "audio": dac.info(str(dac_path)).to_dict()},
    }
    ckpt.save_checkpoint(root / "checkpoints", 1, model, optimizer, state, {"streams": {}}, DistInfo())
    return root


@pytest.mark.parametrize("seconds", [0.5, 0.37, 0.02])
def test_sample_speech_writes_wav_of_requested_duration(run_dir, tmp_path, capsys, seconds):
    out = tmp_path / "speech.wav"
    rc = main(["--debug", "sample", "--checkpoint", str(run_dir), "--task", "speech", "--prompt", "a rising tone",
               "--out", str(out), "--steps", "3", "--seconds", str(seconds), "--device", "cpu"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    wav, sr = sf.read(out, dtype="float32")
    assert sr == SR and wav.ndim == 1
    assert wav.shape[0] == round(seconds * SR)
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    assert sf.info(out).subtype == "PCM_16"


def test_sample_speech_several_clips_and_explicit_tokenizer(run_dir, tmp_path, sp_model):
    out = tmp_path / "two.wav"
    dac = run_dir / "dac_tiny.pth"
    rc = main(["--debug", "sample", "--checkpoint", str(run_dir / "checkpoints"), "--task", "speech",
               "--prompt", "a falling tone", "--out", str(out), "--steps", "2", "--seconds", "0.2", "--num", "2",
               "--cfg", "1.0", "--audio-tokenizer", str(dac), "--text-tokenizer", sp_model,
               "--device", "cpu"])
    assert rc == 0
    wav, sr = sf.read(out, dtype="float32")
    assert sr == SR and wav.shape == (2 * round(0.2 * SR),)  # clips are concatenated


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    rc = main(["sample", "--checkpoint", str(tmp_path / "nope"), "--task", "speech", "--out", str(tmp_path / "x.wav")])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_seconds_beyond_the_row_budget_are_refused_with_the_maximum(run_dir, tmp_path, capsys):
    from trimodal import api

    model = api.load(str(run_dir), device="cpu")
    prompt_ids = model.tokenizer("text").encode_one("a rising tone")
    limit = model.max_speech_seconds(int(prompt_ids.size))
    assert 0.5 < limit < 256 / 4 / 50  # (256 - 5 - prompt) / 4 frames at 50 frames/s
    out = tmp_path / "long.wav"
    rc = main(["sample", "--checkpoint", str(run_dir), "--task", "speech", "--prompt", "a rising tone",
               "--out", str(out), "--steps", "2", "--seconds", "5", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "--seconds 5.0 is beyond" in err and f"{limit:.2f}" in err and not out.exists()
