"""Audio-text pipeline throughput: seconds of audio tokenized per second inside Beam (DirectRunner)
against the same codec in a plain batched loop over the same clips, on the same cores.

Both sides do the same work per clip: read the file, decode + resample (``load_audio``),
length-bucketed batched codec encoding (DAC or Higgs) (``encode_clips``, same bucket width and batch size); the
pipeline additionally tokenizes transcripts, counts outcomes and writes shards + manifest. The
plain loop also loads the codec, as the pipeline must. Each side runs ``--repeats`` times,
alternating, after one warm-up encode; ``ratio`` is the median of the per-round ratios (min and max
beside it; the machine may be shared). Prints one JSON line; ``ratio`` = pipeline throughput / loop throughput (goal >= 0.8).

    python benchmarks/bench_audio_pipeline.py [--seconds 60] [--codec tiny|small|16khz|higgs_tiny|higgs] [--device cpu]

DAC codecs: ``tiny`` is the tests' codec (encoder_dim 16), ``small`` encoder_dim 32, ``16khz`` the
released 16 kHz architecture (random weights; ~3 s of CPU per second of audio on 2 cores).
Higgs Audio v2 folders: ``higgs_tiny`` is the tests' golden folder
(``tests/data/reference/higgs/higgs_tiny_hf``), ``higgs`` the released architecture (HuBERT-base +
the 24 kHz acoustic encoder, 200 M parameters) with random weights written to a local folder.
Run from any folder; nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared benchmark helpers

CODECS = {
    "tiny": dict(encoder_dim=16, decoder_dim=64),
    "small": dict(encoder_dim=32, decoder_dim=64),
    "16khz": dict(encoder_dim=64, decoder_dim=1536),
}
HIGGS = ("higgs_tiny", "higgs")
HIGGS_REF = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "higgs"


def make_codec(name: str, work: Path) -> str:
    """A local codec path of the named kind (DAC weight file or Higgs folder), random weights."""
    if name == "higgs_tiny":
        return str(HIGGS_REF / "higgs_tiny_hf")
    if name == "higgs":
        from trimodal.tokenizers.higgs import build_higgs_model, save_higgs

        folder = work / "higgs_random"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(0)
            config = json.loads((HIGGS_REF / "higgs_released_state_dict.json").read_text())["config"]
            save_higgs(build_higgs_model(config), folder, config)
        return str(folder)
    from trimodal.tokenizers.dac import DAC, DACConfig, save_dac

    torch.manual_seed(0)
    cfg = DACConfig(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12, codebook_size=1024,
                    codebook_dim=8, sample_rate=16000, **CODECS[name])
    path = work / f"dac_{name}.pth"
    save_dac(DAC(cfg), str(path))
    return str(path)


def make_corpus(folder: Path, total_seconds: float, seed: int = 0) -> tuple[Path, list[Path], float]:
    """Clips of 0.5-6 s at 16 and 22.05 kHz (some resampling, as real corpora need) + manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines, paths, made, i = [], [], 0.0, 0
    words = "speech audio codec tokens pipeline bucket batch frame model words".split()
    while made < total_seconds:
        seconds = float(rng.uniform(0.5, 6.0))
        sr = 16000 if i % 3 else 22050
        t = np.arange(int(seconds * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:04d}.flac"
        sf.write(path, x.astype(np.float32), sr, format="FLAC")
        text = " ".join(rng.choice(words, size=int(rng.integers(3, 15))))
        lines.append(json.dumps({"audio_filepath": path.name, "text": text, "duration": round(seconds, 3)}))
        paths.append(path)
        made += len(t) / sr
        i += 1
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, paths, made


def plain_loop(paths: list[Path], codec: str, device: str, batch_size: int, multiple: int) -> tuple[float, float, int]:
    """Load codec, read + decode every clip, encode per bucket in batches of ``batch_size``.
    Returns (wall seconds, of which model encode seconds, frames)."""
    from trimodal.pipelines.audio_text import bucket_end, encode_clips
    from trimodal.tokenizers.audio_io import load_audio
    from trimodal.tokenizers.registry import load_audio_tokenizer

    t0 = time.perf_counter()
    tok = load_audio_tokenizer(codec, n_keep=4, device=device)
    buckets: dict[int, list[np.ndarray]] = defaultdict(list)
    encode_s, frames = 0.0, 0

    def run(batch):
        nonlocal encode_s, frames
        t = time.perf_counter()
        codes = encode_clips(tok, batch, multiple)
        encode_s += time.perf_counter() - t
        frames += sum(c.shape[1] for c in codes)

    for p in paths:
        wav = load_audio(p.read_bytes(), tok.sample_rate, 30.0)
        end = bucket_end(len(wav), multiple)
        buckets[end].append(wav)
        if len(buckets[end]) == batch_size:
            run(buckets.pop(end))
    for end in sorted(buckets):
        run(buckets[end])
    return time.perf_counter() - t0, encode_s, frames


def beam_pipeline(manifest: Path, text_model: str, codec: str, out: Path, device: str, batch_size: int,
                  bucket_seconds: float) -> tuple[float, int, dict[str, int]]:
    """``run_audio_text_pipeline``'s steps, keeping the Beam result for its counters."""
    import apache_beam as beam

    from trimodal.pipelines import common
    from trimodal.pipelines.audio_text import AudioTextPipelineConfig, build_audio_text_pipeline
    from trimodal.shards.manifest import Manifest
    from trimodal.tokenizers.registry import load_audio_tokenizer
    from trimodal.tokenizers.text import TextTokenizer

    t0 = time.perf_counter()
    cfg = AudioTextPipelineConfig(inputs=[str(manifest)], text_tokenizer=text_model, audio_tokenizer=codec,
                                  out=str(out), device=device, batch_size=batch_size, bucket_seconds=bucket_seconds,
                                  target_shard_bytes=8 * 2**20)
    inputs = common.storage.expand_inputs(cfg.inputs)
    text_tok = TextTokenizer.from_path(text_model)
    audio_tok = load_audio_tokenizer(codec, n_keep=cfg.n_keep)
    common.prepare_output(cfg.out)
    with beam.Pipeline(options=common.pipeline_options(["--runner=DirectRunner"])) as p:
        build_audio_text_pipeline(p, cfg, inputs, text_tok, audio_tok)
    wall = time.perf_counter() - t0
    m = Manifest.load(cfg.out)
    assert m.counts["written"] == m.counts["read"], m.counts
    counters = {r.key.metric.name: r.committed for r in p.result.metrics().query()["counters"]}
    return wall, m.tokens()["audio"] // 4, counters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total audio in the corpus")
    ap.add_argument("--codec", choices=[*CODECS, *HIGGS], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bucket-seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    from trimodal.pipelines.audio_text import pad_multiple
    from trimodal.tokenizers.registry import load_audio_tokenizer
    from trimodal.tokenizers.text import train_text_tokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_audio_"))
    manifest, paths, audio_seconds = make_corpus(work / "corpus", args.seconds)
    codec = make_codec(args.codec, work)
    probe = load_audio_tokenizer(codec, n_keep=4, device=args.device)
    texts = [json.loads(l)["text"] for l in manifest.read_text().splitlines()]
    text_model = str(work / "text.model")
    train_text_tokenizer(texts * 5, 300, text_model)
    multiple = pad_multiple(args.bucket_seconds, probe.sample_rate, probe.hop_length)

    # warm-up: first-call costs (thread pools, allocator) are paid by neither side
    probe.encode([np.zeros(multiple, np.float32)])
    del probe

    loops, pipes = [], []
    for r in range(args.repeats):
        loops.append(plain_loop(paths, codec, args.device, args.batch_size, multiple))
        pipes.append(beam_pipeline(manifest, text_model, codec, work / f"out{r}", args.device, args.batch_size,
                                   args.bucket_seconds))
        assert pipes[-1][1] == loops[-1][2], "pipeline and loop encoded different frame counts"
    counters, figures = bc.pipeline_vs_loop(pipes, loops, audio_seconds, "audio_s")
    result = {
        "bench": "audio_pipeline",
        "codec": args.codec,
        "device": args.device,
        "clips": len(paths),
        "audio_seconds": round(audio_seconds, 2),
        "batch_size": args.batch_size,
        "bucket_seconds": args.bucket_seconds,
        **figures,
        "goal_met": bool(figures["ratio"] >= 0.8),
        "pipeline_codec_s": round(counters.get("encode/codec_ms", 0) / 1000, 2),
        "pipeline_batches": counters.get("encode/batches"),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
