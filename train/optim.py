"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule (a pure function)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trimodal.config import option


@dataclass
class OptimConfig:
    """Base AdamW values [paper Table 5]. With ``reparam`` enabled in the train config these are
    overridden by the SDE-derived lr/β/ε/wd (see :mod:`trimodal.train.reparam`)."""

    lr: float = option(9e-4, help="peak learning rate (replaced by the SDE value when reparam.tokens > 0)")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.95, help="AdamW beta2")
    eps: float = option(1e-8, help="AdamW epsilon")
    weight_decay: float = option(0.1, help="AdamW decoupled weight decay")
    warmup_steps: int = option(2000, help="linear warmup steps (capped by warmup_max_fraction of the run)")
    warmup_max_fraction: float = option(0.25, help="warmup is at most this share of the run's steps")
    min_lr: float = option(1e-6, help="learning rate at the end of the cosine decay")
    grad_clip: float = option(1.0, help="global gradient-norm clip (0: off)")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.grad_clip >= 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0: off), got {self.grad_clip}")


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr: float, warmup_max_fraction: float = 0.25) -> float:
    """Linear warmup (capped at ``warmup_max_fraction`` of the run, as in the paper's ablations),
    then cosine decay from ``lr`` to ``min_lr`` at ``total_steps``. ``step`` counts from 0."""
    warmup = min(warmup_steps, int(warmup_max_fraction * total_steps))
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


Settings = Callable[[str, torch.Tensor], dict[str, Any]]


def param_groups(model: nn.Module, weight_decay: float, settings: Settings | None = None) -> list[dict]:
    """Decay matrices (linear and embedding weights); never norms or biases (nanoGPT-style).

    With ``settings`` (``name, param → {lr_mult, weight_decay, betas, eps}``, e.g. from
    ``train.parametrization.optimizer_settings``) there is one group per distinct set of values,
    in order of first appearance, each keeping its ``lr_mult`` for :func:`set_lr`."""
    if settings is None:
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        s = settings(name, p)
        values = {"lr_mult": float(s["lr_mult"]), "weight_decay": float(s["weight_decay"]),
                  "betas": (float(s["betas"][0]), float(s["betas"][1])), "eps": float(s["eps"])}
        key = (values["lr_mult"], values["weight_decay"], values["betas"], values["eps"])
        groups.setdefault(key, {"params": [], **values})["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                    settings: Settings | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; a group with an ``lr_mult`` starts at ``lr · lr_mult``."""
    groups = param_groups(model, weight_decay, settings)
    for g in groups:
        if "lr_mult" in g:
            g["lr"] = lr * g["lr_mult"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled lr, times each group's ``lr_mult`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
