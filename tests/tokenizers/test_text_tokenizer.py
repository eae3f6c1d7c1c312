import pickle

import numpy as np
import pytest

from trimodal.tokenizers.text import TextTokenizer, train_text_tokenizer


def test_train_load_encode_decode_round_trip(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog", "a masked diffusion model fills in tokens"] * 50
    path = tmp_path / "t.model"
    tok = train_text_tokenizer(texts, 320, str(path))
    again = TextTokenizer.from_path(str(path))
    assert again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
    ids = again.encode(["the lazy fox", "café ünïcode 😀"])
    assert all(isinstance(x, np.ndarray) and x.dtype == np.uint16 for x in ids)
    assert again.decode(ids[0]) == "the lazy fox"
    assert again.decode(ids[1]) == "café ünïcode 😀"  # byte fallback: nothing becomes <unk>
    clone = pickle.loads(pickle.dumps(again))  # what Beam does to ship it to workers
    assert (clone.encode_one("the lazy fox") == ids[0]).all()
    # a batch encode on one thread (what a local multi-worker run sets) gives the same ids
    again.encode_threads = 1
    one = pickle.loads(pickle.dumps(again))
    assert one.encode_threads == 1
    batch = texts[:8] + ["the lazy fox", "café ünïcode 😀"]
    assert [x.tolist() for x in one.encode(batch)] == [x.tolist() for x in tok.encode(batch)]


def test_fingerprint_changes_with_the_model(tmp_path):
    a = train_text_tokenizer(["alpha beta gamma delta"] * 40, 300, str(tmp_path / "a.model"))
    b = train_text_tokenizer(["one two three four five"] * 40, 300, str(tmp_path / "b.model"))
    assert a.fingerprint != b.fingerprint
    with pytest.raises(ValueError, match="too small"):
        train_text_tokenizer(["one two three four five"] * 40, 64, str(tmp_path / "c.model"))
    assert not (tmp_path / "c.model").exists()


def test_missing_and_invalid_model_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextTokenizer.from_path(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        TextTokenizer.from_path(str(bad))
