"""The ``trimodal`` command line: one tool, a subcommand per job, one way to configure each.

Every command is driven by a dataclass config (the same one the Python API takes): its
top-level fields are flags (``--text-tokenizer …``), every key can come from ``--config FILE``
(JSON, YAML or TOML) or ``--set key=value``, and ``--help`` lists every key with its default.
Every failure exits non-zero with a one-line reason on stderr; ``--debug`` (anywhere on the
line) shows the traceback. Pipeline subcommands pass Beam's own options (``--runner``,
``--project``, ``--direct_num_workers``, …) to ``PipelineOptions``; any other unknown option is an
error that names the nearest matches.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trimodal import __version__
from trimodal.config import ConfigError, add_flags, build, describe, flag_values, option


# ---- small configs of the commands that own no component config -------------------------------
@dataclass
class TextTokenizerConfig:
    inputs: list[str] = option(default_factory=list, flag="input", help="text/JSONL/Parquet files, globs or brace ranges")
    vocab_size: int = option(0, help="pieces of the SentencePiece model")
    out: str = option("", help="output .model path")
    model_type: str = option("bpe", help="bpe or unigram")
    text_field: str = option("text", help="JSON/Parquet field holding the document")
    max_documents: int = option(1_000_000, help="documents read at most")

    def __post_init__(self) -> None:
        if not self.inputs or not self.out or self.vocab_size <= 0:
            raise ValueError("--input, --vocab-size and --out are required")
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"--model-type must be bpe or unigram, got {self.model_type!r}")


@dataclass
class VerifyConfig:
    roots: list[str] = option(default_factory=list, flag="root", help="dataset roots")

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("give at least one dataset root")


@dataclass
class StatsConfig(VerifyConfig):
    json: bool = option(False, help="print one JSON object")
    plots: str | None = option(None, help="write PNG histograms to this folder")
    seq_len: int = option(3256, help="row length L for the padding and audio-overflow figures")
    packed: bool = option(False, help="padding as data.pack_paired would pack the paired samples")


@dataclass
class ShowConfig:
    roots: list[str] = option(default_factory=list, flag="root", help="dataset root")
    n: int = option(3, help="samples to show")
    out: str = option("shards_show", help="folder for decoded images (PNG) and audio (WAV)")
    split: str = option("train", help="which split")
    device: str = option("cpu", help="device for the media decoders")

    def __post_init__(self) -> None:
        if len(self.roots) != 1:
            raise ValueError("give one dataset root")


@dataclass
class ExportConfig:
    checkpoint: str = option("", help="run folder or checkpoint folder")
    out: str = option("", help="new folder to write")

    def __post_init__(self) -> None:
        if not self.checkpoint or not self.out:
            raise ValueError("--checkpoint and --out are required")


@dataclass
class PlotConfig:
    runs: list[str] = option(default_factory=list, flag="run", help="run folders (their log.jsonl)")
    out: str = option("curves.png", help="PNG to write")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run folder")


# ---- the command table ---------------------------------------------------------------------------
@dataclass
class Command:
    name: str  # e.g. "pipeline text"
    help: str
    config: Callable[[], type]
    run: Callable[[Any, list[str]], int]
    positional: str | tuple[str, ...] | None = None  # str: a list field taking every positional word;
    # tuple: one scalar field per word, in order
    beam: bool = False  # pass Beam's options through


def _pipeline_config(name: str) -> Callable[[], type]:
    def get() -> type:
        if name == "text":
            from trimodal.pipelines.text import TextPipelineConfig as C
        elif name == "image-text":
            from trimodal.pipelines.image_text import ImageTextPipelineConfig as C
        elif name == "audio-text":
            from trimodal.pipelines.audio_text import AudioTextPipelineConfig as C
        else:
            from trimodal.pipelines.mix import MixPipelineConfig as C
        return C
    return get


def run_pipeline(cfg: Any, beam_args: list[str]) -> int:
    from trimodal.pipelines.common import summary
    from trimodal.pipelines.text import TextPipelineConfig

    if isinstance(cfg, TextPipelineConfig):
        from trimodal.pipelines.text import run_text_pipeline as run
    elif type(cfg).__name__ == "ImageTextPipelineConfig":
        from trimodal.pipelines.image_text import run_image_text_pipeline as run
    elif type(cfg).__name__ == "AudioTextPipelineConfig":
        from trimodal.pipelines.audio_text import run_audio_text_pipeline as run
    else:
        from trimodal.pipelines.mix import run_mix_pipeline as run
    manifest = run(cfg, beam_args)
    if manifest is None:
        print(f"dry run: the job graph was built; nothing ran, {cfg.out} is untouched")
        return 0
    print(summary(manifest, cfg.out))
    if isinstance(cfg, TextPipelineConfig):
        from trimodal.pipelines.text import txt_summary

        for line in txt_summary(cfg):
            print(line)
    return 0


def run_text_tokenizer(cfg: TextTokenizerConfig, _: list[str]) -> int:
    from trimodal.pipelines.records import Record
    from trimodal.pipelines.text_readers import read_text_file
    from trimodal.storage import expand_inputs
    from trimodal.tokenizers.text import train_text_tokenizer

    files = expand_inputs(cfg.inputs)

    def texts():
        n = 0
        for url in files:
            for rec in read_text_file(url, text_field=cfg.text_field):
                if isinstance(rec, Record) and n < cfg.max_documents:
                    n += 1
                    yield rec.text

    tok = train_text_tokenizer(texts(), cfg.vocab_size, cfg.out, model_type=cfg.model_type)
    print(f"wrote {cfg.out}: vocab {tok.vocab_size}, fingerprint {tok.fingerprint}")
    return 0


class _ShardProgress:
    """``progress(done, total, name)`` for commands that read shard after shard: a status line on
    stderr refreshed at most once a second, none for a run shorter than a second."""

    def __init__(self, label: str) -> None:
        self.label, self.t0, self.last, self.shown = label, time.monotonic(), 0.0, False

    def __call__(self, done: int, total: int, name: str) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0 and now - self.t0 >= 1.0:
            self.last, self.shown = now, True
            print(f"\r[{now - self.t0:6.0f} s] {self.label} {done:,} of {total:,} shards", end="", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def run_stats(cfg: StatsConfig, _: list[str]) -> int:
    from trimodal.shards.report import format_stats, write_plots
    from trimodal.shards.stats import compute_stats

    bar = _ShardProgress("read")
    try:
        stats = compute_stats(cfg.roots, seq_len=cfg.seq_len, packed=cfg.packed, progress=bar)
    finally:
        bar.close()
    if cfg.plots:
        stats["plots"] = write_plots(stats, cfg.plots)
    print(json.dumps(stats, sort_keys=True) if cfg.json else format_stats(stats))
    return 0


def run_verify(cfg: VerifyConfig, _: list[str]) -> int:
    from trimodal.shards.verify import verify

    bad = []
    for root in cfg.roots:
        bar = _ShardProgress(f"verified {root}:")
        try:
            report = verify(root, progress=bar)
        finally:
            bar.close()
        print(report.format(), end="")
        if not report.ok:
            bad.append(f"{root}: {report.summary()}")
    if bad:
        print("error: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def run_show(cfg: ShowConfig, _: list[str]) -> int:
    from trimodal.shards.show import show

    for line in show(cfg.roots[0], cfg.n, cfg.out, split=cfg.split, device=cfg.device):
        print(line)
    return 0


def run_train(cfg: Any, _: list[str]) -> int:
    from trimodal.train.trainer import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained steps {result['start_step']}..{result['end_step']} of {result['steps']}: "
              f"first loss {result['first_loss']:.4f}, last loss {result['last_loss']:.4f}")
        print(f"  log: {result['log']}\n  checkpoints: {result['checkpoints']}")
    return 0


def run_sample_cmd(cfg: Any, _: list[str]) -> int:
    from trimodal.train.generate import run_sample

    for line in run_sample(cfg):
        print(line)
    return 0


def run_eval_cmd(cfg: Any, _: list[str]) -> int:
    from trimodal.train.eval_job import format_result, run_eval

    result = run_eval(cfg)
    print(json.dumps(result, sort_keys=True) if cfg.json else format_result(result))
    return 0


def run_generate_eval_cmd(cfg: Any, _: list[str]) -> int:
    from trimodal.train.generate_eval import format_result, run_generate_eval

    print(format_result(run_generate_eval(cfg), cfg.out))
    return 0


def run_export(cfg: ExportConfig, _: list[str]) -> int:
    from trimodal.api import export

    for path in export(cfg.checkpoint, cfg.out):
        print(f"wrote {path}")
    return 0


def run_plot(cfg: PlotConfig, _: list[str]) -> int:
    from trimodal.train.plots import plot_runs

    print(f"wrote {plot_runs(cfg.runs, cfg.out)}")
    return 0


def run_demo(cfg: Any, _: list[str]) -> int:
    from trimodal.demo import run_demo as demo

    demo(cfg)
    return 0


def _train_config() -> type:
    from trimodal.train.trainer import TrainConfig

    return TrainConfig


def _sample_config() -> type:
    from trimodal.train.generate import SampleConfig

    return SampleConfig


def _eval_config() -> type:
    from trimodal.train.eval_job import EvalJobConfig

    return EvalJobConfig


def _generate_eval_config() -> type:
    from trimodal.train.generate_eval import GenerateEvalConfig

    return GenerateEvalConfig


def _demo_config() -> type:
    from trimodal.demo import DemoConfig

    return DemoConfig


def _experiment_config(kind: str) -> Callable[[], type]:
    def get() -> type:
        from trimodal.experiments import runner

        return runner.RunSpecConfig if kind == "run" else runner.FitConfig
    return get


def _run_experiment(cfg: Any, _: list[str]) -> int:
    from trimodal.experiments import runner

    for line in runner.main(cfg):  # a generator: each run is reported when it ends
        print(line, flush=True)
    return 0


COMMANDS = [
    Command("demo", "the whole chain on the bundled sample: tokenizers, pipelines, stats, train, sample",
            _demo_config, run_demo),
    Command("tokenizer train-text", "train a SentencePiece model", lambda: TextTokenizerConfig, run_text_tokenizer),
    Command("pipeline text", "text corpus -> tokenized shards", _pipeline_config("text"), run_pipeline, beam=True),
    Command("pipeline image-text", "image-caption corpus -> tokenized shards", _pipeline_config("image-text"),
            run_pipeline, beam=True),
    Command("pipeline audio-text", "audio-transcript corpus -> tokenized shards", _pipeline_config("audio-text"),
            run_pipeline, beam=True),
    Command("pipeline mix", "tokenized datasets -> mixed shards packed to L", _pipeline_config("mix"), run_pipeline,
            beam=True),
    Command("shards stats", "per-source/task/split statistics", lambda: StatsConfig, run_stats, positional="roots"),
    Command("shards verify", "check every shard against the manifest", lambda: VerifyConfig, run_verify,
            positional="roots"),
    Command("shards show", "decode a few samples back to text, a PNG grid or WAV", lambda: ShowConfig, run_show,
            positional="roots"),
    Command("train", "train (single process, or under torchrun)", _train_config, run_train),
    Command("sample", "generate text, images or speech from a checkpoint", _sample_config, run_sample_cmd),
    Command("eval", "held-out ELBO per modality and source, or multiple-choice accuracy; with --generate: sample "
            "and score FID, CLIP score, FAD, WER (`trimodal eval --generate --help`)", _eval_config, run_eval_cmd),
    Command("export", "write a checkpoint as model.safetensors + config + tokenizers", lambda: ExportConfig, run_export),
    Command("plot", "train and val curves of one or several runs", lambda: PlotConfig, run_plot, positional="runs"),
    Command("experiment run", "run a grid of training runs from a spec file (or print their launch lines)",
            _experiment_config("run"), _run_experiment, positional=("spec",)),
    Command("experiment fit", "fit the scaling (eq. 5.1) or drift (§5.2) law to a results.csv: KIND RESULTS",
            _experiment_config("fit"), _run_experiment, positional=("kind", "results")),
]

EVAL_GENERATE = Command("eval", "generate samples and score them: FID, CLIP score, FAD, WER (docs/quality.md)",
                        _generate_eval_config, run_generate_eval_cmd)


# ---- parsing --------------------------------------------------------------------------------------
def _beam_flags() -> set[str]:
    """Every option string Beam's ``PipelineOptions`` classes define (``--runner``, ``--no_auth``…)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(add_help=False)
    seen: set[type] = set()
    todo = [PipelineOptions]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo += cls.__subclasses__()
        adder = cls.__dict__.get("_add_argparse_args")
        if adder is not None:
            try:
                adder.__func__(cls, parser)
            except (argparse.ArgumentError, TypeError):
                continue
    return {s for s in parser._option_string_actions if s.startswith("--")}


