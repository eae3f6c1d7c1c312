import dataclasses
import math
import re

import pytest

from trimodal.train.reparam import BaseRun, ReparamConfig, reparameterize


def test_paper_check_values():
    r = reparameterize(3072, 1e13, 3256, ReparamConfig(gamma=0.44))
    assert r.logical_batch == pytest.approx(4765.46, rel=1e-5)
    assert r.kappa == pytest.approx(0.64464, rel=1e-4)
    assert r.lr == pytest.approx(7.2260e-4, rel=1e-4)
    assert r.beta1 == pytest.approx(0.93434, rel=1e-5)
    assert r.beta2 == pytest.approx(0.96748, rel=1e-5)
    assert r.eps == pytest.approx(1.2455e-8, rel=1e-4)
    assert r.weight_decay == 0.1 and r.weight_decay_rule == "none"
    assert r.steps == 999_757
    assert r.logical_steps == pytest.approx(1e13 / (r.logical_batch * 3256))
    d = r.to_dict()
    assert d["kappa"] == r.kappa and d["steps"] == r.steps


def test_identity_at_the_base_point():
    """B = B̃ (here: the base run itself) reproduces the base settings exactly."""
    base = BaseRun()
    r = reparameterize(256, 13e9, 1000)
    assert r.kappa == pytest.approx(1.0)
    assert (r.lr, r.beta1, r.beta2, r.eps) == pytest.approx((base.lr, base.beta1, base.beta2, base.eps))


def test_gamma_limits():
    # γ = 0 (isonoise): the logical batch stays at B_base whatever D.
    r0 = reparameterize(512, 1e12, 4096, ReparamConfig(gamma=0.0))
    assert r0.logical_batch == 256 and r0.kappa == 2.0
    assert r0.lr == pytest.approx(9e-4 * math.sqrt(2))
    assert r0.beta2 == pytest.approx(0.95**2)
    # γ = 1 (isohorizon): B̃ grows linearly with D.
    r1 = reparameterize(512, 26e9, 4096, ReparamConfig(gamma=1.0))
    assert r1.logical_batch == pytest.approx(512) and r1.kappa == pytest.approx(1.0)


def test_weight_decay_rule():
    r = reparameterize(3072, 1e13, 3256, ReparamConfig(weight_decay_rule="sqrt_kappa"))
    assert r.weight_decay == pytest.approx(0.1 * math.sqrt(r.kappa))
    # The per-step decay lr·λ then scales by κ.
    assert r.lr * r.weight_decay == pytest.approx(9e-4 * 0.1 * r.kappa)


def test_steps_round_to_nearest():
    assert reparameterize(10, 1049, 100).steps == 1
    assert reparameterize(10, 1500, 100).steps == 2  # halves round up
    assert reparameterize(10, 2499, 100).steps == 2


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: dict(batch=0), "batch"),
        (lambda: dict(batch=-4), "batch"),
        (lambda: dict(batch=2.5), "batch"),
        (lambda: dict(seq_len=0), "seq_len"),
        (lambda: dict(tokens=0.0), "tokens"),
        (lambda: dict(tokens=-1e9), "tokens"),
        (lambda: dict(tokens=float("inf")), "tokens"),
        (lambda: dict(tokens=10.0), "tokens"),  # under half a step
        # the config section refuses a bad value as soon as it is built
        (lambda: dict(cfg=ReparamConfig(gamma=-0.1)), "reparam.gamma"),
        (lambda: dict(cfg=ReparamConfig(gamma=1.5)), "reparam.gamma"),
        (lambda: dict(cfg=ReparamConfig(gamma=float("nan"))), "reparam.gamma"),
        (lambda: dict(cfg=ReparamConfig(weight_decay_rule="linear")), "reparam.weight_decay_rule"),
        (lambda: dict(cfg=ReparamConfig(grad_clip_rule="kappa")), "reparam.grad_clip_rule"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(batch=0))), "base.batch"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(tokens=0))), "base.tokens"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(lr=0))), "base.lr"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(beta1=1.0))), "base.beta1"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(beta2=0.0))), "base.beta2"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(eps=-1e-8))), "base.eps"),
        (lambda: dict(cfg=ReparamConfig(base=BaseRun(weight_decay=-0.1))), "base.weight_decay"),
    ],
)
def test_errors_name_the_field(make, field):
    args = dict(batch=64, tokens=1e10, seq_len=1024, cfg=None)
    with pytest.raises(ValueError, match=rf"^{re.escape(field)} "):
        args.update(make())
        reparameterize(args["batch"], args["tokens"], args["seq_len"], args["cfg"])


def test_min_lr_and_grad_clip_scaling_are_options():
    plain = reparameterize(3072, 1e13, 3256)
    assert plain.min_lr_scale == 1.0 and plain.grad_clip_scale == 1.0
    r = reparameterize(3072, 1e13, 3256, ReparamConfig(scale_min_lr=True, grad_clip_rule="inv_sqrt_kappa"))
    assert r.min_lr_scale == pytest.approx(r.kappa ** 0.5) and r.grad_clip_scale == pytest.approx(r.kappa ** -0.5)


def test_result_is_frozen():
    r = reparameterize(64, 1e10, 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lr = 1.0  # type: ignore[misc]
