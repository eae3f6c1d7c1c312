import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TEXT, VocabLayout
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.objective import (
    ObjectiveConfig,
    anti_mask,
    apply_mask,
    diffusion_loss,
    maskable,
    masked_diffusion_loss,
)
from trimodal.train.schedules import ScheduleConfig, make_schedule

LAYOUT = VocabLayout(text_codes=50, image_codes=32, audio_codes=16, audio_levels=2)


class IdentityHeads(nn.Module):
    """Every head returns the hidden state itself (dim = 4 = each block's predictable count),
    so a test chooses the logits directly. The grouping code is the real model's."""

    logits_for = Transformer.logits_for
    full_logits = Transformer.full_logits

    def __init__(self, hidden=None):
        super().__init__()
        self.hidden = hidden

    def head_logits(self, h, modality):
        return h

    def forward(self, tokens, valid):  # a fixed "prediction", whatever the input
        return self.hidden.expand(tokens.shape[0], -1, -1)


def image_row(layout: VocabLayout, n_img: int, n_txt: int, n_pad: int, g: torch.Generator):
    """[TASK_image, BOS_i, img…, EOS_i, BOS_t, txt…, EOS_t, PAD…] and its modality/valid."""
    i, t = layout.image, layout.text
    ids = (
        [layout.task_token("image_text"), i.bos]
        + (i.offset + torch.randint(0, i.codes, (n_img,), generator=g)).tolist()
        + [i.eos, t.bos]
        + torch.randint(0, t.codes, (n_txt,), generator=g).tolist()
        + [t.eos] + [layout.pad] * n_pad
    )
    mod = [TASK] + [IMAGE] * (n_img + 2) + [TEXT] * (n_txt + 2 + n_pad)
    valid = [True] * (len(ids) - n_pad) + [False] * n_pad
    return torch.tensor(ids), torch.tensor(mod), torch.tensor(valid)


def mixed_batch(g: torch.Generator, layout: VocabLayout = LAYOUT):
    """Three rows: image-text with padding, audio-text with padding, packed text."""
    a, t = layout.audio, layout.text
    r0 = image_row(layout, 12, 4, 3, g)
    ids1 = ([layout.task_token("audio_text"), a.bos] + (a.offset + torch.randint(0, a.codes, (10,), generator=g)).tolist()
            + [a.eos, t.bos, 3, 4, t.eos] + [layout.pad] * 7)
    r1 = (torch.tensor(ids1), torch.tensor([TASK] + [AUDIO] * 12 + [TEXT] * 11),
          torch.tensor([True] * 17 + [False] * 7))
    ids2 = [layout.task_token("text")] + [t.bos] + torch.randint(0, t.codes, (10,), generator=g).tolist() + [t.eos]
    ids2 += [t.bos] + torch.randint(0, t.codes, (10,), generator=g).tolist()
    r2 = (torch.tensor(ids2), torch.tensor([TASK] + [TEXT] * 23), torch.ones(24, dtype=torch.bool))
    return tuple(torch.stack(x) for x in zip(r0, r1, r2))


# ---- masking ----------------------------------------------------------------------------------


def test_mask_never_touches_task_or_pad_and_uses_own_mask_token():
    g = torch.Generator().manual_seed(0)
    tokens, modality, valid = mixed_batch(g)
    never = (modality == TASK) | ~valid
    for _ in range(200):
        p = torch.rand(3, generator=g)
        noisy, is_masked = apply_mask(tokens, modality, valid, p, LAYOUT, g)
        assert not (is_masked & never).any()
        assert torch.equal(noisy[~is_masked], tokens[~is_masked])
        for m in (TEXT, IMAGE, AUDIO):
            sel = is_masked & (modality == m)
            assert (noisy[sel] == LAYOUT.blocks[m].mask).all()
    # Probability 1 masks exactly the maskable set; 0 masks nothing.
    _, all_masked = apply_mask(tokens, modality, valid, torch.ones(3), LAYOUT, g)
    assert torch.equal(all_masked, ~never)
    _, none = apply_mask(tokens, modality, valid, torch.zeros(3), LAYOUT, g)
    assert not none.any()


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial", "geometric"])
def test_mask_rate_matches_one_minus_alpha(name):
    sched = make_schedule(ScheduleConfig(name))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    L = 20000
    tokens = torch.full((5, L), 7)
    modality = torch.full((5, L), TEXT)
    valid = torch.ones(5, L, dtype=torch.bool)
    _, is_masked = apply_mask(tokens, modality, valid, sched.mask_prob(t), LAYOUT, torch.Generator().manual_seed(1))
    p = sched.mask_prob(t)
    rate = is_masked.float().mean(1)
    assert ((rate - p).abs() <= 4 * (p * (1 - p) / L).sqrt() + 1e-4).all(), (rate, p)


