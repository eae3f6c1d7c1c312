"""Sample-reader throughput: our shard reader vs LitData's, stock webdataset's and mosaicml-streaming's
readers on the same samples, plus a per-member walk floor.

Data (the shard layout of ``docs/shards.md``, at the size ``BENCHMARKS.md`` reports the reading
goals for): 20k text samples of 50–1,500 uint16 tokens in 4 shards, written with the library's
shard writer (ordinary POSIX tars: ``<key>.json`` + ``<key>.text.npy``).
The peers' copies are written from those very arrays with their own writers (LitData
``BinaryWriter`` chunks with ``{"text": ndarray}`` items, one chunk per shard; Mosaic
``MDSWriter`` with an ``ndarray:uint16`` column, about one shard per shard) and cached; only the
reading is timed. The peers store only the token array, their best case; our shards also hold
each sample's ``.json`` member, which our readers step over.

Readers (every one decodes every sample of every shard, from the page cache):

- ``ours``: ``index_shard`` + ``decode_sample`` per sample (the sample dict; its json is present
  but parsed only when read, and this reader does not read it) — the reader the loader, stats,
  verify and mix share;
- ``ours_mmap``: ``ours`` on an ``mmap`` of each file rather than a ``bytes`` copy (the copy's
  page faults are a good part of our cost; LitData maps its chunk files);
- ``ours_iter_arrays``: the one-array fast path, ``iter_arrays(data, where, "text")``;
- ``ours_with_json``: ``decode_sample`` and the json read too (what every sample cost before
  the json became lazy);
- ``floor``: ``iter_tar_offsets`` (one Python step per tar member) + ``numpy.frombuffer`` per
  ``.npy``, no header parsing: the floor of a member-at-a-time reader (our index now walks the
  headers with numpy, so it can beat it);
- ``tarfile``: ``tarfile.open`` + ``numpy.load`` per member (stock library reading);
- ``litdata``: ``litdata.StreamingDataset(dir, shuffle=False)`` iterated in-process;
- ``webdataset_decode`` / ``webdataset_raw``: ``wds.WebDataset(urls, shardshuffle=False)``
  with ``.decode()`` (every member decoded by its default decoders) / without (bytes only);
- ``mds``: ``streaming.StreamingDataset(local=dir, shuffle=False, batch_size=1)`` iterated
  (its reader threads included); ``mds_get_item``: ``dataset.get_item(i)`` for every sample
  (its reader without the threads).

Rounds are interleaved: ours, then the peers', then the peers', then ours, ... (the peers' process
stays up between rounds), so a slow moment of the shared machine hits both; ``ratio_per_round``
is the median and range of ours over the baseline within each round. The peers run in a
subprocess with ``.bench-venv``'s python (``python -m venv .bench-venv``; ``pip install -c C
torch==2.13.0 numpy==2.4.6``, then ``pip install -c C litdata==0.2.76 mosaicml-streaming==0.10.0
webdataset==1.0.2 datatrove==0.9.0 orjson sentencepiece==0.2.3`` with a constraints file C holding
``torch==2.13.0`` and ``numpy==2.4.6``; never the project's venv; Mosaic pulls torchvision 0.28.0,
a CUDA build that cannot load beside the CPU torch, so its ``streaming.vision`` is stubbed), in the same benchmark run, on the same files; ours runs in
this process. Without that venv the peers are skipped and the result says so. Clock:
``process_time`` (CPU seconds of the process, its threads included; wall is in the output too).
Goal: ``ours`` ≥ LitData's reader (``ratio`` = ours / litdata).

    python benchmarks/bench_reader.py [--samples 20000] [--shards 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards

GOAL = 1.0
TEXT_CODES = 32_000
PEER_VENV = Path(__file__).resolve().parents[1] / ".bench-venv"


def _buffers(paths: list[str], use_mmap: bool = False):
    """``(buffer, path)`` of each shard file: a ``bytes`` copy, or a read-only ``mmap``."""
    import mmap

    for path in paths:
        with open(path, "rb") as f:
            yield (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if use_mmap else f.read()), path


def read_ours(paths: list[str], use_mmap: bool = False, with_json: bool = False) -> int:
    """The shared reader layer: index each shard, decode every sample (its json stays unparsed
    unless ``with_json``: the per-sample cost the loader never pays). ``use_mmap``: on an ``mmap``
    of each file instead of a ``bytes`` copy (LitData maps its chunks)."""
    from trimodal.shards.reader import decode_sample, index_shard

    n = 0
    for buf, path in _buffers(paths, use_mmap):
        for entry in index_shard(buf, path):
            s = decode_sample(buf, entry, path)
            n += s["text"].size + (0 * len(s["json"]) if with_json else 0)
    return n


def read_ours_iter_arrays(paths: list[str]) -> int:
    from trimodal.shards.reader import iter_arrays

    return sum(a.size for buf, path in _buffers(paths) for a in iter_arrays(buf, path, "text"))


def read_floor(paths: list[str]) -> int:
    """One Python step per tar member, ``numpy.frombuffer`` per .npy after its (fixed, 128-byte)
    header: what a member-at-a-time reader cannot go below."""
    from trimodal.shards.format import iter_tar_offsets

    n = 0
    for buf, path in _buffers(paths):
        for name, start, end in iter_tar_offsets(buf, path):
            if name.endswith(".npy"):
                n += np.frombuffer(buf, np.uint16, (end - start - 128) // 2, start + 128).size
    return n


def read_tarfile(paths: list[str]) -> int:
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


# Runs in the peers' venv (no trimodal there): writes their formats once, then times their readers.
PEER_SCRIPT = r'''
import gc, io, json, os, shutil, sys, tarfile, time, types
import numpy as np

args = json.loads(sys.argv[1])
out = {"versions": {}, "runs": {}, "errors": {}}
sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))  # its torchvision import fails here

def samples():
    for path in args["paths"]:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name.endswith(".text.npy"):
                    yield np.load(io.BytesIO(tf.extractfile(m).read()))

def fresh(folder):
    marker = os.path.join(folder, "written-from.json")
    if os.path.exists(marker) and json.load(open(marker)) == args["stamp"]:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return True

def done(folder):
    json.dump(args["stamp"], open(os.path.join(folder, "written-from.json"), "w"))

readers = {}
lit, mds = args["litdata_dir"], args["mds_dir"]
try:
    import litdata
    from litdata import StreamingDataset as LitDataset
    from litdata.streaming.writer import BinaryWriter
    out["versions"]["litdata"] = litdata.__version__
    if fresh(lit):
        w = BinaryWriter(lit, chunk_size=args["per_shard"])
        for i, a in enumerate(samples()):
            w.add_item(i, {"text": a})
        w.done()
        w.merge()
        done(lit)
    def read_litdata():
        n = 0
        for item in LitDataset(lit, shuffle=False):
            n += item["text"].size
        return n
    readers["litdata"] = read_litdata
except Exception as e:
    out["errors"]["litdata"] = f"{type(e).__name__}: {e}"
try:
    import webdataset as wds
    out["versions"]["webdataset"] = wds.__version__ if hasattr(wds, "__version__") else "?"
    def read_wds_decode():
        n = 0
        for s in wds.WebDataset(args["paths"], shardshuffle=False).decode():
            n += s["text.npy"].size
        return n
    def read_wds_raw():
        n = 0
        for s in wds.WebDataset(args["paths"], shardshuffle=False):
            n += len(s["text.npy"])
        return args["tokens"] if n else 0
    readers["webdataset_decode"] = read_wds_decode
    readers["webdataset_raw"] = read_wds_raw
except Exception as e:
    out["errors"]["webdataset"] = f"{type(e).__name__}: {e}"
try:
    import streaming
    from streaming import MDSWriter, StreamingDataset as MDSDataset
    from streaming.base.util import clean_stale_shared_memory
    out["versions"]["mosaicml-streaming"] = streaming.__version__
    clean_stale_shared_memory()
    if fresh(mds):
        with MDSWriter(out=mds, columns={"text": "ndarray:uint16"}, size_limit=args["mds_size_limit"]) as w:
            for a in samples():
                w.write({"text": a})
        done(mds)
    def read_mds():
        ds = MDSDataset(local=mds, shuffle=False, batch_size=1)
        n = 0
        for item in ds:
            n += item["text"].size
        del ds
        gc.collect()
        return n
    def read_mds_get_item():
        ds = MDSDataset(local=mds, shuffle=False, batch_size=1)
        n = 0
        for i in range(ds.num_samples):
            n += ds.get_item(i)["text"].size
        del ds
        gc.collect()
        return n
    readers["mds"] = read_mds
    readers["mds_get_item"] = read_mds_get_item
except Exception as e:
    out["errors"]["mosaicml-streaming"] = f"{type(e).__name__}: {e}"

clock = getattr(time, args["clock"])
names = list(readers)
for n in names:
    out["runs"][n] = {"clock_s": [], "wall_s": [], "result": None}
for n in names:  # warm-up: page cache, imports, lazy state
    try:
        readers[n]()
    except Exception as e:
        out["errors"][n] = f"{type(e).__name__}: {e}"
names = [n for n in names if n not in out["errors"]]
# rounds on command: the parent interleaves them with its own (ours, peers, peers, ours, ...)
print("PEER-READY " + json.dumps(names), flush=True)
r = 0
for line in sys.stdin:
    if line.strip() != "round":
        break
    got = {}
    for n in (names if r % 2 == 0 else names[::-1]):
        if n in ("mds",) and r >= args["slow_repeats"]:
            continue
        t0, w0 = clock(), time.perf_counter()
        res = readers[n]()
        got[n] = (clock() - t0, time.perf_counter() - w0)
        out["runs"][n]["clock_s"].append(got[n][0])
        out["runs"][n]["wall_s"].append(got[n][1])
        out["runs"][n]["result"] = res
    print("PEER-ROUND " + json.dumps(got), flush=True)
    r += 1
out["runs"] = {k: v for k, v in out["runs"].items() if v["clock_s"]}
print("PEER-RESULT " + json.dumps(out))
'''


class Peers:
    """The peers' process (their own venv), kept alive so that its rounds interleave with ours:
    ``round()`` times every peer reader once (the order alternating), ``finish()`` returns
    ``{"runs", "versions", "errors"}``. Setup (writing their formats, a warm-up read) happens
    before the first round."""

    def __init__(self, python: Path, paths: list[str], work: Path, tokens: int, samples: int, shards: int,
                 clock: str, slow_repeats: int, stamp: list[str], shard_bytes: int) -> None:
        spec = {"paths": paths, "litdata_dir": str(work / "peers" / "litdata"), "mds_dir": str(work / "peers" / "mds"),
                "per_shard": -(-samples // shards), "mds_size_limit": int(shard_bytes * 1.02) + 4096,
                "tokens": tokens, "clock": clock, "slow_repeats": slow_repeats, "stamp": stamp}
        with tempfile.NamedTemporaryFile("w", suffix="_peers.py", delete=False) as f:
            f.write(PEER_SCRIPT)
            self.script = f.name
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([str(python), self.script, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(work))
        self.names = json.loads(self._expect("PEER-READY ") or "[]")

    def _expect(self, prefix: str) -> str | None:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
            if line.startswith("PEER-RESULT "):
                self._early = json.loads(line[len("PEER-RESULT "):])
                return None
        return None

    def round(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("round\n")
            self.proc.stdin.flush()
            self._expect("PEER-ROUND ")

    def finish(self) -> dict[str, Any]:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("done\n")
                self.proc.stdin.flush()
            got = self._expect("PEER-RESULT ")
            if got is None and getattr(self, "_early", None):
                return self._early
            if got is None:
                self.proc.wait(timeout=60)
                return {"skipped": f"peer run failed (exit {self.proc.returncode}): {self.proc.stderr.read()[-800:]}"}
            return json.loads(got)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.unlink(self.script)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=1500)
    ap.add_argument("--mds-repeats", type=int, default=2,
                    help="repeats of Mosaic's iterating reader (slow: about a millisecond a sample)")
    ap.add_argument("--peer-python", default=str(PEER_VENV / "bin" / "python"),
                    help="python of the peers' venv; 'none' skips the peers")
    bc.add_args(ap, repeats=5, clock=True, work=True)
    args = ap.parse_args(argv)

    root, manifest, paths, tokens = bc.text_dataset(args.samples, args.shards, args.min_len, args.max_len, TEXT_CODES,
                                                    args.work)
    load_before = bc.machine().get("loadavg_1m")

    fns = {"ours": lambda: read_ours(paths), "ours_mmap": lambda: read_ours(paths, use_mmap=True),
           "ours_iter_arrays": lambda: read_ours_iter_arrays(paths),
           "ours_with_json": lambda: read_ours(paths, with_json=True), "floor": lambda: read_floor(paths),
           "tarfile": lambda: read_tarfile(paths)}
    for fn in fns.values():  # warm-up: page cache, imports, header caches
        fn()
    peers = None
    peer: dict[str, Any] = {"skipped": "--peer-python none"}
    if args.peer_python != "none":
        if Path(args.peer_python).exists():
            peers = Peers(Path(args.peer_python), paths, root, tokens, args.samples, args.shards, args.clock,
                          args.mds_repeats, [s.sha256 for s in manifest.shards], max(s.bytes for s in manifest.shards))
        else:
            peer = {"skipped": f"no peer venv at {Path(args.peer_python).parent.parent} (see this module's docstring)"}
    # interleaved rounds: ours then the peers', then the peers' then ours, ... (one load for both)
    runs: dict[str, dict[str, Any]] = {n: {"clock_s": [], "wall_s": [], "result": None} for n in fns}
    names = list(fns)
    for r in range(args.repeats):
        if peers is not None and r % 2:
            peers.round()
        for n in (names if r % 2 == 0 else names[::-1]):
            dt, w, res = bc.timed(fns[n], args.clock)
            runs[n]["clock_s"].append(dt)
            runs[n]["wall_s"].append(w)
            runs[n]["result"] = res
        if peers is not None and not r % 2:
            peers.round()
    if peers is not None:
        peer = peers.finish()
    for name, r in runs.items():
        assert r["result"] == tokens, (name, r["result"], tokens)
    for name, r in peer.get("runs", {}).items():
        if r["result"] != tokens:
            peer.setdefault("errors", {})[name] = f"read {r['result']} tokens, expected {tokens}"
        else:
            runs[name] = r

    tps = {k: tokens / bc.median(v["clock_s"]) for k, v in runs.items()}
    wall = {k: tokens / bc.median(v["wall_s"]) for k, v in runs.items()}
    base = "litdata" if "litdata" in tps else "tarfile"
    ratio = tps["ours"] / tps[base]
    # per interleaved round: ours over the baseline in that round (median and range reported)
    per_round = [b / a for a, b in zip(runs["ours"]["clock_s"], runs[base]["clock_s"])]
    result = {
        "benchmark": "reader",
        "metric": "payload tokens/s",
        "clock": args.clock,
        "candidate": "index_shard + decode_sample per sample (json lazy, not read)",
        "baseline": "litdata.StreamingDataset iteration" if base == "litdata" else
                    "tarfile + numpy.load (LitData not measured: see peers)",
        "ratio": bc.rnd(ratio),
        "ratio_per_round": {"median": bc.rnd(bc.median(per_round)), "min": bc.rnd(min(per_round)),
                            "max": bc.rnd(max(per_round))},
        "goal": f"ours >= {GOAL} x LitData's reader",
        "goal_met": bool(base == "litdata" and bc.goal_met(ratio, GOAL)),
        "tokens_per_s": {k: bc.rnd(v) for k, v in sorted(tps.items(), key=lambda kv: -kv[1])},
        "ours_over": {k: bc.rnd(tps["ours"] / v) for k, v in tps.items() if k != "ours"},
        "iter_arrays_over": {k: bc.rnd(tps["ours_iter_arrays"] / v) for k, v in tps.items()
                             if k != "ours_iter_arrays"},
        "wall_tokens_per_s": {k: bc.rnd(v) for k, v in wall.items()},
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2) for k, v in runs.items()},
        "repeats": {k: len(v["clock_s"]) for k, v in runs.items()},
        "peers": {"versions": peer.get("versions", {}), "errors": peer.get("errors", {}),
                  **({"skipped": peer["skipped"]} if "skipped" in peer else {})},
        "data": {"samples": args.samples, "shards": args.shards, "tokens": tokens,
                 "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "loadavg_1m_before": load_before,
    }
    if not math.isfinite(result["ratio"]):
        result["ratio"] = 0.0
    return bc.emit(result)


if __name__ == "__main__":
    main()
