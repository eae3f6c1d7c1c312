"""Higgs tokenizer encode throughput: seconds of audio encoded per second by
``HiggsTokenizer.encode`` in batches, against a plain batched loop calling the model directly.

Both sides encode the same equal-length clips (the pipeline buckets lengths) in the same
batches, keeping 4 of 8 codebooks, from numpy clips to uint16 codes. The candidate adds what the
tokenizer does around the model (checks, padding to whole frames, grouping by length, the
inference/TF32 context); the baseline stacks each batch into a (B, 1, T) tensor and calls
``HiggsAudioTokenizerModel.encode`` under ``torch.inference_mode``. Runs are interleaved
``--repeats`` times after one warm-up each; medians on ``--clock``, one torch thread by default
(on a loaded 2-core machine a second OpenMP thread mostly waits for a descheduled partner: the
tiny model then ran 40x slower). ``ratio`` = candidate throughput / baseline throughput (goal
>= 0.95: the wrapper should cost next to nothing); both sides' codes must be equal.

Models: ``tiny`` is the golden model of the tests (``tests/data/reference/higgs/higgs_tiny_hf``);
``full`` is the released architecture (200 M parameters: HuBERT-base + the 24 kHz DAC-style
encoder) with random weights, built from ``higgs_released_state_dict.json``'s config (about a
few tens of seconds on one core at the defaults). Nothing downloads.

    python benchmarks/bench_higgs_encode.py [--models tiny,full] [--clips 8 --seconds 2 --batch 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, JSON line

REF = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "higgs"
GOAL = 0.95


def make_clips(n: int, seconds: float, sr: int, seed: int = 0) -> list[np.ndarray]:
    """Equal-length synthetic clips: a tone, a chirp and noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    clips = []
    for _ in range(n):
        f0, f1 = rng.uniform(100, 400), rng.uniform(400, 1200)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * f1 * t * (1 + 0.1 * t))
        clips.append((x + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def load_model(name: str, device: str = "cpu"):
    """The tokenizer for ``tiny`` (golden folder) or ``full`` (random released architecture)."""
    import torch

    from trimodal.tokenizers.higgs import HiggsTokenizer, build_higgs_model

    if name == "tiny":
        return HiggsTokenizer.from_path(REF / "higgs_tiny_hf", n_keep=4, device=device)
    if name == "full":
        torch.manual_seed(0)
        config = json.loads((REF / "higgs_released_state_dict.json").read_text())["config"]
        return HiggsTokenizer(build_higgs_model(config), n_keep=4, device=device)
    raise ValueError(f"unknown model {name!r} (tiny, full)")


def bench_one(name: str, args) -> dict[str, Any]:
    import torch

    tok = load_model(name, args.device)
    clips = make_clips(args.clips, args.seconds, tok.sample_rate)
    batches = [clips[i : i + args.batch] for i in range(0, len(clips), args.batch)]
    audio_s = sum(len(c) for c in clips) / tok.sample_rate

    def candidate() -> list[np.ndarray]:
        return [c for b in batches for c in tok.encode(b)]

    def baseline() -> list[np.ndarray]:
        out = []
        with torch.inference_mode():
            for b in batches:
                x = torch.from_numpy(np.stack(b)[:, None]).to(tok.device)
                out.extend(c.cpu().numpy().astype(np.uint16) for c in tok.model.encode(x, n_quantizers=tok.n_keep))
        return out

    fns = {"higgs_tokenizer": candidate, "plain_model_loop": baseline}
    for fn in fns.values():  # warm-up (allocator, kernels)
        fn()
    runs = bc.interleave(fns, args.repeats, args.clock)
    sec = {k: bc.median(v["clock_s"]) for k, v in runs.items()}
    wall = {k: bc.median(v["wall_s"]) for k, v in runs.items()}
    cand_codes, base_codes = runs["higgs_tokenizer"]["result"], runs["plain_model_loop"]["result"]
    same = len(cand_codes) == len(base_codes) and all(np.array_equal(a, b) for a, b in zip(cand_codes, base_codes))
    cand, base = audio_s / sec["higgs_tokenizer"], audio_s / sec["plain_model_loop"]
    return {
        "audio_seconds": bc.rnd(audio_s),
        "candidate_audio_s_per_s": bc.rnd(cand),
        "baseline_audio_s_per_s": bc.rnd(base),
        "ratio": bc.rnd(cand / base),
        "wall_audio_s_per_s": {k: bc.rnd(audio_s / v) for k, v in wall.items()},
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "codes_equal": bool(same),
        "params_m": bc.rnd(sum(p.numel() for p in tok.model.parameters()) / 1e6),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,full", help="comma-separated: tiny, full")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of every clip")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--full-clips", type=int, default=4, help="clips for the full-size model")
    ap.add_argument("--full-seconds", type=float, default=2.0, help="clip length for the full-size model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA use --clock perf_counter: process_time misses GPU work)")
    bc.add_args(ap, repeats=5, threads=1, clock=True)
    args = ap.parse_args(argv)
    with bc.torch_threads(args.threads):
        import torch

        per_model: dict[str, Any] = {}
        for name in [m for m in args.models.split(",") if m]:
            run_args = argparse.Namespace(**vars(args))
            if name == "full":
                run_args.clips, run_args.seconds = args.full_clips, args.full_seconds
                run_args.batch = min(args.batch, args.full_clips)
            per_model[name] = bench_one(name, run_args) | {
                "clips": run_args.clips, "clip_seconds": run_args.seconds, "batch": run_args.batch,
            }
        threads = torch.get_num_threads()
    ratio = min(r["ratio"] for r in per_model.values())
    result = {
        "benchmark": "higgs_encode",
        "metric": f"seconds of audio encoded per second (higher is better), 4 of 8 codebooks, {args.device}",
        "clock": args.clock,
        "candidate": "HiggsTokenizer.encode(list of numpy clips) per batch",
        "baseline": "np.stack -> HiggsAudioTokenizerModel.encode((B, 1, T), n_quantizers=4) per batch, inference_mode",
        "ratio": ratio,
        "goal": f">= {GOAL} (candidate / baseline throughput, worst model)",
        "goal_met": bc.goal_met(ratio, GOAL) and all(r["codes_equal"] for r in per_model.values()),
        "models": per_model,
        "repeats": args.repeats,
        "torch_threads": threads,
    }
    return bc.emit(result)


if __name__ == "__main__":
    main()
