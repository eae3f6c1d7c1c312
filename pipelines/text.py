"""``trimodal pipeline text``: a text corpus → tokenized WebDataset shards.

read (JSONL / Parquet / plain text) in batches → normalise + filter + encode (SentencePiece or
tiktoken, one call per batch; the model loaded once per worker process) + serialise, in one step
→ shards + dead-letter + manifest. Batches, not documents, are the elements Beam moves: its
per-element cost (~0.3 ms) would otherwise be many times the encode of a short document. On a
local run a batch encodes in a helper thread (the tokenizer releases the GIL) while the step
reads the next one and serialises the last.
"""

from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import common
from trimodal.pipelines.outcomes import BatchStep, Step, Tally
from trimodal.pipelines.records import DeadLetter, Drop, Record, filtered, rejected
from trimodal.pipelines.sink import SinkConfig, make_samples
from trimodal.pipelines.text_readers import FORMATS, TXT_UNITS, TextReader
from trimodal.tokenizers.registry import load_text_tokenizer


@dataclass
class TextPipelineConfig(common.PipelineConfig):
    format: str = option("auto", help=f"input format: {', '.join(FORMATS)}")
    text_field: str = option("text", help="JSON/Parquet field holding the document")
    id_field: str | None = option(None, help="JSON/Parquet field holding a stable id (default: file:line)")
    txt_unit: str = option("file", help="plain text (.txt and other non-JSON/Parquet files): one document per file "
                                        "(the default: a book or an article stays whole, its paragraphs in one "
                                        "document), per blank-line paragraph, or per line; the summary says how "
                                        "many documents each file gave")
    min_chars: int = option(1, help="shorter documents are filtered (too_short)")
    max_chars: int = option(10_000_000, help="longer documents are filtered (too_long)")
    min_tokens: int = option(1, help="documents with fewer tokens are filtered (too_few_tokens)")
    batch_size: int = option(256, help="documents per tokenizer call")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.txt_unit not in TXT_UNITS:
            raise ValueError(f"txt_unit must be one of {TXT_UNITS}, got {self.txt_unit!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def normalize_text(text: str) -> str:
    """NFC, unified newlines, outer whitespace stripped; inner whitespace is content. A lone
    surrogate (JSON can spell one: ``"\\ud800"``) is no Unicode text: rejected as
    ``invalid_unicode`` (the tokenizer would fail on it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise rejected("invalid_unicode", f"lone surrogate U+{ord(text[e.start]):04X} at character {e.start}") from None
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


class NormalizeText(Step):
    stage = "normalize"

    def __init__(self, min_chars: int, max_chars: int):
        self.min_chars, self.max_chars = min_chars, max_chars

    def apply(self, record: Record) -> Record:
        text = normalize_text(record.text)
        if not text:
            raise filtered("empty", "no characters after whitespace stripping")
        if len(text) < self.min_chars:
            raise filtered("too_short", f"{len(text)} < {self.min_chars} chars")
        if len(text) > self.max_chars:
            raise filtered("too_long", f"{len(text)} > {self.max_chars} chars")
        record.text = text
        return record


# One tokenizer per worker process, shared by the DoFn instances (threads) of that process.
_TOKENIZERS = shared.Shared()


class _TokenizerHolder:
    def __init__(self, tok):
        self.tok = tok


def load_text_tokenizer_shared(path: str):
    return _TOKENIZERS.acquire(lambda: _TokenizerHolder(load_text_tokenizer(path)), tag=f"text:{path}").tok


class EncodePairedText(Step):
    """Normalise a caption or transcript (as documents are normalised) and encode it.

    Paired pipelines run it before decoding media, so a record without usable text costs no
    decode. ``name`` is ``caption`` or ``transcript``: an empty one is filtered as
    ``empty_<name>``, one over ``max_tokens`` as ``<name>_too_long``."""

    def __init__(self, tokenizer_path: str, name: str, max_tokens: int | None = None):
        self.tokenizer_path, self.name, self.max_tokens = tokenizer_path, name, max_tokens
        self.stage = name

    def setup(self) -> None:
        self.tok = load_text_tokenizer_shared(self.tokenizer_path)

    def apply(self, record: Record) -> Record:
        text = normalize_text(record.text)
        if not text:
            raise filtered(f"empty_{self.name}", "no characters after whitespace stripping")
        ids = self.tok.encode_one(text)
        if self.max_tokens is not None and ids.size > self.max_tokens:
            raise filtered(f"{self.name}_too_long", f"{ids.size} > {self.max_tokens} tokens")
        record.text, record.text_ids = text, ids
        return record


class TokenizeText(BatchStep):
    """A batch of records → normalised, filtered, encoded, serialised samples (one tokenizer call
    for the batch) and dead letters. Stages and reasons as when these were separate steps:
    ``normalize`` (``empty``, ``too_short``, ``too_long``), then ``tokenize`` (``too_few_tokens``)."""

    stage = "tokenize"

    def __init__(self, tokenizer_path: str, min_tokens: int, min_chars: int = 1, max_chars: int = 10_000_000,
                 threads: int | None = None):
        self.tokenizer_path = tokenizer_path
        self.min_tokens = min_tokens
        self.normalize = NormalizeText(min_chars, max_chars)
        self.threads = threads  # encode threads per call (None: the tokenizer's default)

    def setup(self) -> None:
        self.tok = load_text_tokenizer_shared(self.tokenizer_path)
        if self.threads is not None:
            _set_encode_threads(self.tok, self.threads)
        self._encoder: ThreadPoolExecutor | None = None

    def teardown(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown()

    def apply_batch(self, records: list[Record], tally: Tally) -> tuple[list[dict], list[DeadLetter]]:
        kept, dead = self._normalize(records, tally)
        return self._samples(kept, self.tok.encode([r.text for r in kept]) if kept else [], dead, tally)

    def begin(self, records: list[Record], tally: Tally) -> Any:
        # the encode releases the GIL: this batch encodes while the caller reads and serialises others
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
        kept, dead = self._normalize(records, tally)
        return kept, dead, self._encoder.submit(self.tok.encode, [r.text for r in kept]) if kept else None

    def end(self, state: Any, tally: Tally) -> tuple[list[dict], list[DeadLetter]]:
        kept, dead, encoding = state
        return self._samples(kept, encoding.result() if encoding is not None else [], dead, tally)

    def _normalize(self, records: list[Record], tally: Tally) -> tuple[list[Record], list[DeadLetter]]:
        normalize, stage = self.normalize, self.normalize.stage
        kept: list[Record] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                kept.append(normalize.apply(record))
            except Drop as err:
                dead.append(tally.dead(record, err, stage))
        tally.add(stage, "ok", n=len(kept))
        return kept, dead

    def _samples(self, kept: list[Record], ids: list, dead: list[DeadLetter], tally: Tally) -> tuple[list[dict], list[DeadLetter]]:
        good: list[Record] = []
        codes: list = []
        lengths: list[dict[str, int]] = []
        for record, c in zip(kept, ids):
            n = int(c.size)
            if n < self.min_tokens:
                dead.append(tally.dead(record, filtered("too_few_tokens", f"{n} < {self.min_tokens}"), self.stage))
                continue
            good.append(record)
            codes.append(c)
            lengths.append({"text": n, "chars": len(record.text)})
        tally.add(self.stage, "ok", n=len(good))
        return make_samples(good, "text", lengths, "text", codes, tally), dead


def _set_encode_threads(tok: Any, n: int) -> None:
    """SentencePiece encodes a batch on all cores by default; ``n`` threads instead (tiktoken
    already uses one)."""
    if hasattr(tok, "encode_threads"):
        tok.encode_threads = n


def encode_threads(options: PipelineOptions) -> int | None:
    """Encode threads for each of a local run's workers: the cores shared out between them
    (each worker's SentencePiece defaulting to all cores oversubscribes the machine: 2 workers
    ran slower than 1), or None (one worker, or a distributed runner: the default)."""
    workers = common.local_workers(options)
    return max(1, (os.cpu_count() or 1) // workers) if workers and workers > 1 else None


def build_text_pipeline(p: beam.Pipeline, cfg: TextPipelineConfig, inputs: list[str], tok, run_id: str | None = None,
                        graph: str = "auto", threads: int | str | None = "auto"):
    """The job (see :func:`~trimodal.pipelines.common.build_batched` for its two graphs);
    ``threads``: encode threads per worker (``auto``: :func:`encode_threads`; None: the
    tokenizer's default), a setting that changes speed, never the output."""
    sink = SinkConfig(root=cfg.out, modality="text", tokenizers={"text": tok.info()},
                      target_shard_bytes=cfg.target_shard_bytes, compression=cfg.compression,
                      val_fraction=cfg.val_fraction, run_id=run_id, config=cfg.recorded())
    reader = TextReader(cfg.format, cfg.source, cfg.text_field, cfg.id_field, cfg.txt_unit, max_bytes=cfg.max_record_bytes)
    step = TokenizeText(cfg.text_tokenizer, cfg.min_tokens, cfg.min_chars, cfg.max_chars,
                        threads=encode_threads(p.options) if threads == "auto" else threads)
    return common.build_batched(p, inputs, reader, step, sink, cfg.batch_size, label="Tokenize", graph=graph)


def txt_summary(cfg: TextPipelineConfig, show: int = 10) -> list[str]:
    """Lines for the run's summary: how many documents each plain-text input gave under
    ``txt_unit`` (and, with ``file``, how many paragraphs that one document holds), for the first
    ``show`` such files: ``--txt-unit file`` silently made a 300-paragraph file one document."""
    from trimodal.pipelines.text_readers import detect_format, txt_units

    if cfg.format not in ("auto", "txt"):
        return []
    urls = [u for u in storage.expand_inputs(cfg.inputs) if cfg.format == "txt" or detect_format(u) == "txt"]
    if not urls:
        return []
    lines = [f"  plain text, --txt-unit {cfg.txt_unit} (one document per {cfg.txt_unit}; see --help):"]
    for url in urls[:show]:
        docs, paragraphs = txt_units(url, cfg.txt_unit)
        extra = f" ({paragraphs:,} paragraph{'s' * (paragraphs != 1)})" if cfg.txt_unit == "file" else ""
        lines.append(f"    {url}: {docs:,} document{'s' * (docs != 1)}{extra}")
    if len(urls) > show:
        lines.append(f"    ... and {len(urls) - show:,} more plain-text file(s)")
    return lines


def run_text_pipeline(cfg: TextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs up front (clear error, nothing written), then run on the named runner."""
    inputs = storage.expand_inputs(cfg.inputs)
    tok = load_text_tokenizer(cfg.text_tokenizer)
    return common.run(lambda p, run_id: build_text_pipeline(p, cfg, inputs, tok, run_id), cfg.out, beam_args or [],
                      cfg.progress)


__all__ = ["EncodePairedText", "NormalizeText", "TextPipelineConfig", "TokenizeText", "build_text_pipeline",
           "load_text_tokenizer_shared", "normalize_text", "run_text_pipeline"]
