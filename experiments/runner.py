"""The paper's experiments as commands: ``trimodal experiment run SPEC`` and ``experiment fit``.

``experiment run`` expands a spec (:mod:`trimodal.experiments.spec`) into runs and trains them
one after another on this machine, each in its own ``python -m trimodal.cli train`` process
started in the run's folder: a crash is recorded (``status.json``: the last line of stderr) and
the next run goes on. A re-run skips every run of the same config whose final eval (or final
checkpoint) is in its log and starts the others afresh. ``--print-commands`` writes the configs
and prints one launcher line per run still to do (torchrun, or sbatch with ``--launcher
slurm``) instead of running anything. Either way the results of the finished runs are then
collected into ``results.csv``, ``report.md`` and PNG plots (:mod:`trimodal.experiments.report`).

``experiment fit scaling|drift RESULTS.csv`` fits eq. 5.1 or the §5.2 law
(:mod:`trimodal.experiments.fits`) to the rows whose status is ok.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from trimodal import storage
from trimodal.config import ConfigError, from_dict, option
from trimodal.experiments import results as R
from trimodal.experiments.spec import POINT_COLUMNS, ExperimentSpec, RunPoint, expand, load_spec, run_config


@dataclass
class RunSpecConfig:
    spec: str = option("", help="the experiment spec (YAML, JSON or TOML)")
    print_commands: bool = option(False, help="write the configs and print one launcher line per run; run nothing")
    launcher: Literal["torchrun", "slurm"] = option("torchrun", help="the launcher of --print-commands lines")
    nproc_per_node: int = option(1, help="processes (GPUs) per node in printed commands")
    nodes: int = option(1, help="nodes per run in printed slurm commands")
    slurm_args: list[str] = option(default_factory=list, cli=False, help="extra sbatch options (e.g. --partition=gpu)")
    threads: int = option(1, help="OMP_NUM_THREADS of each local run")
    timeout: float = option(0.0, help="seconds a local run may take before it is stopped and recorded as failed (0: none)")
    collect_only: bool = option(False, help="run nothing: rebuild results.csv, report.md and plots from the run folders")

    def __post_init__(self) -> None:
        if not self.spec:
            raise ValueError("give the spec file: trimodal experiment run SPEC")
        if self.nproc_per_node < 1 or self.nodes < 1 or self.threads < 1:
            raise ValueError("nproc_per_node, nodes and threads must be >= 1")


@dataclass
class FitConfig:
    kind: str = option("", help="scaling (eq. 5.1: N, D) or drift (§5.2: logical_steps, logical_batch)")
    results: str = option("", help="results.csv of an experiment (or any CSV with the law's columns)")
    loss_column: str = option("loss", help="the column fitted")
    n_boot: int = option(20, help="bootstrap resamples (the paper used 20)")
    niter: int = option(100, help="basin-hopping hops of the main fit")
    seed: int = option(0, help="seed of basin hopping and the bootstrap")
    ci: float = option(0.9, help="mass of the bootstrap intervals")
    json: bool = option(False, help="print one JSON object")

    def __post_init__(self) -> None:
        if self.kind not in ("scaling", "drift"):
            raise ValueError(f"unknown fit kind {self.kind!r}: give scaling or drift (trimodal experiment fit KIND RESULTS)")
        if not self.results:
            raise ValueError("give the results CSV: trimodal experiment fit KIND RESULTS")


# ---- a spec's runs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    run: RunPoint
    folder: str
    config: dict[str, Any]
    config_hash: str
    batch_size: int
    seq_len: int


def config_hash(cfg: dict[str, Any]) -> str:
    """What "the same run" means on a re-run: the same full config, wherever its folder is
    (``run.out_dir`` left out, so a moved experiment folder is still recognised)."""
    cfg = {**cfg, "run": {k: v for k, v in (cfg.get("run") or {}).items() if k != "out_dir"}}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(spec: ExperimentSpec) -> list[PlannedRun]:
    """Every run's folder and full config, each checked by the train config's own rules before
    anything runs (an unknown key in ``base`` names the key)."""
    from trimodal.train.trainer import TrainConfig

    try:
        base = from_dict(TrainConfig, json.loads(json.dumps(spec.base)), prefix="base")
    except ConfigError as e:
        raise ConfigError(f"spec {spec.name}: {e}") from None
    runs_dir = os.path.join(os.path.abspath(spec.out), "runs")
    out = []
    for run in expand(spec, base.data.seq_len, base.run.batch_size):
        folder = os.path.join(runs_dir, run.name)
        cfg = run_config(spec, run, folder)
        try:
            tc = from_dict(TrainConfig, cfg, prefix="base")
        except ConfigError as e:
            raise ConfigError(f"spec {spec.name}: run {run.name}: {e}") from None
        out.append(PlannedRun(run, folder, cfg, config_hash(cfg), tc.run.batch_size, tc.data.seq_len))
    return out


def write_run_files(p: PlannedRun) -> str:
    """``config.json`` (the train config) and ``experiment.json`` (its grid point) of a run."""
    os.makedirs(p.folder, exist_ok=True)
    path = os.path.join(p.folder, "config.json")
    storage.write_atomic(path, json.dumps(p.config, indent=1, sort_keys=True).encode())
    exp = {"name": p.run.name, "point": p.run.point, "seed": p.run.seed, "config_hash": p.config_hash,
           "batch_size": p.batch_size, "seq_len": p.seq_len}
    storage.write_atomic(os.path.join(p.folder, R.EXPERIMENT_FILE), json.dumps(exp, indent=1, sort_keys=True).encode())
    status = os.path.join(p.folder, R.STATUS_FILE)
    if os.path.exists(status):
        os.remove(status)
    return path


# ---- running ----------------------------------------------------------------------------------------
def failure_reason(stderr: str, returncode: int) -> str:
    """The line that says why: the CLI's ``error: …`` line if any, else the last non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"exit status {returncode}"


