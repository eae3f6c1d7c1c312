"""The paper's fits as pure functions (paper eq. 5.1 scaling law, §5.2 drift–horizon fit).

Both fits share one recipe (paper §5): a robust loss on log residuals, minimised by basin hopping
with an L-BFGS-B local minimiser, and percentile intervals from a bootstrap over the points.

* Robust loss: the Huber loss on ``r = log L_pred − log L_obs`` with δ = 1e-3 (the Chinchilla
  choice, Hoffmann et al. 2022), divided by δ and averaged over points, so the objective is in
  units of |log residual| and L-BFGS-B's tolerances stay meaningful. ``delta`` is a parameter.
* Parameterisation: ``(log A, log B, E, log a, log b)`` (resp. ``log α, log β``): the logs keep the
  scales and exponents positive, E is fitted directly under the bounds 0 ≤ E ≤ min(loss) (the
  reducible part is positive). Exponents are bounded to [1e-4, 10]. Inputs are divided by
  their geometric mean inside the fit (better conditioning); A and B are reported in the original
  units.
* Bootstrap: ``n_boot`` resamples of the points with replacement (the paper used 20), each refitted
  by basin hopping started at the full-data estimate; intervals are percentiles (5–95 % default).

Scaling law (eq. 5.1), N = non-embedding parameters, D = tokens::

    L(N, D) = E + (A·N^(−a/b) + B·D^(−1))^b

so L − E → A^b·N^(−a) as D → ∞ and → B^b·D^(−b) as N → ∞. Under C = 6·N·D, minimising L is
minimising the inner sum A·N^(−a/b) + 6B·N/C (x ↦ x^b is increasing), whose stationary point is::

    N*(C) = G⁻¹·(C/6)^τ,   D*(C) = G·(C/6)^(1−τ),   G = (b·B / (a·A))^τ,   τ = b/(a+b)

and, eliminating C, the compute-optimal tokens for a given model size are::

    D*(N) = G·(G·N)^((1−τ)/τ) = (b·B / (a·A))·N^(a/b)

(note the power τ on G: with G = b·B/(a·A) unpowered, ``G⁻¹·(C/6)^τ`` is not the minimiser; the
D*(N) coefficient, the paper's 7754 in D*(N) = 7754·N^0.84, is the unpowered ratio b·B/(a·A)).

Drift–horizon fit (§5.2), S̃ = logical steps, B̃ = logical batch, D = B̃·S̃·L::

    loss = E + A·S̃^(−α) + B·B̃^(−β)

At fixed D the optimum is S̃* = G·(D/L)^(1−γ*), B̃* = G⁻¹·(D/L)^γ*, with γ* = α/(α+β) and
G = (α·A / (β·B))^(1/(α+β)); γ* is the γ of the batch reparameterisation B̃ ∝ D^γ (train.reparam).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import basinhopping, minimize

from trimodal.experiments.laws import (
    HUBER_DELTA,
    compute_optimal,
    compute_optimal_tokens,
    drift_loss,
    huber,
    mean_relative_error,
    optimal_gamma,
    optimal_split,
    r_squared,
    scaling_loss,
)

__all__ = [
    "DriftFit",
    "ScalingFit",
    "compute_optimal",
    "compute_optimal_tokens",
    "drift_loss",
    "fit_drift",
    "fit_scaling",
    "huber",
    "load_points",
    "mean_relative_error",
    "optimal_gamma",
    "optimal_split",
    "r_squared",
    "scaling_loss",
]

N_PARAMS = 5  # E, A, B and two exponents, in both fits
CSV_COLUMNS = {"scaling": ("N", "D"), "drift": ("logical_steps", "logical_batch")}

# Bounds of the internal parameters (log A, log B, E, log exponent 1, log exponent 2), with inputs
# normalised to geometric mean 1: wide enough for any sane fit, narrow enough that exp() is finite.
_LOG_BOUND = 60.0
_EXP_BOUNDS = (math.log(1e-4), math.log(10.0))


# ----------------------------------------------------------------------------- input checks


def _validate(
    x1: ArrayLike, x2: ArrayLike, loss: ArrayLike, names: Sequence[str], rows: Sequence[str] | None = None
) -> tuple[NDArray, NDArray, NDArray]:
    """Float arrays of one length, positive inputs, finite positive losses, ≥ N_PARAMS+1 points."""
    arrs = []
    for v, name in zip((x1, x2, loss), names):
        a = np.asarray(v, dtype=float).ravel() if np.ndim(v) else np.asarray([v], dtype=float)
        arrs.append(a)
    lengths = {name: len(a) for a, name in zip(arrs, names)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns differ in length: {lengths}")
    n = len(arrs[0])
    need = N_PARAMS + 1
    if n < need:
        raise ValueError(f"too few points: got {n}, need at least {need} ({N_PARAMS} free parameters + 1)")

    def row(i: int) -> str:
        return rows[i] if rows is not None else f"row {i}"

    for a, name in zip(arrs, names):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"column {name!r}: non-finite value {float(a[bad[0]])!r} at {row(int(bad[0]))}")
        bad = np.flatnonzero(a <= 0)
        if bad.size:
            raise ValueError(f"column {name!r}: non-positive value {float(a[bad[0]])!r} at {row(int(bad[0]))}")
    return arrs[0], arrs[1], arrs[2]


def load_points(
    csv_path: str | Path, kind: str, loss_column: str = "loss"
) -> tuple[NDArray, NDArray, NDArray]:
    """Read a results CSV for ``fit_scaling(*points)`` / ``fit_drift(*points)``.

    Columns (header row, other columns ignored): kind ``"scaling"``: ``N`` (non-embedding
    parameters), ``D`` (tokens), and the loss; kind ``"drift"``: ``logical_steps`` (S̃),
    ``logical_batch`` (B̃), and the loss. The loss column is ``loss_column`` (e.g. ``val_elbo``).
    Empty or non-numeric cells, non-positive inputs and non-finite losses raise ValueError naming
    the column and the CSV line.
    """
    if kind not in CSV_COLUMNS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {sorted(CSV_COLUMNS)}")
    cols = (*CSV_COLUMNS[kind], loss_column)
    path = Path(csv_path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in cols if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
        values: list[list[float]] = [[], [], []]
        rows: list[str] = []
        for rec in reader:
            where = f"{path}:{reader.line_num}"
            for j, c in enumerate(cols):
                cell = (rec[c] or "").strip()
                try:
                    values[j].append(float(cell))
                except ValueError:
                    raise ValueError(f"column {c!r}: not a number {cell!r} at {where}") from None
            rows.append(where)
    return _validate(*values, names=cols, rows=rows)


# ----------------------------------------------------------------------------- fitting machinery


@dataclass(frozen=True)
class _Model:
    """One law in the internal parameterisation θ = (log A, log B, E, log p1, log p2).

    ``pred_and_grad(θ, x, y)`` returns predictions and ∂pred/∂θ (n × 5) on normalised log inputs.
    """

    pred_and_grad: Callable[[NDArray, NDArray, NDArray], tuple[NDArray, NDArray]]
    exponent_names: tuple[str, str]


def _scaling_pred(th: NDArray, x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
    lA, lB, E, la, lb = th
    a, b = math.exp(la), math.exp(lb)
    c = a / b
    u, v = lA - c * x, lB - y
    s = np.logaddexp(u, v)
    wu = np.exp(u - s)
    wv = 1.0 - wu
    P = np.exp(b * s)
    g = np.empty((x.size, 5))
    g[:, 0] = P * b * wu
    g[:, 1] = P * b * wv
    g[:, 2] = 1.0
    g[:, 3] = -P * b * wu * c * x
    g[:, 4] = P * (b * s + b * wu * c * x)
    return E + P, g


def _drift_pred(th: NDArray, x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
    lA, lB, E, la, lb = th
    al, be = math.exp(la), math.exp(lb)
    t1 = np.exp(lA - al * x)
    t2 = np.exp(lB - be * y)
    g = np.empty((x.size, 5))
    g[:, 0] = t1
    g[:, 1] = t2
    g[:, 2] = 1.0
    g[:, 3] = -t1 * x * al
    g[:, 4] = -t2 * y * be
    return E + t1 + t2, g


_SCALING = _Model(_scaling_pred, ("a", "b"))
_DRIFT = _Model(_drift_pred, ("alpha", "beta"))


def _objective(model: _Model, x: NDArray, y: NDArray, log_obs: NDArray, delta: float):
    """mean Huber(log pred − log obs)/δ and its gradient; +inf where a prediction is not positive."""

    def f(th: NDArray) -> tuple[float, NDArray]:
        with np.errstate(over="ignore", invalid="ignore"):
            pred, g = model.pred_and_grad(th, x, y)
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0) or not np.all(np.isfinite(g)):
            return 1e10, np.zeros_like(th)
        r = np.log(pred) - log_obs
        psi = np.clip(r / delta, -1.0, 1.0)  # Huber'(r)/δ
        val = float(np.mean(huber(r, delta))) / delta
        grad = (psi / pred) @ g / r.size
        return val, grad

    return f


class _Step:
    """Basin-hopping step: a random move scaled per coordinate, clipped into the bounds."""

    def __init__(self, scales: NDArray, bounds: Sequence[tuple[float, float]], rng: np.random.Generator):
        self.stepsize = 1.0  # basinhopping adapts this attribute
        self.scales, self.rng = scales, rng
        self.lo, self.hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])

    def __call__(self, th: NDArray) -> NDArray:
        step = self.rng.uniform(-1.0, 1.0, th.size) * self.scales * self.stepsize
        return np.clip(th + step, self.lo, self.hi)


def _fit_once(
    model: _Model,
    x: NDArray,
    y: NDArray,
    obs: NDArray,
    starts: Sequence[NDArray],
    niter: int,
    delta: float,
    rng: np.random.Generator,
) -> tuple[NDArray, float]:
    """Best θ over a few starts (the cheapest start seeds basin hopping + L-BFGS-B)."""
    log_obs = np.log(obs)
    emax = float(obs.min())
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 2 + [(0.0, emax)] + [_EXP_BOUNDS] * 2
    f = _objective(model, x, y, log_obs, delta)
    opts = {"method": "L-BFGS-B", "jac": True, "bounds": bounds, "options": {"maxiter": 400, "ftol": 1e-12, "gtol": 1e-9}}
    best: tuple[NDArray, float] | None = None
    for s in starts:
        s = np.clip(np.asarray(s, float), [b[0] for b in bounds], [b[1] for b in bounds])
        r = minimize(f, s, **opts)
        if best is None or r.fun < best[1]:
            best = (np.asarray(r.x), float(r.fun))
    assert best is not None
    if niter > 0:
        scales = np.array([1.0, 1.0, 0.1 * emax, 0.3, 0.3])
        res = basinhopping(
            f,
            best[0],
            niter=niter,
            T=0.05,
            minimizer_kwargs=opts,
            take_step=_Step(scales, bounds, rng),
            rng=rng,
        )
        if res.fun < best[1]:
            best = (np.asarray(res.x), float(res.fun))
    return best


def _starts(model: _Model, x: NDArray, y: NDArray, obs: NDArray) -> list[NDArray]:
    """A small grid of initial guesses: E as a fraction of min loss, exponents around 0.1–0.5."""
    emin = float(obs.min())
    out = []
    for e_frac in (0.0, 0.5, 0.9):
        for p in (0.1, 0.3):
            E = e_frac * emin
            # size the two terms so each explains about half the reducible loss at the centre
            red = max(float(np.median(obs)) - E, 1e-3 * emin)
            if model is _SCALING:
                # (A + B)^b = red at x = y = 0 with A = B  →  log A = log B = log(red)/b − log 2
                lA = math.log(red) / p - math.log(2.0)
                out.append(np.array([lA, lA, E, math.log(p), math.log(p)]))
            else:
                lA = math.log(red / 2)
                out.append(np.array([lA, lA, E, math.log(p), math.log(p)]))
    return out


def _to_params(model: _Model, th: NDArray, lx0: float, ly0: float) -> dict[str, float]:
    """Internal θ (normalised inputs) → reported parameters in the original units."""
    lA, lB, E, l1, l2 = (float(v) for v in th)
    p1, p2 = math.exp(l1), math.exp(l2)
    if model is _SCALING:
        # A·(N/N0)^(−a/b) = (A·N0^(a/b))·N^(−a/b);  B·(D/D0)^(−1) = (B·D0)·D^(−1)
        A, B = math.exp(lA + (p1 / p2) * lx0), math.exp(lB + ly0)
    else:
        A, B = math.exp(lA + p1 * lx0), math.exp(lB + p2 * ly0)
    n1, n2 = model.exponent_names
    return {"E": E, "A": A, "B": B, n1: p1, n2: p2}


def _run_fit(
    model: _Model,
    x1: NDArray,
    x2: NDArray,
    loss: NDArray,
    n_boot: int,
    seed: int,
    niter: int,
    boot_niter: int | None,
    delta: float,
) -> tuple[dict[str, float], list[dict[str, float]], float]:
    """Point estimate, bootstrap estimates (each refitted from the point estimate), objective."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be ≥ 0, got {n_boot}")
    rng = np.random.default_rng(seed)
    lx, ly = np.log(x1), np.log(x2)
    lx0, ly0 = float(lx.mean()), float(ly.mean())
    x, y = lx - lx0, ly - ly0
    th, fun = _fit_once(model, x, y, loss, _starts(model, x, y, loss), niter, delta, rng)
    params = _to_params(model, th, lx0, ly0)
    bn = max(niter // 4, 1) if boot_niter is None else boot_niter
    boots = []
    n = loss.size
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            tb, _ = _fit_once(model, x[idx], y[idx], loss[idx], [th], bn, delta, rng)
        except (ValueError, FloatingPointError):  # pragma: no cover - degenerate resample
            continue
        boots.append(_to_params(model, tb, lx0, ly0))
    return params, boots, fun


@contextlib.contextmanager
def _single_thread_blas() -> Iterator[None]:
    """Run OpenBLAS single-threaded for the duration (restored after), best effort.

    L-BFGS-B calls BLAS on 5 × 5 problems thousands of times per fit; a threaded OpenBLAS on a
    busy machine makes that 10–20× slower. This does what threadpoolctl would, without the
    dependency: find the loaded OpenBLAS copies (Linux /proc/self/maps) and set their thread
    count; anywhere that fails it is a no-op. The setting is process-wide while a fit runs.
    """
    restore: list[tuple[Any, int]] = []
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.rstrip().endswith(".so")})
        for path in libs:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("", "64_"):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        n = int(get())
                        if n > 1:
                            put(1)
                            restore.append((put, n))
                        break
    except Exception:  # pragma: no cover - platform without /proc or an unusual BLAS
        pass
    try:
        yield
    finally:
        for put, n in restore:
            put(n)


