"""Distributed training for real: 2 processes under ``torchrun`` (gloo on CPU, FSDP2), launched
the way users launch it (``python -m torch.distributed.run -m trimodal.cli train``) from a folder
outside the repository (from the repo root ``python -m`` would see ``./tokenizers`` first).

What is proved here:

- a 2-rank run stopped at a checkpoint and resumed logs exactly the losses (and trains on exactly
  the rows, rank by rank and step by step) of an uninterrupted 2-rank run;
- a 2-rank checkpoint resumes on 1 rank and a 1-rank checkpoint on 2 ranks, and the rows trained
  on are, per logical loader stream, a contiguous prefix of that stream (no row repeated, none
  skipped). The reference streams come from ``TrimodalDataset`` itself, one stream at a time;
  the rows trained on come from the trainer's own ``run.log_rows`` debug log (row hashes);
- a rank killed in the middle of a checkpoint save leaves the previous checkpoint as the latest
  complete one, ``--resume`` picks it, and the resumed run matches the uninterrupted run;
- bad configs stop with an error that names the problem.

The settings put the loader's round-robin position mid-cycle at the step-3 checkpoint (each rank
owns 4 of the 8 streams and takes 2 rows per step), so an exact resume has to restore it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trimodal.shards.loader import LoaderConfig, TrimodalDataset
from trimodal.train import checkpoint as ckpt
from trimodal.shards.loader import load_manifests, stream_states_from_loader_state, tokenizers_of
from trimodal.tokenizers.vocab import VocabLayout
from trimodal.train.trainer import TrainConfig, train

STEPS, BATCH, STREAMS, CUT = 8, 4, 8, 3


def _sets(data: str, out: Path, *extra: str) -> list[str]:
    return [
        f'data.sources=[{{"root": "{data}"}}]', f"run.out_dir={out}", f"run.steps={STEPS}", f"run.batch_size={BATCH}",
        "run.device=cpu", "run.progress=false", "run.log_every=1", f"run.ckpt_every={CUT}", "run.log_rows=true",
        "data.seq_len=64", f"data.num_streams={STREAMS}", "vocab.image_codes=64", "vocab.audio_codes=64",
        "vocab.audio_levels=1", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
        "optim.lr=3e-3", "optim.warmup_steps=2", "optim.weight_decay=0.0", *extra,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return env


def _torchrun(sets: list[str], cwd: Path, *args: str, script: Path | None = None, check: bool = True,
              nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    target = [str(script)] if script else ["-m", "trimodal.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, "train"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd + list(args), cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _train_here(sets: list[str], monkeypatch) -> dict:
    """One rank, in this process (no process group)."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    return train(TrainConfig.load(None, sets))


def _losses(out: Path) -> list[float]:
    """Loss per step from log.jsonl; a step logged twice (a crashed attempt, then the resumed
    run) counts with its last record."""
    by_step = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            by_step[r["step"]] = r["loss"]
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return [by_step[s] for s in sorted(by_step)]


def _rows(out: Path, upto: dict[int, int] | None = None) -> dict[tuple[int, int], list[str]]:
    """``(rank, step) → row hashes`` from every ``rows/rank-<r>.from-<start>.jsonl``; a segment
    started at ``start`` is kept up to ``upto[start]`` (its checkpoint), when given."""
    rows: dict[tuple[int, int], list[str]] = {}
    for f in sorted((out / "rows").glob("rank-*.from-*.jsonl")):
        rank = int(f.name.split(".")[0].split("-")[1])
        start = int(f.name.split(".")[1].split("-")[1])
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if upto is not None and r["step"] > upto.get(start, STEPS):
                continue
            assert (rank, r["step"]) not in rows, f"rank {rank} logged step {r['step']} twice"
            rows[(rank, r["step"])] = r["rows"]
    return rows


@pytest.fixture(scope="module")
def reference_streams(text_dataset):
    """Each logical stream's first rows, read alone (a dataset that owns only that stream)."""
    cfg = TrainConfig.load(None, _sets(text_dataset, Path("unused")))
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg.data)), cfg.vocab)
    lc = LoaderConfig(sources=cfg.data.sources, seq_len=cfg.data.seq_len, seed=cfg.run.seed,
                      num_streams=cfg.data.num_streams)
    need = STEPS * BATCH  # more than any stream can supply in these runs
    streams = []
    for s in range(STREAMS):
        it = iter(TrimodalDataset(lc, layout, rank=s, world_size=STREAMS))
        streams.append([hashlib.blake2b(next(it)["tokens"].numpy().tobytes(), digest_size=8).hexdigest()
                        for _ in range(need)])
    return streams


