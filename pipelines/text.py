"""``trimodal pipeline text``: a text corpus → tokenized WebDataset shards.

read (JSONL / Parquet / plain text) → normalise + filter → batched SentencePiece encode (model
loaded once per worker) → shards + dead-letter + manifest.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.utils import shared

from trimodal.pipelines import common
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Bad, Step, bad_output, count, filtered
from trimodal.pipelines.sink import SinkConfig, make_sample
from trimodal.pipelines.text_readers import read_text_file
from trimodal.tokenizers.text import TextTokenizer


@dataclass
class TextPipelineConfig:
    inputs: list[str]
    text_tokenizer: str
    out: str
    format: str = "auto"
    source: str = ""
    text_field: str = "text"
    id_field: str | None = None
    txt_unit: str = "file"
    min_chars: int = 1
    max_chars: int = 10_000_000
    min_tokens: int = 1
    batch_size: int = 256
    target_shard_bytes: int = 128 * 2**20
    compression: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


def normalize_text(text: str) -> str:
    """NFC, unified newlines, outer whitespace stripped; inner whitespace is content."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


class NormalizeText(Step):
    stage = "normalize"

    def __init__(self, min_chars: int, max_chars: int):
        self.min_chars, self.max_chars = min_chars, max_chars

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        text = normalize_text(record["text"])
        if not text:
            raise filtered("empty", "no characters after whitespace stripping")
        if len(text) < self.min_chars:
            raise filtered("too_short", f"{len(text)} < {self.min_chars} chars")
        if len(text) > self.max_chars:
            raise filtered("too_long", f"{len(text)} > {self.max_chars} chars")
        return {**record, "text": text}


class EncodePairedText(Step):
    """Normalise a caption or transcript (as documents are normalised) and encode it.

    Paired pipelines run it before decoding media, so a record without usable text costs no
    decode. ``field`` names the record's text (``caption``/``text``); an empty one is filtered
    as ``empty_<name>``, one over ``max_tokens`` as ``<name>_too_long``."""

    def __init__(self, tokenizer_path: str, field: str, name: str, max_tokens: int | None = None):
        self.tokenizer_path, self.field, self.name, self.max_tokens = tokenizer_path, field, name, max_tokens
        self.stage = name

    def setup(self) -> None:
        self.tok = load_text_tokenizer_shared(self.tokenizer_path)

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        text = normalize_text(record[self.field])
        if not text:
            raise filtered(f"empty_{self.name}", "no characters after whitespace stripping")
        ids = self.tok.encode_one(text)
        if self.max_tokens is not None and ids.size > self.max_tokens:
            raise filtered(f"{self.name}_too_long", f"{ids.size} > {self.max_tokens} tokens")
        return {**record, self.field: text, "text_ids": ids}


# One tokenizer per worker process, shared by the DoFn instances (threads) of that process.
_TOKENIZERS = shared.Shared()


class _TokenizerHolder:
    def __init__(self, tok: TextTokenizer):
        self.tok = tok


def load_text_tokenizer_shared(path: str) -> TextTokenizer:
    return _TOKENIZERS.acquire(lambda: _TokenizerHolder(TextTokenizer.from_path(path)), tag=f"text:{path}").tok


class TokenizeText(beam.DoFn):
    """A batch of records → one tokenized sample each (or a dead-letter record)."""

    stage = "tokenize"

    def __init__(self, tokenizer_path: str, min_tokens: int):
        self.tokenizer_path = tokenizer_path
        self.min_tokens = min_tokens

    def setup(self) -> None:
        self.tok = load_text_tokenizer_shared(self.tokenizer_path)

    def process(self, batch: list[dict[str, Any]]):
        ids = self.tok.encode([r["text"] for r in batch])
        for record, codes in zip(batch, ids):
            if codes.size < self.min_tokens:
                yield bad_output(record, filtered("too_few_tokens", f"{codes.size} < {self.min_tokens}"), self.stage)
                continue
            count(self.stage, "ok")
            yield make_sample(record, "text", {"text": int(codes.size), "chars": len(record["text"])},
                              {"text": codes})


class _Tokenize(beam.PTransform):
    def __init__(self, cfg: TextPipelineConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        return (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.cfg.batch_size)
            | "Encode" >> beam.ParDo(TokenizeText(self.cfg.text_tokenizer, self.cfg.min_tokens)).with_outputs(
                FILTERED, REJECTED, main="ok"
            )
        )


def build_text_pipeline(p: beam.Pipeline, cfg: TextPipelineConfig, inputs: list[str], tok: TextTokenizer):
    sink = SinkConfig(
        root=cfg.out,
        modality="text",
        tokenizers={"text": tok.info()},
        target_shard_bytes=cfg.target_shard_bytes,
        compression=cfg.compression,
        config={k: v for k, v in asdict(cfg).items() if k not in ("inputs", "out")},
    )
    reader = partial(
        read_text_file, fmt=cfg.format, source=cfg.source, text_field=cfg.text_field, id_field=cfg.id_field, txt_unit=cfg.txt_unit
    )
    return common.build(
        p,
        inputs,
        reader,
        steps=[("Normalize", NormalizeText(cfg.min_chars, cfg.max_chars))],
        sink=sink,
        batch_step=("Tokenize", _Tokenize(cfg)),
    )


def run_text_pipeline(cfg: TextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs up front (clear error, nothing written), then run on the named runner."""
    inputs = common.storage.expand_inputs(cfg.inputs)
    tok = TextTokenizer.from_path(cfg.text_tokenizer)
    return common.run(lambda p: build_text_pipeline(p, cfg, inputs, tok), cfg.out, beam_args or [])


__all__ = ["TextPipelineConfig", "run_text_pipeline", "build_text_pipeline", "NormalizeText", "TokenizeText", "Bad"]