def test_anti_mask_is_exact_complement():
    g = torch.Generator().manual_seed(2)
    tokens, modality, valid = mixed_batch(g)
    _, is_masked = apply_mask(tokens, modality, valid, torch.tensor([0.2, 0.5, 0.9]), LAYOUT, g)
    noisy_c, comp = anti_mask(tokens, modality, valid, is_masked, LAYOUT)
    assert not (comp & is_masked).any()
    assert torch.equal(comp | is_masked, maskable(modality, valid))
    assert torch.equal(noisy_c[~comp], tokens[~comp])
    assert all((noisy_c[comp & (modality == m)] == LAYOUT.blocks[m].mask).all() for m in range(3))


# ---- loss by hand ---------------------------------------------------------------------------

# Blocks of 2 codes + BOS + EOS: every head has 4 predictable ids, so hidden = logits.
SMALL = VocabLayout(text_codes=2, image_codes=2, audio_codes=2, audio_levels=1)


def _hand_case():
    i, t = SMALL.image, SMALL.text
    tokens = torch.tensor([[SMALL.task_token("image_text"), i.bos, i.offset + 0, i.eos, t.bos, 1, t.eos, SMALL.pad]])
    modality = torch.tensor([[TASK, IMAGE, IMAGE, IMAGE, TEXT, TEXT, TEXT, TEXT]])
    valid = torch.tensor([[True] * 7 + [False]])
    is_masked = torch.zeros(1, 8, dtype=torch.bool)
    is_masked[0, 2] = is_masked[0, 5] = True
    hidden = torch.zeros(1, 8, 4)
    hidden[0, 2, 0] = math.log(3)  # image code 0 (the target) gets weight 3 of 6
    return tokens, modality, valid, is_masked, hidden


def test_loss_by_hand_restricted():
    tokens, modality, valid, is_masked, hidden = _hand_case()
    out = masked_diffusion_loss(IdentityHeads(), hidden, tokens, modality, is_masked, valid,
                                torch.tensor([2.0]), SMALL)
    # image: p = 3/6 → CE ln 2, lse ln 6; text: uniform over 4 → CE ln 4, lse ln 4; 7 non-PAD.
    ce = 2 * (math.log(2) + math.log(4)) / 7
    z = (math.log(6) ** 2 + math.log(4) ** 2) / 2
    assert out.ce.item() == pytest.approx(ce, rel=1e-6)
    assert out.z_loss.item() == pytest.approx(z, rel=1e-6)
    assert out.loss.item() == pytest.approx(ce + 1e-5 * z, rel=1e-6)
    assert out.masked.tolist() == [1, 1, 0]
    assert out.tokens.tolist() == [3, 3, 0]  # task token and PAD are no modality's tokens
    assert out.ce_sum.tolist() == pytest.approx([math.log(4), math.log(2), 0.0], rel=1e-6)
    assert out.weighted_sum.tolist() == pytest.approx([2 * math.log(4), 2 * math.log(2), 0.0], rel=1e-6)
    logs = out.per_modality()
    assert logs["ce/image"] == pytest.approx(math.log(2), rel=1e-6) and "loss/audio" not in logs


def test_loss_by_hand_full_vocab():
    tokens, modality, valid, is_masked, hidden = _hand_case()
    out = masked_diffusion_loss(IdentityHeads(), hidden, tokens, modality, is_masked, valid,
                                torch.tensor([2.0]), SMALL, full_vocab=True)
    # 12 columns (3 heads × 4); image position: three copies of ln 3 → p = 3/18, lse ln 18.
    ce = 2 * (math.log(6) + math.log(12)) / 7
    z = (math.log(18) ** 2 + math.log(12) ** 2) / 2
    assert out.loss.item() == pytest.approx(ce + 1e-5 * z, rel=1e-6)


def test_n_tokens_override_is_the_denominator():
    tokens, modality, valid, is_masked, hidden = _hand_case()
    args = (IdentityHeads(), hidden, tokens, modality, is_masked, valid, torch.tensor([2.0]), SMALL)
    a = masked_diffusion_loss(*args, z_loss=0.0)
    b = masked_diffusion_loss(*args, z_loss=0.0, n_tokens=14)
    assert b.loss.item() == pytest.approx(a.loss.item() / 2, rel=1e-6)


def test_no_masked_positions_gives_zero_loss_with_graph():
    tokens, modality, valid, _, hidden = _hand_case()
    hidden = hidden.clone().requires_grad_(True)
    out = masked_diffusion_loss(IdentityHeads(), hidden, tokens, modality, torch.zeros_like(valid), valid,
                                torch.tensor([2.0]), SMALL)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


# ---- with the real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(), LAYOUT)