def _assert_stream_prefixes(consumed: list[str], streams: list[list[str]]) -> None:
    """Every row consumed is one of some stream's rows, no row twice, and per stream the rows
    consumed are exactly its first n (no gap)."""
    index = {h: (s, i) for s, rows in enumerate(streams) for i, h in enumerate(rows)}
    assert len(index) == sum(map(len, streams)), "reference rows are not distinct: the check would be blind"
    assert len(set(consumed)) == len(consumed), "a row was trained on twice"
    unknown = [h for h in consumed if h not in index]
    assert not unknown, f"{len(unknown)} rows are in no stream's first {len(streams[0])} rows"
    per: dict[int, list[int]] = {}
    for h in consumed:
        s, i = index[h]
        per.setdefault(s, []).append(i)
    for s, idx in per.items():
        assert sorted(idx) == list(range(len(idx))), f"stream {s}: rows {sorted(idx)} are not a prefix (a gap)"


@pytest.fixture(scope="module")
def runs(text_dataset, tmp_path_factory):
    """An uninterrupted 2-rank run, and a 2-rank run stopped at step CUT and resumed on 2 ranks
    (its step-CUT state is copied first to ``two_to_one`` for the 1-rank resume)."""
    base = tmp_path_factory.mktemp("dist")
    full, split, two_to_one = base / "full", base / "split", base / "two_to_one"
    _torchrun(_sets(text_dataset, full), base)
    _torchrun(_sets(text_dataset, split, f"run.stop_at_step={CUT}"), base)
    shutil.copytree(split, two_to_one)
    resumed = _torchrun(_sets(text_dataset, split), base, "--resume")
    return {"base": base, "full": full, "split": split, "two_to_one": two_to_one, "resumed_stdout": resumed.stdout}


def test_two_rank_resume_matches_uninterrupted_run(runs):
    assert f"resumed from {runs['split'] / 'checkpoints' / f'step-{CUT:07d}'} at step {CUT} (saved by 2 ranks; " \
        "data position: exact)" in runs["resumed_stdout"]
    assert _losses(runs["split"]) == _losses(runs["full"])  # exact, not approximate
    # ... and each rank trained on the same rows, in the same order, at every step
    full_rows = _rows(runs["full"])
    assert sorted(full_rows) == [(r, s) for r in (0, 1) for s in range(1, STEPS + 1)]
    assert _rows(runs["split"]) == full_rows
    # the checkpoint: written by 2 ranks, each with its own streams
    state = ckpt.read_state(runs["split"] / "checkpoints" / f"step-{CUT:07d}")
    assert state["world_size"] == 2 and state["step"] == CUT
    for r in (0, 1):
        rs = json.loads((runs["split"] / "checkpoints" / f"step-{CUT:07d}" / f"rank-{r}.json").read_text())
        streams = stream_states_from_loader_state(rs)
        assert sorted(streams) == list(range(r, STREAMS, 2))
        assert sum(st["rows"] for st in streams.values()) == CUT * BATCH // 2


def test_two_rank_checkpoint_resumes_on_one_rank(runs, text_dataset, reference_streams, monkeypatch):
    out = runs["two_to_one"]
    res = _train_here(_sets(text_dataset, out, "run.resume=true"), monkeypatch)
    assert res["start_step"] == CUT and len(res["losses"]) == STEPS - CUT
    rows = _rows(out, upto={0: CUT})
    assert sorted(rows) == sorted([(r, s) for r in (0, 1) for s in range(1, CUT + 1)] +
                                  [(0, s) for s in range(CUT + 1, STEPS + 1)])
    consumed = [h for key in sorted(rows) for h in rows[key]]
    assert len(consumed) == STEPS * BATCH
    _assert_stream_prefixes(consumed, reference_streams)
    assert ckpt.read_state(out / "checkpoints" / f"step-{STEPS:07d}")["world_size"] == 1


