"""``trimodal eval``: held-out ELBO of a checkpoint per modality and source, or the accuracy of
likelihood-scored multiple choice (``--choices FILE.jsonl``).

The ELBO uses the evaluation estimator of :mod:`trimodal.train.evaluate` (fixed rows, a fixed
stratified t-grid of K = ``--samples`` levels, fixed masks); each level is one Monte Carlo draw,
and the standard error is std/√K over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trimodal.config import option
from trimodal.shards.loader.sources import LoaderConfig, SourceConfig


#: used when the checkpoint records no eval settings (an export or run made before they were kept)
DEFAULT_SAMPLES, DEFAULT_ROWS = 8, 64


@dataclass
class EvalJobConfig:
    checkpoint: str = option("", help="run folder, checkpoint folder or exported model folder")
    data: list[str] = option(default_factory=list, help="dataset roots to evaluate")
    split: str | None = option(None, help="split of the dataset roots (default: the run's eval.split, else val)")
    samples: int | None = option(None, help="K: Monte Carlo draws, stratified t levels (default: the run's "
                                           f"eval.t_levels, else {DEFAULT_SAMPLES})")
    rows: int | None = option(None, help=f"evaluation rows per source (default: the run's eval.rows, else {DEFAULT_ROWS})")
    seed: int | None = option(None, help="seed of the rows, t-grid and masks (default: the run's eval.seed, else 0)")
    batch_size: int = option(8, help="rows per forward pass")
    choices: str | None = option(None, help="JSON-lines multiple-choice file: {prompt, choices, answer} per line")
    length_normalize: bool = option(False, help="choices: compare ELBO per token (acc_norm)")
    verify: str | None = option(None, help="check each evaluated shard against its manifest first: none, size, xxh3, sha256 "
                                           "(default: the loader's, as data.verify in training)")
    json: bool = option(False, help="print one JSON object")
    device: str = option("auto", help="auto, cpu or cuda")
    verify_model: bool = option(True, help="check an exported model's files against its files.json before loading")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if not self.data and not self.choices:
            raise ValueError("give --data ROOT... (ELBO) or --choices FILE (accuracy)")
        if (self.samples is not None and self.samples < 1) or (self.rows is not None and self.rows < 1):
            raise ValueError("--samples and --rows must be >= 1")


def run_eval(cfg: EvalJobConfig) -> dict[str, Any]:
    import trimodal
    from trimodal.train.evaluate import EvalConfig, Evaluator, eval_rows, evaluate_choices, read_choices
    from trimodal.train.objective import ObjectiveConfig

    m = trimodal.load(cfg.checkpoint, device=cfg.device, verify=cfg.verify_model)
    given, cfg = cfg, resolved_settings(cfg, m.scoring.get("eval") or {})
    result: dict[str, Any] = {"checkpoint": m.source, "step": m.step, "loaded": m.describe()}
    if cfg.data:
        from trimodal.shards.loader.sources import check_tokenizers
        from trimodal.shards.manifest import Manifest
        from trimodal.train.distributed import DistInfo

        ecfg = EvalConfig(every=1, rows=cfg.rows, t_levels=cfg.samples, seed=cfg.seed, batch_size=cfg.batch_size,
                          split=cfg.split)
        from trimodal.config import from_dict

        # score as the run's own evaluation did: its row length, objective and attention settings
        seq_len = m.seq_len or m.model.cfg.max_seq_len
        data = LoaderConfig(sources=[SourceConfig(root=r) for r in cfg.data], seq_len=seq_len,
                            document_attention=bool(m.scoring.get("document_attention")),
                            **({"verify": cfg.verify} if cfg.verify is not None else {}))
        sources = []
        for sc in data.sources:
            manifest = Manifest.load(sc.root)
            check_tokenizers(m.layout, manifest, f"evaluation source {sc.root}")
            sources.append(eval_rows(sc, m.layout, ecfg, data, manifest))
        objective = from_dict(ObjectiveConfig, m.scoring.get("objective") or {})
        ev = Evaluator(ecfg, m.layout, sources, objective, DistInfo(device=m.device))
        result["elbo"] = {k: v for k, v in ev.run(m.model).items() if k not in ("event", "step")}
        result["settings"] = {"rows": cfg.rows, "samples": cfg.samples, "seed": cfg.seed, "split": cfg.split,
                              "seq_len": seq_len, "from_run": sorted(cfg._from_run)}
    if cfg.choices:
        items = read_choices(cfg.choices)
        # multiple choice is no part of the run's evaluation: its own defaults
        r = evaluate_choices(m.model, m.layout, m.tokenizer("text"), items, given.samples or DEFAULT_SAMPLES,
                             given.seed or 0, cfg.length_normalize)
        result["choices"] = {"file": cfg.choices, "accuracy": r.accuracy, "n": r.n, "predictions": r.predictions}
    return result


def resolved_settings(cfg: EvalJobConfig, run_eval_cfg: dict[str, Any]) -> EvalJobConfig:
    """Unset estimator settings from the run's own ``eval`` section (so ``trimodal eval``
    reproduces the held-out ELBO the run logged), else the defaults; records which came from the
    run."""
    from dataclasses import replace

    pairs = {"rows": ("rows", DEFAULT_ROWS), "samples": ("t_levels", DEFAULT_SAMPLES), "seed": ("seed", 0),
             "split": ("split", "val")}
    values, from_run = {}, set()
    for name, (run_key, default) in pairs.items():
        if getattr(cfg, name) is not None:
            continue
        if run_key in run_eval_cfg:
            values[name] = run_eval_cfg[run_key]
            from_run.add(name)
        else:
            values[name] = default
    out = replace(cfg, **values)
    out._from_run = from_run
    return out


def format_settings(s: dict[str, Any]) -> str:
    names = {"rows": "--rows", "samples": "--samples", "seed": "--seed", "split": "--split"}
    given = ", ".join(f"{names[k]} {s[k]}" for k in names)
    src = ("the run's eval settings" if len(s["from_run"]) == len(names) else
           "from the run: " + (", ".join(names[k] for k in s["from_run"]) or "none"))
    return f"settings: {given}, seq_len {s['seq_len']} ({src})"


def format_result(result: dict[str, Any]) -> str:
    lines = [result["loaded"]]
    elbo = result.get("elbo")
    if result.get("settings"):
        lines.append(format_settings(result["settings"]))
    if elbo:
        lines.append("ELBO, nats per non-PAD token (± standard error over the Monte Carlo draws):")
        keys = [k for k in elbo if k == "elbo" or k.startswith("elbo/")]
        keys += sorted(k for k in elbo if k.startswith("source/") and "/elbo" in k and "/elbo_se" not in k)
        for key in keys:
            se = elbo.get(key.replace("/elbo", "/elbo_se", 1) if key.startswith("source/") else
                          key.replace("elbo", "elbo_se", 1), math.nan)
            lines.append(f"  {key:<32} {elbo[key]:.4f} ± {se:.4f}")
        for key in sorted(k for k in elbo if "bits_per_byte" in k):
            lines.append(f"  {key:<32} {elbo[key]:.4f}")
    ch = result.get("choices")
    if ch:
        lines.append(f"multiple choice: accuracy {ch['accuracy']:.4f} on {ch['n']} items ({ch['file']})")
    return "\n".join(lines)
