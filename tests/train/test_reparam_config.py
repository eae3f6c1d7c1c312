"""The training config's ``reparam`` section and the example configs shipped in
``trimodal/configs/``: every key valid, the derived SDE values as documented, and the CPU example
runnable through ``trimodal train --config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trimodal
from trimodal.config import ConfigError
from trimodal.train.trainer import TrainConfig, micro_batching, resolve_schedule

CONFIGS = Path(trimodal.__file__).parent / "configs"
EXAMPLES = sorted(p.name for p in CONFIGS.glob("*.json"))


def test_examples_exist():
    assert {"tiny_cpu.json", "1b_h100.json", "3b_paper.json"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_config_loads_with_every_key_known(name):
    raw = json.loads((CONFIGS / name).read_text())
    cfg = TrainConfig.load(str(CONFIGS / name))  # unknown keys / wrong types raise ConfigError
    assert cfg.data.sources and cfg.data.seq_len <= cfg.model.max_seq_len
    for section, values in raw.items():  # every value in the file made it into the config
        got = cfg.to_dict()[section]
        for key, value in values.items():
            if key != "sources" and not isinstance(value, dict):
                assert got[key] == value, f"{section}.{key}"


@pytest.mark.parametrize(
    "name,worlds",
    [("tiny_cpu.json", [1, 2, 4]), ("1b_h100.json", [8, 16, 32]), ("3b_paper.json", [128, 256, 384, 768])],
)
def test_example_config_fits_its_world_sizes(name, worlds):
    cfg = TrainConfig.load(str(CONFIGS / name))
    for w in worlds:
        micro, accum = micro_batching(cfg.run, w)
        assert micro * accum * w == cfg.run.batch_size
        assert cfg.data.num_streams % w == 0, f"{name}: num_streams {cfg.data.num_streams} on {w} ranks"


def test_paper_config_reproduces_the_paper_transfer():
    """3B, B = 3072, L = 3256, D = 1e13 positions, γ = 0.44 → κ ≈ 0.64, ~1M steps."""
    s = resolve_schedule(TrainConfig.load(str(CONFIGS / "3b_paper.json")))
    r = s["reparam"]
    assert r["kappa"] == pytest.approx(0.64464, rel=1e-4)
    assert s["steps"] == 999_757
    assert s["lr"] == pytest.approx(7.2260e-4, rel=1e-4) and s["beta2"] == pytest.approx(0.96748, rel=1e-5)


def test_1b_config_values():
    s = resolve_schedule(TrainConfig.load(str(CONFIGS / "1b_h100.json")))
    # B̃ = 256·2^0.44 for D = 2·D_base; κ = 256 / B̃
    assert s["reparam"]["kappa"] == pytest.approx(2 ** -0.44)
    assert s["steps"] == round(2.6e10 / (256 * 3256))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("reparam.gamma", "-0.1", "reparam.gamma must be in [0, 1], got -0.1"),
        ("reparam.gamma", "1.5", "reparam.gamma must be in [0, 1]"),
        ("reparam.weight_decay_rule", "kappa", "reparam.weight_decay_rule must be one of ['none', 'sqrt_kappa']"),
        ("reparam.tokens", "-5", "reparam.tokens must be >= 0"),
        ("reparam.base_batch", "0", "reparam.base_batch and reparam.base_tokens must be positive"),
        ("reparam.nonsense", "1", "unknown config key reparam.nonsense"),
    ],
)
def test_bad_reparam_values_are_refused_at_load(key, value, message):
    # refused even with the reparameterisation off (tokens = 0): a typo should not wait
    with pytest.raises(ConfigError) as e:
        TrainConfig.load(None, [f"{key}={value}"])
    assert message in str(e.value)


def test_gamma_limits_are_accepted():
    for g in (0.0, 1.0):
        assert TrainConfig.load(None, [f"reparam.gamma={g}"]).reparam.gamma == g


def test_tiny_cpu_example_trains_through_the_cli(text_dataset, tmp_path, monkeypatch, capsys):
    from trimodal.cli import main

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(CONFIGS / "tiny_cpu.json"),
               "--set", f'data.sources=[{{"root": "{text_dataset}"}}]', "--set", f"run.out_dir={out}",
               "--set", "run.steps=1", "--set", "run.ckpt_every=1", "--set", "run.progress=false"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["dim"] == 128 and saved["data"]["num_streams"] == 4
    assert (out / "checkpoints" / "step-0000001" / "state.json").is_file()


@pytest.mark.parametrize("name,dim,layers", [("1b_h100.json", 2048, 16), ("3b_paper.json", 3072, 24)])
def test_paper_configs_transfer_by_completep_from_the_8_by_1024_base(name, dim, layers):
    """Table 5: CompleteP (α = 1) from an 8-block, 1,024-wide base; weight decay × √κ (docs/reparam.md)."""
    import math

    from trimodal.train.parametrization import adamw_settings, residual_multiplier

    cfg = TrainConfig.load(str(CONFIGS / name))
    p = cfg.param
    assert (p.kind, p.base_dim, p.base_layers, p.depth_alpha, p.table) == ("completep", 1024, 8, 1.0, None)
    assert (cfg.model.dim, cfg.model.n_layers) == (dim, layers)
    m_n, m_l = dim / 1024, layers / 8
    assert residual_multiplier(cfg.model, p) == pytest.approx(1 / m_l)
    s = resolve_schedule(cfg)
    kappa = s["reparam"]["kappa"]
    assert s["weight_decay"] == pytest.approx(0.1 * math.sqrt(kappa))
    betas, eps, wd = (s["beta1"], s["beta2"]), s["eps"], s["weight_decay"]
    qkv = adamw_settings(cfg.model, p, "layers.0.attn.qkv.weight", 2, betas, eps, wd)
    assert qkv["lr_mult"] == pytest.approx(1 / m_n) and qkv["weight_decay"] == pytest.approx(wd * m_n)
    assert qkv["eps"] == pytest.approx(eps / (m_n * m_l))
    head = adamw_settings(cfg.model, p, "heads.text.weight", 2, betas, eps, wd)
    assert head["lr_mult"] == pytest.approx(1 / m_n) and head["eps"] == pytest.approx(eps)
    emb = adamw_settings(cfg.model, p, "embeddings.text.weight", 2, betas, eps, wd)
    assert emb["lr_mult"] == pytest.approx(1.0) and emb["eps"] == pytest.approx(eps / m_n)
    # η·λ of a hidden matrix, the decoupled decay per step, is the base model's times κ
    assert s["lr"] * qkv["lr_mult"] * qkv["weight_decay"] == pytest.approx(
        s["lr"] / math.sqrt(kappa) * 0.1 * kappa)