def test_one_rank_checkpoint_resumes_on_two_ranks(runs, text_dataset, reference_streams, monkeypatch):
    out = runs["base"] / "one_to_two"
    first = _train_here(_sets(text_dataset, out, f"run.stop_at_step={CUT}"), monkeypatch)
    assert len(first["losses"]) == CUT
    proc = _torchrun(_sets(text_dataset, out), runs["base"], "--resume")
    assert f"at step {CUT} (saved by 1 rank; data position: streams)" in proc.stdout
    rows = _rows(out, upto={0: CUT})
    assert sorted(rows) == sorted([(0, s) for s in range(1, CUT + 1)] +
                                  [(r, s) for r in (0, 1) for s in range(CUT + 1, STEPS + 1)])
    consumed = [h for key in sorted(rows) for h in rows[key]]
    assert len(consumed) == STEPS * BATCH
    _assert_stream_prefixes(consumed, reference_streams)
    assert len(_losses(out)) == STEPS


CRASH = textwrap.dedent('''
    """trimodal train, except that rank 1 dies (os._exit) right after its DCP write of the
    checkpoint named by $CRASH_IN: the model/optimizer files are on disk, files.json is not."""
    import os, sys
    import trimodal.train.checkpoint as ckpt

    real_save = ckpt.dcp.save

    def save(state_dict, *args, storage_writer=None, **kw):
        out = real_save(state_dict, *args, storage_writer=storage_writer, **kw)
        if os.environ["RANK"] == "1" and str(storage_writer.path).endswith(os.environ["CRASH_IN"] + ".partial"):
            os._exit(17)
        return out

    ckpt.dcp.save = save
    from trimodal.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_rank_killed_mid_save_leaves_previous_checkpoint(runs, text_dataset):
    base = runs["base"]
    out = base / "crash"
    script = base / "crash_train.py"
    script.write_text(CRASH)
    crashed = _torchrun(_sets(text_dataset, out), base, script=script, check=False,
                        env={"CRASH_IN": f"step-{2 * CUT:07d}"})
    assert crashed.returncode != 0, crashed.stdout
    root = out / "checkpoints"
    partial = root / f"step-{2 * CUT:07d}.partial"
    assert partial.is_dir() and list(partial.glob("*.distcp")) and not (partial / ckpt.FILES).exists()
    assert not (root / f"step-{2 * CUT:07d}").exists()
    assert ckpt.complete_checkpoints(root)[-1] == str(root / f"step-{CUT:07d}")
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.read_state(partial)

    resumed = _torchrun(_sets(text_dataset, out), base, "--resume")
    assert f"resumed from {root / f'step-{CUT:07d}'} at step {CUT}" in resumed.stdout
    assert _losses(out) == _losses(runs["full"])
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:07d}" for s in (CUT, 2 * CUT, STEPS)]  # .partial replaced
    assert ckpt.read_state(root / f"step-{2 * CUT:07d}")["world_size"] == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        ("run.batch_size=3", "run.batch_size (3) is not divisible by the world size (2)"),
    ],
)
def test_bad_config_for_two_ranks_names_the_problem(text_dataset, tmp_path, extra, message):
    proc = _torchrun(_sets(text_dataset, tmp_path / "bad", extra), tmp_path, check=False)
    assert proc.returncode != 0
    assert f"error: {message}" in proc.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        ("run.bogus=1", "unknown config key run.bogus"),
        ("reparam.gamma=-0.1", "reparam.gamma must be in [0, 1], got -0.1"),
        ("reparam.weight_decay_rule=kappa", "reparam.weight_decay_rule must be one of"),
    ],
)
def test_bad_config_names_the_problem(text_dataset, tmp_path, capsys, extra, message):
    from trimodal.cli import main

    args = ["train"]
    for s in _sets(text_dataset, tmp_path / "bad", extra):
        args += ["--set", s]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def _all_losses(out: Path) -> list[float]:
    by_step = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            by_step[r["step"]] = r["loss"]
    return [by_step[s] for s in sorted(by_step)]


def test_loss_sequence_does_not_depend_on_the_world_size(runs, text_dataset, monkeypatch):
    """The same global batches, t and masks on 1 rank as on 2 (per-global-row randomness, the
    world-invariant stream order): the logged losses agree to float tolerance."""
    one = runs["base"] / "one_rank_full"
    _train_here(_sets(text_dataset, one), monkeypatch)
    assert _all_losses(one) == pytest.approx(_all_losses(runs["full"]), rel=1e-4)


def test_two_to_one_resume_continues_the_same_loss_sequence(runs, text_dataset, monkeypatch):
    out = runs["base"] / "two_to_one_losses"
    shutil.copytree(runs["two_to_one"], out)
    for f in (out / "rows").glob("*"):
        f.unlink()
    _train_here(_sets(text_dataset, out, "run.resume=true"), monkeypatch)
    assert _all_losses(out) == pytest.approx(_all_losses(runs["full"]), rel=1e-4)
