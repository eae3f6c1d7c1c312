"""Evaluation: held-out splits, the deterministic ELBO estimator (same number twice, on 1 and 2
ranks, across resumes), its agreement with the training objective, choice scoring, TensorBoard
files, `trimodal eval` and `trimodal plot`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from trimodal.cli import main
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset, load_manifests, tokenizers_of
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples
from trimodal.tokenizers.vocab import VocabLayout
from trimodal.train.evaluate import EvalConfig, Evaluator, elbo_sums, level_uniforms, t_grid
from trimodal.train.objective import ObjectiveConfig, corrupt, score
from trimodal.train.trainer import TrainConfig, train

BEAM = ["--runner=DirectRunner"]


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory, corpus, sp_model) -> str:
    out = str(tmp_path_factory.mktemp("split") / "text")
    run_text_pipeline(TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=out,
                                         target_shard_bytes=6000, val_fraction=0.25), BEAM)
    return out


def _sets(data: str, out, steps: int, *extra: str) -> list[str]:
    return [f'data.sources=[{{"root": "{data}"}}]', f"run.out_dir={out}", f"run.steps={steps}", "run.batch_size=4",
            "run.device=cpu", "run.progress=false", "run.log_every=1", "run.ckpt_every=0", "data.seq_len=64",
            "data.num_streams=2", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
            "optim.lr=3e-3", "optim.warmup_steps=2", "optim.weight_decay=0.0", "eval.rows=16", "eval.t_levels=4",
            "log.tensorboard=false", *extra]


def _evals(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("event") == "eval"}


def test_val_split_is_deterministic_listed_and_never_trained_on(split_dataset, corpus, sp_model, tmp_path):
    m = Manifest.load(split_dataset)
    assert m.splits() == ["train", "val"] and all(s.name.startswith("val-") == (s.split == "val") for s in m.shards)
    assert all(s.text_bytes > 0 for s in m.shards)
    n_val = sum(s.samples for s in m.split_shards("val"))
    assert 0.15 < n_val / m.samples < 0.35
    again = run_text_pipeline(TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model,
                                                 out=str(tmp_path / "again"), target_shard_bytes=6000, val_fraction=0.25),
                              BEAM + ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert [(s.name, s.sha256, s.split) for s in again.shards] == [(s.name, s.sha256, s.split) for s in m.shards]
    # the training loader reads only the train split: no val document reaches a row
    layout = VocabLayout.from_tokenizers(m.tokenizers)
    rows = np.concatenate([r["tokens"].numpy()[1:] for r in TrimodalDataset(
        LoaderConfig(sources=[SourceConfig(split_dataset)], seq_len=64, num_streams=1, cycle=False), layout)])
    stream = rows.tobytes()
    val_docs = [np.concatenate([[layout.text.bos], s["text"].astype(np.int64) + layout.text.offset, [layout.text.eos]])
                for _, s in iter_samples(split_dataset, m.split_shards("val"))]
    train_docs = [np.concatenate([[layout.text.bos], s["text"].astype(np.int64) + layout.text.offset, [layout.text.eos]])
                  for _, s in iter_samples(split_dataset, m.split_shards("train"))]
    assert sum(d.tobytes() in stream for d in val_docs if d.size > 6) == 0
    assert sum(d.tobytes() in stream for d in train_docs) >= len(train_docs) - 2  # (a finite pass drops a tail)
    # shards stats reports per split
    from trimodal.shards.stats import compute_stats

    stats = compute_stats(split_dataset)
    assert set(stats["splits"]) == {"train", "val"} and stats["splits"]["val"]["samples"] == n_val


def test_validation_during_training_is_identical_across_runs_and_resumes(split_dataset, tmp_path):
    a = tmp_path / "a"
    train(TrainConfig.load(None, _sets(split_dataset, a, 6, "eval.every=3")))
    ea = _evals(a)
    assert sorted(ea) == [3, 6]
    for r in ea.values():
        assert math.isfinite(r["elbo"]) and r["elbo/text"] == pytest.approx(r["elbo"]) and r["elbo_se"] >= 0
        assert r[f"source/{Path(split_dataset).name}/elbo/text"] == r["elbo/text"]
        assert r[f"source/{Path(split_dataset).name}/bits_per_byte/text"] == r["bits_per_byte/text"] > 0
    b = tmp_path / "b"
    train(TrainConfig.load(None, _sets(split_dataset, b, 6, "eval.every=3", "run.ckpt_every=3", "run.stop_at_step=3")))
    train(TrainConfig.load(None, _sets(split_dataset, b, 6, "eval.every=3", "run.ckpt_every=3", "run.resume=true")))
    eb = _evals(b)
    assert {s: r["elbo"] for s, r in eb.items()} == {s: r["elbo"] for s, r in ea.items()}  # exact


def _model_and_rows(split_dataset: str):
    torch.manual_seed(0)
    from trimodal.train.model import ModelConfig, Transformer

    cfg = TrainConfig.load(None, _sets(split_dataset, "unused", 1))
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg.data)))
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64), layout).eval()
    return cfg, layout, model


def test_the_estimator_is_deterministic_and_equals_the_training_objective(split_dataset):
    from trimodal.train.distributed import DistInfo

    cfg, layout, model = _model_and_rows(split_dataset)
    ev = Evaluator.build(EvalConfig(every=1, rows=8, t_levels=4), layout, load_manifests(cfg.data), cfg.data,
                         ObjectiveConfig(), DistInfo())
    first, second = ev.run(model), ev.run(model)
    assert first == second
    # one row, one level: the ELBO sum equals the training loss's weighted CE for the same t and mask
    rows = ev.sources[0].rows
    sums = elbo_sums(model, rows, [0], layout, ObjectiveConfig(), EvalConfig(t_levels=4), torch.device("cpu"))
    t = t_grid(4, 1e-3, 0, 0)[1:2].float()
    u = level_uniforms(0, 0, 4, rows["tokens"].shape[1])[1:2]
    c = corrupt(rows["tokens"][:1], rows["modality"][:1], rows["valid"][:1], t, layout, ObjectiveConfig(), uniforms=u)
    with torch.no_grad():
        res = score(model, c, layout, ObjectiveConfig(z_loss=0.0))
    assert sums[1, 0].sum().item() == pytest.approx(res.weighted_sum.sum().item(), rel=1e-6)
    assert sums[1, 1].sum().item() == res.tokens.sum().item()


EVAL_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from trimodal.shards.loader import load_manifests, tokenizers_of
    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train import distributed as D
    from trimodal.train.evaluate import EvalConfig, Evaluator
    from trimodal.train.model import ModelConfig, Transformer
    from trimodal.train.objective import ObjectiveConfig
    from trimodal.train.trainer import TrainConfig

    info = D.init_distributed("cpu")
    cfg = TrainConfig.load(None, [f'data.sources=[{{"root": "{sys.argv[1]}"}}]', "data.seq_len=64", "data.num_streams=2"])
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg.data)))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64), layout).eval()
    model = D.shard_model(model, None)
    ev = Evaluator.build(EvalConfig(every=1, rows=7, t_levels=4, batch_size=2), layout, load_manifests(cfg.data), cfg.data,
                         ObjectiveConfig(), info)
    rec = ev.run(model)
    if info.is_main:
        print("RESULT " + json.dumps(rec))
    D.cleanup()
''')


def test_the_estimator_gives_the_same_number_on_one_and_two_ranks(split_dataset, tmp_path):
    script = tmp_path / "ev.py"
    script.write_text(EVAL_SCRIPT)
    out = {}
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    for n in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                               str(script), split_dataset], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert out[1]["tokens"] == out[2]["tokens"]
    assert out[2]["elbo"] == pytest.approx(out[1]["elbo"], rel=1e-5)


def test_training_lowers_the_held_out_elbo(split_dataset, tmp_path):
    early = tmp_path / "early"
    train(TrainConfig.load(None, _sets(split_dataset, early, 1, "eval.every=1")))
    late = tmp_path / "late"
    train(TrainConfig.load(None, _sets(split_dataset, late, 80, "eval.every=80", "model.dim=64")))
    train(TrainConfig.load(None, _sets(split_dataset, tmp_path / "late0", 1, "eval.every=1", "model.dim=64")))
    e0 = _evals(tmp_path / "late0")[1]["elbo"]
    e80 = _evals(late)[80]["elbo"]
    assert e80 < 0.8 * e0, (e0, e80)


def test_tensorboard_event_files_read_back(split_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(TrainConfig.load(None, _sets(split_dataset, out, 4, "eval.every=2", "log.tensorboard=true")))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "loss/text", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/padding",
            "val/elbo", "val/elbo/text"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/elbo")] == [2, 4]


def test_eval_command_and_its_refusals(split_dataset, text_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig.load(None, _sets(split_dataset, out, 2, "run.ckpt_final=true")))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", split_dataset, "--samples", "3", "--rows", "4",
                 "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 2 and math.isfinite(res["elbo"]["elbo"]) and res["elbo"]["elbo_se"] >= 0
    # no val split
    assert main(["eval", "--checkpoint", str(out), "--data", text_dataset, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no 'val' split" in err and len(err.strip().splitlines()) == 1
    # a malformed choices line is named
    bad = tmp_path / "choices.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "choices": ["b", "c"], "answer": 0}) + "\n{not json\n")
    assert main(["eval", "--checkpoint", str(out), "--choices", str(bad), "--device", "cpu"]) == 1
    assert f"{bad}:2" in capsys.readouterr().err


def test_eval_command_verifies_the_shards_it_reads(split_dataset, tmp_path, capsys):
    """``trimodal eval --verify`` is the loader's check: a flipped byte in a val shard is named
    with --verify sha256 instead of silently moving the ELBO, and a truncated one is caught with
    no flag (the default is data.verify's, as in training)."""
    import shutil

    out = tmp_path / "run"
    train(TrainConfig.load(None, _sets(split_dataset, out, 1, "run.ckpt_final=true")))
    data = tmp_path / "data"
    shutil.copytree(split_dataset, data)
    shards = [data / s.name for s in Manifest.load(str(data)).split_shards("val")]
    raws = {}
    for shard in shards:  # every val shard: which one the rows come from first is the loader's choice
        raws[shard] = raw = bytearray(shard.read_bytes())
        raw[len(raw) // 3] ^= 0x01
        shard.write_bytes(bytes(raw))
    ev = ["eval", "--checkpoint", str(out), "--data", str(data), "--samples", "1", "--rows", "4", "--device", "cpu"]
    capsys.readouterr()
    assert main(ev + ["--verify", "sha256"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and any(s.name in err for s in shards) and "sha256" in err
    assert main(ev + ["--verify", "md5"]) == 1 and "verify must be one of" in capsys.readouterr().err
    for shard, raw in raws.items():
        shard.write_bytes(bytes(raw[: len(raw) // 2]))
    assert main(ev) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and any(s.name in err for s in shards)


def test_eval_command_scores_as_the_run_did(split_dataset, tmp_path, capsys):
    """``trimodal eval`` on a checkpoint and on its export gives the number the run's own last
    evaluation logged, with no estimator flags (it takes the run's eval rows, draws, seed and
    split, and prints them), also when the run's objective and attention differ from the defaults."""
    from trimodal.api import export

    out = tmp_path / "run"
    train(TrainConfig.load(None, _sets(split_dataset, out, 2, "eval.every=2", "objective.eps=0.05",
                                       "data.document_attention=true", "run.ckpt_final=true")))
    logged = _evals(out)[2]
    exported = tmp_path / "exported"
    export(str(out), str(exported))
    for ckpt in (out, exported):
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(ckpt), "--data", split_dataset, "--device", "cpu", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        res = got["elbo"]
        assert res["elbo"] == pytest.approx(logged["elbo"], rel=1e-6) and res["elbo/text"] == pytest.approx(logged["elbo/text"], rel=1e-6)
        assert got["settings"] == {"rows": 16, "samples": 4, "seed": 0, "split": "val", "seq_len": 64,
                                   "from_run": ["rows", "samples", "seed", "split"]}
    # the printed result names its settings; a flag given wins over the run's
    assert main(["eval", "--checkpoint", str(out), "--data", split_dataset, "--device", "cpu", "--rows", "8"]) == 0
    text = capsys.readouterr().out
    assert "settings: --rows 8, --samples 4, --seed 0, --split val, seq_len 64 (from the run: --samples, --seed, --split)" in text


def test_an_evaluation_source_of_another_tokenizer_is_refused(split_dataset, tmp_path, sp_model):
    from dataclasses import replace

    other = tmp_path / "other"
    import shutil

    shutil.copytree(split_dataset, other)
    m = Manifest.load(str(other))
    m.tokenizers["text"] = replace(m.tokenizers["text"], fingerprint="0000000000000000")
    m.save(str(other))
    with pytest.raises(ValueError, match="0000000000000000.*the run's is"):
        train(TrainConfig.load(None, _sets(split_dataset, tmp_path / "r", 1, "eval.every=1",
                                           f'eval.sources=[{{"root": "{other}"}}]')))
    # a separate evaluation root of the run's tokenizer is scored under its own name
    good = tmp_path / "heldout"
    shutil.copytree(split_dataset, good)
    out = tmp_path / "r2"
    train(TrainConfig.load(None, _sets(split_dataset, out, 2, "eval.every=2",
                                       f'eval.sources=[{{"root": "{good}", "name": "heldout"}}]')))
    ev = _evals(out)[2]
    assert math.isfinite(ev["source/heldout/elbo"])
    assert {k.split("/")[1] for k in ev if k.startswith("source/")} == {"heldout"}  # only the root it was given


def _direct_choice_score(model, layout, prompt: list[int], choice: list[int], samples: int, seed: int = 0,
                         eps: float = 1e-3) -> float:
    """The conditional ELBO of ``choice`` written out by hand: for each of the fixed t levels,
    mask the choice span where the level's uniforms fall below t, run the model, and add
    (1/t) x the text head's cross-entropy at each masked position; average over levels."""
    from trimodal.train.evaluate import _CHOICE_SALT

    t = layout.text
    ids = [layout.task_token("text"), t.bos, *(t.offset + i for i in prompt), *(t.offset + i for i in choice), t.eos]
    start = 2 + len(prompt)
    times = t_grid(samples, eps, seed, 0).double()
    u = level_uniforms(seed, 0, samples, len(ids), _CHOICE_SALT)
    total = 0.0
    with torch.no_grad():
        for k in range(samples):
            masked = [j for j in range(start, start + len(choice)) if float(u[k][j]) < float(times[k])]
            noisy = torch.tensor([t.mask if j in masked else x for j, x in enumerate(ids)])[None]
            hidden = model(noisy, torch.ones_like(noisy, dtype=torch.bool))
            for j in masked:
                logp = torch.log_softmax(model.heads["text"](hidden[0, j]).double(), -1)
                total += -float(logp[ids[j] - t.offset]) / float(times[k])
    return -total / samples


def test_choice_scores_equal_a_direct_computation_and_the_command_picks_their_argmax(sp_model, tmp_path, capsys):
    """Deterministic on any machine: each choice's score is checked against the ELBO written out
    by hand (float64), the prediction against the argmax of those scores, and the command line
    against the in-process result; no threshold on what a tiny model learned."""
    from trimodal.shards.writer import write_shard
    from trimodal.tokenizers.text import TextTokenizer
    from trimodal.train.evaluate import ChoiceItem, evaluate_choices, score_choices

    tok = TextTokenizer.from_path(sp_model)
    facts = ["the model reads a corpus", "images and audio share one sequence", "the cat sat on a mat",
             "captions and transcripts fill masked tokens"]
    samples = [(f"d{i}", {"id": str(i), "source": "facts", "modality": "text"}, {"text": tok.encode_one(d)})
               for i, d in enumerate(facts)]
    info = write_shard(str(tmp_path / "facts"), "shard-00000-of-00001.tar", samples)
    Manifest(kind="tokenized", modality="text", tokenizers={"text": tok.info()}, shards=[info]).save(str(tmp_path / "facts"))
    out = tmp_path / "run"
    sets = [x for x in _sets(str(tmp_path / "facts"), out, 4) if not x.startswith(("data.seq_len", "model.max_seq_len"))]
    train(TrainConfig.load(None, sets + ["data.seq_len=32", "model.max_seq_len=32", "run.ckpt_final=true"]))
    import trimodal

    m = trimodal.load(str(out), device="cpu")
    items = [ChoiceItem("the model reads", [" a corpus", " one sequence", " a mat"], 0),
             ChoiceItem("images and audio share", [" a mat", " one sequence", " masked tokens"], 1),
             ChoiceItem("the cat sat on", [" a corpus", " one sequence", " a mat"], 2),
             ChoiceItem("captions and transcripts fill", [" a mat", " masked tokens", " a corpus"], 1)]
    text_tok = m.tokenizer("text")
    expected_preds = []
    for it in items:
        prompt = [int(x) for x in text_tok.encode_one(it.prompt)]
        choices = [[int(x) for x in text_tok.encode_one(c)] for c in it.choices]
        got = score_choices(m.model, m.layout, prompt, choices, samples=8)
        direct = [_direct_choice_score(m.model, m.layout, prompt, c, samples=8) for c in choices]
        np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)
        assert all(v < 0 for v in got)  # a lower bound on a log-probability
        expected_preds.append(int(np.argmax(got)))
    result = evaluate_choices(m.model, m.layout, text_tok, items, samples=8)
    assert result.predictions == expected_preds and result.n == 4
    assert result.accuracy == sum(p == it.answer for p, it in zip(expected_preds, items)) / 4
    # the command line scores the same file to the same accuracy
    path = tmp_path / "choices.jsonl"
    path.write_text("".join(json.dumps({"prompt": it.prompt, "choices": it.choices, "answer": it.answer}) + "\n"
                            for it in items))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--choices", str(path), "--samples", "8", "--device", "cpu"]) == 0
    assert f"multiple choice: accuracy {result.accuracy:.4f} on 4 items" in capsys.readouterr().out


def test_plot_draws_train_and_val_curves(split_dataset, tmp_path):
    runs = []
    for name in ("p1", "p2"):
        out = tmp_path / name
        train(TrainConfig.load(None, _sets(split_dataset, out, 4, "eval.every=2")))
        runs.append(str(out))
    png = tmp_path / "curves.png"
    assert main(["plot", *runs, "--out", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size[0] > 300
