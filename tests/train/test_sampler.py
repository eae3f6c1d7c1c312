import pytest
import torch
from torch import nn

from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TEXT, VocabLayout
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.sampler import (
    SamplerConfig,
    media_template,
    reveal_counts,
    sample,
    span,
    text_template,
    unconditional,
)

LAYOUT = VocabLayout(text_codes=50, image_codes=32, audio_codes=16, audio_levels=2)
MASKS = torch.tensor([b.mask for b in LAYOUT.blocks])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(), LAYOUT).eval()


class Recorder(nn.Module):
    """Wraps a model; records every input row batch and counts forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, tokens, valid=None):
        self.inputs.append(tokens.clone())
        return self.inner(tokens, valid)

    def head_logits(self, h, m):
        return self.inner.head_logits(h, m)


class Ramp(nn.Module):
    """Logits that grow with the position: column 0 gets `position` and every other 0, so the
    later a position, the more confident its prediction (and its mode is the block's code 0)."""

    def forward(self, tokens, valid=None):
        pos = torch.arange(tokens.shape[1], dtype=torch.float32)
        return pos.expand(tokens.shape[0], -1).unsqueeze(-1)

    def head_logits(self, h, m):
        logits = torch.zeros(h.shape[0], LAYOUT.blocks[m].predictable)
        logits[:, 0] = h[:, 0]
        return logits


def n_masked(x: torch.Tensor) -> int:
    return int(torch.isin(x, MASKS).sum())


def test_templates():
    t, i = LAYOUT.text, LAYOUT.image
    tt = text_template(LAYOUT, [5, 6], 3)
    assert tt.tokens.tolist() == [LAYOUT.task_token("text"), t.bos, 5, 6, t.mask, t.mask, t.mask, t.eos]
    assert tt.modality.tolist() == [TASK] + [TEXT] * 7
    assert tt.prompt.tolist() == [False, False, True, True, False, False, False, False]
    mt = media_template(LAYOUT, "image_text", 4, [7])
    assert mt.tokens.tolist() == (
        [LAYOUT.task_token("image_text"), i.bos] + [i.mask] * 4 + [i.eos, t.bos, 7, t.eos]
    )
    assert mt.modality.tolist() == [TASK] + [IMAGE] * 6 + [TEXT] * 3
    assert mt.prompt.nonzero().flatten().tolist() == [8]
    at = media_template(LAYOUT, "audio_text", 6, [])
    assert at.tokens[1] == LAYOUT.audio.bos and (at.modality[1:9] == AUDIO).all()
    # Modalities agree with the vocabulary's own block lookup.
    for tpl in (tt, mt, at):
        assert tpl.modality.tolist() == LAYOUT.modality_of(tpl.tokens.numpy()).tolist()
    with pytest.raises(ValueError, match="prompt ids"):
        text_template(LAYOUT, [50], 2)
    with pytest.raises(ValueError, match="task"):
        media_template(LAYOUT, "text", 4, [1])


def test_unconditional_replaces_exactly_the_prompt():
    mt = media_template(LAYOUT, "image_text", 4, [7, 8, 9])
    u = unconditional(mt, LAYOUT)
    assert torch.equal(u.tokens[mt.prompt], torch.full((3,), LAYOUT.text.mask))
    assert torch.equal(u.tokens[~mt.prompt], mt.tokens[~mt.prompt])
    # Unconditional text generation is the empty prompt.
    assert text_template(LAYOUT, [], 4).tokens.tolist() == [LAYOUT.task_token("text"), LAYOUT.text.bos] + [LAYOUT.text.mask] * 4 + [LAYOUT.text.eos]


@pytest.mark.parametrize("task", ["image_text", "audio_text", "text"])
@pytest.mark.parametrize("order", ["random", "confidence"])
def test_sampling_fills_every_target_inside_its_block(model, task, order):
    tpl = text_template(LAYOUT, [1, 2], 9) if task == "text" else media_template(LAYOUT, task, 9, [1, 2])
    cfg = SamplerConfig(steps=4, order=order, cfg_scale=1.0 if task == "text" else 3.0)
    out = sample(model, tpl.tokens, tpl.modality, LAYOUT, cfg, prompt=tpl.prompt)
    assert out.shape == tpl.tokens.shape
    target = torch.isin(tpl.tokens, MASKS)
    assert n_masked(out) == 0
    assert torch.equal(out[~target], tpl.tokens[~target])
    for pos in target.nonzero().flatten().tolist():
        m = int(tpl.modality[pos])
        block = LAYOUT.blocks[m]
        hi = block.offset + (block.predictable if m == TEXT else block.codes)  # media: codes only
        assert block.offset <= out[pos] < hi


def test_media_positions_never_draw_bos_or_eos():
    """A model that puts all its mass on BOS/EOS: media positions still get codes, text not."""

    class Specials(Ramp):
        def head_logits(self, h, m):
            logits = torch.zeros(h.shape[0], LAYOUT.blocks[m].predictable)
            logits[:, -2:] = 50.0
            return logits

    mt = media_template(LAYOUT, "audio_text", 8, [])
    out = sample(Specials(), mt.tokens, None, LAYOUT, SamplerConfig(steps=2))
    assert ((out[2:10] >= LAYOUT.audio.offset) & (out[2:10] < LAYOUT.audio.offset + LAYOUT.audio.codes)).all()
    tt = text_template(LAYOUT, [], 5)
    out = sample(Specials(), tt.tokens, None, LAYOUT, SamplerConfig(steps=2))
    assert set(out[2:7].tolist()) <= {LAYOUT.text.bos, LAYOUT.text.eos}


@pytest.mark.parametrize("n, steps", [(10, 4), (3, 8), (7, 7), (5, 1)])
def test_reveal_counts_follow_the_linear_schedule(model, n, steps):
    tt = text_template(LAYOUT, [1], n)
    rec = Recorder(model)
    sample(rec, tt.tokens, tt.modality, LAYOUT, SamplerConfig(steps=steps))
    seen = [n_masked(x) for x in rec.inputs]
    # Masked count before step k is n − round(n·(k−1)/K); steps that reveal nothing are skipped.
    expected = [n - int(n * (k - 1) / steps + 0.5) for k in range(1, steps + 1)
                if int(n * k / steps + 0.5) > int(n * (k - 1) / steps + 0.5)]
    assert seen == expected
    assert sum(reveal_counts(torch.tensor([n]), k, steps).item() for k in range(1, steps + 1)) == n


def test_reveal_counts_examples():
    per_step = [reveal_counts(torch.tensor([10]), k, 4).item() for k in range(1, 5)]
    assert per_step == [3, 2, 3, 2]  # 2.5 → 3, 5, 7.5 → 8, 10


def test_confidence_order_reveals_most_confident_first():
    tt = text_template(LAYOUT, [], 8)  # targets at positions 2..9; Ramp is most sure at the end
    rec = Recorder(Ramp())
    out = sample(rec, tt.tokens, None, LAYOUT, SamplerConfig(steps=4, order="confidence"))
    masks = [torch.isin(x[0], MASKS).nonzero().flatten().tolist() for x in rec.inputs]
    assert masks == [list(range(2, 10)), list(range(2, 8)), list(range(2, 6)), list(range(2, 4))]
    assert n_masked(out) == 0
    # Random order does not follow the ramp (with this seed).
    rec = Recorder(Ramp())
    sample(rec, tt.tokens, None, LAYOUT, SamplerConfig(steps=4, order="random", seed=3))
    assert torch.isin(rec.inputs[1][0], MASKS).nonzero().flatten().tolist() != list(range(2, 8))


def test_cfg_scale_zero_is_unconditional_and_one_is_a_single_pass(model):
    mt = media_template(LAYOUT, "image_text", 12, [3, 4, 5, 6])
    u = unconditional(mt, LAYOUT)
    cfg0 = SamplerConfig(steps=5, cfg_scale=0.0, seed=1)
    guided0 = sample(model, mt.tokens, mt.modality, LAYOUT, cfg0, prompt=mt.prompt)
    uncond = sample(model, u.tokens, u.modality, LAYOUT, SamplerConfig(steps=5, seed=1), prompt=u.prompt)
    target = torch.isin(mt.tokens, MASKS)
    assert torch.equal(guided0[target], uncond[target])
    # The prompt matters for this model: the denoiser's outputs at the target differ, and so do
    # conditional and unconditional samples for some seed (a tiny random model may agree on one).
    with torch.no_grad():
        assert not torch.allclose(model(mt.tokens[None])[0][target], model(u.tokens[None])[0][target])
    differ = []
    for seed in range(1, 9):
        c = sample(model, mt.tokens, mt.modality, LAYOUT, SamplerConfig(steps=5, seed=seed), prompt=mt.prompt)
        n = sample(model, u.tokens, u.modality, LAYOUT, SamplerConfig(steps=5, seed=seed), prompt=u.prompt)
        differ.append(not torch.equal(c[target], n[target]))
    assert any(differ)
    # Passes per step: one without guidance, two with; the second sees MASK_text on the prompt.
    rec = Recorder(model)
    sample(rec, mt.tokens, mt.modality, LAYOUT, SamplerConfig(steps=5), prompt=mt.prompt)
    assert len(rec.inputs) == 5
    rec = Recorder(model)
    sample(rec, mt.tokens, mt.modality, LAYOUT, SamplerConfig(steps=5, cfg_scale=6.0), prompt=mt.prompt)
    assert len(rec.inputs) == 10
    assert (rec.inputs[1][0, mt.prompt] == LAYOUT.text.mask).all()
    assert torch.equal(rec.inputs[0][0, mt.prompt], mt.tokens[mt.prompt])
    with pytest.raises(ValueError, match="prompt"):
        sample(model, mt.tokens, mt.modality, LAYOUT, SamplerConfig(cfg_scale=2.0))


def test_greedy_and_tiny_top_p_pick_the_mode():
    tt = text_template(LAYOUT, [], 6)
    greedy = sample(Ramp(), tt.tokens, None, LAYOUT, SamplerConfig(steps=3, temperature=0.0))
    assert (greedy[2:8] == LAYOUT.text.offset).all()[()]
    nucleus = sample(Ramp(), tt.tokens, None, LAYOUT, SamplerConfig(steps=3, top_p=1e-3, seed=5))
    assert torch.equal(nucleus, greedy)
    # Full nucleus at high temperature draws other tokens too.
    hot = sample(Ramp(), tt.tokens, None, LAYOUT, SamplerConfig(steps=3, temperature=100.0, seed=5))
    assert not torch.equal(hot, greedy)


def test_seeded_batched_and_deterministic(model):
    mt = media_template(LAYOUT, "audio_text", 10, [1, 2])
    cfg = SamplerConfig(steps=4, seed=7)
    a = sample(model, mt.tokens, mt.modality, LAYOUT, cfg)
    b = sample(model, mt.tokens, mt.modality, LAYOUT, cfg)
    assert torch.equal(a, b)
    c = sample(model, mt.tokens, mt.modality, LAYOUT, SamplerConfig(steps=4, seed=8))
    assert not torch.equal(a, c)
    batch = sample(model, mt.tokens.expand(3, -1), mt.modality.expand(3, -1), LAYOUT, cfg)
    assert batch.shape == (3, mt.tokens.numel()) and n_masked(batch) == 0
    assert not torch.equal(batch[0], batch[1])  # rows draw independently


def test_span_extracts_generated_media_and_text():
    mt = media_template(LAYOUT, "image_text", 4, [7, 8])
    filled = mt.tokens.clone()
    filled[2:6] = LAYOUT.image.offset + torch.arange(4)
    assert span(LAYOUT, filled, IMAGE).tolist() == (LAYOUT.image.offset + torch.arange(4)).tolist()
    assert span(LAYOUT, filled, TEXT).tolist() == [7, 8]
    with pytest.raises(ValueError, match="BOS"):
        span(LAYOUT, filled, AUDIO)


def test_config_checks_and_presets():
    with pytest.raises(ValueError, match="order"):
        SamplerConfig(order="left_to_right")
    with pytest.raises(ValueError, match="top_p"):
        SamplerConfig(top_p=0.0)
    img = SamplerConfig.for_task("image_text")
    assert (img.steps, img.cfg_scale, img.temperature, img.top_p) == (1024, 6.0, 1.0, 1.0)
    sp = SamplerConfig.for_task("audio_text", seed=3)
    assert (sp.steps, sp.cfg_scale, sp.temperature, sp.top_p, sp.seed) == (1000, 3.0, 1.2, 0.9, 3)


class Slow(Recorder):
    """The model, each forward pass taking over a second (as an image on a CPU does)."""

    def forward(self, tokens, valid=None):
        import time

        time.sleep(0.6)
        return super().forward(tokens, valid)


def test_a_sampling_loop_over_a_second_shows_a_progress_bar(model, monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    tpl = media_template(LAYOUT, "image_text", 9, [1, 2])
    cfg = SamplerConfig(steps=3, cfg_scale=1.0)
    quick = sample(model, tpl.tokens, tpl.modality, LAYOUT, cfg, prompt=tpl.prompt, progress="image 1/1")
    assert "image 1/1" not in capsys.readouterr().err  # well under a second: no bar
    slow = sample(Slow(model), tpl.tokens, tpl.modality, LAYOUT, cfg, prompt=tpl.prompt, progress="image 1/1")
    err = capsys.readouterr().err
    assert "image 1/1" in err and "3/3" in err and torch.equal(quick, slow)  # the bar changes nothing drawn
