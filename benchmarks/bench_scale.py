"""Scale at the paper's size: a dataset root whose manifest lists 200,000 shards.

The paper trained on 6.4 T tokens; at the default 128 MiB shards that is about 200,000 shards.
This builds such a root cheaply: a handful of real tiny text shards (written with the library's
shard writer) and ``--entries`` manifest entries, each a symbolic link to one of them, with that
shard's size, sha256 and counts. Every reader therefore opens real shard files by the names the
manifest gives, and nothing is a stand-in except that the bytes repeat. Each operation runs in
a fresh process, timed from after its imports (``seconds``: wall, ``perf_counter``, which the
goals are about; ``cpu_seconds``: ``process_time``, steadier on a shared machine), and its peak
RSS is the process's own (``os.wait4``), imports included (``rss_imports_mb`` is the part they take):

- ``manifest_load``: ``Manifest.load`` (goal <= 2 s, <= 500 MB);
- ``loader_startup``: ``TrimodalDataset`` for rank 517 of a 1,024-rank job (1,024 streams), up to
  its first row (goal <= 5 s, <= 1 GB); every directory listing under the root is counted (goal 0);
- ``stats`` / ``verify``: ``compute_stats`` and ``verify`` over every shard the manifest names
  (streaming; ``--read-entries`` caps how many entries these two read, default all);
- ``mix_plan``: ``prepare_mix`` (sources, units, the row bound) over the ``--entries`` input shards.

    python benchmarks/bench_scale.py [--entries 200000] [--real 8] [--read-entries N]

There is no baseline implementation to compare with: the goals are absolute, and ``ratio`` is
the worst measured/goal figure (<= 1 meets every goal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

GOALS = {"manifest_load": (2.0, 500.0), "loader_startup": (5.0, 1000.0)}
RANK, WORLD = 517, 1024
TEXT_CODES = 32_000
SEQ_LEN = 256


def build_root(root: Path, entries: int, real: int, samples_per_shard: int = 6) -> None:
    """The synthetic root (cached: rebuilt only when the manifest's entry count differs)."""
    import numpy as np

    from trimodal.shards.manifest import Manifest, ShardInfo
    from trimodal.shards.writer import shard_name, write_shard

    marker = root.parent / "built.json"  # the cache: what the root was built with
    spec = {"entries": entries, "real": real, "samples_per_shard": samples_per_shard}
    if (root / "manifest.json").exists() and marker.exists() and json.loads(marker.read_text()) == spec:
        return
    root.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():
        p.unlink()
    rng = np.random.default_rng(0)
    reals = []
    for r in range(real):
        items = []
        for i in range(samples_per_shard):
            n = int(rng.integers(40, 400))
            k = r * samples_per_shard + i
            meta = {"id": f"synthetic:{k}", "source": "synthetic", "modality": "text",
                    "lengths": {"text": n, "chars": 5 * n}, "provenance": {"file": "synthetic", "line": k}}
            items.append((f"{k:012d}", meta, {"text": rng.integers(0, TEXT_CODES, n, dtype=np.uint16)}))
        reals.append(write_shard(str(root), f"real-{r:03d}.tar", items))
    infos = []
    for i in range(entries):
        src = reals[i % real]
        name = shard_name(i, entries)
        os.symlink(src.name, root / name)
        infos.append(ShardInfo(name=name, samples=src.samples, tokens=dict(src.tokens), bytes=src.bytes,
                               sha256=src.sha256, text_bytes=src.text_bytes))
    written = sum(s.samples for s in infos)
    m = Manifest(kind="tokenized", modality="text",
                 tokenizers={"text": {"kind": "synthetic", "vocab_size": TEXT_CODES, "fingerprint": "synthetic"}},
                 shards=infos, counts={"read": written, "written": written, "filtered": {}, "rejected": {}})
    m.save(str(root))
    marker.write_text(json.dumps(spec))


# ----------------------------------------------------------------------------- child operations


class Listings:
    """Counts directory listings under ``root`` (os and fsspec's local filesystem) while entered."""

    def __init__(self, root: str):
        self.root, self.calls = os.path.realpath(root), []
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> "Listings":
        import fsspec.implementations.local as local

        for mod, name in ((os, "listdir"), (os, "scandir"), (os, "walk")):
            self._wrap(mod, name, lambda a, k: a[0] if a else k.get("path", "."))
        for name in ("ls", "find", "glob", "walk"):
            self._wrap(local.LocalFileSystem, name, lambda a, k: a[1] if len(a) > 1 else k.get("path", ""))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)
        self._undo.clear()

    def _wrap(self, owner: Any, name: str, path_of) -> None:
        real = getattr(owner, name)
        calls, root = self.calls, self.root

        def counted(*a, **k):
            p = str(path_of(a, k))
            if os.path.realpath(p.removeprefix("file://")).startswith(root):
                calls.append(f"{name}({p})")
            return real(*a, **k)

        self._undo.append((owner, name, real))
        setattr(owner, name, counted)


