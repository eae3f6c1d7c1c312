"""Loss head peak memory and time: ``linear_cross_entropy(impl="chunked")`` (logits tiles,
recomputed in backward) vs ``impl="reference"`` (today's math: the full [N × V] fp32 logits),
forward + backward of the objective's form Σ ce / N + λ·Σ lse² / N, fp32 on CPU.

Inputs: N masked rows (hidden [N, D], random leaf), a head weight [V, D] (std 1/√D, so logits
are O(1)), uniform random targets. Shapes: N = 4096, D = 512 (``--dims 512,1024`` adds D =
1024), V = 32,000 and 100,281 (the paper's text block).

Peak memory: every (variant, shape) runs in a *fresh subprocess*, so the kernel's high-water
mark of that process (``ru_maxrss``) is its own. The reported peak is ru_maxrss after the first
forward + backward minus the resident set just before it (inputs built, torch loaded), i.e. the
most memory the step added: logits and their temporaries, and the two gradients (hidden
[N, D], weight [V, D]; the same in both variants, reported as ``grads_mib``). The subprocess
runs with ``MALLOC_MMAP_THRESHOLD_=131072``, so glibc serves every block ≥ 128 KiB by mmap
and returns it on free: the resident set then follows live tensor bytes (torch's CPU allocator
does not cache), not the heap's history. (``tracemalloc`` does not see torch's allocations; a
profiler timeline would, at the price of a much slower run.)

Time: in the same subprocess, ``--repeats`` further forward + backward passes after that first
(warm-up) one; median ``process_time``, one torch thread by default (see
bench_restricted_logits.py for why). Reference and chunked processes alternate per shape.
``ratio`` is the headline: reference peak / chunked peak at the largest V and the first D;
``time_ratio`` the same for seconds (> 1: chunked is faster).

    python benchmarks/bench_loss_head.py [--dims 512,1024 --vocabs 32000,100281 --rows 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description

GOAL = 4.0  # reference peak / chunked peak at the paper's text block
VARIANTS = ("reference", "chunked")
MIB = 2**20


def rss_bytes() -> int:
    """This process's resident set now (Linux /proc; ru_maxrss is only the high-water mark)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    """High-water resident set of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args) -> dict[str, Any]:
    """One variant at one shape, in this (fresh) process: peak of the first step, then times."""
    import torch

    from trimodal.train.cross_entropy import linear_cross_entropy

    if args.threads:
        torch.set_num_threads(args.threads)
    n, d, v = args.rows, args.dim, args.vocab
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = torch.randn(v, d, generator=g).mul_(d**-0.5).requires_grad_()  # in place: no transient copy
    targets = torch.randint(0, v, (n,), generator=g)
    kw = {"chunk_size": args.chunk_size, "row_chunk_size": args.row_chunk_size} if args.worker == "chunked" else {}

    def step() -> float:
        hidden.grad = weight.grad = None
        ce, lse = linear_cross_entropy(hidden, weight, targets, impl=args.worker, **kw)
        loss = ce.sum() / max(n, 1) + 1e-5 * (lse * lse).sum() / max(n, 1)
        loss.backward()
        return float(loss.detach())

    # One-time costs (autograd engine start-up, kernels paged in) on a tiny problem first, so
    # that they stay out of the measured peak.
    tiny = torch.randn(4, d).requires_grad_(), torch.randn(8, d).requires_grad_()
    sum(linear_cross_entropy(*tiny, torch.arange(4), impl=args.worker, **kw)).sum().backward()
    del tiny
    before, max_before = rss_bytes(), maxrss_bytes()
    first_s, _, loss = bc.timed(step, args.clock)
    max_after = maxrss_bytes()
    times = [bc.timed(step, args.clock)[0] for _ in range(args.repeats)]
    return {
        "variant": args.worker,
        "peak_bytes": max_after - before,
        "peak_above_setup_high_water": max_after > max_before,  # False: the peak is unmeasured
        "first_s": first_s,
        "times_s": times,
        "loss": loss,
        "threads": torch.get_num_threads(),
    }


