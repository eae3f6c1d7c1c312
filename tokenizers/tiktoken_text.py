"""tiktoken BPE text tokenizer (the paper's ~100k cl100k_base), loaded from a local rank file only.

tiktoken's own ``get_encoding`` downloads its rank file on first use; pipelines and Beam workers
run offline, so this module never calls tiktoken's loader. It reads a ``.tiktoken`` rank file
(lines ``base64(token_bytes) rank``) itself, from either

* a path (any fsspec URL): ``from_path("/data/cl100k_base.tiktoken")``; a file named after a
  known encoding (``cl100k_base.tiktoken``) gets that encoding's split pattern and special tokens,
  any other name gets cl100k_base's pattern and no special tokens unless ``pat_str`` /
  ``special_tokens`` are given; or
* a name: ``from_path("cl100k_base")`` / ``from_path("tiktoken:cl100k_base")``, resolved in
  tiktoken's cache folder (``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else
  ``<tmp>/data-gym-cache``) under tiktoken's cache name (sha1 of the download URL) or as
  ``<name>.tiktoken``. A missing file is a ``FileNotFoundError`` saying where to get it.

Ids are the encoding's own token ids (``vocab_size`` = ``n_vocab`` = max id + 1, so for
cl100k_base 100,277 including its special tokens' ids); BOS/EOS/MASK/PAD are added by the
:class:`~trimodal.tokenizers.vocab.VocabLayout`. Text is encoded with ``encode_ordinary``: a
literal ``<|endoftext|>`` in the data is ordinary text, never a control token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tiktoken

from trimodal import storage
from trimodal.tokenizers.base import TokenizerInfo, fingerprint_of

__all__ = ["KNOWN_ENCODINGS", "KnownEncoding", "TiktokenTokenizer", "cache_dir", "cache_key", "is_tiktoken_spec",
           "parse_rank_file"]

PREFIX = "tiktoken:"

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14.0); a test checks them against the
# installed package. Copied rather than imported: its constructors download the rank files.
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
DEFAULT_PAT_STR = _CL100K_PAT
_BLOB = "https://openaipublic.blob.core.windows.net/encodings"


@dataclass(frozen=True)
class KnownEncoding:
    """What tiktoken knows about a published encoding, minus the ranks (those come from the file)."""

    name: str
    url: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int] = field(default_factory=dict)
    explicit_n_vocab: int | None = None


KNOWN_ENCODINGS: dict[str, KnownEncoding] = {
    e.name: e
    for e in (
        KnownEncoding("r50k_base", f"{_BLOB}/r50k_base.tiktoken",
                      "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
                      _R50K_PAT, {ENDOFTEXT: 50256}, 50257),
        KnownEncoding("p50k_base", f"{_BLOB}/p50k_base.tiktoken",
                      "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
                      _R50K_PAT, {ENDOFTEXT: 50256}, 50281),
        KnownEncoding("cl100k_base", f"{_BLOB}/cl100k_base.tiktoken",
                      "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
                      _CL100K_PAT,
                      {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260,
                       ENDOFPROMPT: 100276}),
        KnownEncoding("o200k_base", f"{_BLOB}/o200k_base.tiktoken",
                      "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
                      _O200K_PAT, {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}),
    )
}


def is_tiktoken_spec(spec: str) -> bool:
    """Whether a ``--text-tokenizer`` value means this tokenizer (else it is a SentencePiece model)."""
    return spec.startswith(PREFIX) or spec in KNOWN_ENCODINGS or spec.endswith(".tiktoken")


def cache_dir() -> str | None:
    """tiktoken's cache folder, in tiktoken's order; ``None`` when caching is disabled (``""``)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        d = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        d = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        d = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return d or None


def cache_key(url: str) -> str:
    """The file name tiktoken caches ``url`` under (``tiktoken.load.read_file_cached``)."""
    return hashlib.sha1(url.encode()).hexdigest()