def op_manifest_load(root: str, _args) -> dict[str, Any]:
    from trimodal.shards.manifest import Manifest

    t0 = time.perf_counter()
    m = Manifest.load(root)
    return {"seconds": time.perf_counter() - t0, "shards": len(m.shards), "samples": m.samples}


def op_loader_startup(root: str, _args) -> dict[str, Any]:
    """What the trainer does (``train/trainer.py``): the manifests once, the layout, the dataset."""
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
    from trimodal.shards.loader.sources import load_manifests
    from trimodal.tokenizers.vocab import VocabLayout

    with Listings(root) as listings:
        t0 = time.perf_counter()
        cfg = LoaderConfig(sources=[SourceConfig(root=root)], seq_len=SEQ_LEN, num_streams=WORLD, cycle=True)
        manifests = load_manifests(cfg)
        m = manifests[root]
        layout = VocabLayout(text_codes=m.tokenizers["text"].vocab_size, fingerprints=m.fingerprints())
        ds = TrimodalDataset(cfg, layout, rank=RANK, world_size=WORLD, manifests=manifests)
        row = next(iter(ds))
        secs = time.perf_counter() - t0
    return {"seconds": secs, "row_tokens": int(row["tokens"].numel()), "listings": len(listings.calls),
            "listed": listings.calls[:5]}


def _limited(root: str, n: int | None) -> str:
    """``root`` itself, or a sibling root whose manifest keeps the first ``n`` entries (same files)."""
    if n is None:
        return root
    from trimodal.shards.manifest import Manifest

    m = Manifest.load(root)
    if n >= len(m.shards):
        return root
    sub = Path(root).parent / f"{Path(root).name}-first{n}"
    sub.mkdir(exist_ok=True)
    for s in m.shards[:n]:
        link = sub / s.name
        if not link.is_symlink():
            os.symlink(os.path.realpath(Path(root) / s.name), link)
    m.shards = m.shards[:n]
    m.counts = {**m.counts, "read": m.samples, "written": m.samples}
    m.save(str(sub))
    return str(sub)


def op_stats(root: str, args) -> dict[str, Any]:
    from trimodal.shards.stats import compute_stats

    root = _limited(root, args.read_entries)
    with Listings(root) as listings:
        t0 = time.perf_counter()
        ticks = []
        s = compute_stats(root, seq_len=SEQ_LEN, progress=lambda done, total, name: ticks.append(done)
                          if done % 1000 == 0 else None)
    return {"seconds": time.perf_counter() - t0, "shards": s["shards"], "samples": s["samples"],
            "progress_calls_per_1000": len(ticks), "listings": len(listings.calls)}


def op_verify(root: str, args) -> dict[str, Any]:
    from trimodal.shards.verify import verify

    root = _limited(root, args.read_entries)
    ticks = []
    with Listings(root) as listings:
        t0 = time.perf_counter()
        report = verify(root, progress=lambda done, total, name: ticks.append(done) if done % 1000 == 0 else None)
    return {"seconds": time.perf_counter() - t0, "shards": report.checked, "ok": report.ok,
            "progress_calls_per_1000": len(ticks), "listings": len(listings.calls)}


