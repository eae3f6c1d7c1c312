"""Runs that never lose work: the run-folder guard, verified checkpoints with fallback, bad run
values refused, a log that never repeats a step, checkpoints on a loopback S3 server, and the
exported model loaded without FSDP or DCP in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trimodal.cli import main
from trimodal.config import ConfigError
from trimodal.shards.loader import SourceConfig
from trimodal.train import checkpoint as ckpt
from trimodal.train.trainer import TrainConfig, train


def _cfg(data: str, out, steps: int = 4, **extra) -> TrainConfig:
    sets = [f"run.out_dir={out}", f"run.steps={steps}", "run.batch_size=4", "run.device=cpu", "run.progress=false",
            "run.log_every=1", "run.ckpt_every=2", "data.seq_len=64", "data.num_streams=2", "model.dim=32",
            "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64", "optim.warmup_steps=1",
            "log.tensorboard=false"] + [f"{k}={v}" for k, v in extra.items()]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=data)]
    return cfg


def _steps(out: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]


def test_fresh_run_into_a_used_folder_is_refused(text_dataset, tmp_path):
    out = tmp_path / "run"
    first = train(_cfg(text_dataset, out))
    before = (out / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train(_cfg(text_dataset, out, steps=2, **{"run.seed": 1}))
    assert (out / "log.jsonl").read_text() == before  # nothing was touched
    # --overwrite starts afresh: a new run id, only the new run's checkpoints
    again = train(_cfg(text_dataset, out, steps=2, **{"run.overwrite": "true"}))
    assert again["run_id"] != first["run_id"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    assert ckpt.read_state(out / "checkpoints" / "step-0000002")["run_id"] == again["run_id"]
    assert _steps(out) == [1, 2]


def test_a_run_refused_while_it_is_built_leaves_no_trace(text_dataset, tmp_path):
    out = tmp_path / "run"
    bad = _cfg(text_dataset, out, **{"data.seq_len": 128})  # longer than model.max_seq_len
    with pytest.raises(ConfigError, match="exceeds model.max_seq_len"):
        train(bad)
    assert not out.exists() or not any(out.iterdir())
    train(_cfg(text_dataset, out))  # no --overwrite needed
    assert _steps(out) == [1, 2, 3, 4]


def test_resume_without_a_usable_checkpoint_is_refused(text_dataset, tmp_path):
    with pytest.raises(ConfigError, match="holds no run"):
        train(_cfg(text_dataset, tmp_path / "never", **{"run.resume": "true"}))
    out = tmp_path / "nockpt"
    train(_cfg(text_dataset, out, steps=1, **{"run.ckpt_every": 0, "run.ckpt_final": "false"}))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(_cfg(text_dataset, out, **{"run.resume": "true"}))
    assert _steps(out) == [1]  # the log was not truncated


def test_auto_resume_starts_continues_and_restarts_before_the_first_checkpoint(text_dataset, tmp_path):
    """What launchers pass on every start: a fresh folder starts the run, a folder with a
    checkpointed run continues it (the same losses as one uninterrupted run), and a run stopped
    before its first checkpoint starts again at step 0 with a clean log; damage is still an error."""
    full = train(_cfg(text_dataset, tmp_path / "full"))
    out = tmp_path / "auto"
    first = train(_cfg(text_dataset, out, **{"run.auto_resume": "true", "run.stop_at_step": 2}))
    assert first["start_step"] == 0
    second = train(_cfg(text_dataset, out, **{"run.auto_resume": "true"}))
    assert second["start_step"] == 2 and second["run_id"] == first["run_id"]
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], abs=0, rel=0)
    assert _steps(out) == [1, 2, 3, 4]

    early = tmp_path / "early"
    train(_cfg(text_dataset, early, steps=1, **{"run.auto_resume": "true", "run.ckpt_every": 0,
                                                  "run.ckpt_final": "false"}))
    again = train(_cfg(text_dataset, early, **{"run.auto_resume": "true"}))
    assert again["start_step"] == 0 and _steps(early) == [1, 2, 3, 4]
    assert again["losses"] == pytest.approx(full["losses"], abs=0, rel=0)

    _damage(out / "checkpoints" / "step-0000004" / "__0_0.distcp", "truncate")
    _damage(out / "checkpoints" / "step-0000002" / "__0_0.distcp", "truncate")
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        train(_cfg(text_dataset, out, steps=6, **{"run.auto_resume": "true"}))


@pytest.mark.parametrize("key,value", [("run.steps", -5), ("run.ckpt_every", -1), ("run.batch_size", 0),
                                       ("run.keep_last", -2), ("run.log_every", 0)])
def test_bad_run_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        TrainConfig.load(None, [f"{key}={value}"])


@pytest.mark.parametrize("url", ["http://example.com/runs/a", "hdfs://namenode/runs/a", "zip://runs/a"])
def test_a_run_folder_that_cannot_hold_checkpoints_is_refused(url, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear here (no local "http:/…" folder)
    with pytest.raises(ConfigError, match=r"run.out_dir .*cannot hold written files.*s3://"):
        TrainConfig.load(None, [f"run.out_dir={url}"])
    rc = main(["train", "--set", f"run.out_dir={url}"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot hold written files" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was created under the working directory


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "delete":
        path.unlink()
    else:  # flip one byte in the middle
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("target,how", [("__0_0.distcp", "truncate"), (".metadata", "delete"),
                                        ("state.json", "truncate"), ("__0_0.distcp", "flip"),
                                        ("rank-0.json", "flip")])
def test_a_damaged_checkpoint_is_named_and_resume_falls_back(text_dataset, tmp_path, capsys, target, how):
    out = tmp_path / "run"
    full = train(_cfg(text_dataset, tmp_path / "full", steps=6, **{"run.ckpt_every": 2}))
    train(_cfg(text_dataset, out, steps=6, **{"run.ckpt_every": 2, "run.stop_at_step": 4}))
    latest = out / "checkpoints" / "step-0000004"
    _damage(latest / target, how)
    with pytest.raises(ckpt.CheckpointError, match=target.replace(".", r"\.")):
        ckpt.load_checkpoint(latest, *_model_and_optimizer(text_dataset, tmp_path))
    capsys.readouterr()
    resumed = train(_cfg(text_dataset, out, steps=6, **{"run.ckpt_every": 2, "run.resume": "true"}))
    said = capsys.readouterr().out
    assert f"checkpoint {latest} is damaged" in said and target in said
    assert resumed["start_step"] == 2  # the previous complete checkpoint
    assert resumed["losses"] == pytest.approx(full["losses"][2:], abs=0, rel=0)
    assert _steps(out) == list(range(1, 7))  # no step twice: the log was cut back to step 2


def _model_and_optimizer(data: str, tmp_path):
    from trimodal.shards.loader import load_manifests, tokenizers_of
    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train.model import Transformer

    cfg = _cfg(data, tmp_path / "unused")
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg.data)), cfg.vocab)
    model = Transformer(cfg.model, layout)
    import torch

    return model, torch.optim.AdamW(model.parameters())


def test_damage_to_the_only_checkpoint_is_a_one_line_error(text_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(text_dataset, out, steps=2, **{"run.ckpt_every": 2}))
    _damage(out / "checkpoints" / "step-0000002" / "__0_0.distcp", "truncate")
    args = ["train", "--set", f'data.sources=[{{"root": "{text_dataset}"}}]']
    for s in [f"run.out_dir={out}", "run.steps=4", "run.batch_size=4", "run.device=cpu", "run.progress=false",
              "data.seq_len=64", "data.num_streams=2", "model.dim=32", "model.n_layers=1", "model.n_heads=2",
              "model.max_seq_len=64", "log.tensorboard=false"]:
        args += ["--set", s]
    assert main(args + ["--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable checkpoint" in err and "__0_0.distcp" in err


def test_log_never_repeats_a_step_after_sigkill_and_resume(text_dataset, tmp_path):
    """Killed between checkpoints (steps past the last checkpoint are in the log), then resumed:
    every step appears once, with the resumed run's numbers."""
    out = tmp_path / "killed"
    sets = [f"run.out_dir={out}", "run.steps=400", "run.batch_size=4", "run.device=cpu", "run.progress=false",
            "run.log_every=1", "run.ckpt_every=5", "data.seq_len=64", "data.num_streams=2", "model.dim=32",
            "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64", "log.tensorboard=false",
            f'data.sources=[{{"root": "{text_dataset}"}}]']
    cmd = [sys.executable, "-m", "trimodal.cli", "train"] + [x for s in sets for x in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            steps = _steps(out) if (out / "log.jsonl").exists() else []
            if steps and steps[-1] >= 8 and steps[-1] % 5:  # past the step-5 checkpoint, not on one
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    logged_before = _steps(out)
    assert proc.returncode == -signal.SIGKILL and logged_before[-1] > max(ckpt.step_of(p) for p in
                                                                          ckpt.complete_checkpoints(out / "checkpoints"))
    resume_at = max(ckpt.step_of(p) for p in ckpt.complete_checkpoints(out / "checkpoints"))
    res = train(TrainConfig.load(None, [s.replace("run.steps=400", f"run.steps={logged_before[-1] + 2}")
                                        for s in sets] + ["run.resume=true"]))
    assert res["start_step"] == resume_at
    steps = _steps(out)
    assert steps == list(range(1, logged_before[-1] + 3)), steps


def test_checkpoints_on_s3_save_and_resume(s3, text_dataset, tmp_path):
    out = "s3://trimodal-test/runs/ckpt"
    full = train(_cfg(text_dataset, tmp_path / "local", steps=4))
    first = train(_cfg(text_dataset, out, steps=4, **{"run.stop_at_step": 2}))
    fs = s3["fs"]
    assert fs.exists("trimodal-test/runs/ckpt/checkpoints/step-0000002/files.json")
    assert not Path("s3:").exists()  # no local folder named after the URL
    second = train(_cfg(text_dataset, out, steps=4, **{"run.resume": "true"}))
    assert second["start_step"] == 2
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], abs=0, rel=0)
    log = fs.cat_file("trimodal-test/runs/ckpt/log.jsonl").decode().splitlines()
    assert [json.loads(l)["step"] for l in log if '"loss"' in l] == [1, 2, 3, 4]


