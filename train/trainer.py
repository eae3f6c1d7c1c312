"""The training entry point: a :class:`Trainer` that builds itself from one config and steps.

One optimizer step (:meth:`Trainer.train_step`), top to bottom:

1. take this rank's rows of the global batch (``grad_accum`` micro-batches) from the loader;
2. draw t for every row of the global batch from a generator seeded by (seed, step) and the
   masking uniforms of each row from one seeded by (seed, step, global row index): row ``j`` of
   rank ``r`` of ``W`` is global row ``j·W + r``, the same row whatever ``W`` (``docs/loader.md``);
3. count the non-PAD and masked positions of the whole global batch: the two normalisers;
4. forward + masked-diffusion loss + backward per micro-batch; clip; AdamW at the scheduled lr;
5. log; evaluate every ``eval.every`` steps; checkpoint every ``run.ckpt_every`` steps.

The step's counts, loss and gradient norm stay on the device: the host reads them once per
log interval (``run.log_every``), so steps between log steps queue work without waiting for it.
The loss head still gathers the masked positions (``nonzero``: a dynamic shape, a device sync).

So gradient accumulation is a pure memory knob and a run's loss sequence does not depend on how
it is spread over processes, nor on being resumed (nothing random needs saving).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from trimodal import storage
from trimodal.config import ConfigError, build, option, to_dict
from trimodal.shards.loader import LoaderConfig, RowLoader, TrimodalDataset, load_manifests, tokenizers_of
from trimodal.tokenizers.vocab import MODALITIES, BlockDefaults, VocabLayout
from trimodal.train import checkpoint as ckpt
from trimodal.train import distributed as D
from trimodal.train.evaluate import EvalConfig, Evaluator
from trimodal.train.metrics import LogConfig, Metrics
from trimodal.train.model import ModelConfig, param_counts
from trimodal.train.objective import (
    ObjectiveConfig, corrupt, row_uniforms, score, seed_of, segment_times, subsample_rows,
)
from trimodal.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from trimodal.train.parametrization import ParamConfig, build_model, optimizer_settings
from trimodal.train.reparam import BaseRun, ReparamConfig, reparameterize
from trimodal.train.schedules import make_schedule, sample_t

RUN_FILE = "run.json"
SUBSAMPLE = 0x7373  # seed salt of the random-subsample draws


@dataclass
class RunConfig:
    out_dir: str = option("runs/default", help="run folder (local path or s3:// / gs:// URL)")
    steps: int = option(1000, help="optimizer steps (with reparam.tokens set: derived from D)")
    batch_size: int = option(8, help="physical global batch B: rows per optimizer step, all ranks")
    micro_batch_size: int = option(0, help="rows per forward pass per rank (0: B / world, no accumulation)")
    seed: int = option(0, help="seed of init, data order, t and masks")
    device: str = option("auto", help="auto, cpu or cuda")
    dtype: str = option("auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32")
    compile: bool = option(False, help="torch.compile each block")
    activation_checkpointing: str = option("none", help="none, full (every block) or selective (every other block)")
    log_every: int = option(10, help="steps between step records")
    ckpt_every: int = option(500, help="steps between checkpoints (0: only at the end if ckpt_final)")
    ckpt_final: bool = option(True, help="checkpoint the last step (a stop at run.stop_at_step always is)")
    keep_last: int = option(3, help="complete checkpoints of this run kept (0: all)")
    resume: bool = option(False, help="continue from the newest usable checkpoint")
    auto_resume: bool = option(False, help="continue the run this folder holds, else start it (launchers: the same "
                                           "command on every start and restart)")
    overwrite: bool = option(False, help="start afresh in a non-empty run folder, deleting it first")
    progress: bool = option(True, help="progress bar on rank 0")
    stop_at_step: int = option(0, help="stop early (with a checkpoint) at this step; schedules still span steps")
    log_rows: bool = option(False, help="debug: log a hash of every row trained on, per rank")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "ckpt_every", "keep_last", "stop_at_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"run.{name} must be >= 0, got {getattr(self, name)}")
        if self.activation_checkpointing in (True, False):  # older configs: a bool
            self.activation_checkpointing = "full" if self.activation_checkpointing else "none"
        if self.activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"run.activation_checkpointing must be none, full or selective, got {self.activation_checkpointing!r}")
        if (self.resume or self.auto_resume) and self.overwrite:
            raise ValueError("run.resume / run.auto_resume and run.overwrite exclude each other")
        storage.check_writable(self.out_dir, "run.out_dir")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    vocab: BlockDefaults = field(default_factory=BlockDefaults)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reparam: ReparamConfig = field(default_factory=ReparamConfig)
    param: ParamConfig = field(default_factory=ParamConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def load(cls, path: str | None, overrides: list[str] | None = None) -> "TrainConfig":
        return build(cls, path, overrides=overrides or [])

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_schedule(cfg: TrainConfig) -> dict[str, Any]:
    """Steps and AdamW values: from the SDE reparameterisation when ``reparam.tokens`` is set."""
    o = cfg.optim
    out = {"steps": cfg.run.steps, "lr": o.lr, "beta1": o.beta1, "beta2": o.beta2, "eps": o.eps,
           "weight_decay": o.weight_decay, "min_lr": o.min_lr, "grad_clip": o.grad_clip, "reparam": None}
    if not cfg.reparam.enabled:
        return out
    base = cfg.reparam.base or BaseRun(batch=cfg.reparam.base_batch, tokens=cfg.reparam.base_tokens, lr=o.lr,
                                       beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay)
    from dataclasses import replace

    r = reparameterize(cfg.run.batch_size, cfg.reparam.tokens, cfg.data.seq_len, replace(cfg.reparam, base=base))
    return {"steps": r.steps, "lr": r.lr, "beta1": r.beta1, "beta2": r.beta2, "eps": r.eps,
            "weight_decay": r.weight_decay, "min_lr": o.min_lr * r.min_lr_scale, "grad_clip": o.grad_clip * r.grad_clip_scale,
            "reparam": r.to_dict()}


def micro_batching(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps); errors name the offending key."""
    if cfg.batch_size % world:
        raise ConfigError(f"run.batch_size ({cfg.batch_size}) is not divisible by the world size ({world})")
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(f"run.micro_batch_size ({micro}) must divide the per-rank batch ({per_rank})")
    return micro, per_rank // micro


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise ConfigError(f"run.dtype must be auto, bf16 or fp32, got {name!r}")
    return table[name]


