"""Generation quality of trained runs: the ``generate:`` section of a training experiment's spec.

The schedule and anti-masking studies (paper App. F, §7.4) are judged on what the model
generates, not on the ELBO alone: the continuous-time ELBO is schedule-invariant in expectation,
so a schedule comparison by ELBO mostly measures gradient variance. With a ``generate:`` section,
``trimodal experiment run`` samples from every finished run and scores the samples with the
generation-quality metrics (``trimodal eval --generate``; FID, CLIP score, WER, FAD)::

    generate:
      tasks: [image, speech]
      num: 64                 # samples per run
      steps: 64               # sampler settings (default: the paper's per task)
      metrics: {inception: …, fid_ref: …, clip: …, asr: …, audio_embed: …, fad_ref: …}

Every run is sampled with the same seed (``seed``), so two runs of one training seed are compared
on the same prompts and sampler noise (paired differences). Samples and ``metrics.json`` go to
``<run>/generate/``; a run whose ``metrics.json`` is there is not sampled again. FID/FAD
reference statistics are computed once per experiment (``<out>/fid_reference.npz``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from trimodal.config import option

METRIC_KEYS = ("inception", "fid_ref", "clip", "asr", "audio_embed", "fad_ref", "ref_split", "ref_limit")
SCORES = {"image": ("fid", "clip_score"), "speech": ("wer", "fad")}
GENERATE_DIR = "generate"


@dataclass
class GenerateSpec:
    tasks: list[str] = option(default_factory=lambda: ["image"], help="image and/or speech")
    num: int = option(16, help="samples per run and task")
    seed: int = option(0, help="sample seed, the same for every run (paired comparisons)")
    steps: int | None = option(None, help="sampling steps (default: the paper's per task)")
    cfg: float | None = option(None, help="CFG scale (default: the paper's per task)")
    temperature: float | None = option(None, help="temperature (default: the paper's per task)")
    top_p: float | None = option(None, help="nucleus mass (default: the paper's per task)")
    seconds: float = option(2.0, help="speech: seconds per clip")
    prompts: str | None = option(None, help="prompt file (default: eval --generate's built-in prompts)")
    metrics: dict[str, Any] = option(default_factory=dict, help="metric weights: the eval --generate options")
    device: str = option("auto", help="auto, cpu or cuda")

    def __post_init__(self) -> None:
        check_metrics(self.tasks, self.metrics)
        if self.num < 1:
            raise ValueError(f"num must be >= 1, got {self.num}")


def check_metrics(tasks: list[str], metrics: dict[str, Any]) -> None:
    bad = [t for t in tasks if t not in SCORES]
    if bad or not tasks:
        raise ValueError(f"tasks: give image and/or speech, got {tasks}")
    unknown = sorted(set(metrics) - set(METRIC_KEYS))
    if unknown:
        raise ValueError(f"metrics: unknown key {unknown[0]!r} (known: {', '.join(METRIC_KEYS)})")


def reference_once(metrics: dict[str, Any], out: str) -> dict[str, Any]:
    """The metric options with FID/FAD references computed once into ``out`` (not per run or
    point): a folder or shard root given as a reference becomes its stored ``.npz``."""
    m = dict(metrics)
    ref, inc = m.get("fid_ref"), m.get("inception")
    if ref and inc and not str(ref).endswith(".npz"):
        from trimodal.quality.fid import reference_stats
        from trimodal.quality.inception import load_fid_inception

        path = os.path.join(out, "fid_reference.npz")
        if not os.path.exists(path):
            reference_stats(ref, load_fid_inception(inc), out=path, split=m.get("ref_split", "val"),
                            limit=m.get("ref_limit"))
        m["fid_ref"] = path
    ref, emb = m.get("fad_ref"), m.get("audio_embed")
    if ref and emb and not str(ref).endswith(".npz"):
        from trimodal.quality.fad import AudioEmbedder, reference_stats as fad_reference

        path = os.path.join(out, "fad_reference.npz")
        if not os.path.exists(path):
            fad_reference(ref, AudioEmbedder.load(emb), out=path, limit=m.get("ref_limit"))
        m["fad_ref"] = path
    return m


def score_run(run_dir: str, gen: GenerateSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    """Sample from the run's last checkpoint and score (``<run>/generate/metrics.json``)."""
    from trimodal.train.generate_eval import GenerateEvalConfig, run_generate_eval

    cfg = GenerateEvalConfig(checkpoint=run_dir, out=os.path.join(run_dir, GENERATE_DIR), tasks=list(gen.tasks),
                             num=gen.num, seed=gen.seed, steps=gen.steps, cfg=gen.cfg, temperature=gen.temperature,
                             top_p=gen.top_p, seconds=gen.seconds, prompts=gen.prompts, device=gen.device,
                             **{k: v for k, v in metrics.items() if k in METRIC_KEYS})
    return run_generate_eval(cfg)


def scored(run_dir: str) -> dict[str, Any]:
    """The generation metrics a run's folder holds, as ``results.csv`` columns (none if unscored):
    ``fid``, ``clip_score`` (images) and ``wer``, ``fad`` (speech)."""
    path = os.path.join(run_dir, GENERATE_DIR, "metrics.json")
    try:
        with open(path) as f:
            result = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    out = {}
    for task, keys in SCORES.items():
        res = result.get("metrics", {}).get(task, {})
        out.update({k: float(res[k]) for k in keys if isinstance(res.get(k), (int, float))})
    return out
