"""The Fréchet distance between two Gaussians fitted to feature sets, and their stored statistics.

FID and FAD are both this distance, on different features:
d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½), computed as the reference FID implementation
(pytorch-fid) does it: float64, ``scipy.linalg.sqrtm`` of the product, an ε·I offset on both
covariances when the product is singular, and the imaginary part dropped when it is numerical
noise. Statistics are stored as an ``.npz`` with arrays ``mu`` and ``sigma`` (pytorch-fid's
layout, so its precomputed reference files load as they are) and ``n`` (number of items).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set (unbiased covariance, as numpy's ``cov``)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStats":
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors as an [N, D] array, got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # np.savez would append .npz to a name without it
            np.savez(fh, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(f"{path}: a statistics file needs arrays 'mu' and 'sigma' (has {sorted(z.files)})")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            n = int(z["n"]) if "n" in z else 0
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        return cls(mu=mu, sigma=sigma, n=n)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂) (the FID/FAD number; not its square root)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # singular product: offset both covariances
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def stats_distance(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
