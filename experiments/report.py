"""An experiment's write-up: ``results.csv`` (one row per run), ``report.md`` (a table per grid
point with mean ± sd over seeds, and what the plots show) and the kind's PNG plots.

The markdown is rebuilt from the run folders every time (``experiment run --collect-only``), so
it always matches the CSV next to it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from trimodal.experiments import analysis, plots
from trimodal.experiments import results as R
from trimodal.experiments.spec import ExperimentSpec, grid_of

INTRO = {
    "batch-size": "Physical batch B at a fixed token horizon D, with the SDE rule (B̃ = B_base·(D/D_base)^γ, "
                  "κ = B/B̃, lr·√κ, β^κ, ε/√κ, S = D/(B·L)) and without it (the base AdamW values held fixed, "
                  "S = D/(B·L)), at one or several "
                  "token horizons D and, where the grid sweeps it, under several clipping treatments (fixed: "
                  "optim.grad_clip at every B; scaled: × 1/√κ; off). Paper §5.1: with the rule the loss is flat in B "
                  "below a critical batch B_crit = D/(L·S_crit).",
    "mixing": "The mixing weights of the three tasks (data.task_weights). Paper §7.2, Fig. 16: each modality's "
              "loss falls as its own weight rises, with no cross-modal synergy.",
    "schedule": "The masking schedule α(t) trained with (objective.schedule.name); every run is evaluated with the "
                "same linear-schedule ELBO estimator, so the numbers compare. the paper's App. F.",
    "anti-masking": "Training with and without anti-masking (objective.anti_mask: every row is also trained on the "
                    "complement of its mask, doubling compute per row). Paper §7.4. Evaluated with the same "
                    "linear-schedule ELBO estimator; generation quality is scored when the spec has a `generate:` "
                    "section (docs/quality.md).",
    "scaling": "Model sizes on the ladder (width ∝ depth, heads = depth) × token horizons. Paper §5.3; "
               "fit eq. 5.1 with `trimodal experiment fit scaling results.csv`.",
}


def pm(v: Any, digits: int = 4) -> str:
    """``mean ± sd`` of an aggregate cell."""
    if not isinstance(v, tuple) or not math.isfinite(v[0]):
        return "–"
    if not math.isfinite(v[1]):  # one seed: no spread to print (not "± 0.0000")
        return f"{v[0]:.{digits}f}"
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cell(key: str, v: Any) -> str:
    if key == "tokens_target" and isinstance(v, (int, float)):
        return analysis.tokens_label(float(v)).removeprefix("D = ")
    return _num(v)


def critical_tables(groups: list[dict[str, Any]]) -> list[str]:
    """The batch-size study's paired differences to the smallest B and its B_crit / S_crit, one
    row per (rule, clipping, D) curve."""
    crit = analysis.critical_batches(groups)
    if not crit:
        return []
    bs = sorted({b for cb in crit.values() for b in cb.batch_sizes})
    # the stricter reading: 2 sd of the *mean* of n paired differences (τ/√n), n the fewest seeds paired
    n = min((d[2] for cb in crit.values() for d in cb.deltas.values() if d[2]), default=0)
    strict = analysis.critical_batches(groups, scale=1 / math.sqrt(n)) if n > 1 else {}
    rows, rows_c = [], []
    for curve, cb in crit.items():
        rows.append([analysis.curve_label(curve)] +
                    [analysis.pm_text(*cb.deltas[b]) if b in cb.deltas and b != cb.reference_batch else
                     ("ref" if b == cb.reference_batch else "–") for b in bs])
        rows_c.append([analysis.curve_label(curve), f"{cb.reference_batch:g}", pm((cb.plateau, cb.plateau_sd)),
                       f"{cb.tolerance:.4f}" if math.isfinite(cb.tolerance) else "n/a", cb.describe()] +
                      ([strict[curve].describe()] if strict else []))
    return ["## Paired differences to the smallest B", "",
            "Per seed, val ELBO at B minus val ELBO at the curve's smallest B (same seed: same initialisation and "
            "data order); mean ± sample sd over the seeds (n).", "",
            table(["curve"] + [f"B = {b:g}" for b in bs], rows), "",
            "## Critical batch", "",
            "τ: twice the pooled sd of the curve's single-seed paired differences above (each curve its own: a "
            "short horizon is noisier). The plateau is the smallest B's mean loss; B_crit is the largest B up to "
            "which every paired Δ is ≤ τ; S_crit = D/(B_crit·L). The grid doubles B, so each value is resolved to a "
            "factor of 2." + (f" The last column uses the stricter τ/√{n} (2 sd of the mean of {n} paired "
                              "differences)." if strict else ""), "",
            table(["curve", "smallest B", "plateau (val ELBO)", "τ", "B_crit / S_crit at τ"] +
                  ([f"at τ/√{n}"] if strict else []), rows_c), ""]


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _point_table(kind: str, groups: list[dict[str, Any]], keys: list[str], tasks: list[str]) -> str:
    if kind == "mixing":
        heads = [f"w {t}" for t in tasks] + ["n"] + [f"{t} own ELBO" for t in tasks] + ["val ELBO (all)"]
        body = [[_num(g[f"weight_{t}"]) for t in tasks] + [str(g["n"])] +
                [pm(g.get(f"task_elbo_{t}")) for t in tasks] + [pm(g.get("val_elbo"))] for g in groups]
        return table(heads, body)
    gen = generation_columns(groups)
    heads = [{"tokens_target": "D"}.get(k, k) for k in keys] + ["n", "val ELBO", "text", "image", "audio"] + gen + \
        ["steps", "B", "B̃", "κ", "lr", "N"]
    body = [[_cell(k, g[k]) for k in keys] + [str(g["n"]), pm(g.get("val_elbo"))] +
            [pm(g.get(f"val_elbo_{m}")) for m in R.MODALITIES] + [pm(g.get(m)) for m in gen] +
            [_num(g.get(f)) for f in ("steps", "B", "logical_batch", "kappa", "lr", "N")] for g in groups]
    return table(heads, body)


def generation_columns(groups: list[dict[str, Any]]) -> list[str]:
    """The generation metrics (FID, CLIP score, WER, FAD) that any point was scored with."""
    return [m for m in R.GENERATION if any(isinstance(g.get(m), tuple) and math.isfinite(g[m][0]) for g in groups)]


def write_report(spec: ExperimentSpec, rows: list[dict[str, Any]], folder: str, point_columns: tuple[str, ...],
                 spec_path: str | None = None) -> list[str]:
    """Write results.csv, report.md and the plots into ``folder``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = [R.write_csv(rows, os.path.join(folder, "results.csv"), point_columns)]
    keys = list(point_columns)
    tasks = list(grid_of(spec).tasks) if spec.kind == "mixing" else []
    if spec.kind == "mixing":
        keys = [f"weight_{t}" for t in tasks]
    groups = R.aggregate(rows, keys, R.METRICS)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    pending = len(rows) - ok - len(failed)
    md = [f"# {spec.name} ({spec.kind})", "", INTRO[spec.kind], ""]
    if spec_path:
        md += [f"Rerun: `trimodal experiment run {spec_path}` (finished runs are skipped).", ""]
    md += [f"Seeds {spec.seeds}; runs: {ok} ok, {len(failed)} failed, {pending} pending. Numbers are the final "
           "held-out ELBO (nats per non-PAD token; fixed val rows, t-levels and masks), mean ± sample sd over "
           "the finished seeds (n).", ""]
    if spec.generate is not None:
        g = spec.generate
        md += [f"Generation metrics (fid, clip_score, wer, fad): {g.get('num', 16)} samples per run and task "
               f"({', '.join(g.get('tasks', ['image']))}) from its last checkpoint, sample seed {g.get('seed', 0)} for "
               "every run (paired by training seed); samples and metrics.json under `<run>/generate/`. Lower is "
               "better except clip_score.", ""]
    plot_files: list[str] = []
    lines: list[str] = []
    if groups:
        md += ["## Results", "", _point_table(spec.kind, groups, keys, tasks), ""]
        if spec.kind == "batch-size":
            md += critical_tables(groups)
        analyse, plot, png = {"batch-size": (analysis.batch_size, plots.batch_size, "batch_size.png"),
                              "mixing": (lambda g: analysis.mixing(g, tasks), lambda g, f: plots.mixing(g, tasks, f),
                                         "mixing.png"),
                              "schedule": (analysis.schedule, plots.schedule, "schedule.png"),
                              "anti-masking": (lambda g: analysis.schedule(g, key="anti_mask", reference=False),
                                               lambda g, f: plots.schedule(g, f, key="anti_mask", reference=False),
                                               "anti_masking.png"),
                              }.get(spec.kind, (analysis.scaling, plots.scaling, "scaling.png"))
        lines, _ = analyse(groups)  # numbers only: written even without matplotlib
        if spec.kind in ("schedule", "anti-masking"):  # judged on samples too, not on the ELBO alone
            key, ref = ("schedule", "linear") if spec.kind == "schedule" else ("anti_mask", False)
            lines += analysis.generation(groups, key=key, reference=ref)[0]
        try:
            plot_files.append(plot(groups, os.path.join(folder, png)))
            plot_files.append(plots.curves(groups, keys, os.path.join(folder, "curves.png")))
        except ImportError as e:  # matplotlib missing: the tables and the analysis still stand
            md += [f"(plots skipped: {e})", ""]
        md += ["## What the plots show", ""]
        md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plot_files] + [""]
        md += [f"- {ln}" for ln in lines] + [""]
        if os.path.join(folder, "curves.png") in plot_files:
            md += ["`curves.png`: val ELBO at every evaluation against the positions trained on, mean over seeds.", ""]
    if failed:
        md += ["## Failed runs", ""] + [f"- `{r['name']}`: {r['reason']}" for r in failed] + [""]
    unscored = [r["name"] for r in rows if spec.generate is not None and r["status"] == "ok"
                and not any(isinstance(r.get(m), float) for m in R.GENERATION)]
    if unscored:  # a scoring that failed said why when it ran; the report keeps the gap visible
        md += ["## Runs without generation metrics", "",
               "No `<run>/generate/metrics.json` (its scoring failed or has not run: `experiment run` retries it):", ""]
        md += [f"- `{n}`" for n in unscored] + [""]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return paths + [path] + plot_files