def measure(variant: str, dim: int, vocab: int, args) -> dict[str, Any]:
    """Run ``variant`` at (rows, dim, vocab) in a fresh Python process; its result dict."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--dim", str(dim),
           "--vocab", str(vocab), "--rows", str(args.rows), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--clock", args.clock,
           "--chunk-size", str(args.chunk_size), "--row-chunk-size", str(args.row_chunk_size)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from trimodal.train.cross_entropy import DEFAULT_CHUNK_SIZE, DEFAULT_ROW_CHUNK_SIZE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="masked rows N")
    ap.add_argument("--dims", default="512", help="comma list of D (512,1024 doubles the runtime)")
    ap.add_argument("--vocabs", default="32000,100281", help="comma list of V (100,281: the paper's text block)")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="chunked: vocab columns per tile")
    ap.add_argument("--row-chunk-size", type=int, default=DEFAULT_ROW_CHUNK_SIZE, help="chunked: rows per tile")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=32000, help=argparse.SUPPRESS)
    bc.add_args(ap, repeats=2, repeats_help="timed steps after the first (peak-memory) step", threads=1, clock=True)
    args = ap.parse_args(argv)
    if args.worker:
        result = worker(args)
        print(json.dumps(result), flush=True)
        return result

    dims = [int(x) for x in args.dims.split(",")]
    vocabs = [int(x) for x in args.vocabs.split(",")]
    shapes = []
    for i, (d, v) in enumerate((d, v) for d in dims for v in vocabs):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        runs = {name: measure(name, d, v, args) for name in order}
        ref, chk = runs["reference"], runs["chunked"]
        ref_s = bc.median(ref["times_s"] or [ref["first_s"]])
        chk_s = bc.median(chk["times_s"] or [chk["first_s"]])
        shapes.append({
            "rows": args.rows, "dim": d, "vocab": v,
            "reference_s": bc.rnd(ref_s), "chunked_s": bc.rnd(chk_s),
            "time_ratio": bc.rnd(ref_s / chk_s),
            "reference_peak_mib": bc.rnd(ref["peak_bytes"] / MIB), "chunked_peak_mib": bc.rnd(chk["peak_bytes"] / MIB),
            "memory_ratio": bc.rnd(ref["peak_bytes"] / max(chk["peak_bytes"], 1)),
            "logits_fp32_mib": bc.rnd(args.rows * v * 4 / MIB),
            "grads_mib": bc.rnd((args.rows + v) * d * 4 / MIB),
            "peaks_measured": bool(ref["peak_above_setup_high_water"] and chk["peak_above_setup_high_water"]),
            "first_step_s": {"reference": bc.rnd(ref["first_s"]), "chunked": bc.rnd(chk["first_s"])},
            "spread": {"reference": bc.rnd(bc.spread(ref["times_s"]), 2), "chunked": bc.rnd(bc.spread(chk["times_s"]), 2)},
            "loss_rel_diff": bc.rnd(abs(ref["loss"] - chk["loss"]) / max(abs(ref["loss"]), 1e-30), 2),
        })
    head = max((s for s in shapes if s["dim"] == dims[0]), key=lambda s: s["vocab"])
    ratio = float(head["memory_ratio"])
    return bc.emit({
        "benchmark": "loss_head",
        "metric": "peak memory added by one forward+backward of the loss head (lower is better), and seconds",
        "clock": args.clock,
        "candidate": "linear_cross_entropy(impl='chunked') (logits tiles, recomputed in backward)",
        "baseline": "linear_cross_entropy(impl='reference') (today's math: full fp32 logits)",
        "memory_method": "fresh subprocess per run; ru_maxrss after step 1 minus RSS before it; MALLOC_MMAP_THRESHOLD_=131072",
        "ratio": bc.rnd(ratio),
        "time_ratio": head["time_ratio"],
        "goal": f">= {GOAL} (reference peak / chunked peak at D={head['dim']}, V={head['vocab']})",
        "goal_met": bc.goal_met(ratio, GOAL),
        "chunk_size": args.chunk_size, "row_chunk_size": args.row_chunk_size,
        "shapes": shapes,
        "repeats": args.repeats,
        "torch_threads": args.threads,
    })


if __name__ == "__main__":
    main()
