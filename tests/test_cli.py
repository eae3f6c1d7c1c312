"""The command-line contract, exercised through real subprocesses."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def trimodal(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the repo root: from there `python -m` would see ./tokenizers first
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
    shard = sorted(copy.glob("shard-*.tar*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # zstd shards can be a few hundred bytes: the middle is always inside
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


# ---- command-line conventions ------------------------------------------------------------------
def test_version_and_help_show_defaults_and_every_config_key(tmp_path):
    res = trimodal("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("trimodal ")
    res = trimodal("pipeline", "text", "--help", cwd=tmp_path)
    assert "(default: 256)" in res.stdout and "val_fraction" in res.stdout and "--shard-mb" in res.stdout
    res = trimodal("train", "--help", cwd=tmp_path)
    assert re.search(r"optim\.lr +float = 0\.0009", res.stdout) and "data.audio_overflow" in res.stdout


def test_debug_works_after_the_subcommand(tmp_path):
    res = trimodal("train", "--set", "optim.bogus=1", "--debug", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" in res.stderr


@pytest.mark.parametrize("typo,near", [("--shard_mb", "--shard-mb"), ("--direct-num-workers=8", "--direct_num_workers"),
                                       ("--text-tokeniser", "--text-tokenizer")])
def test_a_mistyped_pipeline_option_names_the_near_matches(tmp_path, sp_model, corpus, typo, near):
    from trimodal.cli import main

    argv = ["pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", sp_model,
            "--out", str(tmp_path / "o"), "--runner=DirectRunner", *typo.split("=")[:1], *(["1"] if "=" not in typo else [])]
    if "=" in typo:
        argv[-1] = typo
    assert main(argv) == 1
    assert not (tmp_path / "o").exists()


def test_near_match_message(tmp_path, sp_model, corpus, capsys):
    from trimodal.cli import main

    assert main(["pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", sp_model, "--out",
                 str(tmp_path / "o"), "--direct-num-workers=8"]) == 1
    err = capsys.readouterr().err
    assert "unknown option --direct-num-workers" in err and "--direct_num_workers" in err


def test_brace_ranges_expand_in_every_input(tmp_path, sp_model):
    from trimodal.cli import main

    for i in range(3):
        (tmp_path / f"part-{i:05d}.jsonl").write_text(json.dumps({"text": f"document number {i} of the set"}) + "\n")
    out = tmp_path / "ds"
    assert main(["pipeline", "text", "--input", str(tmp_path / "part-{00000..00002}.jsonl"), "--text-tokenizer",
                 sp_model, "--out", str(out), "--runner=DirectRunner"]) == 0
    from trimodal.shards.manifest import Manifest

    assert Manifest.load(str(out)).counts["read"] == 3
    from trimodal.storage import expand_inputs

    with pytest.raises(FileNotFoundError, match="part-00003"):
        expand_inputs(str(tmp_path / "part-{00000..00003}.jsonl"))


def test_config_files_in_yaml_and_toml(tmp_path):
    from trimodal.train.trainer import TrainConfig

    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.002\nrun:\n  steps: 7\n")
    (tmp_path / "c.toml").write_text("[optim]\nlr = 0.003\n[run]\nsteps = 9\n")
    assert TrainConfig.load(str(tmp_path / "c.yaml")).optim.lr == 0.002
    cfg = TrainConfig.load(str(tmp_path / "c.toml"), ["run.steps=11"])
    assert cfg.optim.lr == 0.003 and cfg.run.steps == 11
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    from trimodal.config import ConfigError

    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.load(str(tmp_path / "bad.yaml"))
    # YAML 1.1 reads 1e9 (no dot) as text; a number field takes the number it spells, nothing else
    (tmp_path / "sci.yaml").write_text("reparam:\n  tokens: 1e9\nrun:\n  steps: 2e3\n")
    sci = TrainConfig.load(str(tmp_path / "sci.yaml"))
    assert sci.reparam.tokens == 1e9 and sci.run.steps == 2000 and isinstance(sci.run.steps, int)
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        TrainConfig.load(None, ['optim.lr="fast"'])
    with pytest.raises(ConfigError, match=r"--set run.steps.max=3: steps is not a section"):
        TrainConfig.load(None, ["run.steps=5", "run.steps.max=3"])


def test_shards_show_decodes_text(text_dataset, tmp_path):
    res = trimodal("shards", "show", text_dataset, "--n", "2", "--out", str(tmp_path / "show"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("[") and "'" in l for l in lines)


def test_shard_mb_help_shows_its_default_in_mb(tmp_path):
    res = trimodal("pipeline", "text", "--help", cwd=tmp_path)
    flat = " ".join(res.stdout.split())
    assert "--shard-mb MB" in flat and "(default: 128)" in flat and "134217728" not in flat
    from trimodal.pipelines.common import PipelineConfig, _mb

    assert _mb(128) == PipelineConfig.__dataclass_fields__["target_shard_bytes"].default


def test_one_row_length_rule_for_stats_and_train(text_dataset, tmp_path):
    """``shards stats --seq-len 4`` and ``train data.seq_len=4``: the same rule, the same words."""
    stats = trimodal("shards", "stats", text_dataset, "--seq-len", "4", cwd=tmp_path)
    train = trimodal("train", "--set", f'data.sources=[{{"root": "{text_dataset}"}}]', "--set", "data.seq_len=4",
                     cwd=tmp_path)
    assert stats.returncode == 1 and train.returncode == 1
    assert "must be an integer >= 8, got 4" in stats.stderr and "must be an integer >= 8, got 4" in train.stderr
    for res in (stats, train):
        assert res.stderr.strip().count("\n") == 0, res.stderr


def test_txt_unit_summary_says_how_many_documents_each_file_gave(tmp_path, sp_model, capsys):
    from trimodal.cli import main

    book = tmp_path / "book.txt"
    book.write_text("The first paragraph.\n\nThe second one.\n\nAnd a third.\n")
    assert main(["pipeline", "text", "--input", str(book), "--text-tokenizer", sp_model, "--out", str(tmp_path / "a"),
                 "--runner=DirectRunner"]) == 0
    out = capsys.readouterr().out
    assert "--txt-unit file" in out and f"{book}: 1 document (3 paragraphs)" in out
    assert main(["pipeline", "text", "--input", str(book), "--text-tokenizer", sp_model, "--out", str(tmp_path / "b"),
                 "--txt-unit", "paragraph", "--runner=DirectRunner"]) == 0
    out = capsys.readouterr().out
    assert f"{book}: 3 documents" in out and "wrote 3 samples" in out
    help_text = " ".join(trimodal("pipeline", "text", "--help", cwd=tmp_path).stdout.split())
    assert "one document per file (the default" in help_text and "how many documents each file gave" in help_text