def parse_rank_file(data: bytes, source: str = "<bytes>") -> dict[bytes, int]:
    """``base64(token) rank`` lines → ``{token: rank}``; a bad line is a ``ValueError`` naming its
    line number (tiktoken's parser names only the line's text). Blank lines are skipped."""
    ranks: dict[bytes, int] = {}
    seen: dict[int, int] = {}  # rank -> line number
    b64 = base64.b64decode
    for lineno, line in enumerate(data.splitlines(), start=1):
        parts = line.split()
        if len(parts) == 2:
            try:
                token, rank = b64(parts[0], validate=True), (int(parts[1]) if parts[1].isdigit() else -1)
            except (binascii.Error, ValueError):
                token, rank = b"", -1
            if token and rank >= 0 and token not in ranks and rank not in seen:
                ranks[token] = rank
                seen[rank] = lineno
                continue
        elif not parts:
            continue
        raise ValueError(f"{source}: line {lineno}: {_line_problem(parts, ranks, seen)}: {line[:80]!r}")
    if not ranks:
        raise ValueError(f"{source}: no tokens (empty rank file)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of the 256 single bytes have no rank (first: {missing[:8]}); "
            "byte-level BPE needs all of them to encode arbitrary text"
        )
    return ranks


def _line_problem(parts: list[bytes], ranks: dict[bytes, int], seen: dict[int, int]) -> str:
    """Why a rank-file line was refused (worked out only once a line fails, to keep parsing fast)."""
    if len(parts) != 2:
        return f"expected 'base64_token rank', found {len(parts)} fields"
    try:
        token = base64.b64decode(parts[0], validate=True)
    except (binascii.Error, ValueError):
        return "token is not valid base64"
    if not parts[1].isdigit():
        return "rank is not a non-negative integer"
    rank = int(parts[1])
    if not token:
        return "empty token"
    if token in ranks:
        return f"token repeats the one with rank {ranks[token]}"
    return f"rank {rank} already used on line {seen[rank]}"


def _missing_named(name: str, known: KnownEncoding, looked: list[str]) -> FileNotFoundError:
    where = "\n  ".join(looked) if looked else "(nowhere: TIKTOKEN_CACHE_DIR is set to '', which disables the cache)"
    return FileNotFoundError(
        f"tiktoken encoding {name!r} is not available offline (nothing is downloaded at run time). Looked for:\n  "
        f"{where}\n"
        f"Get the rank file on a machine with internet access:\n"
        f"  curl -fL -o {name}.tiktoken {known.url}\n"
        f"  (sha256 {known.sha256})\n"
        f"then either pass its path (--text-tokenizer /path/to/{name}.tiktoken) or copy it into a folder as "
        f"'{cache_key(known.url)}' (tiktoken's cache name) or '{name}.tiktoken' and set TIKTOKEN_CACHE_DIR to "
        f"that folder."
    )


