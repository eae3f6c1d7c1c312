"""README's "Running each job on your own data", run as written, in order, on the repository's
sample data: the commands are read from README.md itself, so the README and this test cannot
drift apart. Only what a user would replace is replaced: input paths (the sample text, the sample
images written as two webdataset tars, the test speech clips), the weight files (the tiny random
MoVQGAN and DAC the demo uses), the number of training steps, and the held-out fraction (the
sample has a dozen images and clips: 1 % would hold out none). The image size is the default.
"""

from __future__ import annotations

import json
import re
import shlex
import tarfile
from pathlib import Path

import pytest

from trimodal import cli

REPO = Path(__file__).resolve().parents[1]


def recipe_commands() -> list[list[str]]:
    """The ``trimodal ...`` lines of the README's own-data block (continuations joined)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running each job on your own data", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    block = re.sub(r"\\\n\s*", " ", block)
    lines = [l.split("#", 1)[0].strip() for l in block.splitlines()]
    return [l for l in lines if l.startswith("trimodal ") or l.startswith("torchrun ")]


def _sample_inputs(tmp: Path) -> dict[str, str]:
    from trimodal.demo import DATA, _write_tiny_audio_tokenizer
    from trimodal.tokenizers.movqgan import MoVQGAN, MoVQGANConfig, save_movqgan

    import torch

    (tmp / "corpus").mkdir()
    for f in sorted((DATA / "text").glob("*.jsonl")):
        (tmp / "corpus" / f.name).write_bytes(f.read_bytes())
    # the sample images as img2dataset-style tars: two of them, six images each
    (tmp / "laion").mkdir()
    caps = [json.loads(l) for l in (DATA / "images" / "captions.jsonl").read_text().splitlines()]
    for t in range(2):
        with tarfile.open(tmp / "laion" / f"{t:05d}.tar", "w") as tar:
            for i, c in enumerate(caps[t * 6:(t + 1) * 6]):
                key = f"{t:05d}{i:04d}"
                tar.add(DATA / "images" / c["file"], arcname=f"{key}.png")
                cap = tmp / f"{key}.txt"
                cap.write_text(c["caption"])
                tar.add(cap, arcname=f"{key}.txt")
    # the test clips, each four times (twelve records), absolute paths
    speech = REPO / "tests" / "data" / "speech"
    lines = [json.loads(l) for l in (speech / "manifest.jsonl").read_text().splitlines()]
    (tmp / "librispeech").mkdir()
    with open(tmp / "librispeech" / "train.jsonl", "w") as f:
        for _ in range(4):
            for l in lines:
                f.write(json.dumps({**l, "audio_filepath": str(speech / l["audio_filepath"])}) + "\n")
    (tmp / "weights").mkdir()
    torch.manual_seed(0)
    save_movqgan(MoVQGAN(MoVQGANConfig.tiny()), tmp / "weights" / "movqgan_tiny.ckpt")
    _write_tiny_audio_tokenizer(tmp / "weights" / "dac_tiny.pth")
    return {
        "laion/{00000..00099}.tar": "laion/{00000..00001}.tar",
        "weights/movqgan_270M.ckpt": "weights/movqgan_tiny.ckpt",
        "weights/higgs-audio-v2-tokenizer": "weights/dac_tiny.pth",
        "--val-fraction 0.01": "--val-fraction 0.3",
        "trimodal/configs/tiny_cpu.json": str(REPO / "trimodal" / "configs" / "tiny_cpu.json"),
        "hellaswag.jsonl": "choices.jsonl",
    }


def test_readme_recipe_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = recipe_commands()
    assert len(commands) >= 15, commands  # the block was found and read
    monkeypatch.chdir(tmp_path)
    subs = _sample_inputs(tmp_path)
    (tmp_path / "choices.jsonl").write_text(
        json.dumps({"prompt": "The module returns", "choices": [" a value", " nothing"], "answer": 0}) + "\n")
    ran = []
    for line in commands:
        if line.startswith("torchrun") or line.startswith("trimodal plot"):
            continue  # several processes / several runs: covered by tests/train and tests/experiments
        for old, new in subs.items():
            line = line.replace(old, new)
        args = shlex.split(line.split("|", 1)[0])[1:]
        if args[0] == "train":
            args += ["--set", "run.steps=4", "--set", "run.ckpt_every=4", "--set", "run.log_every=2",
                     "--set", "eval.rows=4", "--set", "eval.t_levels=2"]
        if args[0] == "sample":
            args += ["--set", "steps=4", "--set", "seconds=0.5"] if "speech" in args else ["--set", "steps=4"]
        rc = cli.main(args)
        out = capsys.readouterr()
        assert rc == 0, f"{line}\n{out.err}\n{out.out[-2000:]}"
        ran.append(args[0:2])
    assert [a[0] for a in ran].count("pipeline") == 3 and "train" in [a[0] for a in ran]
    # the default image size is the tokenizer's own (64 px: 8 x 8 = 64 codes), not 256 px
    m = json.loads((tmp_path / "data" / "image_text" / "manifest.json").read_text())
    assert m["tokenizers"]["image"]["grid"] == [8, 8] and m["tokenizers"]["image"]["image_size"] == 64
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "hello.wav").stat().st_size > 0
    assert (tmp_path / "exported" / "my").is_dir()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_image_size_too_large_for_seq_len_is_one_message_on_either_split(tmp_path, monkeypatch, capsys, sp_model):
    """Images tokenized at 256 px with the 64-px tiny MoVQGAN (32 x 32 = 1,024 codes): the run
    stops with the tokens per image and the L needed, whether the val split (eval on) or the train
    split (eval off) is read first."""
    monkeypatch.chdir(tmp_path)
    _sample_inputs(tmp_path)
    rc, out, err = _cli(capsys, "pipeline", "image-text", "--input", "laion/{00000..00001}.tar", "--text-tokenizer",
                        sp_model, "--image-tokenizer", "weights/movqgan_tiny.ckpt", "--out", "img256",
                        "--image-size", "256", "--val-fraction", "0.3", "--runner=DirectRunner")
    assert rc == 0, err
    assert "--image-size 256 differs from the image tokenizer's resolution 64" in out and "1,024 codes" in out
    base = ["train", "--set", 'data.sources=[{"root": "img256"}]', "--set", "data.seq_len=512",
            "--set", "model.max_seq_len=512", "--set", "run.out_dir=run", "--set", "run.steps=1"]
    errors = []
    for eval_every in ("1", "0"):
        rc, _, err = _cli(capsys, *base, "--set", f"eval.every={eval_every}")
        assert rc == 1 and err.count("\n") == 1, err
        errors.append(err)
    assert errors[0] == errors[1]
    assert "each image is 1,024 tokens" in errors[0] and "data.seq_len >= 1,029" in errors[0], errors[0]


def test_wrong_file_as_image_tokenizer_is_named_not_a_movqgan_checkpoint(tmp_path, capsys, sp_model):
    from trimodal.demo import DATA

    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(DATA / "images" / "img_00.png", arcname="a.png")
    for wrong in (sp_model, str(REPO / "tests" / "data" / "speech" / "speech_0.flac")):
        rc, _, err = _cli(capsys, "pipeline", "image-text", "--input", str(tmp_path / "x.tar"), "--text-tokenizer",
                          sp_model, "--image-tokenizer", wrong, "--out", str(tmp_path / "o"), "--runner=DirectRunner")
        assert rc == 1 and "not a MoVQGAN checkpoint" in err and "state dict" in err, err
        assert "weights_only=False" not in err and "pickles arbitrary" not in err
    assert not (tmp_path / "o").exists()
