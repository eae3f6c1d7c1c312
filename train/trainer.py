"""The training entry point: config → data, model, optimizer → steps → checkpoints and logs.

One optimizer step, top to bottom:
1. take ``grad_accum`` micro-batches of this rank's rows from the streaming loader;
2. count the non-PAD positions of the whole global step (all micro-batches, all ranks): the loss
   normaliser, so the step's gradient is that of one global-batch loss;
3. draw t for every row of the global batch from a generator seeded by (seed, step), keep this
   rank's slice; mask with a generator seeded by (seed, step, rank, micro-batch);
4. forward + masked-diffusion loss + backward per micro-batch; clip; AdamW step at the
   scheduled lr;
5. log (loss, per-modality ELBO, tokens/s, padding), checkpoint every ``ckpt_every`` steps.

Seeding every random draw from the step makes resume exact without saving RNG states.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
from trimodal.shards.manifest import Manifest, check_same_tokenizers
from trimodal.tokenizers.vocab import MODALITIES, VocabLayout
from trimodal.train import checkpoint as ckpt
from trimodal.train import distributed as D
from trimodal.train.configs import ConfigError, apply_overrides, from_dict, load_json
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.objective import ObjectiveConfig, diffusion_loss
from trimodal.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from trimodal.train.reparam import WEIGHT_DECAY_RULES, BaseRun, ReparamConfig, reparameterize
from trimodal.train.schedules import make_schedule, sample_t


@dataclass
class DataConfig:
    """Datasets (manifest roots) and their mixing weights; see :mod:`trimodal.shards.loader`."""

    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 3256
    num_streams: int = 8
    verify_checksums: bool = False
    on_corrupt: str = "error"
    # Block sizes for modalities without a dataset in this run (their tokenizer fills them in otherwise).
    image_codes: int = 16384
    audio_codes: int = 1024
    audio_levels: int = 4


@dataclass
class ReparamSection:
    """SDE batch reparameterisation. ``tokens`` = token horizon D (positions, padding included:
    D = B·L·S); 0 disables it, and ``run.steps`` with ``optim`` values are used as given."""

    tokens: float = 0.0
    gamma: float = 0.44
    weight_decay_rule: str = "none"
    base_batch: int = 256
    base_tokens: float = 13e9

    def __post_init__(self) -> None:
        # Checked even when the reparameterisation is off (tokens = 0): a bad value is a typo.
        if not (math.isfinite(self.tokens) and self.tokens >= 0):
            raise ValueError(f"reparam.tokens must be >= 0 (0 = off), got {self.tokens}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"reparam.gamma must be in [0, 1], got {self.gamma}")
        if self.weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"reparam.weight_decay_rule must be one of {list(WEIGHT_DECAY_RULES)}, "
                             f"got {self.weight_decay_rule!r}")
        if self.base_batch <= 0 or not self.base_tokens > 0:
            raise ValueError(f"reparam.base_batch and reparam.base_tokens must be positive, "
                             f"got {self.base_batch}, {self.base_tokens}")


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 8  # physical global batch B (rows per optimizer step, all ranks)
    micro_batch_size: int = 0  # rows per forward pass per rank; 0 = B / world (no accumulation)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    compile: bool = False
    activation_checkpointing: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    resume: bool = False
    progress: bool = True
    stop_at_step: int = 0  # stop early (with a checkpoint) at this step; schedules still span `steps`
    # Debug: each rank appends a hash of every row it trains on to
    # <out>/rows/rank-<r>.from-<start step>.jsonl (one line per step), to audit resumes.
    log_rows: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reparam: ReparamSection = field(default_factory=ReparamSection)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def load(cls, path: str | None, overrides: list[str] | None = None) -> "TrainConfig":
        data = load_json(path) if path else {}
        return from_dict(cls, apply_overrides(data, overrides or []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- wiring -------------------------------------------------------------------------------


def tokenizers_of(manifests: dict[str, Manifest]) -> dict[str, dict[str, Any]]:
    """The tokenizers (kind, fingerprint, vocab size, path) the datasets were made with."""
    check_same_tokenizers(manifests)
    toks: dict[str, dict[str, Any]] = {}
    for m in manifests.values():
        for name, info in m.tokenizers.items():
            toks.setdefault(name, info)
    return toks


def layout_from_manifests(manifests: dict[str, Manifest], data: DataConfig) -> VocabLayout:
    """Block sizes from the datasets' tokenizers; fingerprints for refusing foreign shards."""
    toks = tokenizers_of(manifests)
    for m in manifests.values():
        if m.layout is not None:  # mixed shards carry their layout
            return VocabLayout.from_dict(m.layout)
    if "text" not in toks:
        raise ConfigError("data.sources: no dataset has a text tokenizer; every modality needs text")
    return VocabLayout(
        text_codes=int(toks["text"]["vocab_size"]),
        image_codes=int(toks.get("image", {}).get("vocab_size", data.image_codes)),
        audio_codes=int(toks.get("audio", {}).get("vocab_size", data.audio_codes)),
        audio_levels=int(toks.get("audio", {}).get("n_keep", data.audio_levels)),
        fingerprints={name: info["fingerprint"] for name, info in toks.items() if "fingerprint" in info},
    )


