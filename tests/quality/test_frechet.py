"""The Fréchet distance against independent computations, and the statistics file format."""

from __future__ import annotations

import numpy as np
import pytest

from trimodal.quality.frechet import FeatureStats, frechet_distance, stats_distance


def _direct(mu1, s1, mu2, s2) -> float:
    """Tr((Σ₁Σ₂)^½) = Σ √eig(Σ₁^½ Σ₂ Σ₁^½), with Σ₁^½ from a symmetric eigen-decomposition."""
    w, v = np.linalg.eigh(s1)
    r = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_matches_a_direct_eigendecomposition() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 12))
    b = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12)) * 0.5 + 0.3
    sa, sb = FeatureStats.of(a), FeatureStats.of(b)
    got = stats_distance(sa, sb)
    assert got == pytest.approx(_direct(sa.mu, sa.sigma, sb.mu, sb.sigma), rel=1e-9)
    assert got > 1.0
    assert stats_distance(sa, sa) == pytest.approx(0.0, abs=1e-8)


def test_one_dimensional_closed_form() -> None:
    # N(m1, s1²) vs N(m2, s2²): (m1 − m2)² + (s1 − s2)²
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        4.0 + 1.0)


def test_singular_covariances_give_a_finite_number() -> None:
    rng = np.random.default_rng(1)
    a, b = FeatureStats.of(rng.standard_normal((5, 20))), FeatureStats.of(rng.standard_normal((5, 20)) + 1)
    d = stats_distance(a, b)
    assert np.isfinite(d) and d > 0


def test_stats_round_trip_and_pytorch_fid_layout(tmp_path) -> None:
    rng = np.random.default_rng(2)
    s = FeatureStats.of(rng.standard_normal((50, 4)))
    s.save(tmp_path / "ref.npz")
    back = FeatureStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.mu, s.mu)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    assert back.n == 50
    np.savez(tmp_path / "pfid.npz", mu=s.mu.astype(np.float32), sigma=s.sigma.astype(np.float32))  # no 'n'
    assert FeatureStats.load(tmp_path / "pfid.npz").mu.shape == (4,)


def test_bad_statistics_files_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "obj.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError):  # never unpickled
        FeatureStats.load(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(ValueError, match="do not fit"):
        FeatureStats.load(tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.of(np.zeros((1, 3)))
