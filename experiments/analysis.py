"""What an experiment's numbers say, as pure functions of the per-point aggregates.

Each kind's summary is a list of plain sentences with the numbers in them (the report prints
them under "What the plots show"), plus the numbers themselves for tests and other tools. The
seed spread is the yardstick throughout: a difference is called a difference only where it
exceeds twice the pooled seed standard deviation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_of(g: dict[str, Any], metric: str) -> float:
    """The mean of a (mean, sd) summary, NaN when missing."""
    v = g.get(metric)
    return float(v[0]) if isinstance(v, tuple) else math.nan


def sd_of(g: dict[str, Any], metric: str) -> float:
    """The sd of a (mean, sd) summary, NaN when missing."""
    v = g.get(metric)
    return float(v[1]) if isinstance(v, tuple) else math.nan


def pooled_sd(groups: list[dict[str, Any]], metric: str) -> float:
    """sqrt of the mean seed variance over points with at least two seeds (NaN if none)."""
    var = [sd_of(g, metric) ** 2 for g in groups if g["n"] >= 2 and math.isfinite(sd_of(g, metric))]
    return math.sqrt(sum(var) / len(var)) if var else math.nan


def flat_until(xs: list[float], means: list[float], tol: float) -> float:
    """The largest x such that the means of every point up to it lie within ``tol`` of each
    other (the points sorted by x); the first x when even the first two differ."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    lo = hi = means[order[0]]
    last = xs[order[0]]
    for i in order[1:]:
        lo, hi = min(lo, means[i]), max(hi, means[i])
        if hi - lo > tol:
            break
        last = xs[i]
    return last


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (NaN with fewer than two distinct xs)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


# ---- batch size -------------------------------------------------------------------------------
def batch_size(groups: list[dict[str, Any]], metric: str = "val_elbo") -> tuple[list[str], dict[str, Any]]:
    """Per rule: the ELBO range over B, the slope per doubling of B, and the B up to which the
    curve stays within 2 seed sd (the flat region below B_crit of the paper's §5.1)."""
    tol = 2 * pooled_sd(groups, metric)  # NaN with one seed per point: no flatness verdict
    lines, nums = [], {"tolerance": tol, "rules": {}}
    for rule in dict.fromkeys(g["rule"] for g in groups):
        gs = sorted((g for g in groups if g["rule"] == rule), key=lambda g: g["batch_size"])
        bs = [float(g["batch_size"]) for g in gs]
        ms = [mean_of(g, metric) for g in gs]
        if not gs:
            continue
        best = int(np.nanargmin(ms))
        per_doubling = slope([math.log2(b) for b in bs], ms)
        flat = flat_until(bs, ms, tol) if math.isfinite(tol) else math.nan
        nums["rules"][rule] = {"B": bs, "mean": ms, "range": max(ms) - min(ms), "per_doubling": per_doubling,
                               "flat_until": flat, "best_B": bs[best]}
        label = "with the SDE rule" if rule == "sde" else "without the rule (base HPs fixed)"
        text = (f"{label}: val ELBO {_fmt(ms[0])} at B={bs[0]:g} … {_fmt(ms[-1])} at B={bs[-1]:g} "
                f"(range {_fmt(max(ms) - min(ms))}, {_fmt(per_doubling)} nats per doubling of B, best at B={bs[best]:g})")
        rising = all(b > a for a, b in zip(ms, ms[1:]))
        nums["rules"][rule]["monotone_rising"] = rising
        if math.isfinite(flat):
            text += f"; within 2 seed sd ({_fmt(tol)}) of each other up to B={flat:g}"
        text += "; the mean rises at every doubling" if rising else "; the mean does not rise at every doubling"
        lines.append(text + ".")
    r = nums["rules"]
    if "sde" in r and "none" in r:
        ratio = r["none"]["range"] / r["sde"]["range"] if r["sde"]["range"] > 0 else math.inf
        lines.append(f"The range over B is {_fmt(ratio, 2)}× larger without the rule than with it.")
        nums["range_ratio"] = ratio
        by = {(g["rule"], g["batch_size"]): g for g in groups}
        diffs = []
        for b in sorted({g["batch_size"] for g in groups}):
            if ("sde", b) in by and ("none", b) in by:
                pm, psd, n = paired(by[("sde", b)], by[("none", b)], metric)
                if n:
                    diffs.append(f"B={b:g}: {pm:+.4f} ± {psd:.4f}")
        if diffs:
            lines.append("SDE rule − no rule at the same B and seed: " + "; ".join(diffs) + ".")
    return lines, nums


