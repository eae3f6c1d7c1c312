import math

import pytest
import torch

from trimodal.config import ConfigError
from trimodal.tokenizers.vocab import VocabLayout
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.optim import build_optimizer, param_groups, set_lr
from trimodal.train.parametrization import (
    ONE,
    PAPER_TABLE6,
    Multipliers,
    ParamConfig,
    adamw_settings,
    build_model,
    canonical_name,
    classify,
    completep_rule,
    multipliers,
    optimizer_settings,
    param_config_of,
    residual_multiplier,
    scale_beta,
    set_parametrization,
)

LAYOUT = VocabLayout(text_codes=50, image_codes=32, audio_codes=16, audio_levels=2)
BETAS, EPS, WD = (0.9, 0.95), 1e-8, 0.1


def cfg_of(dim: int = 64, layers: int = 2, head_dim: int = 16) -> ModelConfig:
    return ModelConfig(dim=dim, n_layers=layers, n_heads=dim // head_dim, max_seq_len=64)


def names_of(cfg: ModelConfig) -> dict[str, int]:
    torch.manual_seed(0)
    return {n: p.ndim for n, p in Transformer(cfg, LAYOUT).named_parameters()}


CP = ParamConfig(kind="completep", base_dim=64, base_layers=2)


# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [({"kind": "mup"}, "param.kind"), ({"table": "table7"}, "param.table"),
                                      ({"depth_alpha": 0.3}, "depth_alpha"), ({"base_dim": 0}, "base_dim"),
                                      ({"beta_rule": "x"}, "beta_rule")])
def test_config_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        ParamConfig(**kw)


def test_train_config_has_a_param_section():
    from trimodal.train.trainer import TrainConfig

    cfg = TrainConfig.load(None, ["param.kind=completep", "param.base_dim=128", "param.table=paper_table6"])
    assert cfg.param == ParamConfig(kind="completep", base_dim=128, table="paper_table6")
    assert TrainConfig().param.is_identity and cfg.to_dict()["param"]["base_layers"] == 2
    with pytest.raises(ConfigError, match="param.kind"):
        TrainConfig.load(None, ["param.kind=mup"])
    assert param_config_of({}) == ParamConfig()  # configs saved before the section existed
    assert param_config_of({"param": {"kind": "completep", "base_dim": 32}}).base_dim == 32


# ---- the rules as pure functions -------------------------------------------------------------------


def test_every_multiplier_is_one_at_the_base_shape():
    cfg = cfg_of(64, 2)
    for p in (CP, ParamConfig(), ParamConfig(kind="completep", base_dim=64, base_layers=2, depth_alpha=0.5)):
        assert residual_multiplier(cfg, p) == 1.0
        for name, ndim in names_of(cfg).items():
            assert multipliers(cfg, p, name, ndim) == ONE, name


