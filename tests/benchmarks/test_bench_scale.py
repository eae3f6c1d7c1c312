"""The scale path of ``benchmarks/bench_scale.py`` at 2,000 manifest entries, in this process.

No timing is checked (that is the benchmark's job, at 200,000 entries): the synthetic root must
be what the benchmark claims (entries linking to real shards, with their sizes and checksums),
and every reader must work from the manifest alone, without listing the root.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from argparse import Namespace
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("trimodal_bench_scale", BENCH / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_path_reads_from_the_manifest_alone(tmp_path):
    from trimodal.shards.manifest import Manifest

    bench = _load()
    root = tmp_path / "root"
    bench.build_root(root, entries=2000, real=4)
    m = Manifest.load(str(root))
    assert len(m.shards) == 2000 and len({s.name for s in m.shards}) == 2000
    assert all(os.path.islink(root / s.name) for s in m.shards[:10])

    args = Namespace(read_entries=150, group_mb=1)
    loaded = bench.op_manifest_load(str(root), args)
    assert loaded["shards"] == 2000 and loaded["samples"] == m.samples
    start = bench.op_loader_startup(str(root), args)
    assert start["listings"] == 0, start["listed"]
    assert start["row_tokens"] == bench.SEQ_LEN
    stats = bench.op_stats(str(root), args)
    assert stats["shards"] == 150 and stats["listings"] == 0
    ver = bench.op_verify(str(root), args)
    assert ver["ok"] and ver["shards"] == 150 and ver["listings"] == 0
    # the progress callbacks of stats and verify: once per shard, in order, with the total
    from trimodal.shards.stats import compute_stats
    from trimodal.shards.verify import verify

    sub = bench._limited(str(root), 40)
    for run in (lambda cb: compute_stats(sub, progress=cb), lambda cb: verify(sub, progress=cb)):
        calls = []
        run(lambda done, total, name: calls.append((done, total)))
        assert calls == [(i, 40) for i in range(1, 41)]
    mix = bench.op_mix_plan(str(root), args)
    assert mix["input_shards"] == 2000 and mix["units"] >= 1 and mix["listings"] == 0