# ---- mixing -----------------------------------------------------------------------------------
def mixing(groups: list[dict[str, Any]], tasks: list[str]) -> tuple[list[str], dict[str, Any]]:
    """For each task m: its own ELBO against its own weight (slope, monotone or not), and the
    cross-modal effect: with w_m fixed, the change of ELBO_m when weight moves between the
    other tasks (least squares ELBO_m ~ a + b·w_m + c·w_o1 over the points; w_o2 = 1 − w_m − w_o1)."""
    lines, nums = [], {}
    for m in tasks:
        metric = f"task_elbo_{m}"
        gs = [g for g in groups if math.isfinite(mean_of(g, metric))]
        if len(gs) < 2:
            continue
        w = [float(g[f"weight_{m}"]) for g in gs]
        y = [mean_of(g, metric) for g in gs]
        levels = sorted(set(w))
        at = [float(np.mean([yy for ww, yy in zip(w, y) if ww == lv])) for lv in levels]
        monotone = all(b < a for a, b in zip(at, at[1:]))
        own = slope(w, y)
        others = [t for t in tasks if t != m]
        cross, within = math.nan, math.nan
        if len(others) >= 2 and len(gs) >= 4:
            X = np.column_stack([np.ones(len(gs)), w, [float(g[f"weight_{others[0]}"]) for g in gs]])
            coef, *_ = np.linalg.lstsq(X, np.asarray(y), rcond=None)
            own, cross = float(coef[1]), float(coef[2])
            spreads = [max(yy for ww, yy in zip(w, y) if ww == lv) - min(yy for ww, yy in zip(w, y) if ww == lv)
                       for lv in levels if sum(ww == lv for ww in w) > 1]
            within = max(spreads) if spreads else math.nan
        sd = pooled_sd(gs, metric)
        nums[m] = {"weights": levels, "mean_at_weight": at, "monotone": monotone, "own_slope": own,
                   "cross_slope": cross, "within_weight_range": within, "seed_sd": sd}
        text = (f"{m}: its own ELBO goes {' → '.join(_fmt(a) for a in at)} as its weight goes "
                f"{' → '.join(f'{lv:g}' for lv in levels)} ({'falls monotonically' if monotone else 'not monotone'}; "
                f"{_fmt(own)} nats per unit of own weight")
        if math.isfinite(cross):
            text += (f"; at fixed own weight, moving weight from {others[1]} to {others[0]} changes it by "
                     f"{_fmt(cross)} per unit, largest spread at one own weight {_fmt(within)}, seed sd {_fmt(sd)}")
        lines.append(text + ").")
    return lines, nums


def paired(g: dict[str, Any], ref: dict[str, Any], metric: str) -> tuple[float, float, int]:
    """Mean and sd over the seeds both points finished of (g − ref): runs of one seed share the
    init and the data order, so their difference is less noisy than the two spreads suggest."""
    a = {m.get("seed"): m.get(metric) for m in g.get("_members", []) if m.get(metric) is not None}
    b = {m.get("seed"): m.get(metric) for m in ref.get("_members", []) if m.get(metric) is not None}
    ds = [float(a[k]) - float(b[k]) for k in a if k in b]
    if not ds:
        return math.nan, math.nan, 0
    mean = sum(ds) / len(ds)
    sd = math.sqrt(sum((x - mean) ** 2 for x in ds) / (len(ds) - 1)) if len(ds) > 1 else 0.0
    return mean, sd, len(ds)


