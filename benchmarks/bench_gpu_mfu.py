"""GPU check: FSDP2 + bf16 training throughput and MFU of a ~1B configuration on one GPU, and
the trainer's step time against a minimal plain-PyTorch loop of the same model (ratio).

Variants (``--variants``): ``eager`` and ``compile`` (the first version's settings: 8 rows,
reference loss head, no activation checkpointing), and ``goal`` (the throughput issue's path to
≥ 45 % MFU): compiled blocks, packed paired rows (``data.pack_paired``, FlexAttention block masks),
selective activation checkpointing, a per-GPU batch of ``--goal-batch`` rows, the loss head that
never materialises the logits (``objective.loss_impl=auto``: cut-cross-entropy when installed,
else the chunked head), and the loader in 2 dataloader workers with prefetch. ``--mix trimodal``
adds synthetic image-text samples (1,024 codes + a caption) so that packing has work to do.

Run on a CUDA machine (see BENCHMARKS.md for the exact command). Writes synthetic tokenized
shards (random ids with the paper's 100,277-id text vocabulary) so no tokenizer is needed, runs
``trimodal train`` under ``torchrun --nproc_per_node=1`` (process group + FSDP2 fully_shard +
bf16 MixedPrecisionPolicy, the production path), then the plain loop; prints one JSON line.

MFU = tokens/s × (6·N_non-embedding + 12·layers·dim·L) / peak; heads are not counted (they
run only on masked positions over one block). Peak: H100 SXM dense bf16 989.4 TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared synthetic shards

PEAK = {"H100": 989.4e12, "H200": 989.4e12}


def run_trainer(data: list[Path], out: Path, depth: int, seq_len: int, batch: int, steps: int, compile: bool,
                ac: str, timeout: int, device: str = "cuda", extra: list[str] | None = None) -> dict:
    roots = ", ".join(f'{{"root": "{d}"}}' for d in data)
    sets = [f"data.sources=[{roots}]", f"data.seq_len={seq_len}", "data.num_streams=2",
            f"model.dim={128 * depth}", f"model.n_layers={depth}", f"model.n_heads={depth}", f"model.max_seq_len={seq_len}",
            f"run.steps={steps}", f"run.batch_size={batch}", f"run.out_dir={out}", "run.ckpt_every=0", "run.ckpt_final=false",
            "run.log_every=1", "run.progress=false", f"run.device={device}", f"run.dtype={'bf16' if device == 'cuda' else 'fp32'}",
            f"run.compile={'true' if compile else 'false'}", f"run.activation_checkpointing={ac}", "run.overwrite=true",
            "log.tensorboard=false", "optim.warmup_steps=5", *(extra or [])]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "trimodal.cli", "train"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/tmp")
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    start = next(r for r in recs if r.get("event") == "start")
    steps_ = [r for r in recs if "loss" in r]
    warm = [r for r in steps_ if r["step"] >= 6]
    dt = (warm[-1]["elapsed"] - warm[0]["elapsed"]) / (warm[-1]["step"] - warm[0]["step"])
    pad = float(np.mean([r["padding"] for r in warm]))
    return {"step_s": dt, "tokens_per_s": batch * seq_len / dt, "non_pad_tokens_per_s": batch * seq_len * (1 - pad) / dt,
            "padding": pad, "wall_s": time.time() - t0, "params": start["params"],
            "params_non_embedding": start.get("params_non_embedding"), "first_loss": steps_[0]["loss"],
            "last_loss": steps_[-1]["loss"]}


def plain_loop(depth: int, seq_len: int, batch: int, steps: int, vocab: int) -> dict:
    """The same model and objective, no loader, no FSDP, no logging: bf16 autocast + AdamW."""
    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train.model import ModelConfig, Transformer
    from trimodal.train.objective import ObjectiveConfig, diffusion_loss

    layout = VocabLayout(text_codes=vocab)
    dev = torch.device("cuda")
    model = Transformer(ModelConfig(dim=128 * depth, n_layers=depth, n_heads=depth, max_seq_len=seq_len), layout).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, vocab, (batch, seq_len), device=dev)
    tokens[:, 0] = layout.task_token("text")
    modality = torch.zeros_like(tokens)
    modality[:, 0] = 3
    valid = torch.ones_like(tokens, dtype=torch.bool)
    cfg = ObjectiveConfig()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res = diffusion_loss(model, tokens, modality, valid, layout, cfg, generator=torch.Generator().manual_seed(i))
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    dt = float(np.median(times[5:]))
    del model, opt
    torch.cuda.empty_cache()
    return {"step_s": dt, "tokens_per_s": batch * seq_len / dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=16)  # 16 x 2048: ~0.82B non-embedding, ~1.3B total
    ap.add_argument("--seq-len", type=int, default=3256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--vocab", type=int, default=100277)
    ap.add_argument("--variants", default="eager,compile,goal")
    ap.add_argument("--goal-batch", type=int, default=16, help="rows per GPU of the goal variant")
    ap.add_argument("--mix", default="text", choices=["text", "trimodal"])
    ap.add_argument("--work", default="/tmp/mfu")
    args = ap.parse_args()

    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train.model import ModelConfig, flops_per_token, param_counts

    work = Path(args.work)
    data = work / "data"
    tokens = max(args.batch, args.goal_batch) * args.seq_len * (args.steps + 5)
    bc.make_text_shards(data, samples=tokens // 1600 + 1, shards=16, min_len=200, max_len=3000, text_codes=args.vocab)
    roots = [data]
    if args.mix == "trimodal":
        images = work / "images"
        bc.make_image_shards(images, samples=3 * args.goal_batch * (args.steps + 5), grid=32, caption=(20, 120),
                             text_codes=args.vocab)
        roots.append(images)
    mcfg = ModelConfig(dim=128 * args.depth, n_layers=args.depth, n_heads=args.depth, max_seq_len=args.seq_len)
    layout = VocabLayout(text_codes=args.vocab)
    fpt = flops_per_token(mcfg, layout, args.seq_len)
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK.items() if k in name), 989.4e12)
    result = {"device": name, "torch": torch.__version__, "depth": args.depth, "dim": 128 * args.depth,
              "seq_len": args.seq_len, "batch": args.batch, "params": param_counts(mcfg, layout),
              "flops_per_token": fpt, "peak_flops": peak}
    plain = plain_loop(args.depth, args.seq_len, args.batch, 15, args.vocab)
    result["plain_loop"] = {**plain, "mfu": plain["tokens_per_s"] * fpt / peak}
    print(json.dumps({"plain_loop": result["plain_loop"]}), flush=True)
    goal = ["data.pack_paired=true", "model.attention=flex", "objective.loss_impl=auto", "data.num_workers=2"]
    for v in args.variants.split(","):
        if v == "goal":
            r = run_trainer(roots, work / f"run-{v}", args.depth, args.seq_len, args.goal_batch, args.steps,
                            compile=True, ac="selective", timeout=280, extra=goal)
        else:
            r = run_trainer(roots, work / f"run-{v}", args.depth, args.seq_len, args.batch, args.steps,
                            compile=(v == "compile"), ac="none", timeout=150, extra=["objective.loss_impl=reference"])
        if "tokens_per_s" in r:
            r["mfu"] = r["tokens_per_s"] * fpt / peak
            r["trainer_over_plain_step_time"] = r["step_s"] / plain["step_s"]
        result[f"trainer_fsdp2_bf16_{v}"] = r
        print(json.dumps({v: r}), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
