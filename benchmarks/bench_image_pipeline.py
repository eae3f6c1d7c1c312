"""Image-text pipeline throughput: images tokenized per second inside Beam (DirectRunner) against
the same MoVQGAN in a plain batched loop over the same images, on the same cores.

Both sides do the same work per image: decode + validate (``load_image``), seeded preprocessing
to ``--image-size`` (``preprocess`` with ``record_seed(id)``), batched MoVQGAN encoding in batches
of ``--batch-size``; the plain loop also loads the model, as the pipeline must. The pipeline
additionally reads the tar, tokenizes captions, counts outcomes, shuffles records between
stages and writes shards + dead-letter + manifest. The corpus is an img2dataset-style
WebDataset tar of JPEGs of assorted sizes (300-640 px) with captions. Each side runs
``--repeats`` times, alternating, after one warm-up encode; ``ratio`` is the median of the
per-round ratios (min and max reported beside it; the machine may be shared), and the codes of both sides are checked to be identical.
Prints one JSON line; ``ratio`` = pipeline throughput / loop throughput (goal >= 0.8).

    python benchmarks/bench_image_pipeline.py [--images 128] [--image-size 128] [--model tiny] [--device cpu]

``tiny`` is the tests' golden tiny config (ch 32, one res block; ~4 images/s at 128 px, ~1.4
at 256 px on 2 CPU cores), ``movqgan_67M`` / ``movqgan_270M`` the public architectures with
random weights (GPU sizes: ~0.1 image/s at 256 px on 2 CPU cores). Nothing downloads.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  shared benchmark helpers

TINY = {
    "ddconfig": {"double_z": False, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0},
    "embed_dim": 4, "n_embed": 512,
}
WORDS = "a red blue green circle square triangle on white black gray background photo of the".split()


def make_corpus(path: Path, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """An img2dataset-style tar (``NNNNNNNNN.jpg`` + ``.txt``); returns (record id, jpeg bytes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            w, h = (int(x) for x in rng.integers(300, 641, 2))
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy // 97) % 256], -1)
            arr = np.clip(arr + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            key = f"{i:09d}"
            caption = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 12))))
            for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            out.append((f"{path}:{key}", buf.getvalue()))
    return out


def plain_loop(images: list[tuple[str, bytes]], ckpt: str, device: str, batch_size: int, size: int
               ) -> tuple[float, float, dict[str, np.ndarray]]:
    """Load the model; decode + preprocess each image; encode in batches. Returns (wall seconds,
    of which encode seconds, codes by record id)."""
    from trimodal.pipelines.image_text import to_model_input, to_uint8
    from trimodal.tokenizers.image_preprocess import load_image, preprocess, record_seed
    from trimodal.tokenizers.movqgan import MoVQGANTokenizer

    t0 = time.perf_counter()
    tok = MoVQGANTokenizer.from_path(ckpt, device=device, batch_size=batch_size)
    codes: dict[str, np.ndarray] = {}
    encode_s = 0.0
    batch_ids: list[str] = []
    batch: list[np.ndarray] = []

    def run():
        nonlocal encode_s
        t = time.perf_counter()
        # the pipeline's own hop (uint8 between steps, mapped back with preprocess's formula)
        out = tok.encode(to_model_input(np.stack(batch)))
        encode_s += time.perf_counter() - t
        codes.update(zip(batch_ids, out))
        batch_ids.clear()
        batch.clear()

    for rid, data in images:
        x = preprocess(load_image(data), size, seed=record_seed(rid))
        batch_ids.append(rid)
        batch.append(to_uint8(x))
        if len(batch) == batch_size:
            run()
    if batch:
        run()
    return time.perf_counter() - t0, encode_s, codes


