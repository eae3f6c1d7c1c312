"""The masked-diffusion loss, as pure functions of a batch (``docs/objective.md``).

Forward process: one t per row; every non-PAD, non-task position is independently replaced by
its *own modality's* MASK token with probability 1 − α_t. Loss:

    L = Σ_rows w(t_r) · Σ_{i masked in r} CE_i / N_tokens  +  λ_z · Σ_{i masked} lse_i² / N_masked

with N_tokens the non-PAD positions and N_masked the masked positions *of the global batch* (all
micro-batches, all ranks), so both terms are normalised once and the sum of the per-micro-batch,
per-rank losses is exactly the global-batch loss, whatever the accumulation or world size.

Dividing by the non-PAD count (not by the masked count |I_t|) is the reading under which
E[w(t)·1{masked}] = 1 makes the first term an unbiased per-token ELBO (the paper's formula
prints w(t)/|I_t|; see the docs). Under data parallelism pass ``n_tokens``/``n_masked`` = the
global counts (multiply the loss by the world size if the gradient reduction averages, as FSDP's
does by default). The non-PAD count includes task tokens (never scored): with L in the thousands
that is a < 0.1 % scale.

Randomness per global row: :func:`row_uniforms` draws the masking uniforms of each row from a
generator seeded by (seed, step, global row index), so a row gets the same mask whichever rank or
micro-batch holds it.

By default the logits are computed only at masked positions and only over the predictable ids
of their modality's block (``restricted``); ``full_vocab=True`` scores every masked position
over the predictable ids of all three blocks. BOS/EOS count as ordinary, maskable positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from trimodal.config import option
from trimodal.tokenizers.vocab import MODALITIES, TASK, VocabLayout
from trimodal.train.cross_entropy import linear_cross_entropy, resolve_impl
from trimodal.train.schedules import ScheduleConfig, Schedule, make_schedule, sample_t

N_MOD = len(MODALITIES)


@dataclass
class ObjectiveConfig:
    """Training-objective options. ``time_sampling``: uniform | antithetic | stratified."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eps: float = option(1e-3, help="t is drawn from [eps, 1]")
    time_sampling: str = option("uniform", help="t of a global batch: uniform (i.i.d.), antithetic (pairs u, 1-u) or stratified (B strata)")
    z_loss: float = option(1e-5, help="weight of the z-loss on the log-partition of masked logits")
    full_vocab: bool = option(False, help="score masked positions over the whole vocabulary (default: their modality's block)")
    anti_mask: bool = option(False, help="also train every row on the complement of its mask (doubles compute per row)")
    subsample: float = option(0.0, help="share of text rows cut to a random length (paper Table 5: 0.05)")
    loss_impl: str = option("auto", help="cross-entropy head: auto, reference (exact fp32), chunked (no full logits) or cce (cut-cross-entropy, CUDA)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.subsample <= 1.0:
            raise ValueError(f"objective.subsample must be in [0, 1], got {self.subsample}")
        if self.loss_impl not in ("auto", "reference", "chunked", "cce"):
            raise ValueError(f"objective.loss_impl must be auto, reference, chunked or cce, got {self.loss_impl!r}")


@dataclass
class LossOutput:
    """``loss`` carries the graph; the rest is detached, for logging and all-reduce.

    Per-modality tensors are indexed TEXT, IMAGE, AUDIO. ``weighted_sum[m] / tokens[m]`` is the
    modality's ELBO per non-PAD token (these sum, token-weighted, to ``ce``);
    ``ce_sum[m] / masked[m]`` is the plain mean CE of its masked tokens."""

    loss: Tensor
    ce: Tensor
    z_loss: Tensor
    weighted_sum: Tensor  # [3] Σ w(t)·CE over masked positions
    ce_sum: Tensor  # [3] Σ CE over masked positions
    masked: Tensor  # [3] number of masked (scored) positions
    tokens: Tensor  # [3] number of non-PAD positions

    def per_modality(self) -> dict[str, float]:
        """Scalars for a logger: ``loss/<m>`` (ELBO per token) and ``ce/<m>`` (masked mean)."""
        out: dict[str, float] = {}
        for m, name in enumerate(MODALITIES):
            if self.tokens[m] > 0:
                out[f"loss/{name}"] = float(self.weighted_sum[m] / self.tokens[m])
            if self.masked[m] > 0:
                out[f"ce/{name}"] = float(self.ce_sum[m] / self.masked[m])
        return out


# ---- masking ----------------------------------------------------------------------------


def maskable(modality: Tensor, valid: Tensor) -> Tensor:
    """Positions the forward process may mask: non-PAD and not a task token."""
    return valid & (modality != TASK)


def mask_ids(layout: VocabLayout, modality: Tensor) -> Tensor:
    """Each position's modality MASK id (task positions get PAD; they are never masked)."""
    table = torch.tensor([b.mask for b in layout.blocks] + [layout.pad], device=modality.device)
    return table[modality]


def segment_times(seed: int, step: int, rows: Tensor | list[int], segments: Tensor, eps: float,
                  salt: int = 0x7365) -> Tensor:
    """t per position [B, L] for packed rows: one t ~ U(eps, 1) per segment (sample), drawn from a
    generator seeded by (seed, step, global row), so a sample's t does not depend on where it sits;
    PAD positions (segment −1) get t = 1 (never scored)."""
    rows = rows.tolist() if isinstance(rows, Tensor) else list(rows)
    n = int(segments.max()) + 1 if segments.numel() else 0
    out = torch.ones(segments.shape, dtype=torch.float32)
    g = torch.Generator()
    for i, r in enumerate(rows):
        g.manual_seed(seed_of(seed, step, r, salt))
        t = eps + (1.0 - eps) * torch.rand(max(n, 1), generator=g, dtype=torch.float64)
        seg = segments[i].cpu()
        out[i] = torch.where(seg >= 0, t.float()[seg.clamp(min=0)], out[i])
    return out


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, row, ...), the same on every machine."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p) + 1) % (2**63 - 1)
    return seed


