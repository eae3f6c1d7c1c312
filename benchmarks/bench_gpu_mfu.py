"""GPU check: MFU of the ~1B configuration on one GPU (FSDP2 + bf16, the production trainer), and
the trainer's step time against a plain PyTorch loop doing the same work.

Made to fit a short GPU slot: every part runs in a child process with its own timeout, all
inside ``--budget-s``; the JSON (``--json``) is rewritten after every part, so a part that
times out or runs out of memory leaves what it measured (a timed-out trainer's ``log.jsonl``
is read as far as it got) and an ``error`` saying why. On out-of-memory the batch is halved
and the part retried while time remains.

**Equal work.** The trainer (``torchrun`` → ``trimodal train``) and the plain loop (model +
objective + fused AdamW on one device, no FSDP, no loader, no logging) run the same model
config, the same loss head (``objective.loss_impl``, resolved on the device and recorded), the
same attention kernel, the same compile setting and **the same rows**: the loader is
deterministic, so the benchmark iterates the trainer's loader config here and hands those
batches to the plain loop (``rows.pt``). The trainer logs every ``--log-every`` steps (a host
sync and a counter gather there; the step itself has the trainer's own syncs, named in
``BENCHMARKS.md``); the plain loop synchronises only around its timed steps.

**FLOPs per step** (model FLOPs, not hardware FLOPs): ``6·N·positions`` for the non-embedding
weights (N from ``param_counts``: 639.7 M at depth 16 with the two-thirds MLP rule), attention
``12·layers·dim·Σ sᵢ²`` over the real segment lengths sᵢ of each row (FlexAttention skips the
off-diagonal blocks; a dense row is one segment of L), and the heads ``6·dim·V_m`` per masked
position of modality m (counted in the plain loop on the same rows; the trainer's masks are
drawn alike). At depth 16, L = 3,256, dense: 5.12 GFLOP per position before heads.

``--dry-run``: everything on the CPU (a tiny model, sdpa, no compile, gloo), to check the
script end to end without a GPU. Peak: H100/H200 SXM dense bf16 989.4 TFLOP/s.

    python benchmarks/bench_gpu_mfu.py --json $OUT/mfu.json [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared synthetic shards

PEAK = {"H100": 989.4e12, "H200": 989.4e12}
OOM = "out of memory"


class Report:
    """The result dict, rewritten to ``path`` after every change (a killed run keeps it)."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path, self.data = path, dict(fields)
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---- FLOPs ---------------------------------------------------------------------------------------


def row_stats(segments, valid) -> dict[str, float]:
    """Per batch: non-PAD positions and Σ sᵢ² over the segments of each row (PAD excluded)."""
    import torch

    sq = 0
    for row in segments:
        s = row[row >= 0]
        if s.numel():
            sq += int((torch.bincount(s).double() ** 2).sum())
    return {"positions": int(valid.sum()), "seg_sq": sq}


def step_flops(mcfg, layout, positions: float, seg_sq: float, masked: dict[str, float]) -> dict[str, float]:
    """Model FLOPs of one step (forward + backward) from its rows (see the module docstring)."""
    from trimodal.train.model import param_counts

    n = param_counts(mcfg, layout)["non_embedding"]
    dense = 6 * n * positions
    attn = 12 * mcfg.n_layers * mcfg.dim * seg_sq
    sizes = {"text": layout.text.predictable, "image": layout.image.predictable, "audio": layout.audio.predictable}
    head = sum(6 * mcfg.dim * sizes[m] * k for m, k in masked.items())
    return {"dense": dense, "attention": attn, "head": head, "total": dense + attn + head}


# ---- the parts (child processes) -------------------------------------------------------------------