def test_doubling_width():
    cfg = cfg_of(128, 2)
    m = {n: multipliers(cfg, CP, n, d) for n, d in names_of(cfg).items()}
    for leaf in ("attn.qkv", "attn.proj", "mlp.gate", "mlp.fc1", "mlp.fc2"):
        assert m[f"layers.1.{leaf}.weight"] == Multipliers(init=2**-0.5, lr=0.5, wd=2.0, eps=0.5), leaf
    for leaf in ("norm1", "norm2", "attn.q_norm", "attn.k_norm"):
        assert m[f"layers.0.{leaf}.weight"] == Multipliers(eps=0.5), leaf
    for mod in ("text", "image", "audio", "task"):
        assert m[f"embeddings.{mod}.weight"] == Multipliers(eps=0.5)
    for mod in ("text", "image", "audio"):  # the logit multiplier 1/m_N, absorbed into the weight
        assert m[f"heads.{mod}.weight"] == Multipliers(init=0.5, lr=0.5, wd=2.0)
    assert m["norm.weight"] == Multipliers(eps=0.5)
    assert residual_multiplier(cfg, CP) == 1.0


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_doubling_and_quadrupling_depth(alpha):
    p = ParamConfig(kind="completep", base_dim=64, base_layers=2, depth_alpha=alpha)
    for layers, m_l in ((4, 2.0), (8, 4.0)):
        cfg = cfg_of(64, layers)
        assert residual_multiplier(cfg, p) == pytest.approx(m_l**-alpha)
        hidden = multipliers(cfg, p, "layers.3.mlp.fc1.weight")
        assert hidden.lr == pytest.approx(m_l ** (alpha - 1)) and hidden.init == 1.0 and hidden.wd == 1.0
        assert hidden.eps == pytest.approx(m_l**-alpha)
        norm = multipliers(cfg, p, "layers.0.norm2.weight", 1)
        assert norm.lr == pytest.approx(m_l ** (alpha - 1)) and norm.eps == pytest.approx(m_l**-alpha)
        # outside the residual branches nothing depends on depth
        for name, ndim in (("embeddings.text.weight", 2), ("heads.audio.weight", 2), ("norm.weight", 1)):
            assert multipliers(cfg, p, name, ndim) == ONE
    assert residual_multiplier(cfg_of(64, 8), ParamConfig(base_layers=2)) == 1.0  # standard: no multiplier


def test_width_multiplier_is_per_fan_in():
    """fc2 reads the (rounded) SwiGLU width: its multiplier is that width's ratio."""
    cfg = ModelConfig.from_depth(24)
    p = ParamConfig(kind="completep", base_dim=256, base_layers=2)
    base_hidden = ModelConfig(dim=256, n_layers=2, n_heads=2).hidden_dim
    assert multipliers(cfg, p, "layers.0.mlp.fc2.weight").lr == pytest.approx(base_hidden / cfg.hidden_dim)
    assert multipliers(cfg, p, "layers.0.mlp.fc1.weight").lr == pytest.approx(256 / 3072)
    assert residual_multiplier(cfg, p) == pytest.approx(2 / 24)


def test_rule_rows():
    assert completep_rule("hidden", 4.0, 2.0, 1.0) == Multipliers(init=0.5, lr=0.25, wd=4.0, eps=1 / 8)
    assert completep_rule("head", 4.0, 2.0, 1.0) == Multipliers(init=0.25, lr=0.25, wd=4.0)
    with pytest.raises(ValueError):
        completep_rule("bias", 1.0, 1.0, 1.0)


def test_classify_names_and_wrappers():
    assert classify("layers.3._checkpoint_wrapped_module.attn.qkv.weight").module == "attn_qkv"
    assert classify("layers.3._orig_mod.mlp.fc2.weight").layer == 3
    assert classify("module.norm.weight", 1).role == "final_norm"
    assert canonical_name("layers.0._checkpoint_wrapped_module._orig_mod.norm1.weight") == "layers.0.norm1.weight"
    assert classify("embeddings.task.weight").module is None
    assert classify("heads.image.weight").module == "unemb.image"
    new = classify("layers.1.attn.gate_scale", 1)  # a parameter added later: vector-like in its block
    assert (new.role, new.module) == ("hidden_norm", None)
    with pytest.raises(ValueError, match="no parametrization rule"):
        classify("pos_embedding.weight")


def test_wrapped_blocks_get_the_same_settings():
    from trimodal.train import distributed as D

    cfg, p = cfg_of(128, 4), ParamConfig(kind="completep", base_dim=64, base_layers=2, table="paper_table6")
    torch.manual_seed(0)
    plain = build_model(cfg, LAYOUT, p)
    torch.manual_seed(0)
    wrapped = D.shard_model(build_model(cfg, LAYOUT, p), None, activation_checkpointing="full")
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    settings = optimizer_settings(cfg, p, BETAS, EPS, WD)
    assert [settings(n, q) for n, q in plain.named_parameters()] == [settings(n, q) for n, q in wrapped.named_parameters()]
    assert [b.residual_mult for b in plain.layers] == [0.5] * 4


