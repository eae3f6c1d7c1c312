"""Packed vs padded paired rows: non-PAD tokens trained per second, CPU, the real trainer.

Both sides run ``trimodal.train.trainer.train`` on the same synthetic image-text-heavy mix
(task weights text : image-text = 1 : 2; image-text samples shaped like the demo's: an 8 x 8 code
grid, as MoVQGAN gives for 64 px, and a 5–30-token caption; text documents of 100–400 tokens), the
same model, batch and row length L. The baseline is today's default (``data.pack_paired=false``:
one paired sample per row, the rest PAD); the candidate packs several paired samples and a text
filler into each row (``data.pack_paired=true``: block-diagonal attention, RoPE restarting per
sample, one t per sample). A PAD position costs a full position of compute, so packing should buy
throughput close to 1 / (1 - PAD share).

Metric: non-PAD tokens per second = B·L·(1 − padding) / step time, where ``padding`` is the
trainer's own per-step log field and the step time is the difference of consecutive
``elapsed`` values in ``log.jsonl`` (``--warmup`` steps dropped; wall clock — one torch thread
by default, so wall ≈ CPU on an idle machine). The two runs alternate for ``--repeats`` rounds;
medians. ``ratio`` = packed / padded (goal ≥ 1.5).

    python benchmarks/bench_packing.py [--seq-len 256 --batch 8 --dim 128 --layers 2 --steps 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards

GOAL = 1.5


def run(text: Path, images: Path, out: Path, packed: bool, args) -> dict[str, Any]:
    """One trainer run; per-step seconds and PAD shares of the timed steps."""
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig, train

    sets = [
        f"run.out_dir={out}", f"run.steps={args.warmup + args.steps}", f"run.batch_size={args.batch}",
        "run.device=cpu", "run.dtype=fp32", "run.progress=false", "run.log_every=1", "run.ckpt_every=0",
        "run.ckpt_final=false", "run.overwrite=true", "log.tensorboard=false", "optim.warmup_steps=2",
        f"data.seq_len={args.seq_len}", "data.num_streams=2", f"data.pack_paired={'true' if packed else 'false'}",
        'data.task_weights={"text": 1, "image_text": 2}',
        f"model.dim={args.dim}", f"model.n_layers={args.layers}", f"model.n_heads={args.heads}",
        f"model.max_seq_len={args.seq_len}",
    ]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=str(text)), SourceConfig(root=str(images))]
    shutil.rmtree(out, ignore_errors=True)
    res = train(cfg)
    recs = [json.loads(line) for line in Path(res["log"]).read_text().splitlines()]
    steps = {r["step"]: r for r in recs if "elapsed" in r}
    timed = range(args.warmup + 1, args.warmup + args.steps + 1)
    return {"step_s": [steps[s]["elapsed"] - steps[s - 1]["elapsed"] for s in timed],
            "padding": [steps[s]["padding"] for s in timed]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=int, default=8, help="image code grid side (8: the demo's 64 px images)")
    ap.add_argument("--image-codes", type=int, default=1024, help="image codebook size of the synthetic shards")
    ap.add_argument("--text-codes", type=int, default=1024, help="text vocabulary of the synthetic shards")
    ap.add_argument("--samples", type=int, default=8000, help="image-text samples (text: half as many documents)")
    bc.add_args(ap, repeats=3, repeats_help="alternating rounds (padded run, packed run)", threads=1, work=True,
                model=(128, 2, 4, 256, 8), steps=(15, 3))
    args = ap.parse_args(argv)

    work = bc.work_dir(f"packing_{args.samples}_{args.grid}", args.work)
    text, images = work / "text", work / "images"
    bc.make_text_shards(text, samples=args.samples // 2, shards=4, min_len=100, max_len=400, text_codes=args.text_codes)
    bc.make_image_shards(images, samples=args.samples, grid=args.grid, caption=(5, 30), text_codes=args.text_codes,
                         image_codes=args.image_codes)
    runs: dict[str, dict[str, list[float]]] = {"padded": {"step_s": [], "padding": []},
                                               "packed": {"step_s": [], "padding": []}}
    with bc.torch_threads(args.threads):
        for _ in range(args.repeats):
            for name in ("padded", "packed"):
                r = run(text, images, work / f"run-{name}", name == "packed", args)
                runs[name]["step_s"].append(statistics.median(r["step_s"]))
                runs[name]["padding"].append(statistics.fmean(r["padding"]))
    tokens = args.batch * args.seq_len
    per: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        step = bc.median(r["step_s"])
        pad = statistics.fmean(r["padding"])
        per[name] = {"step_s": bc.rnd(step), "padding": bc.rnd(pad), "non_pad_tokens_per_s": bc.rnd(tokens * (1 - pad) / step, 1),
                     "spread": bc.rnd(bc.spread(r["step_s"]), 2)}
    ratio = per["packed"]["non_pad_tokens_per_s"] / per["padded"]["non_pad_tokens_per_s"]
    return bc.emit({
        "benchmark": "packing",
        "metric": "non-PAD tokens trained per second (higher is better), CPU, wall clock of the trainer's log",
        "candidate": "train(cfg) with data.pack_paired=true",
        "baseline": "train(cfg) with data.pack_paired=false (one paired sample per row, PAD to L)",
        "ratio": bc.rnd(ratio),
        "goal": f">= {GOAL}",
        "goal_met": bc.goal_met(ratio, GOAL),
        "runs": per,
        "setup": {"seq_len": args.seq_len, "batch": args.batch, "dim": args.dim, "layers": args.layers,
                  "grid": args.grid, "task_weights": {"text": 1, "image_text": 2}, "steps": args.steps,
                  "repeats": args.repeats},
    })


if __name__ == "__main__":
    main()