def resolve_schedule(cfg: TrainConfig) -> dict[str, Any]:
    """Steps and AdamW values: from the SDE reparameterisation when ``reparam.tokens`` is set."""
    o = cfg.optim
    if cfg.reparam.tokens <= 0:
        return {"steps": cfg.run.steps, "lr": o.lr, "beta1": o.beta1, "beta2": o.beta2, "eps": o.eps,
                "weight_decay": o.weight_decay, "reparam": None}
    r = reparameterize(
        cfg.run.batch_size,
        cfg.reparam.tokens,
        cfg.data.seq_len,
        ReparamConfig(
            gamma=cfg.reparam.gamma,
            weight_decay_rule=cfg.reparam.weight_decay_rule,
            base=BaseRun(batch=cfg.reparam.base_batch, tokens=cfg.reparam.base_tokens, lr=o.lr, beta1=o.beta1,
                         beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay),
        ),
    )
    return {"steps": r.steps, "lr": r.lr, "beta1": r.beta1, "beta2": r.beta2, "eps": r.eps,
            "weight_decay": r.weight_decay, "reparam": r.to_dict()}


def micro_batching(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps); errors name the offending key."""
    if cfg.batch_size <= 0:
        raise ConfigError(f"run.batch_size must be positive, got {cfg.batch_size}")
    if cfg.batch_size % world:
        raise ConfigError(f"run.batch_size ({cfg.batch_size}) is not divisible by the world size ({world})")
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(f"run.micro_batch_size ({micro}) must divide the per-rank batch ({per_rank})")
    return micro, per_rank // micro


def _seeded(*parts: int) -> torch.Generator:
    g = torch.Generator()
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p) + 1) % (2**63 - 1)
    g.manual_seed(seed)
    return g


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise ConfigError(f"run.dtype must be auto, bf16 or fp32, got {name!r}")
    return table[name]


class Logger:
    """JSON lines to ``<out>/log.jsonl`` and a line to the console (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool, resume: bool):
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a" if resume else "w")

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.f.write(json.dumps(record, sort_keys=True) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.enabled:
            self.f.close()


# ---- the loop ----------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (first/last loss, steps, paths)."""
    info = D.init_distributed(cfg.run.device)
    try:
        return _train(cfg, info)
    finally:
        D.cleanup()


def _train(cfg: TrainConfig, info: D.DistInfo) -> dict[str, Any]:
    out = Path(cfg.run.out_dir)
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: give at least one dataset root")
    manifests = {s.root: Manifest.load(s.root) for s in cfg.data.sources}
    layout = layout_from_manifests(manifests, cfg.data)
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len})")
    micro, accum = micro_batching(cfg.run, info.world_size)
    sched = resolve_schedule(cfg)
    total_steps = sched["steps"]
    dtype = _dtype(cfg.run.dtype, info.device)

    torch.manual_seed(cfg.run.seed)  # identical init on every rank before sharding
    model = Transformer(cfg.model, layout)
    model.to(info.device)
    model = D.shard_model(model, dtype if info.distributed and dtype != torch.float32 else None,
                          activation_checkpointing=cfg.run.activation_checkpointing, compile=cfg.run.compile)
    autocast = (not info.distributed) and dtype != torch.float32
    optimizer = build_optimizer(model, sched["lr"], (sched["beta1"], sched["beta2"]), sched["eps"], sched["weight_decay"])

    loader_cfg = LoaderConfig(sources=cfg.data.sources, seq_len=cfg.data.seq_len, seed=cfg.run.seed,
                              num_streams=cfg.data.num_streams, verify_checksums=cfg.data.verify_checksums,
                              on_corrupt=cfg.data.on_corrupt)
    dataset = TrimodalDataset(loader_cfg, layout, rank=info.rank, world_size=info.world_size)

    start_step = 0
    ckpt_root = out / "checkpoints"
    if cfg.run.resume:
        latest = ckpt.latest_checkpoint(ckpt_root)
        if latest is not None:
            state = ckpt.load_checkpoint(latest, model, optimizer)
            saved_layout = VocabLayout.from_dict(state["layout"])
            layout.check_compatible(saved_layout, what=f"checkpoint {latest}")
            saved = state["rank_states"]
            if int(state["world_size"]) == info.world_size and "format" in saved[info.rank]:
                # Same ranks: this rank's own streams *and* its round-robin position among them.
                dataset.load_state_dict(saved[info.rank])
            else:  # another world size: the union of every rank's streams; each rank takes its own
                merged: dict[str, Any] = {}
                for rs in saved:
                    merged.update(rs["streams"])
                dataset.load_stream_states({int(k): v for k, v in merged.items()})
            start_step = int(state["step"])
            if info.is_main:
                n = state["world_size"]
                print(f"resumed from {latest} at step {start_step} (saved by {n} rank{'s' if n != 1 else ''})")

    schedule = make_schedule(cfg.objective.schedule)
    logger = Logger(out, info.is_main, resume=start_step > 0)
    if info.is_main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
        n_params = sum(p.numel() for p in model.parameters())
        logger.log({"event": "start", "step": start_step, "total_steps": total_steps, "world_size": info.world_size,
                    "params": n_params, "layout": layout.to_dict(), "optim": {k: v for k, v in sched.items() if k != "reparam"},
                    "reparam": sched["reparam"], "micro_batch": micro, "grad_accum": accum})
        if sched["reparam"]:
            r = sched["reparam"]
            print(f"SDE reparameterisation: B={r['batch']} B~={r['logical_batch']:.2f} kappa={r['kappa']:.5f} "
                  f"lr={r['lr']:.4e} beta1={r['beta1']:.5f} beta2={r['beta2']:.5f} eps={r['eps']:.4e} "
                  f"wd={r['weight_decay']:.4g} steps={r['steps']}")

    rows = iter(dataset)
    rows_log = None
    if cfg.run.log_rows:
        (out / "rows").mkdir(parents=True, exist_ok=True)
        rows_log = open(out / "rows" / f"rank-{info.rank}.from-{start_step:07d}.jsonl", "w")
    history: list[float] = []
    bar = None
    if info.is_main and cfg.run.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    tokens_seen, t0 = 0, time.perf_counter()
    model.train()
    end_step = min(total_steps, cfg.run.stop_at_step) if cfg.run.stop_at_step > 0 else total_steps
    for step in range(start_step, end_step):
        lr = lr_at(step, total_steps, sched["lr"], cfg.optim.warmup_steps, cfg.optim.min_lr, cfg.optim.warmup_max_fraction)
        set_lr(optimizer, lr)
        batches = [_collate([next(rows) for _ in range(micro)], info.device) for _ in range(accum)]
        if rows_log is not None:
            hashes = [hashlib.blake2b(r.cpu().numpy().tobytes(), digest_size=8).hexdigest()
                      for b in batches for r in b["tokens"]]
            rows_log.write(json.dumps({"step": step + 1, "rows": hashes}) + "\n")
            rows_log.flush()
        n_local = torch.tensor(float(sum(int(b["valid"].sum()) for b in batches)), device=info.device)
        n_global = D.all_reduce_sum(n_local.clone())
        t_all = sample_t(micro * accum, cfg.objective.eps, _seeded(cfg.run.seed, step), cfg.objective.time_sampling,
                         rank=info.rank, world_size=info.world_size)
        stats = torch.zeros(4, 3, device=info.device)  # weighted_sum, ce_sum, masked, tokens per modality
        loss_sum = torch.zeros((), device=info.device)
        for i, b in enumerate(batches):
            with torch.autocast(info.device.type, dtype=dtype, enabled=autocast):
                res = diffusion_loss(model, b["tokens"], b["modality"], b["valid"], layout, cfg.objective,
                                     t=t_all[i * micro:(i + 1) * micro], generator=_seeded(cfg.run.seed, step, info.rank, i, 7),
                                     schedule=schedule, n_tokens=n_global)
            # FSDP averages gradients over ranks; the loss is already a global-batch mean.
            (res.loss * info.world_size).backward()
            loss_sum += res.loss.detach()
            stats += torch.stack([res.weighted_sum, res.ce_sum, res.masked, res.tokens])
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        D.all_reduce_sum(loss_sum)
        D.all_reduce_sum(stats)
        loss = float(loss_sum)
        history.append(loss)
        tokens_seen += int(n_global)
        if bar is not None:
            bar.update(1)
            per_modality = {name: f"{float(stats[0, m] / stats[3, m]):.3f}" for m, name in enumerate(MODALITIES)
                            if stats[3, m] > 0}
            bar.set_postfix(loss=f"{loss:.4f}", **per_modality, lr=f"{lr:.2e}")
        if (step + 1) % cfg.run.log_every == 0 or step == start_step or step + 1 == end_step:
            elapsed = time.perf_counter() - t0
            record = {"step": step + 1, "elapsed": elapsed, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": tokens_seen, "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                      "padding": 1.0 - float(n_global) / (cfg.run.batch_size * cfg.data.seq_len)}
            for m, name in enumerate(MODALITIES):
                if stats[3, m] > 0:
                    record[f"loss/{name}"] = float(stats[0, m] / stats[3, m])
                    record[f"tokens/{name}"] = int(stats[3, m])
            logger.log(record)
            if bar is None and info.is_main:
                print(json.dumps(record))
        if cfg.run.ckpt_every > 0 and ((step + 1) % cfg.run.ckpt_every == 0 or step + 1 == end_step):
            state = {"config": cfg.to_dict(), "layout": layout.to_dict(), "reparam": sched["reparam"],
                     "tokenizers": tokenizers_of(manifests),
                     "optim": {k: v for k, v in sched.items() if k != "reparam"}}
            # state_dict(): this rank's streams ("streams", all a world-size change needs) plus
            # its round-robin position ("owned", "rr"), needed to resume on the same ranks exactly.
            path = ckpt.save_checkpoint(ckpt_root, step + 1, model, optimizer, state, dataset.state_dict(), info,
                                        keep_last=cfg.run.keep_last)
            logger.log({"event": "checkpoint", "step": step + 1, "path": str(path)})
    if bar is not None:
        bar.close()
    if rows_log is not None:
        rows_log.close()
    logger.close()
    return {"first_loss": history[0] if history else math.nan, "last_loss": history[-1] if history else math.nan,
            "losses": history, "steps": total_steps, "start_step": start_step, "end_step": end_step, "out_dir": str(out),
            "log": str(out / "log.jsonl"), "checkpoints": str(ckpt_root)}


def _collate(rows: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]).to(device, non_blocking=True) for k in ("tokens", "modality", "valid", "task")}