def row_uniforms(seed: int, step: int, rows: Tensor | list[int], length: int, salt: int = 0) -> Tensor:
    """U(0, 1) masking draws [len(rows), length] on the CPU, row ``g`` from a generator seeded by
    ``(seed, step, g, salt)``: a row's mask depends on its global index, not on who computes it."""
    rows = rows.tolist() if isinstance(rows, Tensor) else list(rows)
    out = torch.empty(len(rows), length)
    g = torch.Generator()
    for i, r in enumerate(rows):
        g.manual_seed(seed_of(seed, step, r, salt))
        out[i] = torch.rand(length, generator=g)
    return out


def subsample_rows(tokens: Tensor, valid: Tensor, task: Tensor, u: Tensor, p: float, pad: int) -> tuple[Tensor, Tensor]:
    """"Random sequence subsample" (the paper's Table 5, p = 0.05 for text; LLaDA's recipe): a
    text row whose ``u[:, 0] < p`` keeps only its first ℓ positions, ℓ uniform in [2, L] from
    ``u[:, 1]`` (the task token and at least one more), the rest becoming PAD. The model so also
    sees short texts (a packed text row is otherwise always exactly L long). ``u`` is [B, 2]."""
    if p <= 0:
        return tokens, valid
    B, L = tokens.shape
    cut = (task == 0) & (u[:, 0].to(tokens.device) < p)
    length = 2 + torch.floor(u[:, 1].to(tokens.device) * (L - 1)).long().clamp(max=L - 2)
    keep = torch.arange(L, device=tokens.device)[None, :] < length[:, None]
    drop = cut[:, None] & ~keep
    return torch.where(drop, torch.full_like(tokens, pad), tokens), valid & ~drop


