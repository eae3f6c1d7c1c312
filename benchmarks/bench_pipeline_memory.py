"""Peak memory of a local text pipeline vs its input size: bounded, or growing with the corpus?

Each run is ``run_text_pipeline`` (DirectRunner, ``--direct_running_mode=in_memory``, the default
local mode) in a fresh subprocess; its peak RSS is the child's own ``VmHWM`` (``ru_maxrss`` from
``os.wait4`` would keep the launcher's high-water mark across the exec), and
the child also reports the peak of its own children (the worker processes of a
``multi_processing`` run, with ``--mode multi_processing``). Inputs are JSONL corpora of
``--mb`` sizes made from one generated base corpus (the text benchmark's generator: random words
of a Zipf-distributed vocabulary, 50–1,500 words a document, 4 MB files) by copying its files
under new names, so every size has distinct record ids and the same per-document work.

The result: peak RSS per size, the slope (MB of RSS per MB of input, between the smallest and the
largest size) and ``ratio`` = peak at the largest size / peak at the smallest (1.0: flat).
Goal: peak ≤ 2 GB at every size. ``--baseline-rev REV`` also runs the same sizes with the
package as it was at git revision ``REV`` of this repository (``git archive``, nothing checked
out), in the same run, and reports its peaks and slope next to the candidate's.

    python benchmarks/bench_pipeline_memory.py [--mb 16 256] [--baseline-rev HEAD]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards
import bench_text_pipeline as btp  # noqa: E402  the corpus generator and SentencePiece model

REPO = Path(__file__).resolve().parents[1]
GOAL_MB = 2048

CHILD = r"""
import json, resource, sys, time
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
inputs, model, out, mode, workers, shard_bytes = json.loads(sys.argv[1])
t0 = time.perf_counter()
m = run_text_pipeline(TextPipelineConfig(inputs=inputs, text_tokenizer=model, out=out, progress=False,
                                         target_shard_bytes=shard_bytes),
                      ["--runner=DirectRunner", f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall_s": time.perf_counter() - t0, "written": m.counts["written"], "shards": len(m.shards),
                  "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "hwm_kb": hwm}))
"""


def make_inputs(base: list[str], folder: Path, mb: float) -> list[str]:
    """``mb`` MB of JSONL: copies of the base files (new names, so new record ids); the last one
    cut at a line boundary."""
    folder.mkdir(parents=True, exist_ok=True)
    budget = int(mb * 2**20)
    out, k = [], 0
    while budget > 0:
        src = Path(base[k % len(base)])
        dst = folder / f"part-{k:04d}.jsonl"
        size = src.stat().st_size
        if not dst.exists():
            if size <= budget:
                shutil.copyfile(src, dst)
            else:
                data = src.read_bytes()[:budget]
                dst.write_bytes(data[: data.rfind(b"\n") + 1] or data)
        out.append(str(dst))
        budget -= min(size, budget)
        k += 1
    return out


def package_at(rev: str, dest: Path) -> Path:
    """An importable ``trimodal`` package as it was at ``rev``: ``git archive`` into ``dest``, then
    the package layout of ``pyproject.toml``'s ``package-dir`` rebuilt with symlinks. Returns the
    folder to put first on ``PYTHONPATH``."""
    tree = dest / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    dirs = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dest / "path"
    for name, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        target = pkg / name.replace(".", "/")
        if name.count(".") == 0:
            target.mkdir(parents=True)
            for item in (tree / folder).iterdir():
                (target / item.name).symlink_to(item)
        else:
            if target.exists() and target.resolve() == (tree / folder).resolve():
                continue  # a subpackage already reached through its parent's link (shards/loader)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(tree / folder)
    return pkg


def peak(inputs: list[str], model: str, out: Path, mode: str, workers: int, shard_bytes: int,
         pythonpath: str | None = None) -> dict[str, Any]:
    """One run in a fresh process: its peak RSS (MB), its children's peak, CPU and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    args = json.dumps([inputs, model, str(out), mode, workers, shard_bytes])
    info, usage, _ = bc.run_child([sys.executable, "-c", CHILD, args], env=env)
    shutil.rmtree(out, ignore_errors=True)
    # the child's own VmHWM: its ru_maxrss would keep the launcher's high-water mark across the exec
    return {"peak_rss_mb": round(info["hwm_kb"] / 1024, 1),
            "children_peak_rss_mb": round(info["children_maxrss_kb"] / 1024, 1),
            "cpu_s": bc.rnd(usage.ru_utime + usage.ru_stime), "wall_s": bc.rnd(info["wall_s"]),
            "written": info["written"], "shards": info["shards"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[16.0, 256.0], help="input sizes in MB (JSONL)")
    ap.add_argument("--base-mb", type=float, default=16.0, help="size of the generated base corpus")
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--min-words", type=int, default=50)
    ap.add_argument("--max-words", type=int, default=1500)
    ap.add_argument("--shard-mb", type=float, default=128.0, help="target shard size (the CLI's default)")
    ap.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--baseline-rev", default=None, help="also run the package as of this git revision")
    ap.add_argument("--work", default=None, help="cache folder (default $TRIMODAL_BENCH_DIR or /tmp/trimodal-bench)")
    args = ap.parse_args(argv)

    sizes = sorted(args.mb)
    work = bc.work_dir(f"memory-{args.base_mb:g}mb-{args.min_words}-{args.max_words}w", args.work)
    base = btp.make_corpus(work / "base", args.base_mb, 4, min_words=args.min_words, max_words=args.max_words)
    model = btp.make_model(work, base, args.vocab_size)
    shard_bytes = int(args.shard_mb * 1e6)
    candidates = {"candidate": None}
    tmp = None
    if args.baseline_rev:
        tmp = Path(tempfile.mkdtemp(prefix="trimodal-bench-baseline-"))
        candidates["baseline"] = str(package_at(args.baseline_rev, tmp))
    runs: dict[str, dict[str, Any]] = {name: {} for name in candidates}
    try:
        for mb in sizes:
            inputs = make_inputs(base, work / f"inputs-{mb:g}mb", mb)
            for name, path in candidates.items():  # same size back to back: the same machine state
                runs[name][f"{mb:g}"] = peak(inputs, model, work / f"out-{name}", args.mode, args.workers,
                                             shard_bytes, path)
                runs[name][f"{mb:g}"]["input_mb"] = round(sum(Path(p).stat().st_size for p in inputs) / 2**20, 2)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def summary(r: dict[str, Any]) -> dict[str, Any]:
        lo, hi = r[f"{sizes[0]:g}"], r[f"{sizes[-1]:g}"]
        peak_of = "children_peak_rss_mb" if args.mode == "multi_processing" else "peak_rss_mb"
        d_in = hi["input_mb"] - lo["input_mb"]
        return {"peak_rss_mb": {k: v["peak_rss_mb"] for k, v in r.items()},
                "workers_peak_rss_mb": {k: v["children_peak_rss_mb"] for k, v in r.items()},
                "slope_mb_rss_per_mb_input": bc.rnd((max(hi[peak_of], hi["peak_rss_mb"]) - max(lo[peak_of], lo["peak_rss_mb"]))
                                                    / d_in, 3) if d_in > 0 else None,
                "max_peak_mb": max(max(v["peak_rss_mb"], v["children_peak_rss_mb"]) for v in r.values()),
                "runs": r}

    cand = summary(runs["candidate"])
    largest, smallest = cand["runs"][f"{sizes[-1]:g}"], cand["runs"][f"{sizes[0]:g}"]
    result: dict[str, Any] = {
        "benchmark": "pipeline_memory",
        "metric": "peak RSS (MB) of a fresh process running the text pipeline",
        "candidate": f"run_text_pipeline, DirectRunner {args.mode}, {args.workers} worker(s), JSONL -> shards + manifest",
        "sizes_mb": sizes,
        "ratio": bc.rnd(largest["peak_rss_mb"] / smallest["peak_rss_mb"]),
        "ratio_note": "peak RSS at the largest input / at the smallest (1.0 = flat)",
        "goal": f"peak <= {GOAL_MB} MB at every size",
        "goal_met": bool(cand["max_peak_mb"] <= GOAL_MB),
        "candidate_result": cand,
        "shard_mb": args.shard_mb,
        "corpus": {"base_mb": args.base_mb, "words_per_doc": [args.min_words, args.max_words], "sp_vocab": args.vocab_size},
    }
    if "baseline" in runs:
        bl = summary(runs["baseline"])
        result["baseline"] = f"the package at git revision {args.baseline_rev}"
        result["baseline_result"] = bl
        result["baseline_over_candidate_at_largest"] = bc.rnd(
            bl["runs"][f"{sizes[-1]:g}"]["peak_rss_mb"] / largest["peak_rss_mb"])
    return bc.emit(result)


if __name__ == "__main__":
    main()
