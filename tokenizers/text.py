"""SentencePiece text tokenizer: train a model on a corpus, or load any existing ``.model`` file.

The paper used tiktoken's ~100k BPE; here the vocabulary size is a training option. The
SentencePiece model carries its own ``<unk>``; BOS/EOS/MASK/PAD come from the vocabulary layout,
so the model is trained without its own BOS/EOS/PAD pieces (every id it emits is a content id).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from trimodal import storage
from trimodal.tokenizers.base import TokenizerInfo, fingerprint_of


class TextTokenizer:
    """``encode(list[str]) -> list[np.ndarray]`` of local ids; ``decode(ids) -> str``.
    ``encode_threads``: threads of a batch encode (None: SentencePiece's default, every core)."""

    def __init__(self, model_proto: bytes, path: str | None = None, encode_threads: int | None = None):
        self._proto = model_proto
        self.path = path
        self.encode_threads = encode_threads
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._dtype = np.uint16 if self._sp.get_piece_size() <= 65536 else np.uint32

    @classmethod
    def from_path(cls, path: str) -> "TextTokenizer":
        try:
            proto = storage.read_bytes(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"text tokenizer model not found: {path}") from None
        try:
            return cls(proto, path=path)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from None

    # Pickling sends the model bytes, so Beam workers rebuild the processor themselves.
    def __getstate__(self) -> dict[str, Any]:
        return {"proto": self._proto, "path": self.path, "encode_threads": self.encode_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["proto"], state["path"], state.get("encode_threads"))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._proto, {"kind": "sentencepiece"})

    @property
    def dtype(self) -> type:
        return self._dtype

    def encode(self, batch: Sequence[str]) -> list[np.ndarray]:
        if self.encode_threads is None:
            ids = self._sp.encode(list(batch), out_type=int)
        else:
            ids = self._sp.encode(list(batch), out_type=int, num_threads=self.encode_threads)
        return [np.asarray(x, dtype=self._dtype) for x in ids]

    def encode_one(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text, out_type=int), dtype=self._dtype)

    def decode(self, codes: np.ndarray | Sequence[int]) -> str:
        return self._sp.decode([int(c) for c in np.asarray(codes).reshape(-1)])

    def info(self) -> TokenizerInfo:
        return TokenizerInfo(modality="text", kind="sentencepiece", fingerprint=self.fingerprint,
                             vocab_size=self.vocab_size, path=storage.absolute(self.path) if self.path else None)


def train_text_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    max_sentence_length: int = 16384,
    seed_sentencepiece_size: int = 1_000_000,
    num_threads: int = 2,
) -> TextTokenizer:
    """Train SentencePiece on ``texts`` and write ``out_path`` atomically (any fsspec URL)."""
    if vocab_size < 8:
        raise ValueError(f"--vocab-size must be at least 8, got {vocab_size}")
    model = io.BytesIO()
    try:
        _train(texts, model, vocab_size, model_type, character_coverage, max_sentence_length, seed_sentencepiece_size,
               num_threads)
    except RuntimeError as e:
        if "Vocabulary size is smaller than required_chars" in str(e):
            raise ValueError(
                f"--vocab-size {vocab_size} is too small: byte fallback needs 256 byte pieces plus one per "
                f"character of the corpus ({str(e).rsplit('. ', 2)[-2]})"
            ) from None
        raise ValueError(f"SentencePiece training failed: {e}") from None
    data = model.getvalue()
    storage.write_atomic(out_path, data)
    return TextTokenizer(data, path=out_path)


def _train(texts, model, vocab_size, model_type, character_coverage, max_sentence_length, seed_sentencepiece_size,
           num_threads) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t for t in texts if t.strip()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        max_sentence_length=max_sentence_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        byte_fallback=True,
        num_threads=num_threads,
        hard_vocab_limit=False,
        minloglevel=2,
    )
