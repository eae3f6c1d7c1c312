"""Experiment specs: the file format, its checks, and the expansion of a grid into runs.

A spec file (YAML, JSON or TOML) holds::

    kind: batch-size | mixing | schedule | scaling | sampling | anti-masking
    out: runs/experiments/batch_size   # runs/<name>/ of every run, results.csv, report.md, plots
    report: experiments/results/batch_size   # optional: where results.csv, report.md, plots go
    seeds: [0, 1]
    base: {...}   # a train config: the keys of `trimodal train --config`
    grid: {...}   # what varies; the keys depend on the kind (the *Grid dataclasses below)
    generate: {...}   # optional, training kinds: sample from every run and score the samples
                      # (FID, CLIP score, WER, FAD; :mod:`trimodal.experiments.scoring`)

Every run is ``base`` plus the run's overrides (dotted keys) plus ``run.seed``; relative paths
in the spec (``out``, ``report``, dataset roots) are taken from the folder the command runs in,
like every other command's. Unknown kinds and keys are errors that name them (the
:mod:`trimodal.config` machinery).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

from trimodal import storage
from trimodal.config import ConfigError, from_dict, load_file, option, set_path
from trimodal.train.schedules import SCHEDULES

KINDS = ("batch-size", "mixing", "schedule", "scaling", "sampling", "anti-masking")
RULES = ("sde", "none")
CLIPS = ("fixed", "scaled", "off")
TASKS = ("text", "image_text", "audio_text")


@dataclass
class ExperimentSpec:
    kind: str = option("", help=f"one of {', '.join(KINDS)}")
    out: str = option("", help="experiment folder: runs/<run>/, results.csv, report.md, plots")
    base: dict[str, Any] = option(default_factory=dict, help="the train config every run starts from")
    grid: dict[str, Any] = option(default_factory=dict, help="the values to vary (kind-specific keys)")
    seeds: list[int] = option(default_factory=lambda: [0], help="one run per grid point and seed")
    report: str | None = option(None, help="folder of results.csv, report.md and plots (default: out)")
    name: str | None = option(None, help="title of the report (default: the spec file's name)")
    generate: dict[str, Any] | None = option(None, help="score every run's samples (experiments/scoring.py keys)")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown experiment kind {self.kind!r} (known: {', '.join(KINDS)})")
        if not self.out:
            raise ValueError("out: give the experiment folder")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: give distinct seeds, got {self.seeds}")


@dataclass
class BatchSizeGrid:
    """Physical batch B at one or several fixed token horizons D, with and without the SDE rule
    (paper §5.1), optionally under several gradient-clipping treatments.

    ``clip`` (optional) sweeps the clipping: ``fixed`` keeps ``optim.grad_clip`` at every B
    (``reparam.grad_clip_rule = none``), ``scaled`` multiplies it by 1/√κ
    (``reparam.grad_clip_rule = inv_sqrt_kappa``), ``off`` sets ``optim.grad_clip = 0``. A fixed
    threshold is a confound of the batch-size study: the gradient-noise norm falls like 1/√B, so
    one threshold clips small-B runs far more often than large-B ones."""

    batch_sizes: list[int] = option(default_factory=list, help="physical batch sizes B")
    tokens: float | list[float] = option(0.0, help="token horizon D (positions: steps·B·L), or a list of horizons")
    rules: list[str] = option(default_factory=lambda: list(RULES),
                              help="sde: reparam.tokens = D; none: reparam off, run.steps = D/(B·L)")
    clip: list[str] = option(default_factory=list,
                             help="clipping treatments among fixed, scaled, off (empty: the base config's, unnamed)")
    evals: int = option(4, help="evaluations per run (eval.every = steps // evals; 0: keep base eval.every)")

    @property
    def horizons(self) -> list[float]:
        """The token horizons as a list (one number given: a list of one)."""
        return [float(t) for t in (self.tokens if isinstance(self.tokens, list) else [self.tokens])]

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes: give positive batch sizes, got {self.batch_sizes}")
        if not self.horizons or any(not t > 0 for t in self.horizons):
            raise ValueError(f"tokens: give the token horizon D > 0 (or a list of them), got {self.tokens}")
        if len(set(self.horizons)) != len(self.horizons):
            raise ValueError(f"tokens: give distinct token horizons, got {self.tokens}")
        bad_clip = [c for c in self.clip if c not in CLIPS]
        if bad_clip:
            raise ValueError(f"clip: unknown treatment {bad_clip[0]!r} (known: {', '.join(CLIPS)})")
        if len(set(self.clip)) != len(self.clip):
            raise ValueError(f"clip: give distinct treatments, got {self.clip}")
        if not self.rules:
            raise ValueError(f"rules: give at least one of {', '.join(RULES)}")
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise ValueError(f"rules: unknown rule {bad[0]!r} (known: {', '.join(RULES)})")
        if self.evals < 0:
            raise ValueError(f"evals must be >= 0, got {self.evals}")


@dataclass
class MixingGrid:
    """Task weights of ``data.task_weights`` (paper §7.2): explicit ``weights`` or every point of
    the simplex on a lattice of ``step`` with each weight at least ``min_weight``."""

    weights: list[dict[str, float]] = option(default_factory=list, help="explicit points {task: weight}")
    step: float = option(0.2, help="lattice step of the enumerated simplex")
    min_weight: float = option(0.2, help="smallest weight of any task")
    tasks: list[str] = option(default_factory=lambda: list(TASKS), help="the tasks mixed")

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or len(self.tasks) < 2:
            raise ValueError(f"tasks: give at least two of {', '.join(TASKS)}, got {self.tasks}")
        if not 0 < self.step <= 1 or abs(1 / self.step - round(1 / self.step)) > 1e-6:
            raise ValueError(f"step must divide 1, got {self.step}")
        for i, w in enumerate(self.weights):
            unknown = sorted(set(w) - set(self.tasks))
            if unknown:
                raise ValueError(f"weights[{i}]: unknown task {unknown[0]!r} (known: {', '.join(self.tasks)})")
            if set(w) != set(self.tasks) or abs(sum(w.values()) - 1) > 1e-6:
                raise ValueError(f"weights[{i}]: give a weight to each of {self.tasks}, summing to 1; got {w}")
            if min(w.values()) < self.min_weight - 1e-9:
                raise ValueError(f"weights[{i}]: every weight must be >= min_weight {self.min_weight}; got {w}")


@dataclass
class ScheduleGrid:
    """The masking schedule ``objective.schedule.name`` (paper App. F)."""

    schedules: list[str] = option(default_factory=lambda: list(SCHEDULES), help="schedules compared")

    def __post_init__(self) -> None:
        if not self.schedules:
            raise ValueError(f"schedules: give at least one of {', '.join(SCHEDULES)}")
        bad = [s for s in self.schedules if s not in SCHEDULES]
        if bad:
            raise ValueError(f"schedules: unknown schedule {bad[0]!r} (known: {', '.join(SCHEDULES)})")


@dataclass
class ScalingGrid:
    """Model sizes on the ladder (width = width_per_depth·depth, heads = depth) × token
    horizons (paper §5.3)."""

    depths: list[int] = option(default_factory=list, help="ladder depths (blocks)")
    tokens: list[float] = option(default_factory=list, help="token horizons D")
    width_per_depth: int = option(128, help="width per block of depth (paper 128: head dim 128)")

    def __post_init__(self) -> None:
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths: give positive depths, got {self.depths}")
        if not self.tokens or any(not t > 0 for t in self.tokens):
            raise ValueError(f"tokens: give positive token horizons, got {self.tokens}")
        if self.width_per_depth < 2 or self.width_per_depth % 2:
            raise ValueError(f"width_per_depth must be even and >= 2, got {self.width_per_depth}")


@dataclass
class AntiMaskingGrid:
    """Training with and without the complementary mask draw ``objective.anti_mask`` (paper §7.4)."""

    anti_mask: list[bool] = option(default_factory=lambda: [False, True], help="values of objective.anti_mask")

    def __post_init__(self) -> None:
        if not self.anti_mask or len(set(self.anti_mask)) != len(self.anti_mask):
            raise ValueError(f"anti_mask: give distinct values among false, true; got {self.anti_mask}")


def _sampling_grid() -> type:
    from trimodal.experiments.sampling import SamplingGrid

    return SamplingGrid


class _Grids(dict):
    """The sampling grid's module imports the generation job: loaded when asked for."""

    def __getitem__(self, kind: str) -> type:
        return _sampling_grid() if kind == "sampling" else super().__getitem__(kind)


