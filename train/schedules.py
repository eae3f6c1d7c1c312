"""Masking schedules α(t) and their ELBO weights, plus the sampling of diffusion times t.

α(t) is the probability that a token is still clean at time t (α(0) = 1, α(1) = 0); a position
is replaced by its modality's MASK with probability 1 − α(t). The continuous-time ELBO weights
the cross-entropy of a masked token by

    w(t) = −α'(t) / (1 − α(t))

(Shi et al. 2024, MD4), which is 1/t for the linear schedule. Every weight is written in
closed form; the tests check it against autograd.

Anti-masking (``objective.py``) also scores the complement of each draw, a row masked at rate
α(t). Its weight follows from the same ELBO by the change of variables s = α⁻¹(1 − α(t)):

    w̄(t) = −α'(t) / α(t) = w(t)·(1 − α(t)) / α(t)        (1/(1 − t) for the linear schedule)

so that E_t[w̄(t)·α(t)] = E_t[−α'(t)] = 1, just as E_t[w(t)·(1 − α(t))] = 1.

Schedules, in the MD4 forms (the paper names them but gives no formulas):

    linear      α = 1 − t                         w = 1/t
    cosine      α = 1 − cos(π/2·(1 − t))          w = π/2·tan(π/2·(1 − t))
    polynomial  α = 1 − t^p                       w = p/t
    geometric   α = exp(−σmin^(1−t)·σmax^t)       w = s·log(σmax/σmin)/expm1(s),  s = σmin^(1−t)·σmax^t

The geometric schedule only reaches α(0) = exp(−σmin) ≈ 1 and α(1) = exp(−σmax) ≈ 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from trimodal.config import option

SCHEDULES = ("linear", "cosine", "polynomial", "geometric")
TIME_SAMPLING = ("uniform", "antithetic", "stratified")


@dataclass
class ScheduleConfig:
    """Which α(t) to train with. ``exponent`` is used by ``polynomial``, the σ's by ``geometric``."""

    name: str = option("linear", help="masking schedule: linear, cosine, polynomial or geometric")
    exponent: float = option(2.0, help="polynomial schedule: alpha(t) = 1 - t^exponent")
    sigma_min: float = option(1e-4, help="geometric schedule: sigma at t = 0")
    sigma_max: float = option(20.0, help="geometric schedule: sigma at t = 1")

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"ScheduleConfig.name must be one of {SCHEDULES}, got {self.name!r}")
        if not self.exponent > 0:
            raise ValueError(f"ScheduleConfig.exponent must be > 0, got {self.exponent}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"ScheduleConfig.sigma_min/sigma_max must satisfy 0 < sigma_min < sigma_max, "
                f"got {self.sigma_min}, {self.sigma_max}"
            )


class Schedule(Protocol):
    def alpha(self, t: Tensor) -> Tensor: ...

    def mask_prob(self, t: Tensor) -> Tensor: ...

    def weight(self, t: Tensor) -> Tensor: ...

    def anti_weight(self, t: Tensor) -> Tensor: ...


class _Base:
    def mask_prob(self, t: Tensor) -> Tensor:
        """1 − α(t); subclasses override where a direct form is more accurate near t = 0."""
        return 1.0 - self.alpha(t)  # type: ignore[attr-defined]

    def anti_weight(self, t: Tensor) -> Tensor:
        """ELBO weight of the complementary (anti-masked) row: −α'(t)/α(t)."""
        return self.weight(t) * self.mask_prob(t) / self.alpha(t)  # type: ignore[attr-defined]


class Linear(_Base):
    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def mask_prob(self, t: Tensor) -> Tensor:
        return t

    def weight(self, t: Tensor) -> Tensor:
        return 1.0 / t


class Cosine(_Base):
    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def mask_prob(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * (1.0 - t))

    def weight(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.tan(0.5 * math.pi * (1.0 - t))


@dataclass(frozen=True)
class Polynomial(_Base):
    exponent: float

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t**self.exponent

    def mask_prob(self, t: Tensor) -> Tensor:
        return t**self.exponent

    def weight(self, t: Tensor) -> Tensor:
        return self.exponent / t


@dataclass(frozen=True)
class Geometric(_Base):
    sigma_min: float
    sigma_max: float

    def _sigma(self, t: Tensor) -> Tensor:
        """s(t) = σmin^(1−t)·σmax^t, the total masking rate −log α(t)."""
        return torch.exp((1.0 - t) * math.log(self.sigma_min) + t * math.log(self.sigma_max))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-self._sigma(t))

    def mask_prob(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._sigma(t))

    def weight(self, t: Tensor) -> Tensor:
        s = self._sigma(t)
        return s * math.log(self.sigma_max / self.sigma_min) / torch.expm1(s)


def make_schedule(cfg: ScheduleConfig) -> Schedule:
    if cfg.name == "linear":
        return Linear()
    if cfg.name == "cosine":
        return Cosine()
    if cfg.name == "polynomial":
        return Polynomial(cfg.exponent)
    if cfg.name == "geometric":
        return Geometric(cfg.sigma_min, cfg.sigma_max)
    raise ValueError(f"unknown schedule {cfg.name!r}; expected one of {SCHEDULES}")


def sample_t(
    n: int,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    mode: str = "uniform",
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw one diffusion time per row, t ∈ [eps, 1], for this rank's ``n`` rows.

    The whole global batch (``n * world_size`` rows) is drawn and this rank's contiguous slice
    returned, so antithetic pairs and strata span all ranks. For that to hold, ``generator``
    must be in the same state on every rank (seed it from the step, not from the rank); use a
    different, per-rank generator for the masking itself.

    - ``uniform``: t ~ U(eps, 1) i.i.d. (the paper's choice);
    - ``antithetic``: pairs (u, 1 − u), adjacent, each mapped to eps + (1 − eps)·u; with an even
      ``n`` every rank holds whole pairs;
    - ``stratified``: [eps, 1] cut into ``n * world_size`` equal strata, one uniform draw in
      each, then shuffled so no rank gets only small or only large t. This is what MDLM and MD4
      call "antithetic" / low-discrepancy sampling (docs/objective.md has the mapping).
    """
    if n <= 0 or world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"sample_t: need n > 0 and 0 <= rank < world_size, got {n=}, {rank=}, {world_size=}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"sample_t: eps must be in (0, 1) (w(t) diverges at t = 0), got {eps}")
    n_global = n * world_size
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def rand(k: int) -> Tensor:
        return torch.rand(k, generator=generator, device=gen_device, dtype=torch.float64)

    if mode == "uniform":
        u = rand(n_global)
    elif mode == "antithetic":
        half = rand((n_global + 1) // 2)
        u = torch.stack([half, 1.0 - half], dim=1).reshape(-1)[:n_global]
    elif mode == "stratified":
        u = (torch.arange(n_global, device=gen_device, dtype=torch.float64) + rand(n_global)) / n_global
        u = u[torch.randperm(n_global, generator=generator, device=gen_device)]
    else:
        raise ValueError(f"unknown time sampling mode {mode!r}; expected one of {TIME_SAMPLING}")
    t = eps + (1.0 - eps) * u
    return t[rank * n : (rank + 1) * n].to(device=device or gen_device, dtype=dtype)
