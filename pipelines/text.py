"""``trimodal pipeline text``: a text corpus → tokenized WebDataset shards.

read (JSONL / Parquet / plain text) → normalise + filter → batched encode (SentencePiece or
tiktoken; the model loaded once per worker process) → shards + dead-letter + manifest.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.utils import shared

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import common
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, count, dead_letter
from trimodal.pipelines.records import Record, filtered
from trimodal.pipelines.sink import SinkConfig, make_sample
from trimodal.pipelines.text_readers import FORMATS, TXT_UNITS, TextReader
from trimodal.tokenizers.registry import load_text_tokenizer


@dataclass
class TextPipelineConfig(common.PipelineConfig):
    format: str = option("auto", help=f"input format: {', '.join(FORMATS)}")
    text_field: str = option("text", help="JSON/Parquet field holding the document")
    id_field: str | None = option(None, help="JSON/Parquet field holding a stable id (default: file:line)")
    txt_unit: str = option("file", help=f"plain text: one document per {', '.join(TXT_UNITS)}")
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
    """NFC, unified newlines, outer whitespace stripped; inner whitespace is content."""
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


class TokenizeText(beam.DoFn):
    """A batch of records → one tokenized sample each (or a dead letter)."""

    stage = "tokenize"

    def __init__(self, tokenizer_path: str, min_tokens: int):
        self.tokenizer_path = tokenizer_path
        self.min_tokens = min_tokens

    def setup(self) -> None:
        self.tok = load_text_tokenizer_shared(self.tokenizer_path)

    def process(self, batch: list[Record]):
        ids = self.tok.encode([r.text for r in batch])
        for record, codes in zip(batch, ids):
            if codes.size < self.min_tokens:
                yield dead_letter(record, filtered("too_few_tokens", f"{codes.size} < {self.min_tokens}"), self.stage)
                continue
            count(self.stage, "ok")
            yield make_sample(record, "text", {"text": int(codes.size), "chars": len(record.text)}, {"text": codes})


class _Tokenize(beam.PTransform):
    def __init__(self, cfg: TextPipelineConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        return (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.cfg.batch_size)
            | "Encode" >> beam.ParDo(TokenizeText(self.cfg.text_tokenizer, self.cfg.min_tokens)).with_outputs(
                FILTERED, REJECTED, main="ok")
        )


def build_text_pipeline(p: beam.Pipeline, cfg: TextPipelineConfig, inputs: list[str], tok, run_id: str | None = None):
    sink = SinkConfig(root=cfg.out, modality="text", tokenizers={"text": tok.info()},
                      target_shard_bytes=cfg.target_shard_bytes, compression=cfg.compression,
                      val_fraction=cfg.val_fraction, run_id=run_id, config=cfg.recorded())
    reader = TextReader(cfg.format, cfg.source, cfg.text_field, cfg.id_field, cfg.txt_unit, max_bytes=cfg.max_record_bytes)
    return common.build(p, inputs, reader, steps=[("Normalize", NormalizeText(cfg.min_chars, cfg.max_chars))], sink=sink,
                        batch_step=("Tokenize", _Tokenize(cfg)))


def run_text_pipeline(cfg: TextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs up front (clear error, nothing written), then run on the named runner."""
    inputs = storage.expand_inputs(cfg.inputs)
    tok = load_text_tokenizer(cfg.text_tokenizer)
    return common.run(lambda p, run_id: build_text_pipeline(p, cfg, inputs, tok, run_id), cfg.out, beam_args or [],
                      cfg.progress)


__all__ = ["EncodePairedText", "NormalizeText", "TextPipelineConfig", "TokenizeText", "build_text_pipeline",
           "load_text_tokenizer_shared", "normalize_text", "run_text_pipeline"]
