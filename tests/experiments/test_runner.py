"""``trimodal experiment run`` / ``experiment fit``: spec checks and grid expansion per kind,
resuming a half-finished experiment, a failing run recorded while the others go on, printed
launcher lines, a 2-point batch-size experiment end to end through the CLI on a tiny synthetic
dataset, and the fits on a synthetic results.csv."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from trimodal.config import ConfigError, from_dict
from trimodal.experiments import analysis, runner
from trimodal.experiments import results as R
from trimodal.experiments import spec as S
from trimodal.experiments.synthetic import SyntheticConfig, write_synthetic

L = 96


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(SyntheticConfig(out=str(out), text_docs=300, image_samples=80, audio_samples=80,
                                           val_fraction=0.2, samples_per_shard=200))


def tiny_base(data: dict[str, str], **run: object) -> dict:
    return {
        "model": {"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": L},
        "data": {"sources": [{"root": r} for r in data.values()], "seq_len": L, "num_streams": 1},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "weight_decay": 0.0},
        "eval": {"every": 2, "rows": 3, "t_levels": 2, "batch_size": 4},
        "log": {"tensorboard": False},
        "run": {"device": "cpu", "ckpt_every": 0, "log_every": 1, "keep_last": 1, **run},
    }


def write_spec(folder: Path, kind: str, grid: dict, base: dict, seeds=(0,), **extra) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"kind": kind, "out": str(folder / "exp"), "seeds": list(seeds), "base": base,
                                    "grid": grid, **extra}))
    return str(path)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimodal.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- grid expansion ---------------------------------------------------------------------------------
def _spec(kind: str, grid: dict, base: dict | None = None, seeds=(0, 1)) -> S.ExperimentSpec:
    return from_dict(S.ExperimentSpec, {"kind": kind, "out": "x", "grid": grid, "seeds": list(seeds), "base": base or {}})


def test_expand_batch_size_both_rules():
    runs = S.expand(_spec("batch-size", {"batch_sizes": [4, 16], "tokens": 65536, "evals": 2}), seq_len=128,
                    batch_size=8)
    assert [r.name for r in runs] == ["sde-B4-s0", "sde-B4-s1", "sde-B16-s0", "sde-B16-s1",
                                      "none-B4-s0", "none-B4-s1", "none-B16-s0", "none-B16-s1"]
    sde, none = runs[0], runs[6]
    assert sde.overrides == {"run.batch_size": 4, "reparam.tokens": 65536.0, "eval.every": 64}
    assert none.overrides == {"run.batch_size": 16, "reparam.tokens": 0.0, "run.steps": 32, "eval.every": 16}
    assert none.point == {"rule": "none", "clip": "fixed", "tokens_target": 65536.0, "batch_size": 16}
    assert none.seed == 0


def test_expand_batch_size_horizons_and_clipping():
    """A list of horizons and a clipping sweep name their runs by D and treatment; one horizon
    given as a number keeps the names of a single-horizon spec."""
    grid = {"batch_sizes": [4, 8], "tokens": [65536, 131072], "rules": ["sde"], "clip": ["fixed", "scaled", "off"]}
    runs = S.expand(_spec("batch-size", grid, seeds=(0,)), seq_len=128, batch_size=8)
    assert [r.name for r in runs[:4]] == ["sde-B4-D65536-fixed-s0", "sde-B8-D65536-fixed-s0",
                                          "sde-B4-D131072-fixed-s0", "sde-B8-D131072-fixed-s0"]
    assert len(runs) == 12
    by = {r.name: r for r in runs}
    assert by["sde-B8-D131072-scaled-s0"].overrides == {"run.batch_size": 8, "reparam.tokens": 131072.0,
                                                        "reparam.grad_clip_rule": "inv_sqrt_kappa", "eval.every": 32}
    assert by["sde-B4-D65536-off-s0"].overrides["optim.grad_clip"] == 0.0
    assert by["sde-B4-D65536-fixed-s0"].overrides["reparam.grad_clip_rule"] == "none"
    assert by["sde-B4-D65536-off-s0"].point == {"rule": "sde", "clip": "off", "tokens_target": 65536.0, "batch_size": 4}
    one = S.expand(_spec("batch-size", {"batch_sizes": [4], "tokens": 65536, "rules": ["sde"]},
                         base={"optim": {"grad_clip": 0}}, seeds=(0,)), 128, 8)
    assert one[0].name == "sde-B4-s0" and one[0].point["clip"] == "off"
    with pytest.raises(ConfigError, match="grid.clip 'scaled' needs base optim.grad_clip > 0"):
        S.expand(_spec("batch-size", {**grid, "clip": ["scaled"]}, base={"optim": {"grad_clip": 0}}), 128, 8)


def test_expand_mixing_simplex_and_explicit_points():
    pts = S.simplex_points(list(S.TASKS), 0.2, 0.2)
    assert len(pts) == 6
    assert all(abs(sum(p.values()) - 1) < 1e-9 and min(p.values()) >= 0.2 - 1e-12 for p in pts)
    assert {tuple(p.values()) for p in pts} == {(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6), (0.4, 0.4, 0.2),
                                                (0.4, 0.2, 0.4), (0.2, 0.4, 0.4)}
    runs = S.expand(_spec("mixing", {}, seeds=(3,)), 128, 8)
    assert runs[0].name == "t0.6-i0.2-a0.2-s3"
    assert runs[0].overrides == {"data.task_weights": {"text": 0.6, "image_text": 0.2, "audio_text": 0.2}}
    assert runs[0].point == {"weight_text": 0.6, "weight_image_text": 0.2, "weight_audio_text": 0.2}
    explicit = S.expand(_spec("mixing", {"weights": [{"text": 0.5, "image_text": 0.5}], "tasks": ["text", "image_text"]},
                              seeds=(0,)), 128, 8)
    assert [r.name for r in explicit] == ["t0.5-i0.5-s0"] and explicit[0].point["weight_audio_text"] == 0.0


def test_expand_schedule_and_scaling():
    runs = S.expand(_spec("schedule", {}), 128, 8)
    assert [r.overrides["objective.schedule.name"] for r in runs[::2]] == ["linear", "cosine", "polynomial", "geometric"]
    runs = S.expand(_spec("scaling", {"depths": [1, 2], "tokens": [8192, 16384]}, seeds=(0,)), seq_len=64, batch_size=8)
    assert [r.name for r in runs] == ["d1-D8192-s0", "d1-D16384-s0", "d2-D8192-s0", "d2-D16384-s0"]
    assert runs[2].overrides == {"model.dim": 256, "model.n_layers": 2, "model.n_heads": 2, "run.steps": 16}
    with_rule = S.expand(_spec("scaling", {"depths": [3], "tokens": [1e6]}, base={"reparam": {"tokens": 1.0}},
                               seeds=(0,)), 64, 8)
    assert with_rule[0].overrides["reparam.tokens"] == 1e6 and "run.steps" not in with_rule[0].overrides


def test_run_config_sets_run_keys_and_absolute_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec("schedule", {"schedules": ["cosine"]}, base={"data": {"sources": [{"root": "rel/text"}]}})
    run = S.expand(spec, 128, 8)[1]
    cfg = S.run_config(spec, run, "/abs/run")
    assert cfg["data"]["sources"][0]["root"] == str(tmp_path / "rel" / "text")
    assert cfg["run"] == {"seed": 1, "out_dir": "/abs/run", "overwrite": True, "resume": False, "progress": False}
    assert cfg["objective"]["schedule"]["name"] == "cosine"
    assert spec.base["data"]["sources"][0]["root"] == "rel/text"  # the spec itself is untouched


@pytest.mark.parametrize("change,match", [
    ({"kind": "learning-rate"}, "unknown experiment kind 'learning-rate'.*batch-size"),
    ({"bogus": 1}, "unknown config key bogus"),
    ({"grid": {"batch_sizes": [4], "tokens": 1e5, "bogus": 2}}, "grid.bogus"),
    ({"grid": {"batch_sizes": [4], "tokens": 1e5, "rules": ["fast"]}}, "unknown rule 'fast'"),
    ({"grid": {"batch_sizes": [4], "tokens": 1e5, "rules": []}}, "rules: give at least one of sde, none"),
    ({"grid": {"batch_sizes": [4], "tokens": [1e5, 0]}}, "tokens: give the token horizon D > 0"),
    ({"grid": {"batch_sizes": [4], "tokens": [1e5, 1e5]}}, "tokens: give distinct token horizons"),
    ({"grid": {"batch_sizes": [4], "tokens": 1e5, "clip": ["half"]}}, "clip: unknown treatment 'half'"),
    ({"kind": "mixing", "grid": {"weights": [{"text": 0.9, "image_text": 0.05, "audio_text": 0.05}]}}, "min_weight"),
    ({"kind": "schedule", "grid": {"schedules": ["exponential"]}}, "unknown schedule 'exponential'"),
    ({"base": {"optim": {"nonsense": 1}}}, "base.optim.nonsense"),
    ({"base": {"run": {"batch_size": "many"}}}, "base.run.batch_size"),
])
def test_spec_errors_name_the_kind_or_key(tmp_path, change, match):
    doc = {"kind": "batch-size", "out": str(tmp_path / "e"), "grid": {"batch_sizes": [4], "tokens": 1e5}, **change}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match):
        runner.plan(S.load_spec(str(path)))


# ---- running ----------------------------------------------------------------------------------------
TOKENS = 6 * 2 * L  # D: 6 steps at B = 2, 3 at B = 4


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-point batch-size experiment (rule none, B = 2 and 4), run through the CLI."""
    folder = tmp_path_factory.mktemp("e2e")
    path = write_spec(folder, "batch-size", {"batch_sizes": [2, 4], "tokens": TOKENS, "rules": ["none"], "evals": 2},
                      tiny_base(data), report=str(folder / "report"))
    return folder, cli("experiment", "run", path, cwd=folder)


