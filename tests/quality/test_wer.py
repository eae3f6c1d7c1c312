"""WER against hand counts, the written-down normalisation, and a tiny CTC model loaded from its
``save_pretrained`` folder decoded against a hand-written greedy CTC decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trimodal.quality.wer import Transcriber, normalize, resample, word_error_rate


def test_normalisation_as_documented() -> None:
    assert normalize("  Hello, WORLD!  It's  fine…") == "hello world it's fine"
    assert normalize("‘quoted’ don’t — e-mail_x") == "quoted don't e mail x"
    assert normalize("Ｆｕｌｌｗｉｄｔｈ") == "fullwidth"  # NFKC


def test_wer_hand_counts() -> None:
    # 6 reference words, one deletion
    assert word_error_rate(["The cat sat on the mat."], ["the cat sat on mat"]) == pytest.approx(1 / 6)
    # 1 substitution + 1 insertion over 3 words
    assert word_error_rate(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)
    # corpus-level: (0 + 2) errors / (2 + 2) words, not the mean of the per-utterance rates
    assert word_error_rate(["one two", "three four"], ["one two", ""]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["!!"], ["x"])


def test_resample_keeps_a_tone() -> None:
    sr, f = 24000, 440.0
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * f * t), sr, 16000)
    assert y.shape == (16000,)
    spec = np.abs(np.fft.rfft(y))
    assert np.argmax(spec) == pytest.approx(f, abs=1)  # 1 s of audio: bin k is k Hz


def test_tiny_ctc_model_loads_and_transcribes(metric_weights, tmp_path) -> None:
    """A CTC head that always prefers 'o' decodes every clip to "o" (repeats merged), so the
    transcript — and the WER through it — is known by hand; the folder round-trips through
    ``save_pretrained``."""
    tr = Transcriber.load(metric_weights["asr"])
    assert tr.ctc and tr.sample_rate == 16000
    vocab = json.loads((Path(metric_weights["asr"]) / "vocab.json").read_text())
    with torch.no_grad():
        tr.model.lm_head.weight.zero_()
        tr.model.lm_head.bias.zero_()
        tr.model.lm_head.bias[vocab["o"]] = 10.0
    tr.model.save_pretrained(str(tmp_path))
    tr.processor.save_pretrained(str(tmp_path))
    fixed = Transcriber.load(str(tmp_path))
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(12000).astype(np.float32), rng.standard_normal(6000).astype(np.float32)]
    assert fixed.transcribe(clips, 24000) == ["o", "o"]  # resampled 24 → 16 kHz on the way
    assert word_error_rate(["Oh!", "o no"], fixed.transcribe(clips, 24000)) == pytest.approx(2 / 3)


def test_tiny_whisper_model_loads_and_transcribes(metric_weights, tmp_path) -> None:
    """The sequence-to-sequence path: a Whisper whose decoder output is pinned (final layer norm
    gives a constant vector, the untied output head maps it to 'o') emits 'o' at every step and
    never ends, so the transcript is known by hand: 'o' times the decoder's positions (32) less the
    4 start tokens. Round-trips through ``save_pretrained``."""
    tr = Transcriber.load(metric_weights["whisper"])
    assert not tr.ctc and tr.sample_rate == 16000
    tok = tr.processor.tokenizer
    o = tok.convert_tokens_to_ids("o")
    cfg = tr.model.config
    cfg.tie_word_embeddings = False
    model = type(tr.model)(cfg)
    model.load_state_dict(tr.model.state_dict())
    model.generation_config = tr.model.generation_config
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.zero_()
        norm.bias.zero_()
        norm.bias[0] = 1.0
        model.proj_out.weight.zero_()
        model.proj_out.weight[o, 0] = 10.0
    model.save_pretrained(str(tmp_path))
    tr.processor.save_pretrained(str(tmp_path))
    fixed = Transcriber.load(str(tmp_path))
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(12000).astype(np.float32), rng.standard_normal(6000).astype(np.float32)]
    assert fixed.transcribe(clips, 24000) == ["o" * 28, "o" * 28]
    assert word_error_rate(["o", "a b"], fixed.transcribe(clips, 24000)) == pytest.approx(3 / 3)