def apply_mask(
    tokens: Tensor,
    modality: Tensor,
    valid: Tensor,
    mask_prob: Tensor,
    layout: VocabLayout,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask each maskable position of row r independently with probability ``mask_prob[r]``
    (= 1 − α(t_r), from the schedule). Returns ``(noisy_tokens, is_masked)``. The uniforms are
    ``uniforms`` when given (e.g. :func:`row_uniforms`), else drawn from ``generator`` on its
    device (a CPU generator works for CUDA tokens, at a copy's cost)."""
    if uniforms is None:
        gen_device = generator.device if generator is not None else tokens.device
        uniforms = torch.rand(tokens.shape, generator=generator, device=gen_device)
    u = uniforms.to(tokens.device)
    if mask_prob.dim() == 1:  # one t per row; packed rows pass one per position (their sample's)
        mask_prob = mask_prob.unsqueeze(1)
    is_masked = (u < mask_prob.to(u.dtype)) & maskable(modality, valid)
    return torch.where(is_masked, mask_ids(layout, modality), tokens), is_masked


def anti_mask(
    tokens: Tensor, modality: Tensor, valid: Tensor, is_masked: Tensor, layout: VocabLayout
) -> tuple[Tensor, Tensor]:
    """The complementary draw (antithetic masks, docs/objective.md): mask exactly the maskable positions that
    ``is_masked`` left clean. Returns ``(noisy_tokens, complement)``."""
    complement = maskable(modality, valid) & ~is_masked
    return torch.where(complement, mask_ids(layout, modality), tokens), complement


# ---- loss -------------------------------------------------------------------------------


def _block_starts(layout: VocabLayout, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per modality: the global id of its block's first code, and the column where its block
    starts in the concatenated full-vocab logits (text, image, audio predictable ids)."""
    sizes = [b.predictable for b in layout.blocks]
    offsets = torch.tensor([b.offset for b in layout.blocks], device=device)
    starts = torch.tensor([sum(sizes[:m]) for m in range(N_MOD)], device=device)
    return offsets, starts


def masked_diffusion_loss(
    model,
    hidden: Tensor,
    tokens: Tensor,
    modality: Tensor,
    is_masked: Tensor,
    valid: Tensor,
    weight: Tensor,
    layout: VocabLayout,
    *,
    full_vocab: bool = False,
    z_loss: float = 1e-5,
    n_tokens: Tensor | int | None = None,
    n_masked: Tensor | int | None = None,
    loss_impl: str = "reference",
) -> LossOutput:
    """The loss from hidden states [B, L, D], clean ``tokens`` (the targets), ``is_masked``
    [B, L] and the per-row ELBO weight ``weight`` [B] = w(t). ``n_tokens`` / ``n_masked``
    default to this batch's non-PAD and masked counts.

    ``model`` provides ``logits_for`` and ``full_logits`` (see ``model.py``); logits are
    computed from the gathered masked rows only, by the head in the compute dtype — bf16 under
    autocast, so each logit carries bf16 rounding — and upcast to float32 for the logsumexp,
    the gather and every reduction. The exact float32 path is the model run in float32."""
    device = hidden.device
    rows, cols = is_masked.nonzero(as_tuple=True)
    h, target, mod = hidden[rows, cols], tokens[rows, cols], modality[rows, cols]
    offsets, starts = _block_starts(layout, device)

    impl = "reference" if full_vocab else resolve_impl(loss_impl, device)
    order, ce, lse = [], [], []
    if impl != "reference":
        # A head that never materialises [masked × block] logits (chunked, or cut-cross-entropy
        # on CUDA): per modality, from the head's weight directly (docs/objective.md).
        for m, name in enumerate(MODALITIES):
            idx = (mod == m).nonzero(as_tuple=True)[0]
            ce_m, lse_m = linear_cross_entropy(h[idx], model.heads[name].weight, target[idx] - offsets[m], impl=impl)
            ce.append(ce_m)
            lse.append(lse_m)
            order.append(idx)
    else:
        # (positions among the masked ones, their logits, the target column) per logit group.
        if full_vocab:
            groups = [(torch.arange(h.shape[0], device=device), model.full_logits(h), target - offsets[mod] + starts[mod])]
        else:
            # Every head runs, with zero rows if need be: its (zero) gradient then exists on every rank.
            groups = [(idx, logits, target[idx] - offsets[m]) for m, (idx, logits) in enumerate(model.logits_for(h, mod))]
        for idx, logits, col in groups:
            logits = logits.float()
            lse_g = torch.logsumexp(logits, dim=-1)
            ce.append(lse_g - logits.gather(1, col.unsqueeze(1)).squeeze(1))
            lse.append(lse_g)
            order.append(idx)
    order, ce, lse = torch.cat(order), torch.cat(ce).float(), torch.cat(lse).float()
    if weight.dim() == 2:  # packed rows: each position carries its sample's weight
        w = weight.to(torch.float32)[rows, cols][order]
    else:
        w = weight.to(torch.float32)[rows[order]]
    mod = mod[order]

    if n_tokens is None:
        n_tokens = valid.sum()
    n_tokens = torch.as_tensor(n_tokens, device=device, dtype=torch.float32).clamp_min(1.0)
    if n_masked is None:
        n_masked = lse.numel()
    n_masked = torch.as_tensor(n_masked, device=device, dtype=torch.float32).clamp_min(1.0)
    ce_loss = (w * ce).sum() / n_tokens
    z = (lse * lse).sum() / n_masked
    loss = ce_loss + z_loss * z

    with torch.no_grad():
        mod_valid = torch.where(valid, modality, TASK)
        stats = dict(
            weighted_sum=torch.zeros(N_MOD, device=device).index_add_(0, mod, (w * ce).detach()),
            ce_sum=torch.zeros(N_MOD, device=device).index_add_(0, mod, ce.detach()),
            masked=torch.bincount(mod, minlength=N_MOD)[:N_MOD].float(),
            tokens=torch.bincount(mod_valid.flatten(), minlength=N_MOD + 1)[:N_MOD].float(),
        )
    return LossOutput(loss=loss, ce=ce_loss.detach(), z_loss=z.detach(), **stats)


@dataclass
class Corrupted:
    """A batch after the forward process: what the model sees (``noisy``), the targets, and each
    row's ELBO weight. With anti-masking every row appears twice (its mask, then the complement)."""

    noisy: Tensor
    tokens: Tensor
    modality: Tensor
    valid: Tensor
    is_masked: Tensor
    weight: Tensor  # [B] per row, or [B, L] per position (packed rows)
    segments: Tensor | None = None
    positions: Tensor | None = None


def corrupt(
    tokens: Tensor,
    modality: Tensor,
    valid: Tensor,
    t: Tensor,
    layout: VocabLayout,
    cfg: ObjectiveConfig,
    schedule: Schedule | None = None,
    *,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
    segments: Tensor | None = None,
    positions: Tensor | None = None,
) -> Corrupted:
    """Mask every row at its t (``t`` [B], or [B, L] per position for packed rows). With ``cfg.anti_mask`` each row is followed by its complement,
    masked at rate α(t) and weighted by −α'(t)/α(t) (``Schedule.anti_weight``), evaluated at
    min(t, 1 − eps) — the mirror of the plain rows' t ≥ eps bound, which keeps the weight finite
    as α(t) → 0."""
    schedule = schedule or make_schedule(cfg.schedule)
    t = t.to(tokens.device, torch.float32)
    noisy, is_masked = apply_mask(tokens, modality, valid, schedule.mask_prob(t), layout, generator, uniforms)
    weight = schedule.weight(t)
    if cfg.anti_mask:
        noisy_c, is_masked_c = anti_mask(tokens, modality, valid, is_masked, layout)
        tokens, modality, valid = (torch.cat([x, x]) for x in (tokens, modality, valid))
        noisy, is_masked = torch.cat([noisy, noisy_c]), torch.cat([is_masked, is_masked_c])
        weight = torch.cat([weight, schedule.anti_weight(t.clamp(max=1.0 - cfg.eps))])
        segments, positions = (None if x is None else torch.cat([x, x]) for x in (segments, positions))
    return Corrupted(noisy, tokens, modality, valid, is_masked, weight, segments, positions)


def score(model, c: Corrupted, layout: VocabLayout, cfg: ObjectiveConfig, *, n_tokens: Tensor | int | None = None,
          n_masked: Tensor | int | None = None) -> LossOutput:
    """Forward the corrupted batch and score it. ``n_tokens``/``n_masked`` count the rows as
    corrupted (anti-masked rows included); they default to this batch's counts."""
    hidden = model(c.noisy, c.valid) if c.segments is None else model(c.noisy, c.valid, c.segments, c.positions)
    return masked_diffusion_loss(
        model, hidden, c.tokens, c.modality, c.is_masked, c.valid, c.weight, layout,
        full_vocab=cfg.full_vocab, z_loss=cfg.z_loss, n_tokens=n_tokens, n_masked=n_masked, loss_impl=cfg.loss_impl,
    )


def diffusion_loss(
    model,
    tokens: Tensor,
    modality: Tensor,
    valid: Tensor,
    layout: VocabLayout,
    cfg: ObjectiveConfig,
    *,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
    schedule: Schedule | None = None,
    n_tokens: Tensor | int | None = None,
    n_masked: Tensor | int | None = None,
) -> LossOutput:
    """One loss for a collated batch: draw t (unless given), :func:`corrupt`, :func:`score`.

    ``n_tokens`` counts the rows as passed in (it is doubled here with anti-masking, so the loss
    stays a mean per non-PAD token); ``n_masked`` counts every scored position (with
    anti-masking: every maskable position)."""
    schedule = schedule or make_schedule(cfg.schedule)
    if t is None:
        t = sample_t(tokens.shape[0], cfg.eps, generator, cfg.time_sampling, device=tokens.device)
    c = corrupt(tokens, modality, valid, t, layout, cfg, schedule, generator=generator, uniforms=uniforms)
    if cfg.anti_mask and n_tokens is not None:
        n_tokens = 2 * n_tokens
    return score(model, c, layout, cfg, n_tokens=n_tokens, n_masked=n_masked)
