"""Trainer step time: ``train(cfg)`` on CPU vs a minimal plain-PyTorch loop of the same work.

Candidate: the real entry point, ``trimodal.train.trainer.train``, on synthetic tokenized text
shards (streaming loader, packing, collation, step-seeded t and masking, masked-diffusion loss,
backward, clipping, AdamW at the scheduled lr, per-step logging; no checkpoints). Step time =
the differences of consecutive ``elapsed`` values of its ``log.jsonl`` (``log_every=1``), the
first ``--warmup`` steps dropped.
Baseline: the same model (``Transformer``, same config, layout and init seed) and objective
(``diffusion_loss`` with the default ``ObjectiveConfig``) on one fixed batch of the same shape
(B rows of L tokens, taken from the same loader), ``loss.backward()``, ``clip_grad_norm_``,
``torch.optim.AdamW.step()``; no loader, no logging.

Clocks: ``process_time`` by default, stamped when the trainer logs each step (its
``Logger.log`` is wrapped; nothing else changes) and around each plain step; the wall figures
from the log's ``elapsed`` are reported too. Both run in one process with the same torch thread
count (1 by default: on a loaded 2-core machine a second OpenMP thread mostly spins, which
inflates both clocks at random), in interleaved rounds; the result is the median over rounds of
each round's median step time. Goal: trainer / plain ≤ 1.1.

    python benchmarks/bench_trainer_step.py [--dim 128 --layers 2 --seq-len 256 --batch 8 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards
GOAL = 1.1


def train_config(data: str, out: str, args) -> Any:
    from trimodal.shards.loader import SourceConfig
    from trimodal.train.trainer import TrainConfig

    sets = [
        f"run.out_dir={out}", f"run.steps={args.warmup + args.steps}", f"run.batch_size={args.batch}",
        "run.device=cpu", "run.dtype=fp32", "run.progress=false", "run.log_every=1", "run.ckpt_every=0",
        "run.ckpt_final=false", "log.tensorboard=false",
        f"data.seq_len={args.seq_len}", f"data.num_workers={getattr(args, 'num_workers', 0)}",
        f"model.dim={args.dim}", f"model.n_layers={args.layers}",
        f"model.n_heads={args.heads}", f"model.max_seq_len={args.seq_len}", "optim.warmup_steps=2",
    ]
    cfg = TrainConfig.load(None, sets)
    cfg.data.sources = [SourceConfig(root=data)]
    return cfg


def run_trainer(data: str, out: str, args) -> dict[str, list[float]]:
    """Per-step seconds of one ``train(cfg)`` run, warm-up steps dropped: ``wall`` from the log's
    ``elapsed``; ``cpu`` from ``process_time`` stamped when the trainer logs each step (its
    ``Metrics.log`` is wrapped, nothing else changes)."""
    from trimodal.train import metrics, trainer

    stamps: dict[int, float] = {}
    original = metrics.Metrics.log

    def log(self, record):
        if "elapsed" in record:
            stamps[record["step"]] = time.process_time()
        return original(self, record)

    shutil.rmtree(out, ignore_errors=True)
    metrics.Metrics.log = log
    try:
        res = trainer.train(train_config(data, out, args))
    finally:
        metrics.Metrics.log = original
    recs = [json.loads(l) for l in Path(res["log"]).read_text().splitlines()]
    el = {r["step"]: r["elapsed"] for r in recs if "elapsed" in r}
    measured = range(args.warmup + 1, args.warmup + args.steps + 1)
    return {"wall": [el[s] - el[s - 1] for s in measured], "cpu": [stamps[s] - stamps[s - 1] for s in measured]}


def fixed_batch(data: str, args):
    """B rows of the loader, collated as the trainer does, and the layout the trainer uses."""
    import torch

    from trimodal.shards.loader import LoaderConfig, TrimodalDataset, load_manifests, tokenizers_of
    from trimodal.tokenizers.vocab import VocabLayout

    cfg = train_config(data, "/nonexistent", args)
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg.data)), cfg.vocab)
    ds = TrimodalDataset(LoaderConfig(sources=cfg.data.sources, seq_len=args.seq_len, seed=0), layout, rank=0, world_size=1)
    it = iter(ds)
    rows = [next(it) for _ in range(args.batch)]
    batch = {k: torch.stack([r[k] for r in rows]) for k in ("tokens", "modality", "valid")}
    return layout, batch, cfg


def run_plain(layout, batch, cfg, args) -> dict[str, list[float]]:
    """Per-step seconds (wall and process CPU) of the plain loop, warm-up steps dropped."""
    import torch

    from trimodal.train.model import Transformer
    from trimodal.train.objective import ObjectiveConfig, diffusion_loss

    torch.manual_seed(0)
    model = Transformer(cfg.model, layout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay, foreach=True)
    obj = ObjectiveConfig()
    model.train()
    wall, cpu = [], []
    for i in range(args.warmup + args.steps):
        t, c = time.perf_counter(), time.process_time()
        res = diffusion_loss(model, batch["tokens"], batch["modality"], batch["valid"], layout, obj,
                             generator=torch.Generator().manual_seed(i))
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(res.loss)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall": wall[args.warmup :], "cpu": cpu[args.warmup :]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text-codes", type=int, default=1024, help="text vocabulary of the synthetic shards")
    ap.add_argument("--samples", type=int, default=2000, help="documents in the synthetic shards")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="the trainer's data.num_workers (StatefulDataLoader worker processes; 0: in the training process)")
    bc.add_args(ap, repeats=3, repeats_help="interleaved rounds (trainer run, plain run)", threads=1, clock=True,
                work=True, model=(128, 2, 4, 256, 8), steps=(20, 5))
    args = ap.parse_args(argv)
    with bc.torch_threads(args.threads):
        return _run(args)


def _run(args) -> dict[str, Any]:
    import torch

    data = bc.work_dir(f"trainer-data-{args.text_codes}-{args.samples}", args.work)
    bc.make_text_shards(data, args.samples, 8, 50, 1500, args.text_codes)
    out = str(bc.work_dir("trainer-run", args.work))
    layout, batch, cfg = fixed_batch(str(data), args)

    rounds = {c: {"trainer": [], "plain": []} for c in ("cpu", "wall")}
    steps = {c: {"trainer": [], "plain": []} for c in ("cpu", "wall")}
    for r in range(args.repeats):
        order = ["plain", "trainer"] if r % 2 == 0 else ["trainer", "plain"]
        for name in order:
            ts = run_trainer(str(data), out, args) if name == "trainer" else run_plain(layout, batch, cfg, args)
            for c in ("cpu", "wall"):
                rounds[c][name].append(statistics.median(ts[c]))
                steps[c][name] += ts[c]
    shutil.rmtree(out, ignore_errors=True)
    primary = "cpu" if args.clock == "process_time" else "wall"
    med = {c: {k: bc.median(v) for k, v in rounds[c].items()} for c in rounds}
    ratio = med[primary]["trainer"] / med[primary]["plain"]
    from trimodal.train.model import Transformer

    result = {
        "benchmark": "trainer_step",
        "metric": "seconds/step (lower is better)",
        "clock": args.clock + (" (stamped at each step's log record)" if primary == "cpu" else " (the log's elapsed)"),
        "candidate": "trimodal.train.trainer.train(cfg), CPU fp32, loader + logging, no checkpoints",
        "baseline": "plain loop: same Transformer + diffusion_loss on a fixed batch, backward, clip, AdamW",
        "trainer_step_s": bc.rnd(med[primary]["trainer"]),
        "plain_step_s": bc.rnd(med[primary]["plain"]),
        "ratio": bc.rnd(ratio),
        "goal": f"<= {GOAL}",
        "goal_met": bc.goal_met(ratio, GOAL, higher_is_better=False),
        "wall_from_log_elapsed": {
            "trainer_step_s": bc.rnd(med["wall"]["trainer"]),
            "plain_step_s": bc.rnd(med["wall"]["plain"]),
            "ratio": bc.rnd(med["wall"]["trainer"] / med["wall"]["plain"]),
            "ratio_of_best": bc.rnd(min(steps["wall"]["trainer"]) / min(steps["wall"]["plain"])),
        },
        "round_medians_s": {c: {k: [bc.rnd(x, 3) for x in v] for k, v in rounds[c].items()} for c in rounds},
        "shape": {"dim": args.dim, "layers": args.layers, "heads": args.heads, "seq_len": args.seq_len,
                  "batch": args.batch, "text_codes": args.text_codes, "vocab": layout.vocab_size,
                  "params": sum(p.numel() for p in Transformer(cfg.model, layout).parameters()),
                  "torch_threads": torch.get_num_threads(), "num_workers": args.num_workers},
        "steps_per_run": args.steps,
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
    }
    return bc.emit(result)


if __name__ == "__main__":
    main()