def op_mix_plan(root: str, args) -> dict[str, Any]:
    from trimodal.pipelines.mix import MixPipelineConfig, prepare_mix

    with Listings(root) as listings:
        t0 = time.perf_counter()
        job = prepare_mix(MixPipelineConfig(inputs=[f"text={root}"], weights=[1.0], seq_len=SEQ_LEN,
                                            out=str(Path(root).parent / "mix-out"), group_bytes=args.group_mb * 2**20))
    return {"seconds": time.perf_counter() - t0, "units": len(job.units),
            "input_shards": sum(len(s.manifest.shards) for s in job.sources) if hasattr(job.sources[0], "manifest") else None,
            "listings": len(listings.calls)}


OPS = {"manifest_load": op_manifest_load, "loader_startup": op_loader_startup, "stats": op_stats,
       "verify": op_verify, "mix_plan": op_mix_plan}


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


IMPORTS = {"manifest_load": ["trimodal.shards.manifest"], "loader_startup": ["torch", "trimodal.shards.loader"],
           "stats": ["trimodal.shards.stats"], "verify": ["trimodal.shards.verify"], "mix_plan": ["trimodal.pipelines.mix"]}


def child(args) -> None:
    # the operation's imports first, so that the timed part is the operation (the RSS they take is reported)
    import importlib

    for name in IMPORTS[args.child]:
        importlib.import_module(name)
    before = rss_mb()
    c0 = time.process_time()
    out = OPS[args.child](args.root, args)
    out["cpu_seconds"] = time.process_time() - c0
    print(json.dumps({**out, "rss_imports_mb": round(before, 1)}))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000, help="shard entries in the manifest")
    ap.add_argument("--real", type=int, default=8, help="real tiny shards the entries link to")
    ap.add_argument("--read-entries", type=int, default=None, help="stats/verify: read only the first N entries")
    ap.add_argument("--group-mb", type=int, default=64, help="pipeline mix: input MB per packing unit")
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    ap.add_argument("--work", default=None, help="cache folder (default $TRIMODAL_BENCH_DIR or /tmp/trimodal-bench)")
    ap.add_argument("--child", choices=[*OPS, "build"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "build":
        build_root(Path(args.root), args.entries, args.real)
        print("{}")
        return {}
    if args.child:
        child(args)
        return {}

    root = bc.work_dir(f"scale-{args.entries}", args.work) / "root"
    t0 = time.perf_counter()
    # in a process of its own: a child forked from a parent that held the 200,000 entries would
    # start its peak-RSS count at the parent's size
    bc.run_child([sys.executable, str(Path(__file__).resolve()), "--child", "build", "--root", str(root),
                  "--entries", str(args.entries), "--real", str(args.real)])
    build_s = time.perf_counter() - t0
    manifest_mb = (root / "manifest.json").stat().st_size / 2**20
    results: dict[str, Any] = {}
    for op in args.ops:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, "--root", str(root)]
        if args.read_entries is not None:
            cmd += ["--read-entries", str(args.read_entries)]
        cmd += ["--group-mb", str(args.group_mb)]
        out, usage, wall = bc.run_child(cmd)
        out["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
        out["seconds"] = bc.rnd(out["seconds"], 3)
        out["cpu_seconds"] = bc.rnd(out["cpu_seconds"], 3)
        results[op] = out
    worst = max((results[op]["seconds"] / g[0]) for op, g in GOALS.items() if op in results) if any(
        op in results for op in GOALS) else float("nan")
    worst_mem = max((results[op]["peak_rss_mb"] / g[1]) for op, g in GOALS.items() if op in results) if any(
        op in results for op in GOALS) else float("nan")
    ratio = max(worst, worst_mem)
    return bc.emit({
        **bc.headline("bench_scale", "worst measured/goal (time and peak RSS)", "perf_counter",
                      "library readers", "the goals", ratio, 1.0, "<= 1 (every goal met)", higher_is_better=False),
        "entries": args.entries, "real_shards": args.real, "manifest_mb": round(manifest_mb, 1),
        "build_seconds": round(build_s, 1), "rank": RANK, "world_size": WORLD, "goals": GOALS, "results": results,
    })


if __name__ == "__main__":
    main()
