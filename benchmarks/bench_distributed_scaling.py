"""CPU data-parallel scaling: tokens/s per process with 1 and with 2 processes (gloo, FSDP2).

Runs ``trimodal train`` under ``torchrun --nproc_per_node=W`` for W = 1 and 2 on the same model,
sequence length and rows per process (weak scaling: the global batch is W × the per-process
batch, as when adding GPUs), on synthetic tokenized text shards. Each process gets the same
number of CPU threads (``--threads``, default 1), so W processes need W free cores.

Throughput is read from the trainer's own ``log.jsonl`` (``tokens``: non-PAD positions of the
global batch, ``elapsed``: wall time since the loop started), over the steps after
``--warmup`` steps. Scaling efficiency = (tokens/s per process with 2) / (tokens/s with 1):
1.0 means the second process adds its full share; what is lost is FSDP's all-gather /
reduce-scatter over gloo plus the per-step all-reduces.

    python benchmarks/bench_distributed_scaling.py            # prints one JSON line
    python benchmarks/bench_distributed_scaling.py --dim 256 --layers 4 --steps 40 --repeats 3

Numbers depend on the machine and on other load: run on an otherwise idle machine, and compare
only runs from the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared synthetic shards


def run(world: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    sets = [
        f'data.sources=[{{"root": "{data}"}}]', f"data.seq_len={args.seq_len}", f"data.num_streams={args.streams}",
        f"vocab.image_codes={args.media_codes}", f"vocab.audio_codes={args.media_codes}", "vocab.audio_levels=1",
        f"model.dim={args.dim}", f"model.n_layers={args.layers}", f"model.n_heads={max(1, args.dim // 64)}",
        f"model.max_seq_len={args.seq_len}", f"run.steps={args.steps}", f"run.batch_size={args.batch * world}",
        f"run.out_dir={out}", "run.ckpt_every=0", "run.log_every=1", "run.progress=false", "run.device=cpu",
        "run.dtype=fp32", "optim.warmup_steps=5",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "trimodal.cli", "train"]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    t0 = time.perf_counter()
    # cwd outside the repository: from its root `-m` would import ./tokenizers as a top-level package
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed with {world} processes:\n{proc.stderr[-4000:]}")
    recs = {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r}
    a, b = recs[args.warmup], recs[args.steps]
    tokens = b["tokens"] - a["tokens"]
    seconds = b["elapsed"] - a["elapsed"]
    return {
        "processes": world,
        "global_batch": args.batch * world,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_process": tokens / seconds / world,
        "step_s": seconds / (args.steps - args.warmup),
        "launch_wall_s": wall,
        "last_loss": b["loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="rows per process per step")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help="synthetic text vocabulary")
    p.add_argument("--media-codes", type=int, default=1024, help="image/audio block sizes (no such data here)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--repeats", type=int, default=1, help="runs per world size; the median is reported")
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args()
    if not 0 < args.warmup < args.steps:
        p.error("--warmup must be between 0 and --steps")

    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        tmp = Path(tmp)
        bc.make_text_shards(tmp / "data", samples=4 * args.steps * args.batch * args.seq_len // 850 + 1, shards=16,
                            min_len=200, max_len=1500, text_codes=args.vocab)
        results: dict[int, list[dict]] = {1: [], 2: []}
        for rep in range(args.repeats):
            for world in (1, 2):  # interleaved, so slow drifts in machine load hit both
                results[world].append(run(world, tmp / "data", tmp / f"run-w{world}-r{rep}", args))

    def median(world: int) -> dict:
        runs = results[world]
        med = statistics.median(r["tokens_per_s_per_process"] for r in runs)
        best = min(runs, key=lambda r: abs(r["tokens_per_s_per_process"] - med))
        return {**best, "tokens_per_s_per_process": med,
                "tokens_per_s_per_process_all": [round(r["tokens_per_s_per_process"], 1) for r in runs]}

    one, two = median(1), median(2)
    import torch

    print(json.dumps({
        "bench": "distributed_scaling_cpu_gloo",
        "config": {"dim": args.dim, "layers": args.layers, "seq_len": args.seq_len, "rows_per_process": args.batch,
                   "steps": args.steps, "timed_steps": args.steps - args.warmup, "threads_per_process": args.threads,
                   "vocab": args.vocab, "media_codes": args.media_codes, "repeats": args.repeats},
        "one_process": one,
        "two_processes": two,
        "scaling_efficiency": two["tokens_per_s_per_process"] / one["tokens_per_s_per_process"],
        "speedup": two["tokens_per_s"] / one["tokens_per_s"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_1m": os.getloadavg()[0]},
    }, sort_keys=True))


if __name__ == "__main__":
    main()
