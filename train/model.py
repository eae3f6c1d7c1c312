"""The bidirectional transformer denoiser (docs/model.md).

One backbone for all modalities: pre-norm RMSNorm blocks with SwiGLU MLPs, RoPE over the whole
row, QK-norm, no timestep input (the model reads the noise level off the masks), trunc-normal
init. Input embeddings and output heads are split per vocabulary block and untied, so each can
get its own optimiser settings (the paper tunes them per modality).

``forward`` returns final-normed hidden states only. The objective then runs a head on just the
positions it scores, and only over their block's predictable ids (``logits_for``): with a
100k-id text block next to a 16k image block, that is where most of the logit compute and
memory goes.

For FSDP2, shard each of ``model.layers``, then the root, which holds the embeddings, the final
norm and the heads (``train/distributed.py``): the root is not resharded after forward, so the
objective can call the heads outside ``forward``. Build on the meta device and call
``init_weights()`` after ``to_empty`` to recompute the RoPE tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimodal.config import option
from trimodal.tokenizers.vocab import MODALITIES, TASKS, VocabLayout


FFN_RULES = ("two_thirds", "ratio")


def ffn_hidden(dim: int, ratio: float, multiple_of: int = 64, rule: str = "ratio") -> int:
    """SwiGLU width, rounded up to a multiple of ``multiple_of`` (tile-friendly matmuls).

    ``ratio``: ratio·dim. ``two_thirds``: (2/3)·ratio·dim, the usual SwiGLU convention (three
    matrices of ⅔ the width cost what two of the full width do), which is the rule that
    reproduces the paper's parameter counts: its HP-search model (8 blocks × 1,024, "80M
    non-embedding") has 79.7 M non-embedding parameters at the exact width (80.7 M rounded to
    64), against 102.8 M with ``ratio``."""
    if rule not in FFN_RULES:
        raise ValueError(f"ffn rule must be one of {FFN_RULES}, got {rule!r}")
    width = ratio * dim * (2.0 / 3.0 if rule == "two_thirds" else 1.0)
    return multiple_of * math.ceil(width / multiple_of - 1e-9)


@dataclass
class ModelConfig:
    """Transformer shape. The paper's ladder keeps width = 128 × depth (``from_depth``)."""

    dim: int = option(1024, help="width d (divisible by n_heads, even head dim)")
    n_layers: int = option(8, help="depth: transformer blocks")
    n_heads: int = option(8, help="attention heads")
    mlp_ratio: float = option(2.75, help="SwiGLU factor (the paper's)")
    norm_eps: float = option(1e-5, help="RMSNorm epsilon")
    rope_theta: float = option(10000.0, help="RoPE base")
    init_std: float = option(0.02, help="std of the truncated-normal init")
    qk_norm: bool = option(True, help="RMSNorm on queries and keys")
    max_seq_len: int = option(3256, help="RoPE table length; data.seq_len must not exceed it")
    ffn_multiple_of: int = option(64, help="MLP hidden width rounded up to a multiple of this")
    ffn_rule: str = option("two_thirds", help="two_thirds: hidden = 2/3 * mlp_ratio * dim (reproduces the paper's counts); ratio: mlp_ratio * dim")
    attention: str = option("sdpa", help="kernel for segmented (packed) rows: sdpa (dense mask, CPU/GPU) or flex (FlexAttention block mask, CUDA)")

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "max_seq_len", "ffn_multiple_of"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"ModelConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig head_dim ({self.head_dim}) must be even for RoPE")
        if self.attention not in ("sdpa", "flex"):
            raise ValueError(f"ModelConfig.attention must be sdpa or flex, got {self.attention!r}")
        if self.ffn_rule not in FFN_RULES:
            raise ValueError(f"ModelConfig.ffn_rule must be one of {FFN_RULES}, got {self.ffn_rule!r}")

    @classmethod
    def from_depth(cls, depth: int, **overrides) -> "ModelConfig":
        """Ladder point: ``depth`` blocks of width 128·depth with ``depth`` heads (head dim 128)."""
        return cls(**{"dim": 128 * depth, "n_layers": depth, "n_heads": depth, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """For tests and the demo: runs in milliseconds on a CPU."""
        return cls(**{"dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 256, **overrides})

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        return ffn_hidden(self.dim, self.mlp_ratio, self.ffn_multiple_of, self.ffn_rule)


# ---- parameter and FLOP accounting (pure, so a 3B config can be sized without allocating) --


def param_counts(cfg: ModelConfig, layout: VocabLayout) -> dict[str, int]:
    """Parameter counts by group. ``non_embedding`` (the paper's N) excludes input embeddings
    and output heads; it includes every norm."""
    d, h = cfg.dim, cfg.hidden_dim
    per_layer = 4 * d * d + 3 * d * h + 2 * d + (2 * cfg.head_dim if cfg.qk_norm else 0)
    non_embedding = cfg.n_layers * per_layer + d  # + final norm
    embedding = d * (sum(b.size for b in layout.blocks) + len(TASKS))
    head = d * sum(b.predictable for b in layout.blocks)
    return {
        "non_embedding": non_embedding,
        "embedding": embedding,
        "head": head,
        "total": non_embedding + embedding + head,
    }


def flops_per_token(cfg: ModelConfig, layout: VocabLayout, seq_len: int) -> int:
    """Training FLOPs per position (forward + backward) for MFU: 6·N for the non-embedding
    weights plus 12·layers·dim·seq_len for the (bidirectional, unmasked) attention scores and
    weighted sum. Heads are left out: they run only on masked positions over one block, a
    data-dependent few percent at 3B."""
    n = param_counts(cfg, layout)["non_embedding"]
    return 6 * n + 12 * cfg.n_layers * cfg.dim * seq_len


# ---- modules ---------------------------------------------------------------------------


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin of shape [max_seq_len, head_dim/2], float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) of x [B, H, L, hd] by position-dependent angles; cos/sin
    are the tables [≥L, hd/2] (positions 0…L−1) or already gathered per row [B, 1, L, hd/2]
    (packed rows, whose positions restart at every sample)."""
    seq_len = x.shape[-2]
    c, s = (cos[:seq_len], sin[:seq_len]) if cos.dim() == 2 else (cos, sin)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).type_as(x)


def attention_mask(segments: Tensor, kind: str = "sdpa"):
    """Block-diagonal attention for packed rows: position q attends to key k when both belong to
    the same sample (``segments`` equal, ≥ 0). A PAD position (segment −1) attends to itself only,
    so no softmax row is empty. ``sdpa``: a dense boolean mask [B, 1, L, L] (CPU and GPU);
    ``flex``: a FlexAttention ``BlockMask`` (CUDA; whole blocks of no-attention are skipped)."""
    if kind == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        seg = segments

        def same_sample(b, h, q, kv):
            return (seg[b, q] == seg[b, kv]) & ((seg[b, kv] >= 0) | (q == kv))

        B, L = segments.shape
        # _compile: the eager path evaluates the mask over a dense [B, 1, L, L] every step
        return create_block_mask(same_sample, B, None, L, L, device=segments.device, _compile=True)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
    eye = torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)
    return (same | eye).unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        norm = (lambda: nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)) if cfg.qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask) -> Tensor:
        """``mask``: None, a boolean SDPA mask ([B, 1, 1, L] keys or [B, 1, L, L] blocks), or a
        FlexAttention ``BlockMask`` (packed rows on CUDA)."""
        bsz, seq_len, dim = x.shape
        q, k, v = self.qkv(x).view(bsz, seq_len, 3, self.n_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is not None and not isinstance(mask, Tensor):
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(bsz, seq_len, dim))


class MLP(nn.Module):
    """SwiGLU: fc2(silu(gate(x)) · fc1(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.gate(x)) * self.fc1(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        # Factor on both residual branches (CompleteP's (L_base/L)^α, set by
        # train.parametrization.set_parametrization); 1.0 skips the multiply: standard is unchanged.
        self.residual_mult = 1.0

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None) -> Tensor:
        m = self.residual_mult
        a = self.attn(self.norm1(x), cos, sin, key_mask)
        x = x + (a if m == 1.0 else m * a)
        f = self.mlp(self.norm2(x))
        return x + (f if m == 1.0 else m * f)


class Transformer(nn.Module):
    """Embeddings (one table per block: text, image, audio, task) → ``layers`` → final RMSNorm.
    Heads (one per modality, over its predictable ids: codes, BOS, EOS) are applied by the
    caller through :meth:`logits_for` / :meth:`head_logits` / :meth:`full_logits`."""

    def __init__(self, cfg: ModelConfig, layout: VocabLayout) -> None:
        super().__init__()
        self.cfg, self.layout = cfg, layout
        # (offset, size) of each embedding table's id range, in modality-id order.
        self._ranges = [(b.offset, b.size) for b in layout.blocks] + [(layout.task_offset, len(TASKS))]
        names = (*MODALITIES, "task")
        self.embeddings = nn.ModuleDict(
            {name: nn.Embedding(size, cfg.dim) for name, (_, size) in zip(names, self._ranges)}
        )
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(cfg.dim, b.predictable, bias=False) for name, b in zip(MODALITIES, layout.blocks)}
        )
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, scales: dict[str, float] | None = None) -> None:
        """Trunc-normal(std) for every matrix (truncated at ±3 std), ones for norm scales.

        ``scales`` (default: ``self.init_scales``, set by ``train.parametrization``, so a re-init
        after ``to_empty`` keeps them) maps a parameter name to its std (a matrix) or the initial
        value of its gain (a norm); names it lacks get the defaults above."""
        std = self.cfg.init_std
        scales = scales if scales is not None else getattr(self, "init_scales", None)
        if scales:
            from trimodal.train.parametrization import canonical_name
        for name, module in self.named_modules():
            key = canonical_name(f"{name}.weight") if scales else ""
            if isinstance(module, (nn.Linear, nn.Embedding)):
                s = scales.get(key, std) if scales else std
                nn.init.trunc_normal_(module.weight, mean=0.0, std=s, a=-3 * s, b=3 * s)
            elif isinstance(module, nn.RMSNorm):
                module.reset_parameters()
                if scales and module.weight is not None and scales.get(key, 1.0) != 1.0:
                    module.weight.fill_(scales[key])
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def embed(self, tokens: Tensor) -> Tensor:
        """Look each id up in its block's table. Every table is gathered over all positions
        and selected with ``where``: no data-dependent shapes (compile-friendly), and every
        table gets a gradient each step (zeros if unused), which keeps ranks in lockstep."""
        h: Tensor | None = None
        for emb, (offset, size) in zip(self.embeddings.values(), self._ranges):
            local = tokens - offset
            inside = ((local >= 0) & (local < size)).unsqueeze(-1)
            e = emb(local.clamp(0, size - 1))
            h = torch.where(inside, e, 0.0 if h is None else h)
        assert h is not None
        return h

    def forward(self, tokens: Tensor, valid: Tensor | None = None, segments: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        """tokens [B, L] global ids, valid [B, L] (False at PAD) → final-normed hidden [B, L, D].

        PAD positions are excluded as attention keys; their own outputs are meaningless. Packed
        rows pass ``segments`` [B, L] (the sample of each position; -1 at PAD) and ``positions``
        [B, L] (RoPE positions, restarting at each sample): attention is then block-diagonal,
        each position attending only to its own sample (:func:`attention_mask`)."""
        seq_len = tokens.shape[1]
        if seq_len > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos, self.rope_sin
        if positions is not None:
            cos, sin = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # [B, 1, L, hd/2]
        if segments is not None:
            key_mask = attention_mask(segments, self.cfg.attention)
        else:
            # Without PAD (packed text rows) no mask is passed, so SDPA can use its flash kernel;
            # a boolean key mask forces the slower memory-efficient/math kernels.
            key_mask = None if valid is None or bool(valid.all()) else valid[:, None, None, :]
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, key_mask)
        return self.norm(h)

    # ---- heads ----------------------------------------------------------------------------
    def head_logits(self, hidden: Tensor, modality: int) -> Tensor:
        """hidden [..., D] → logits [..., predictable of that modality]; column j is the global
        id ``block.offset + j`` (codes, then BOS, EOS)."""
        return self.heads[MODALITIES[modality]](hidden)

    def logits_for(self, hidden: Tensor, modality: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Group rows of hidden [N, D] by their modality [N]; returns, per modality id
        (TEXT, IMAGE, AUDIO), ``(row index [n_m], logits [n_m, predictable_m])``. Every head is
        called, with zero rows if need be, so all ranks run the same collectives under FSDP."""
        out = []
        for m in range(len(MODALITIES)):
            idx = (modality == m).nonzero(as_tuple=True)[0]
            out.append((idx, self.head_logits(hidden[idx], m)))
        return out

    def full_logits(self, hidden: Tensor) -> Tensor:
        """hidden [N, D] → logits over the predictable ids of all blocks, concatenated in
        modality order (text, image, audio)."""
        return torch.cat([self.head_logits(hidden, m) for m in range(len(MODALITIES))], dim=-1)

    # ---- accounting -------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` drops embeddings and heads (the paper's N)."""
        skip = ("embeddings.", "heads.") if non_embedding else ()
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(skip))

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return flops_per_token(self.cfg, self.layout, seq_len or self.cfg.max_seq_len)