def test_batch_size_experiment_end_to_end(finished):
    folder, res = finished
    assert res.returncode == 0, res.stderr
    assert "2 runs, 0 finished, 2 to run" in res.stdout and "2 ok, 0 failed, 0 pending" in res.stdout
    rows = read_csv(folder / "report" / "results.csv")
    assert [r["name"] for r in rows] == ["none-B2-s0", "none-B4-s0"] and {r["status"] for r in rows} == {"ok"}
    for r, b in zip(rows, (2, 4)):
        assert int(r["B"]) == b and int(r["steps"]) == TOKENS // (b * L) and int(r["D"]) == TOKENS
        assert float(r["kappa"]) == 1.0 and float(r["logical_batch"]) == b and int(r["N"]) > 0
        assert int(r["eval_step"]) == int(r["steps"]) and int(r["tokens"]) > 0
        for col in ("loss", "val_elbo", "val_elbo_text", "val_elbo_image", "val_elbo_audio", "task_elbo_text",
                    "task_elbo_image_text", "task_elbo_audio_text"):
            assert math.isfinite(float(r[col])), col
        assert float(r["loss"]) == float(r["val_elbo"])
    md = (folder / "report" / "report.md").read_text()
    assert f"| none | fixed | {TOKENS} | 2 | 1 |" in md and "## Critical batch" in md and "## What the plots show" in md and "![batch_size.png]" in md
    for png in ("batch_size.png", "curves.png"):
        assert (folder / "report" / png).stat().st_size > 2000
    run = folder / "exp" / "runs" / "none-B2-s0"
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    assert json.loads((run / "config.json").read_text())["run"]["steps"] == 6