def run_local(p: PlannedRun, threads: int, timeout: float) -> dict[str, Any]:
    """Train one run in a subprocess started in its folder (not the repository root: there
    ``python -m`` would import the source folders as top-level packages); returns its status."""
    cfg_path = write_run_files(p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "trimodal.cli", "train", "--config", cfg_path]
    t0 = time.perf_counter()
    out_path, err_path = os.path.join(p.folder, "stdout.log"), os.path.join(p.folder, "stderr.log")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        try:
            rc = subprocess.run(cmd, cwd=p.folder, stdout=out, stderr=err, env=env, timeout=timeout or None).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = -9, True
    seconds = time.perf_counter() - t0
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    finished = R.is_finished(p.folder, p.config_hash)
    if rc == 0 and finished:
        status = {"status": "ok", "reason": ""}
    elif timed_out:
        status = {"status": "failed", "reason": f"timed out after {timeout:g} s"}
    elif rc == 0:
        status = {"status": "failed", "reason": "exited 0 without a final eval or checkpoint in its log"}
    else:
        status = {"status": "failed", "reason": failure_reason(stderr, rc)}
    status.update(returncode=rc, seconds=round(seconds, 2), config_hash=p.config_hash)
    storage.write_atomic(os.path.join(p.folder, R.STATUS_FILE), json.dumps(status, indent=1, sort_keys=True).encode())
    return status


def launch_line(cfg_path: str, folder: str, name: str, launcher: str, nproc: int, nodes: int,
                slurm_args: list[str]) -> str:
    """One shell line that trains the run on a cluster (started in its folder, like local runs).
    It resumes rather than overwrites (``--auto-resume``): a requeued or preempted job continues
    from its last checkpoint instead of starting again at step 0."""
    q = shlex.quote
    train = f"-m trimodal.cli train --config {q(cfg_path)} --set run.overwrite=false --auto-resume"
    if launcher == "torchrun":
        return f"cd {q(folder)} && torchrun --standalone --nproc-per-node={nproc} {train}"
    if nodes == 1:
        inner = f"torchrun --standalone --nproc-per-node={nproc} {train}"
    else:
        inner = (f"srun --kill-on-bad-exit=1 torchrun --nnodes={nodes} --nproc-per-node={nproc} --rdzv-backend=c10d "
                 f"--rdzv-id=$SLURM_JOB_ID --rdzv-endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500 "
                 f"{train}")
    opts = [f"--job-name={q(name)}", f"--chdir={q(folder)}", f"--output={q(os.path.join(folder, 'slurm-%j.out'))}",
            f"--nodes={nodes}", "--ntasks-per-node=1", f"--gpus-per-node={nproc}", *(q(a) for a in slurm_args)]
    return f"sbatch {' '.join(opts)} --wrap={q(inner)}"


