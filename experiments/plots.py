"""The paper's plot for each experiment kind, from the per-point aggregates (matplotlib, PNG).

Every plot shows the mean over seeds with the seed standard deviation as error bars (labelled
"sd over n seeds"; none at n = 1) and the single seeds as faint dots, so the spread is visible
next to the effect. No bar charts: a bar's length only means something from zero, and ELBO
differences of 0.01 nats on a 3-nat scale need a zoomed axis, so points are drawn instead.
"""

from __future__ import annotations

import math
import os
from typing import Any

from trimodal.experiments.analysis import mean_of, sd_of

MODALITIES = ("text", "image", "audio")
DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seeds(ax, x: float, g: dict[str, Any], metric: str, color: str) -> None:
    ys = [m.get(metric) for m in g.get("_members", []) if m.get(metric) is not None]
    ax.scatter([x] * len(ys), ys, s=10, color=color, alpha=0.35, linewidths=0)


def _nseeds(groups: list[dict[str, Any]]) -> str:
    ns = sorted({int(g.get("n", 0)) for g in groups})
    return "error bars: sd over " + ("/".join(map(str, ns)) if ns else "0") + " seed(s)"


def _yerr(groups: list[dict[str, Any]], metric: str) -> list[float]:
    return [sd_of(g, metric) if math.isfinite(sd_of(g, metric)) else 0.0 for g in groups]


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def batch_size(groups: list[dict[str, Any]], path: str) -> str:
    """Left: final val ELBO against B (log scale), one curve per (rule, clipping, D), the
    critical batch ringed. Middle: the paired difference to the curve's smallest B (same seed),
    with the tolerance τ. Right: the comparison the grid allows at the same B and seed: clipping
    treatments against the fixed threshold, else the SDE rule against no rule, else each
    modality's excess over its best point."""
    from trimodal.experiments import analysis as A

    plt = _plt()
    crit = A.critical_batches(groups)
    fig, (ax, axd, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    horizons = sorted({c[2] for c in crit if c[2] is not None})
    palette = ["tab:green", "tab:blue", "tab:purple", "tab:orange", "tab:brown", "tab:cyan"]
    d_color = {d: palette[i % len(palette)] for i, d in enumerate(horizons)}
    styles = {("sde", "off"): ("-", "o"), ("sde", "scaled"): ("--", "s"), ("sde", "fixed"): (":", "^"),
              ("none", "fixed"): ("-.", "v"), ("none", "off"): ("-.", "D"), ("none", "scaled"): ("-.", "P")}
    clip_color = {"off": "tab:blue", "scaled": "tab:orange", "fixed": "tab:gray"}
    many_clips = len({c[1] for c in crit}) > 1

    def color(curve: tuple) -> str:
        """By D where there are several, else by clipping where that varies, else by rule."""
        if len(horizons) > 1:
            return d_color[curve[2]]
        if many_clips:
            return clip_color.get(curve[1] or "fixed", "tab:gray")
        return "tab:blue" if curve[0] == "sde" else "tab:red"

    for curve, cb in crit.items():
        gs = sorted((g for g in groups if A.curve_of(g) == curve), key=lambda g: g["batch_size"])
        bs = [g["batch_size"] for g in gs]
        c = color(curve)
        ls, mk = styles.get((curve[0], curve[1] or "fixed"), ("-", "o"))
        label = A.curve_label(curve)
        ax.errorbar(bs, [mean_of(g, "val_elbo") for g in gs], yerr=_yerr(gs, "val_elbo"), color=c, ls=ls, marker=mk,
                    capsize=3, label=label)
        for g in gs:
            _seeds(ax, g["batch_size"], g, "val_elbo", c)
        if math.isfinite(cb.b_crit):
            gc = next(g for g in gs if float(g["batch_size"]) == cb.b_crit)
            ax.scatter([cb.b_crit], [mean_of(gc, "val_elbo")], s=160, facecolors="none", edgecolors=c, linewidths=1.5)
        pts = [(b, *cb.deltas[float(b)]) for b in bs if cb.deltas[float(b)][2]]
        axd.errorbar([p[0] for p in pts], [p[1] for p in pts],
                     yerr=[p[2] if math.isfinite(p[2]) else 0.0 for p in pts], color=c, ls=ls, marker=mk, capsize=3,
                     label=label)
        if math.isfinite(cb.tolerance):  # the curve's tolerance: 2 × its pooled paired sd
            axd.axhline(cb.tolerance, color=c, lw=0.8, ls=(0, (2, 3)), alpha=0.8)
    axd.axhline(0.0, color="black", lw=0.8)
    axd.set_ylabel("Δ val ELBO to the smallest B, same seed (nats)")
    axd.set_title(f"paired Δ to the smallest B ({_nseeds(groups).replace('error bars: ', 'bars: ')}; "
                  "dotted: the curve's τ)",
                  fontsize=9)
    axd.legend(fontsize=7)
    # right panel: what the grid can compare at the same B and seed
    _, nums = A.batch_size(groups)
    if nums.get("clip"):
        for (rule, d, clip, ref), vals in nums["clip"].items():
            bs = sorted(vals)
            ls, mk = styles.get((rule, clip), ("-", "o"))
            ax3.errorbar(bs, [vals[b][0] for b in bs], yerr=[vals[b][1] if math.isfinite(vals[b][1]) else 0.0
                                                               for b in bs],
                         color=color((rule, clip, d)),
                         ls=ls, marker=mk, capsize=3, label=f"{A.curve_label((rule, clip, d))} − clip {ref}")
        ax3.axhline(0.0, color="black", lw=0.8)
        ax3.set_ylabel("Δ val ELBO to the reference clipping (nats)")
        ax3.set_title(f"clipping, paired by seed ({_nseeds(groups).replace('error bars: ', 'bars: ')})", fontsize=9)
        ax3.legend(fontsize=7)
    elif {"sde", "none"} <= {c[0] for c in crit}:
        by = {(*A.curve_of(g), g["batch_size"]): g for g in groups}
        pts = sorted((b, *A.paired(g, by[("none", cl, d, b)], "val_elbo")) for (r, cl, d, b), g in by.items()
                     if r == "sde" and ("none", cl, d, b) in by)
        pts = [p for p in pts if p[3]]
        for b, dlt, sd, n in pts:
            ax3.errorbar([b], [dlt], yerr=[sd if math.isfinite(sd) and n > 1 else 0.0], color="tab:purple", marker="o",
                         capsize=3)
        if pts:
            ax3.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:purple", lw=1)
        ax3.axhline(0.0, color="black", lw=0.8)
        ax3.set_ylabel("Δ val ELBO, SDE rule − no rule (nats)")
        ax3.set_title(f"paired by seed ({_nseeds(groups).replace('error bars: ', 'bars: ')})", fontsize=9)
    else:
        best = {m: min((mean_of(g, f"val_elbo_{m}") for g in groups if math.isfinite(mean_of(g, f"val_elbo_{m}"))),
                       default=0.0) for m in MODALITIES}
        for curve in crit:
            gs = sorted((g for g in groups if A.curve_of(g) == curve), key=lambda g: g["batch_size"])
            for m, ls in zip(MODALITIES, ("-", "--", ":")):
                ax3.plot([g["batch_size"] for g in gs], [mean_of(g, f"val_elbo_{m}") - best[m] for g in gs],
                         color=color(curve), ls=ls, marker=".", label=f"{m} ({A.curve_label(curve)})")
        ax3.set_title("per modality: ELBO − its best point", fontsize=9)
        ax3.legend(fontsize=6)
    ticks = sorted({g["batch_size"] for g in groups})
    for a in (ax, axd, ax3):
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.minorticks_off()
        a.set_xlabel("physical batch B (rows)")
        a.grid(alpha=0.3)
    ax.set_ylabel("final val ELBO (nats/token)")
    ax.set_title(f"fixed token horizons ({_nseeds(groups)}; ring: B_crit)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def mixing(groups: list[dict[str, Any]], tasks: list[str], path: str) -> str:
    """Each task's own val ELBO against its own weight (paper Fig. 16); colour: the weight of
    the first other task, so a cross-modal effect would show as a colour gradient."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6))
    for ax, m in zip(axes, tasks):
        metric = f"task_elbo_{m}"
        other = [t for t in tasks if t != m][0]
        gs = [g for g in groups if math.isfinite(mean_of(g, metric))]
        ws = sorted({g[f"weight_{m}"] for g in gs})
        means = [sum(mean_of(g, metric) for g in gs if g[f"weight_{m}"] == w) /
                 max(1, sum(g[f"weight_{m}"] == w for g in gs)) for w in ws]
        ax.plot(ws, means, color="black", lw=1, alpha=0.6, label="mean at this weight")
        sc = None
        ow = [g[f"weight_{other}"] for g in gs] or [0.0, 1.0]
        lo, hi = min(ow), max(max(ow), min(ow) + 1e-6)
        for g in gs:
            x = g[f"weight_{m}"]
            ax.errorbar([x], [mean_of(g, metric)], yerr=_yerr([g], metric), fmt="none", ecolor="gray", capsize=2)
            sc = ax.scatter([x], [mean_of(g, metric)], c=[g[f"weight_{other}"]], cmap="viridis", vmin=lo, vmax=hi, s=30,
                            zorder=3)
        ax.set_xlabel(f"weight of {m}")
        ax.set_ylabel(f"val ELBO of {m}'s own modality")
        ax.grid(alpha=0.3)
        ax.set_title(f"{m} ({_nseeds(gs)})", fontsize=9)
        if sc is not None:
            fig.colorbar(sc, ax=ax, label=f"weight of {other}", fraction=0.05)
    return _save(fig, path)


def schedule(groups: list[dict[str, Any]], path: str, key: str = "schedule", reference: Any = "linear") -> str:
    """Final val ELBO per schedule, overall and per modality, and the generation metrics the runs
    were scored with: points with seed sd, and the paired difference to linear (per seed) on the
    second row."""
    plt = _plt()
    from trimodal.experiments.analysis import GENERATION_METRICS, paired

    metrics = [m for m in ["val_elbo"] + [f"val_elbo_{m}" for m in MODALITIES] + list(GENERATION_METRICS)
               if any(math.isfinite(mean_of(g, m)) for g in groups)] or ["val_elbo"]  # modalities evaluated
    names = [f"{key} {g[key]}" if isinstance(g[key], bool) else str(g[key]) for g in groups]
    ref = next((g for g in groups if g[key] == reference), groups[0] if groups else None)
    fig, axes = plt.subplots(2, len(metrics), figsize=(3.0 * len(metrics), 6.0), squeeze=False)
    for k, metric in enumerate(metrics):
        ax, axd = axes[0][k], axes[1][k]
        ax.errorbar(range(len(groups)), [mean_of(g, metric) for g in groups], yerr=_yerr(groups, metric), fmt="o",
                    capsize=3, color="tab:blue")
        for i, g in enumerate(groups):
            _seeds(ax, i, g, metric, "black")
            if ref is not None:
                d, s, n = paired(g, ref, metric)
                if n:
                    axd.errorbar([i], [d], yerr=[s if math.isfinite(s) else 0.0], fmt="o", capsize=3, color="tab:purple")
        axd.axhline(0.0, color="black", lw=0.8)
        title = metric.replace("val_elbo", "val ELBO").replace("_", " ")
        ax.set_title(f"{title}\n({_nseeds(groups)})", fontsize=8)
        axd.set_title(f"{title}: paired Δ to {ref[key] if ref else '–'}", fontsize=8)
        for a in (ax, axd):
            a.set_xticks(range(len(groups)), names, rotation=30, fontsize=8)
            a.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def scaling(groups: list[dict[str, Any]], path: str) -> str:
    """Final val ELBO against non-embedding parameters N, one curve per token horizon."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for tokens in sorted({g["tokens_target"] for g in groups}):
        gs = sorted((g for g in groups if g["tokens_target"] == tokens), key=lambda g: g["N"] or 0)
        ax.errorbar([g["N"] for g in gs], [mean_of(g, "val_elbo") for g in gs], yerr=_yerr(gs, "val_elbo"),
                    marker="o", capsize=3, label=f"D = {tokens:g}")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final val ELBO (nats/token)")
    ax.set_title(_nseeds(groups), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curves(groups: list[dict[str, Any]], label_keys: list[str], path: str) -> str:
    """Val ELBO against positions trained on (step·B·L), per point, averaged over seeds at the
    eval steps they share."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for g in groups:
        members = g.get("_members", [])
        if not members:
            continue
        per = [dict((s, r.get("elbo")) for s, r in m.get("_curve", [])) for m in members]
        steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
        if not steps:
            continue
        scale = (members[0].get("B") or 1) * (members[0].get("seq_len") or 1)
        ys = [sum(p[s] for p in per) / len(per) for s in steps]
        ax.plot([s * scale for s in steps], ys, marker=".", lw=1,
                label=" ".join(f"{g[k]:g}" if isinstance(g[k], float) else str(g[k]) for k in label_keys))
    ax.set_xlabel("positions trained on (step·B·L)")
    ax.set_ylabel("val ELBO (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