def test_export_loads_in_a_fresh_process_without_fsdp(text_dataset, sp_model, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(text_dataset, out, steps=2))
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(out), "--out", str(export)]) == 0
    names = sorted(p.name for p in export.iterdir())
    assert names == ["config.json", "files.json", "model.safetensors", "tokenizers"]
    assert (export / "tokenizers" / "text" / Path(sp_model).name).is_file()
    assert main(["export", "--checkpoint", str(out), "--out", str(export)]) == 1  # not into a used folder
    capsys.readouterr()
    script = ("import sys, trimodal\n"
              "m = trimodal.load(sys.argv[1], device='cpu')\n"
              "assert 'torch.distributed.checkpoint' not in sys.modules, 'DCP was imported'\n"
              "print(m.describe()); print(repr(m.generate_text('the model', length=6, steps=3)))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(export)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"loaded {export} (step 2" in proc.stdout and proc.stdout.strip().splitlines()[-1].startswith("'the model")
    # the sample and eval commands take the folder too, in a fresh process, and say what they loaded
    txt = tmp_path / "s.txt"
    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "sample", "--checkpoint", str(export), "--task", "text",
                           "--prompt", "the", "--steps", "2", "--length", "4", "--out", str(txt), "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"loaded {export}" in proc.stdout and txt.read_text().startswith("the")
    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "eval", "--checkpoint", str(export), "--data", text_dataset,
                           "--split", "train", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"loaded {export}" in proc.stdout and "nats" in proc.stdout


def _train_args(data: str, out, steps: int = 4, *extra: str) -> list[str]:
    args = ["train", "--set", f'data.sources=[{{"root": "{data}"}}]']
    for s in [f"run.out_dir={out}", f"run.steps={steps}", "run.batch_size=4", "run.device=cpu", "run.progress=false",
              "run.ckpt_every=2", "run.log_every=1", "data.seq_len=64", "data.num_streams=2", "model.dim=32",
              "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64", "optim.warmup_steps=1", "log.tensorboard=false", *extra]:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("files_json", ["{}", "[]", '{"files": 3}', '{"files": {}, "step": 4}',
                                        '{"files": {"state.json": {"bytes": "x", "sha256": 1}}}'])
def test_files_json_of_the_wrong_shape_falls_back_on_resume(text_dataset, tmp_path, capsys, files_json):
    """Valid JSON of the wrong shape is damage like a truncation: named in one line, and the
    previous complete checkpoint resumes; an empty file list never verifies vacuously."""
    out = tmp_path / "run"
    assert main(_train_args(text_dataset, out, 4, "run.stop_at_step=4")) == 0
    latest = out / "checkpoints" / "step-0000004"
    (latest / "files.json").write_text(files_json)
    with pytest.raises(ckpt.CheckpointError, match="files.json: damaged"):
        ckpt.verify(latest)
    capsys.readouterr()
    assert main(_train_args(text_dataset, out, 4) + ["--resume"]) == 0
    said = [l for l in capsys.readouterr().out.splitlines() if "is damaged" in l]
    assert len(said) == 1 and f"checkpoint {latest} is damaged" in said[0] and "files.json" in said[0]
    assert _steps(out) == [1, 2, 3, 4]  # resumed at step 2, nothing twice
    assert ckpt.read_state(latest)["step"] == 4  # the damaged folder was replaced by a good one


def test_a_damaged_export_is_named_in_one_line_unless_verification_is_off(text_dataset, sp_model, tmp_path, capsys):
    """An export lists its files with sizes and sha256s (files.json, written last); a flipped byte
    in the weights or a tokenizer file is named instead of sampled from; --no-verify-model loads
    anyway, and a config.json that is not JSON is then named too."""
    out, export = tmp_path / "run", tmp_path / "export"
    train(_cfg(text_dataset, out, steps=2))
    assert main(["export", "--checkpoint", str(out), "--out", str(export)]) == 0
    listed = json.loads((export / "files.json").read_text())["files"]
    assert {"model.safetensors", "config.json", f"tokenizers/text/{Path(sp_model).name}"} <= set(listed)
    sample = ["sample", "--checkpoint", str(export), "--task", "text", "--prompt", "the", "--steps", "1", "--length", "2",
              "--out", str(tmp_path / "s.txt"), "--device", "cpu"]
    assert main(sample) == 0
    good = (export / "model.safetensors").read_bytes()
    _damage(export / "model.safetensors", "flip")
    capsys.readouterr()
    assert main(sample) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors: sha256" in err and "damaged" in err
    assert main(sample + ["--no-verify-model"]) == 0  # the opt-out: a flip inside a weight still loads
    (export / "model.safetensors").write_bytes(good)
    _damage(export / "tokenizers" / "text" / Path(sp_model).name, "flip")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(export), "--data", text_dataset, "--split", "train", "--device", "cpu",
                 "--rows", "2", "--samples", "1"]) == 1
    assert Path(sp_model).name in capsys.readouterr().err
    (export / "config.json").write_text('{"format": "trimodal-export", "model": ')
    assert main(sample + ["--no-verify-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{export / 'config.json'}: not valid JSON" in err
    (export / "files.json").write_text("[]")
    assert main(sample) == 1
    assert "files.json: damaged (a JSON list" in capsys.readouterr().err


def test_a_text_code_out_of_range_names_the_shard_and_member(text_dataset, tmp_path, capsys):
    """A high byte flipped in a token (with the shard checks off, so that the ids reach the
    loader) is damage named like any other: the shard and the member, in one line, not a bare
    'text code out of range'."""
    import io
    import shutil
    import tarfile

    import numpy as np
    import zstandard

    data = tmp_path / "data"
    shutil.copytree(text_dataset, data)
    shards = sorted(data.rglob("*.tar*"))
    for shard in shards:  # every first token of every document: whichever the loader reads first
        zst = shard.name.endswith(".zst")
        stored = shard.read_bytes()
        raw = bytearray(zstandard.ZstdDecompressor().decompress(stored) if zst else stored)
        with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".text.npy"):
                    f = io.BytesIO(bytes(raw[m.offset_data:m.offset_data + m.size]))
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    assert dtype.itemsize >= 2 and shape[0] > 0
                    raw[m.offset_data + f.tell() + dtype.itemsize - 1] = 0xFF  # little-endian: the high byte
        shard.write_bytes(zstandard.ZstdCompressor(level=3).compress(bytes(raw)) if zst else bytes(raw))
    capsys.readouterr()
    assert main(_train_args(str(data), tmp_path / "run", 2) + ["--set", "data.verify=none"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text code out of range" in err, err
    assert any(f"{s}: " in err for s in shards) and ".text.npy: " in err, err


_FSIZE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from trimodal.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_loses_nothing(text_dataset, tmp_path, capsys):
    """A save that runs out of room (here a real file-size limit, RLIMIT_FSIZE: the kernel refuses
    the write with EFBIG as a full disk does with ENOSPC) is one line naming the folder and the
    cause; the previous checkpoint stays complete and the run resumes from it."""
    out = tmp_path / "run"
    assert main(_train_args(text_dataset, out, 4, "run.stop_at_step=2")) == 0
    prev = out / "checkpoints" / "step-0000002"
    biggest = max(f.stat().st_size for f in prev.iterdir())
    logs = max((out / n).stat().st_size for n in ("log.jsonl", "config.json"))
    limit = (biggest + 4 * logs) // 2  # the weights do not fit; the log does
    assert 4 * logs < limit < biggest
    proc = subprocess.run([sys.executable, "-c", _FSIZE_LIMITED, str(limit), *_train_args(text_dataset, out, 4),
                           "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # torch's own warnings aside
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"could not save checkpoint {out / 'checkpoints' / 'step-0000004.partial'}: File too large" in err, err
    assert f"the previous checkpoint {prev} is intact" in err and "resume with --resume" in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]  # no .partial left
    ckpt.verify(prev)
    capsys.readouterr()
    assert main(_train_args(text_dataset, out, 4) + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out and ckpt.read_state(out / "checkpoints" / "step-0000004")["step"] == 4


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MiB filesystem (tmpfs), or a skip where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "the RLIMIT_FSIZE test covers the same path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_no_space_left_during_a_checkpoint_save_is_one_line_and_loses_nothing(text_dataset, small_disk, capsys):
    """ENOSPC itself, on a real small filesystem filled up: one line naming the folder and "No
    space left on device", the previous checkpoint intact, and the run resumes once space is freed."""
    out = small_disk / "run"
    assert main(_train_args(text_dataset, out, 4, "run.stop_at_step=2")) == 0
    prev = out / "checkpoints" / "step-0000002"
    need = sum(f.stat().st_size for f in prev.iterdir())
    st = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(st.f_bavail * st.f_frsize - need // 2))  # room for half a checkpoint
    capsys.readouterr()
    assert main(_train_args(text_dataset, out, 4) + ["--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"could not save checkpoint {out / 'checkpoints' / 'step-0000004.partial'}: No space left on device" in err
    assert f"the previous checkpoint {prev} is intact" in err and f"free space under {out / 'checkpoints'}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    ckpt.verify(prev)
    filler.unlink()
    assert main(_train_args(text_dataset, out, 4) + ["--resume"]) == 0
    assert ckpt.read_state(out / "checkpoints" / "step-0000004")["step"] == 4