class TiktokenTokenizer:
    """``encode(list[str]) -> list[np.ndarray]`` of local ids; ``decode(ids) -> str``.

    Same interface as :class:`~trimodal.tokenizers.text.TextTokenizer`; pickles as the rank file
    bytes + pattern + specials, so a pickled tokenizer needs no file or network. The pipelines
    pass workers the *path* instead (as for every tokenizer): each worker must reach the file, so
    on Dataflow give a ``gs://`` path to the ``.tiktoken`` file (or, for a named encoding, set
    ``TIKTOKEN_CACHE_DIR`` in the worker image).
    """

    kind = "tiktoken"

    def __init__(
        self,
        rank_data: bytes,
        name: str,
        pat_str: str = DEFAULT_PAT_STR,
        special_tokens: dict[str, int] | None = None,
        path: str | None = None,
        explicit_n_vocab: int | None = None,
        num_threads: int = 1,
    ):
        self._data = rank_data
        self.name = name
        self.pat_str = pat_str
        self.special_tokens = dict(special_tokens or {})
        self.path = path
        self.explicit_n_vocab = explicit_n_vocab
        self.num_threads = num_threads
        source = path or name
        ranks = parse_rank_file(rank_data, source)
        ids = set(ranks.values())
        clash = sorted((t, i) for t, i in self.special_tokens.items() if i in ids or i < 0)
        if clash:
            raise ValueError(f"{source}: special token ids clash with token ranks or are negative: {clash}")
        try:
            self._enc = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks,
                                          special_tokens=self.special_tokens, explicit_n_vocab=explicit_n_vocab)
        except AssertionError:
            raise ValueError(
                f"{source}: {len(ranks)} tokens + {len(self.special_tokens)} specials (max id "
                f"{max([*ids, *self.special_tokens.values()])}) do not make the {explicit_n_vocab} ids "
                f"encoding {name!r} has; is this the right file?"
            ) from None
        except ValueError as e:  # the Rust core rejects a bad regex
            raise ValueError(f"{source}: tiktoken rejected the encoding: {e}") from None
        self._dtype = np.uint16 if self._enc.n_vocab <= 65536 else np.uint32

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def from_path(
        cls,
        spec: str,
        pat_str: str | None = None,
        special_tokens: dict[str, int] | None = None,
        verify_hash: bool = True,
        num_threads: int = 1,
    ) -> "TiktokenTokenizer":
        """A ``.tiktoken`` path/URL, or a known name (``cl100k_base``, ``tiktoken:o200k_base``).

        ``pat_str`` / ``special_tokens`` override what the encoding name implies (for a file of
        unknown name: cl100k_base's pattern, no specials). A named encoding found in the cache must
        have the published sha256 unless ``verify_hash=False``; explicit paths are not checked.
        """
        target = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
        if target in KNOWN_ENCODINGS:
            known = KNOWN_ENCODINGS[target]
            data, found = cls._read_cached(target, known)
            if verify_hash and hashlib.sha256(data).hexdigest() != known.sha256:
                raise ValueError(
                    f"{found} is not the published {target} rank file (sha256 "
                    f"{hashlib.sha256(data).hexdigest()}, expected {known.sha256}); it may be truncated or "
                    f"another encoding. Download it again from {known.url}, or pass verify_hash=False to use it anyway."
                )
            return cls._build(data, known.name, known, pat_str, special_tokens, f"{PREFIX}{target}", num_threads)
        if spec.startswith(PREFIX) and "/" not in target and not target.endswith(".tiktoken"):
            raise ValueError(f"unknown tiktoken encoding {target!r}; known: {sorted(KNOWN_ENCODINGS)} "
                             "(or give a path to a .tiktoken file)")
        try:
            data = storage.read_bytes(target)
        except (FileNotFoundError, IsADirectoryError):
            name = _stem(target)
            hint = ""
            if name in KNOWN_ENCODINGS:
                hint = f"; download it from {KNOWN_ENCODINGS[name].url} (nothing is downloaded at run time)"
            raise FileNotFoundError(f"tiktoken rank file not found: {target}{hint}") from None
        name = _stem(target)
        return cls._build(data, name, KNOWN_ENCODINGS.get(name), pat_str, special_tokens, storage.absolute(target),
                          num_threads)

    @classmethod
    def _read_cached(cls, name: str, known: KnownEncoding) -> tuple[bytes, str]:
        folder = cache_dir()
        looked = [] if folder is None else [os.path.join(folder, cache_key(known.url)),
                                            os.path.join(folder, f"{name}.tiktoken")]
        for candidate in looked:
            try:
                return storage.read_bytes(candidate), candidate
            except (FileNotFoundError, IsADirectoryError):
                continue
        raise _missing_named(name, known, looked)

    @classmethod
    def _build(cls, data: bytes, name: str, known: KnownEncoding | None, pat_str: str | None,
               special_tokens: dict[str, int] | None, path: str, num_threads: int) -> "TiktokenTokenizer":
        pat = pat_str if pat_str is not None else (known.pat_str if known else DEFAULT_PAT_STR)
        specials = special_tokens if special_tokens is not None else (dict(known.special_tokens) if known else {})
        # explicit_n_vocab is tiktoken's completeness check; only meaningful with the published specials.
        n = known.explicit_n_vocab if known and special_tokens is None else None
        return cls(data, name, pat, specials, path=path, explicit_n_vocab=n, num_threads=num_threads)

    @classmethod
    def from_info(cls, info: TokenizerInfo) -> "TiktokenTokenizer":
        """Reload what :meth:`info` recorded (path + pattern + specials); the fingerprint must match."""
        if info.kind != cls.kind or not info.path:
            raise ValueError(f"not a tiktoken tokenizer record with a path: {info}")
        tok = cls.from_path(info.path, pat_str=info.extra.get("pat_str"),
                            special_tokens=info.extra.get("special_tokens"), verify_hash=False)
        if tok.fingerprint != info.fingerprint:
            raise ValueError(f"{info.path} has fingerprint {tok.fingerprint}, the record says {info.fingerprint}: "
                             "this file would give other ids")
        return tok

    # Pickling sends the rank file bytes, so Beam workers rebuild the Encoding themselves.
    def __getstate__(self) -> dict[str, Any]:
        return {"data": self._data, "name": self.name, "pat_str": self.pat_str, "special_tokens": self.special_tokens,
                "path": self.path, "explicit_n_vocab": self.explicit_n_vocab, "num_threads": self.num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"], state["name"], state["pat_str"], state["special_tokens"], state["path"],
                      state["explicit_n_vocab"], state["num_threads"])

    # ---- properties ---------------------------------------------------------------------
    @property
    def encoding(self) -> tiktoken.Encoding:
        return self._enc

    @property
    def vocab_size(self) -> int:
        """``n_vocab`` (max id + 1): the encoding's own specials' ids are counted, never emitted."""
        return self._enc.n_vocab

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._data, self.pat_str, {"kind": self.kind, "special_tokens": self.special_tokens})

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._data).hexdigest()

    @property
    def dtype(self) -> type:
        return self._dtype

    # ---- encode / decode ----------------------------------------------------------------
    def encode(self, batch: Sequence[str]) -> list[np.ndarray]:
        texts = list(batch)
        if self.num_threads > 1 and len(texts) > 1:
            ids = self._enc.encode_ordinary_batch(texts, num_threads=self.num_threads)
        else:
            ids = [self._enc.encode_ordinary(t) for t in texts]
        return [np.asarray(x, dtype=self._dtype) for x in ids]

    def encode_one(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), dtype=self._dtype)

    def decode(self, codes: np.ndarray | Sequence[int]) -> str:
        """Local ids → text (invalid UTF-8 at a cut becomes U+FFFD); unknown ids are a ValueError."""
        ids = [int(c) for c in np.asarray(codes).reshape(-1)]
        try:
            return self._enc.decode(ids)
        except (KeyError, OverflowError):
            bad = sorted({i for i in ids if not 0 <= i < self.vocab_size or not self._is_token(i)})
            raise ValueError(f"ids are not tokens of {self.name!r} (n_vocab {self.vocab_size}): {bad[:10]}") from None

    def _is_token(self, i: int) -> bool:
        try:
            self._enc.decode_single_token_bytes(i)
            return True
        except KeyError:
            return False

    def info(self) -> TokenizerInfo:
        return TokenizerInfo(
            modality="text", kind=self.kind, fingerprint=self.fingerprint, vocab_size=self.vocab_size, path=self.path,
            extra={"encoding": self.name, "sha256": self.sha256, "pat_str": self.pat_str,
                   "special_tokens": dict(self.special_tokens)},
        )

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.name!r}, vocab_size={self.vocab_size}, path={self.path!r})"


def _stem(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".tiktoken")] if base.endswith(".tiktoken") else base
