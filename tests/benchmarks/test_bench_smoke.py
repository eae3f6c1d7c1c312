"""Each benchmark's ``main`` runs end to end at a tiny size and reports a finite, positive ratio.

Sizes are chosen for speed, not meaning (the numbers of a tiny run say nothing about the goals);
the full-size commands are in each benchmark's docstring.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"trimodal_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


CASES = {
    "bench_packing": ["--samples", "200", "--seq-len", "128", "--batch", "2", "--dim", "16", "--layers", "1",
                      "--heads", "2", "--steps", "1", "--warmup", "1", "--repeats", "1"],
    "bench_pad_share": ["--samples", "60", "--steps", "1", "--batch", "2"],
    "bench_eval_cost": ["--samples", "60", "--steps", "2", "--every", "1", "--rows", "2", "--t-levels", "2",
                        "--seq-len", "128"],
    "bench_text_pipeline": ["--mb", "0.03", "--files", "2", "--vocab-size", "320", "--min-words", "20",
                            "--max-words", "200", "--repeats", "1", "--no-warmup", "--no-one-doc"],
    # each size in a fresh process: the peak RSS of a tiny run (the ratio says nothing here)
    "bench_pipeline_memory": ["--mb", "0.05", "0.1", "--base-mb", "0.05", "--vocab-size", "320", "--min-words", "20",
                              "--max-words", "200"],
    "bench_verify": ["--samples", "200", "--shards", "2", "--min-len", "20", "--max-len", "300", "--seq-len", "256",
                     "--repeats", "1"],
    "bench_loader": ["--samples", "200", "--shards", "4", "--min-len", "20", "--max-len", "300",
                     "--seq-len", "1100", "--repeats", "1"],
    # the peers (LitData, webdataset, Mosaic) run when .bench-venv exists, else are reported skipped
    "bench_reader": ["--samples", "200", "--shards", "4", "--min-len", "20", "--max-len", "300",
                     "--repeats", "1", "--mds-repeats", "1"],
    "bench_shard_layout": ["--docs", "60", "--shards", "2", "--repeats", "1"],
    "bench_trainer_step": ["--dim", "32", "--layers", "1", "--heads", "2", "--seq-len", "64", "--batch", "4",
                           "--text-codes", "256", "--samples", "64", "--steps", "2", "--warmup", "1", "--repeats", "1"],
    "bench_restricted_logits": ["--dim", "16", "--rows", "4", "--seq-len", "64", "--text-codes", "500",
                                "--repeats", "1"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_reports_a_ratio(name, tmp_path, capsys):
    args = CASES[name] + (["--work", str(tmp_path)] if name != "bench_restricted_logits" else [])
    result = load(name).main(args)
    ratio = result["ratio"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0, result
    assert isinstance(result["goal_met"], bool)
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["numpy"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("{") and '"ratio"' in last  # one JSON line, printed last
