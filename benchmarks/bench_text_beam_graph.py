"""CPU seconds of the text job's Beam graph (the Dataflow / portable-runner form) run on the
in_memory DirectRunner: what Beam's elements between the step and the sink cost.

    python benchmarks/bench_text_beam_graph.py CORPUS_DIR SP_MODEL [ROUNDS]

Prints one JSON line: the CPU seconds of each timed run (after one untimed warm-up) and their
median. Compare revisions by running it on each, interleaved, on the same machine.
"""

from __future__ import annotations

import glob
import json
import shutil
import statistics
import sys
import tempfile
import time

from trimodal.pipelines import common, text
from trimodal.tokenizers.registry import load_text_tokenizer


def main() -> None:
    corpus, model = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    inputs = sorted(glob.glob(corpus + "/*.jsonl"))
    tok = load_text_tokenizer(model)
    times = []
    for r in range(rounds + 1):
        out = tempfile.mkdtemp(prefix="bench-beam-graph-")
        cfg = text.TextPipelineConfig(inputs=inputs, text_tokenizer=model, out=out, progress=False)
        t = time.process_time()
        common.run(lambda p, run_id: text.build_text_pipeline(p, cfg, inputs, tok, run_id, graph="beam"), out,
                   ["--runner=DirectRunner"], show_progress=False)
        if r:  # the first run is a warm-up
            times.append(time.process_time() - t)
        shutil.rmtree(out)
    print(json.dumps({"beam_graph_cpu_s": times, "median": statistics.median(times),
                      "spread": [min(times), max(times)]}))


if __name__ == "__main__":
    main()