def test_scale_beta():
    assert scale_beta(0.95, 1.0) == 0.95  # exactly, not 1 − (1 − β)
    assert scale_beta(0.9, 0.173) == pytest.approx(1 - 0.0173)
    assert scale_beta(0.9, 4.508) == pytest.approx(1 - 0.4508)
    assert scale_beta(0.5, 3.0) == 0.0  # floored
    assert scale_beta(0.9, 2.0, "power") == pytest.approx(0.81)


# ---- Table 6 ------------------------------------------------------------------------------------------


def test_table6_numbers():
    assert len(PAPER_TABLE6) == 18
    assert PAPER_TABLE6["unemb_norm"] == Multipliers(lr=2.305, wd=0.817, beta1=4.508, beta2=2.740, eps=1.938, init=2.175)
    assert PAPER_TABLE6["depth_50_100"] == Multipliers(lr=0.877, wd=1.018, beta1=0.911, beta2=1.149, eps=2.645, init=0.485)
    assert PAPER_TABLE6["emb.text"].lr == 3.937 and PAPER_TABLE6["mlp_gate"].eps == 4.913
    assert PAPER_TABLE6["attn_proj"].init == 4.732 and PAPER_TABLE6["norm1"].beta1 == 0.282


def test_table6_lands_on_the_right_groups():
    cfg = cfg_of(64, 4)
    p = ParamConfig(table="paper_table6")  # on top of standard: the rule's multipliers are 1
    torch.manual_seed(0)
    model = build_model(cfg, LAYOUT, p)
    opt = build_optimizer(model, 1e-3, BETAS, EPS, WD, optimizer_settings(cfg, p, BETAS, EPS, WD))
    group_of = {id(q): g for g in opt.param_groups for q in g["params"]}
    params = dict(model.named_parameters())
    T = PAPER_TABLE6

    def check(name, row, depth=None):
        m = row * depth if depth is not None else row
        g = group_of[id(params[name])]
        assert g["lr"] == pytest.approx(1e-3 * m.lr) and g["lr_mult"] == pytest.approx(m.lr), name
        assert g["weight_decay"] == pytest.approx(WD * m.wd if params[name].ndim >= 2 else 0.0), name
        assert g["eps"] == pytest.approx(EPS * m.eps), name
        assert g["betas"] == pytest.approx((1 - m.beta1 * 0.1, 1 - m.beta2 * 0.05)), name
        assert model.init_scales[name] == pytest.approx((0.02 if params[name].ndim >= 2 else 1.0) * m.init), name

    first, second = T["depth_0_50"], T["depth_50_100"]
    check("layers.0.attn.qkv.weight", T["attn_qkv"], first)
    check("layers.1.mlp.fc2.weight", T["mlp_fc2"], first)
    check("layers.2.attn.proj.weight", T["attn_proj"], second)
    check("layers.3.mlp.gate.weight", T["mlp_gate"], second)
    check("layers.3.mlp.fc1.weight", T["mlp_fc1"], second)
    check("layers.0.attn.q_norm.weight", T["attn_q_norm"], first)
    check("layers.3.attn.k_norm.weight", T["attn_k_norm"], second)
    check("layers.1.norm1.weight", T["norm1"], first)
    check("layers.2.norm2.weight", T["norm2"], second)
    for mod in ("text", "image", "audio"):
        check(f"embeddings.{mod}.weight", T[f"emb.{mod}"])
        check(f"heads.{mod}.weight", T[f"unemb.{mod}"])
    check("norm.weight", T["unemb_norm"])
    check("embeddings.task.weight", ONE)
    # the init multipliers reached the weights
    assert float(params["norm.weight"][0]) == pytest.approx(2.175)
    assert float(params["layers.2.norm1.weight"][0]) == pytest.approx(2.171 * 0.485)
    std = float(params["layers.0.attn.proj.weight"].detach().std())
    assert std == pytest.approx(0.02 * 4.732 * 0.997, rel=0.05)
    # one group per distinct setting, every parameter in exactly one
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)
    keys = [(g["lr_mult"], g["weight_decay"], g["betas"], g["eps"]) for g in opt.param_groups]
    assert len(keys) == len(set(keys))
    set_lr(opt, 2e-3)
    assert group_of[id(params["embeddings.text.weight"])]["lr"] == pytest.approx(2e-3 * 3.937)


