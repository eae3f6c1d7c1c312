"""PAD share of training rows, padded vs packed, at the paper's L = 3,256 and the demo's L = 256,
with the paper's ⅓/⅓/⅓ task mix: as ``shards stats --packed`` estimates it and as the trainer
logs it (``padding`` of each step record), and in the rows ``pipeline mix`` writes (equal
weights): plain, ``--pack-paired --filler none`` and ``--pack-paired`` (room filled with text).

Synthetic shards shaped like the paper's data: text documents of 100–3,000 tokens; image-text
samples of a 32 × 32 MoVQGAN grid (8 × 8 for the demo's 64 px) + a 10–80-token caption; audio-text
samples of 2–30 s of Higgs-rate codes (25 frames/s × 4 codebooks) + a 10–100-token transcript
(0.5–2 s at the demo's scale). The trainer runs a 1-layer 32-wide model for ``--steps`` steps per
variant (the model does not change what rows the loader makes). Goal: packed PAD share ≤ 5 %
at L = 3,256. ``ratio`` = non-PAD positions per row, packed / padded, in the trainer log at
L = 3,256 (what packing buys at the same compute per step).

    python benchmarks/bench_pad_share.py [--steps 8 --batch 8]
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
import bench_common as bc  # noqa: E402  shared machine description, synthetic shards

GOAL = 0.05
SCALES = {  # seq_len, image grid, audio frames, text document lengths
    "paper": {"seq_len": 3256, "grid": 32, "frames": (50, 750), "docs": (100, 3000)},
    "demo": {"seq_len": 256, "grid": 8, "frames": (12, 50), "docs": (30, 300)},
}


def make_data(work: Path, scale: dict[str, Any], samples: int) -> list[Path]:
    roots = [work / "text", work / "image_text", work / "audio_text"]
    bc.make_text_shards(roots[0], samples=samples, shards=4, min_len=scale["docs"][0], max_len=scale["docs"][1],
                        text_codes=1024)
    bc.make_image_shards(roots[1], samples=samples, grid=scale["grid"], caption=(10, 80), text_codes=1024,
                         image_codes=1024)
    bc.make_audio_shards(roots[2], samples=samples, frames=scale["frames"], caption=(10, 100), text_codes=1024)
    return roots


def trainer_padding(roots: list[Path], out: Path, seq_len: int, packed: bool, args) -> float:
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig, train

    cfg = TrainConfig.load(None, [
        f"run.out_dir={out}", f"run.steps={args.steps}", f"run.batch_size={args.batch}", "run.device=cpu",
        "run.dtype=fp32", "run.progress=false", "run.log_every=1", "run.ckpt_every=0", "run.ckpt_final=false",
        "run.overwrite=true", "log.tensorboard=false", f"data.seq_len={seq_len}", "data.num_streams=2",
        f"data.pack_paired={'true' if packed else 'false'}", "data.audio_overflow=crop",
        'data.task_weights={"text": 1, "image_text": 1, "audio_text": 1}',
        "model.dim=32", "model.n_layers=1", "model.n_heads=2", f"model.max_seq_len={seq_len}",
    ])
    cfg.data.sources = [SourceConfig(root=str(r)) for r in roots]
    shutil.rmtree(out, ignore_errors=True)
    res = train(cfg)
    recs = [json.loads(line) for line in Path(res["log"]).read_text().splitlines()]
    return statistics.fmean(r["padding"] for r in recs if "padding" in r)


def mix_padding(roots: list[Path], out: Path, seq_len: int, packed: bool, filler: str | None = None,
                counts: dict | None = None) -> float:
    """PAD share of the rows of ``pipeline mix`` (equal weights), as ``shards stats`` reports it;
    ``counts`` receives the manifest's filler counts and why the plan stopped."""
    from trimodal.pipelines.mix import MixPipelineConfig, run_mix_pipeline
    from trimodal.shards.stats import compute_stats

    shutil.rmtree(out, ignore_errors=True)
    m = run_mix_pipeline(MixPipelineConfig(inputs=[str(r) for r in roots], weights=[1, 1, 1], seq_len=seq_len, out=str(out),
                                           pack_paired=packed, filler=filler, progress=False), ["--runner=DirectRunner"])
    if counts is not None:
        counts.update({"rows": m.counts["written"], "stopped": m.counts["stopped"], "filler": m.counts.get("filler")})
    return compute_stats(str(out))["padding"]["fraction"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="trainer steps per variant")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=3000, help="samples per task")
    bc.add_args(ap, threads=1, work=True)
    args = ap.parse_args(argv)

    from trimodal.shards.stats import compute_stats

    result: dict[str, Any] = {}
    with bc.torch_threads(args.threads):
        for name, scale in SCALES.items():
            work = bc.work_dir(f"pad_share_{name}_{args.samples}", args.work)
            roots = make_data(work, scale, args.samples)
            L = scale["seq_len"]
            row: dict[str, Any] = {"seq_len": L}
            for packed in (False, True):
                key = "packed" if packed else "padded"
                stats = compute_stats([str(r) for r in roots], seq_len=L, packed=packed)
                row[f"stats_{key}"] = bc.rnd(stats["padding"]["fraction"])
                row[f"trainer_{key}"] = bc.rnd(trainer_padding(roots, work / f"run-{key}", L, packed, args))
                counts: dict[str, Any] = {}
                row[f"mix_{key}"] = bc.rnd(mix_padding(roots, work / f"mix-{key}", L, packed, counts=counts))
                if packed:
                    row["mix_packed_counts"] = counts
            row["mix_packed_no_filler"] = bc.rnd(mix_padding(roots, work / "mix-nofill", L, True, "none"))
            result[name] = row
    paper = result["paper"]
    ratio = (1 - paper["trainer_packed"]) / (1 - paper["trainer_padded"])
    return bc.emit({
        "benchmark": "pad_share",
        "metric": "share of row positions that are PAD (lower is better), ⅓/⅓/⅓ task mix",
        "candidate": "data.pack_paired=true", "baseline": "data.pack_paired=false",
        "ratio": bc.rnd(ratio), "goal": f"packed PAD share <= {GOAL} at L = 3256",
        "goal_met": bool(paper["trainer_packed"] <= GOAL and paper["stats_packed"] <= GOAL),
        "mix_goal_met": bool(paper["mix_packed"] <= GOAL),
        "scales": result, "steps": args.steps, "batch": args.batch,
    })


if __name__ == "__main__":
    main()
