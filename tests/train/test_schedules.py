import math

import pytest
import torch

from trimodal.train.schedules import SCHEDULES, ScheduleConfig, make_schedule, sample_t

CONFIGS = [
    ScheduleConfig("linear"),
    ScheduleConfig("cosine"),
    ScheduleConfig("polynomial", exponent=2.0),
    ScheduleConfig("polynomial", exponent=0.5),
    ScheduleConfig("geometric"),
    ScheduleConfig("geometric", sigma_min=1e-3, sigma_max=10.0),
]


def _t(n: int = 99) -> torch.Tensor:
    return torch.linspace(0.01, 0.99, n, dtype=torch.float64)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}")
def test_endpoints_and_monotone(cfg):
    s = make_schedule(cfg)
    ends = s.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    if cfg.name == "geometric":  # exp(-σmin) and exp(-σmax)
        assert ends[0] == pytest.approx(math.exp(-cfg.sigma_min), rel=1e-12)
        assert ends[0] > 0.998 and ends[1] < 1e-4
    else:
        assert ends.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    a = s.alpha(_t())
    assert (a.diff() < 0).all()
    torch.testing.assert_close(s.mask_prob(_t()), 1 - a)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}")
def test_weights_are_the_elbo_derivatives(cfg):
    """weight = −α'/(1 − α) (masked positions), anti_weight = −α'/α (the complement), by autograd."""
    s = make_schedule(cfg)
    t = _t().requires_grad_(True)
    a = s.alpha(t)
    (da,) = torch.autograd.grad(a.sum(), t)
    t, a = t.detach(), a.detach()
    torch.testing.assert_close(s.weight(t), -da / (1 - a), rtol=1e-9, atol=0)
    assert (s.weight(t) > 0).all()
    torch.testing.assert_close(s.anti_weight(t), -da / a, rtol=1e-9, atol=0)


def test_linear_weights():
    t = _t()
    torch.testing.assert_close(make_schedule(ScheduleConfig()).weight(t), 1 / t)
    torch.testing.assert_close(make_schedule(ScheduleConfig()).anti_weight(t), 1 / (1 - t))


def test_config_errors():
    with pytest.raises(ValueError, match="name"):
        ScheduleConfig("sigmoid")
    with pytest.raises(ValueError, match="exponent"):
        ScheduleConfig("polynomial", exponent=0.0)
    with pytest.raises(ValueError, match="sigma"):
        ScheduleConfig("geometric", sigma_min=5.0, sigma_max=1.0)
    assert set(SCHEDULES) == {"linear", "cosine", "polynomial", "geometric"}


@pytest.mark.parametrize("mode", ["uniform", "antithetic", "stratified"])
def test_sample_t_range_and_determinism(mode):
    eps = 0.05
    t = sample_t(1000, eps, torch.Generator().manual_seed(1), mode)
    assert t.shape == (1000,) and t.dtype == torch.float32
    assert (t >= eps).all() and (t <= 1).all()
    assert abs(t.mean().item() - (1 + eps) / 2) < 0.03
    again = sample_t(1000, eps, torch.Generator().manual_seed(1), mode)
    assert torch.equal(t, again)
    assert not torch.equal(t, sample_t(1000, eps, torch.Generator().manual_seed(2), mode))


def test_antithetic_pairs():
    eps = 0.1
    t = sample_t(64, eps, torch.Generator().manual_seed(0), "antithetic", dtype=torch.float64)
    pairs = t.view(-1, 2)
    torch.testing.assert_close(pairs.sum(1), torch.full((32,), 1 + eps, dtype=torch.float64))
    # Pairs are distinct draws, not one repeated value.
    assert pairs[:, 0].unique().numel() == 32


@pytest.mark.parametrize("world_size", [1, 3])
def test_stratified_one_per_stratum_across_ranks(world_size):
    eps, n = 1e-3, 8
    slices = [
        sample_t(n, eps, torch.Generator().manual_seed(7), "stratified", rank=r, world_size=world_size,
                 dtype=torch.float64)
        for r in range(world_size)
    ]
    t = torch.cat(slices)
    n_global = n * world_size
    strata = torch.floor((t - eps) / (1 - eps) * n_global).long()
    assert sorted(strata.tolist()) == list(range(n_global))
    # The rank slices are the global draw, cut in order: they partition it.
    whole = sample_t(n_global, eps, torch.Generator().manual_seed(7), "stratified", dtype=torch.float64)
    assert torch.equal(t, whole)
    # Shuffled: not sorted, so no rank holds only the small times.
    assert not torch.equal(whole, whole.sort().values)


def test_rank_slices_partition_antithetic_and_uniform():
    for mode in ("uniform", "antithetic"):
        parts = [sample_t(4, 0.01, torch.Generator().manual_seed(3), mode, rank=r, world_size=2) for r in range(2)]
        whole = sample_t(8, 0.01, torch.Generator().manual_seed(3), mode)
        assert torch.equal(torch.cat(parts), whole)


def test_sample_t_errors():
    with pytest.raises(ValueError, match="mode"):
        sample_t(4, 0.01, None, "sobol")
    with pytest.raises(ValueError, match="eps"):
        sample_t(4, 0.0, None)
    with pytest.raises(ValueError, match="rank"):
        sample_t(4, 0.01, None, rank=2, world_size=2)
