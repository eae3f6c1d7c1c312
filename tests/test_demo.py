"""The README's first command, for real: ``trimodal demo`` runs the whole chain (tokenizer →
three Beam pipelines → stats → training with held-out evaluation → sampling) on the embedded
sample, in a subprocess, and every output it announces is there and readable."""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import pytest
import yaml
from PIL import Image

from trimodal.shards.manifest import Manifest
from trimodal.shards.verify import verify


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run shared by the tests below (it is the slowest thing in the suite)."""
    tmp_path = tmp_path_factory.mktemp("demo_run")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "demo", "--out", str(out), "--steps", "40"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=2400)  # a hang guard, not a speed check: a busy 2-core machine runs this 10x slower
    return out, proc


def test_demo_runs_the_whole_chain(demo, tmp_path):
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr

    # pipelines: every record of the sample ends written, filtered or rejected, with reasons
    text = Manifest.load(str(out / "data" / "text"))
    c = text.counts
    assert c["read"] == c["written"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert set(c["rejected"]) == {"bad_json", "invalid_utf8", "missing_field"} and c["filtered"] == {"empty": 2}
    assert set(text.splits()) == {"train", "val"}
    for modality in ("text", "image_text", "audio_text"):
        assert verify(str(out / "data" / modality)).ok
    # stats and plots
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert stats["samples"] > 0 and (out / "stats" / "row_padding.png").stat().st_size > 0
    # training: the loss fell, the held-out ELBO was logged at the middle and the end
    log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    assert {"elbo/text", "elbo/image", "elbo/audio"} <= set(evals[-1])  # every modality is held out
    for modality in ("image_text", "audio_text"):
        assert sum(s.samples for s in Manifest.load(str(out / "data" / modality)).split_shards("val")) == 2
    assert "fell" in said and "held-out ELBO at step 40" in said and "image " in said.split("held-out ELBO at step 40")[1]
    # samples
    assert (out / "samples" / "text.txt").read_text().strip()
    with Image.open(out / "samples" / "image.png") as im:
        assert im.size[0] >= 64
    with wave.open(str(out / "samples" / "speech.wav")) as w:
        assert w.getnframes() > 0 and w.getframerate() == 16000
    # `shards show` decodes the demo's image and audio shards back to a PNG grid and WAVs
    for task in ("image_text", "audio_text"):
        show = subprocess.run([sys.executable, "-m", "trimodal.cli", "shards", "show", str(out / "data" / task), "--n", "2",
                               "--out", str(tmp_path / f"show-{task}")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert show.returncode == 0, show.stderr[-2000:]
    with Image.open(tmp_path / "show-image_text" / "images.png") as im:
        assert im.size[0] >= 64
    for i in range(2):
        with wave.open(str(tmp_path / "show-audio_text" / f"sample_{i}.wav")) as w:
            assert w.getnframes() > 0 and w.getframerate() == 16000


def test_eval_generate_on_the_demo_run(demo, tmp_path):
    """``trimodal eval --generate`` on the demo's run with tiny random metric weights: every metric
    is computed, the JSON and the contact sheet are written, and a rerun gives the same samples."""
    import shutil

    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]

    from trimodal.quality.tiny import write_all

    weights = write_all(tmp_path / "metric_weights")
    ref = tmp_path / "fad_ref"
    ref.mkdir()
    for wav in sorted((out / "raw" / "speech").glob("clip_0[0-2].wav")):
        shutil.copy(wav, ref / wav.name)

    def run(dest, *extra):
        proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "eval", "--generate", "--checkpoint",
                               str(out / "run"), "--out", str(dest), "--num", "2", "--steps", "4", "--seconds", "0.5",
                               "--device", "cpu", *extra], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((dest / "metrics.json").read_text())

    first = run(tmp_path / "gen", "--inception", weights["inception"], "--fid-ref", str(out / "data" / "image_text"),
                "--ref-split", "train", "--ref-limit", "3", "--clip", weights["clip"], "--asr", weights["asr"],
                "--audio-embed", weights["audio_embed"], "--fad-ref", str(ref))
    assert first["skipped"] == []
    assert {"fid", "clip_score"} <= set(first["metrics"]["image"]) and first["metrics"]["image"]["n"] == 2
    assert {"wer", "fad"} <= set(first["metrics"]["speech"]) and first["metrics"]["speech"]["n"] == 2
    assert first["metrics"]["image"]["settings"]["steps"] == 4
    assert (tmp_path / "gen" / "fid_reference.npz").exists() and (tmp_path / "gen" / "fad_reference.npz").exists()
    with Image.open(tmp_path / "gen" / "images.png") as im:
        assert im.size[0] >= 2 * 128  # two tiles of at least 128 px
    lines = (tmp_path / "gen" / "speech.tsv").read_text().splitlines()
    assert lines[0] == "file\tprompt\ttranscript" and len(lines) == 3
    with wave.open(str(tmp_path / "gen" / "speech" / "0001.wav")) as w:
        assert w.getnframes() > 0
    # the same seed gives the same samples; the stored FID statistics are reused as they are
    again = run(tmp_path / "gen2", "--tasks", "image", "--inception", weights["inception"], "--fid-ref",
                str(tmp_path / "gen" / "fid_reference.npz"))
    for i in range(2):
        assert (tmp_path / "gen" / "images" / f"{i:04d}.png").read_bytes() == \
               (tmp_path / "gen2" / "images" / f"{i:04d}.png").read_bytes()
    assert again["metrics"]["image"]["fid"] == first["metrics"]["image"]["fid"]
    assert "clip_score (give --clip)" in again["skipped"] and "speech" not in again["metrics"]


def _experiment(spec: dict, folder, cwd):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "experiment", "run", str(path)], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_experiment_kinds_score_what_the_runs_generate(demo, tmp_path):
    """The anti-masking kind with a ``generate:`` section samples from each trained run and
    reports CLIP score and WER next to the ELBO, paired by seed; a rerun scores nothing again. The
    sampling kind sweeps one setting over the demo's run. Tiny random metric weights: the numbers
    mean nothing, the plumbing is what is checked."""
    import csv

    from trimodal.quality.tiny import write_all

    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = write_all(tmp_path / "metric_weights")
    data = out / "data"
    metrics = {"clip": weights["clip"], "asr": weights["asr"]}
    spec = {"kind": "anti-masking", "name": "anti", "out": str(tmp_path / "anti"), "seeds": [0, 1],
            "base": {"model": {"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 256},
                     "data": {"sources": [{"root": str(data / t)} for t in ("text", "image_text", "audio_text")],
                              "seq_len": 256, "num_streams": 1},
                     "optim": {"lr": 3e-3, "warmup_steps": 0, "weight_decay": 0.0},
                     "eval": {"every": 2, "rows": 4, "t_levels": 2, "batch_size": 4,
                              "sources": [{"root": str(data / "text")}]},
                     "log": {"tensorboard": False},
                     "run": {"device": "cpu", "steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 0}},
            "generate": {"tasks": ["image", "speech"], "num": 2, "steps": 2, "seconds": 0.4, "device": "cpu",
                         "metrics": metrics}}
    said = _experiment(spec, tmp_path / "anti_spec", tmp_path)
    assert said.count("[score ") == 4 and "4 ok, 0 failed" in said
    with open(tmp_path / "anti" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for r in rows:
        assert float(r["clip_score"]) >= 0 and 0 <= float(r["wer"]) and float(r["val_elbo"]) > 0, r
        assert r["fid"] == "" and r["fad"] == ""  # not asked for: no column invented
        scored = json.loads((tmp_path / "anti" / "runs" / r["name"] / "generate" / "metrics.json").read_text())
        assert float(r["clip_score"]) == scored["metrics"]["image"]["clip_score"]
        assert scored["seed"] == 0  # one sample seed for every run: paired comparisons
    md = (tmp_path / "anti" / "report.md").read_text()
    assert "| clip_score | wer |" in md.replace("audio | clip_score", "| clip_score")
    assert "clip_score: ranking (best first)" in md and "wer: True − False" in md and "over 2 seeds" in md
    assert "Generation metrics" in md
    again = _experiment(spec, tmp_path / "anti_spec", tmp_path)
    assert "[score " not in again and "4 ok, 0 failed" in again  # scored runs are not sampled again

    sweep = {"kind": "sampling", "name": "sweep", "out": str(tmp_path / "sweep"), "seeds": [0],
             "grid": {"checkpoint": str(out / "run"), "tasks": ["image"], "steps": [2, 4], "num": 2, "device": "cpu",
                      "metrics": {"clip": weights["clip"]}}}
    said = _experiment(sweep, tmp_path / "sweep_spec", tmp_path)
    assert "2 points" in said
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["value"], r["sampler_steps"]) for r in rows] == [("steps", "2", "2"), ("steps", "4", "4")]
    assert all(float(r["clip_score"]) >= 0 for r in rows)
    assert (tmp_path / "sweep" / "image-steps2-s0" / "images.png").exists()


def test_demo_runs_with_the_higgs_codec(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "demo", "--out", str(out), "--steps", "6",
                           "--audio-codec", "higgs"], cwd=tmp_path, capture_output=True, text=True, timeout=2400)  # a hang guard, not a speed check: a busy 2-core machine runs this 10x slower
    assert proc.returncode == 0, proc.stderr[-3000:]
    audio = Manifest.load(str(out / "data" / "audio_text"))
    assert audio.tokenizers["audio"].kind == "higgs" and audio.counts["written"] > 0
    with wave.open(str(out / "samples" / "speech.wav")) as w:
        assert w.getnframes() > 0 and w.getframerate() == 24000
