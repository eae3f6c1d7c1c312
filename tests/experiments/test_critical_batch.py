"""B_crit / S_crit extraction (paper §5.1) on hand-made final losses by seed."""

from __future__ import annotations

import math

import pytest

from trimodal.experiments import analysis
from trimodal.experiments.critical_batch import critical_batch, paired_difference, paired_tolerance

D, L = 2.0**20, 128


def curve(means: dict[int, float], offsets=(0.0, 0.02, -0.02)) -> dict[float, dict[int, float]]:
    """Losses by B and seed: each seed shifted by its offset at every B, so the paired
    differences are exactly the differences of the means (sd 0)."""
    return {float(b): {s: m + o for s, o in enumerate(offsets)} for b, m in means.items()}


def test_plateau_then_rise_gives_b_crit_and_s_crit():
    losses = curve({4: 3.00, 8: 3.01, 16: 3.04, 32: 3.20, 64: 3.50})
    cb = critical_batch(losses, D, L, tolerance=0.05)
    assert cb.reference_batch == 4 and cb.plateau == pytest.approx(3.00)
    assert cb.deltas[16.0][0] == pytest.approx(0.04) and cb.deltas[16.0][1] == pytest.approx(0.0, abs=1e-12)
    assert cb.deltas[16.0][2] == 3
    assert cb.b_crit == 16 and cb.bound == "" and cb.next_batch == 32
    assert cb.s_crit == pytest.approx(D / (16 * L)) == 512
    assert "B_crit = 16" in cb.describe() and "S_crit = 512 steps" in cb.describe()


def test_a_rise_at_the_second_point_is_no_plateau():
    cb = critical_batch(curve({4: 3.00, 8: 3.10, 16: 3.12}), D, L, tolerance=0.05)
    assert cb.b_crit == 4 and cb.bound == "below"
    assert cb.describe().startswith("no plateau: B = 8") and "S_crit > 1024 steps" in cb.describe()


def test_every_point_within_tolerance_is_bounded_above():
    cb = critical_batch(curve({4: 3.00, 8: 2.98, 16: 3.03}), D, L, tolerance=0.05)
    assert cb.b_crit == 16 and cb.bound == "above" and "B_crit ≥ 16" in cb.describe()


def test_the_plateau_is_contiguous_from_below():
    # B = 32 falls back within the tolerance after B = 16 left it: it does not extend the plateau
    cb = critical_batch(curve({4: 3.00, 8: 3.02, 16: 3.20, 32: 3.03}), D, L, tolerance=0.05)
    assert cb.b_crit == 8


def test_lower_losses_stay_on_the_plateau():
    # the criterion is one-sided: a B better than the smallest is within any tolerance
    cb = critical_batch(curve({4: 3.00, 8: 2.80, 16: 2.90, 32: 3.30}), D, L, tolerance=0.05)
    assert cb.b_crit == 16


def test_paired_differences_use_only_shared_seeds():
    assert paired_difference({0: 3.1, 1: 3.3, 2: 9.9}, {0: 3.0, 1: 3.0}) == pytest.approx((0.2, math.sqrt(0.02), 2))
    m, sd, n = paired_difference({0: 3.1}, {0: 3.0})
    assert m == pytest.approx(0.1) and math.isnan(sd) and n == 1
    assert paired_difference({5: 1.0}, {0: 1.0})[2] == 0
    # a B with no seed shared with the reference ends the plateau (nothing to compare)
    assert critical_batch({4.0: {0: 3.0}, 8.0: {1: 3.0}}, D, L, 0.05).b_crit == 4


def test_paired_tolerance_is_twice_the_pooled_sd_of_single_seed_differences():
    a = {4.0: {0: 3.0, 1: 3.0, 2: 3.0}, 8.0: {0: 3.1, 1: 3.2, 2: 3.3}}  # Δ = .1, .2, .3: sd 0.1
    b = {4.0: {0: 2.0, 1: 2.0}, 8.0: {0: 2.0, 1: 2.2}}  # Δ = 0, .2: sd √0.02
    # pooled variance: (2·0.01 + 1·0.02) / 3 dof
    assert paired_tolerance([a, b]) == pytest.approx(2 * math.sqrt(0.04 / 3))
    assert paired_tolerance([a], k=1.0) == pytest.approx(0.1)
    assert math.isnan(paired_tolerance([{4.0: {0: 1.0}, 8.0: {0: 2.0}}]))  # one seed: no spread


def test_no_tolerance_gives_no_b_crit():
    cb = critical_batch(curve({4: 3.0, 8: 3.1}), D, L, tolerance=math.nan)
    assert math.isnan(cb.b_crit) and math.isnan(cb.s_crit) and cb.describe().startswith("no B_crit")


def _groups(curves: dict[tuple, dict[float, dict[int, float]]]) -> list[dict]:
    out = []
    for (rule, clip, d), losses in curves.items():
        for b, by_seed in losses.items():
            members = [{"seed": s, "val_elbo": v, "seq_len": L} for s, v in by_seed.items()]
            vals = list(by_seed.values())
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            out.append({"rule": rule, "clip": clip, "tokens_target": d, "batch_size": int(b), "n": len(vals),
                        "val_elbo": (mean, sd), "_members": members})
    return out


def test_the_batch_size_analysis_per_horizon_and_clipping():
    """Two horizons with clipping off and one with the fixed threshold: B_crit per curve, and
    off − fixed paired by seed at the shared horizon."""
    groups = _groups({("sde", "off", D): curve({4: 3.00, 8: 3.01, 16: 3.30}),
                      ("sde", "off", 2 * D): curve({4: 2.80, 8: 2.81, 16: 2.82}),
                      ("sde", "fixed", D): curve({4: 3.10, 8: 3.30, 16: 3.40})})
    crit = analysis.critical_batches(groups, tolerance=0.05)
    assert all(cb.tolerance == 0.05 for cb in crit.values())
    assert crit[("sde", "off", D)].b_crit == 8 and crit[("sde", "off", D)].s_crit == D / (8 * L)
    assert crit[("sde", "off", 2 * D)].bound == "above" and crit[("sde", "fixed", D)].bound == "below"
    # each curve's own tolerance: the hand-made seeds shift every B alike, so its paired sd is 0
    assert all(cb.tolerance == pytest.approx(0.0) for cb in analysis.critical_batches(groups).values())
    noisy = _groups({("sde", "off", D): {4.0: {0: 3.0, 1: 3.0}, 8.0: {0: 3.1, 1: 3.3}},
                     ("sde", "fixed", D): {4.0: {0: 3.0, 1: 3.0}, 8.0: {0: 3.0, 1: 3.0}}})
    own = analysis.critical_batches(noisy)
    assert own[("sde", "off", D)].tolerance == pytest.approx(2 * math.sqrt(0.02))
    assert own[("sde", "fixed", D)].tolerance == 0.0
    assert analysis.critical_batches(noisy, scale=0.5)[("sde", "off", D)].tolerance == pytest.approx(math.sqrt(0.02))
    lines, nums = analysis.batch_size(groups)
    clip = nums["clip"][("sde", D, "off", "fixed")]
    assert clip[4.0][0] == pytest.approx(-0.10) and clip[8.0][0] == pytest.approx(-0.29) and clip[4.0][2] == 3
    assert any(ln.startswith("SDE rule, no clipping, D = 2^20 − clip fixed, paired by seed: B=4: -0.1000")
               for ln in lines)
    assert any(ln.startswith("SDE rule, no clipping, D = 2^21:") for ln in lines)
