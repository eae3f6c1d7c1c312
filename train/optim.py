"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule (a pure function)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Base AdamW values [paper Table 5]. With ``reparam`` enabled in the train config these are
    overridden by the SDE-derived lr/β/ε/wd (see :mod:`trimodal.train.reparam`)."""

    lr: float = 9e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    warmup_max_fraction: float = 0.25
    min_lr: float = 1e-6
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr: float, warmup_max_fraction: float = 0.25) -> float:
    """Linear warmup (capped at ``warmup_max_fraction`` of the run, as in the paper's ablations),
    then cosine decay from ``lr`` to ``min_lr`` at ``total_steps``. ``step`` counts from 0."""
    warmup = min(warmup_steps, int(warmup_max_fraction * total_steps))
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never norms or biases (nanoGPT-style)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