def _intervals(samples: dict[str, NDArray], ci: float) -> dict[str, tuple[float, float]]:
    lo, hi = 50.0 * (1.0 - ci), 50.0 * (1.0 + ci)
    return {
        k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v.size else (float("nan"), float("nan"))
        for k, v in samples.items()
    }


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "nan"


def _table(title: str, formula: str, fit: "_FitBase", rows: dict[str, float]) -> str:
    lo_pct, hi_pct = 50.0 * (1.0 - fit.ci), 50.0 * (1.0 + fit.ci)
    head = [
        title,
        f"  {formula}",
        f"  points {fit.n_points}   R² {fit.r2:.5f}   MRE {100 * fit.mre:.3f} %   "
        f"bootstrap {fit.n_boot} ({lo_pct:g}–{hi_pct:g} %)   Huber δ {fit.delta:g}",
        f"  {'':<14}{'estimate':>12}{f'{lo_pct:g} %':>12}{f'{hi_pct:g} %':>12}",
    ]
    for k, v in rows.items():
        lo, hi = fit.intervals.get(k, (float("nan"), float("nan")))
        head.append(f"  {k:<14}{_fmt(v):>12}{_fmt(lo):>12}{_fmt(hi):>12}")
    return "\n".join(head)


@dataclass(frozen=True)
class _FitBase:
    params: dict[str, float]
    derived: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # params and derived, percentile of the bootstrap
    bootstrap: dict[str, list[float]]  # per-sample estimates, params and derived
    r2: float
    mre: float
    n_points: int
    n_boot: int  # bootstrap fits that succeeded
    ci: float
    delta: float
    objective: float  # mean Huber(log residual)/δ at the estimate
    kind: str = field(default="", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (plain floats and lists)."""
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "derived": dict(self.derived),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "ci": self.ci,
            "r2": self.r2,
            "mre": self.mre,
            "n_points": self.n_points,
            "n_boot": self.n_boot,
            "huber_delta": self.delta,
            "objective": self.objective,
            "bootstrap": {k: list(v) for k, v in self.bootstrap.items()},
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


def _scaling_derived(p: dict[str, float]) -> dict[str, float]:
    a, b, A, B = p["a"], p["b"], p["A"], p["B"]
    tau = b / (a + b)
    return {
        "tau": tau,  # N*(C) ∝ C^τ
        "G": (b * B / (a * A)) ** tau,
        "dstar_coef": b * B / (a * A),  # D*(N) = dstar_coef·N^dstar_exp
        "dstar_exp": a / b,
    }


def _drift_derived(p: dict[str, float]) -> dict[str, float]:
    al, be, A, B = p["alpha"], p["beta"], p["A"], p["B"]
    return {"gamma": optimal_gamma(al, be), "G": (al * A / (be * B)) ** (1.0 / (al + be))}


def _assemble(cls: type, params, boots, fun, derive, pred, obs, ci, delta):
    derived = derive(params)
    samples = {k: np.array([bp[k] for bp in boots]) for k in params}
    dsamp = [derive(bp) for bp in boots]
    samples.update({k: np.array([d[k] for d in dsamp]) for k in derived})
    return cls(
        params=params,
        derived=derived,
        intervals=_intervals(samples, ci),
        bootstrap={k: [float(x) for x in v] for k, v in samples.items()},
        r2=r_squared(pred, obs),
        mre=mean_relative_error(pred, obs),
        n_points=int(obs.size),
        n_boot=len(boots),
        ci=ci,
        delta=delta,
        objective=fun,
    )


@dataclass(frozen=True)
class ScalingFit(_FitBase):
    """A fit of eq. 5.1; params E, A, B, a, b; derived τ, G, D*(N) = dstar_coef·N^dstar_exp."""

    kind: str = field(default="scaling", init=False)

    def predict(self, N: ArrayLike, D: ArrayLike) -> NDArray:
        p = self.params
        return scaling_loss(N, D, p["E"], p["A"], p["B"], p["a"], p["b"])

    def compute_optimal(self, C: ArrayLike) -> tuple[NDArray, NDArray]:
        """(N*(C), D*(C)) under C = 6·N·D."""
        p = self.params
        return compute_optimal(C, p["A"], p["B"], p["a"], p["b"])

    def optimal_tokens(self, N: ArrayLike) -> NDArray:
        """D*(N), the compute-optimal tokens for N non-embedding parameters."""
        p = self.params
        return compute_optimal_tokens(N, p["A"], p["B"], p["a"], p["b"])

    def format(self) -> str:
        return _table(
            "Scaling law (eq. 5.1)",
            "L(N, D) = E + (A·N^(−a/b) + B·D^(−1))^b;  D*(N) = dstar_coef·N^dstar_exp",
            self,
            {**self.params, **self.derived},
        )


@dataclass(frozen=True)
class DriftFit(_FitBase):
    """A fit of the §5.2 drift–horizon law; params E, A, B, alpha, beta; derived γ*, G."""

    kind: str = field(default="drift", init=False)

    def predict(self, logical_steps: ArrayLike, logical_batch: ArrayLike) -> NDArray:
        p = self.params
        return drift_loss(logical_steps, logical_batch, p["E"], p["A"], p["B"], p["alpha"], p["beta"])

    @property
    def gamma(self) -> float:
        return self.derived["gamma"]

    def optimal_split(self, D: ArrayLike, seq_len: float) -> tuple[NDArray, NDArray]:
        """(S̃*, B̃*) at token horizon D and sequence length L."""
        p = self.params
        return optimal_split(D, seq_len, p["A"], p["B"], p["alpha"], p["beta"])

    def format(self) -> str:
        return _table(
            "Drift–horizon fit (§5.2)",
            "loss = E + A·S̃^(−α) + B·B̃^(−β);  γ* = α/(α+β)",
            self,
            {**self.params, **self.derived},
        )


def fit(
    kind: str,
    x: ArrayLike,
    y: ArrayLike,
    loss: ArrayLike,
    n_boot: int = 20,
    seed: int = 0,
    *,
    niter: int = 100,
    boot_niter: int | None = None,
    ci: float = 0.90,
    delta: float = HUBER_DELTA,
) -> ScalingFit | DriftFit:
    """Fit law ``kind`` (``scaling``: eq. 5.1 on (N, D, loss); ``drift``: the §5.2 drift–horizon
    law on (S̃, B̃, loss)): basin hopping (``niter`` hops) + L-BFGS-B on a Huber loss of log
    residuals; ``n_boot`` bootstrap refits of ``boot_niter`` hops each (default ``niter // 4``);
    ``ci`` the interval mass."""
    if kind == "scaling":
        law, cls, derived, names = _SCALING, ScalingFit, _scaling_derived, ("N", "D", "loss")
    elif kind == "drift":
        law, cls, derived, names = _DRIFT, DriftFit, _drift_derived, ("logical_steps", "logical_batch", "loss")
    else:
        raise ValueError(f"unknown fit {kind!r} (scaling, drift)")
    x, y, loss = _validate(x, y, loss, names)
    with _single_thread_blas():
        params, boots, fun = _run_fit(law, x, y, loss, n_boot, seed, niter, boot_niter, delta)
    p = params
    pred = scaling_loss(x, y, **p) if kind == "scaling" else drift_loss(x, y, p["E"], p["A"], p["B"], p["alpha"], p["beta"])
    return _assemble(cls, params, boots, fun, derived, pred, loss, ci, delta)


def fit_scaling(N: ArrayLike, D: ArrayLike, loss: ArrayLike, **options: Any) -> ScalingFit:
    """Fit eq. 5.1 to (N, D, loss) points (``options``: those of :func:`fit`)."""
    return fit("scaling", N, D, loss, **options)


def fit_drift(logical_steps: ArrayLike, logical_batch: ArrayLike, loss: ArrayLike, **options: Any) -> DriftFit:
    """Fit the §5.2 drift–horizon law to (S̃, B̃, loss) points (``options``: those of :func:`fit`)."""
    return fit("drift", logical_steps, logical_batch, loss, **options)
