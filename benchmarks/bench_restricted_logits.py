"""Logits + loss at the paper's 117,698-id vocabulary: masked-only, modality-restricted logits
(``masked_diffusion_loss`` default) vs full-vocabulary logits (``full_vocab=True``), forward +
backward, and vs the naive reference of a plain LM loss: logits for *every* position over the
full vocabulary.

Inputs: a ``Transformer``'s heads (dim 256; the backbone is not run: hidden states are a
random leaf tensor, so only the heads, the logits and the loss are timed), rows of L positions
built with the loader's row functions (``TextPacker`` / ``paired_row``): by default 4 rows of
512 (text, image-text with a 16×16 image and a caption, audio-text with 80 frames × 4 levels and
a caption, text, i.e. the task cycle), one t per row (0.125, 0.375, 0.625, 0.875: on average
half the maskable positions are masked), masks drawn by ``apply_mask``.

Each of the three is timed forward + backward (gradients of the heads and of the hidden
states), interleaved, ``--repeats`` times; median ``process_time`` with one torch thread by
default (on a loaded 2-core machine a second OpenMP thread mostly spins: CPU time and wall time
then say more about the neighbours than about the code). Goal: restricted ≥ 2× faster than
full-vocab. The output also gives the modality mix of the masked positions and the ratio of
logit columns computed (what the speed-up should be if the head matmuls dominate).

    python benchmarks/bench_restricted_logits.py [--dim 256 --rows 4 --seq-len 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards
GOAL = 2.0


def make_rows(layout, tasks: list[str], seq_len: int, image_side: int, audio_frames: int, caption: int, seed: int = 0):
    """(tokens, modality, valid) int64/int64/bool tensors [rows, L], one row per task."""
    import torch

    from trimodal.shards.rows import TextPacker, layout_ids, paired_row

    rng = np.random.default_rng(seed)
    ids = layout_ids(layout)
    packer = TextPacker(layout, seq_len)
    toks, valids = [], []
    for task in tasks:
        text = rng.integers(0, layout.text_codes, caption, dtype=np.int64)
        if task == "text":
            while not packer.ready():
                packer.add(rng.integers(0, layout.text_codes, int(rng.integers(50, 1500)), dtype=np.int64))
            t, v = packer.pop(), np.ones(seq_len, dtype=bool)
        elif task == "image_text":
            grid = rng.integers(0, layout.image_codes, (image_side, image_side), dtype=np.int64)
            t, v = paired_row(layout, task, layout.to_global(1, grid), text, seq_len)
        elif task == "audio_text":
            codes = rng.integers(0, layout.audio_codes, (layout.audio_levels, audio_frames), dtype=np.int64)
            t, v = paired_row(layout, task, layout.audio_to_global(codes), text, seq_len)
        else:
            raise ValueError(f"unknown task {task!r}")
        toks.append(t)
        valids.append(v)
    tokens = torch.from_numpy(np.stack(toks))
    modality = torch.from_numpy(ids.modality_lut[np.stack(toks)])
    return tokens, modality, torch.from_numpy(np.stack(valids))


def naive_loss(model, hidden, tokens, modality, is_masked, valid, weight, layout, z_loss: float = 1e-5):
    """A plain LM loss: logits of every position over the full (predictable) vocabulary, CE
    kept where masked; same weighting and normaliser as the diffusion loss."""
    import torch

    from trimodal.tokenizers.vocab import TASK
    from trimodal.train.objective import _block_starts

    b, l, d = hidden.shape
    logits = model.full_logits(hidden.reshape(b * l, d)).float()
    offsets, starts = _block_starts(layout, hidden.device)
    mod = modality.reshape(-1).clamp(max=2)  # task positions: any column (they are not scored)
    col = (tokens.reshape(-1) - offsets[mod] + starts[mod]).clamp(0, logits.shape[1] - 1)
    lse = torch.logsumexp(logits, dim=-1)
    ce = lse - logits.gather(1, col.unsqueeze(1)).squeeze(1)
    keep = (is_masked & valid & (modality != TASK)).reshape(-1).float()
    w = weight.float().repeat_interleave(l)
    loss = (w * keep * ce).sum() / valid.sum().clamp_min(1) + z_loss * (lse * lse).mean()
    return loss


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rows", type=int, default=6, help="rows; tasks cycle text, image_text, audio_text (6 = the paper's 1/3 mix)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tasks", default="text,image_text,audio_text", help="row tasks, cycled over the rows")
    ap.add_argument("--image-side", type=int, default=0, help="image grid side (0: sqrt(L/2), 16 at L=512)")
    ap.add_argument("--audio-frames", type=int, default=0, help="audio frames (0: 0.625·L/levels, 80 at L=512)")
    ap.add_argument("--caption", type=int, default=24, help="caption tokens of paired rows")
    ap.add_argument("--text-codes", type=int, default=100_277, help="100,277: the paper's 117,698-id vocabulary")
    ap.add_argument("--no-naive", action="store_true", help="skip the all-positions reference")
    bc.add_args(ap, repeats=3, threads=1, clock=True)
    args = ap.parse_args(argv)
    with bc.torch_threads(args.threads):
        return _run(args)


def _run(args) -> dict[str, Any]:
    import torch

    from trimodal.tokenizers.vocab import MODALITIES, VocabLayout
    from trimodal.train.model import ModelConfig, Transformer
    from trimodal.train.objective import apply_mask, masked_diffusion_loss
    from trimodal.train.schedules import ScheduleConfig, make_schedule

    layout = VocabLayout(text_codes=args.text_codes)
    args.image_side = args.image_side or int((args.seq_len / 2) ** 0.5)
    args.audio_frames = args.audio_frames or int(0.625 * args.seq_len / layout.audio_levels)
    tasks = args.tasks.split(",")
    tasks = [tasks[i % len(tasks)] for i in range(args.rows)]
    tokens, modality, valid = make_rows(layout, tasks, args.seq_len, args.image_side, args.audio_frames, args.caption)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=args.dim, n_layers=1, n_heads=max(1, args.dim // 64), max_seq_len=args.seq_len), layout)
    schedule = make_schedule(ScheduleConfig())
    t = (torch.arange(args.rows, dtype=torch.float32) + 0.5) / args.rows
    _, is_masked = apply_mask(tokens, modality, valid, schedule.mask_prob(t), layout, torch.Generator().manual_seed(0))
    weight = schedule.weight(t)
    hidden = torch.randn(args.rows, args.seq_len, args.dim, generator=torch.Generator().manual_seed(1)).requires_grad_(True)

    def step(kind: str):
        model.zero_grad(set_to_none=True)
        hidden.grad = None
        if kind == "naive":
            loss = naive_loss(model, hidden, tokens, modality, is_masked, valid, weight, layout)
        else:
            loss = masked_diffusion_loss(model, hidden, tokens, modality, is_masked, valid, weight, layout,
                                         full_vocab=(kind == "full_vocab")).loss
        loss.backward()
        return float(loss.detach())

    fns = {"restricted": lambda: step("restricted"), "full_vocab": lambda: step("full_vocab")}
    if not args.no_naive:
        fns["naive_all_positions"] = lambda: step("naive")
    for fn in fns.values():  # warm-up (allocator, kernels)
        fn()
    runs = bc.interleave(fns, args.repeats, args.clock)
    sec = {k: bc.median(v["clock_s"]) for k, v in runs.items()}
    wall = {k: bc.median(v["wall_s"]) for k, v in runs.items()}
    ratio = sec["full_vocab"] / sec["restricted"]

    masked_mod = modality[is_masked]
    counts = {name: int((masked_mod == m).sum()) for m, name in enumerate(MODALITIES)}
    pred = [b.predictable for b in layout.blocks]
    cols_restricted = sum(counts[name] * pred[m] for m, name in enumerate(MODALITIES))
    n_masked = int(is_masked.sum())
    result = {
        **bc.headline("restricted_logits", "seconds per forward+backward of logits + loss (lower is better)",
                      args.clock, "masked_diffusion_loss (masked positions only, logits over their own modality block)",
                      "masked_diffusion_loss(full_vocab=True) (masked positions, all 3 blocks)", ratio, GOAL,
                      f">= {GOAL} (full_vocab_s / restricted_s)"),
        "restricted_s": bc.rnd(sec["restricted"]),
        "full_vocab_s": bc.rnd(sec["full_vocab"]),
        "logit_columns_ratio": bc.rnd(n_masked * sum(pred) / max(cols_restricted, 1)),
        "wall": {k + "_s": bc.rnd(v) for k, v in wall.items()} | {"ratio": bc.rnd(wall["full_vocab"] / wall["restricted"])},
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "losses": {k: bc.rnd(v["result"]) for k, v in runs.items()},
        "shape": {"dim": args.dim, "rows": args.rows, "seq_len": args.seq_len, "tasks": tasks,
                  "image_side": args.image_side, "audio_frames": args.audio_frames, "caption": args.caption,
                  "vocab": layout.vocab_size, "predictable_per_block": pred, "masked": n_masked,
                  "masked_by_modality": counts, "valid": int(valid.sum())},
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
    }
    if "naive_all_positions" in sec:
        result["naive_all_positions_s"] = bc.rnd(sec["naive_all_positions"])
        result["ratio_vs_naive"] = bc.rnd(sec["naive_all_positions"] / sec["restricted"])
        result["full_vocab_vs_naive"] = bc.rnd(sec["naive_all_positions"] / sec["full_vocab"])
    return bc.emit(result)


if __name__ == "__main__":
    main()
