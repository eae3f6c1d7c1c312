import json
from pathlib import Path

import pytest

from trimodal.config import ConfigError
from trimodal.train.trainer import TrainConfig, train


def _cfg(text_dataset: str, out: Path, steps: int, **extra) -> TrainConfig:
    sets = [
        f"run.out_dir={out}", f"run.steps={steps}", "run.batch_size=4", "run.device=cpu", "run.progress=false",
        "run.log_every=1", "run.ckpt_every=0", "data.seq_len=64", "data.num_streams=2",
        "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
        "optim.lr=3e-3", "optim.warmup_steps=2", "optim.weight_decay=0.0",
    ] + [f"{k}={v}" for k, v in extra.items()]
    cfg = TrainConfig.load(None, sets)
    from trimodal.shards.loader import SourceConfig

    cfg.data.sources = [SourceConfig(root=text_dataset)]
    return cfg


def test_resume_continues_identical_loss_sequence(text_dataset, tmp_path):
    full = train(_cfg(text_dataset, tmp_path / "full", 8))
    first = train(_cfg(text_dataset, tmp_path / "split", 8, **{"run.ckpt_every": 4, "run.stop_at_step": 4}))
    # a fresh process-like restart: new config object, resume from the step-4 checkpoint
    second = train(_cfg(text_dataset, tmp_path / "split", 8, **{"run.ckpt_every": 4, "run.resume": "true"}))
    assert second["start_step"] == 4
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], abs=0, rel=0)
    logged = [json.loads(l) for l in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 9))


def test_step_results_read_once_per_log_interval_log_what_every_step_logs(text_dataset, tmp_path):
    """Losses and counts stay on the device between log steps: the loss sequence and the records
    of a run logging every 3rd step are those of the run logging every step (elapsed aside)."""
    every = train(_cfg(text_dataset, tmp_path / "every", 7, **{"run.micro_batch_size": 2}))
    sparse = train(_cfg(text_dataset, tmp_path / "sparse", 7, **{"run.micro_batch_size": 2, "run.log_every": 3}))
    assert sparse["losses"] == every["losses"] and len(every["losses"]) == 7

    def records(out):
        rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
        return {r["step"]: {k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in rows if "loss" in r}

    a, b = records(tmp_path / "every"), records(tmp_path / "sparse")
    assert sorted(b) == [1, 3, 6, 7] and all(b[s] == a[s] for s in b)
    assert b[7]["tokens"] == a[7]["tokens"] > b[6]["tokens"] > 0


def _tiny_corpus_dataset(root: Path, sp_model: str) -> str:
    from trimodal.shards.manifest import Manifest
    from trimodal.shards.writer import write_shard
    from trimodal.tokenizers.text import TextTokenizer

    tok = TextTokenizer.from_path(sp_model)
    docs = ["the model reads a corpus of documents", "images and audio share one sequence"]
    samples = [(f"d{i}", {"id": str(i), "source": "tiny", "modality": "text"}, {"text": tok.encode_one(d)})
               for i, d in enumerate(docs)]
    info = write_shard(str(root), "shard-00000-of-00001.tar", samples)
    Manifest(kind="tokenized", modality="text", tokenizers={"text": tok.info()}, shards=[info]).save(str(root))
    return str(root)


def test_overfitting_a_tiny_corpus_drives_loss_down(sp_model, tmp_path):
    ds = _tiny_corpus_dataset(tmp_path / "tiny", sp_model)
    res = train(_cfg(ds, tmp_path / "fit", 120, **{"model.dim": 64, "optim.lr": 5e-3}))
    first = sum(res["losses"][:5]) / 5
    last = sum(res["losses"][-20:]) / 20  # the 1/t-weighted loss is noisy step to step
    assert last < 0.75 * first, (first, last)


def test_checkpoint_holds_layout_config_and_keeps_last(text_dataset, tmp_path):
    train(_cfg(text_dataset, tmp_path / "k", 6, **{"run.ckpt_every": 2, "run.keep_last": 2}))
    ckpts = sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir())
    assert ckpts == ["step-0000004", "step-0000006"]
    state = json.loads((tmp_path / "k" / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["step"] == 6 and state["layout"]["text_codes"] > 0 and state["config"]["model"]["dim"] == 32
    assert "text" in state["tokenizers"]


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("optim.nonsense", "1", "optim.nonsense"),
        ("model.dim", "\"wide\"", "model.dim"),
        ("run.batch_size", "3", "not divisible|micro_batch"),
        ("data.seq_len", "128", "max_seq_len"),
    ],
)
def test_bad_config_names_the_key(text_dataset, tmp_path, key, value, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        cfg = _cfg(text_dataset, tmp_path / "bad", 1, **{key: value})
        if key == "run.batch_size":
            cfg.run.micro_batch_size = 2
        train(cfg)


def test_reparam_drives_steps_and_optimizer(text_dataset, tmp_path):
    # D = B·L·S: 4 rows × 64 positions × 5 steps
    res = train(_cfg(text_dataset, tmp_path / "sde", 999, **{"reparam.tokens": 4 * 64 * 5, "reparam.base_tokens": 1280,
                                                             "reparam.base_batch": 8}))
    assert res["steps"] == 5
    start = json.loads((tmp_path / "sde" / "log.jsonl").read_text().splitlines()[0])
    r = start["reparam"]
    assert r["kappa"] == pytest.approx(0.5) and start["optim"]["lr"] == pytest.approx(3e-3 * 0.5**0.5)