def test_table6_composes_with_completep():
    cfg = cfg_of(128, 4)
    p = ParamConfig(kind="completep", base_dim=64, base_layers=2, table="paper_table6")
    m = multipliers(cfg, p, "layers.3.attn.qkv.weight")
    rule = completep_rule("hidden", 2.0, 2.0, 1.0)
    assert m == rule * PAPER_TABLE6["attn_qkv"] * PAPER_TABLE6["depth_50_100"]
    s = adamw_settings(cfg, p, "layers.3.attn.qkv.weight", 2, BETAS, EPS, WD)
    assert s["lr_mult"] == pytest.approx(0.5 * 1.714 * 0.877) and s["weight_decay"] == pytest.approx(WD * 2 * 0.821 * 1.018)


# ---- standard is today's model and optimizer, bit for bit ----------------------------------------


def _old_param_groups(model, weight_decay):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def test_standard_is_bit_identical():
    cfg = ModelConfig.tiny()
    torch.manual_seed(0)
    ref = Transformer(cfg, LAYOUT)
    torch.manual_seed(0)
    model = build_model(cfg, LAYOUT, ParamConfig())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    assert all(b.residual_mult == 1.0 for b in model.layers) and not hasattr(model, "init_scales")
    assert optimizer_settings(cfg, ParamConfig(), BETAS, EPS, WD) is None
    groups, old = param_groups(model, WD), _old_param_groups(model, WD)
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups] == [{"weight_decay": WD}, {"weight_decay": 0.0}]
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]] for g in old]
    opt = build_optimizer(model, 1e-3, BETAS, EPS, WD)
    assert all("lr_mult" not in g and g["lr"] == 1e-3 and g["betas"] == BETAS and g["eps"] == EPS for g in opt.param_groups)
    set_lr(opt, 3.7e-4)
    assert [g["lr"] for g in opt.param_groups] == [3.7e-4, 3.7e-4]
    # the block's forward is the plain pre-norm sum
    blk, x = model.layers[0], torch.randn(2, 5, cfg.dim)
    cos, sin = model.rope_cos, model.rope_sin
    h = x + blk.attn(blk.norm1(x), cos, sin, None)
    assert torch.equal(blk(x, cos, sin, None), h + blk.mlp(blk.norm2(h)))


def test_residual_multiplier_scales_both_branches():
    torch.manual_seed(0)
    model = build_model(cfg_of(64, 8), LAYOUT, CP)
    blk = model.layers[5]
    assert blk.residual_mult == 0.25
    x, cos, sin = torch.randn(2, 5, 64), model.rope_cos, model.rope_sin
    h = x + 0.25 * blk.attn(blk.norm1(x), cos, sin, None)
    torch.testing.assert_close(blk(x, cos, sin, None), h + 0.25 * blk.mlp(blk.norm2(h)), rtol=0, atol=0)


