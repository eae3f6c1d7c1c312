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

``--workers 0,1,2`` adds the steady-state wall rows/s of a cycling ``RowLoader`` with that many
``data.num_workers`` (the first batches, i.e. worker start-up, left out; ``--worker-rows`` rows
timed), and the training process's CPU per 1,000 rows; ``--workers-only`` times just that.

    python benchmarks/bench_loader.py [--samples 20000] [--shards 4] [--repeats 5] [--workers 0,1,2]
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


def read_loader(roots: list[str], seq_len: int, num_streams: int, layout, pack_paired: bool = False,
                batch: int = 8, num_workers: int = 0) -> tuple[int, dict[str, int]]:
    """(rows, counters) of one full pass of the loader as the trainer reads it: ``RowLoader``
    batches of ``batch`` rows (``num_workers`` dataloader processes; 0: in this process)."""
    from trimodal.shards.loader import LoaderConfig, RowLoader, SourceConfig, TrimodalDataset

    ds = TrimodalDataset(
        LoaderConfig(sources=[SourceConfig(root=r) for r in roots], seq_len=seq_len, num_streams=num_streams,
                     cycle=False, pack_paired=pack_paired),
        layout, rank=0, world_size=1,
    )
    loader = RowLoader(ds, batch, num_workers=num_workers)
    rows = 0
    for b in loader.dl:
        rows += b["tokens"].shape[0]
    # in-process streams: the dataset's live counters (the dataloader's state after the end of
    # a pass holds no stream state)
    return rows, ds.counters() if num_workers == 0 else loader.counters()


def ratio_rounds(runs: dict[str, dict[str, Any]], num: str, den: str, payload: dict[str, int]) -> list[float]:
    """Per interleaved round: ``num``'s tokens/s over ``den``'s (one ratio per round, so that a
    slow round hits both sides; report the median and the spread of these)."""
    return [(payload[num] / a) / (payload[den] / b) for a, b in zip(runs[num]["clock_s"], runs[den]["clock_s"])]


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": bc.rnd(bc.median(xs)), "min": bc.rnd(min(xs)), "max": bc.rnd(max(xs))}