GRIDS: dict[str, type] = _Grids({"batch-size": BatchSizeGrid, "mixing": MixingGrid, "schedule": ScheduleGrid,
                                 "scaling": ScalingGrid, "anti-masking": AntiMaskingGrid})
POINT_COLUMNS: dict[str, tuple[str, ...]] = {
    "batch-size": ("rule", "clip", "tokens_target", "batch_size"),
    "mixing": tuple(f"weight_{t}" for t in TASKS),
    "schedule": ("schedule",),
    "scaling": ("depth", "tokens_target"),
    "anti-masking": ("anti_mask",),
    "sampling": ("task", "setting", "value"),
}


@dataclass(frozen=True)
class RunPoint:
    """One run: its folder name, the grid values (report columns), seed and config overrides."""

    name: str
    point: dict[str, Any]
    seed: int
    overrides: dict[str, Any]


# ---- loading ------------------------------------------------------------------------------------
def load_spec(path: str) -> ExperimentSpec:
    """Parse and check a spec file; the grid is checked against its kind's dataclass."""
    try:
        spec = from_dict(ExperimentSpec, load_file(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if spec.name is None:
        spec.name = os.path.splitext(os.path.basename(path))[0]
    grid_of(spec, where=path)
    generate_of(spec, where=path)
    return spec


def grid_of(spec: ExperimentSpec, where: str = "spec") -> Any:
    try:
        return from_dict(GRIDS[spec.kind], spec.grid, prefix="grid")
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(f"{where}: {msg if msg.startswith(('unknown config key', 'grid')) else 'grid: ' + msg}") from None


def generate_of(spec: ExperimentSpec, where: str = "spec") -> Any:
    """The spec's ``generate:`` section checked (None when absent); a sampling spec has its own."""
    if spec.generate is None:
        return None
    if spec.kind == "sampling":
        raise ConfigError(f"{where}: generate: a sampling spec scores its points already (grid.metrics)")
    from trimodal.experiments.scoring import GenerateSpec

    try:
        return from_dict(GenerateSpec, spec.generate, prefix="generate")
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(f"{where}: {msg if msg.startswith(('unknown config key', 'generate')) else 'generate: ' + msg}") from None


# ---- pure helpers ---------------------------------------------------------------------------------
def steps_for(tokens: float, batch: int, seq_len: int) -> int:
    """S = D/(B·L) rounded half up, as the reparameterisation rounds it (at least 1)."""
    return max(1, math.floor(tokens / (batch * seq_len) + 0.5))


def simplex_points(tasks: list[str], step: float, min_weight: float) -> list[dict[str, float]]:
    """Every weight vector on the lattice of ``step`` with each weight >= ``min_weight``."""
    k = round(1 / step)
    m = math.ceil(min_weight / step - 1e-9)
    out: list[dict[str, float]] = []

    def rec(prefix: list[int], left: int, slots: int) -> None:
        if slots == 1:
            if left >= m:
                out.append({t: round(u * step, 10) for t, u in zip(tasks, prefix + [left])})
            return
        for u in range(left - m * (slots - 1), m - 1, -1):
            rec(prefix + [u], left - u, slots - 1)

    rec([], k, len(tasks))
    return out


def _short(task: str) -> str:
    return {"text": "t", "image_text": "i", "audio_text": "a"}.get(task, task)


def _num(x: float) -> str:
    return f"{x:g}".replace("+", "")


def _tokens_tag(x: float) -> str:
    """A horizon in a run name, exactly (2^20 → 1048576, not 1.04858e06)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


CLIP_OVERRIDES: dict[str, dict[str, Any]] = {
    "fixed": {"reparam.grad_clip_rule": "none"},
    "scaled": {"reparam.grad_clip_rule": "inv_sqrt_kappa"},
    "off": {"optim.grad_clip": 0.0},
}


def base_clip(base: dict[str, Any]) -> str:
    """The clipping treatment a base config already gives (the ``clip`` column when the grid
    does not sweep it)."""
    if not float(base_value(base, "optim.grad_clip", 1.0) or 0.0) > 0:
        return "off"
    return "scaled" if base_value(base, "reparam.grad_clip_rule", "none") == "inv_sqrt_kappa" else "fixed"


def base_value(base: dict[str, Any], dotted: str, default: Any) -> Any:
    node: Any = base
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    set_path(data, dotted.split("."), value, f"base.{dotted}")


# ---- expansion -------------------------------------------------------------------------------------
def expand(spec: ExperimentSpec, seq_len: int, batch_size: int) -> list[RunPoint]:
    """Every run of the spec, seeds innermost. ``seq_len`` and ``batch_size`` are the base
    config's (resolved with defaults), needed where steps follow from D = S·B·L."""
    grid = grid_of(spec)
    points: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    if spec.kind == "batch-size":
        # names: <rule>-B<b>[-D<tokens>][-<clip>]; the D and clip parts only where the spec lists
        # them, so the runs of a single-horizon spec keep their names (and are found on a re-run)
        many_d = isinstance(grid.tokens, list)
        if grid.clip and float(base_value(spec.base, "optim.grad_clip", 1.0) or 0.0) <= 0:
            named = [c for c in grid.clip if c != "off"]
            if named:
                raise ConfigError(f"spec {spec.name}: grid.clip {named[0]!r} needs base optim.grad_clip > 0 "
                                  "(the threshold it keeps or scales)")
        for rule in grid.rules:
            for clip in grid.clip or [base_clip(spec.base)]:
                for tokens in grid.horizons:
                    for b in grid.batch_sizes:
                        steps = steps_for(tokens, b, seq_len)
                        ov: dict[str, Any] = {"run.batch_size": b}
                        if rule == "sde":
                            ov["reparam.tokens"] = float(tokens)
                        else:
                            ov.update({"reparam.tokens": 0.0, "run.steps": steps})
                        if grid.clip:
                            ov.update(CLIP_OVERRIDES[clip])
                        if grid.evals:
                            ov["eval.every"] = max(1, steps // grid.evals)
                        name = f"{rule}-B{b}" + (f"-D{_tokens_tag(tokens)}" if many_d else "") + \
                            (f"-{clip}" if grid.clip else "")
                        points.append((name, {"rule": rule, "clip": clip, "tokens_target": float(tokens),
                                              "batch_size": b}, ov))
    elif spec.kind == "mixing":
        for w in grid.weights or simplex_points(grid.tasks, grid.step, grid.min_weight):
            name = "-".join(f"{_short(t)}{_num(w[t])}" for t in grid.tasks)
            points.append((name, {f"weight_{t}": w.get(t, 0.0) for t in TASKS},
                           {"data.task_weights": {t: float(w[t]) for t in grid.tasks}}))
    elif spec.kind == "schedule":
        for s in grid.schedules:
            points.append((s, {"schedule": s}, {"objective.schedule.name": s}))
    elif spec.kind == "anti-masking":
        for a in grid.anti_mask:
            points.append(("anti" if a else "plain", {"anti_mask": bool(a)}, {"objective.anti_mask": bool(a)}))
    elif spec.kind == "sampling":
        raise ConfigError("a sampling spec trains nothing: `trimodal experiment run` samples from its checkpoint")
    else:
        reparam_on = float(base_value(spec.base, "reparam.tokens", 0.0) or 0.0) > 0
        for d in grid.depths:
            for tokens in grid.tokens:
                ov = {"model.dim": grid.width_per_depth * d, "model.n_layers": d, "model.n_heads": d}
                ov.update({"reparam.tokens": float(tokens)} if reparam_on
                          else {"run.steps": steps_for(tokens, batch_size, seq_len)})
                points.append((f"d{d}-D{_num(tokens)}", {"depth": d, "tokens_target": float(tokens)}, ov))
    if not points:
        raise ConfigError(f"spec {spec.name}: its grid gives no runs (check the grid's values: {spec.grid})")
    return [RunPoint(f"{name}-s{seed}", point, seed, ov) for name, point, ov in points for seed in spec.seeds]


def run_config(spec: ExperimentSpec, run: RunPoint, run_dir: str) -> dict[str, Any]:
    """The full train config of one run (what goes to ``<run>/config.json``): base, the run's
    overrides, its seed and folder; dataset roots made absolute (runs start in their folder)."""
    cfg = copy.deepcopy(spec.base)
    for key, value in run.overrides.items():
        set_dotted(cfg, key, copy.deepcopy(value))
    for key, value in {"run.seed": run.seed, "run.out_dir": run_dir, "run.overwrite": True, "run.resume": False,
                       "run.progress": False}.items():
        set_dotted(cfg, key, value)
    for section in ("data", "eval"):
        for src in base_value(cfg, f"{section}.sources", []) or []:
            if isinstance(src, dict) and isinstance(src.get("root"), str):
                src["root"] = storage.absolute(src["root"])
    return cfg