def _split_unknown(unknown: list[str], known: list[str], beam: bool) -> list[str]:
    """Beam's options (kept, to pass through) or an error naming the nearest matches."""
    beam_flags = _beam_flags() if beam else set()
    passed: list[str] = []
    for tok in unknown:
        if not tok.startswith("--"):
            passed.append(tok)  # the value of a Beam option given as "--opt value"
            continue
        name = tok.split("=", 1)[0]
        if name in beam_flags:
            passed.append(tok)
            continue
        near = difflib.get_close_matches(name, known + sorted(beam_flags), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise ConfigError(f"unknown option {name}{hint}")
    if not beam and passed:
        raise ConfigError(f"unexpected argument {passed[0]} (give positional arguments together, before or after the "
                          f"options)")
    return passed


def _chosen(argv: list[str]) -> Command | None:
    """The command the words of ``argv`` name (options skipped), if any."""
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["eval"] and "--generate" in argv:  # generation quality: its own options
        return EVAL_GENERATE
    for c in COMMANDS:
        n = len(c.name.split())
        if words[:n] == c.name.split():
            return c
    return None


def build_parser(chosen: Command | None = None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The parser, with the full flags of the ``chosen`` command only: building a command's
    flags imports its config (and so its component, torch included), which the others need not
    pay for. Returns ``(parser, the chosen command's parser)``."""
    parser = argparse.ArgumentParser(prog="trimodal", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"trimodal {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the subcommand)")
    subs: dict[tuple[str, ...], Any] = {(): parser.add_subparsers(dest="cmd0", required=True, metavar="COMMAND")}
    leaf = None
    for c in COMMANDS:
        c = chosen if chosen is not None and chosen.name == c.name else c  # eval or eval --generate
        words = tuple(c.name.split())
        for i in range(len(words) - 1):
            key = words[: i + 1]
            if key not in subs:
                p = subs[words[:i]].add_parser(words[i], help=f"{words[i]} jobs", allow_abbrev=False)
                subs[key] = p.add_subparsers(dest=f"cmd{i + 1}", required=True, metavar="COMMAND")
        if c is not chosen:
            subs[words[:-1]].add_parser(words[-1], help=c.help, add_help=False)
            continue
        cls = c.config()
        p = subs[words[:-1]].add_parser(words[-1], help=c.help, description=c.help, allow_abbrev=False,
                                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=describe(cls))
        p.set_defaults(_command=c, _config_cls=cls)
        p.add_argument("--config", default=None, action=_Once, help="config file (JSON, YAML or TOML)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key (repeatable)")
        names = (c.positional,) if isinstance(c.positional, str) else (c.positional or ())
        if isinstance(c.positional, str):
            p.add_argument(c.positional, nargs="*", help=f"{c.positional} (see the config keys below)")
        elif c.positional:
            p.add_argument("_words", nargs="*", metavar=" ".join(n.upper() for n in c.positional),
                           help=f"{', '.join(c.positional)} (see the config keys below)")
        p.set_defaults(_dests=add_flags(p, cls, skip=names))
        if c.name == "train":
            p.add_argument("--resume", action="store_true", help="continue from the newest usable checkpoint")
            p.add_argument("--auto-resume", action="store_true",
                           help="continue the run the folder holds, else start it (what launchers pass)")
            p.add_argument("--overwrite", action="store_true", help="start afresh, deleting the run folder's contents")
        leaf = p
    return parser, leaf


class _Once(argparse.Action):
    """A flag that may be given once: a second ``--config`` would silently drop the first file."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); give one file "
                         f"and override single keys with --set")
        setattr(namespace, self.dest, values)


def parse(argv: list[str]) -> tuple[Command, Any, list[str]]:
    """``argv`` (without ``--debug``) → (the command, its built config, Beam's options)."""
    chosen = _chosen(argv)
    parser, leaf = build_parser(chosen)
    if chosen is None:
        parser.parse_args(argv)  # --help, --version, or an error naming the choices
        raise SystemExit(2)
    args, unknown = parser.parse_known_args(argv)
    c: Command = args._command
    known = sorted(s for s in leaf._option_string_actions if s.startswith("--"))
    beam_args = _split_unknown(unknown, known, c.beam)
    values = flag_values(args, args._config_cls, args._dests)
    if isinstance(c.positional, str):
        pos = getattr(args, c.positional, None)
        if pos:
            values[c.positional] = pos
    elif c.positional:
        words = args._words
        if len(words) > len(c.positional):
            raise ConfigError(f"unexpected argument {words[len(c.positional)]} (expected {' '.join(c.positional)})")
        values.update(zip(c.positional, words))
    overrides = list(args.set)
    if c.name == "train":
        overrides += ["run.resume=true"] if args.resume else []
        overrides += ["run.auto_resume=true"] if args.auto_resume else []
        overrides += ["run.overwrite=true"] if args.overwrite else []
    return c, build(args._config_cls, args.config, values, overrides), beam_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        c, cfg, beam_args = parse(argv)
        return c.run(cfg, beam_args)
    except KeyboardInterrupt as e:
        print(f"\nerror: {str(e) or 'interrupted'}", file=sys.stderr)  # own line: a progress line may be open
        return 130
    except SystemExit:
        raise
    except Exception as e:  # one line for users; --debug for the traceback
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
