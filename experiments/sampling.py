"""The sampling study (paper §7.3, Figs. 17–18) as an experiment kind: one trained checkpoint,
its samples scored with the generation-quality metrics (``trimodal eval --generate``) while one
sampling setting at a time moves away from the paper's per-task defaults.

Spec (``kind: sampling``)::

    grid:
      checkpoint: runs/my            # a run, checkpoint or export
      tasks: [image, speech]
      steps: [16, 64, 256]           # each list is swept alone, the other settings at their defaults
      cfg: [1, 3, 6]
      temperature: [0.8, 1.0, 1.2]
      top_p: [0.9, 1.0]
      num: 64                        # samples per point and seed
      metrics: {inception: …, fid_ref: …, clip: …, asr: …, audio_embed: …, fad_ref: …}
      data: [data/image_text]        # optional: the checkpoint's held-out ELBO, reported once
    seeds: [0, 1]                    # sample seeds: each point is generated once per seed

Each point writes ``OUT/<task>-<setting><value>-s<seed>/`` (samples, contact sheet,
metrics.json; a point whose metrics.json exists is not redone). The ELBO does not depend on the
sampler, so it is one number per checkpoint, in the report's header.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trimodal.config import option

from trimodal.experiments.scoring import SCORES, check_metrics, reference_once

SETTINGS = ("steps", "cfg", "temperature", "top_p")


@dataclass
class SamplingGrid:
    checkpoint: str = option("", help="the run, checkpoint or export sampled from")
    tasks: list[str] = option(default_factory=lambda: ["image"], help="image and/or speech")
    steps: list[int] = option(default_factory=list, help="sampling steps swept")
    cfg: list[float] = option(default_factory=list, help="CFG scales swept")
    temperature: list[float] = option(default_factory=list, help="temperatures swept")
    top_p: list[float] = option(default_factory=list, help="nucleus masses swept")
    num: int = option(16, help="samples per point and seed")
    seconds: float = option(2.0, help="speech: seconds per clip")
    prompts: str | None = option(None, help="prompt file (default: eval --generate's built-in prompts)")
    metrics: dict[str, Any] = option(default_factory=dict, help="metric weights: the eval --generate options")
    data: list[str] = option(default_factory=list, help="dataset roots for the checkpoint's held-out ELBO")
    device: str = option("auto", help="auto, cpu or cuda")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint: give the run, checkpoint or export to sample from")
        check_metrics(self.tasks, self.metrics)
        if not any(getattr(self, s) for s in SETTINGS):
            raise ValueError(f"give at least one of {', '.join(SETTINGS)} to sweep")


def points(grid: SamplingGrid, seeds: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, the point) for every task × swept value × seed, one setting at a time."""
    out = []
    for task in grid.tasks:
        for setting in SETTINGS:
            for value in getattr(grid, setting):
                for seed in seeds:
                    out.append((f"{task}-{setting}{value:g}-s{seed}",
                                {"task": task, "setting": setting, "value": value, "seed": seed}))
    return out


def _elbo(grid: SamplingGrid) -> dict[str, Any] | None:
    if not grid.data:
        return None
    from trimodal.train.eval_job import EvalJobConfig, run_eval

    return run_eval(EvalJobConfig(checkpoint=grid.checkpoint, data=list(grid.data), device=grid.device)).get("elbo")


def run_sampling(spec: Any) -> Iterator[str]:
    """Generate and score every point (skipping those already written), then the report."""
    from trimodal.experiments.spec import grid_of
    from trimodal.train.generate_eval import GenerateEvalConfig, run_generate_eval

    grid: SamplingGrid = grid_of(spec)
    out = os.path.abspath(spec.out)
    todo = points(grid, list(spec.seeds))
    yield f"experiment {spec.name} (sampling): {len(todo)} points from {grid.checkpoint}"
    metrics = reference_once(grid.metrics, out)
    rows = []
    for i, (name, p) in enumerate(todo, 1):
        folder = os.path.join(out, name)
        path = os.path.join(folder, "metrics.json")
        if os.path.exists(path):
            result = json.loads(open(path).read())
            yield f"[{i}/{len(todo)}] {name}: done before"
        else:
            cfg = GenerateEvalConfig(checkpoint=grid.checkpoint, out=folder, tasks=[p["task"]], num=grid.num,
                                     seed=p["seed"] * 100_003, seconds=grid.seconds, prompts=grid.prompts,
                                     device=grid.device, **{p["setting"]: p["value"]},
                                     **metrics)
            result = run_generate_eval(cfg)
            yield f"[{i}/{len(todo)}] {name}: ok"
        res = result["metrics"][p["task"]]
        rows.append({"name": name, **p, **{k: res.get(k) for k in SCORES[p["task"]]},
                     **{f"sampler_{k}": v for k, v in res["settings"].items() if k in ("steps", "cfg_scale", "temperature", "top_p")}})
    report = os.path.abspath(spec.report or spec.out)
    yield from write_report(spec, grid, rows, _elbo(grid), report)