def _train(model, settings, steps=3):
    from trimodal.train.objective import ObjectiveConfig, diffusion_loss

    from trimodal.experiments.coord_check import fixed_batch

    opt = build_optimizer(model, 3e-3, BETAS, EPS, WD, settings)
    tokens, modality, valid = fixed_batch(6, 24, 0, LAYOUT)
    for step in range(steps):
        set_lr(opt, 3e-3 * (step + 1) / steps)
        loss = diffusion_loss(model, tokens, modality, valid, LAYOUT, ObjectiveConfig(), t=torch.full((6,), 0.5),
                              generator=torch.Generator().manual_seed(step)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt


def test_completep_at_the_base_shape_is_the_standard_run():
    """All multipliers 1 → same draws, same groups' values, same trajectory, bit for bit."""
    cfg = ModelConfig.tiny()
    p = ParamConfig(kind="completep", base_dim=cfg.dim, base_layers=cfg.n_layers)
    torch.manual_seed(0)
    ref = Transformer(cfg, LAYOUT)
    torch.manual_seed(0)
    model = build_model(cfg, LAYOUT, p)
    opt = _train(model, optimizer_settings(cfg, p, BETAS, EPS, WD))
    _train(ref, None)
    assert len(opt.param_groups) == 2
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))


def test_init_weights_uses_the_scales_again_after_a_reinit():
    """``build_model`` rescales the standard draws; a later ``init_weights()`` (FSDP's meta-device
    flow: ``to_empty`` then init) draws with the same per-parameter scales."""
    cfg = cfg_of(256, 4)
    torch.manual_seed(0)
    model = build_model(cfg, LAYOUT, ParamConfig(kind="completep", base_dim=64, base_layers=2, table="paper_table6"))
    built = {n: float(q.detach().std()) if q.ndim >= 2 else float(q[0]) for n, q in model.named_parameters()}
    model.init_weights()
    for n, q in model.named_parameters():
        again = float(q.detach().std()) if q.ndim >= 2 else float(q[0])
        expect = model.init_scales[n] * (0.9866 if q.ndim >= 2 else 1.0)  # trunc-normal(±3σ) std ≈ 0.9866σ
        tol = 0.1 if q.numel() < 2000 else 0.03
        assert again == pytest.approx(expect, rel=tol) and built[n] == pytest.approx(expect, rel=tol), n
    # explicit scales replace the stored ones; names they lack get the defaults (σ, gain 1)
    model.init_weights({"norm.weight": 3.0})
    assert float(model.norm.weight[0]) == 3.0 and float(model.layers[0].norm1.weight[0]) == 1.0
    assert float(model.layers[0].attn.proj.weight.detach().std()) == pytest.approx(0.02 * 0.9866, rel=0.03)


def test_set_parametrization_on_a_fresh_model_matches_build_model():
    """What a loader of a CompleteP checkpoint needs: the multipliers, no weight change."""
    cfg = cfg_of(64, 8)
    torch.manual_seed(0)
    model = Transformer(cfg, LAYOUT)
    before = [q.clone() for q in model.parameters()]
    set_parametrization(model, CP)
    assert [b.residual_mult for b in model.layers] == [0.25] * 8
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---- the coordinate check -----------------------------------------------------------------------------


def test_coordinate_check_is_flat_under_completep_only():
    from trimodal.experiments.coord_check import CoordConfig, coord_check

    cc = CoordConfig(widths=(64, 128, 256), depths=(2, 4, 8), steps=5, lr=5e-3, batch=6, seq_len=24)
    res = coord_check(cc)
    for axis in ("width", "depth"):
        r = res[axis]
        flat, fans = r.spread("completep"), r.spread("standard")
        assert flat < 1.5, (axis, r.stream["completep"])
        assert fans > 4.0, (axis, r.stream["standard"])
        # standard grows monotonically with the size, at every step after the first
        for step in range(1, cc.steps + 1):
            v = [r.stream["standard"][s][step] for s in r.sizes]
            assert v == sorted(v), (axis, step, v)
        assert all(math.isfinite(x) for k in r.loss for s in r.sizes for x in r.loss[k][s])


# ---- through the trainer ----------------------------------------------------------------------------


