"""The masked-diffusion loss (PAPER §5), as pure functions of a batch.

Forward process: one t per row; every non-PAD, non-task position is independently replaced by
its *own modality's* MASK token with probability 1 − α_t. Loss:

    L = Σ_rows w(t_r) · Σ_{i masked in r} CE_i  /  (non-PAD positions in the batch)  +  λ_z · mean_i lse_i²

Dividing by the non-PAD count (not by the masked count |I_t|) is the reading under which
E[w(t)·1{masked}] = 1 makes the first term an unbiased per-token ELBO (PAPER §5 "normalisation
caveat"). Under data parallelism pass ``n_tokens`` = the global non-PAD count, so that summing
rank losses' gradients gives exactly the global-batch loss (multiply by the world size if the
gradient reduction averages, as FSDP's does by default). The non-PAD count includes task
tokens (never scored): with L in the thousands that is a < 0.1 % scale.

By default the logits are computed only at masked positions and only over the predictable ids
of their modality's block (``restricted``); ``full_vocab=True`` scores every masked position
over the predictable ids of all three blocks. BOS/EOS count as ordinary, maskable positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from trimodal.tokenizers.vocab import MODALITIES, TASK, VocabLayout
from trimodal.train.schedules import ScheduleConfig, Schedule, make_schedule, sample_t

N_MOD = len(MODALITIES)


@dataclass
class ObjectiveConfig:
    """Training-objective options. ``time_sampling``: uniform | antithetic | stratified."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eps: float = 1e-3
    time_sampling: str = "uniform"
    z_loss: float = 1e-5
    full_vocab: bool = False
    anti_mask: bool = False


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


def apply_mask(
    tokens: Tensor,
    modality: Tensor,
    valid: Tensor,
    mask_prob: Tensor,
    layout: VocabLayout,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask each maskable position of row r independently with probability ``mask_prob[r]``
    (= 1 − α(t_r), from the schedule). Returns ``(noisy_tokens, is_masked)``. The uniforms are
    drawn on the generator's device (a CPU generator works for CUDA tokens, at a copy's cost)."""
    gen_device = generator.device if generator is not None else tokens.device
    u = torch.rand(tokens.shape, generator=generator, device=gen_device).to(tokens.device)
    is_masked = (u < mask_prob.to(u.dtype).unsqueeze(1)) & maskable(modality, valid)
    return torch.where(is_masked, mask_ids(layout, modality), tokens), is_masked


def anti_mask(
    tokens: Tensor, modality: Tensor, valid: Tensor, is_masked: Tensor, layout: VocabLayout
) -> tuple[Tensor, Tensor]:
    """The complementary draw (PAPER §7.4): mask exactly the maskable positions that
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
) -> LossOutput:
    """The loss from hidden states [B, L, D], clean ``tokens`` (the targets), ``is_masked``
    [B, L] and the per-row ELBO weight ``weight`` [B] = w(t).

    ``model`` provides ``logits_for`` and ``full_logits`` (see ``model.py``); logits are
    computed in float32 from the gathered masked rows only."""
    device = hidden.device
    rows, cols = is_masked.nonzero(as_tuple=True)
    h, target, mod = hidden[rows, cols], tokens[rows, cols], modality[rows, cols]
    offsets, starts = _block_starts(layout, device)

    # (positions among the masked ones, their logits, the target column) per logit group.
    if full_vocab:
        groups = [(torch.arange(h.shape[0], device=device), model.full_logits(h), target - offsets[mod] + starts[mod])]
    else:
        # Every head runs, with zero rows if need be: its (zero) gradient then exists on every rank.
        groups = [(idx, logits, target[idx] - offsets[m]) for m, (idx, logits) in enumerate(model.logits_for(h, mod))]
    order, ce, lse = [], [], []
    for idx, logits, col in groups:
        logits = logits.float()
        lse_g = torch.logsumexp(logits, dim=-1)
        ce.append(lse_g - logits.gather(1, col.unsqueeze(1)).squeeze(1))
        lse.append(lse_g)
        order.append(idx)
    order, ce, lse = torch.cat(order), torch.cat(ce), torch.cat(lse)
    mod, w = mod[order], weight.to(torch.float32)[rows[order]]

    if n_tokens is None:
        n_tokens = valid.sum()
    n_tokens = torch.as_tensor(n_tokens, device=device, dtype=torch.float32).clamp_min(1.0)
    ce_loss = (w * ce).sum() / n_tokens
    z = (lse * lse).sum() / max(lse.numel(), 1)
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
    schedule: Schedule | None = None,
    n_tokens: Tensor | int | None = None,
) -> LossOutput:
    """One training loss for a collated batch: draw t (unless given), mask, forward, score.

    For time sampling across ranks, draw ``t`` with :func:`sample_t` (``rank``/``world_size``,
    a generator shared by all ranks) and pass it here; ``generator`` then only drives the
    per-position masking and should differ per rank.

    With ``cfg.anti_mask`` every row appears twice: once with its mask and once with the
    complement, masked at rate α(t) and weighted by −α'(t)/α(t) (``Schedule.anti_weight``),
    evaluated at min(t, 1 − eps) — the mirror of the plain rows' t ≥ eps bound, which keeps the
    weight finite as α(t) → 0. ``n_tokens`` counts the rows as passed in; it is doubled here
    with the rows, so the loss stays a mean per non-PAD token."""
    schedule = schedule or make_schedule(cfg.schedule)
    if t is None:
        t = sample_t(tokens.shape[0], cfg.eps, generator, cfg.time_sampling, device=tokens.device)
    t = t.to(tokens.device, torch.float32)
    noisy, is_masked = apply_mask(tokens, modality, valid, schedule.mask_prob(t), layout, generator)
    weight = schedule.weight(t)
    if cfg.anti_mask:
        noisy_c, is_masked_c = anti_mask(tokens, modality, valid, is_masked, layout)
        tokens, modality, valid = (torch.cat([x, x]) for x in (tokens, modality, valid))
        noisy, is_masked = torch.cat([noisy, noisy_c]), torch.cat([is_masked, is_masked_c])
        weight = torch.cat([weight, schedule.anti_weight(t.clamp(max=1.0 - cfg.eps))])
        if n_tokens is not None:
            n_tokens = 2 * n_tokens
    hidden = model(noisy, valid)
    return masked_diffusion_loss(
        model, hidden, tokens, modality, is_masked, valid, weight, layout,
        full_vocab=cfg.full_vocab, z_loss=cfg.z_loss, n_tokens=n_tokens,
    )
