"""Held-out ELBO per modality and source, with a deterministic low-variance estimator.

Every finding of the paper is stated in held-out ELBO (nats per non-PAD token). The estimate
here is built so that two runs' curves can be compared point by point:

- **fixed rows**: per evaluation source, the first ``eval.rows`` rows of a one-pass read of its
  ``val`` split (one stream, seeded by ``eval.seed``; the same row assembly as training);
- **fixed t-grid**: K stratified levels t_k = ε + (1 − ε)·(k + u_k)/K, k = 0…K−1, with u_k drawn
  once per (row, k) from ``eval.seed``; **fixed masks** from (``eval.seed``, row, k);
- each level is one Monte Carlo draw of the ELBO: e_k = Σ_rows w(t_k)·Σ_masked CE / Σ non-PAD
  tokens; the estimate is their mean and its standard error std(e_k)/√K (stratified draws are
  not independent: the error is conservative).

The rows and draws depend on nothing but the data, ``seq_len`` and ``eval.seed``: the number is
the same across runs, world sizes and resumptions. The estimator always uses the linear schedule
(w = 1/t), whatever schedule a run trains with: the continuous-time ELBO of masked diffusion is
the same bound under every schedule, so runs trained with different schedules are compared on
one estimator. Rank ``r`` of ``W`` evaluates rows
``i ≡ r (mod W)`` and the sums are all-reduced. The z-loss is not part of the ELBO.

Text also gets bits per byte: the ELBO of text positions × the split's tokens per UTF-8 byte
(from the manifest, recorded at tokenization time) / ln 2 (an estimate where the evaluated rows
are a subset of the split). :func:`score_choices` ranks continuations by their conditional ELBO,
masking only the continuation span (the way LLaDA scores multiple-choice benchmarks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from trimodal.config import option
from trimodal.shards.loader.dataset import TrimodalDataset
from trimodal.shards.loader.sources import LoaderConfig, SourceConfig, default_name
from trimodal.shards.manifest import Manifest
from trimodal.tokenizers.vocab import MODALITIES, TASK, TEXT, VocabLayout
from trimodal.train import distributed as D
from trimodal.train.objective import ObjectiveConfig, apply_mask, masked_diffusion_loss, seed_of
from trimodal.train.schedules import ScheduleConfig, make_schedule

_T_SALT, _MASK_SALT, _CHOICE_SALT = 0x7467, 0x6D6B, 0x6368


@dataclass
class EvalConfig:
    every: int = option(0, help="steps between evaluations during training (0: off)")
    at_end: bool = option(True, help="also evaluate after the last step (when every > 0)")
    sources: list[SourceConfig] = option(default_factory=list,
                                         help="evaluation roots (default: the val split of the training sources)")
    split: str = option("val", help="split of the evaluation roots")
    # Defaults sized so that evaluating every 1,000 steps costs ~1 % of a demo-scale run
    # (benchmarks/bench_eval_cost.py); raise both for tighter standard errors on real runs.
    rows: int = option(32, help="fixed evaluation rows per source")
    t_levels: int = option(4, help="K: stratified t levels, one Monte Carlo draw each")
    seed: int = option(0, help="seed of the evaluation rows, t-grid and masks")
    batch_size: int = option(8, help="rows per forward pass")

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        for name in ("rows", "t_levels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.every < 0:
            raise ValueError(f"eval.every must be >= 0, got {self.every}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


def t_grid(levels: int, eps: float, seed: int, row: int) -> torch.Tensor:
    """The K stratified times of one evaluation row (float64)."""
    g = torch.Generator().manual_seed(seed_of(seed, row, _T_SALT))
    u = torch.rand(levels, generator=g, dtype=torch.float64)
    return eps + (1.0 - eps) * (torch.arange(levels, dtype=torch.float64) + u) / levels


def level_uniforms(seed: int, row: int, levels: int, length: int, salt: int = _MASK_SALT) -> torch.Tensor:
    """Masking uniforms [levels, length] of one row: one generator per (seed, row, level)."""
    out = torch.empty(levels, length)
    g = torch.Generator()
    for k in range(levels):
        g.manual_seed(seed_of(seed, row, k, salt))
        out[k] = torch.rand(length, generator=g)
    return out


@dataclass
class EvalSource:
    name: str
    root: str
    rows: dict[str, torch.Tensor]  # tokens, modality, valid: [n, L]
    bytes_per_token: float | None  # UTF-8 bytes per text token of the split (None: unknown)


def eval_rows(source: SourceConfig, layout: VocabLayout, cfg: EvalConfig, data: LoaderConfig,
              manifest: Manifest | None = None) -> EvalSource:
    """The fixed evaluation rows of one source (see the module docstring)."""
    # evaluation rows are never packed: the ELBO is per sample, the same number for packed runs
    lc = replace(data, sources=[SourceConfig(root=source.root, name=source.name)], seed=cfg.seed, num_streams=1,
                 num_workers=0, split=cfg.split, cycle=False, task_weights=None, pack_paired=False)
    manifests = {source.root: manifest or Manifest.load(source.root)}
    m = manifests[source.root]
    if cfg.split not in m.splits():
        raise ValueError(f"{source.root} has no {cfg.split!r} split (it has {m.splits() or 'no shards'}): "
                         f"tokenize with --val-fraction, or name separate evaluation roots")
    ds = TrimodalDataset(lc, layout, rank=0, world_size=1, seed=cfg.seed, manifests=manifests)
    rows = []
    for r in ds:
        rows.append(r)
        if len(rows) >= cfg.rows:
            break
    if not rows:
        raise ValueError(f"{source.root}: its {cfg.split!r} split gives no row at seq_len {data.seq_len}")
    shards = m.split_shards(cfg.split)
    text_tokens = sum(s.tokens.get("text", 0) for s in shards)
    text_bytes = sum(s.text_bytes for s in shards)
    return EvalSource(
        name=source.name or default_name(source.root), root=source.root,
        rows={k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "task"},
        bytes_per_token=(text_bytes / text_tokens) if text_bytes and text_tokens else None,
    )


@torch.no_grad()
def elbo_sums(model, rows: dict[str, torch.Tensor], index: list[int], layout: VocabLayout, objective: ObjectiveConfig,
              cfg: EvalConfig, device: torch.device, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sums over the given rows, per level k and modality: [K, 2, 3] = (Σ w·CE, non-PAD tokens)."""
    schedule = make_schedule(ScheduleConfig("linear"))  # the same estimator for every run (docstring)
    K = cfg.t_levels
    out = torch.zeros(K, 2, len(MODALITIES), dtype=torch.float64)
    for start in range(0, max(len(index), 1), cfg.batch_size):
        chunk = index[start:start + cfg.batch_size]
        ghost = not chunk  # every rank runs the same forward passes (FSDP collectives)
        idx = chunk or [0]
        tokens, modality, valid = (rows[k][idx].to(device) for k in ("tokens", "modality", "valid"))
        extra = [rows[k][idx].to(device) for k in ("segments", "positions")] if "segments" in rows else []
        times = torch.stack([t_grid(K, objective.eps, cfg.seed, i) for i in idx]).float()  # [n, K]
        uniforms = torch.stack([level_uniforms(cfg.seed, i, K, tokens.shape[1]) for i in idx])  # [n, K, L]
        for k in range(K):
            t = times[:, k].to(device)
            u = uniforms[:, k]
            noisy, is_masked = apply_mask(tokens, modality, valid, schedule.mask_prob(t), layout, uniforms=u)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                hidden = model(noisy, valid, *extra)
                res = masked_diffusion_loss(model, hidden, tokens, modality, is_masked, valid, schedule.weight(t), layout,
                                            full_vocab=objective.full_vocab, z_loss=0.0)
            if not ghost:
                out[k, 0] += res.weighted_sum.double().cpu()
                out[k, 1] += res.tokens.double().cpu()
    return out


