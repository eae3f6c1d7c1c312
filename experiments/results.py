"""A run's numbers read back from its folder (the rows of ``results.csv``) and their per-point
aggregates over seeds.

Everything here comes from files a run leaves behind, so a report can be rebuilt at any time:
``log.jsonl`` (the start record's optimiser and reparameterisation values, the last eval
record's ELBOs), ``generate/metrics.json`` (generation metrics, when the spec scores samples),
``experiment.json`` (the grid point, written by the runner before the run
starts) and ``status.json`` (exit status and reason, written when the run ends).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable

from trimodal.experiments.scoring import scored
from trimodal.train.metrics import read_log

MODALITIES = ("text", "image", "audio")
TASK_MODALITY = {"text": "text", "image_text": "image", "audio_text": "audio"}
EXPERIMENT_FILE, STATUS_FILE = "experiment.json", "status.json"

HEAD = ["name", "status", "reason", "seed"]
GENERATION = ["fid", "clip_score", "wer", "fad"]  # from <run>/generate/metrics.json (experiments/scoring.py)
METRICS = ["loss", "val_elbo", "val_elbo_se", *(f"val_elbo_{m}" for m in MODALITIES),
           *(f"task_elbo_{t}" for t in TASK_MODALITY), *GENERATION]
RUN_FACTS = ["eval_step", "steps", "B", "seq_len", "D", "tokens", "N", "params_total", "logical_batch",
             "logical_steps", "kappa", "lr", "beta1", "beta2", "eps", "weight_decay", "seconds", "returncode"]


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def final_records(records: list[dict[str, Any]]) -> tuple[dict | None, dict | None, bool]:
    """(last start record, eval record at the final step, whether the run reached its final
    step with an eval or a checkpoint there) of one log."""
    starts = [r for r in records if r.get("event") == "start"]
    start = starts[-1] if starts else None
    if start is None:
        return None, None, False
    total = int(start["total_steps"])
    evals = [r for r in records if r.get("event") == "eval" and int(r.get("step") or 0) == total]
    ckpt = any(r.get("event") == "checkpoint" and int(r.get("step") or 0) == total for r in records)
    return start, (evals[-1] if evals else None), bool(evals) or ckpt


def is_finished(run_dir: str, config_hash: str) -> bool:
    """A run of this very config whose final eval (or final checkpoint) is in its log."""
    exp = read_json(os.path.join(run_dir, EXPERIMENT_FILE))
    if not exp or exp.get("config_hash") != config_hash:
        return False
    return final_records(read_log(os.path.join(run_dir, "log.jsonl")))[2]


def _key(name: str) -> str:
    return name.replace("/", "_")


def read_run(run_dir: str, source_tasks: dict[str, str] | None = None) -> dict[str, Any]:
    """One row of ``results.csv`` (plus ``_curve``: the eval history, for plots).

    ``source_tasks`` maps evaluation source names to tasks, for the ``task_elbo_<task>``
    columns: the ELBO of a task's own modality on its own sources (text on the text corpus,
    image codes on image-text, audio codes on audio-text), averaged over its sources."""
    exp = read_json(os.path.join(run_dir, EXPERIMENT_FILE)) or {}
    status = read_json(os.path.join(run_dir, STATUS_FILE)) or {}
    records = read_log(os.path.join(run_dir, "log.jsonl"))
    start, last_eval, done = final_records(records)
    row: dict[str, Any] = {"name": exp.get("name", os.path.basename(run_dir)), "seed": exp.get("seed"),
                           **exp.get("point", {})}
    if done and status.get("status") != "failed":
        row["status"], row["reason"] = "ok", ""
    else:
        row["status"] = status.get("status") if status.get("status") == "failed" else "pending"
        row["reason"] = status.get("reason", "")
    row["seconds"], row["returncode"] = status.get("seconds"), status.get("returncode")
    evals = [r for r in records if r.get("event") == "eval"]
    if start is not None:
        B, L = exp.get("batch_size"), exp.get("seq_len")
        rep, opt = start.get("reparam") or {}, start.get("optim") or {}
        steps = int(start["total_steps"])
        row.update(steps=steps, B=B, seq_len=L, N=start.get("params_non_embedding"), params_total=start.get("params"),
                   lr=opt.get("lr"), beta1=opt.get("beta1"), beta2=opt.get("beta2"), eps=opt.get("eps"),
                   weight_decay=opt.get("weight_decay"))
        if B and L:
            row["D"] = steps * B * L
        row["logical_batch"] = rep.get("logical_batch", B)
        row["kappa"] = rep.get("kappa", 1.0)
        row["logical_steps"] = rep.get("logical_steps", steps)
        step_recs = [r for r in records if "loss" in r and "event" not in r]
        if step_recs:
            row["tokens"] = step_recs[-1].get("tokens")
    ev = last_eval if last_eval is not None else (evals[-1] if evals and row["status"] != "ok" else None)
    if ev is not None:
        row["eval_step"] = ev.get("step")
        row["val_elbo"] = row["loss"] = ev.get("elbo")
        row["val_elbo_se"] = ev.get("elbo_se")
        for k, v in ev.items():
            if (k.startswith("elbo/") or (k.startswith("source/") and "/elbo" in k)) and isinstance(v, (int, float)):
                row[f"val_{_key(k)}"] = v
        by_task: dict[str, list[float]] = {}
        for src, task in (source_tasks or {}).items():
            v = ev.get(f"source/{src}/elbo/{TASK_MODALITY.get(task, '')}")
            if isinstance(v, (int, float)):
                by_task.setdefault(task, []).append(float(v))
        for task, vs in by_task.items():
            row[f"task_elbo_{task}"] = sum(vs) / len(vs)
    row.update(scored(run_dir))
    row["_curve"] = [(int(r["step"]), r) for r in evals if r.get("step") is not None]
    return row


def columns(rows: Iterable[dict[str, Any]], point_columns: Iterable[str]) -> list[str]:
    """Fixed columns first (name, status, the grid point, metrics, run facts), then the rest
    (per-source ELBOs) sorted."""
    rows = list(rows)
    fixed = HEAD + list(point_columns) + METRICS + RUN_FACTS
    extra = sorted({k for r in rows for k in r if k not in fixed and not k.startswith("_")})
    return fixed + extra


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def write_csv(rows: list[dict[str, Any]], path: str, point_columns: Iterable[str]) -> str:
    cols = columns(rows, point_columns)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    return path


def read_csv(path: str, point: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` back as typed rows (numbers as numbers, empty cells
    absent), with ``point`` filled in where a column is missing: a committed report's runs can
    then be aggregated and compared with newer ones (e.g. an older spec's rows, which lack a
    grid column added since, given its value)."""
    text = {"name", "status", "reason", "rule", "clip", "schedule", "task", "setting"}
    out = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v is None or v == "":
                    continue
                if k in text:
                    row[k] = v
                    continue
                try:
                    x = float(v)
                    row[k] = int(x) if x.is_integer() and k in ("seed", "batch_size", "steps", "B", "seq_len", "D",
                                                                  "N", "eval_step") else x
                except ValueError:
                    row[k] = v
            for k, v in (point or {}).items():
                row.setdefault(k, v)
            out.append(row)
    return out


# ---- aggregation (pure) ------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN sd for one value: a spread of one seed is
    unknown, not 0; NaN for none)."""
    vs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vs:
        return math.nan, math.nan
    m = sum(vs) / len(vs)
    if len(vs) == 1:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1))


def aggregate(rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Per grid point (the ``keys`` values, first-seen order) over its finished seeds: ``n``,
    ``seeds`` and ``(mean, sd)`` of every metric; also the first row's run facts."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        g: dict[str, Any] = dict(zip(keys, key))
        g["n"] = len(members)
        g["seeds"] = [m.get("seed") for m in members]
        for metric in metrics:
            g[metric] = mean_sd([m.get(metric) for m in members if m.get(metric) is not None])
        for fact in ("steps", "B", "logical_batch", "kappa", "lr", "beta1", "beta2", "N", "D"):
            g[fact] = members[0].get(fact)
        g["_members"] = members
        out.append(g)
    return out
