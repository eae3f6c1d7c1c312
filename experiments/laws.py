"""The paper's two laws and the goodness-of-fit measures, as pure numpy functions (the fitting
machinery is in :mod:`trimodal.experiments.fits`).

- Scaling law (eq. 5.1): L(N, D) = E + (A·N^(−a/b) + B·D^(−1))^b; compute-optimal N*, D*.
- Drift–horizon law (§5.2): loss = E + A·S̃^(−α) + B·B̃^(−β); γ* = α/(α+β) and the optimal split.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

HUBER_DELTA = 1e-3


def scaling_loss(N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, a: float, b: float) -> NDArray:
    """eq. 5.1: L(N, D) = E + (A·N^(−a/b) + B·D^(−1))^b, evaluated in log space (no overflow)."""
    lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
    s = np.logaddexp(math.log(A) - (a / b) * lN, math.log(B) - lD)
    return E + np.exp(b * s)


def compute_optimal(C: ArrayLike, A: float, B: float, a: float, b: float) -> tuple[NDArray, NDArray]:
    """The (N*, D*) minimising eq. 5.1 at compute C = 6·N·D (closed form, see module docstring).

    N* = G⁻¹·(C/6)^τ and D* = G·(C/6)^(1−τ) with τ = b/(a+b), G = (b·B/(a·A))^τ; E drops out.
    """
    tau = b / (a + b)
    G = (b * B / (a * A)) ** tau
    c6 = np.asarray(C, float) / 6.0
    return c6**tau / G, G * c6 ** (1.0 - tau)


def compute_optimal_tokens(N: ArrayLike, A: float, B: float, a: float, b: float) -> NDArray:
    """D*(N): the tokens for which a model of N parameters is compute-optimal (eq. 5.1).

    Inverting N*(C): D*(N) = G·(G·N)^((1−τ)/τ) = (b·B/(a·A))·N^(a/b) — the paper's 7754·N^0.84.
    """
    return (b * B / (a * A)) * np.asarray(N, float) ** (a / b)


def drift_loss(S: ArrayLike, Bt: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float) -> NDArray:
    """§5.2: loss = E + A·S̃^(−α) + B·B̃^(−β) for logical steps S̃ and logical batch B̃."""
    S, Bt = np.asarray(S, float), np.asarray(Bt, float)
    return E + A * S ** (-alpha) + B * Bt ** (-beta)


def optimal_gamma(alpha: float, beta: float) -> float:
    """γ* = α/(α+β): the exponent of the compute-optimal logical batch B̃* ∝ D^γ* (§5.2)."""
    return alpha / (alpha + beta)


def optimal_split(
    D: ArrayLike, seq_len: float, A: float, B: float, alpha: float, beta: float
) -> tuple[NDArray, NDArray]:
    """(S̃*, B̃*) minimising the §5.2 loss under S̃·B̃ = D/L: S̃* = G·(D/L)^(1−γ*), B̃* = G⁻¹·(D/L)^γ*."""
    g = optimal_gamma(alpha, beta)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    k = np.asarray(D, float) / seq_len
    return G * k ** (1.0 - g), k**g / G


def huber(r: ArrayLike, delta: float = HUBER_DELTA) -> NDArray:
    """The Huber loss: r²/2 inside |r| ≤ δ, δ·(|r| − δ/2) outside (quadratic core, linear tails)."""
    r = np.abs(np.asarray(r, float))
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def r_squared(pred: ArrayLike, obs: ArrayLike) -> float:
    """Coefficient of determination of the losses (linear space)."""
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    ss_res = float(np.sum((obs - pred) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def mean_relative_error(pred: ArrayLike, obs: ArrayLike) -> float:
    """MRE = mean |pred − obs| / obs."""
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    return float(np.mean(np.abs(pred - obs) / obs))