def source_tasks(spec_base: dict[str, Any]) -> dict[str, str]:
    """Evaluation source name → task (its manifest's modality), for the per-task columns."""
    from trimodal.shards.loader.sources import default_name
    from trimodal.shards.manifest import Manifest

    data = spec_base.get("data", {}) if isinstance(spec_base, dict) else {}
    evals = (spec_base.get("eval", {}) or {}).get("sources") or data.get("sources") or []
    out = {}
    for s in evals:
        root = s.get("root") if isinstance(s, dict) else None
        if not root:
            continue
        try:
            out[s.get("name") or default_name(root)] = Manifest.load(root).modality
        except (FileNotFoundError, ValueError):
            continue
    return out


def collect(spec: ExperimentSpec, planned: list[PlannedRun]) -> list[dict[str, Any]]:
    tasks = source_tasks(planned[0].config if planned else spec.base)
    return [R.read_run(p.folder, tasks) for p in planned]


def score_runs(spec: ExperimentSpec, planned: list[PlannedRun]) -> Iterator[str]:
    """The ``generate:`` section: sample from and score every finished run not scored yet."""
    from trimodal.experiments.scoring import GENERATE_DIR, reference_once, score_run
    from trimodal.experiments.spec import generate_of

    gen = generate_of(spec)
    if gen is None:
        return
    todo = [p for p in planned if R.is_finished(p.folder, p.config_hash)
            and not os.path.exists(os.path.join(p.folder, GENERATE_DIR, "metrics.json"))]
    if not todo:
        return
    metrics = reference_once(gen.metrics, os.path.abspath(spec.out))
    for i, p in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            result = score_run(p.folder, gen, metrics)
        except (ValueError, FileNotFoundError, RuntimeError) as e:  # one run's failure does not stop the others
            yield f"[score {i}/{len(todo)}] {p.run.name}: FAILED: {e}"
            continue
        vals = ", ".join(f"{k} {v:.4f}" for res in result["metrics"].values() for k, v in res.items()
                         if k in ("fid", "clip_score", "wer", "fad"))
        yield f"[score {i}/{len(todo)}] {p.run.name}: {vals or 'samples only'} ({time.perf_counter() - t0:.0f} s)"


def run_experiment(cfg: RunSpecConfig) -> Iterator[str]:
    """Run (or print) the spec's runs, then write the results; yields progress lines."""
    from trimodal.experiments.report import write_report

    spec = load_spec(cfg.spec)
    if spec.kind == "sampling":  # no training: sample from one checkpoint and score
        from trimodal.experiments.sampling import run_sampling

        yield from run_sampling(spec)
        return
    planned = plan(spec)
    finished = [p for p in planned if R.is_finished(p.folder, p.config_hash)]
    todo = [p for p in planned if p not in finished]
    yield f"experiment {spec.name} ({spec.kind}): {len(planned)} runs, {len(finished)} finished, {len(todo)} to run"
    if cfg.print_commands:
        for p in todo:
            yield launch_line(write_run_files(p), p.folder, f"{spec.name}-{p.run.name}", cfg.launcher,
                              cfg.nproc_per_node, cfg.nodes, cfg.slurm_args)
        return
    if not cfg.collect_only:
        for i, p in enumerate(todo, 1):
            st = run_local(p, cfg.threads, cfg.timeout)
            what = "ok" if st["status"] == "ok" else f"FAILED: {st['reason']}"
            yield f"[{i}/{len(todo)}] {p.run.name}: {what} ({st['seconds']:.0f} s)"
        yield from score_runs(spec, planned)
    rows = collect(spec, planned)
    folder = os.path.abspath(spec.report or spec.out)
    for path in write_report(spec, rows, folder, POINT_COLUMNS[spec.kind], cfg.spec):
        yield f"wrote {path}"
    failed = [r for r in rows if r["status"] == "failed"]
    ok = sum(r["status"] == "ok" for r in rows)
    yield f"{ok} ok, {len(failed)} failed, {len(rows) - ok - len(failed)} pending"
    for r in failed:
        yield f"  failed {r['name']}: {r['reason']}"


