"""The ``trimodal`` command line: one tool, a subcommand per job (SPEC §8).

Every failure exits non-zero with a one-line reason on stderr; ``--debug`` shows the traceback.
Pipeline subcommands pass every option they do not know (``--runner``, ``--project``,
``--direct_num_workers``, …) to Beam's ``PipelineOptions`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _add_pipeline_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, help="input files or globs (any fsspec URL)")
    p.add_argument("--out", required=True, help="dataset root to write (any fsspec URL)")
    p.add_argument("--text-tokenizer", required=True, help="SentencePiece .model path")
    p.add_argument("--source", default="", help="source name recorded per sample (default: file stem)")
    p.add_argument("--shard-mb", type=float, default=128.0, help="target shard size in MB (default 128)")
    p.add_argument("--compression", choices=["none", "zstd"], default="none")
    p.add_argument("--batch-size", type=int, default=None, help="tokenizer batch size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimodal", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole chain on the bundled sample: tokenizers, pipelines, stats, train, sample")
    d.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: about two CPU minutes)")
    d.add_argument("--modalities", default="text,image,audio", help="comma list of text,image,audio")

    tok = sub.add_parser("tokenizer", help="tokenizer jobs").add_subparsers(dest="tok_command", required=True)
    tt = tok.add_parser("train-text", help="train a SentencePiece model")
    tt.add_argument("--input", nargs="+", required=True, help="text/JSONL/Parquet files or globs")
    tt.add_argument("--vocab-size", type=int, required=True)
    tt.add_argument("--out", required=True, help="output .model path")
    tt.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    tt.add_argument("--text-field", default="text")
    tt.add_argument("--max-documents", type=int, default=1_000_000)

    pipe = sub.add_parser("pipeline", help="Beam pipelines").add_subparsers(dest="pipe_command", required=True)
    pt = pipe.add_parser("text", allow_abbrev=False, help="text corpus -> tokenized shards")
    _add_pipeline_common(pt)
    pt.add_argument("--format", default="auto", choices=["auto", "jsonl", "parquet", "txt"])
    pt.add_argument("--text-field", default="text")
    pt.add_argument("--id-field", default=None)
    pt.add_argument("--txt-unit", default="file", choices=["file", "paragraph", "line"])
    pt.add_argument("--min-chars", type=int, default=1)
    pt.add_argument("--max-chars", type=int, default=10_000_000)
    pt.add_argument("--min-tokens", type=int, default=1)

    pi = pipe.add_parser("image-text", allow_abbrev=False, help="image-caption corpus -> tokenized shards")
    _add_pipeline_common(pi)
    pi.add_argument("--image-tokenizer", required=True, help="MoVQGAN checkpoint path")
    pi.add_argument("--format", default="auto", choices=["auto", "webdataset", "parquet", "folder"])
    pi.add_argument("--captions", default=None, help="captions JSON-lines file (folder format)")
    pi.add_argument("--image-size", type=int, default=256)
    pi.add_argument("--device", default="auto")
    pi.add_argument("--image-field", default=None, help="parquet image column (default: jpg, image, ...)")
    pi.add_argument("--caption-field", default=None, help="caption column / JSON field (default: caption, text)")
    pi.add_argument("--id-field", default=None)
    pi.add_argument("--max-pixels", type=int, default=64_000_000, help="larger images are rejected unread")
    pi.add_argument("--min-side", type=int, default=16, help="smaller images are filtered")
    pi.add_argument("--seed", type=int, default=0, help="salt of the per-record preprocessing seed")
    pi.add_argument("--allow-tf32", action="store_true", help="faster on GPU; codes may differ from CPU")

    pa = pipe.add_parser("audio-text", allow_abbrev=False, help="audio-transcript corpus -> tokenized shards")
    _add_pipeline_common(pa)
    pa.add_argument("--audio-tokenizer", required=True, help="DAC weights path")
    pa.add_argument("--format", default="auto", choices=["auto", "manifest", "webdataset"])
    pa.add_argument("--codebooks", type=int, default=4, help="residual codebooks kept (k)")
    pa.add_argument("--max-seconds", type=float, default=30.0, help="longer clips are filtered (too_long)")
    pa.add_argument("--min-seconds", type=float, default=0.0, help="shorter clips are filtered (too_short)")
    pa.add_argument("--bucket-seconds", type=float, default=1.0, help="length bucket width for batched encoding")
    pa.add_argument("--device", default="auto")

    pm = pipe.add_parser("mix", allow_abbrev=False, help="tokenized datasets -> mixed shards packed to L")
    pm.add_argument("--inputs", nargs="+", required=True, help="dataset roots")
    pm.add_argument("--weights", nargs="+", type=float, required=True)
    pm.add_argument("--seq-len", type=int, required=True)
    pm.add_argument("--rows", type=int, default=None, help="rows to write (default: one pass of the smallest source)")
    pm.add_argument("--out", required=True)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--shard-mb", type=float, default=128.0)

    sh = sub.add_parser("shards", help="inspect tokenized shards").add_subparsers(dest="shards_command", required=True)
    st = sh.add_parser("stats", help="per-source/per-modality statistics")
    st.add_argument("root", nargs="+")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--plots", default=None, help="write PNG histograms to this folder")
    st.add_argument("--seq-len", type=int, default=3256, help="row length L for the padding estimate")
    sv = sh.add_parser("verify", help="check every shard against the manifest")
    sv.add_argument("root")

    tr = sub.add_parser("train", help="train (single process, or under torchrun)")
    tr.add_argument("--config", default=None, help="JSON config file")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")

    sa = sub.add_parser("sample", help="generate text, images or speech from a checkpoint")
    sa.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    sa.add_argument("--task", choices=["text", "image", "speech"], required=True)
    sa.add_argument("--prompt", default="")
    sa.add_argument("--out", required=True)
    sa.add_argument("--steps", type=int, default=None)
    sa.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    sa.add_argument("--temperature", type=float, default=None)
    sa.add_argument("--top-p", type=float, default=None)
    sa.add_argument("--order", choices=["random", "confidence"], default="random")
    sa.add_argument("--length", type=int, default=64, help="text: new tokens")
    sa.add_argument("--seconds", type=float, default=5.0, help="speech: duration (> 0)")
    sa.add_argument("--num", type=int, default=1, help="samples (images: a grid)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--text-tokenizer", default=None)
    sa.add_argument("--image-tokenizer", default=None)
    sa.add_argument("--audio-tokenizer", default=None)
    sa.add_argument("--device", default="auto")
    return parser


# ---- handlers ----------------------------------------------------------------------------


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from trimodal.pipelines.text_readers import read_text_file
    from trimodal.shards.storage import expand_inputs
    from trimodal.tokenizers.text import train_text_tokenizer

    files = expand_inputs(args.input)

    def texts():
        n = 0
        for url in files:
            for rec in read_text_file(url, text_field=args.text_field):
                if "text" in rec and n < args.max_documents:
                    n += 1
                    yield rec["text"]

    tok = train_text_tokenizer(texts(), args.vocab_size, args.out, model_type=args.model_type)
    print(f"wrote {args.out}: vocab {tok.vocab_size}, fingerprint {tok.fingerprint}")
    return 0


def cmd_pipeline(args: argparse.Namespace, beam_args: list[str]) -> int:
    from trimodal.pipelines.common import summary

    shard_bytes = int(args.shard_mb * 1e6) if hasattr(args, "shard_mb") else None
    if args.pipe_command == "text":
        from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline

        cfg = TextPipelineConfig(
            inputs=args.input, text_tokenizer=args.text_tokenizer, out=args.out, format=args.format, source=args.source,
            text_field=args.text_field, id_field=args.id_field, txt_unit=args.txt_unit, min_chars=args.min_chars,
            max_chars=args.max_chars, min_tokens=args.min_tokens, batch_size=args.batch_size or 256,
            target_shard_bytes=shard_bytes, compression=args.compression,
        )
        manifest = run_text_pipeline(cfg, beam_args)
    elif args.pipe_command == "image-text":
        from trimodal.pipelines.image_text import ImageTextPipelineConfig, run_image_text_pipeline

        cfg = ImageTextPipelineConfig(
            inputs=args.input, text_tokenizer=args.text_tokenizer, image_tokenizer=args.image_tokenizer, out=args.out,
            format=args.format, captions=args.captions, source=args.source, image_size=args.image_size,
            device=args.device, batch_size=args.batch_size or 16, target_shard_bytes=shard_bytes,
            compression=args.compression, image_field=args.image_field, caption_field=args.caption_field,
            id_field=args.id_field, max_pixels=args.max_pixels, min_side=args.min_side, seed=args.seed,
            allow_tf32=args.allow_tf32,
        )
        manifest = run_image_text_pipeline(cfg, beam_args)
    elif args.pipe_command == "audio-text":
        from trimodal.pipelines.audio_text import AudioTextPipelineConfig, run_audio_text_pipeline

        cfg = AudioTextPipelineConfig(
            inputs=args.input, text_tokenizer=args.text_tokenizer, audio_tokenizer=args.audio_tokenizer, out=args.out,
            format=args.format, source=args.source, n_keep=args.codebooks, max_seconds=args.max_seconds,
            min_seconds=args.min_seconds, bucket_seconds=args.bucket_seconds,
            device=args.device, batch_size=args.batch_size or 8, target_shard_bytes=shard_bytes,
            compression=args.compression,
        )
        manifest = run_audio_text_pipeline(cfg, beam_args)
    elif args.pipe_command == "mix":
        from trimodal.pipelines.mix import MixPipelineConfig, run_mix_pipeline

        if len(args.weights) != len(args.inputs):
            raise ValueError(f"--weights has {len(args.weights)} values for {len(args.inputs)} --inputs")
        cfg = MixPipelineConfig(inputs=args.inputs, weights=args.weights, seq_len=args.seq_len, out=args.out,
                                rows=args.rows, seed=args.seed, target_shard_bytes=shard_bytes)
        manifest = run_mix_pipeline(cfg, beam_args)
    else:  # pragma: no cover - argparse restricts choices
        raise ValueError(args.pipe_command)
    if manifest is None:
        print(f"dry run: the {args.pipe_command} job graph was built; nothing ran, {args.out} is untouched")
        return 0
    print(summary(manifest, args.out))
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    if args.shards_command == "stats":
        from trimodal.shards.stats import compute_stats, format_stats, write_plots

        stats = compute_stats(args.root, seq_len=args.seq_len)
        if args.plots:
            stats["plots"] = write_plots(stats, args.plots)
        print(json.dumps(stats, sort_keys=True) if args.json else format_stats(stats))
        return 0
    from trimodal.shards.verify import verify

    report = verify(args.root)
    print(report.format())
    if not report.ok:
        print(f"error: {args.root}: {len(report.problems)} bad shard(s)", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trimodal.train.trainer import TrainConfig, train

    overrides = list(args.set) + (["run.resume=true"] if args.resume else [])
    cfg = TrainConfig.load(args.config, overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained steps {result['start_step']}..{result['end_step']} of {result['steps']}: first loss {result['first_loss']:.4f}, "
              f"last loss {result['last_loss']:.4f}")
        print(f"  log: {result['log']}\n  checkpoints: {result['checkpoints']}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from trimodal.train.generate import generate_cli

    for line in generate_cli(args):
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trimodal.demo import run_demo

    run_demo(args.out, steps=args.steps, modalities=[m.strip() for m in args.modalities.split(",") if m.strip()])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "pipeline":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "pipeline":
            return cmd_pipeline(args, unknown)
        handler = {"tokenizer": cmd_tokenizer, "shards": cmd_shards, "train": cmd_train, "sample": cmd_sample,
                   "demo": cmd_demo}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; --debug for the traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
