import math

import pytest
import torch
import torch.nn.functional as F

from trimodal.tokenizers.vocab import VocabLayout
from trimodal.train.model import (
    Attention,
    ModelConfig,
    Transformer,
    apply_rope,
    ffn_hidden,
    flops_per_token,
    param_counts,
)

LAYOUT = VocabLayout(text_codes=50, image_codes=32, audio_codes=16, audio_levels=2)
PAPER = VocabLayout(text_codes=100277)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(), LAYOUT).eval()


def random_tokens(b: int, L: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, LAYOUT.vocab_size, (b, L), generator=g)


def test_shapes_and_heads(model):
    g = torch.Generator().manual_seed(0)
    tokens = random_tokens(2, 17, g)
    h = model(tokens, torch.ones(2, 17, dtype=torch.bool))
    assert h.shape == (2, 17, 64)
    for m, block in enumerate(LAYOUT.blocks):
        assert model.head_logits(h, m).shape == (2, 17, block.predictable)
    flat = h.reshape(-1, 64)
    assert model.full_logits(flat).shape == (34, sum(b.predictable for b in LAYOUT.blocks))
    mod = torch.randint(0, 3, (34,), generator=g)
    groups = model.logits_for(flat, mod)
    assert [len(idx) for idx, _ in groups] == [int((mod == m).sum()) for m in range(3)]
    for m, (idx, logits) in enumerate(groups):
        torch.testing.assert_close(logits, model.head_logits(flat[idx], m))


def test_embedding_dispatches_ids_to_their_block(model):
    layout = LAYOUT
    ids = torch.tensor([[0, layout.text.pad, layout.image.offset + 3, layout.audio.mask, layout.task_token("audio_text")]])
    e = model.embed(ids)[0]
    torch.testing.assert_close(e[0], model.embeddings["text"].weight[0])
    torch.testing.assert_close(e[1], model.embeddings["text"].weight[layout.text.size - 1])
    torch.testing.assert_close(e[2], model.embeddings["image"].weight[3])
    torch.testing.assert_close(e[3], model.embeddings["audio"].weight[layout.audio.size - 1])
    torch.testing.assert_close(e[4], model.embeddings["task"].weight[2])


def test_padding_invariance(model):
    g = torch.Generator().manual_seed(1)
    tokens = random_tokens(3, 20, g)
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[0, 14:] = False
    valid[2, 5:] = False
    out = model(tokens, valid)
    other = torch.where(valid, tokens, random_tokens(3, 20, g))
    assert not torch.equal(other, tokens)
    out2 = model(other, valid)
    torch.testing.assert_close(out2[valid], out[valid], rtol=0, atol=1e-6)
    # More padding at the end changes nothing either.
    longer = torch.cat([tokens, torch.full((3, 7), LAYOUT.pad)], 1)
    out3 = model(longer, torch.cat([valid, torch.zeros(3, 7, dtype=torch.bool)], 1))
    torch.testing.assert_close(out3[:, :20][valid], out[valid], rtol=0, atol=1e-5)
    # Without the mask the PAD ids do leak in, so the test above can fail.
    assert not torch.allclose(model(other)[valid], model(tokens)[valid], atol=1e-4)


def test_bidirectional(model):
    g = torch.Generator().manual_seed(2)
    tokens = random_tokens(1, 12, g)
    changed = tokens.clone()
    changed[0, -1] = (tokens[0, -1] + 1) % LAYOUT.vocab_size
    a, b = model(tokens), model(changed)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position sees the last


