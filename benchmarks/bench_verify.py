"""Cost of the loader's default shard check: ``data.verify=xxh3`` (size + xxh3-64 content hash of
each shard as it is opened) against ``size`` (the previous default) and ``sha256``.

Data: the loader benchmark's synthetic text shards (``bench_loader.py``: 20k documents of
50–1,500 uint16 tokens in 4 shards), written fresh so that the manifest records the xxh3 hash.
Each round runs ``TrimodalDataset`` (8 streams, rows of L = 3,256) over the whole dataset once per
mode, modes alternating order each round; the cost is the per-round ratio of process time
(xxh3 / size), reported as median [min–max]. Goal (docs/shards.md): ≤ 1.05. Since a few per cent
is within the noise of whole loader passes on a shared machine, the run also times the check
alone (xxh3 of every shard's bytes, in the same rounds) and reports it as a share of a loader pass
(``hash_share``): the direct measure of what the default check adds.

    python benchmarks/bench_verify.py [--samples 20000] [--shards 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

TEXT_CODES = 32_000
GOAL = 1.05


def read_loader(root: str, seq_len: int, verify: str) -> int:
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
    from trimodal.tokenizers.vocab import VocabLayout

    layout = VocabLayout(text_codes=TEXT_CODES, fingerprints={"text": "synthetic"})
    ds = TrimodalDataset(LoaderConfig(sources=[SourceConfig(root=root)], seq_len=seq_len, cycle=False, verify=verify),
                         layout, rank=0, world_size=1)
    return sum(1 for _ in ds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=3256)
    bc.add_args(ap, repeats=5, clock=True, work=True)
    args = ap.parse_args(argv)

    from trimodal.shards.manifest import Manifest

    root = bc.work_dir(f"verify-{args.samples}s-{args.shards}sh-{args.min_len}-{args.max_len}", args.work)
    bc.make_text_shards(root, args.samples, args.shards, args.min_len, args.max_len, TEXT_CODES)
    manifest = Manifest.load(str(root))
    assert all(s.xxh3 for s in manifest.shards), "shards written without the content hash: remove the cache folder"
    tokens = manifest.tokens()["text"]
    fns = {mode: (lambda m=mode: read_loader(str(root), args.seq_len, m)) for mode in ("size", "xxh3", "sha256")}
    from trimodal.shards.manifest import content_hash

    blobs = [(root / s.name).read_bytes() for s in manifest.shards]
    fns["hash_only"] = lambda: [content_hash(b) for b in blobs]
    for fn in fns.values():
        fn()  # warm-up
    runs = bc.interleave(fns, args.repeats, args.clock)
    per_round = {m: [a / b for a, b in zip(runs[m]["clock_s"], runs["size"]["clock_s"])] for m in ("xxh3", "sha256")}
    ratio = bc.median(per_round["xxh3"])
    share = [h / s for h, s in zip(runs["hash_only"]["clock_s"], runs["size"]["clock_s"])]
    return bc.emit({
        **bc.headline("verify", "loader time, xxh3 check / size check", args.clock, "xxh3", "size", ratio, GOAL,
                      goal_text=f"<= {GOAL}", higher_is_better=False),
        "xxh3_over_size": {"median": bc.rnd(ratio), "min": bc.rnd(min(per_round["xxh3"])),
                           "max": bc.rnd(max(per_round["xxh3"]))},
        "sha256_over_size": {"median": bc.rnd(bc.median(per_round["sha256"])), "min": bc.rnd(min(per_round["sha256"])),
                             "max": bc.rnd(max(per_round["sha256"]))},
        "hash_share": {"median": bc.rnd(bc.median(share)), "min": bc.rnd(min(share)), "max": bc.rnd(max(share))},
        "tokens_per_s": {m: bc.rnd(tokens / bc.median(runs[m]["clock_s"])) for m in ("size", "xxh3", "sha256")},
        "rows": runs["size"]["result"], "shard_bytes": sum(s.bytes for s in manifest.shards),
        "repeats": args.repeats, "samples": args.samples, "shards": args.shards,
    })


if __name__ == "__main__":
    main()