# ---- schedule ---------------------------------------------------------------------------------
def schedule(groups: list[dict[str, Any]], metric: str = "val_elbo", key: str = "schedule",
             reference: Any = "linear", unit: str = "nats", higher_is_better: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Points of one categorical setting ranked by ``metric`` (default: the final held-out ELBO),
    each against ``reference`` (schedules: linear, the evaluation estimator's; anti-masking: off)."""
    sign = -1.0 if higher_is_better else 1.0
    gs = sorted((g for g in groups if math.isfinite(mean_of(g, metric))), key=lambda g: sign * mean_of(g, metric))
    ref = next((g for g in gs if g[key] == reference), gs[0] if gs else None)
    tol = 2 * pooled_sd(gs, metric)
    lines, nums = [], {"ranking": [str(g[key]) for g in gs], "tolerance": tol}
    if not gs or ref is None:
        return lines, nums
    name = "" if metric == "val_elbo" else f"{metric}: "
    lines.append(f"{name}ranking (best first): " + ", ".join(
        f"{g[key]} {_fmt(mean_of(g, metric))}" + (f" ± {_fmt(sd_of(g, metric))}" if math.isfinite(sd_of(g, metric)) else "")
        for g in gs) + ".")
    for g in gs:
        if g is ref:
            continue
        d = mean_of(g, metric) - mean_of(ref, metric)
        verdict = "within" if abs(d) <= tol else ("worse than" if sign * d > 0 else "better than")
        pm, psd, n = paired(g, ref, metric)
        text = f"{name}{g[key]} − {ref[key]}: {d:+.4f}{' ' + unit if unit else ''} ({verdict} 2 seed sd = {_fmt(tol)})"
        if n >= 2:
            text += f"; paired by seed (same init, data order and t draws): {pm:+.4f} ± {psd:.4f} over {n} seeds"
        lines.append(text + ".")
        nums[str(g[key])] = {"difference": d, "paired_mean": pm, "paired_sd": psd, "paired_n": n}
    return lines, nums


# Generation metrics next to the ELBO (experiments/scoring.py): whether higher is better.
GENERATION_METRICS = {"fid": False, "clip_score": True, "wer": False, "fad": False}


def generation(groups: list[dict[str, Any]], key: str, reference: Any) -> tuple[list[str], dict[str, Any]]:
    """The schedule-style comparison for every generation metric the runs were scored with."""
    lines, nums = [], {}
    for metric, higher in GENERATION_METRICS.items():
        if any(math.isfinite(mean_of(g, metric)) for g in groups):
            ls, ns = schedule(groups, metric=metric, key=key, reference=reference, unit="", higher_is_better=higher)
            lines += ls
            nums[metric] = ns
    return lines, nums


# ---- scaling ----------------------------------------------------------------------------------
def scaling(groups: list[dict[str, Any]], metric: str = "val_elbo") -> tuple[list[str], dict[str, Any]]:
    """Loss against N at each token horizon, and against D at each size."""
    lines, nums = [], {}
    for tokens in sorted({g["tokens_target"] for g in groups}):
        gs = sorted((g for g in groups if g["tokens_target"] == tokens), key=lambda g: g["N"] or 0)
        ms = [mean_of(g, metric) for g in gs]
        falls = all(b < a for a, b in zip(ms, ms[1:]))
        nums[f"D={tokens:g}"] = {"N": [g["N"] for g in gs], "mean": ms, "falls_with_N": falls}
        lines.append(f"D = {tokens:g}: loss {' → '.join(_fmt(x) for x in ms)} for N = "
                     f"{' → '.join(str(g['N']) for g in gs)} ({'falls' if falls else 'does not fall'} with N).")
    return lines, nums
