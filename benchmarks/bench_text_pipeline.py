"""Text pipeline throughput: the Beam text pipeline end to end vs raw SentencePiece encode, vs
datatrove doing the same job, on long and on short documents; its fixed cost; 2 vs 1 workers.

Candidate: ``run_text_pipeline`` on the DirectRunner (``--direct_running_mode=in_memory``, one
worker), JSONL files in, tokenized WebDataset shards + manifest out (read, normalise, filter,
batched encode, shard sizing, grouping, tar writing, sha256, manifest: everything).
Baseline: the minimal program that tokenizes the same files: read each file, ``json.loads``
each line, ``SentencePieceProcessor.encode(batch, out_type=int)`` in batches of the pipeline's
batch size (same model, same default SentencePiece threading, same process and cores). The
encode-only time (texts already in memory) is reported too, as the strictest reference.
Clock: ``process_time`` by default (CPU seconds of this process, all threads: the in_memory
runner and SentencePiece's encode threads run inside it); wall figures are reported too.

Measured in the same run, each interleaved with its reference and repeated (medians):

1. **Long documents** (``--mb``, 50–1,500 words): pipeline vs baseline tokens/s (``ratio``; goal
   ≥ 0.8×), in this process after a warm-up run (imports paid).
2. **datatrove** (the peer, 0.9.0, in its own virtualenv ``.bench-venv``, never in the project's):
   its ``JsonlReader`` → its ``DocumentTokenizer`` (batched encode, token file + index +
   metadata, default document shuffle), with our SentencePiece model behind the two tokenizer
   methods it calls, ``LocalPipelineExecutor`` with one task; and our pipeline, each in a fresh
   process (CPU time of the child from ``os.wait4``: imports, start-up, everything; peak RSS: the
   child's own ``VmHWM``), on the same files, on the long and on the short corpus; per-round
   ratios (median and range). Skipped, and reported so, when ``.bench-venv`` (or datatrove in it)
   is missing; to make it: ``python -m venv .bench-venv`` then ``.bench-venv/bin/pip install -c C
   torch==2.13.0 numpy==2.4.6`` and ``.bench-venv/bin/pip install -c C datatrove==0.9.0 orjson
   sentencepiece==0.2.3 litdata==0.2.76 mosaicml-streaming==0.10.0 webdataset==1.0.2`` with a
   constraints file C holding ``torch==2.13.0`` and ``numpy==2.4.6`` (so that nothing pulls a CUDA
   build; datatrove itself needs no torch). ``--baseline-rev REV`` adds our package as of git
   revision ``REV`` ("before") to every fresh-process comparison, interleaved, and checks that it
   writes the same shards; ``--ours-python`` runs ours from another virtualenv (e.g. the package
   without its test extras, whose GCS/BigQuery clients Beam imports when present).
3. **Short documents** (``--short-mb``, 20–60 words, ~300 bytes): pipeline vs baseline (goal ≥ 0.5×).
4. **Fixed cost**: the pipeline on a one-document input, in this process (graph construction,
   translation, runner start-up, manifest) and in a fresh process (plus Python and Beam imports),
   next to datatrove's one-document run in a fresh process. ``marginal`` is the throughput once
   the in-process fixed cost is paid (what a large corpus sees).
5. **Workers**: ``--direct_running_mode=multi_processing`` with 2 vs 1 worker processes on a long-
   document corpus of ``--workers-mb``, each run a fresh process: CPU seconds (the launcher and
   the worker processes it waited for) and wall seconds, per-round ratios, and whether both wrote
   the same shards (goal: no extra CPU from a second worker when no core is idle; the default
   number of workers is one per two cores).

The corpora are generated (random words of a Zipf-distributed synthetic vocabulary, JSONL) and
cached with the trained SentencePiece model (BPE, 16k) under ``$TRIMODAL_BENCH_DIR`` (default
``/tmp/trimodal-bench``).

    python benchmarks/bench_text_pipeline.py [--mb 4] [--short-mb 16] [--repeats 5] [--clock process_time]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards

GOAL = 0.8
SHORT_GOAL = 0.5
WORKERS_GOAL = 1.6
REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".bench-venv" / "bin" / "python"
LOCAL_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]

# Our pipeline in a fresh process (what ``trimodal pipeline text`` costs from the shell).
OURS_CHILD = r"""
import json, resource, sys, time
def _vm_hwm_mb():  # this process's peak RSS (ru_maxrss would carry the launcher's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t0 = time.process_time()
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
t_import = time.process_time() - t0
inputs, model, out, batch_size, beam_args = json.loads(sys.argv[1])
t1, w1 = time.process_time(), time.perf_counter()
m = run_text_pipeline(TextPipelineConfig(inputs=inputs, text_tokenizer=model, out=out, batch_size=batch_size,
                                         progress=False), beam_args)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"import_s": t_import, "run_s": time.process_time() - t1, "run_wall_s": time.perf_counter() - w1,
                  "tokens": int(m.tokens().get("text", 0)), "children_cpu_s": kids.ru_utime + kids.ru_stime,
                  "children_peak_rss_mb": kids.ru_maxrss / 1024, "peak_rss_mb": _vm_hwm_mb(),
                  "shards": sorted((s.name, s.sha256) for s in m.shards)}))