# ---- the run folder ----------------------------------------------------------------------------
def _occupied(out: str) -> list[str]:
    """What of an earlier run is in ``out`` (run.json, log, checkpoints), if anything."""
    fs, path = storage.fs_and_path(out)
    return [n for n in (RUN_FILE, "log.jsonl", "checkpoints", "config.json") if fs.exists(f"{path}/{n}")]


def prepare_run_dir(cfg: RunConfig, is_main: bool) -> tuple[str, bool]:
    """``(run id, resuming)``: the id is read back on resume; new on a fresh start, which refuses
    a folder that holds an earlier run unless ``overwrite`` (then the folder is emptied first).
    ``auto_resume`` resumes when the folder holds a run (``run.json``), else starts one."""
    out = cfg.out_dir
    run_file = storage.join(out, RUN_FILE)
    if cfg.resume or cfg.auto_resume:
        try:
            return json.loads(storage.read_bytes(run_file))["run_id"], True
        except FileNotFoundError:
            if cfg.resume:
                raise ConfigError(f"--resume: {out} holds no run ({RUN_FILE} missing); start it without --resume, "
                                  f"or pass --auto-resume") from None
    found = _occupied(out)
    if found and not cfg.overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, or "
                          f"--overwrite to delete it and start afresh")
    run_id = uuid.uuid4().hex[:12]
    if is_main:
        if found:
            fs, path = storage.fs_and_path(out)
            for n in found:
                fs.rm(f"{path}/{n}", recursive=True)
        storage.write_atomic(run_file, json.dumps({"run_id": run_id}).encode())
    return run_id, False