def beam_pipeline(tar: Path, text_model: str, ckpt: str, out: Path, device: str, batch_size: int, size: int,
                  beam_args: list[str]) -> tuple[float, dict[str, np.ndarray], dict[str, int]]:
    """``run_image_text_pipeline``'s steps, keeping the Beam result for its counters."""
    import apache_beam as beam

    from trimodal.pipelines import common
    from trimodal.pipelines.image_text import ImageTextPipelineConfig, build_image_text_pipeline
    from trimodal.pipelines.image_readers import expand_image_inputs
    from trimodal.shards.manifest import Manifest
    from trimodal.shards.reader import iter_samples
    from trimodal.tokenizers.movqgan import MoVQGANTokenizer
    from trimodal.tokenizers.text import TextTokenizer

    t0 = time.perf_counter()
    cfg = ImageTextPipelineConfig(inputs=[str(tar)], text_tokenizer=text_model, image_tokenizer=ckpt, out=str(out),
                                  device=device, batch_size=batch_size, image_size=size, target_shard_bytes=8 * 2**20)
    inputs = expand_image_inputs(cfg.inputs, cfg.format)
    text_tok = TextTokenizer.from_path(text_model)
    image_tok = MoVQGANTokenizer.from_path(ckpt, device="cpu")
    common.prepare_output(cfg.out)
    with beam.Pipeline(options=common.pipeline_options(["--runner=DirectRunner", *beam_args])) as p:
        build_image_text_pipeline(p, cfg, inputs, text_tok, image_tok)
    wall = time.perf_counter() - t0
    m = Manifest.load(cfg.out)
    assert m.counts["written"] == m.counts["read"], m.counts
    codes = {s["json"]["id"]: np.array(s["image"]) for _, s in iter_samples(cfg.out, m.shards)}
    counters = {r.key.metric.name: r.committed for r in p.result.metrics().query()["counters"]}
    return wall, codes, counters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--model", choices=["tiny", "movqgan_67M", "movqgan_102M", "movqgan_270M"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--beam-arg", action="append", default=[], help="extra Beam option (repeatable)")
    args = ap.parse_args(argv)

    from trimodal.tokenizers.movqgan import PUBLIC_CONFIGS, MoVQGAN, MoVQGANConfig, MoVQGANTokenizer, save_movqgan
    from trimodal.tokenizers.text import train_text_tokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_image_"))
    work.mkdir(parents=True, exist_ok=True)
    tar = work / "corpus-00000.tar"
    images = make_corpus(tar, args.images)
    torch.manual_seed(0)
    mcfg = MoVQGANConfig.from_dict(TINY if args.model == "tiny" else PUBLIC_CONFIGS[args.model])
    ckpt = str(work / f"movqgan_{args.model}.ckpt")
    save_movqgan(MoVQGAN(mcfg), ckpt)
    text_model = str(work / "text.model")
    train_text_tokenizer([" ".join(WORDS)] * 50, 320, text_model)

    # warm-up: first-call costs (Beam's import, thread pools, allocator, page cache) are paid by neither side
    import apache_beam  # noqa: F401

    MoVQGANTokenizer.from_path(ckpt, device=args.device).encode(np.zeros((1, 3, args.image_size, args.image_size), np.float32))

    loops, pipes = [], []
    for r in range(args.repeats):
        order = [0, 1] if r % 2 == 0 else [1, 0]
        for side in order:
            if side == 0:
                loops.append(plain_loop(images, ckpt, args.device, args.batch_size, args.image_size))
            else:
                pipes.append(beam_pipeline(tar, text_model, ckpt, work / f"out{r}", args.device, args.batch_size,
                                           args.image_size, args.beam_arg))
    # the pipeline's fixed cost (graph translation, ~20 stages, sink, manifest) on a 1-image corpus
    one = work / "one-00000.tar"
    make_corpus(one, 1)
    fixed_s = beam_pipeline(one, text_model, ckpt, work / "out_one", args.device, args.batch_size, args.image_size,
                            args.beam_arg)[0]
    ref = loops[0][2]
    for _, codes, _ in pipes:
        assert codes.keys() == ref.keys(), "pipeline and loop tokenized different records"
        assert all(np.array_equal(codes[k], ref[k]) for k in ref), "pipeline codes differ from the plain loop's"
    n = len(images)
    counters, figures = bc.pipeline_vs_loop(pipes, loops, n, "images")
    result = {
        "bench": "image_pipeline",
        "model": args.model,
        "device": args.device,
        "images": n,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        **figures,
        "goal_met": bool(figures["ratio"] >= 0.8),
        "codes_identical": True,
        "pipeline_fixed_s": round(fixed_s, 2),
        "pipeline_model_s": round(counters.get("encode/model_ms", 0) / 1000, 2),
        "pipeline_batches": counters.get("encode/batches"),
        "beam_args": ["--runner=DirectRunner", *args.beam_arg],
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
