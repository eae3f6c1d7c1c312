"""Loader throughput: ``TrimodalDataset`` rows of L = 3,256 vs the shard reader and a raw ``tarfile`` read.

Data (the shard layout of ``docs/shards.md``, at the size ``BENCHMARKS.md`` reports the reading
goals for): 20k text samples of 50–1,500 uint16 tokens in 4 shards, written with the library's
shard writer (ordinary tars: ``<key>.json`` + ``<key>.text.npy``);
for paired rows, 20k image-text samples (a 32×32 code grid and a 10–200 token caption) in 4
shards. Both have fewer shards than the loader's 8 streams (sample striding: every stream reads
its eighth of every shard, the process reads each shard once).

- ``loader_text`` (the candidate): ``TrimodalDataset`` with the default ``LoaderConfig`` (8
  logical streams, seeded shuffle, text documents packed into rows of L = 3,256 global ids,
  ``cycle=False``) iterated to the end: every row as the trainer receives it (int64 tokens,
  modality and valid tensors, counters);
- ``loader_text_streams_eq_shards``: the same with as many streams as shards;
- ``loader_paired``: image-text rows of L (one sample per row, padded; no packing);
- ``loader_packed``: the text and image-text sources together with ``pack_paired=true``
  (several image-text samples and a text filler share each row): counted in non-PAD row
  positions per second, since packing moves tokens between rows (its PAD share is reported);
- ``reader``: ``index_shard`` + ``decode_sample`` every sample (``bench_reader.py`` compares
  it with other libraries' readers);
- ``floor``: ``iter_tar_offsets`` + ``numpy.frombuffer`` per ``.npy`` member;
- ``baseline``: ``tarfile.open`` each shard, ``numpy.load`` every ``.npy`` member.

Throughput counts the payload tokens of the shards (the same number for every reader of a data
set; the loader drops nothing with these sizes except each stream's last partial text row). The
clock is ``process_time`` (single-threaded work; wall time on a shared machine is noisier); the
wall figures are in the output too. Goal: text rows ≥ 50 M tokens/s; ``ratio`` is text rows over
the ``tarfile`` baseline.

    python benchmarks/bench_loader.py [--samples 20000] [--shards 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards
from bench_reader import read_floor, read_ours, read_tarfile  # noqa: E402  the same readers

GOAL_TOKENS_PER_S = 50e6
TEXT_CODES = 32_000
IMAGE_CODES = 16_384


def read_loader(roots: list[str], seq_len: int, num_streams: int, layout, pack_paired: bool = False
                ) -> tuple[int, dict[str, int]]:
    """(rows, counters) of one full pass of the loader."""
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset

    ds = TrimodalDataset(
        LoaderConfig(sources=[SourceConfig(root=r) for r in roots], seq_len=seq_len, num_streams=num_streams,
                     cycle=False, pack_paired=pack_paired),
        layout, rank=0, world_size=1,
    )
    rows = 0
    for _ in ds:
        rows += 1
    return rows, ds.counters()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--paired-samples", type=int, default=None, help="image-text samples (default: --samples)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=3256)
    ap.add_argument("--num-streams", type=int, default=8, help="the loader's logical streams (LoaderConfig default 8)")
    ap.add_argument("--no-paired", action="store_true", help="skip the image-text rows")
    bc.add_args(ap, repeats=5, clock=True, work=True)
    args = ap.parse_args(argv)

    from trimodal.shards.manifest import Manifest
    from trimodal.tokenizers.vocab import VocabLayout

    root, manifest, paths, tokens = bc.text_dataset(args.samples, args.shards, args.min_len, args.max_len, TEXT_CODES,
                                                    args.work)
    layout = VocabLayout(text_codes=TEXT_CODES, image_codes=IMAGE_CODES,
                         fingerprints={"text": "synthetic", "image": "synthetic"})

    fns = {
        "baseline": lambda: read_tarfile(paths),
        "loader_text": lambda: read_loader([str(root)], args.seq_len, args.num_streams, layout),
        "reader": lambda: read_ours(paths),
        "floor": lambda: read_floor(paths),
    }
    if args.num_streams != args.shards:
        fns["loader_text_streams_eq_shards"] = lambda: read_loader([str(root)], args.seq_len, args.shards, layout)
    paired_tokens = 0
    if not args.no_paired:
        n_paired = args.paired_samples or args.samples
        proot = bc.work_dir(f"loader-paired-{n_paired}s-{args.shards}sh", args.work)
        bc.make_image_shards(proot, n_paired, grid=32, caption=(10, 200), text_codes=TEXT_CODES,
                             image_codes=IMAGE_CODES, per_shard=-(-n_paired // args.shards))
        pm = Manifest.load(str(proot))
        paired_tokens = sum(pm.tokens().values())
        fns["loader_paired"] = lambda: read_loader([str(proot)], args.seq_len, args.num_streams, layout)
        fns["loader_packed"] = lambda: read_loader([str(root), str(proot)], args.seq_len, args.num_streams, layout,
                                                   pack_paired=True)
    load_before = bc.machine().get("loadavg_1m")
    for fn in fns.values():  # warm-up: page cache, imports, lookup tables
        fn()
    runs = bc.interleave(fns, args.repeats, args.clock)
    assert runs["baseline"]["result"] == tokens and runs["reader"]["result"] == tokens
    assert runs["floor"]["result"] == tokens
    payload = {k: (paired_tokens if k == "loader_paired" else tokens) for k in runs}
    if "loader_packed" in runs:  # non-PAD row positions (packing moves tokens between rows)
        krows, kc = runs["loader_packed"]["result"]
        payload["loader_packed"] = krows * args.seq_len - kc["pad_tokens"]
    tps = {k: payload[k] / bc.median(v["clock_s"]) for k, v in runs.items()}
    wall = {k: payload[k] / bc.median(v["wall_s"]) for k, v in runs.items()}
    rows, counters = runs["loader_text"]["result"]
    ratio = tps["loader_text"] / tps["baseline"]
    result = {
        "benchmark": "loader",
        "metric": "payload tokens/s",
        "clock": args.clock,
        "candidate": f"TrimodalDataset text rows of L={args.seq_len}, {args.num_streams} streams, cycle=False",
        "baseline": "tarfile.open + numpy.load per .npy member",
        "loader_tokens_per_s": bc.rnd(tps["loader_text"]),
        "baseline_tokens_per_s": bc.rnd(tps["baseline"]),
        "ratio": bc.rnd(ratio),
        "goal": f"text rows >= {GOAL_TOKENS_PER_S / 1e6:.0f} M tokens/s",
        "goal_met": bool(tps["loader_text"] >= GOAL_TOKENS_PER_S),
        "tokens_per_s": {k: bc.rnd(v) for k, v in tps.items()},
        "loader_over_reader": bc.rnd(tps["loader_text"] / tps["reader"]),
        "loader_over_floor": bc.rnd(tps["loader_text"] / tps["floor"]),
        "loader_samples_per_s": bc.rnd(args.samples / bc.median(runs["loader_text"]["clock_s"])),
        "loader_rows_per_s": bc.rnd(rows / bc.median(runs["loader_text"]["clock_s"])),
        "wall": {k + "_tokens_per_s": bc.rnd(v) for k, v in wall.items()}
                | {"ratio": bc.rnd(wall["loader_text"] / wall["baseline"])},
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "data": {"samples": args.samples, "shards": args.shards, "tokens": tokens, "rows": rows,
                 "document_tokens_in_rows": counters["tokens_text"],
                 "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "repeats": args.repeats,
        "loadavg_1m_before": load_before,
    }
    if "loader_paired" in runs:
        prows, pc = runs["loader_paired"]["result"]
        result["paired"] = {"rows": prows, "tokens": paired_tokens,
                            "rows_per_s": bc.rnd(prows / bc.median(runs["loader_paired"]["clock_s"])),
                            "row_positions_per_s": bc.rnd(prows * args.seq_len / bc.median(runs["loader_paired"]["clock_s"])),
                            "pad_tokens": pc["pad_tokens"], "skipped_too_long": pc["rows_skipped_too_long"]}
        krows, kc = runs["loader_packed"]["result"]
        result["packed"] = {"rows": krows, "non_pad_positions": payload["loader_packed"],
                            "non_pad_positions_per_s": bc.rnd(tps["loader_packed"]),
                            "rows_per_s": bc.rnd(krows / bc.median(runs["loader_packed"]["clock_s"])),
                            "pad_share": bc.rnd(kc["pad_tokens"] / (krows * args.seq_len))}
    return bc.emit(result)


if __name__ == "__main__":
    main()
