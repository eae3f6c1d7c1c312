"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded model + optimizer, plus state.

Layout of ``<run>/checkpoints/step-0000100/``:

- DCP files (``.metadata``, ``__<rank>_0.distcp``): model and optimizer, each rank writing its
  shards; DCP reshards on load, so a checkpoint resumes on another world size;
- ``rank-<r>.json``: that rank's loader stream states (the data position);
- ``state.json``: step, config, vocabulary layout, reparameterisation values, world size. It
  is written last, by rank 0, after every rank finished: **a checkpoint counts only when
  state.json exists**. The folder is first written as ``step-…​.partial`` and renamed once
  complete, so a crash mid-save never touches the latest good checkpoint.

Random numbers need no saved state: masking and time draws are seeded from (seed, step, rank).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from trimodal.train import distributed as D

STEP_RE = re.compile(r"^step-(\d{7})$")
STATE = "state.json"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (partial folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_RE.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = complete_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank_state: dict[str, Any],
    info: D.DistInfo,
    keep_last: int = 3,
) -> Path:
    """Save collectively (every rank calls this); returns the final folder."""
    final = step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    if info.is_main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    D.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    (partial / f"rank-{info.rank}.json").write_text(json.dumps(rank_state, sort_keys=True))
    D.barrier()
    if info.is_main:
        (partial / STATE).write_text(json.dumps({**state, "step": step, "world_size": info.world_size}, indent=1, sort_keys=True))
        _fsync_dir(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load model/optimizer in place (resharding as needed); returns state.json plus
    ``rank_states``: every saved rank's state (for resuming on another world size)."""
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE})")
    state = json.loads((path / STATE).read_text())
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        dcp.load(sd, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        sd = {"model": get_model_state_dict(model)}
        dcp.load(sd, checkpoint_id=str(path))
        set_model_state_dict(model, sd["model"])
    state["rank_states"] = [
        json.loads((path / f"rank-{r}.json").read_text()) for r in range(int(state["world_size"]))
    ]
    return state


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE})")
    return json.loads((path / STATE).read_text())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass
