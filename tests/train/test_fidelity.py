"""The objective as the paper defines it, whatever the batch is spread over: z-loss normalised
once over the global masked count, t and masks drawn per global row, so gradient accumulation is
a pure memory knob (the world-size cases run under torchrun in test_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch

from trimodal.shards.loader import SourceConfig
from trimodal.tokenizers.vocab import TASK, TEXT, VocabLayout
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.objective import ObjectiveConfig, corrupt, row_uniforms, score, subsample_rows
from trimodal.train.trainer import TrainConfig, train

LAYOUT = VocabLayout(text_codes=50, image_codes=8, audio_codes=8, audio_levels=1)


def _batch(n: int = 4, L: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (n, L), generator=g)
    tokens[:, 0] = LAYOUT.task_token("text")
    modality = torch.full((n, L), TEXT)
    modality[:, 0] = TASK
    return tokens, modality, torch.ones(n, L, dtype=torch.bool)


def test_z_loss_is_normalised_once_over_the_global_masked_count():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(max_seq_len=32), LAYOUT)
    tokens, modality, valid = _batch()
    cfg = ObjectiveConfig(z_loss=1e-2)
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    u = row_uniforms(0, 0, range(4), tokens.shape[1])
    whole = corrupt(tokens, modality, valid, t, LAYOUT, cfg, uniforms=u)
    one = score(model, whole, LAYOUT, cfg)
    n_tok, n_mask = whole.valid.sum(), whole.is_masked.sum()
    parts = [corrupt(tokens[i:i + 2], modality[i:i + 2], valid[i:i + 2], t[i:i + 2], LAYOUT, cfg, uniforms=u[i:i + 2])
             for i in (0, 2)]
    two = [score(model, c, LAYOUT, cfg, n_tokens=n_tok, n_masked=n_mask) for c in parts]
    assert sum(r.z_loss for r in two).item() == pytest.approx(one.z_loss.item(), rel=1e-6)
    assert sum(r.loss for r in two).item() == pytest.approx(one.loss.item(), rel=1e-6)
    # the defect this replaces: a per-call mean summed over micro-batches doubles the z term
    per_call = [score(model, c, LAYOUT, cfg) for c in parts]
    assert sum(r.z_loss for r in per_call).item() == pytest.approx(2 * one.z_loss.item(), rel=0.2)


def test_masks_follow_the_global_row_not_the_micro_batch():
    a = row_uniforms(7, 3, [0, 1, 2, 3], 16)
    b = torch.cat([row_uniforms(7, 3, [0, 1], 16), row_uniforms(7, 3, [2, 3], 16)])
    assert torch.equal(a, b)
    assert not torch.equal(row_uniforms(7, 4, [0], 16), row_uniforms(7, 3, [0], 16))


def test_random_subsample_cuts_only_text_rows():
    tokens, modality, valid = _batch(n=6, L=20)
    task = torch.tensor([0, 0, 0, 1, 0, 0])
    u = torch.tensor([[0.01, 0.0], [0.01, 0.999], [0.9, 0.5], [0.01, 0.5], [0.04, 0.5], [0.06, 0.5]])
    out, v = subsample_rows(tokens, valid, task, u, 0.05, LAYOUT.pad)
    lengths = v.sum(1).tolist()
    assert lengths == [2, 20, 20, 20, 11, 20]  # ℓ = 2 + floor(u·(L−1)); row 3 is not text; row 5 draws 0.06 ≥ p
    assert (out[~v] == LAYOUT.pad).all() and torch.equal(out[v], tokens[v])


def _sets(out, **extra) -> list[str]:
    return [f"run.out_dir={out}", "run.steps=5", "run.batch_size=4", "run.device=cpu", "run.progress=false",
            "run.log_every=1", "run.ckpt_every=0", "run.ckpt_final=false", "data.seq_len=64", "data.num_streams=2",
            "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64", "log.tensorboard=false",
            "objective.time_sampling=stratified", "objective.z_loss=1e-3"] + [f"{k}={v}" for k, v in extra.items()]


def _cfg(data: str, out, **extra) -> TrainConfig:
    cfg = TrainConfig.load(None, _sets(out, **extra))
    cfg.data.sources = [SourceConfig(root=data)]
    return cfg


def test_gradient_accumulation_is_a_pure_memory_knob(text_dataset, tmp_path):
    one = train(_cfg(text_dataset, tmp_path / "one"))
    two = train(_cfg(text_dataset, tmp_path / "two", **{"run.micro_batch_size": 2}))
    four = train(_cfg(text_dataset, tmp_path / "four", **{"run.micro_batch_size": 1}))
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert four["losses"] == pytest.approx(one["losses"], rel=1e-5)
    # and through the command line: the logged loss sequence of 2 micro-batches per step is the same
    from trimodal.cli import main

    cmd = ["train", "--set", f'data.sources=[{{"root": "{text_dataset}"}}]']
    for kv in _sets(tmp_path / "cli", **{"run.micro_batch_size": 2}):
        cmd += ["--set", kv]
    assert main(cmd) == 0
    logged = [json.loads(line)["loss"] for line in (tmp_path / "cli" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert logged == pytest.approx(one["losses"], rel=1e-5)
