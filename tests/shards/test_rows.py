import numpy as np
import pytest
import torch

from trimodal.shards.rows import (
    PAIRED_FRAMING, RowTooLong, TextPacker, framed_tokens, layout_ids, paired_length, paired_row, row_dict, text_rows,
)
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TEXT, VocabLayout

LAYOUT = VocabLayout(text_codes=100, image_codes=64, audio_codes=32, audio_levels=2)
# text 0..99, BOS 100, EOS 101, MASK 102, PAD 103; image 104..167, BOS 168, EOS 169, MASK 170;
# audio 171..202, BOS 203, EOS 204, MASK 205; tasks 206 207 208
T_BOS, T_EOS, PAD = 100, 101, 103
I_OFF, I_BOS, I_EOS = 104, 168, 169
A_OFF, A_BOS, A_EOS = 171, 203, 204
TASK_TEXT, TASK_IMAGE, TASK_AUDIO = 206, 207, 208


def test_layout_constants():
    assert (LAYOUT.text.bos, LAYOUT.text.eos, LAYOUT.pad) == (T_BOS, T_EOS, PAD)
    assert (LAYOUT.image.offset, LAYOUT.image.bos, LAYOUT.image.eos) == (I_OFF, I_BOS, I_EOS)
    assert (LAYOUT.audio.offset, LAYOUT.audio.bos, LAYOUT.audio.eos) == (A_OFF, A_BOS, A_EOS)
    assert [LAYOUT.task_token(t) for t in ("text", "image_text", "audio_text")] == [TASK_TEXT, TASK_IMAGE, TASK_AUDIO]


def test_paired_image_row_exact():
    grid = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    media = LAYOUT.to_global(IMAGE, grid)
    tokens, valid = paired_row(LAYOUT, "image_text", media, np.array([7, 8, 9], dtype=np.uint16), 16)
    expected = [TASK_IMAGE, I_BOS, I_OFF + 1, I_OFF + 2, I_OFF + 3, I_OFF + 4, I_EOS, T_BOS, 7, 8, 9, T_EOS]
    expected += [PAD] * (16 - len(expected))
    assert tokens.dtype == np.int64 and valid.dtype == bool
    assert tokens.tolist() == expected
    assert valid.tolist() == [True] * 12 + [False] * 4


def test_paired_audio_row_frame_major():
    codes = np.array([[1, 2, 3], [10, 11, 12]], dtype=np.uint16)  # (levels, frames)
    media = LAYOUT.to_global(AUDIO, codes)
    tokens, valid = paired_row(LAYOUT, "audio_text", media, np.array([5], dtype=np.uint32), 14)
    frames = [A_OFF + 1, A_OFF + 10, A_OFF + 2, A_OFF + 11, A_OFF + 3, A_OFF + 12]
    assert tokens.tolist() == [TASK_AUDIO, A_BOS, *frames, A_EOS, T_BOS, 5, T_EOS, PAD, PAD]
    assert valid.sum() == 12


def test_paired_row_truncates_text_keeps_framing():
    media = LAYOUT.to_global(IMAGE, np.array([[1, 2]]))
    text = np.arange(10, 20)
    tokens, valid = paired_row(LAYOUT, "image_text", media, text, 10)
    # 5 media positions, then BOS_text, 3 text tokens, EOS_text
    assert tokens.tolist() == [TASK_IMAGE, I_BOS, I_OFF + 1, I_OFF + 2, I_EOS, T_BOS, 10, 11, 12, T_EOS]
    assert valid.all()
    # empty text still gets its framing
    tokens, valid = paired_row(LAYOUT, "image_text", media, np.zeros(0, np.uint16), 8)
    assert tokens.tolist() == [TASK_IMAGE, I_BOS, I_OFF + 1, I_OFF + 2, I_EOS, T_BOS, T_EOS, PAD]


