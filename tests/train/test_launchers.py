"""The launch scripts users run (infra/launch): the same command starts a run, then continues it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "launch" / "torchrun_single_node.sh"


def _launch(dataset: str, out: Path, steps: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(NPROC_PER_NODE="2", OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    sets = [f'data.sources=[{{"root": "{dataset}"}}]', f"run.out_dir={out}", f"run.steps={steps}",
            "run.ckpt_every=2", "run.log_every=1", "run.progress=false", "run.batch_size=4", "data.seq_len=64",
            "data.num_streams=2", "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64",
            "optim.warmup_steps=1", "log.tensorboard=false"]
    cmd = ["bash", str(SCRIPT), "tiny_cpu"] + [x for s in sets for x in ("--set", s)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_single_node_launcher_starts_then_continues_a_run(text_dataset, tmp_path):
    out = tmp_path / "run"
    first = _launch(text_dataset, out, steps=2, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _launch(text_dataset, out, steps=4, cwd=tmp_path)  # the same command, a longer schedule
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    starts = [r for r in records if r.get("event") == "start"]
    assert [r["step"] for r in starts] == [0, 2] and len({r["run_id"] for r in starts}) == 1