"""

# datatrove doing the same job, in its own virtualenv: its reader and its tokenizer step (batched
# encode, token file, index, metadata, document shuffle), with our SentencePiece model behind the
# two tokenizer methods DocumentTokenizer calls (it expects a Hugging Face ``tokenizers`` object).
PEER_CHILD = r"""
import json, os, sys, time
def _vm_hwm_mb():  # this process's peak RSS (ru_maxrss would carry the launcher's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t0 = time.process_time()
from functools import cached_property
import sentencepiece as spm
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.utils.logging import logger
t_import = time.process_time() - t0
folder, pattern, model, out, logs, batch_size = json.loads(sys.argv[1])
logger.remove()

class _Encoding:
    __slots__ = ("ids",)
    def __init__(self, ids):
        self.ids = ids

class SentencePieceTokenizer:
    def __init__(self, path):
        self.sp = spm.SentencePieceProcessor(model_file=path)
    def encode_batch(self, texts):
        return [_Encoding(ids) for ids in self.sp.encode(texts, out_type=int)]
    def get_vocab_size(self):
        return self.sp.get_piece_size()

class SentencePieceDocumentTokenizer(DocumentTokenizer):
    @cached_property
    def tokenizer(self):
        return SentencePieceTokenizer(self.tokenizer_name_or_path)

t1, w1 = time.process_time(), time.perf_counter()
LocalPipelineExecutor(pipeline=[JsonlReader(folder, glob_pattern=pattern),
                                SentencePieceDocumentTokenizer(out, tokenizer_name_or_path=model, batch_size=batch_size)],
                      tasks=1, workers=1, logging_dir=logs, skip_completed=False).run()
tokens = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".ds")) // 2
print(json.dumps({"import_s": t_import, "run_s": time.process_time() - t1, "run_wall_s": time.perf_counter() - w1,
                  "tokens": tokens, "peak_rss_mb": _vm_hwm_mb()}))
