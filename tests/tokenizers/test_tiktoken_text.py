"""TiktokenTokenizer against a synthetic cl100k_base-shaped rank file built at test time.

The real cl100k_base.tiktoken (1.6 MB) is not committed and cannot be downloaded here, so the
fixture writes a file of exactly its shape: the 256 single bytes plus 100,000 multi-byte tokens
(ranks 0..100255), loaded with cl100k's pattern and specials, giving n_vocab 100,277. Every
comparison is against tiktoken's own Encoding built from the same file.
"""

from __future__ import annotations

import base64
import hashlib
import pickle
import random
import shutil

import numpy as np
import pytest
import regex
import tiktoken
import tiktoken.load

from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.tiktoken_text import (
    KNOWN_ENCODINGS,
    TiktokenTokenizer,
    cache_key,
    is_tiktoken_spec,
    parse_rank_file,
)
from trimodal.tokenizers.vocab import VocabLayout

CL100K_SPECIALS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
N_MERGEABLE = 100_256  # len(cl100k_base mergeable ranks): 256 bytes + 100,000 merges

SEED_TEXT = """
The quick brown fox jumps over the lazy dog. Masked diffusion models fill in the tokens that were
hidden, step by step, until the whole sequence is text, image codes or audio codes again.
Der schnelle braune Fuchs springt über den faulen Hund. Les modèles de diffusion masqués
remplissent les jetons cachés. Быстрая коричневая лиса прыгает через ленивую собаку.
敏捷的棕色狐狸跳过了懒狗。掩码扩散模型逐步填充被隐藏的词元。日本語のテキストも少し含めます。
الثعلب البني السريع يقفز فوق الكلب الكسول. हिंदी में भी कुछ पाठ है। 한국어 문장도 있습니다.
def encode(batch): return [tok(x) for x in batch]  # code, numbers 12345 67890 3.14159
Emoji 😀🚀🎉 and combining marks: é (e + U+0301), ñ, ü; tabs\tand\r\nnewlines.
"""

MULTILINGUAL = [
    "Hello, world! A masked diffusion model denoises tokens.",
    "Über Größe und Maß: straße, café, naïve — déjà vu.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们在三种模态上训练一个统一的掩码扩散模型。",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ",
    "مرحبا بالعالم، هذا اختبار للترميز.",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "다람쥐 헌 쳇바퀴에 타고파",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "emoji 👩‍👩‍👧‍👦 🇯🇵 🏳️‍🌈 mixed with ascii",
    "code:\n\tif x == 42:\n\t\treturn f'{x!r}'  # 1234567890\r\n",
    "   leading and trailing spaces   \n\n\n",
    "unseen bytes: \x00\x01\x7f and rare \U0001f9ec \u2028 chars",
    "",
]


def _cl100k_pat() -> str:
    return KNOWN_ENCODINGS["cl100k_base"].pat_str


def synthetic_ranks(n_total: int = N_MERGEABLE, seed: int = 0) -> dict[bytes, int]:
    """256 single bytes, then every byte prefix of the seed text's pre-tokens (so real words become
    whole tokens through a chain of merges), then random concatenations of two existing tokens
    (each reachable by one merge), until ``n_total`` distinct tokens."""
    tokens: list[bytes] = [bytes([b]) for b in range(256)]
    have = set(tokens)

    def add(t: bytes) -> None:
        if t not in have and len(tokens) < n_total:
            have.add(t)
            tokens.append(t)

    pieces = [p.encode() for p in regex.findall(_cl100k_pat(), SEED_TEXT)]
    for k in range(2, max(len(p) for p in pieces) + 1):
        for p in pieces:
            if len(p) >= k:
                add(p[:k])
    rng = random.Random(seed)
    while len(tokens) < n_total:
        a = tokens[int(len(tokens) * rng.random() ** 2)]  # favour early (frequent) tokens
        b = tokens[rng.randrange(min(len(tokens), 4096))]
        if len(a) + len(b) <= 16:
            add(a + b)
    return {t: i for i, t in enumerate(tokens)}


