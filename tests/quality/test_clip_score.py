"""CLIP score against the model's own forward pass (logits_per_image / logit scale = cosine), and
loading a ``save_pretrained`` folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trimodal.quality.clip_score import ClipScorer


def test_cosines_match_the_clip_forward_and_the_score_formula(metric_weights) -> None:
    s = ClipScorer.load(metric_weights["clip"])
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8))
    prompts = ["a red cat", "dog", "the sea at night"]
    cos = s.cosines(images, prompts)
    pix = s.image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids = s.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = s.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pix)
        direct = (out.logits_per_image / s.model.logit_scale.exp()).diagonal().double().numpy()
    np.testing.assert_allclose(cos, direct, rtol=1e-5, atol=1e-6)
    assert s.score(images, prompts) == pytest.approx(float(np.mean(100 * np.maximum(direct, 0))), rel=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        s.cosines(images, prompts[:2])
