"""FAD: frame embeddings from a ``save_pretrained`` HuBERT equal the model's forward on the
resampled, normalised clip; stored reference statistics reproduce the distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trimodal.quality.fad import AudioEmbedder, fad, reference_stats
from trimodal.quality.frechet import FeatureStats
from trimodal.quality.wer import resample
from trimodal.tokenizers.audio_io import write_wav


def test_frames_reference_and_distance(metric_weights, tmp_path) -> None:
    e = AudioEmbedder.load(metric_weights["audio_embed"])
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(24000).astype(np.float32) * 0.1 for _ in range(2)]
    frames = e.frames(clips, 24000)
    x = resample(clips[0], 24000, 16000)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.no_grad():
        direct = e.model(torch.from_numpy(x)[None]).last_hidden_state[0].double().numpy()
    np.testing.assert_allclose(frames[: len(direct)], direct, rtol=1e-4, atol=1e-5)
    assert frames.shape[0] == 2 * len(direct)  # frames of all clips pooled
    for i, c in enumerate(clips):
        write_wav(str(tmp_path / f"{i}.wav"), c, 24000)
    ref = reference_stats(str(tmp_path), e, out=str(tmp_path / "ref.npz"))
    assert fad(e, clips, 24000, FeatureStats.load(tmp_path / "ref.npz")) == pytest.approx(0.0, abs=1e-3)
    noise = [rng.uniform(-1, 1, 24000).astype(np.float32) for _ in range(2)]
    assert fad(e, noise, 24000, ref) > 0