def test_restricted_matches_manual_and_differs_from_full(model):
    g = torch.Generator().manual_seed(3)
    tokens, modality, valid = mixed_batch(g)
    t = torch.tensor([0.3, 0.6, 0.9])
    noisy, is_masked = apply_mask(tokens, modality, valid, t, LAYOUT, g)
    hidden = model(noisy, valid)
    w = 1 / t
    out = masked_diffusion_loss(model, hidden, tokens, modality, is_masked, valid, w, LAYOUT, z_loss=0.0)
    manual = 0.0
    for b, i in is_masked.nonzero().tolist():
        m = int(modality[b, i])
        logits = model.head_logits(hidden[b, i], m)
        target = int(tokens[b, i]) - LAYOUT.blocks[m].offset
        manual += w[b] * F.cross_entropy(logits[None], torch.tensor([target]))
    manual = manual / valid.sum()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    full = masked_diffusion_loss(model, hidden, tokens, modality, is_masked, valid, w, LAYOUT, full_vocab=True)
    assert torch.isfinite(full.loss) and torch.isfinite(out.loss)
    assert full.loss.item() > out.loss.item()  # a larger softmax domain only adds mass


def test_every_head_gets_a_gradient_even_without_its_modality(model):
    g = torch.Generator().manual_seed(4)
    tokens, modality, valid = (x[:1] for x in mixed_batch(g))  # image-text only: no audio
    model.zero_grad(set_to_none=True)
    out = diffusion_loss(model, tokens, modality, valid, LAYOUT, ObjectiveConfig(), generator=g)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert model.heads["audio"].weight.grad.abs().sum() == 0
    assert model.heads["image"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("full_vocab", [False, True])
def test_diffusion_loss_anti_mask_scores_every_maskable_position_once(model, full_vocab):
    g = torch.Generator().manual_seed(5)
    tokens, modality, valid = mixed_batch(g)
    cfg = ObjectiveConfig(anti_mask=True, full_vocab=full_vocab, time_sampling="antithetic")
    out = diffusion_loss(model, tokens, modality, valid, LAYOUT, cfg, generator=g)
    assert out.masked.sum() == maskable(modality, valid).sum()
    assert out.tokens.sum() == 2 * (valid & (modality != TASK)).sum()
    assert torch.isfinite(out.loss)
    # An explicit n_tokens counts the rows as given; the duplication is accounted for inside.
    again = diffusion_loss(model, tokens, modality, valid, LAYOUT, cfg, generator=torch.Generator().manual_seed(5),
                           n_tokens=valid.sum())
    ref = diffusion_loss(model, tokens, modality, valid, LAYOUT, cfg, generator=torch.Generator().manual_seed(5))
    assert again.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial", "geometric"])
@pytest.mark.parametrize("anti", [False, True])
def test_loss_is_unbiased_for_the_mean_token_ce(name, anti):
    """With predictions that ignore the input, E_t,mask[loss] = Σ_i CE_i / non-PAD count."""
    L = 6
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(1, L, 4, generator=g)
    tokens = torch.tensor([[SMALL.task_token("text"), SMALL.text.bos, 0, 1, SMALL.text.eos, SMALL.pad]])
    modality = torch.tensor([[TASK] + [TEXT] * 5])
    valid = torch.tensor([[True] * 5 + [False]])
    ce_all = F.cross_entropy(hidden[0, 1:5], tokens[0, 1:5], reduction="sum")
    expected = ce_all / 5  # anti-masking doubles both numerator and denominator
    n = 20000
    cfg = ObjectiveConfig(schedule=ScheduleConfig(name), time_sampling="stratified", z_loss=0.0, anti_mask=anti)
    out = diffusion_loss(IdentityHeads(hidden), tokens.expand(n, -1), modality.expand(n, -1),
                         valid.expand(n, -1), SMALL, cfg, generator=g)
    assert out.loss.item() == pytest.approx(expected.item(), rel=0.05)


@pytest.mark.parametrize("anti", [False, True])
def test_chunked_head_equals_the_reference_loss_and_gradients(model, anti):
    """The head that never materialises the [masked × block] logits gives today's loss and
    gradients (fp32 here; bf16 within bf16 tolerance is checked in test_cross_entropy.py)."""
    g = torch.Generator().manual_seed(8)
    tokens, modality, valid = mixed_batch(g)
    out = {}
    for impl in ("reference", "chunked"):
        model.zero_grad(set_to_none=True)
        cfg = ObjectiveConfig(loss_impl=impl, anti_mask=anti, z_loss=1e-3)
        res = diffusion_loss(model, tokens, modality, valid, LAYOUT, cfg, generator=torch.Generator().manual_seed(9))
        res.loss.backward()
        out[impl] = (res.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert out["chunked"][0] == pytest.approx(out["reference"][0], rel=1e-5)
    for n, grad in out["reference"][1].items():
        assert torch.allclose(out["chunked"][1][n], grad, atol=1e-6, rtol=1e-4), n
