"""Pipeline scaling on this machine: text pipeline on 1 vs 2 worker processes, and mix rows/s.

    python benchmarks/bench_pipeline_scaling.py [--docs 20000] [--repeats 3] [--seq-len 2048]

Makes a synthetic corpus (several JSONL files, so that files spread over workers) and a small
SentencePiece model (nothing downloads; cached under ``$TRIMODAL_BENCH_DIR``, default
``/tmp/trimodal-bench``), then runs in one process:

1. ``trimodal pipeline text`` on the DirectRunner with ``--direct_running_mode=multi_processing``
   and ``--direct_num_workers`` 1 and 2, interleaved ``--repeats`` times (medians of wall time:
   the work happens in worker processes), on the same corpus and config; reports documents/s,
   tokens/s, the 2-vs-1 speed-up and whether both wrote identical shards.
2. ``trimodal pipeline mix`` over that text dataset plus a synthetic image-text dataset (1,024
   codes per image, as at 256 px) at ``--seq-len``; reports rows/s and tokens/s (in-memory
   DirectRunner, and multi_processing with 2 workers; interleaved, medians).

Wall times include Beam's pipeline start-up (seconds on the DirectRunner), so throughput grows
with ``--docs``. Prints one JSON line (``benchmarks/bench_common.py``'s ``emit``: machine included).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

WORDS = (
    "the model reads a corpus of documents and learns to fill masked tokens with words that fit their "
    "context while images and audio share one sequence with captions and transcripts across many shards"
).split()


def make_corpus(folder: Path, n_docs: int, n_files: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400))) for _ in range(n_docs)]
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        (folder / f"part-{f:03d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[f::n_files]))
    return docs


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared timing, machine description, synthetic shards


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--images", type=int, default=4_000)
    ap.add_argument("--workdir", default=None, help="cache folder for the generated inputs (default $TRIMODAL_BENCH_DIR/pipeline_scaling)")
    args = ap.parse_args(argv)

    from trimodal.pipelines.mix import MixPipelineConfig, run_mix_pipeline
    from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
    from trimodal.tokenizers.text import TextTokenizer, train_text_tokenizer

    work = Path(args.workdir) if args.workdir else bc.work_dir(f"pipeline_scaling/{args.docs}-{args.files}")
    corpus, model = work / "corpus", work / "text.model"
    if not model.exists():
        docs = make_corpus(corpus, args.docs, args.files)
        train_text_tokenizer(docs[:5000], 2000, str(model))
    tok = TextTokenizer.from_path(str(model))
    inputs = [str(p) for p in sorted(corpus.glob("*.jsonl"))]

    # 1. text pipeline, 1 vs 2 worker processes, interleaved, wall clock (the work runs in the
    #    worker processes, so this process's CPU time would not see it)
    def text_run(workers: int):
        out = work / f"text-{workers}"
        cfg = TextPipelineConfig(inputs=inputs, text_tokenizer=str(model), out=str(out), target_shard_bytes=8 * 2**20)
        beam_args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        return lambda: run_text_pipeline(cfg, beam_args)

    runs = bc.interleave({"workers_1": text_run(1), "workers_2": text_run(2)}, args.repeats, clock="perf_counter")
    m1, m2 = runs["workers_1"]["result"], runs["workers_2"]["result"]
    tokens = m1.tokens()["text"]
    text: dict = {
        "documents": m1.counts["written"],
        "tokens": tokens,
        "identical_output_1_vs_2_workers": [(s.name, s.sha256) for s in m1.shards] == [(s.name, s.sha256) for s in m2.shards],
    }
    for name, r in runs.items():
        wall = bc.median(r["wall_s"])
        text[name] = {"wall_s_median": bc.rnd(wall), "wall_s": [bc.rnd(x) for x in r["wall_s"]], "spread": bc.rnd(bc.spread(r["wall_s"])),
                      "docs_per_s": bc.rnd(m1.counts["written"] / wall), "tokens_per_s": bc.rnd(tokens / wall)}
    text["speedup_2_vs_1"] = bc.rnd(bc.median(runs["workers_1"]["wall_s"]) / bc.median(runs["workers_2"]["wall_s"]))

    # 2. mix: that text dataset + a synthetic image-text one, packed to seq_len
    images = work / f"images-{args.images}"
    if not (images / "manifest.json").exists():
        bc.make_image_shards(images, samples=args.images, grid=32, caption=(5, 60), text_codes=tok.info().vocab_size,
                             text_info=tok.info())

    def mix_run(label: str, beam_args: list[str]):
        cfg = MixPipelineConfig(inputs=[str(work / "text-1"), str(images)], weights=[1, 1], seq_len=args.seq_len,
                                out=str(work / f"mix-{label}"), seed=0, target_shard_bytes=32 * 2**20)
        return lambda: run_mix_pipeline(cfg, beam_args)

    mixes = bc.interleave(
        {"in_memory": mix_run("in_memory", ["--runner=DirectRunner"]),
         "multi_processing_2": mix_run("mp2", ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                                               "--direct_num_workers=2"])},
        args.repeats, clock="perf_counter")
    mix: dict = {"seq_len": args.seq_len}
    for name, r in mixes.items():
        m = r["result"]
        rows, wall = m.counts["written"], bc.median(r["wall_s"])
        mix[name] = {"rows": rows, "wall_s_median": bc.rnd(wall), "wall_s": [bc.rnd(x) for x in r["wall_s"]],
                     "rows_per_s": bc.rnd(rows / wall), "tokens_per_s": bc.rnd(rows * args.seq_len / wall),
                     "input_samples_read": m.counts["read"], "rows_per_task": m.counts["rows_per_task"],
                     "stopped": m.counts["stopped"]}
    bc.emit({"bench": "pipeline_scaling", "clock": "perf_counter (wall)", "repeats": args.repeats,
             "text_pipeline": text, "mix_pipeline": mix})
    return 0


if __name__ == "__main__":
    sys.exit(main())