# ---- fits ------------------------------------------------------------------------------------------
def fit_points(path: str, kind: str, loss_column: str) -> tuple[list[float], list[float], list[float]]:
    """The (x1, x2, loss) columns of the law from the rows with status ok (all rows of a CSV
    without a status column), skipping rows without a loss; a missing column is named."""
    import csv

    from trimodal.experiments.fits import CSV_COLUMNS

    cols = (*CSV_COLUMNS[kind], loss_column)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in cols if c not in header]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {missing} for the {kind} fit; found {header}")
            rows = [r for r in reader if ("status" not in header or r["status"] == "ok") and (r[loss_column] or "").strip()]
    except FileNotFoundError:
        raise ConfigError(f"results file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give its results.csv") from None
    values: list[list[float]] = [[], [], []]
    for r in rows:
        for j, c in enumerate(cols):
            try:
                values[j].append(float(r[c]))
            except ValueError:
                raise ConfigError(f"{path}: column {c!r}: not a number {r[c]!r} (run {r.get('name', '?')})") from None
    return values[0], values[1], values[2]


def run_fit(cfg: FitConfig) -> Iterator[str]:
    from trimodal.experiments import fits

    x1, x2, loss = fit_points(cfg.results, cfg.kind, cfg.loss_column)
    need = fits.N_PARAMS + 1
    if len(loss) < need:
        raise ConfigError(f"{cfg.results}: too few points for the {cfg.kind} fit: {len(loss)} usable row(s) (status ok, "
                          f"with {cfg.loss_column}), need at least {need} ({fits.N_PARAMS} free parameters + 1)")
    try:
        fit = fits.fit(cfg.kind, x1, x2, loss, n_boot=cfg.n_boot, seed=cfg.seed, niter=cfg.niter, ci=cfg.ci)
    except ValueError as e:  # the data checks name the column and row; say which file
        raise ConfigError(f"{cfg.results}: {e}") from None
    extra: dict[str, Any] = {}
    if cfg.kind == "scaling":
        Ns = sorted(set(x1))
        Cs = sorted({6 * n * d for n, d in zip(x1, x2)})
        n_opt, d_opt = fit.compute_optimal(Cs)
        extra["D_star_of_N"] = {f"{n:.6g}": float(fit.optimal_tokens(n)) for n in Ns}
        extra["N_star_D_star_of_C"] = {f"{c:.6g}": [float(a), float(b)] for c, a, b in zip(Cs, n_opt, d_opt)}
    if cfg.json:
        yield json.dumps({**fit.to_dict(), "points": len(loss), "results": cfg.results, "loss_column": cfg.loss_column,
                          **extra}, sort_keys=True)
        return
    yield f"{cfg.results}: {len(loss)} points, loss column {cfg.loss_column!r}"
    yield fit.format()
    if cfg.kind == "scaling":
        p = fit.params
        yield f"  D*(N) = {fit.derived['dstar_coef']:.4g}·N^{fit.derived['dstar_exp']:.4g}"
        for n, d in extra["D_star_of_N"].items():
            yield f"    N = {n:>10}: D*(N) = {d:.4g} tokens ({d / float(n):.3g} tokens per parameter)"
        yield f"  N*(C) ∝ C^{fit.derived['tau']:.4g}, D*(C) ∝ C^{1 - fit.derived['tau']:.4g}  (E = {p['E']:.4g})"
        for c, (n, d) in extra["N_star_D_star_of_C"].items():
            yield f"    C = {c:>10}: N* = {n:.4g}, D* = {d:.4g}"
    else:
        lo, hi = fit.intervals.get("gamma", (float("nan"), float("nan")))
        yield f"  γ* = {fit.gamma:.4g} ({100 * cfg.ci:g} % interval {lo:.4g}–{hi:.4g}): logical batch B̃* ∝ D^γ*"


def main(cfg: RunSpecConfig | FitConfig) -> Iterator[str]:
    """The lines to print, as they come (a long experiment reports each run when it ends)."""
    return run_fit(cfg) if isinstance(cfg, FitConfig) else run_experiment(cfg)