def test_the_sde_rule_reparameterises_each_batch_size(tmp_path, data):
    """rules: [sde] with the base point at (B = 2, D): B = 2 runs the base values (kappa 1),
    B = 4 gets kappa 2: lr·sqrt(2), beta2^2, eps/sqrt(2), and D/(B·L) steps, all through the CLI."""
    base = tiny_base(data)
    base["reparam"] = {"base_batch": 2, "base_tokens": float(TOKENS)}
    path = write_spec(tmp_path, "batch-size", {"batch_sizes": [2, 4], "tokens": TOKENS, "rules": ["sde"], "evals": 1},
                      base)
    res = cli("experiment", "run", path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {int(r["B"]): r for r in read_csv(tmp_path / "exp" / "results.csv")}
    assert set(rows) == {2, 4} and {r["status"] for r in rows.values()} == {"ok"}
    for b, kappa in ((2, 1.0), (4, 2.0)):
        r = rows[b]
        assert float(r["kappa"]) == pytest.approx(kappa) and float(r["logical_batch"]) == pytest.approx(2)
        assert float(r["lr"]) == pytest.approx(3e-3 * math.sqrt(kappa))
        assert float(r["beta2"]) == pytest.approx(0.95 ** kappa) and float(r["eps"]) == pytest.approx(1e-8 / math.sqrt(kappa))
        assert int(r["steps"]) == TOKENS // (b * L) and int(r["D"]) == TOKENS


def test_the_report_keeps_its_analysis_without_matplotlib(finished, tmp_path, monkeypatch):
    from trimodal.experiments import plots
    from trimodal.experiments.report import write_report

    folder, _ = finished
    spec = S.load_spec(str(folder / "spec.yaml"))
    rows = runner.collect(spec, runner.plan(spec))

    def no_matplotlib(*_a, **_k):
        raise ImportError("No module named 'matplotlib'")

    for name in ("batch_size", "curves"):
        monkeypatch.setattr(plots, name, no_matplotlib)
    write_report(spec, rows, str(tmp_path), runner.POINT_COLUMNS[spec.kind], None)
    md = (tmp_path / "report.md").read_text()
    assert "(plots skipped: No module named 'matplotlib')" in md and "![" not in md

    def bullets(text: str) -> list[str]:
        return [ln for ln in text.split("## What the plots show", 1)[1].splitlines() if ln.startswith("- ")]

    # the analysis sentences are those of the report made with the plots
    assert bullets(md) and bullets(md) == bullets((folder / "report" / "report.md").read_text())


def test_rerun_skips_finished_runs_and_redoes_the_unfinished(finished):
    folder, _ = finished
    done, half = folder / "exp" / "runs" / "none-B2-s0", folder / "exp" / "runs" / "none-B4-s0"
    before = (done / "log.jsonl").read_bytes()
    log = (half / "log.jsonl").read_text().splitlines()
    (half / "log.jsonl").write_text("\n".join(log[:3]) + "\n")  # cut before its final eval: half-finished
    lines = list(runner.main(runner.RunSpecConfig(spec=str(folder / "spec.yaml"))))
    assert lines[0].endswith("2 runs, 1 finished, 1 to run")
    assert any(ln.startswith("[1/1] none-B4-s0: ok") for ln in lines)
    assert (done / "log.jsonl").read_bytes() == before  # the finished run was not touched
    assert json.loads((half / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert "2 ok, 0 failed, 0 pending" in lines


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path, data):
    # micro-batches of 2 cannot make a batch of 3: that run stops at start-up with a config error
    path = write_spec(tmp_path, "batch-size", {"batch_sizes": [3, 2], "tokens": 4 * L, "rules": ["none"], "evals": 0},
                      tiny_base(data, micro_batch_size=2))
    lines = list(runner.main(runner.RunSpecConfig(spec=path)))
    assert any(ln.startswith("[1/2] none-B3-s0: FAILED: error:") and "micro_batch_size" in ln for ln in lines)
    assert any(ln.startswith("[2/2] none-B2-s0: ok") for ln in lines)
    rows = {r["name"]: r for r in read_csv(tmp_path / "exp" / "results.csv")}
    assert rows["none-B3-s0"]["status"] == "failed" and "micro_batch_size" in rows["none-B3-s0"]["reason"]
    assert rows["none-B3-s0"]["returncode"] == "1" and rows["none-B3-s0"]["loss"] == ""
    assert rows["none-B2-s0"]["status"] == "ok" and rows["none-B2-s0"]["loss"]
    assert "## Failed runs" in (tmp_path / "exp" / "report.md").read_text()
    planned = {p.run.name: p for p in runner.plan(S.load_spec(path))}  # a re-run retries the failed one only
    assert [n for n, p in planned.items() if not R.is_finished(p.folder, p.config_hash)] == ["none-B3-s0"]


def test_print_commands_writes_configs_and_runs_nothing(tmp_path, data, capsys):
    from trimodal.cli import main
    from trimodal.train.trainer import TrainConfig

    path = write_spec(tmp_path, "schedule", {"schedules": ["linear", "cosine"]}, tiny_base(data), seeds=(0,))
    lines = list(runner.main(runner.RunSpecConfig(spec=path, print_commands=True, nproc_per_node=8)))
    assert lines[0].endswith("2 runs, 0 finished, 2 to run") and len(lines) == 3
    for ln, name in zip(lines[1:], ("linear-s0", "cosine-s0")):
        cfg_path = tmp_path / "exp" / "runs" / name / "config.json"
        assert ln == (f"cd {cfg_path.parent} && torchrun --standalone --nproc-per-node=8 -m trimodal.cli train "
                      f"--config {cfg_path} --set run.overwrite=false --auto-resume")
        # a requeued job resumes: the printed overrides make a valid config that auto-resumes
        resumed = TrainConfig.load(str(cfg_path), ["run.overwrite=false", "run.auto_resume=true"])
        assert resumed.run.auto_resume and not resumed.run.overwrite
        cfg = from_dict(TrainConfig, json.loads(cfg_path.read_text()))
        assert cfg.objective.schedule.name == name.split("-")[0] and cfg.run.out_dir == str(cfg_path.parent)
        assert not (cfg_path.parent / "log.jsonl").exists()
    slurm = list(runner.main(runner.RunSpecConfig(spec=path, print_commands=True, launcher="slurm", nodes=2,
                                                  slurm_args=["--partition=gpu"])))
    assert all(ln.startswith("sbatch --job-name=spec-") and "--nodes=2" in ln and "--partition=gpu" in ln
               and "--wrap='srun --kill-on-bad-exit=1 torchrun --nnodes=2" in ln and "--auto-resume" in ln for ln in slurm[1:])
    assert main(["experiment", "run", path, "--print-commands", "--launcher", "slurm"]) == 0
    assert capsys.readouterr().out.count("sbatch ") == 2


# ---- fits ------------------------------------------------------------------------------------------
def _scaling_csv(path: Path, n_points: int) -> Path:
    from trimodal.experiments.fits import scaling_loss

    true = {"E": 1.5, "A": 40.0, "B": 2e4, "a": 0.3, "b": 0.35}
    grid = [(n, d) for n in (1e5, 4e5, 1.6e6) for d in (1e7, 4e7, 1.6e8)][:n_points]
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "status", "N", "D", "loss"])
        for i, (n, d) in enumerate(grid):
            w.writerow([f"r{i}", "ok", n, d, float(scaling_loss(n, d, **true)) * (1 + 1e-3 * rng.standard_normal())])
        w.writerow(["crashed", "failed", 1e5, 1e7, ""])  # a failed run: skipped, not an error
    return path


