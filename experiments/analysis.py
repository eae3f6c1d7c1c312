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

from trimodal.experiments.critical_batch import CriticalBatch, critical_batch, paired_tolerance


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
def seed_losses(g: dict[str, Any], metric: str) -> dict[int, float]:
    """seed -> the metric, over a point's finished runs."""
    return {int(m["seed"]): float(m[metric]) for m in g.get("_members", [])
            if m.get(metric) is not None and m.get("seed") is not None and math.isfinite(float(m[metric]))}


def curve_of(g: dict[str, Any]) -> tuple[str, str | None, float | None]:
    """The curve a batch-size point belongs to: (rule, clipping treatment, token horizon D)."""
    return g["rule"], g.get("clip"), g.get("tokens_target")


def tokens_label(d: float | None) -> str:
    """2^k for a power of two (the horizons of the specs), else the number."""
    if d is None or not math.isfinite(float(d)):
        return "D ?"
    k = math.log2(d)
    return f"D = 2^{int(k)}" if k.is_integer() else f"D = {d:g}"


def curve_label(curve: tuple[str, str | None, float | None]) -> str:
    rule, clip, d = curve
    parts = ["SDE rule" if rule == "sde" else "no rule"]
    if clip:
        parts.append({"fixed": "clip fixed", "scaled": "clip 1/√κ", "off": "no clipping"}.get(clip, clip))
    parts.append(tokens_label(d))
    return ", ".join(parts)


def critical_batches(groups: list[dict[str, Any]], metric: str = "val_elbo", tolerance: float | None = None,
                     seq_len: int | None = None, scale: float = 1.0) -> dict[tuple, CriticalBatch]:
    """B_crit / S_crit of every (rule, clip, D) curve (:mod:`trimodal.experiments.critical_batch`).
    The tolerance is given, or each curve's own: twice the pooled sd of its single-seed paired
    differences (curves differ in noise: a short horizon, far from convergence, is much noisier),
    times ``scale`` (1/√n: two sd of the mean of n paired differences)."""
    curves: dict[tuple, dict[float, dict[int, float]]] = {}
    for g in groups:
        curves.setdefault(curve_of(g), {})[float(g["batch_size"])] = seed_losses(g, metric)
    out = {}
    for curve, losses in curves.items():
        tol = (paired_tolerance([losses]) if tolerance is None else tolerance) * scale
        L = seq_len or next((int(m["seq_len"]) for g in groups if curve_of(g) == curve
                             for m in g.get("_members", []) if m.get("seq_len")), 0)
        d = curve[2] if curve[2] is not None else next((float(g["D"]) for g in groups if curve_of(g) == curve
                                                        and g.get("D")), math.nan)
        out[curve] = critical_batch(losses, d, L or 1, tol)
    return out


def batch_size(groups: list[dict[str, Any]], metric: str = "val_elbo") -> tuple[list[str], dict[str, Any]]:
    """Per curve (rule, clipping, D): the ELBO range over B, the slope per doubling of B, the
    paired differences to the smallest B and the critical batch; then the rules and clipping
    treatments against each other at the same B, D and seed."""
    crit = critical_batches(groups, metric)
    lines = ["Per curve: τ = twice the pooled sd of the curve's single-seed paired differences to its smallest B; "
             "B_crit = the largest B up to which every paired Δ to the smallest B is ≤ τ; S_crit = D/(B_crit·L)."]
    nums: dict[str, Any] = {"rules": {}, "curves": {}}
    for curve, cb in crit.items():
        gs = sorted((g for g in groups if curve_of(g) == curve), key=lambda g: g["batch_size"])
        bs = [float(g["batch_size"]) for g in gs]
        ms = [mean_of(g, metric) for g in gs]
        best = int(np.nanargmin(ms))
        per_doubling = slope([math.log2(b) for b in bs], ms)
        rising = all(b > a for a, b in zip(ms, ms[1:]))
        entry = {"B": bs, "mean": ms, "range": max(ms) - min(ms), "per_doubling": per_doubling, "best_B": bs[best],
                 "monotone_rising": rising, "critical": cb}
        nums["curves"][curve] = entry
        nums["rules"].setdefault(curve[0], entry)
        deltas = "; ".join(f"B={b:g}: {pm_text(*cb.deltas[b])}" for b in bs[1:] if cb.deltas[b][2])
        lines.append(f"{curve_label(curve)}: val ELBO {_fmt(ms[0])} at B={bs[0]:g} … {_fmt(ms[-1])} at B={bs[-1]:g} "
                     f"(range {_fmt(max(ms) - min(ms))}, {_fmt(per_doubling)} nats per doubling of B, best at "
                     f"B={bs[best]:g}; {'rises at every doubling' if rising else 'does not rise at every doubling'}). "
                     f"Paired Δ to B={bs[0]:g}: {deltas or 'n/a'}. τ = {_fmt(cb.tolerance)}: {cb.describe()}.")
    by = {(*curve_of(g), g["batch_size"]): g for g in groups}
    # SDE rule − no rule at the same clipping, D, B and seed
    diffs = []
    for (rule, clip, d, b), g in sorted(by.items(), key=lambda kv: (str(kv[0][1]), kv[0][2] or 0, kv[0][3])):
        if rule == "sde" and ("none", clip, d, b) in by:
            pmn, psd, n = paired(g, by[("none", clip, d, b)], metric)
            if n:
                diffs.append(f"B={b:g}: {pm_text(pmn, psd, n)}")
    if diffs:
        lines.append("SDE rule − no rule at the same B and seed: " + "; ".join(diffs) + ".")
    rs = nums["rules"]
    if "sde" in rs and "none" in rs and rs["sde"]["range"] > 0:
        nums["range_ratio"] = rs["none"]["range"] / rs["sde"]["range"]
        lines.append(f"The range over B is {_fmt(nums['range_ratio'], 2)}× larger without the rule than with it.")
    # clipping treatments against the reference treatment (fixed if run) at the same rule, D, B and seed
    nums["clip"] = {}
    for rule, d in dict.fromkeys((c[0], c[2]) for c in crit):
        clips = [c[1] for c in crit if c[0] == rule and c[2] == d and c[1]]
        if len(clips) < 2:
            continue
        ref = "fixed" if "fixed" in clips else clips[0]
        for clip in clips:
            if clip == ref:
                continue
            parts, vals = [], {}
            for b in sorted({k[3] for k in by if k[:3] == (rule, clip, d)}):
                if (rule, ref, d, b) in by:
                    pmn, psd, n = paired(by[(rule, clip, d, b)], by[(rule, ref, d, b)], metric)
                    if n:
                        vals[float(b)] = (pmn, psd, n)
                        parts.append(f"B={b:g}: {pm_text(pmn, psd, n)}")
            nums["clip"][(rule, d, clip, ref)] = vals
            if parts:
                lines.append(f"{curve_label((rule, clip, d))} − {curve_label((rule, ref, d)).split(', ')[1]}, paired by "
                             f"seed: " + "; ".join(parts) + ".")
    return lines, nums


def pm_text(mean: float, sd: float, n: int) -> str:
    """A paired difference in words: ``+0.0123 ± 0.0045 (n=3)``; no ``± 0`` for one seed."""
    if not n or not math.isfinite(mean):
        return "n/a"
    return f"{mean:+.4f}" + (f" ± {sd:.4f}" if n > 1 and math.isfinite(sd) else "") + f" (n={n})"


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
