"""Evaluation cost as a share of training time, at the demo's scale, with eval every 1,000 steps.

One ``train(cfg)`` run with the demo's model and batch (4 x 128, L = 256, 8 rows per step, CPU,
fp32) on synthetic text, image-text and audio-text shards shaped like the demo's, evaluating every
``--every`` steps on three separate evaluation roots (one per task, ``eval.sources``) with the
default estimator (``eval.rows`` fixed rows per source x ``eval.t_levels`` stratified levels). The trainer reports its own
``train_seconds`` and ``eval_seconds`` (wall clock around each evaluation); from them:

- seconds per training step and per evaluation (the evaluator's one-time row assembly is in
  ``build_s``, measured separately: it happens once per run, not per evaluation);
- ``share_at_1000`` = eval / (1000 · step + eval): the share of a run that evaluates every 1,000
  steps (goal < 2 %), and the share measured in this run at ``--every``.

    python benchmarks/bench_eval_cost.py [--steps 60 --every 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards

GOAL = 0.02
EVAL_EVERY = 1000
TASKS = ("text", "image", "audio")


def config(roots: dict[str, Path], out: Path, args) -> Any:
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig

    cfg = TrainConfig.load(None, [
        f"run.out_dir={out}", "run.overwrite=true", f"run.steps={args.steps}", "run.batch_size=8",
        "run.log_every=25", "run.ckpt_every=0", "run.ckpt_final=false", "run.device=cpu", "run.progress=false",
        "log.tensorboard=false", f"data.seq_len={args.seq_len}", "data.num_streams=2",
        "model.dim=128", "model.n_layers=4", "model.n_heads=4", f"model.max_seq_len={args.seq_len}",
        "optim.lr=3e-3", "optim.warmup_steps=20", f"eval.every={args.every}", f"eval.rows={args.rows}",
        f"eval.t_levels={args.t_levels}", "eval.split=train",
    ])
    cfg.data.sources = [SourceConfig(root=str(roots[t])) for t in TASKS]
    cfg.eval.sources = [SourceConfig(root=str(roots[f"{t}_eval"])) for t in TASKS]
    return cfg


def build_seconds(cfg) -> float:
    """Wall seconds of the evaluator's one-time row assembly (what the trainer does at start)."""
    from trimodal.shards.loader import load_manifests, tokenizers_of
    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train import distributed as D
    from trimodal.train.evaluate import Evaluator

    manifests = load_manifests(cfg.data)
    layout = VocabLayout.from_tokenizers(tokenizers_of(manifests), cfg.vocab)
    t0 = time.perf_counter()
    Evaluator.build(cfg.eval, layout, manifests, cfg.data, cfg.objective, D.DistInfo())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from trimodal.train.evaluate import EvalConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20, help="eval every N steps in this run (3 evaluations)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=EvalConfig.rows, help="eval.rows")
    ap.add_argument("--t-levels", type=int, default=EvalConfig.t_levels, help="eval.t_levels")
    ap.add_argument("--samples", type=int, default=1000, help="samples per task and root")
    bc.add_args(ap, threads=1, work=True)
    args = ap.parse_args(argv)

    from trimodal.train.trainer import train

    work = bc.work_dir(f"eval_cost_{args.samples}", args.work)
    roots = {name: work / name for t in TASKS for name in (t, f"{t}_eval")}
    for name, seed in (("text", 0), ("text_eval", 10)):
        bc.make_text_shards(roots[name], samples=2 * args.samples, shards=2, min_len=50, max_len=400, text_codes=1024, seed=seed)
    for name, seed in (("image", 1), ("image_eval", 11)):  # 64 px images: 8 x 8 codes
        bc.make_image_shards(roots[name], samples=args.samples, grid=8, caption=(5, 30), text_codes=1024, image_codes=1024,
                             seed=seed)
    for name, seed in (("audio", 2), ("audio_eval", 12)):  # ~0.5 s of 4-codebook codes + a transcript
        bc.make_audio_shards(roots[name], samples=args.samples, frames=(20, 40), caption=(5, 20), text_codes=1024, seed=seed)
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    with bc.torch_threads(args.threads):
        cfg = config(roots, out, args)
        build_s = build_seconds(cfg)
        res = train(cfg)
    n_evals = args.steps // args.every + (1 if args.steps % args.every else 0)
    step_s = res["train_seconds"] / args.steps
    eval_s = res["eval_seconds"] / n_evals
    share = eval_s / (EVAL_EVERY * step_s + eval_s)
    return bc.emit({
        "benchmark": "eval_cost",
        "metric": f"evaluation wall time as a share of a run that evaluates every {EVAL_EVERY} steps (lower is better)",
        "candidate": f"eval every {EVAL_EVERY} steps: {args.rows} rows x {args.t_levels} levels per source, "
                     f"{len(TASKS)} sources",
        "baseline": f"{EVAL_EVERY} training steps of the demo's model (4 x 128, L = {args.seq_len}, 8 rows)",
        "ratio": bc.rnd(share),
        "goal": f"< {GOAL}",
        "goal_met": bc.goal_met(share, GOAL, higher_is_better=False),
        "train_step_s": bc.rnd(step_s), "eval_s": bc.rnd(eval_s), "build_s": bc.rnd(build_s),
        "evaluations": n_evals, "share_measured_here": bc.rnd(res["eval_seconds"] / (res["eval_seconds"] + res["train_seconds"])),
        "every_here": args.every,
    })


if __name__ == "__main__":
    main()