def test_trainer_builds_completep_model_and_groups(text_dataset, tmp_path):
    from trimodal.shards.loader import SourceConfig
    from trimodal.train import distributed as D
    from trimodal.train.trainer import TrainConfig, Trainer

    sets = [f"run.out_dir={tmp_path / 'cp'}", "run.steps=3", "run.batch_size=2", "run.device=cpu", "run.progress=false",
            "run.ckpt_every=0", "run.ckpt_final=false", "data.seq_len=32", "model.dim=64", "model.n_layers=4",
            "model.n_heads=4", "model.max_seq_len=32", "optim.warmup_steps=0", "param.kind=completep",
            "param.base_dim=32", "param.base_layers=2"]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=text_dataset)]
    trainer = Trainer(cfg, D.init_distributed("cpu"))
    assert [b.residual_mult for b in trainer.model.layers] == [0.5] * 4
    hidden = trainer.model.layers[0].attn.qkv.weight
    group = next(g for g in trainer.optimizer.param_groups if any(q is hidden for q in g["params"]))
    assert group["lr_mult"] == 0.5 and group["weight_decay"] == pytest.approx(2 * cfg.optim.weight_decay)
    assert group["eps"] == pytest.approx(cfg.optim.eps / 4)
    r = trainer.train_step(0)
    assert math.isfinite(r.loss) and group["lr"] == pytest.approx(0.5 * r.lr)


def test_completep_with_table_resumes_exactly_under_activation_checkpointing(text_dataset, tmp_path):
    """Many param groups (per-group lr_mult, betas, ε) survive a checkpoint; wrapped block names
    (activation checkpointing) get the same rules."""
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig, train

    def cfg(out, **extra):
        sets = [f"run.out_dir={out}", "run.steps=6", "run.batch_size=2", "run.device=cpu", "run.progress=false",
                "run.log_every=1", "run.ckpt_every=0", "data.seq_len=32", "model.dim=64", "model.n_layers=4",
                "model.n_heads=4", "model.max_seq_len=32", "optim.lr=3e-3", "optim.warmup_steps=2",
                "run.activation_checkpointing=selective", "param.kind=completep", "param.base_dim=32",
                "param.base_layers=2", "param.table=paper_table6"] + [f"{k}={v}" for k, v in extra.items()]
        c = TrainConfig.load(None, sets)
        c.data.sources = [SourceConfig(root=text_dataset)]
        return c

    full = train(cfg(tmp_path / "full"))
    first = train(cfg(tmp_path / "split", **{"run.ckpt_every": 3, "run.stop_at_step": 3}))
    second = train(cfg(tmp_path / "split", **{"run.ckpt_every": 3, "run.resume": "true"}))
    assert all(math.isfinite(x) for x in full["losses"])
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], abs=0, rel=0)


def test_a_completep_checkpoint_loads_with_its_residual_multipliers(text_dataset, tmp_path):
    """The residual multipliers are not in the weights: loading (checkpoint or export) applies
    the run's parametrization, so the loaded model computes what the trained one did."""
    import trimodal
    from trimodal.api import export
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig, train

    sets = [f"run.out_dir={tmp_path / 'run'}", "run.steps=2", "run.batch_size=2", "run.device=cpu", "run.progress=false",
            "data.seq_len=32", "data.num_streams=2", "model.dim=32", "model.n_layers=4", "model.n_heads=2",
            "model.max_seq_len=32", "param.kind=completep", "param.base_dim=32", "param.base_layers=2",
            "log.tensorboard=false"]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=text_dataset)]
    train(cfg)
    m = trimodal.load(str(tmp_path / "run"), device="cpu")
    assert all(b.residual_mult == pytest.approx(0.5) for b in m.model.layers)  # (2/4)^1
    export(str(tmp_path / "run"), str(tmp_path / "export"))
    e = trimodal.load(str(tmp_path / "export"), device="cpu")
    assert all(b.residual_mult == pytest.approx(0.5) for b in e.model.layers)