def test_attention_matches_reference():
    torch.manual_seed(3)
    cfg = ModelConfig.tiny()
    attn = Attention(cfg)
    x = torch.randn(2, 9, cfg.dim)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    m = Transformer(cfg, LAYOUT)
    out = attn(x, m.rope_cos, m.rope_sin, valid[:, None, None, :])
    # Reference: per head, explicit softmax(q·k/√d) with padded keys removed.
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    ref = torch.zeros_like(x)
    hd = cfg.head_dim
    for b in range(2):
        heads = []
        for h in range(cfg.n_heads):
            sl = slice(h * hd, (h + 1) * hd)
            qh = F.rms_norm(q[b, :, sl], (hd,), attn.q_norm.weight, cfg.norm_eps)
            kh = F.rms_norm(k[b, :, sl], (hd,), attn.k_norm.weight, cfg.norm_eps)
            qh, kh = (apply_rope(t[None, None], m.rope_cos, m.rope_sin)[0, 0] for t in (qh, kh))
            scores = qh @ kh.T / math.sqrt(hd)
            scores[:, ~valid[b]] = float("-inf")
            heads.append(scores.softmax(-1) @ v[b, :, sl])
        ref[b] = attn.proj(torch.cat(heads, -1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_rope_is_relative():
    """q·k after RoPE depends only on the position offset."""
    cos, sin = Transformer(ModelConfig.tiny(), LAYOUT).rope_cos, Transformer(ModelConfig.tiny(), LAYOUT).rope_sin
    q, k = torch.randn(16), torch.randn(16)
    seq = torch.zeros(1, 1, 30, 16)

    def dot(i, j):
        qs, ks = seq.clone(), seq.clone()
        qs[0, 0, i], ks[0, 0, j] = q, k
        return (apply_rope(qs, cos, sin)[0, 0, i] * apply_rope(ks, cos, sin)[0, 0, j]).sum()

    torch.testing.assert_close(dot(3, 7), dot(20, 24), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dot(3, 7), dot(3, 9), atol=1e-4)


@pytest.mark.parametrize("cfg", [ModelConfig.tiny(), ModelConfig.from_depth(2), ModelConfig.tiny(qk_norm=False)])
def test_param_formula_matches_module(cfg):
    m = Transformer(cfg, LAYOUT)
    counts = param_counts(cfg, LAYOUT)
    assert counts["non_embedding"] == m.num_params(non_embedding=True)
    assert counts["total"] == m.num_params(non_embedding=False) == sum(p.numel() for p in m.parameters())


def test_3b_config_size_without_allocating():
    cfg = ModelConfig.from_depth(24)  # the default SwiGLU rule: (2/3)·2.75·d
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.hidden_dim) == (3072, 24, 24, 128, 5632)
    counts = param_counts(cfg, PAPER)
    assert 2.1e9 < counts["non_embedding"] < 2.2e9
    assert PAPER.vocab_size == 117698
    # Embedding tables cover the whole vocabulary; heads only the predictable ids.
    assert counts["embedding"] == 3072 * 117698
    assert counts["head"] == 3072 * (100279 + 16386 + 1026)
    assert 2.8e9 < counts["total"] < 2.9e9  # "3B"
    wide = ModelConfig.from_depth(24, ffn_rule="ratio")
    assert wide.hidden_dim == 8448 and 2.7e9 < param_counts(wide, PAPER)["non_embedding"] < 2.8e9
    f = flops_per_token(cfg, PAPER, 3256)
    assert f == 6 * counts["non_embedding"] + 12 * 24 * 3072 * 3256


def test_ffn_hidden_rounding():
    assert ffn_hidden(3072, 2.75) == 8448  # exact: already a multiple of 64
    assert ffn_hidden(2048, 2.75) == 5632
    assert ffn_hidden(64, 2.75) == 192  # 176 → next multiple of 64
    assert ffn_hidden(100, 2.75, multiple_of=1) == 275
    assert ModelConfig.from_depth(3, ffn_rule="ratio").hidden_dim == 1088  # 1056 → 1088
    assert ModelConfig.from_depth(3, ffn_rule="ratio", ffn_multiple_of=1).hidden_dim == 1056
    assert ffn_hidden(3072, 2.75, rule="two_thirds") == 5632


def test_paper_hp_search_model_has_the_papers_counts():
    """8 blocks × 1,024 (the paper's HP-search model): "320M, 80M non-embedding"."""
    exact = ModelConfig(dim=1024, n_layers=8, n_heads=8, ffn_multiple_of=1)
    assert exact.hidden_dim == 1878
    counts = param_counts(exact, PAPER)
    assert abs(counts["non_embedding"] - 79.7e6) < 0.1e6 and abs(counts["total"] - 320.8e6) < 0.1e6
    assert abs(param_counts(ModelConfig(dim=1024, n_layers=8, n_heads=8, ffn_rule="ratio"), PAPER)["non_embedding"]
               - 102.8e6) < 0.1e6
    with pytest.raises(ValueError, match="ffn_rule"):
        ModelConfig(ffn_rule="half")


def test_init_and_config_checks():
    torch.manual_seed(4)
    m = Transformer(ModelConfig.from_depth(2), LAYOUT)
    w = m.layers[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02 * 0.986) < 2e-3  # trunc-normal at ±3σ shrinks std by 1.3 %
    assert w.abs().max() <= 0.06 + 1e-7
    assert torch.equal(m.layers[0].norm1.weight, torch.ones(256))
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(dim=100, n_heads=3)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, m.cfg.max_seq_len + 1, dtype=torch.long))


def test_meta_device_build_then_init():
    with torch.device("meta"):
        m = Transformer(ModelConfig.tiny(), LAYOUT)
    m.to_empty(device="cpu")
    m.init_weights()
    ref = Transformer(ModelConfig.tiny(), LAYOUT)
    torch.testing.assert_close(m.rope_cos, ref.rope_cos)
    out = m(torch.zeros(1, 5, dtype=torch.long))
    assert torch.isfinite(out).all()
    assert set(m.state_dict()) == set(ref.state_dict())  # RoPE tables are not checkpointed
    assert not any("rope" in k for k in m.state_dict())