def run_child(args: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """``python <this file> <args>`` with a timeout; (its last JSON line, error or None)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), cwd="/tmp")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return _last_json(out), f"timeout after {timeout:.0f} s"
    got = _last_json(proc.stdout)
    if proc.returncode != 0:
        err = proc.stderr[-1500:]
        return got, ("oom: " if OOM in err.lower() else "") + err
    return got, None


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_trainer(a, roots: list[Path], out: Path, batch: int, timeout: float) -> dict:
    """The production trainer under ``torchrun``; its step time from ``log.jsonl`` (as far as it got)."""
    src = ", ".join(f'{{"root": "{d}"}}' for d in roots)
    sets = [f"data.sources=[{src}]", f"data.seq_len={a.seq_len}", "data.num_streams=2", "data.pack_paired=true",
            f"data.num_workers={a.workers}", f"model.dim={128 * a.depth}", f"model.n_layers={a.depth}",
            f"model.n_heads={a.heads or a.depth}", f"model.max_seq_len={a.seq_len}", f"model.attention={a.attention}",
            f"run.steps={a.steps}", f"run.batch_size={batch}", f"run.out_dir={out}", "run.ckpt_every=0",
            "run.ckpt_final=false", f"run.log_every={a.log_every}", "run.progress=false", f"run.device={a.device}",
            f"run.dtype={'bf16' if a.device == 'cuda' else 'fp32'}", f"run.compile={'true' if a.compile else 'false'}",
            f"run.activation_checkpointing={a.ac}", "run.overwrite=true", "log.tensorboard=false",
            "optim.warmup_steps=5", f"objective.loss_impl={a.loss_impl}", f"run.seed={a.seed}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "trimodal.cli", "train"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    err = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), cwd="/tmp")
        if proc.returncode != 0:
            err = ("oom: " if OOM in proc.stderr.lower() else "") + proc.stderr[-1500:]
    except subprocess.TimeoutExpired:
        err = f"timeout after {timeout:.0f} s"
    res: dict[str, Any] = {"batch": batch, "wall_s": round(time.time() - t0, 1)}
    if err:
        res["error"] = err
    log = out / "log.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    start = next((r for r in recs if r.get("event") == "start"), None)
    steps = [r for r in recs if "loss" in r]
    warm = [r for r in steps if r["step"] > a.warmup]
    if start:
        res["params_non_embedding"] = start.get("params_non_embedding")
    if len(warm) >= 2:
        dt = (warm[-1]["elapsed"] - warm[0]["elapsed"]) / (warm[-1]["step"] - warm[0]["step"])
        res.update(step_s=dt, timed_steps=warm[-1]["step"] - warm[0]["step"], first_loss=steps[0]["loss"],
                   last_loss=steps[-1]["loss"], padding=sum(r["padding"] for r in warm) / len(warm))
    return res


def plain_main(a) -> None:
    """Child: the plain loop on the saved rows (prints one JSON line; OOM is reported, not raised)."""
    import torch

    from trimodal.train.cross_entropy import resolve_impl
    from trimodal.train.model import ModelConfig, Transformer
    from trimodal.train.objective import ObjectiveConfig, corrupt, make_schedule, row_uniforms, score, segment_times

    saved = torch.load(a.rows, weights_only=True)
    batches, layout = saved["batches"], layout_of(a)
    dev = torch.device(a.device)
    mcfg = model_config(a)
    cfg = ObjectiveConfig(loss_impl=a.loss_impl)
    schedule = make_schedule(cfg.schedule)
    try:
        model = Transformer(mcfg, layout).to(dev)
        if a.compile:  # each block, as run.compile does in the trainer
            for layer in model.layers:
                layer.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        masked = torch.zeros(3, dtype=torch.float64, device=dev)
        on_dev = [{k: v.to(dev) for k, v in b.items()} for b in batches]
        # host work the trainer does per step (uniforms, t per segment) is done here too, per step
        times = []
        n_steps = min(a.steps, len(on_dev))

        def step(i: int) -> None:
            b = on_dev[i]
            rows = list(range(b["tokens"].shape[0]))
            u = row_uniforms(a.seed, i, rows, b["tokens"].shape[1])
            t = segment_times(a.seed, i, rows, b["segments"].cpu(), cfg.eps).to(dev)
            c = corrupt(b["tokens"], b["modality"], b["valid"], t, layout, cfg, schedule, uniforms=u,
                        segments=b["segments"], positions=b["positions"])
            n_tok, n_mask = c.valid.sum().float(), c.is_masked.sum().float()  # device tensors: no sync
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                res = score(model, c, layout, cfg, n_tokens=n_tok, n_masked=n_mask)
            res.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= a.warmup:
                masked.add_(res.masked.double()[:3])

        for i in range(min(a.warmup, n_steps)):
            step(i)
        sync(dev)
        t0 = time.perf_counter()
        for i in range(a.warmup, n_steps):
            step(i)
        sync(dev)
        timed = n_steps - a.warmup
        dt = (time.perf_counter() - t0) / max(1, timed)
        m = (masked / max(1, timed)).tolist()
        print(json.dumps({"step_s": dt, "timed_steps": timed, "batch": int(batches[0]["tokens"].shape[0]),
                          "loss_impl": resolve_impl(a.loss_impl, dev),
                          "masked_per_step": dict(zip(("text", "image", "audio"), m))}), flush=True)
    except torch.OutOfMemoryError as e:
        print(json.dumps({"error": f"oom: {str(e)[:300]}"}), flush=True)
        sys.exit(3)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def layout_of(a):
    from trimodal.tokenizers.vocab import VocabLayout

    return VocabLayout(text_codes=a.vocab, image_codes=a.image_codes)


def model_config(a):
    from trimodal.train.model import ModelConfig

    return ModelConfig(dim=128 * a.depth, n_layers=a.depth, n_heads=a.heads or a.depth, max_seq_len=a.seq_len,
                       attention=a.attention)


def save_rows(a, roots: list[Path], batch: int, path: Path) -> dict[str, float]:
    """The trainer's first ``steps`` batches (same loader config), saved for the plain loop;
    returns the mean per step of non-PAD positions and Σ sᵢ²."""
    import torch

    from trimodal.shards.loader import LoaderConfig, RowLoader, SourceConfig, TrimodalDataset

    ds = TrimodalDataset(LoaderConfig(sources=[SourceConfig(root=str(r)) for r in roots], seq_len=a.seq_len,
                                      num_streams=2, pack_paired=True, seed=a.seed), layout_of(a), rank=0, world_size=1)
    loader = RowLoader(ds, batch)
    batches = [loader.next() for _ in range(a.steps)]
    torch.save({"batches": batches}, path)
    stats = [row_stats(b["segments"], b["valid"]) for b in batches[a.warmup:]] or [row_stats(batches[0]["segments"], batches[0]["valid"])]
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}


# ---- driver ------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model: check the script end to end")
    ap.add_argument("--json", default=None, help="result file (default $OUT/mfu.json, else <work>/mfu.json)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall seconds for everything here")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--heads", type=int, default=0, help="0: depth (head dim 128)")
    ap.add_argument("--seq-len", type=int, default=3256)
    ap.add_argument("--batch", type=int, default=8, help="rows per step; halved on out-of-memory")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed (compile, allocator)")
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=100277)
    ap.add_argument("--image-codes", type=int, default=16384)
    ap.add_argument("--workers", type=int, default=1, help="trainer data.num_workers")
    ap.add_argument("--ac", default="none", help="trainer activation checkpointing (the plain loop has none)")
    ap.add_argument("--loss-impl", default="auto")
    ap.add_argument("--attention", default=None, help="default: flex on CUDA, sdpa on the dry run")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/mfu")
    ap.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.dry_run:
        a.work = a.work + "-dry"
        a.depth, a.heads, a.seq_len, a.vocab, a.image_codes = min(a.depth, 2), 2, min(a.seq_len, 256), 512, 64
        a.batch, a.steps, a.warmup, a.log_every, a.compile, a.workers = min(a.batch, 2), min(a.steps, 6), 2, 2, False, 0
    a.device = a.device or ("cpu" if a.dry_run else "cuda")
    a.attention = a.attention or ("sdpa" if a.dry_run else "flex")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a.plain_child:
        plain_main(a)
        return {}
    t_start = time.time()
    deadline = t_start + a.budget_s
    work = Path(a.work)
    out_dir = Path(os.environ.get("OUT") or work)
    rep = Report(Path(a.json) if a.json else out_dir / "mfu.json", benchmark="gpu_mfu", dry_run=a.dry_run,
                 budget_s=a.budget_s, status="started")
    from trimodal.tokenizers.vocab import VocabLayout  # noqa: F401  (import cost before the clock matters)
    from trimodal.train.cross_entropy import resolve_impl
    from trimodal.train.model import param_counts

    mcfg, layout = model_config(a), layout_of(a)
    device_name = "cpu (dry run)"
    if a.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK.items() if k in device_name), 989.4e12)
    rep.data.update(device=device_name, depth=a.depth, dim=mcfg.dim, seq_len=a.seq_len, attention=a.attention,
                    compile=a.compile, params=param_counts(mcfg, layout), peak_flops=peak,
                    loss_impl_requested=a.loss_impl, loss_impl=resolve_impl(a.loss_impl, a.device))
    rep.save()

    data = work / "data"
    tokens = a.batch * a.seq_len * (a.steps + 5)
    bc.make_text_shards(data, samples=tokens // 1600 + 1, shards=4, min_len=200, max_len=min(3000, a.seq_len),
                        text_codes=a.vocab)
    images = work / "images"
    bc.make_image_shards(images, samples=3 * a.batch * (a.steps + 5), grid=32 if not a.dry_run else 4,
                         caption=(20, 120) if not a.dry_run else (5, 20), text_codes=a.vocab, image_codes=a.image_codes)
    roots = [data, images]

    batch = a.batch
    while True:  # the trainer first: it is the part that matters; OOM halves the batch
        left = deadline - time.time()
        trainer = run_trainer(a, roots, work / f"run-b{batch}", batch, timeout=min(left * 0.6, left - 30))
        rep.set(f"trainer_b{batch}", trainer)
        if trainer.get("error", "").startswith("oom") and batch > 1 and deadline - time.time() > 60:
            batch //= 2
            continue
        break
    rep.set("batch", batch)
    rows_file = work / f"rows-b{batch}.pt"
    stats = save_rows(a, roots, batch, rows_file)
    rep.set("rows_per_step", stats)
    plain, err = run_child(["--plain-child", "--rows", str(rows_file), *_child_args(a)],
                           timeout=deadline - time.time() - 5)
    plain = dict(plain or {})
    if err:
        plain["error"] = err
    rep.set("plain_loop", plain)

    masked = plain.get("masked_per_step") or {"text": 0.5 * stats["positions"]}  # expectation when unmeasured
    fl = step_flops(mcfg, layout, stats["positions"], stats["seg_sq"], masked)
    rep.set("flops_per_step", fl)
    for key, r in (("trainer", trainer), ("plain_loop", plain)):
        if r.get("step_s"):
            r["model_flops_per_s"] = fl["total"] / r["step_s"]
            r["mfu"] = None if a.dry_run else r["model_flops_per_s"] / peak
            r["non_pad_tokens_per_s"] = stats["positions"] / r["step_s"]
    if trainer.get("step_s") and plain.get("step_s"):
        rep.set("trainer_over_plain_step_time", trainer["step_s"] / plain["step_s"])
    rep.set(f"trainer_b{batch}", trainer)
    rep.set("plain_loop", plain)
    rep.set("wall_s", round(time.time() - t_start, 1))
    rep.set("status", "done")
    print(json.dumps(rep.data, default=str), flush=True)
    return rep.data


def _child_args(a) -> list[str]:
    args = ["--depth", str(a.depth), "--heads", str(a.heads), "--seq-len", str(a.seq_len), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--vocab", str(a.vocab), "--image-codes", str(a.image_codes),
            "--loss-impl", a.loss_impl, "--attention", a.attention, "--device", a.device, "--seed", str(a.seed)]
    if not a.compile:
        args.append("--no-compile")
    return args


if __name__ == "__main__":
    main()
