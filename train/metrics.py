"""Where a run's numbers go: ``log.jsonl``, TensorBoard event files and (optionally) W&B.

``log.jsonl`` holds one JSON object per line: ``{"event": "start", …}`` records, step records
(``step``, ``loss``, ``loss/<modality>``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``padding``, …),
``{"event": "eval", …}`` records and checkpoint events. **A step never appears twice**: on resume
the log is cut back to the resumed step before anything is appended, so the records between the
last checkpoint and a crash are replaced by the re-run ones, not repeated.

TensorBoard files go to ``<run>/tensorboard`` for local runs (to a local folder named by
``log.tensorboard_dir`` when the run lives on object storage). W&B is used only when
``log.wandb`` is set, in offline mode unless ``log.wandb_mode=online``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from trimodal import storage
from trimodal.config import option


@dataclass
class LogConfig:
    tensorboard: bool = option(True, help="write TensorBoard event files")
    tensorboard_dir: str | None = option(None, help="TensorBoard folder (default <run>/tensorboard)")
    wandb: bool = option(False, help="also log to Weights & Biases")
    wandb_project: str = option("trimodal", help="W&B project")
    wandb_mode: str = option("offline", help="W&B mode: offline (default, sync later) or online")

    def __post_init__(self) -> None:
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"log.wandb_mode must be offline, online or disabled, got {self.wandb_mode!r}")


def read_log(url: str) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a missing file is an empty log)."""
    try:
        raw = storage.read_bytes(url).decode("utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
    return out


def cut_log(records: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """The records a run resumed at ``step`` keeps: everything about steps up to ``step``."""
    return [r for r in records if int(r.get("step", 0)) <= step]


class Metrics:
    """The rank-0 sink of a run's records (other ranks get a disabled one)."""

    def __init__(self, out_dir: str, cfg: LogConfig, enabled: bool, resume_step: int | None, run_id: str,
                 config: dict[str, Any] | None = None) -> None:
        self.enabled, self.cfg = enabled, cfg
        self.url = storage.join(out_dir, "log.jsonl")
        self._local = storage.is_local(out_dir)
        self._records: list[dict[str, Any]] = []
        self._tb = self._wandb = None
        if not enabled:
            return
        kept = cut_log(read_log(self.url), resume_step) if resume_step is not None else []
        self._records = kept
        if self._local:
            path = storage.local_path(self.url)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:  # rewrite what is kept, then append
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
            self._f = open(path, "a")
        else:
            self._flush_remote()
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = cfg.tensorboard_dir or (storage.local_path(storage.join(out_dir, "tensorboard")) if self._local
                                             else os.path.join("runs", "tensorboard", run_id))
            # purge_step drops events after the resumed step, as the JSONL log does
            self._tb = SummaryWriter(tb_dir, purge_step=(resume_step + 1) if resume_step else None)
        if cfg.wandb:
            import wandb

            self._wandb = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode, id=run_id, resume="allow",
                                     config=config or {}, dir=storage.local_path(out_dir) if self._local else None)

    def _flush_remote(self) -> None:
        storage.write_atomic(self.url, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self._records).encode())

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._local:
            self._f.write(json.dumps(record, sort_keys=True) + "\n")
            self._f.flush()
        else:
            self._records.append(record)
            self._flush_remote()  # small files: a rewrite per record keeps the object whole
        step = record.get("step")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "elapsed")}
        if step is None or not scalars:
            return
        prefix = "val/" if record.get("event") == "eval" else ("" if "event" not in record else None)
        if prefix is None:
            return
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{prefix}{k}" if prefix else (k if "/" in k else f"train/{k}"), v, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}{k}" if prefix else k: v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._local:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
