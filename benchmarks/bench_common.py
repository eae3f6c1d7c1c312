"""Shared helpers of the CPU benchmarks: machine description, timing, medians, one JSON line.

Every benchmark measures a candidate (the library path) and a baseline *in the same run*,
interleaved (baseline, candidate, baseline, candidate, …) so that load from other processes on
a small shared machine hits both alike, and reports medians. Each result says which clock it
used: ``process_time`` (CPU seconds of this process, all its threads) where other processes
make wall time too noisy, ``perf_counter`` (wall) otherwise.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLOCKS = {"process_time": time.process_time, "perf_counter": time.perf_counter}


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, core count, load, library versions."""
    import numpy as np

    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if "torch" in sys.modules or _importable("torch"):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def timed(fn: Callable[[], Any], clock: str = "process_time") -> tuple[float, float, Any]:
    """Run ``fn`` once: (seconds on ``clock``, wall seconds, its result)."""
    c = CLOCKS[clock]
    t0, w0 = c(), time.perf_counter()
    out = fn()
    return c() - t0, time.perf_counter() - w0, out


def interleave(
    fns: dict[str, Callable[[], Any]], repeats: int, clock: str = "process_time"
) -> dict[str, dict[str, Any]]:
    """Call every function of ``fns`` in turn, ``repeats`` rounds (the order alternates each
    round, so neither side always runs first); returns per name the clock and wall times and
    the last result."""
    names = list(fns)
    out: dict[str, dict[str, Any]] = {n: {"clock_s": [], "wall_s": [], "result": None} for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            dt, wall, res = timed(fns[n], clock)
            out[n]["clock_s"].append(dt)
            out[n]["wall_s"].append(wall)
            out[n]["result"] = res
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def spread(xs: list[float]) -> float:
    """(max − min) / median: how much the repeats disagreed."""
    m = median(xs)
    return float((max(xs) - min(xs)) / m) if xs and m > 0 else math.nan


def rnd(x: float, digits: int = 4) -> float:
    if not math.isfinite(x) or x == 0:
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def emit(result: dict[str, Any]) -> dict[str, Any]:
    """Print the result as one JSON line (machine description added) and return it."""
    result = {**result, "machine": machine()}
    print(json.dumps(result, sort_keys=False), flush=True)
    return result


def work_dir(name: str, base: str | None = None) -> Path:
    """A cache folder for generated inputs (corpora, models, shards), reused between runs."""
    root = Path(base or os.environ.get("TRIMODAL_BENCH_DIR", "/tmp/trimodal-bench"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def headline(benchmark: str, metric: str, clock: str, candidate: str, baseline: str, ratio: float, goal: float,
             goal_text: str | None = None, higher_is_better: bool = True) -> dict[str, Any]:
    """The first keys of every result line: what was compared, the ratio, the goal, whether met."""
    return {"benchmark": benchmark, "metric": metric, "clock": clock, "candidate": candidate, "baseline": baseline,
            "ratio": rnd(ratio), "goal": goal_text or f"{'>=' if higher_is_better else '<='} {goal}",
            "goal_met": goal_met(ratio, goal, higher_is_better)}


def goal_met(ratio: float, goal: float, higher_is_better: bool = True) -> bool:
    return bool(math.isfinite(ratio) and (ratio >= goal if higher_is_better else ratio <= goal))


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], Any, float]:
    """Run ``cmd`` in a fresh process (cwd: the temp folder, away from the repository root, where
    ``./tokenizers`` would shadow ``trimodal.tokenizers``): ``(its last stdout line as JSON, its
    own rusage from os.wait4, wall seconds)``; a failure raises with the end of its stderr."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        w0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (Popen.wait would discard it)
        wall = time.perf_counter() - w0
        code = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        text, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{cmd[0]} run failed (exit {code}):\n{err[-3000:]}")
    return json.loads(text.strip().splitlines()[-1]), usage, wall


def pipeline_vs_loop(pipes: list[tuple], loops: list[tuple], amount: float, unit: str) -> tuple[dict, dict[str, Any]]:
    """The media pipelines' comparison: ``pipes`` = ``(seconds, ..., counters)`` per pipeline run,
    ``loops`` = ``(seconds, model seconds, ...)`` per plain-loop run, one of each per interleaved
    round. ``ratio`` = the median over rounds of loop s / pipeline s in that round (a slow moment
    of a shared machine hits both sides of a round), with its min and max; seconds are medians.
    Returns ``(counters of the pipeline run nearest the median, figures)``."""
    per_round = [lp[0] / pp[0] for lp, pp in zip(loops, pipes)]
    loop_s = median([x[0] for x in loops])
    model_s = median([x[1] for x in loops])
    pipe_s = median([x[0] for x in pipes])
    mid = min(range(len(pipes)), key=lambda i: abs(pipes[i][0] - pipe_s))
    return pipes[mid][2], {
        "pipeline_s": round(pipe_s, 2), "loop_s": round(loop_s, 2), "loop_model_only_s": round(model_s, 2),
        f"pipeline_{unit}_per_s": round(amount / pipe_s, 3), f"loop_{unit}_per_s": round(amount / loop_s, 3),
        f"model_only_{unit}_per_s": round(amount / model_s, 3), "ratio": round(median(per_round), 3),
        "ratio_min": round(min(per_round), 3), "ratio_max": round(max(per_round), 3),
        "ratio_per_round": [round(x, 3) for x in per_round],
        "runs_pipeline_s": [round(x[0], 2) for x in pipes], "runs_loop_s": [round(x[0], 2) for x in loops],
    }


def add_args(ap: Any, *, repeats: int | None = None, repeats_help: str = "interleaved rounds; medians reported",
             threads: int | None = None, clock: bool = False, work: bool = False,
             model: tuple[int, int, int, int, int] | None = None, steps: tuple[int, int] | None = None) -> None:
    """The options most benchmarks share: ``--repeats``, ``--threads``, ``--clock``, ``--work``;
    ``model`` = defaults of ``--dim --layers --heads --seq-len --batch``; ``steps`` = defaults of
    ``--steps`` (timed steps per run) and ``--warmup``."""
    if model is not None:
        for flag, default in zip(("--dim", "--layers", "--heads", "--seq-len", "--batch"), model):
            ap.add_argument(flag, type=int, default=default)
    if steps is not None:
        ap.add_argument("--steps", type=int, default=steps[0], help="timed steps per run")
        ap.add_argument("--warmup", type=int, default=steps[1], help="steps before the timed ones")
    if repeats is not None:
        ap.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    if threads is not None:
        ap.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's default)")
    if clock:
        ap.add_argument("--clock", default="process_time", choices=sorted(CLOCKS))
    if work:
        ap.add_argument("--work", default=None, help="cache folder (default $TRIMODAL_BENCH_DIR or /tmp/trimodal-bench)")


def make_text_shards(root: Path, samples: int, shards: int, min_len: int, max_len: int, text_codes: int,
                     seed: int = 0, text_info: dict[str, Any] | None = None) -> None:
    """Synthetic tokenized text shards + manifest, as the text pipeline writes them (uniform
    random ids below ``text_codes``, uint16 when they fit); cached: skipped when a manifest is there.
    ``text_info``: the manifest's text tokenizer entry (default: a synthetic one)."""
    import numpy as np

    from trimodal.shards.manifest import Manifest
    from trimodal.shards.writer import shard_name, write_shard

    if (root / "manifest.json").exists():
        return
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if text_codes <= 65536 else np.uint32
    infos = []
    per = -(-samples // shards)
    for s in range(shards):
        items = []
        for i in range(s * per, min(samples, (s + 1) * per)):
            n = int(rng.integers(min_len, max_len + 1))
            meta = {"id": f"synthetic:{i}", "source": "synthetic", "modality": "text",
                    "lengths": {"text": n, "chars": 5 * n}, "provenance": {"file": "synthetic", "line": i}}
            items.append((f"{i:012d}", meta, {"text": rng.integers(0, text_codes, n, dtype=dtype)}))
        infos.append(write_shard(str(root), shard_name(s, shards), items))
    tok = {"text": text_info or {"kind": "synthetic", "vocab_size": text_codes, "fingerprint": "synthetic"}}
    Manifest(kind="tokenized", modality="text", tokenizers=tok, shards=infos,
             counts={"read": samples, "written": samples, "filtered": {}, "rejected": {}}).save(str(root))


def text_dataset(samples: int, shards: int, min_len: int, max_len: int, text_codes: int, work: str | None = None):
    """A cached synthetic text dataset: ``(root, manifest, shard paths, text tokens)``."""
    from trimodal.shards.manifest import Manifest

    root = work_dir(f"loader-{samples}s-{shards}sh-{min_len}-{max_len}", work)
    make_text_shards(root, samples, shards, min_len, max_len, text_codes)
    manifest = Manifest.load(str(root))
    return root, manifest, [str(root / s.name) for s in manifest.shards], manifest.tokens()["text"]


def make_paired_shards(root: Path, modality: str, samples: int, media: Callable[[Any], Any], caption: tuple[int, int],
                       text_codes: int, media_info: dict[str, Any], per_shard: int = 500, seed: int = 1,
                       text_info: dict[str, Any] | None = None) -> None:
    """Synthetic paired shards + manifest: ``media(rng)`` gives each sample's code array (stored
    under the modality's member name), with a caption of ``caption[0]``..``caption[1]`` random
    text ids; cached: skipped when a manifest is there."""
    import numpy as np

    from trimodal.shards.manifest import Manifest
    from trimodal.shards.writer import shard_name, write_shard

    if (root / "manifest.json").exists():
        return
    member = {"image_text": "image", "audio_text": "audio"}[modality]
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if text_codes <= 65536 else np.uint32
    n_shards = -(-samples // per_shard)
    infos = []
    for k in range(n_shards):
        items = []
        for j in range(k * per_shard, min(samples, (k + 1) * per_shard)):
            arrays = {member: media(rng),
                      "text": rng.integers(0, text_codes, int(rng.integers(caption[0], caption[1] + 1))).astype(dtype)}
            items.append((f"{j:012d}", {"id": f"synthetic-{member}:{j}", "source": "synthetic", "modality": modality},
                          arrays))
        infos.append(write_shard(str(root), shard_name(k, n_shards), items))
    tok = {"text": text_info or {"kind": "synthetic", "vocab_size": text_codes, "fingerprint": "synthetic"},
           member: {"kind": "synthetic", "fingerprint": "synthetic", **media_info}}
    Manifest(kind="tokenized", modality=modality, tokenizers=tok, shards=infos,
             counts={"read": samples, "written": samples, "filtered": {}, "rejected": {}}).save(str(root))


def make_image_shards(root: Path, samples: int, grid: int, caption: tuple[int, int], text_codes: int,
                      image_codes: int = 16384, **kw: Any) -> None:
    """Image-text shards: a ``grid`` x ``grid`` code image (MoVQGAN at 256 px gives 32 x 32)."""
    import numpy as np

    make_paired_shards(root, "image_text", samples, lambda rng: rng.integers(0, image_codes, (grid, grid)).astype(np.uint16),
                       caption, text_codes, {"vocab_size": image_codes, "grid": [grid, grid]}, **kw)


def make_audio_shards(root: Path, samples: int, frames: tuple[int, int], caption: tuple[int, int], text_codes: int,
                      audio_codes: int = 1024, levels: int = 4, **kw: Any) -> None:
    """Audio-text shards: ``levels`` codebooks x ``frames[0]``..``frames[1]`` frames (DAC-like)."""
    import numpy as np

    def media(rng: Any) -> Any:
        return rng.integers(0, audio_codes, (levels, int(rng.integers(frames[0], frames[1] + 1)))).astype(np.uint16)

    make_paired_shards(root, "audio_text", samples, media, caption, text_codes,
                       {"vocab_size": audio_codes, "levels": levels}, **kw)


class torch_threads:
    """``with torch_threads(n):`` run with ``n`` torch threads (0: leave as is), then restore."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)
        return False
