"""The command-line contract (SPEC §8), exercised through real subprocesses."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def trimodal(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the repo root: from there `python -m` would see ./tokenizers first (SPEC §1)
    return subprocess.run([sys.executable, "-m", "trimodal.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("sub", [[], ["demo"], ["tokenizer", "train-text"], ["pipeline", "text"], ["pipeline", "mix"],
                                 ["shards", "stats"], ["shards", "verify"], ["train"], ["sample"]])
def test_help(sub, tmp_path):
    res = trimodal(*sub, "--help", cwd=tmp_path)
    assert res.returncode == 0 and "usage: trimodal" in res.stdout


def test_stats_json_and_verify(text_dataset, tmp_path):
    res = trimodal("shards", "stats", text_dataset, "--json", "--seq-len", "128", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["samples"] > 0 and stats["tokens"]["text"] > 0 and stats["shards"] > 1
    assert stats["rejected"] == {"bad_json": 1, "invalid_utf8": 1, "missing_field": 1}
    assert trimodal("shards", "verify", text_dataset, cwd=tmp_path).returncode == 0


def test_verify_names_a_corrupted_shard(text_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(text_dataset, copy)
    shard = sorted(copy.glob("shard-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = trimodal("shards", "verify", str(copy), cwd=tmp_path)
    assert res.returncode == 1 and shard.name in res.stdout + res.stderr


def test_errors_are_one_line_and_non_zero(tmp_path, sp_model):
    res = trimodal("pipeline", "text", "--input", str(tmp_path / "missing*.jsonl"), "--text-tokenizer", sp_model,
                   "--out", str(tmp_path / "out"), "--runner=DirectRunner", cwd=tmp_path)
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "missing" in res.stderr
    assert not (tmp_path / "out").exists()
    res = trimodal("train", "--set", "optim.bogus=1", cwd=tmp_path)
    assert res.returncode == 1 and "optim.bogus" in res.stderr and res.stderr.strip().count("\n") == 0
    res = trimodal("train", "--set", "reparam.gamma=-0.1", "--set", "reparam.tokens=1e6", cwd=tmp_path)
    assert res.returncode == 1 and "reparam.gamma" in res.stderr
    res = trimodal("train", "--set", f"data.sources=[{{\"root\": \"{tmp_path}\"}}]", cwd=tmp_path)
    assert res.returncode == 1 and "no manifest" in res.stderr


def test_tokenizer_pipeline_train_sample_chain(tmp_path, corpus):
    model = tmp_path / "tok.model"
    assert trimodal("tokenizer", "train-text", "--input", str(corpus["path"]), "--vocab-size", "300",
                    "--out", str(model), cwd=tmp_path).returncode == 0
    ds = tmp_path / "ds"
    res = trimodal("pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", str(model), "--out", str(ds),
                   "--runner=DirectRunner", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "rejected invalid_utf8: 1" in res.stdout
    run = tmp_path / "run"
    res = trimodal("train", "--set", f"data.sources=[{{\"root\": \"{ds}\"}}]", "--set", "data.seq_len=64",
                   "--set", "data.num_streams=2", "--set", "model.dim=32", "--set", "model.n_layers=1",
                   "--set", "model.n_heads=2", "--set", "model.max_seq_len=128", "--set", "run.steps=3",
                   "--set", "run.batch_size=2", "--set", f"run.out_dir={run}", "--set", "run.ckpt_every=3",
                   "--set", "run.device=cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "sample.txt"
    res = trimodal("sample", "--checkpoint", str(run), "--task", "text", "--prompt", "the model", "--length", "12",
                   "--steps", "6", "--out", str(out), "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert text.startswith("the model") and len(text.strip()) > len("the model")


def test_dataflow_dry_run_through_the_cli_leaves_the_dataset_untouched(text_dataset, corpus, sp_model, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(text_dataset, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    res = trimodal("pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", sp_model, "--out", str(copy),
                   "--runner=DataflowRunner", "--project=trimodal-test", "--region=us-central1",
                   "--temp_location=gs://trimodal-test-bucket/tmp",
                   "--dry_run=True", "--no_auth", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "dry run" in res.stdout
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