def workers_rows_per_s(roots: list[str], seq_len: int, num_streams: int, layout, pack_paired: bool,
                       counts: list[int], batch: int, rows: int, warm_batches: int = 8) -> dict[str, Any]:
    """Steady-state wall rows/s with ``data.num_workers`` = each of ``counts``: a cycling loader
    (``cycle=True``, as in training), the first ``warm_batches`` batches (worker start-up, the
    first shards) left out, then ``rows`` rows timed; also the training process's CPU seconds
    per 1,000 rows over the same window (what loading leaves on the training thread)."""
    import time

    from trimodal.shards.loader import LoaderConfig, RowLoader, SourceConfig, TrimodalDataset

    out = {}
    for w in counts:
        ds = TrimodalDataset(
            LoaderConfig(sources=[SourceConfig(root=r) for r in roots], seq_len=seq_len, num_streams=num_streams,
                         cycle=True, pack_paired=pack_paired),
            layout, rank=0, world_size=1,
        )
        loader = RowLoader(ds, batch, num_workers=w)
        it = iter(loader.dl)
        for _ in range(warm_batches):
            next(it)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while n < rows:
            n += next(it)["tokens"].shape[0]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[str(w)] = {"rows_per_s": bc.rnd(n / wall), "main_cpu_s_per_1k_rows": bc.rnd(1000 * cpu / n), "rows": n}
        del it, loader  # shuts the workers down before the next count starts
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--paired-samples", type=int, default=None, help="image-text samples (default: --samples)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=3256)
    ap.add_argument("--batch", type=int, default=8, help="RowLoader batch size")
    ap.add_argument("--num-streams", type=int, default=8, help="the loader's logical streams (LoaderConfig default 8)")
    ap.add_argument("--no-paired", action="store_true", help="skip the image-text rows")
    ap.add_argument("--tarfile", action="store_true", help="also time tarfile + numpy.load (slow: seconds a round)")
    ap.add_argument("--streams-eq-shards", action="store_true", help="also time the loader with as many streams as shards")
    ap.add_argument("--workers", default="", help="comma list of data.num_workers to time (steady-state wall rows/s), e.g. 0,1,2")
    ap.add_argument("--workers-only", action="store_true", help="time only the --workers counts (no interleaved rounds)")
    ap.add_argument("--worker-rows", type=int, default=20_000, help="rows timed per worker count, after the warm-up batches")
    bc.add_args(ap, repeats=5, clock=True, work=True)
    args = ap.parse_args(argv)

    from trimodal.shards.manifest import Manifest
    from trimodal.tokenizers.vocab import VocabLayout

    root, manifest, paths, tokens = bc.text_dataset(args.samples, args.shards, args.min_len, args.max_len, TEXT_CODES,
                                                    args.work)
    layout = VocabLayout(text_codes=TEXT_CODES, image_codes=IMAGE_CODES,
                         fingerprints={"text": "synthetic", "image": "synthetic"})
    L, S, B = args.seq_len, args.num_streams, args.batch
    fns = {
        "floor": lambda: read_floor(paths),
        "loader_text": lambda: read_loader([str(root)], L, S, layout, batch=B),
        "reader": lambda: read_ours(paths),
    }
    if args.tarfile:
        fns["baseline"] = lambda: read_tarfile(paths)
    if args.streams_eq_shards and S != args.shards:
        fns["loader_text_streams_eq_shards"] = lambda: read_loader([str(root)], L, args.shards, layout, batch=B)
    payload = {k: tokens for k in fns}
    if not args.no_paired:
        n_paired = args.paired_samples or args.samples
        proot = bc.work_dir(f"loader-paired-{n_paired}s-{args.shards}sh", args.work)
        bc.make_image_shards(proot, n_paired, grid=32, caption=(10, 200), text_codes=TEXT_CODES,
                             image_codes=IMAGE_CODES, per_shard=-(-n_paired // args.shards))
        pm = Manifest.load(str(proot))
        ppaths = [str(proot / s.name) for s in pm.shards]
        paired_tokens = sum(pm.tokens().values())
        fns["floor_paired"] = lambda: read_floor(ppaths)
        fns["loader_paired"] = lambda: read_loader([str(proot)], L, S, layout, batch=B)
        fns["floor_both"] = lambda: read_floor(paths) + read_floor(ppaths)
        fns["loader_packed"] = lambda: read_loader([str(root), str(proot)], L, S, layout, pack_paired=True, batch=B)
        payload.update(floor_paired=paired_tokens, loader_paired=paired_tokens, floor_both=tokens + paired_tokens)
    load_before = bc.machine().get("loadavg_1m")
    if args.workers_only:
        counts = [int(x) for x in args.workers.split(",")]
        kinds = {"text": ([str(root)], False)}
        if not args.no_paired:
            kinds["packed"] = ([str(root), str(proot)], True)
        return bc.emit({"benchmark": "loader_workers", "metric": "steady-state wall rows/s", "seq_len": L,
                        "batch": B, "streams": S, "loadavg_1m_before": load_before,
                        "workers_steady_state": {k: workers_rows_per_s(r, L, S, layout, pk, counts, B, args.worker_rows)
                                                 for k, (r, pk) in kinds.items()},
                        "loadavg_1m_after": bc.machine().get("loadavg_1m")})
    for fn in fns.values():  # warm-up: page cache, imports, lookup tables
        fn()
    runs = bc.interleave(fns, args.repeats, args.clock)
    assert runs["reader"]["result"] == tokens and runs["floor"]["result"] == tokens
    if "baseline" in runs:
        assert runs["baseline"]["result"] == tokens
    if "loader_packed" in runs:  # non-PAD row positions (packing moves tokens between rows)
        krows, kc = runs["loader_packed"]["result"]
        payload["loader_packed"] = krows * L - kc["pad_tokens"]
    tps = {k: payload[k] / bc.median(v["clock_s"]) for k, v in runs.items()}
    rows, counters = runs["loader_text"]["result"]
    text_ratio = ratio_rounds(runs, "loader_text", "floor", payload)
    result = {
        "benchmark": "loader",
        "metric": "payload tokens/s (packed: non-PAD row positions/s), per core",
        "clock": args.clock,
        "candidate": f"RowLoader batches of {B} rows of L={L}, {S} streams, cycle=False, num_workers=0",
        "baseline": "floor: iter_tar_offsets + numpy.frombuffer per .npy member, the same shards",
        "ratio": bc.rnd(bc.median(text_ratio)),  # text rows over the floor, median of per-round ratios
        "goal": f">= {GOAL_TOKENS_PER_S / 1e6:.0f} M tokens/s per core (text and packed rows)",
        "goal_met": bool(tps["loader_text"] >= GOAL_TOKENS_PER_S),  # every kind timed (below)
        "ratio_to_floor": {"text": summary(text_ratio)},
        "tokens_per_s": {k: bc.rnd(v) for k, v in tps.items()},
        "goal_met_by_kind": {"text": bool(tps["loader_text"] >= GOAL_TOKENS_PER_S)},
        "loader_rows_per_s": bc.rnd(rows / bc.median(runs["loader_text"]["clock_s"])),
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "data": {"samples": args.samples, "shards": args.shards, "tokens": tokens, "rows": rows,
                 "document_tokens_in_rows": counters["tokens_text"],
                 "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "repeats": args.repeats,
        "loadavg_1m_before": load_before,
    }
    if "baseline" in runs:
        result["ratio_to_tarfile"] = summary(ratio_rounds(runs, "loader_text", "baseline", payload))
    if "loader_paired" in runs:
        prows, pc = runs["loader_paired"]["result"]
        krows, kc = runs["loader_packed"]["result"]
        result["ratio_to_floor"]["paired"] = summary(ratio_rounds(runs, "loader_paired", "floor_paired", payload))
        result["ratio_to_floor"]["packed"] = summary(ratio_rounds(runs, "loader_packed", "floor_both", payload))
        result["goal_met_by_kind"]["packed"] = bool(tps["loader_packed"] >= GOAL_TOKENS_PER_S)
        result["goal_met"] = all(result["goal_met_by_kind"].values())
        result["paired"] = {"rows": prows, "tokens": paired_tokens,
                            "rows_per_s": bc.rnd(prows / bc.median(runs["loader_paired"]["clock_s"])),
                            "pad_tokens": pc["pad_tokens"], "skipped_too_long": pc["rows_skipped_too_long"]}
        result["packed"] = {"rows": krows, "non_pad_positions": payload["loader_packed"],
                            "rows_per_s": bc.rnd(krows / bc.median(runs["loader_packed"]["clock_s"])),
                            "pad_share": bc.rnd(kc["pad_tokens"] / (krows * L))}
    if args.workers:
        counts = [int(x) for x in args.workers.split(",")]
        result["workers_steady_state"] = {"text": workers_rows_per_s([str(root)], L, S, layout, False, counts, B,
                                                                      args.worker_rows)}
        if not args.no_paired:
            result["workers_steady_state"]["packed"] = workers_rows_per_s(
                [str(root), str(proot)], L, S, layout, True, counts, B, args.worker_rows)
        result["loadavg_1m_after_workers"] = bc.machine().get("loadavg_1m")
    return bc.emit(result)


if __name__ == "__main__":
    main()