def test_paired_row_too_long():
    media = LAYOUT.to_global(IMAGE, np.zeros((2, 2), np.uint16))
    tokens, _ = paired_row(LAYOUT, "image_text", media, np.arange(5), 9)  # exactly the framing
    assert tokens.tolist()[-2:] == [T_BOS, T_EOS]
    with pytest.raises(RowTooLong):
        paired_row(LAYOUT, "image_text", media, np.arange(5), 8)
    with pytest.raises(ValueError):
        paired_row(LAYOUT, "text", media, np.arange(5), 32)
    with pytest.raises(ValueError):  # text id outside the text block
        paired_row(LAYOUT, "image_text", media, np.array([100]), 32)


def test_text_packer_hand_example():
    p = TextPacker(LAYOUT, 6)
    rows = list(p.rows([np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8])]))
    # stream: B 1 2 3 E B 4 E B 5 6 7 8 E  (14 tokens) -> rows of 5 stream tokens
    assert [r.tolist() for r in rows] == [
        [TASK_TEXT, T_BOS, 1, 2, 3, T_EOS],
        [TASK_TEXT, T_BOS, 4, T_EOS, T_BOS, 5],
    ]
    assert p.pending == 4 and not p.ready()
    assert p.state_dict() == {"pending": [6, 7, 8, T_EOS]}


def test_text_packer_every_document_once_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 100, size=rng.integers(0, 40)) for _ in range(200)]
    L = 17
    p = TextPacker(LAYOUT, L)
    rows = list(p.rows(docs))
    stream = np.concatenate([np.concatenate([[T_BOS], d, [T_EOS]]) for d in docs])
    assert all(r.shape == (L,) and r.dtype == np.int64 for r in rows)
    assert all(r[0] == TASK_TEXT for r in rows)
    body = np.concatenate([r[1:] for r in rows])
    assert not (body == PAD).any() and not (body == TASK_TEXT).any()
    assert len(rows) == stream.size // (L - 1)
    assert np.array_equal(body, stream[: body.size])
    assert p.state_dict()["pending"] == stream[body.size :].tolist()


def test_text_packer_state_roundtrip():
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 100, size=rng.integers(1, 30)) for _ in range(50)]
    a = TextPacker(LAYOUT, 12)
    first = list(a.rows(docs[:20]))
    state = a.state_dict()
    rest_a = [r.tolist() for r in a.rows(docs[20:])]
    b = TextPacker(LAYOUT, 12)
    b.load_state_dict(state)
    rest_b = [r.tolist() for r in b.rows(docs[20:])]
    assert first and rest_a == rest_b
    with pytest.raises(ValueError):
        TextPacker(LAYOUT, 12).pop()


def test_framing_arithmetic_matches_the_rows_built():
    media = LAYOUT.to_global(IMAGE, np.array([[1, 2]]))
    tokens, valid = paired_row(LAYOUT, "image_text", media, np.array([3, 4]), 20)
    assert int(valid.sum()) == paired_length(2, 2) == 2 + 2 + PAIRED_FRAMING
    docs = [np.arange(5), np.arange(3)]
    rows = list(TextPacker(LAYOUT, 6).rows(docs))
    assert len(rows) == framed_tokens(8, 2) // 5 == 2  # full rows; the packer keeps the rest pending
    assert text_rows(framed_tokens(8, 2), 6) == 3  # stats count the partial last row too


def test_modality_lookup_and_row_dict():
    media = LAYOUT.to_global(IMAGE, np.array([[1, 2]]))
    tokens, valid = paired_row(LAYOUT, "image_text", media, np.array([3]), 10)
    mod = layout_ids(LAYOUT).modality_lut[tokens]
    assert mod.dtype == np.int64
    assert mod.tolist() == [TASK, IMAGE, IMAGE, IMAGE, IMAGE, TEXT, TEXT, TEXT, TEXT, TEXT]
    d = row_dict(tokens, valid, mod, "image_text")
    assert d["tokens"].dtype == torch.int64 and d["modality"].dtype == torch.int64
    assert d["valid"].dtype == torch.bool and d["task"].dtype == torch.int64
    assert d["task"].shape == () and int(d["task"]) == 1
    assert d["tokens"].tolist() == tokens.tolist() and d["valid"].tolist() == valid.tolist()