"""


def make_corpus(folder: Path, total_mb: float, n_files: int = 4, seed: int = 0,
                min_words: int = 50, max_words: int = 1500) -> list[str]:
    """JSONL files of ``{"text": ...}`` documents, ``total_mb`` MB in all (cached by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"corpus-{i:02d}.jsonl" for i in range(n_files)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    n_vocab = 20_000
    lengths = rng.integers(2, 11, n_vocab)
    vocab = np.array(["".join(rng.choice(letters, n)) for n in lengths])
    p = 1.0 / np.arange(1, n_vocab + 1) ** 1.1  # Zipf-like word frequencies
    p /= p.sum()
    budget = int(total_mb * 2**20 / n_files)
    for path in paths:
        lines, size = [], 0
        while size < budget:
            n = int(rng.integers(min_words, max_words + 1))
            words = vocab[rng.choice(n_vocab, n, p=p)]
            stops = rng.random(n) < 0.08  # sentence ends
            text = " ".join(w + "." if s else w for w, s in zip(words.tolist(), stops.tolist()))
            line = json.dumps({"text": text})
            lines.append(line)
            size += len(line) + 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(path)
    return [str(p) for p in paths]


def read_texts(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    texts.append(json.loads(line)["text"])
    return texts


def make_model(folder: Path, corpus: list[str], vocab_size: int, train_mb: float = 2.0) -> str:
    """A BPE SentencePiece model trained once on (the first ``train_mb`` MB of) the corpus."""
    from trimodal.tokenizers.text import train_text_tokenizer

    path = folder / f"sp-{vocab_size}.model"
    if not path.exists():
        texts, size = [], 0
        for t in read_texts(corpus):
            texts.append(t)
            size += len(t)
            if size > train_mb * 2**20:
                break
        train_text_tokenizer(texts, vocab_size, str(path))
    return str(path)


def run_pipeline(paths: list[str], model: str, out: str, batch_size: int, beam_args: list[str] | None = None,
                 threads: int | None = None) -> int:
    """``run_text_pipeline``; with ``threads``, the same job with that many encode threads per worker."""
    from trimodal.pipelines import common
    from trimodal.pipelines.text import TextPipelineConfig, build_text_pipeline, run_text_pipeline
    from trimodal.tokenizers.registry import load_text_tokenizer

    cfg = TextPipelineConfig(inputs=paths, text_tokenizer=model, out=out, batch_size=batch_size, progress=False)
    if threads is None:
        manifest = run_text_pipeline(cfg, beam_args or LOCAL_ARGS)
    else:
        tok = load_text_tokenizer(model)
        manifest = common.run(lambda p, run_id: build_text_pipeline(p, cfg, paths, tok, run_id, threads=threads), out,
                              beam_args or LOCAL_ARGS, show_progress=False)
    return int(manifest.tokens().get("text", 0))


def fresh_process(python: str, script: str, payload: list[Any], out: str, pythonpath: str | None = None) -> dict[str, Any]:
    """Run ``script`` in a fresh ``python`` process: its CPU seconds (user + system, from
    ``os.wait4``: its own and those of the worker processes it waited for), wall seconds, peak
    RSS, and what it printed last (JSON: import_s, run_s, tokens); ``pythonpath`` first on its
    ``PYTHONPATH`` (``--baseline-rev``: the package as of another revision)."""
    shutil.rmtree(out, ignore_errors=True)
    env = None
    if pythonpath:
        env = dict(os.environ)
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    info, usage, wall = bc.run_child([python, "-c", script, json.dumps(payload)], env=env)
    # peak_rss_mb: the child's own VmHWM (it prints it), not ru_maxrss: Linux keeps the launcher's
    # high-water mark across the exec
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, **info}


def per_round(num: list[float], den: list[float], scale: float = 1.0) -> dict[str, float]:
    """``scale * num[r] / den[r]`` of each interleaved round: median and range (a slow moment of
    the shared machine hits both sides of a round)."""
    r = [scale * a / b for a, b in zip(num, den)]
    return {"median": bc.rnd(bc.median(r)), "min": bc.rnd(min(r)), "max": bc.rnd(max(r)), "rounds": [bc.rnd(x, 3) for x in r]}


def peer_available(python: Path) -> str | None:
    """None when datatrove can run from ``python``, else why not."""
    if not python.exists():
        return f"no peer virtualenv ({python} missing)"
    probe = subprocess.run([str(python), "-c", "import datatrove, sentencepiece, orjson"], capture_output=True)
    if probe.returncode != 0:
        return f"datatrove not importable from {python}: {probe.stderr.decode(errors='replace')[-300:]}"
    return None


def raw_encode_files(paths: list[str], sp, batch_size: int) -> int:
    """Read + parse + encode, the least a program tokenizing these files has to do."""
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        for i in range(0, len(texts), batch_size):
            n += sum(len(ids) for ids in sp.encode(texts[i : i + batch_size], out_type=int))
    return n


def raw_encode_texts(texts: list[str], sp, batch_size: int) -> int:
    n = 0
    for i in range(0, len(texts), batch_size):
        n += sum(len(ids) for ids in sp.encode(texts[i : i + batch_size], out_type=int))
    return n


def _cold_summary(runs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    r = runs[name]["results"]
    cpu = [x["cpu_s"] for x in r]
    return {"cpu_s": bc.rnd(bc.median(cpu)), "cpu_s_range": [bc.rnd(min(cpu)), bc.rnd(max(cpu))],
            "wall_s": bc.rnd(bc.median([x["wall_s"] for x in r])),
            "import_s": bc.rnd(bc.median([x["import_s"] for x in r])), "run_s": bc.rnd(bc.median([x["run_s"] for x in r])),
            "peak_rss_mb": bc.rnd(bc.median([x["peak_rss_mb"] for x in r])),
            "peak_rss_mb_range": [bc.rnd(min(x["peak_rss_mb"] for x in r)), bc.rnd(max(x["peak_rss_mb"] for x in r))],
            "tokens": r[-1]["tokens"]}


def cold_compare(runs: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """Per-round tokens per CPU-second of ``a`` over ``b`` (fresh processes)."""
    ra, rb = runs[a]["results"], runs[b]["results"]
    return per_round([x["cpu_s"] for x in rb], [x["cpu_s"] for x in ra], ra[-1]["tokens"] / max(rb[-1]["tokens"], 1))


def _collect(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    """``bc.interleave`` for functions that measure themselves (fresh processes): every result kept."""
    out: dict[str, dict[str, Any]] = {n: {"results": []} for n in fns}
    for r in range(repeats):
        for n in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            out[n]["results"].append(fns[n]())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="long-document corpus size in MB (JSONL)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--min-words", type=int, default=50)
    ap.add_argument("--max-words", type=int, default=1500)
    ap.add_argument("--short-mb", type=float, default=None, help="short-document corpus size (default 4 x --mb)")
    ap.add_argument("--short-words", type=int, nargs=2, default=[20, 60], help="words per short document (min max)")
    ap.add_argument("--workers-mb", type=float, default=None, help="corpus for 2 vs 1 workers (default 4 x --mb)")
    ap.add_argument("--workers-repeats", type=int, default=None, help="default: --repeats, at most 3")
    ap.add_argument("--batch-size", type=int, default=256, help="pipeline batch size (the baseline uses the same)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each")
    ap.add_argument("--no-one-doc", action="store_true", help="skip the one-document runs (fixed-cost estimate)")
    ap.add_argument("--no-short", action="store_true", help="skip the short-document corpus")
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove and the fresh-process runs")
    ap.add_argument("--no-workers", action="store_true", help="skip 2 vs 1 multi_processing workers")
    ap.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the virtualenv holding datatrove")
    ap.add_argument("--ours-python", default=sys.executable,
                    help="python for our fresh-process runs (e.g. a virtualenv with the package and no extras)")
    ap.add_argument("--baseline-rev", default=None,
                    help="also run, in fresh processes interleaved with ours, the package as of this git revision "
                         "('before'), on every fresh-process corpus")
    bc.add_args(ap, repeats=5, clock=True, work=True)
    args = ap.parse_args(argv)
    if args.workers_repeats is None:
        args.workers_repeats = min(args.repeats, 3)

    import sentencepiece as spm

    tag = f"text-{args.mb:g}mb-{args.files}f-{args.min_words}-{args.max_words}w"
    work = bc.work_dir(tag, args.work)
    paths = make_corpus(work / "corpus", args.mb, args.files, min_words=args.min_words, max_words=args.max_words)
    model = make_model(work, paths, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=model)
    texts = read_texts(paths)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    # One document: what the pipeline costs with (almost) no data (graph construction,
    # translation, runner start-up, manifest). Subtracted, it gives the marginal throughput.
    tiny = work / "one-doc" / "one-doc.jsonl"
    tiny.parent.mkdir(exist_ok=True)
    with open(paths[0], "rb") as f:
        tiny.write_bytes(f.readline())

    # 1. long documents, in this process
    if not args.no_warmup:
        run_pipeline(paths, model, str(out), args.batch_size)  # warm-up: imports, Beam, page cache
        raw_encode_files(paths, sp, args.batch_size)
    fns = {
        "baseline": lambda: raw_encode_files(paths, sp, args.batch_size),
        "encode_only": lambda: raw_encode_texts(texts, sp, args.batch_size),
        "pipeline": lambda: run_pipeline(paths, model, str(out), args.batch_size),
    }
    if not args.no_one_doc:
        fns["pipeline_one_doc"] = lambda: run_pipeline([str(tiny)], model, str(out) + "-one", args.batch_size)
    runs = bc.interleave(fns, args.repeats, args.clock)
    tokens = runs["pipeline"]["result"]
    base_tokens = runs["baseline"]["result"]
    one_doc = runs.pop("pipeline_one_doc", None)
    tps = {k: tokens / bc.median(v["clock_s"]) if k == "pipeline" else base_tokens / bc.median(v["clock_s"])
           for k, v in runs.items()}
    wall_tps = {k: (tokens if k == "pipeline" else base_tokens) / bc.median(v["wall_s"]) for k, v in runs.items()}
    ratio = tps["pipeline"] / tps["baseline"]
    pipe_s = bc.median(runs["pipeline"]["clock_s"])
    fixed = bc.median(one_doc["clock_s"]) if one_doc else None
    marginal = (tokens - one_doc["result"]) / max(pipe_s - fixed, 1e-9) if one_doc else None
    before_path = None
    if args.baseline_rev:
        import tempfile

        from bench_pipeline_memory import package_at

        before_path = str(package_at(args.baseline_rev, Path(tempfile.mkdtemp(prefix="bench-text-rev-"))))
    result: dict[str, Any] = {
        "ratio_per_round": per_round(runs["baseline"]["clock_s"], runs["pipeline"]["clock_s"], tokens / base_tokens),
        **bc.headline("text_pipeline", "tokens/s", args.clock,
                      "run_text_pipeline, DirectRunner in_memory, 1 worker, JSONL -> shards + manifest",
                      "read JSONL + json.loads + SentencePiece encode (batches of --batch-size)", ratio, GOAL),
        "pipeline_tokens_per_s": bc.rnd(tps["pipeline"]),
        "baseline_tokens_per_s": bc.rnd(tps["baseline"]),
        "pipeline_s": bc.rnd(pipe_s),
        "baseline_s": bc.rnd(bc.median(runs["baseline"]["clock_s"])),
        "pipeline_one_doc_s": bc.rnd(fixed) if one_doc else None,
        "pipeline_marginal_tokens_per_s": bc.rnd(marginal) if one_doc else None,
        "marginal_ratio": bc.rnd(marginal / tps["baseline"]) if one_doc else None,
        "encode_only_tokens_per_s": bc.rnd(tps["encode_only"]),
        "ratio_vs_encode_only": bc.rnd(tps["pipeline"] / tps["encode_only"]),
        "wall": {
            "pipeline_tokens_per_s": bc.rnd(wall_tps["pipeline"]),
            "baseline_tokens_per_s": bc.rnd(wall_tps["baseline"]),
            "encode_only_tokens_per_s": bc.rnd(wall_tps["encode_only"]),
            "ratio": bc.rnd(wall_tps["pipeline"] / wall_tps["baseline"]),
        },
        "spread": {k: bc.rnd(bc.spread(v["clock_s"]), 2)
                   for k, v in {**runs, **({"pipeline_one_doc": one_doc} if one_doc else {})}.items()},
        "note": "pipeline_one_doc_s: the pipeline on a one-document input (graph construction, translation, "
                "runner start-up, manifest); marginal = tokens / (pipeline_s - pipeline_one_doc_s), the "
                "throughput once the fixed cost is paid",
        "same_tokens": tokens == base_tokens,
        "corpus": {"files": len(paths), "bytes": sum(Path(p).stat().st_size for p in paths), "documents": len(texts),
                   "tokens": tokens, "sp_vocab": sp.get_piece_size()},
    }

    # 2. datatrove doing the same job, and ours (and ours as of --baseline-rev), each in a fresh process
    why_not = None if args.no_peer else peer_available(Path(args.peer_python))

    def fresh_compare(cpaths: list[str], folder: Path, one_doc: bool, baseline_tps: float) -> dict[str, Any]:
        def ours(inputs: list[str], dst: str, path: str | None = None):
            return lambda: fresh_process(args.ours_python, OURS_CHILD, [inputs, model, dst, args.batch_size, LOCAL_ARGS],
                                         dst, pythonpath=path)

        def peer(src: str, pattern: str, dst: str):
            return lambda: fresh_process(args.peer_python, PEER_CHILD,
                                         [src, pattern, model, dst, dst + "-logs", args.batch_size], dst)

        cold: dict[str, Any] = {"ours": ours(cpaths, str(folder / "cold"))}
        if before_path:
            cold["before"] = ours(cpaths, str(folder / "cold-before"), before_path)
        if why_not is None:
            cold["datatrove"] = peer(str(Path(cpaths[0]).parent), "corpus-*.jsonl", str(folder / "datatrove"))
        if one_doc:
            cold["ours_one_doc"] = ours([str(tiny)], str(folder / "cold1"))
            if before_path:
                cold["before_one_doc"] = ours([str(tiny)], str(folder / "cold1-before"), before_path)
            if why_not is None:
                cold["datatrove_one_doc"] = peer(str(tiny.parent), tiny.name, str(folder / "datatrove-one"))
        crun = _collect(cold, args.repeats)
        res: dict[str, Any] = {name: _cold_summary(crun, name) for name in cold}
        o = res["ours"]
        res["ours_tokens_per_cpu_s"] = bc.rnd(o["tokens"] / o["cpu_s"])
        res["ours_vs_baseline"] = bc.rnd(o["tokens"] / o["cpu_s"] / baseline_tps)
        res["ours_vs_baseline_per_round"] = per_round([1.0] * args.repeats, [x["cpu_s"] for x in crun["ours"]["results"]],
                                                      o["tokens"] / baseline_tps)
        if before_path:
            res["ours_vs_before_per_round"] = cold_compare(crun, "ours", "before")
            res["same_shards_as_before"] = (crun["ours"]["results"][-1]["shards"]
                                            == crun["before"]["results"][-1]["shards"])
        if why_not is None:
            dt = res["datatrove"]
            res["datatrove_vs_baseline"] = bc.rnd(dt["tokens"] / dt["cpu_s"] / baseline_tps)
            res["ratio_vs_datatrove"] = cold_compare(crun, "ours", "datatrove")
            res["same_tokens_as_datatrove"] = dt["tokens"] == o["tokens"]
            res["datatrove_job"] = ("JsonlReader -> DocumentTokenizer (our SentencePiece model, batch size as ours, "
                                    "document shuffle on: its default), LocalPipelineExecutor tasks=1 workers=1")
        else:
            res["datatrove"] = {"skipped": why_not or "--no-peer"}
        for name in cold:
            shutil.rmtree(folder / name, ignore_errors=True)
        for sub in ("cold", "cold-before", "cold1", "cold1-before", "datatrove", "datatrove-logs", "datatrove-one",
                    "datatrove-one-logs"):
            shutil.rmtree(folder / sub, ignore_errors=True)
        return res

    if args.no_peer and not before_path:
        result["datatrove"] = {"skipped": "--no-peer"}
    else:
        result["fresh_process"] = fresh_compare(paths, work, not args.no_one_doc, tps["baseline"])

    # 3. short documents, in this process
    if not args.no_short:
        short_mb = args.short_mb if args.short_mb is not None else 4 * args.mb
        lo, hi = args.short_words
        swork = bc.work_dir(f"text-short-{short_mb:g}mb-{args.files}f-{lo}-{hi}w", args.work)
        spaths = make_corpus(swork / "corpus", short_mb, args.files, min_words=lo, max_words=hi)  # same vocabulary
        sout = swork / "out"
        if not args.no_warmup:
            run_pipeline(spaths, model, str(sout), args.batch_size)
        sruns = bc.interleave({"baseline": lambda: raw_encode_files(spaths, sp, args.batch_size),
                               "pipeline": lambda: run_pipeline(spaths, model, str(sout), args.batch_size)},
                              args.repeats, args.clock)
        st, sb = sruns["pipeline"]["result"], sruns["baseline"]["result"]
        s_ratio = (st / bc.median(sruns["pipeline"]["clock_s"])) / (sb / bc.median(sruns["baseline"]["clock_s"]))
        s_wall = (st / bc.median(sruns["pipeline"]["wall_s"])) / (sb / bc.median(sruns["baseline"]["wall_s"]))
        ndocs = sum(1 for p in spaths for line in open(p, "rb") if line.strip())
        result["short_docs"] = {
            "ratio": bc.rnd(s_ratio), "wall_ratio": bc.rnd(s_wall), "goal": f">= {SHORT_GOAL}",
            "goal_met": bc.goal_met(s_ratio, SHORT_GOAL),
            "pipeline_s": bc.rnd(bc.median(sruns["pipeline"]["clock_s"])),
            "baseline_s": bc.rnd(bc.median(sruns["baseline"]["clock_s"])),
            "pipeline_us_per_doc": bc.rnd(bc.median(sruns["pipeline"]["clock_s"]) / ndocs * 1e6),
            "baseline_us_per_doc": bc.rnd(bc.median(sruns["baseline"]["clock_s"]) / ndocs * 1e6),
            "ratio_per_round": per_round(sruns["baseline"]["clock_s"], sruns["pipeline"]["clock_s"], st / sb),
            "same_tokens": st == sb,
            "corpus": {"bytes": sum(Path(p).stat().st_size for p in spaths), "documents": ndocs, "tokens": st,
                       "bytes_per_doc": bc.rnd(sum(Path(p).stat().st_size for p in spaths) / ndocs),
                       "words_per_doc": [lo, hi]},
        }
        shutil.rmtree(sout, ignore_errors=True)
        if not args.no_peer or before_path:
            result["short_docs"]["fresh_process"] = fresh_compare(
                spaths, swork, False, sb / bc.median(sruns["baseline"]["clock_s"]))

    # 4. the fixed cost, gathered
    if not args.no_one_doc:
        fc: dict[str, Any] = {"in_process_cpu_s": bc.rnd(fixed)}
        fp = result.get("fresh_process", {})
        for name in ("ours_one_doc", "before_one_doc", "datatrove_one_doc"):
            if name in fp:
                fc[name] = {k: fp[name][k] for k in ("cpu_s", "cpu_s_range", "import_s", "wall_s", "peak_rss_mb")}
        if "ours_one_doc" in fp and "datatrove_one_doc" in fp:
            fc["goal"] = "<= datatrove's one-document job (fresh-process CPU-s)"
            fc["goal_met"] = fp["ours_one_doc"]["cpu_s"] <= fp["datatrove_one_doc"]["cpu_s"]
        result["fixed_cost"] = fc

    # 5. 2 vs 1 worker processes (wall clock), on a larger long-document corpus: default encode
    #    threads (1 worker: SentencePiece on every core; 2 workers: the cores shared out), and
    #    one encode thread per worker (the pipeline's own scaling)
    if args.no_workers:
        result["workers"] = {"skipped": "--no-workers"}
    else:
        from trimodal.pipelines.common import default_local_workers

        workers_mb = args.workers_mb if args.workers_mb is not None else 4 * args.mb
        wwork = bc.work_dir(f"text-{workers_mb:g}mb-{args.files}f-{args.min_words}-{args.max_words}w", args.work)
        wpaths = make_corpus(wwork / "corpus", workers_mb, args.files, min_words=args.min_words, max_words=args.max_words)

        def mp(n: int):
            beam_args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={n}"]
            dst = str(wwork / f"out-mp{n}")
            return lambda: fresh_process(sys.executable, OURS_CHILD, [wpaths, model, dst, args.batch_size, beam_args], dst)

        wruns = _collect({"workers_1": mp(1), "workers_2": mp(2)}, args.workers_repeats)
        res = {k: [x for x in v["results"]] for k, v in wruns.items()}
        cpu = {k: [x["cpu_s"] for x in v] for k, v in res.items()}
        wall = {k: [x["wall_s"] for x in v] for k, v in res.items()}
        result["workers"] = {
            "cpu_s": {k: bc.rnd(bc.median(v)) for k, v in cpu.items()},
            "cpu_s_range": {k: [bc.rnd(min(v)), bc.rnd(max(v))] for k, v in cpu.items()},
            "wall_s": {k: bc.rnd(bc.median(v)) for k, v in wall.items()},
            "wall_s_range": {k: [bc.rnd(min(v)), bc.rnd(max(v))] for k, v in wall.items()},
            "cpu_2_over_1_per_round": per_round(cpu["workers_2"], cpu["workers_1"]),
            "wall_speedup_2_vs_1_per_round": per_round(wall["workers_1"], wall["workers_2"]),
            "default_workers_here": default_local_workers(os.cpu_count()),
            "goal": "no extra CPU from a second worker when no core is idle (the default: one worker per two cores)",
            "identical_shards": res["workers_1"][-1]["shards"] == res["workers_2"][-1]["shards"],
            "note": "fresh processes, multi_processing DirectRunner, default encode threads (2 workers: one each); "
                    "CPU from os.wait4 (the launcher and the worker processes it waited for)",
            "corpus": {"bytes": sum(Path(p).stat().st_size for p in wpaths), "files": len(wpaths)},
            "repeats": args.workers_repeats,
        }
        for n in (1, 2):
            shutil.rmtree(wwork / f"out-mp{n}", ignore_errors=True)

    result["repeats"] = args.repeats
    result["sentencepiece"] = spm.__version__
    import apache_beam

    result["apache_beam"] = apache_beam.__version__
    for suffix in ("", "-one", "-cold", "-cold1"):
        shutil.rmtree(str(out) + suffix, ignore_errors=True)
    return bc.emit(result)


if __name__ == "__main__":
    main()