def rank_file_bytes(ranks: dict[bytes, int]) -> bytes:
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in ranks.items())


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any fetch through tiktoken's loader fails the test; local paths still read."""
    real = tiktoken.load.read_file

    def guarded(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"attempted download of {blobpath}")
        return real(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", guarded)


@pytest.fixture(scope="module")
def rank_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiktoken") / "cl100k_base.tiktoken"
    path.write_bytes(rank_file_bytes(synthetic_ranks()))
    return str(path)


@pytest.fixture(scope="module")
def tok(rank_file) -> TiktokenTokenizer:
    return TiktokenTokenizer.from_path(rank_file)


@pytest.fixture(scope="module")
def reference(rank_file) -> tiktoken.Encoding:
    """tiktoken's own Encoding from the same file, parsed by tiktoken's loader (cache disabled:
    on a local path it would otherwise write a copy into the cache folder)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", "")
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(rank_file)
    finally:
        mp.undo()
    return tiktoken.Encoding("reference", pat_str=_cl100k_pat(), mergeable_ranks=ranks, special_tokens=CL100K_SPECIALS)


def test_known_encodings_match_installed_tiktoken(monkeypatch):
    """Our copies of URL, hash, pattern and specials equal tiktoken_ext's (its loader stubbed)."""
    from tiktoken_ext import openai_public

    calls: list[tuple[str, str | None]] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        calls.append((url, expected_hash))
        return {b"a": 0}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    assert {"cl100k_base", "o200k_base", "p50k_base", "r50k_base"} <= set(KNOWN_ENCODINGS)
    for name, known in KNOWN_ENCODINGS.items():
        calls.clear()
        spec = openai_public.ENCODING_CONSTRUCTORS[name]()
        assert calls == [(known.url, known.sha256)], name
        assert spec["pat_str"] == known.pat_str, name
        assert spec["special_tokens"] == known.special_tokens, name
        assert spec.get("explicit_n_vocab") == known.explicit_n_vocab, name
    assert KNOWN_ENCODINGS["cl100k_base"].special_tokens == CL100K_SPECIALS


def test_synthetic_file_has_cl100k_shape(rank_file, tok, reference):
    ranks = parse_rank_file(open(rank_file, "rb").read())
    assert len(ranks) == N_MERGEABLE and sorted(ranks.values()) == list(range(N_MERGEABLE))
    assert ranks == reference._mergeable_ranks  # our parser agrees with tiktoken's
    assert tok.name == "cl100k_base" and tok.special_tokens == CL100K_SPECIALS
    assert tok.vocab_size == reference.n_vocab == 100_277
    assert tok.dtype == np.uint32


def test_ids_equal_tiktoken_and_round_trip(tok, reference):
    texts = MULTILINGUAL + [SEED_TEXT]
    ids = tok.encode(texts)
    for text, got in zip(texts, ids):
        assert isinstance(got, np.ndarray) and got.dtype == np.uint32
        assert got.tolist() == reference.encode_ordinary(text), text
        assert (tok.encode_one(text) == got).all()
        assert tok.decode(got) == text
        assert tok.decode(got.tolist()) == text
    # the BPE is usable: multi-byte tokens are produced, not only single bytes
    seed_ids = ids[-1]
    assert len(seed_ids) < len(SEED_TEXT.encode()) / 2 and int(seed_ids.max()) > 255
    threaded = TiktokenTokenizer(tok._data, tok.name, tok.pat_str, tok.special_tokens, num_threads=2)
    assert [x.tolist() for x in threaded.encode(texts)] == [x.tolist() for x in ids]


def test_special_token_text_is_ordinary_text(tok, reference):
    text = "before <|endoftext|> middle <|fim_prefix|><|endofprompt|> after"
    ids = tok.encode_one(text)
    assert not set(ids.tolist()) & set(CL100K_SPECIALS.values())
    assert 100257 not in tok.encode_one("<|endoftext|>").tolist()
    assert reference.encode("<|endoftext|>", allowed_special="all") == [100257]  # what we avoid
    assert tok.decode(ids) == text


def test_decode_rejects_ids_that_are_not_tokens(tok):
    with pytest.raises(ValueError, match=r"not tokens .*\[100256, 100261\]"):
        tok.decode([72, 100256, 100261])  # cl100k's unused gap ids
    with pytest.raises(ValueError, match="not tokens"):
        tok.decode([tok.vocab_size])
    assert tok.decode([100257]) == "<|endoftext|>"  # the encoding's own special still decodes


def test_named_encoding_resolves_through_tiktoken_cache_dir(tmp_path, monkeypatch, rank_file, tok):
    cache = tmp_path / "cache"
    cache.mkdir()
    url = KNOWN_ENCODINGS["cl100k_base"].url
    shutil.copy(rank_file, cache / cache_key(url))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    # the cache name is tiktoken's own: its cached reader finds the file without fetching
    assert tiktoken.load.read_file_cached(url) == open(rank_file, "rb").read()

    # the synthetic file is not the published one: refused unless asked
    with pytest.raises(ValueError, match="sha256"):
        TiktokenTokenizer.from_path("cl100k_base")
    for spec in ("cl100k_base", "tiktoken:cl100k_base"):
        named = TiktokenTokenizer.from_path(spec, verify_hash=False)
        assert named.path == "tiktoken:cl100k_base"
        assert named.vocab_size == 100_277 and named.fingerprint == tok.fingerprint
        assert (named.encode_one(MULTILINGUAL[0]) == tok.encode_one(MULTILINGUAL[0])).all()

    # a human-named copy in the cache folder is found too
    (cache / cache_key(url)).unlink()
    shutil.copy(rank_file, cache / "cl100k_base.tiktoken")
    assert TiktokenTokenizer.from_path("tiktoken:cl100k_base", verify_hash=False).fingerprint == tok.fingerprint


def test_missing_files_explain_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url = KNOWN_ENCODINGS["o200k_base"].url
    with pytest.raises(FileNotFoundError) as e:
        TiktokenTokenizer.from_path("o200k_base")
    msg = str(e.value)
    for part in (url, "TIKTOKEN_CACHE_DIR", "--text-tokenizer", cache_key(url), str(tmp_path), "nothing is downloaded"):
        assert part in msg, part
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(FileNotFoundError, match="disables the cache"):
        TiktokenTokenizer.from_path("tiktoken:cl100k_base")
    with pytest.raises(FileNotFoundError, match="not found.*cl100k_base.tiktoken"):
        TiktokenTokenizer.from_path(str(tmp_path / "cl100k_base.tiktoken"))
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        TiktokenTokenizer.from_path("tiktoken:nonexistent_base")


def _small_file(extra: bytes) -> bytes:
    return rank_file_bytes({bytes([b]): b for b in range(256)}) + extra


@pytest.mark.parametrize(
    "bad_line, why",
    [
        (b"not!base64 256", "not valid base64"),
        (b"YWI=", "found 1 fields"),
        (b"YWI= 256 extra", "found 3 fields"),
        (b"YWI= x7", "not a non-negative integer"),
        (b"YWI= -3", "not a non-negative integer"),
        (b"YQ== 256", "repeats the one with rank 97"),
        (b"YWI= 5", "rank 5 already used on line 6"),
    ],
)
def test_malformed_line_names_its_number(tmp_path, bad_line, why):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(_small_file(b"YWJj 300\n\n" + bad_line + b"\n"))
    with pytest.raises(ValueError, match=rf"bad\.tiktoken: line 259: .*{why}"):
        TiktokenTokenizer.from_path(str(path))


def test_rank_file_without_all_bytes_is_refused(tmp_path):
    path = tmp_path / "short.tiktoken"
    path.write_bytes(rank_file_bytes({bytes([b]): b for b in range(200)}))
    with pytest.raises(ValueError, match="56 of the 256 single bytes"):
        TiktokenTokenizer.from_path(str(path))


def test_unknown_name_defaults_and_options(tmp_path, rank_file, tok):
    path = tmp_path / "mine.tiktoken"
    shutil.copy(rank_file, path)
    plain = TiktokenTokenizer.from_path(str(path))
    assert plain.name == "mine" and plain.pat_str == KNOWN_ENCODINGS["cl100k_base"].pat_str
    assert plain.special_tokens == {} and plain.vocab_size == N_MERGEABLE
    assert plain.fingerprint != tok.fingerprint  # specials are part of what the ids mean
    same = TiktokenTokenizer.from_path(str(path), special_tokens=CL100K_SPECIALS)
    assert same.fingerprint == tok.fingerprint and same.vocab_size == 100_277
    other_pat = TiktokenTokenizer.from_path(str(path), pat_str=r"\S+|\s+")
    assert other_pat.fingerprint != plain.fingerprint
    assert other_pat.decode(other_pat.encode_one(MULTILINGUAL[3])) == MULTILINGUAL[3]
    with pytest.raises(ValueError, match="clash"):
        TiktokenTokenizer.from_path(str(path), special_tokens={"<|x|>": 300})


def test_pickle_rebuilds_without_the_file(tmp_path, rank_file):
    path = tmp_path / "cl100k_base.tiktoken"
    shutil.copy(rank_file, path)
    tok = TiktokenTokenizer.from_path(str(path))
    blob = pickle.dumps(tok)  # what Beam does to ship it to workers
    path.unlink()
    clone = pickle.loads(blob)
    assert clone.fingerprint == tok.fingerprint and clone.vocab_size == tok.vocab_size
    assert [x.tolist() for x in clone.encode(MULTILINGUAL)] == [x.tolist() for x in tok.encode(MULTILINGUAL)]


def test_info_records_enough_to_reload(tok, rank_file):
    info = tok.info()
    assert isinstance(info, TokenizerInfo)
    assert (info.modality, info.kind, info.vocab_size, info.path) == ("text", "tiktoken", 100_277, rank_file)
    assert info.fingerprint == tok.fingerprint and info.extra["encoding"] == "cl100k_base"
    assert info.extra["sha256"] == hashlib.sha256(open(rank_file, "rb").read()).hexdigest()
    again = TokenizerInfo.from_dict(info.to_dict())
    assert TiktokenTokenizer.from_info(again).fingerprint == tok.fingerprint


def test_vocabulary_is_117698_ids(tok):
    layout = VocabLayout(text_codes=tok.vocab_size, image_codes=16384, audio_codes=1024)
    assert layout.text.size == 100_281
    assert layout.vocab_size == 117_698


def test_spec_dispatch():
    for spec in ("cl100k_base", "tiktoken:o200k_base", "tiktoken:/m/x.bpe", "gs://b/cl100k_base.tiktoken"):
        assert is_tiktoken_spec(spec), spec
    for spec in ("/models/text.model", "s3://b/tok.model", "cl100k"):
        assert not is_tiktoken_spec(spec), spec


def test_a_relative_rank_file_is_recorded_absolute(rank_file, tmp_path, monkeypatch):
    """The manifest must resolve from any working directory (sample, show, export run elsewhere)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(rank_file, folder / "mine.tiktoken")
    monkeypatch.chdir(tmp_path)
    info = TiktokenTokenizer.from_path("tok/mine.tiktoken").info()
    assert info.path == str(folder / "mine.tiktoken")
    monkeypatch.chdir("/")
    assert TiktokenTokenizer.from_path(info.path).fingerprint == info.fingerprint


def test_the_sampler_decodes_tiktoken_text(tok, tmp_path):
    """A checkpoint whose text tokenizer is a tiktoken file: ``trimodal sample --task text``
    encodes the prompt and decodes the continuation through it."""
    from dataclasses import asdict

    import torch

    from trimodal.cli import main
    from trimodal.train import checkpoint as ckpt
    from trimodal.train.distributed import DistInfo
    from trimodal.train.model import ModelConfig, Transformer

    layout = VocabLayout(text_codes=tok.vocab_size, image_codes=16, audio_codes=16, audio_levels=1,
                         fingerprints={"text": tok.fingerprint})
    model_cfg = ModelConfig.tiny(max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(model_cfg, layout)
    state = {"layout": layout.to_dict(), "config": {"model": asdict(model_cfg), "data": {"seq_len": 64}},
             "tokenizers": {"text": tok.info().to_dict()}}
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", 1, model, torch.optim.AdamW(model.parameters()), state,
                         {"streams": {}}, DistInfo())
    out = tmp_path / "sample.txt"
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--task", "text", "--prompt", "numbers 12345",
                 "--length", "8", "--steps", "4", "--out", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert text.startswith("numbers 12345") and len(tok.encode_one(text)) > len(tok.encode_one("numbers 12345"))