def summarise(sums: torch.Tensor, bytes_per_token: float | None) -> dict[str, Any]:
    """[K, 2, 3] level sums → ELBO (nats per non-PAD token), its standard error, per modality."""
    K = sums.shape[0]
    out: dict[str, Any] = {}
    tokens = sums[0, 1]
    draws = sums[:, 0].sum(1) / tokens.sum().clamp_min(1)
    out["elbo"] = float(draws.mean())
    out["elbo_se"] = float(draws.std(unbiased=True) / math.sqrt(K)) if K > 1 else float("nan")
    out["tokens"] = int(tokens.sum())
    for m, name in enumerate(MODALITIES):
        if tokens[m] > 0:
            d = sums[:, 0, m] / tokens[m]
            out[f"elbo/{name}"] = float(d.mean())
            out[f"elbo_se/{name}"] = float(d.std(unbiased=True) / math.sqrt(K)) if K > 1 else float("nan")
            if m == TEXT and bytes_per_token:
                out["bits_per_byte/text"] = float(d.mean()) / math.log(2) / bytes_per_token
    return out


class Evaluator:
    """The evaluation hook of a training run (and of ``trimodal eval``)."""

    def __init__(self, cfg: EvalConfig, layout: VocabLayout, sources: list[EvalSource], objective: ObjectiveConfig,
                 info: D.DistInfo) -> None:
        self.cfg, self.layout, self.sources, self.objective, self.info = cfg, layout, sources, objective, info

    @classmethod
    def build(cls, cfg: EvalConfig, layout: VocabLayout, manifests: dict[str, Manifest], data: LoaderConfig,
              objective: ObjectiveConfig, info: D.DistInfo) -> "Evaluator":
        """Rows from ``cfg.sources``, else from the val split of the training sources (each
        checked against the run's tokenizers, naming both fingerprints on a mismatch)."""
        from trimodal.shards.loader.sources import check_tokenizers

        specs = cfg.sources or data.sources
        sources = []
        for sc in specs:
            m = manifests.get(sc.root) or Manifest.load(sc.root)
            check_tokenizers(layout, m, f"evaluation source {sc.root}")
            sources.append(eval_rows(sc, layout, cfg, data, m))
        return cls(cfg, layout, sources, objective, info)

    def due(self, step: int, last: bool) -> bool:
        return (self.cfg.every > 0 and step % self.cfg.every == 0) or (last and self.cfg.at_end)

    def run(self, model, step: int | None = None, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
        """``{"event": "eval", "step", "elbo", "elbo/<modality>", "bits_per_byte/text", …,
        "source/<name>/elbo", "source/<name>/elbo/<modality>", …}``: over all sources, then per
        source (under ``source/`` so that a source named like a modality cannot collide)."""
        model.eval()
        rec: dict[str, Any] = {"event": "eval", "step": step}
        W, r = self.info.world_size, self.info.rank
        totals = torch.zeros(self.cfg.t_levels, 2, len(MODALITIES), dtype=torch.float64)
        text_tokens, text_bytes = 0.0, 0.0  # of the evaluated rows, for the overall bits per byte
        for src in self.sources:
            n = src.rows["tokens"].shape[0]
            mine = [i for i in range(n) if i % W == r]
            # equal forward passes on every rank: pad the share to the same number of batches
            sums = elbo_sums(model, src.rows, mine, self.layout, self.objective, self.cfg, self.info.device,
                             autocast_dtype)
            per_rank = -(-n // W)
            for _ in range(-(-per_rank // self.cfg.batch_size) - -(-max(len(mine), 1) // self.cfg.batch_size)):
                elbo_sums(model, src.rows, [], self.layout, self.objective, self.cfg, self.info.device, autocast_dtype)
            sums = D.all_reduce_sum(sums.to(self.info.device)).cpu()
            totals += sums
            for k, v in summarise(sums, src.bytes_per_token).items():
                rec[f"source/{src.name}/{k}"] = v
            n_text = float(sums[0, 1, TEXT])
            if n_text:
                text_tokens += n_text
                text_bytes += n_text * (src.bytes_per_token or math.nan)  # unknown anywhere: no overall figure
        bytes_per_token = text_bytes / text_tokens if text_tokens and math.isfinite(text_bytes) else None
        rec.update(summarise(totals, bytes_per_token))
        return rec


# ---- multiple choice --------------------------------------------------------------------------
@torch.no_grad()
def score_choices(model, layout: VocabLayout, prompt_ids: list[int], choices_ids: list[list[int]], samples: int = 8,
                  seed: int = 0, eps: float = 1e-3, device: torch.device | None = None) -> list[float]:
    """Monte Carlo conditional ELBO (a lower bound on log p(choice | prompt), in nats) of each
    continuation: rows ``[TASK_text, BOS_text, prompt…, choice…, EOS_text]``, only the choice span
    masked, at ``samples`` stratified t levels (fixed from ``seed``, the same for every choice)."""
    device = device or next(model.parameters()).device
    t_text = layout.text
    scores = []
    times = t_grid(samples, eps, seed, 0)
    for ci, choice in enumerate(choices_ids):
        ids = [layout.task_token("text"), t_text.bos] + [t_text.offset + i for i in prompt_ids] + \
              [t_text.offset + i for i in choice] + [t_text.eos]
        tokens = torch.tensor(ids, device=device)[None].expand(samples, -1)
        modality = torch.full_like(tokens, TEXT)
        modality[:, 0] = TASK
        valid = torch.ones_like(tokens, dtype=torch.bool)
        span = torch.zeros_like(valid)
        start = 2 + len(prompt_ids)
        span[:, start:start + len(choice)] = True
        u = torch.stack([level_uniforms(seed, 0, samples, tokens.shape[1], _CHOICE_SALT)[k] for k in range(samples)])
        t = times.float().to(device)
        is_masked = (u.to(device) < t[:, None]) & span
        noisy = torch.where(is_masked, torch.full_like(tokens, t_text.mask), tokens)
        hidden = model(noisy, valid)
        res_rows = []
        for k in range(samples):
            if not is_masked[k].any():
                res_rows.append(0.0)
                continue
            out = masked_diffusion_loss(model, hidden[k:k + 1], tokens[k:k + 1], modality[k:k + 1], is_masked[k:k + 1],
                                        valid[k:k + 1], (1.0 / t[k:k + 1]), layout, z_loss=0.0, n_tokens=1)
            res_rows.append(float(out.weighted_sum.sum()))
        scores.append(-sum(res_rows) / samples)
    return scores


@dataclass
class ChoiceItem:
    prompt: str
    choices: list[str]
    answer: int


def read_choices(path: str) -> list[ChoiceItem]:
    """A JSON-lines file of ``{"prompt", "choices": [...], "answer": i}``; a malformed line is an
    error naming the line."""
    from trimodal import storage

    items = []
    for n, line in enumerate(storage.read_bytes(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            item = ChoiceItem(prompt=d["prompt"], choices=list(d["choices"]), answer=int(d["answer"]))
            if not isinstance(item.prompt, str) or not all(isinstance(c, str) for c in item.choices):
                raise TypeError("prompt and choices must be strings")
            if not item.choices or not 0 <= item.answer < len(item.choices):
                raise ValueError(f"answer {item.answer} is not an index into {len(item.choices)} choices")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: malformed choice line ({type(e).__name__}: {e})") from None
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no choice lines")
    return items


@dataclass
class ChoiceResult:
    accuracy: float
    n: int
    predictions: list[int] = field(default_factory=list)


def evaluate_choices(model, layout: VocabLayout, tokenizer, items: list[ChoiceItem], samples: int = 8, seed: int = 0,
                     length_normalize: bool = False) -> ChoiceResult:
    """Accuracy of picking the highest-ELBO continuation (optionally per token, as acc_norm)."""
    preds = []
    for item in items:
        prompt = [int(x) for x in tokenizer.encode_one(item.prompt)]
        choices = [[int(x) for x in tokenizer.encode_one(c)] for c in item.choices]
        s = score_choices(model, layout, prompt, choices, samples, seed)
        if length_normalize:
            s = [v / max(1, len(c)) for v, c in zip(s, choices)]
        preds.append(max(range(len(s)), key=s.__getitem__))
    correct = sum(int(p == it.answer) for p, it in zip(preds, items))
    return ChoiceResult(accuracy=correct / len(items), n=len(items), predictions=preds)
