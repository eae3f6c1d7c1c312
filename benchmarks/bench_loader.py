"""Loader throughput: ``TrimodalDataset`` rows vs a raw ``tarfile`` + ``numpy.load`` read.

Data (SPEC §4's read-speed setting): 20k text samples of 50–1,500 uint16 tokens in 4 shards,
written with the library's shard writer (ordinary tars: ``<key>.json`` + ``<key>.text.npy``).

- candidate: ``TrimodalDataset`` (default ``LoaderConfig``: 8 logical streams, seeded shuffle,
  packing into rows of L = 3,256 global ids, ``cycle=False``) iterated to the end: every row
  as the trainer receives it (int64 tokens, modality and valid tensors, counters);
- baseline: ``tarfile.open`` each shard, ``numpy.load`` every ``.npy`` member;
- also reported: the zero-copy ``iter_samples`` reader (tar headers parsed from one in-memory
  buffer, ``numpy.frombuffer`` views; json decoded), the floor the loader is built on, and the
  loader with as many streams as shards (each shard then read by one stream only).

Throughput counts the payload tokens of the shards (the same number for every reader; the
loader drops nothing with these sizes except the last partial row of each stream). The clock
is ``process_time`` (single-threaded work; wall time on a shared machine is noisier); the
wall figures are in the output too. Goal: loader ≥ 0.9 × baseline.

    python benchmarks/bench_loader.py [--samples 20000] [--shards 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards
GOAL = 0.9
TEXT_CODES = 32_000


def read_baseline(paths: list[str]) -> int:
    """Stock library reading: tarfile + numpy.load per .npy member."""
    n = 0
    for path in paths:
        with tarfile.open(path) as tf:
            for member in tf:
                if member.name.endswith(".npy"):
                    # (numpy 2.4's np.load cannot take tarfile's member object directly: it
                    # probes fileno(), which that object lacks; a BytesIO is what works)
                    n += np.load(io.BytesIO(tf.extractfile(member).read())).size
    return n


def read_iter_samples(paths: list[str]) -> int:
    """The shared reader layer: index a shard's members, decode every sample (json included)."""
    from trimodal.shards.reader import decode_sample, index_shard

    n = 0
    for path in paths:
        with open(path, "rb") as f:
            buf = f.read()
        for entry in index_shard(buf, path):
            n += decode_sample(buf, entry, path)["text"].size
    return n


def read_loader(root: str, seq_len: int, num_streams: int, layout) -> tuple[int, int]:
    """(rows, document tokens packed) of one full pass of the loader."""
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset

    ds = TrimodalDataset(
        LoaderConfig(sources=[SourceConfig(root=root)], seq_len=seq_len, num_streams=num_streams, cycle=False),
        layout, rank=0, world_size=1,
    )
    rows = 0
    for row in ds:
        rows += 1
    c = ds.counters()
    return rows, c["tokens_text"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=3256)
    ap.add_argument("--num-streams", type=int, default=8, help="the loader's logical streams (LoaderConfig default 8)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", default="process_time", choices=sorted(bc.CLOCKS))
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)

    from trimodal.shards.manifest import Manifest
    from trimodal.tokenizers.vocab import VocabLayout

    root = bc.work_dir(f"loader-{args.samples}s-{args.shards}sh-{args.min_len}-{args.max_len}", args.work)
    bc.make_text_shards(root, args.samples, args.shards, args.min_len, args.max_len, TEXT_CODES)
    manifest = Manifest.load(str(root))
    paths = [str(root / s.name) for s in manifest.shards]
    tokens = manifest.tokens()["text"]
    layout = VocabLayout(text_codes=TEXT_CODES, fingerprints={"text": "synthetic"})

    fns = {
        "baseline": lambda: read_baseline(paths),
        "loader": lambda: read_loader(str(root), args.seq_len, args.num_streams, layout),
        "iter_samples": lambda: read_iter_samples(paths),
    }
    if args.num_streams != args.shards:
        fns["loader_streams_eq_shards"] = lambda: read_loader(str(root), args.seq_len, args.shards, layout)
    for fn in fns.values():  # warm-up: page cache, imports, lookup tables
        fn()
    runs = bc.interleave(fns, args.repeats, args.clock)
    assert runs["baseline"]["result"] == tokens and runs["iter_samples"]["result"] == tokens
    tps = {k: tokens / bc.median(v["clock_s"]) for k, v in runs.items()}
    wall = {k: tokens / bc.median(v["wall_s"]) for k, v in runs.items()}
    rows, packed = runs["loader"]["result"]
    ratio = tps["loader"] / tps["baseline"]
    result = {
        "benchmark": "loader",
        "metric": "payload tokens/s",
        "clock": args.clock,
        "candidate": f"TrimodalDataset rows of L={args.seq_len}, {args.num_streams} streams, cycle=False",
        "baseline": "tarfile.open + numpy.load per .npy member",
        "loader_tokens_per_s": bc.rnd(tps["loader"]),
        "baseline_tokens_per_s": bc.rnd(tps["baseline"]),
        "ratio": bc.rnd(ratio),
        "goal": f">= {GOAL}",
        "goal_met": bc.goal_met(ratio, GOAL),
        "iter_samples_tokens_per_s": bc.rnd(tps["iter_samples"]),
        "loader_over_iter_samples": bc.rnd(tps["loader"] / tps["iter_samples"]),
        "loader_samples_per_s": bc.rnd(args.samples / bc.median(runs["loader"]["clock_s"])),
        "loader_rows_per_s": bc.rnd(rows / bc.median(runs["loader"]["clock_s"])),
        "wall": {k + "_tokens_per_s": bc.rnd(v) for k, v in wall.items()} | {"ratio": bc.rnd(wall["loader"] / wall["baseline"])},
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "data": {"samples": args.samples, "shards": args.shards, "tokens": tokens, "rows": rows,
                 "document_tokens_in_rows": packed, "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "repeats": args.repeats,
    }
    if "loader_streams_eq_shards" in tps:
        result["loader_streams_eq_shards_tokens_per_s"] = bc.rnd(tps["loader_streams_eq_shards"])
    return bc.emit(result)


if __name__ == "__main__":
    main()