@dataclass
class StepResult:
    """One step's results, left on the device (reading them waits for the step's kernels: the
    loop reads them once per log interval, :meth:`Trainer.fit`)."""

    loss: torch.Tensor  # 0-dim, the global mean loss
    lr: float
    grad_norm: torch.Tensor  # 0-dim, before clipping
    n_tokens: torch.Tensor  # 0-dim int64: non-PAD positions of the global batch (one copy of anti-masked rows)
    stats: torch.Tensor  # [4, 3]: weighted CE sum, CE sum, masked, tokens per modality


class Trainer:
    """Build (config → data, model, optimizer), resume, step, evaluate, log, save."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        self.cfg, self.info = cfg, info
        run = cfg.run
        self._rows_log = None
        self.manifests = load_manifests(cfg.data)
        self.tokenizers = tokenizers_of(self.manifests)
        self.layout = VocabLayout.from_tokenizers(self.tokenizers, cfg.vocab)
        if cfg.data.seq_len > cfg.model.max_seq_len:
            raise ConfigError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len})")
        self.micro, self.accum = micro_batching(run, info.world_size)
        self.sched = resolve_schedule(cfg)
        self.total_steps = self.sched["steps"]
        self.dtype = _dtype(run.dtype, info.device)

        torch.manual_seed(run.seed)  # identical init on every rank before sharding
        model = build_model(cfg.model, self.layout, cfg.param).to(info.device)
        self.params = param_counts(cfg.model, self.layout)
        self.model = D.shard_model(model, self.dtype if info.distributed and self.dtype != torch.float32 else None,
                                   activation_checkpointing=run.activation_checkpointing, compile=run.compile)
        self.autocast = (not info.distributed) and self.dtype != torch.float32
        s = self.sched
        self.optimizer = build_optimizer(self.model, s["lr"], (s["beta1"], s["beta2"]), s["eps"], s["weight_decay"],
                                         optimizer_settings(cfg.model, cfg.param, (s["beta1"], s["beta2"]), s["eps"], s["weight_decay"]))
        self.schedule = make_schedule(cfg.objective.schedule)
        self.dataset = TrimodalDataset(cfg.data, self.layout, rank=info.rank, world_size=info.world_size,
                                       seed=cfg.data.seed if cfg.data.seed is not None else run.seed,
                                       manifests=self.manifests)
        self.loader = RowLoader(self.dataset, self.micro, cfg.data.num_workers, pin_memory=info.device.type == "cuda")
        self.evaluator = Evaluator.build(cfg.eval, self.layout, self.manifests, cfg.data, cfg.objective, info) \
            if cfg.eval.enabled else None
        self.start_step = 0
        self.ckpt_root = storage.join(run.out_dir, "checkpoints")
        self.warnings = self._check_audio_budget() if info.is_main else []
        # claimed last: a run refused while it is built (bad sources, seq_len, …) leaves the folder as it was
        self.run_id, self.resuming = D.on_main(lambda: prepare_run_dir(run, True))

    def _check_audio_budget(self) -> list[str]:
        """Warn when more than 1 % of an audio source's clips do not fit a row (they are then
        cropped, skipped or stop the run: ``data.audio_overflow``)."""
        from trimodal.shards.loader.sources import audio_overflow_estimate

        out = []
        for src in self.dataset.sources:
            if src.task != "audio_text" or src.kind != "tokenized":
                continue
            over, seen = audio_overflow_estimate(src, self.cfg.data.seq_len, self.layout.audio_levels)
            if seen and over / seen > 0.01:
                msg = (f"warning: {over} of {seen} audio clips looked at in {src.name!r} do not fit a row of "
                       f"{self.cfg.data.seq_len} positions; data.audio_overflow={self.cfg.data.audio_overflow} "
                       f"(see `trimodal shards stats {src.root} --seq-len {self.cfg.data.seq_len}`)")
                print(msg, flush=True)
                out.append(msg)
        return out

    # ---- resume -------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest checkpoint that verifies; a damaged one is named and the previous one
        tried. No usable checkpoint is an error (never a silent restart), except under
        ``auto_resume`` when the run has no complete checkpoint yet: it starts again at step 0
        (returns False)."""
        candidates = ckpt.complete_checkpoints(self.ckpt_root)
        if not candidates and self.cfg.run.auto_resume and not self.cfg.run.resume:
            self._say(f"no complete checkpoint under {self.ckpt_root} yet: starting the run again at step 0")
            return False
        if not candidates:
            raise ConfigError(f"--resume: no complete checkpoint under {self.ckpt_root}")
        errors = []
        for path in reversed(candidates):
            try:
                loaded = ckpt.load_checkpoint(path, self.model, self.optimizer, self.info)
            except ckpt.CheckpointError as e:
                errors.append(str(e))
                self._say(f"checkpoint {path} is damaged ({e}); trying the previous one")
                continue
            self.layout.check_compatible(VocabLayout.from_dict(loaded.state["layout"]), what=f"checkpoint {path}")
            self.start_step = int(loaded.state["step"])
            how = self.loader.resume(loaded.rank_states, rows_done=self.start_step * self.micro * self.accum)
            n = loaded.state["world_size"]
            self._say(f"resumed from {path} at step {self.start_step} (saved by {n} rank{'s' if n != 1 else ''}; "
                      f"data position: {how})")
            return True
        raise ConfigError(f"--resume: no usable checkpoint under {self.ckpt_root}: " + "; ".join(errors))

    def _say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)

    # ---- one step -----------------------------------------------------------------------------
    def _global_rows(self, j: torch.Tensor) -> torch.Tensor:
        return j * self.info.world_size + self.info.rank

    def train_step(self, step: int) -> StepResult:
        cfg, info, layout = self.cfg, self.info, self.layout
        lr = lr_at(step, self.total_steps, self.sched["lr"], cfg.optim.warmup_steps, self.sched["min_lr"],
                   cfg.optim.warmup_max_fraction)
        set_lr(self.optimizer, lr)
        batches = [self.loader.next() for _ in range(self.accum)]
        if self._rows_log is not None:
            hashes = [hashlib.blake2b(r.numpy().tobytes(), digest_size=8).hexdigest() for b in batches for r in b["tokens"]]
            self._rows_log.write(json.dumps({"step": step + 1, "rows": hashes}) + "\n")
            self._rows_log.flush()

        # t for the whole global batch (strata and antithetic pairs span it), masks per global row
        t_all = sample_t(cfg.run.batch_size, cfg.objective.eps, torch.Generator().manual_seed(seed_of(cfg.run.seed, step)),
                         cfg.objective.time_sampling)
        # counts stay on the device (no host sync inside the step; the loop reads them at log steps)
        corrupted, n_local = [], torch.zeros(2, dtype=torch.float64, device=info.device)
        for i, b in enumerate(batches):
            rows = self._global_rows(torch.arange(i * self.micro, (i + 1) * self.micro))
            segs_host = b.get("segments")  # the loader's (host) copy: segment_times reads it on the host
            b = {k: v.to(info.device, non_blocking=True) for k, v in b.items()}
            tokens, valid = subsample_rows(b["tokens"], b["valid"], b["task"], row_uniforms(cfg.run.seed, step, rows, 2, SUBSAMPLE),
                                           cfg.objective.subsample, layout.pad)
            u = row_uniforms(cfg.run.seed, step, rows, tokens.shape[1])
            segs = b.get("segments")
            if segs is not None and cfg.data.pack_paired:  # one t per sample (segment), not per row
                t = segment_times(cfg.run.seed, step, rows, segs_host, cfg.objective.eps).to(info.device)
            else:
                t = t_all[rows]
            c = corrupt(tokens, b["modality"], valid, t, layout, cfg.objective, self.schedule, uniforms=u,
                        segments=segs, positions=b.get("positions"))
            corrupted.append(c)
            n_local += torch.stack([c.valid.sum(), c.is_masked.sum()]).to(torch.float64)
        n_global = D.all_reduce_sum(n_local)
        n_tokens, n_masked = n_global[0].float(), n_global[1].float()  # anti-masked rows counted as scored

        stats = torch.zeros(4, 3, device=info.device)
        loss_sum = torch.zeros((), device=info.device)
        for c in corrupted:
            with torch.autocast(info.device.type, dtype=self.dtype, enabled=self.autocast):
                res = score(self.model, c, layout, cfg.objective, n_tokens=n_tokens, n_masked=n_masked)
            (res.loss * info.world_size).backward()  # FSDP averages gradients; the loss is a global mean
            loss_sum += res.loss.detach()
            stats += torch.stack([res.weighted_sum, res.ce_sum, res.masked, res.tokens])
        # grad_clip 0: off (the norm is still measured and logged)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.sched["grad_clip"] or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        D.all_reduce_sum(loss_sum)
        D.all_reduce_sum(stats)
        n_rows_tokens = n_global[0].to(torch.int64) // (2 if cfg.objective.anti_mask else 1)
        return StepResult(loss_sum, lr, grad_norm, n_rows_tokens, stats)

    # ---- records ----------------------------------------------------------------------------------
    def _counters(self) -> dict[str, int]:
        local = self.loader.counters()
        keys = sorted(local)
        t = D.all_reduce_sum(torch.tensor([float(local[k]) for k in keys], dtype=torch.float64, device=self.info.device))
        return {k: int(v) for k, v in zip(keys, t.tolist())}

    def step_record(self, step: int, r: StepResult, elapsed: float, tokens_seen: int, loss: float) -> dict[str, Any]:
        """The log record of step ``step`` (``loss``: ``r.loss`` read on the host already)."""
        stats = r.stats.cpu()
        rec: dict[str, Any] = {"step": step + 1, "elapsed": elapsed, "loss": loss, "lr": r.lr,
                               "grad_norm": float(r.grad_norm),
                               "tokens": tokens_seen, "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                               "padding": 1.0 - int(r.n_tokens) / (self.cfg.run.batch_size * self.cfg.data.seq_len)}
        for m, name in enumerate(MODALITIES):
            if stats[3, m] > 0:
                rec[f"loss/{name}"] = float(stats[0, m] / stats[3, m])
                rec[f"tokens/{name}"] = int(stats[3, m])
        counters = self._counters()
        for k in ("audio_too_long_cropped", "audio_too_long_skipped", "audio_frames_dropped", "image_too_long_skipped",
                  "captions_truncated", "shards_skipped_corrupt"):
            if counters.get(k):
                rec[f"data/{k}"] = counters[k]
        return rec

    def start_record(self) -> dict[str, Any]:
        return {"event": "start", "step": self.start_step, "run_id": self.run_id, "total_steps": self.total_steps,
                "warnings": self.warnings,
                "world_size": self.info.world_size, "params": self.params["total"],
                "params_non_embedding": self.params["non_embedding"], "layout": self.layout.to_dict(),
                "optim": {k: v for k, v in self.sched.items() if k != "reparam"}, "reparam": self.sched["reparam"],
                "micro_batch": self.micro, "grad_accum": self.accum}

    # ---- save -----------------------------------------------------------------------------------
    def save(self, step: int) -> str:
        state = {"config": self.cfg.to_dict(), "layout": self.layout.to_dict(), "reparam": self.sched["reparam"],
                 "tokenizers": {k: v.to_dict() for k, v in self.tokenizers.items()}, "run_id": self.run_id,
                 "optim": {k: v for k, v in self.sched.items() if k != "reparam"}}
        path = ckpt.save_checkpoint(self.ckpt_root, step, self.model, self.optimizer, state, self.loader.state_dict(),
                                    self.info)
        if self.info.is_main:
            ckpt.prune(self.ckpt_root, self.cfg.run.keep_last, self.run_id)
        return path

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        resumed = self.resuming and self.resume()
        metrics = Metrics(cfg.run.out_dir, cfg.log, info.is_main, self.start_step if resumed else None,
                          self.run_id, cfg.to_dict())
        if info.is_main:
            storage.write_atomic(storage.join(cfg.run.out_dir, "config.json"),
                                 json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())
            metrics.log(self.start_record())
            p = self.params
            print(f"model: {p['non_embedding'] / 1e6:.2f} M non-embedding parameters (N), {p['total'] / 1e6:.2f} M in all")
            if self.sched["reparam"]:
                r = self.sched["reparam"]
                print(f"SDE reparameterisation: B={r['batch']} B~={r['logical_batch']:.2f} kappa={r['kappa']:.5f} "
                      f"lr={r['lr']:.4e} beta1={r['beta1']:.5f} beta2={r['beta2']:.5f} eps={r['eps']:.4e} "
                      f"wd={r['weight_decay']:.4g} steps={r['steps']}")
        self._rows_log = None
        if cfg.run.log_rows:
            rows_dir = storage.join(cfg.run.out_dir, "rows")
            storage.fs_and_path(rows_dir)[0].makedirs(storage.fs_and_path(rows_dir)[1], exist_ok=True)
            self._rows_log = storage.fs_and_path(rows_dir)[0].open(
                f"{storage.fs_and_path(rows_dir)[1]}/rank-{info.rank}.from-{self.start_step:07d}.jsonl", "w")
        bar = None
        if info.is_main and cfg.run.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True)
        end = min(self.total_steps, cfg.run.stop_at_step) if cfg.run.stop_at_step > 0 else self.total_steps
        history: list[float] = []
        # losses and token counts stay on the device between log steps: one host read per log
        # interval, not per step (the step itself never waits for the device)
        pending: list[torch.Tensor] = []
        tokens_dev = torch.zeros((), dtype=torch.int64, device=info.device)
        tokens_seen, t0, eval_s = 0, time.perf_counter(), 0.0
        self.model.train()
        for step in range(self.start_step, end):
            r = self.train_step(step)
            pending.append(r.loss)
            tokens_dev += r.n_tokens
            if bar is not None:
                bar.update(1)
            last = step + 1 == end
            if (step + 1) % cfg.run.log_every == 0 or step == self.start_step or last:
                history.extend(torch.stack(pending).tolist())
                pending.clear()
                tokens_seen = int(tokens_dev)
                if bar is not None:  # the bar's figures: those of the log steps
                    stats = r.stats.cpu()
                    per = {n: f"{float(stats[0, m] / stats[3, m]):.3f}" for m, n in enumerate(MODALITIES) if stats[3, m] > 0}
                    bar.set_postfix(loss=f"{history[-1]:.4f}", **per, lr=f"{r.lr:.2e}")
                rec = self.step_record(step, r, time.perf_counter() - t0 - eval_s, tokens_seen, history[-1])
                metrics.log(rec)
                if bar is None and info.is_main:
                    print(json.dumps(rec))
            if self.evaluator is not None and self.evaluator.due(step + 1, last):
                e0 = time.perf_counter()
                rec = self.evaluator.run(self.model, step + 1, self.dtype if self.autocast else None)
                eval_s += time.perf_counter() - e0
                rec["seconds"] = time.perf_counter() - e0
                metrics.log(rec)
                self.model.train()
            stopping_early = last and end < self.total_steps  # run.stop_at_step: a segment ends with a checkpoint
            if (cfg.run.ckpt_every > 0 and (step + 1) % cfg.run.ckpt_every == 0) or (last and cfg.run.ckpt_final) \
                    or stopping_early:
                path = self.save(step + 1)
                metrics.log({"event": "checkpoint", "step": step + 1, "path": path})
        if bar is not None:
            bar.close()
        if self._rows_log is not None:
            self._rows_log.close()
        metrics.close()
        return {"first_loss": history[0] if history else math.nan, "last_loss": history[-1] if history else math.nan,
                "losses": history, "steps": self.total_steps, "start_step": self.start_step, "end_step": end,
                "out_dir": cfg.run.out_dir, "log": storage.join(cfg.run.out_dir, "log.jsonl"),
                "checkpoints": self.ckpt_root, "run_id": self.run_id, "eval_seconds": eval_s,
                "train_seconds": time.perf_counter() - t0 - eval_s}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (losses, steps, paths)."""
    info = D.init_distributed(cfg.run.device)
    try:
        summary = Trainer(cfg, info).fit()
        # ranks tear the process group down together: a gloo rank whose peer has already
        # destroyed its connections can abort at exit ("terminate called without an active
        # exception", seen once in a 2-rank test on a loaded machine)
        D.barrier()
        return summary
    finally:
        D.cleanup()