def test_fit_scaling_prints_parameters_and_optima(tmp_path, capsys):
    from trimodal.cli import main

    csv_path = _scaling_csv(tmp_path / "results.csv", 9)
    assert main(["experiment", "fit", "scaling", str(csv_path), "--n-boot", "3", "--niter", "5"]) == 0
    out = capsys.readouterr().out
    assert "9 points" in out and "Scaling law (eq. 5.1)" in out and "D*(N) =" in out and "N*(C)" in out
    assert main(["experiment", "fit", "scaling", str(csv_path), "--n-boot", "2", "--niter", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["points"] == 9 and set(d["params"]) == {"E", "A", "B", "a", "b"} and len(d["D_star_of_N"]) == 3


def test_fit_with_too_few_points_is_a_clear_error(tmp_path, capsys):
    from trimodal.cli import main

    csv_path = _scaling_csv(tmp_path / "results.csv", 4)
    assert main(["experiment", "fit", "scaling", str(csv_path)]) == 1
    err = capsys.readouterr().err
    assert "too few points for the scaling fit: 4 usable row(s)" in err and "need at least 6" in err
    assert main(["experiment", "fit", "drift", str(csv_path)]) == 1
    assert "missing column(s) ['logical_steps', 'logical_batch']" in capsys.readouterr().err
    assert main(["experiment", "fit", "scaling", str(csv_path), "extra"]) == 1
    assert "unexpected argument extra" in capsys.readouterr().err
    assert main(["experiment", "fit", "scaling", str(tmp_path)]) == 1
    assert f"{tmp_path} is a folder; give its results.csv" in capsys.readouterr().err
    nan = _scaling_csv(tmp_path / "nan.csv", 8)
    lines = nan.read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("loss")] = "nan"
    nan.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert main(["experiment", "fit", "scaling", str(nan)]) == 1
    err = capsys.readouterr().err
    assert f"{nan}: column 'loss': non-finite value nan" in err and len(err.strip().splitlines()) == 1


# ---- analysis (pure) ------------------------------------------------------------------------------
def test_analysis_flatness_and_cross_modal_slopes():
    assert analysis.flat_until([4, 8, 16, 32], [3.00, 3.01, 3.02, 3.20], tol=0.05) == 16
    groups = []
    for w in S.simplex_points(list(S.TASKS), 0.2, 0.2):  # each loss depends on its own weight only
        g = {f"weight_{t}": w[t] for t in S.TASKS}
        g.update({f"task_elbo_{t}": (3.0 - w[t], 0.01) for t in S.TASKS})
        g["n"] = 2
        groups.append(g)
    lines, nums = analysis.mixing(groups, list(S.TASKS))
    for t in S.TASKS:
        assert nums[t]["monotone"] and nums[t]["own_slope"] == pytest.approx(-1.0)
        assert nums[t]["cross_slope"] == pytest.approx(0.0, abs=1e-9)
    assert len(lines) == 3 and "falls monotonically" in lines[0]


def test_a_grid_that_gives_no_runs_is_refused(tmp_path, data):
    path = write_spec(tmp_path, "mixing", {"tasks": ["text", "image_text"], "step": 0.5, "min_weight": 0.9},
                      tiny_base(data))
    with pytest.raises(ConfigError, match="its grid gives no runs"):
        runner.plan(S.load_spec(path))


def test_expand_anti_masking():
    runs = S.expand(_spec("anti-masking", {}), seq_len=128, batch_size=8)
    assert [r.name for r in runs] == ["plain-s0", "plain-s1", "anti-s0", "anti-s1"]
    assert runs[0].overrides == {"objective.anti_mask": False} and runs[2].overrides == {"objective.anti_mask": True}
    assert S.POINT_COLUMNS["anti-masking"] == ("anti_mask",)
    with pytest.raises(ConfigError, match="distinct"):
        S.grid_of(_spec("anti-masking", {"anti_mask": [True, True]}))


def test_sampling_points_move_one_setting_at_a_time(tmp_path):
    from trimodal.experiments.sampling import points, write_report

    spec = _spec("sampling", {"checkpoint": "runs/x", "tasks": ["image", "speech"], "steps": [4, 8], "cfg": [1.0]},
                 seeds=(0,))
    grid = S.grid_of(spec)
    pts = points(grid, [0])
    assert [n for n, _ in pts] == ["image-steps4-s0", "image-steps8-s0", "image-cfg1-s0",
                                   "speech-steps4-s0", "speech-steps8-s0", "speech-cfg1-s0"]
    with pytest.raises(ConfigError, match="expand|trains nothing"):
        S.expand(spec, seq_len=128, batch_size=8)
    with pytest.raises(ConfigError, match="at least one of steps"):
        S.grid_of(_spec("sampling", {"checkpoint": "runs/x"}))
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        S.grid_of(_spec("sampling", {"checkpoint": "runs/x", "steps": [4], "metrics": {"nope": 1}}))
    rows = [{"name": n, **p, "fid": 10.0 + p["value"], "clip_score": 20.0} if p["task"] == "image" else
            {"name": n, **p, "wer": 0.5, "fad": None} for n, p in pts]
    rows.append({**rows[0], "seed": 1, "fid": 16.0})  # a second seed of image-steps4: 14 and 16
    list(write_report(spec, grid, rows, None, str(tmp_path)))
    md = (tmp_path / "report.md").read_text()
    assert "| steps | 4 | 2 | 15.0000 ± 1.4142 | 20.0000 ± 0.0000 |" in md  # n = 2: the spread is printed
    assert "| steps | 8 | 1 | 18.0000 | 20.0000 |" in md  # n = 1: no "± 0.0000"
    assert "| cfg | 1 | 1 | 0.5000 | – |" in md
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1


def test_generate_section_is_checked(tmp_path, data):
    base = tiny_base(data, steps=2, batch_size=2)
    ok = write_spec(tmp_path / "ok", "schedule", {"schedules": ["linear"]}, base,
                    generate={"tasks": ["image"], "num": 2, "metrics": {"clip": "weights/clip"}})
    gen = S.generate_of(S.load_spec(ok))
    assert gen.tasks == ["image"] and gen.num == 2 and gen.seed == 0 and gen.metrics == {"clip": "weights/clip"}
    for generate, match in (({"metrics": {"nope": 1}}, "unknown key 'nope'"), ({"tasks": ["video"]}, "image and/or speech"),
                            ({"num": 0}, "num must be >= 1"), ({"sample": 3}, "unknown config key generate.sample")):
        bad = write_spec(tmp_path / "bad", "anti-masking", {}, base, generate=generate)
        with pytest.raises(ConfigError, match=match):
            S.load_spec(bad)
    sampling = write_spec(tmp_path / "s", "sampling", {"checkpoint": "runs/x", "steps": [4]}, {}, generate={"num": 2})
    with pytest.raises(ConfigError, match="scores its points already"):
        S.load_spec(sampling)


def test_generation_metrics_are_compared_by_direction():
    """Paired differences of generation metrics; CLIP score ranks higher-is-better, FID lower."""
    def members(vals):
        return [{"seed": s, "status": "ok", **v} for s, v in enumerate(vals)]

    rows = [*({"anti_mask": False, **m} for m in members([{"fid": 10.0, "clip_score": 20.0}, {"fid": 12.0, "clip_score": 22.0}])),
            *({"anti_mask": True, **m} for m in members([{"fid": 8.0, "clip_score": 25.0}, {"fid": 11.0, "clip_score": 23.0}]))]
    groups = R.aggregate(rows, ["anti_mask"], R.METRICS)
    lines, nums = analysis.generation(groups, key="anti_mask", reference=False)
    assert set(nums) == {"fid", "clip_score"}  # wer, fad: not scored, not reported
    assert nums["fid"]["ranking"] == ["True", "False"] and nums["clip_score"]["ranking"] == ["True", "False"]
    assert nums["fid"]["True"]["paired_mean"] == pytest.approx(-1.5) and nums["fid"]["True"]["paired_sd"] == pytest.approx(0.5 * 2 ** 0.5)
    assert nums["clip_score"]["True"]["paired_mean"] == pytest.approx(3.0)
    assert any(ln.startswith("fid: True − False: -1.5000 (") for ln in lines)


def test_the_report_names_finished_runs_without_generation_metrics(tmp_path):
    from trimodal.experiments.report import write_report

    spec = from_dict(S.ExperimentSpec, {"kind": "anti-masking", "out": str(tmp_path), "grid": {}, "seeds": [0],
                                        "generate": {"metrics": {"clip": "weights/clip"}}, "name": "anti"})
    rows = [{"name": "plain-s0", "status": "ok", "seed": 0, "anti_mask": False, "val_elbo": 3.0, "clip_score": 20.0},
            {"name": "anti-s0", "status": "ok", "seed": 0, "anti_mask": True, "val_elbo": 2.9}]
    write_report(spec, rows, str(tmp_path), S.POINT_COLUMNS["anti-masking"])
    md = (tmp_path / "report.md").read_text()
    assert "## Runs without generation metrics" in md and "- `anti-s0`" in md and "- `plain-s0`" not in md