def _mean_sd(vs: list[float]) -> tuple[float, float, int]:
    vs = [float(v) for v in vs if v is not None and math.isfinite(float(v))]
    if not vs:
        return math.nan, math.nan, 0
    m = sum(vs) / len(vs)
    sd = math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else math.nan
    return m, sd, len(vs)


def _cell(m: float, sd: float, n: int) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.4f}" if n < 2 else f"{m:.4f} ± {sd:.4f}"


def write_report(spec: Any, grid: SamplingGrid, rows: list[dict[str, Any]], elbo: dict[str, Any] | None,
                 folder: str) -> Iterator[str]:
    os.makedirs(folder, exist_ok=True)
    cols = ["name", "task", "setting", "value", "seed", "fid", "clip_score", "wer", "fad",
            "sampler_steps", "sampler_cfg_scale", "sampler_temperature", "sampler_top_p"]
    csv_path = os.path.join(folder, "results.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    yield f"wrote {csv_path}"
    md = [f"# {spec.name} (sampling)", "",
          f"Checkpoint `{grid.checkpoint}`; {grid.num} samples per point and seed, seeds {list(spec.seeds)}; "
          "one setting moves at a time, the others at the paper's per-task defaults. Cells: mean ± sample sd "
          "over seeds (the mean alone at n = 1).", ""]
    if elbo:
        md += [f"Held-out ELBO of the checkpoint (independent of the sampler): {elbo['elbo']:.4f} ± "
               f"{elbo.get('elbo_se', math.nan):.4f} nats/token (± standard error over the t draws).", ""]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["setting"], r["value"]), []).append(r)
    plots = []
    for task in grid.tasks:
        scores = SCORES[task]
        md += [f"## {task}", "", "| setting | value | n | " + " | ".join(scores) + " |",
               "|---|---|---|" + "---|" * len(scores)]
        for (t, setting, value), rs in groups.items():
            if t != task:
                continue
            cells = [_cell(*_mean_sd([r.get(s) for r in rs])) for s in scores]
            md.append(f"| {setting} | {value:g} | {len(rs)} | " + " | ".join(cells) + " |")
        md.append("")
        try:
            plots.append(_plot(task, groups, scores, os.path.join(folder, f"sampling_{task}.png")))
            md += [f"![sampling_{task}.png](sampling_{task}.png)", ""]
        except ImportError as e:
            md += [f"(plot skipped: {e})", ""]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    yield f"wrote {path}"
    for p in plots:
        yield f"wrote {p}"


def _plot(task: str, groups: dict[tuple, list[dict[str, Any]]], scores: tuple[str, ...], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(k[0] == task and k[1] == s for k in groups)]
    fig, axes = plt.subplots(len(scores), max(1, len(settings)), figsize=(3.2 * max(1, len(settings)), 2.8 * len(scores)),
                             squeeze=False)
    for j, setting in enumerate(settings):
        keys = sorted(k for k in groups if k[0] == task and k[1] == setting)
        for i, score in enumerate(scores):
            ax = axes[i][j]
            stats = [_mean_sd([r.get(score) for r in groups[k]]) for k in keys]
            xs = [k[2] for k in keys]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] if math.isfinite(s[1]) else 0.0 for s in stats],
                        marker="o", capsize=3)
            ns = sorted({s[2] for s in stats})
            ax.set_title(f"{score} vs {setting} (sd over {'/'.join(map(str, ns))} seed(s))", fontsize=8)
            ax.set_xlabel(setting)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
