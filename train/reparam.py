"""SDE batch reparameterisation of AdamW (docs/reparam.md).

A base run (B_base rows per step, D_base tokens, tuned AdamW settings) is transferred to a run
of token horizon D and physical batch B through the *logical* batch B̃ = B_base·(D/D_base)^γ:

    κ = B / B̃,   lr = lr_base·√κ,   β1 = β1_base^κ,   β2 = β2_base^κ,   ε = ε_base/√κ

and the run takes S = D/(B·L) optimiser steps (the step count follows B: this is not gradient
accumulation). γ = 0 keeps the SDE drift/noise fixed (isonoise), γ = 1 the horizon (isohorizon);
the paper's fit gives γ = 0.44. The paper leaves weight decay unscaled in eq. 4.2; the
``sqrt_kappa`` rule (Complete(d)P) scales it by √κ so the per-step decay lr·λ scales by κ.

Not scaled by default, as the paper says nothing of them: the cosine floor ``min_lr`` (option
``scale_min_lr`` scales it by √κ like the peak lr, keeping the schedule's shape) and the gradient
clipping threshold (option ``grad_clip_rule=inv_sqrt_kappa``: at a fixed signal the gradient
noise norm falls like 1/√B, so the threshold follows it to keep clipping as frequent).
``docs/reparam.md`` has the derivation and the run's view of these numbers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from trimodal.config import option

WEIGHT_DECAY_RULES = ("none", "sqrt_kappa")
GRAD_CLIP_RULES = ("none", "inv_sqrt_kappa")


@dataclass(frozen=True)
class BaseRun:
    """The tuned reference point [paper: B_base 256, D_base 13B, Table 5 AdamW values]."""

    batch: int = 256
    tokens: float = 13e9
    lr: float = 9e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1


@dataclass
class ReparamConfig:
    """The ``reparam`` section of a training config. ``tokens`` = token horizon D (positions,
    padding included: D = B·L·S); 0 switches the reparameterisation off, and ``run.steps`` with
    the ``optim`` values are used as given. The base AdamW values are the ``optim`` section's;
    ``base`` overrides them (for direct calls)."""

    tokens: float = option(0.0, help="token horizon D in positions, padding included (0: reparameterisation off)")
    gamma: float = option(0.44, help="exponent of the logical batch: B~ = base_batch * (D / base_tokens)^gamma")
    weight_decay_rule: str = option("none", help="none, or sqrt_kappa (weight decay times sqrt(kappa))")
    base_batch: int = option(256, help="batch size the optim values were tuned at")
    base_tokens: float = option(13e9, help="token horizon the optim values were tuned at")
    scale_min_lr: bool = option(False, help="also scale optim.min_lr by sqrt(kappa)")
    grad_clip_rule: str = option("none", help="none, or inv_sqrt_kappa (grad clip times 1/sqrt(kappa))")
    base: BaseRun | None = None

    def __post_init__(self) -> None:
        # Checked even when the reparameterisation is off (tokens = 0): a bad value is a typo.
        if not (math.isfinite(self.tokens) and self.tokens >= 0):
            raise ValueError(f"reparam.tokens must be >= 0 (0 = off), got {self.tokens}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"reparam.gamma must be in [0, 1], got {self.gamma}")
        if self.weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"reparam.weight_decay_rule must be one of {list(WEIGHT_DECAY_RULES)}, "
                             f"got {self.weight_decay_rule!r}")
        if self.grad_clip_rule not in GRAD_CLIP_RULES:
            raise ValueError(f"reparam.grad_clip_rule must be one of {list(GRAD_CLIP_RULES)}, got {self.grad_clip_rule!r}")
        if self.base_batch <= 0 or not self.base_tokens > 0:
            raise ValueError(f"reparam.base_batch and reparam.base_tokens must be positive, "
                             f"got {self.base_batch}, {self.base_tokens}")

    @property
    def enabled(self) -> bool:
        return self.tokens > 0


@dataclass(frozen=True)
class Reparam:
    """The derived run settings; ``to_dict`` is what gets logged and stored in checkpoints."""

    batch: int
    tokens: float
    seq_len: int
    gamma: float
    logical_batch: float  # B̃
    kappa: float  # κ = B / B̃
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    weight_decay_rule: str
    steps: int  # S = round(D / (B·L))
    logical_steps: float  # S̃ = D / (B̃·L), for reference
    min_lr_scale: float = 1.0  # factor on optim.min_lr
    grad_clip_scale: float = 1.0  # factor on optim.grad_clip

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check(cond: bool, name: str, value: object, need: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {need}, got {value!r}")


def reparameterize(batch: int, tokens: float, seq_len: int, cfg: ReparamConfig | None = None) -> Reparam:
    """Settings for a run of physical ``batch`` rows of ``seq_len`` positions and token horizon
    ``tokens`` (D; counts positions, PAD included, matching D = B̃·S̃·L).

    S is D/(B·L) rounded to the nearest integer (halves up), so the run sees D within B·L/2
    positions; a horizon below half a step is an error."""
    cfg = cfg or ReparamConfig()
    base = cfg.base or BaseRun(batch=cfg.base_batch, tokens=cfg.base_tokens)
    _check(_is_int(batch) and batch > 0, "batch", batch, "a positive integer")
    _check(_is_int(seq_len) and seq_len > 0, "seq_len", seq_len, "a positive integer")
    _check(math.isfinite(tokens) and tokens > 0, "tokens", tokens, "a positive number")
    _check(0.0 <= cfg.gamma <= 1.0, "gamma", cfg.gamma, "in [0, 1]")
    _check(cfg.weight_decay_rule in WEIGHT_DECAY_RULES, "weight_decay_rule", cfg.weight_decay_rule,
           f"one of {WEIGHT_DECAY_RULES}")
    _check(base.batch > 0, "base.batch", base.batch, "positive")
    _check(base.tokens > 0, "base.tokens", base.tokens, "positive")
    _check(base.lr > 0, "base.lr", base.lr, "positive")
    _check(0.0 < base.beta1 < 1.0, "base.beta1", base.beta1, "in (0, 1)")
    _check(0.0 < base.beta2 < 1.0, "base.beta2", base.beta2, "in (0, 1)")
    _check(base.eps > 0, "base.eps", base.eps, "positive")
    _check(base.weight_decay >= 0, "base.weight_decay", base.weight_decay, "non-negative")

    logical_batch = base.batch * (tokens / base.tokens) ** cfg.gamma
    kappa = batch / logical_batch
    sqrt_kappa = math.sqrt(kappa)
    steps = math.floor(tokens / (batch * seq_len) + 0.5)
    _check(steps >= 1, "tokens", tokens, f"at least half a step (batch·seq_len/2 = {batch * seq_len / 2:g})")
    wd = base.weight_decay * (sqrt_kappa if cfg.weight_decay_rule == "sqrt_kappa" else 1.0)
    return Reparam(
        batch=int(batch),
        tokens=float(tokens),
        seq_len=int(seq_len),
        gamma=cfg.gamma,
        logical_batch=logical_batch,
        kappa=kappa,
        lr=base.lr * sqrt_kappa,
        beta1=base.beta1**kappa,
        beta2=base.beta2**kappa,
        eps=base.eps / sqrt_kappa,
        weight_decay=wd,
        weight_decay_rule=cfg.weight_decay_rule,
        steps=steps,
        logical_steps=tokens / (logical_batch * seq_len),
        min_lr_scale=sqrt_kappa if cfg.scale_min_lr else 1.0,
        grad_clip_scale=1.0 / sqrt_kappa if cfg.grad_clip_rule == "inv_sqrt_kappa" else 1.0,
    )
