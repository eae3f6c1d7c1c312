"""Packed rows: segments from tokens alone, first-fit packing with a text filler, the packed
stream's mixture and resume, block-diagonal attention with restarting positions, and the loss of
a packed batch equal to the loss of the same samples unpacked (same t and masks)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from trimodal.shards.format import key_from_id
from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
from trimodal.shards.manifest import Manifest
from trimodal.shards.packing import MIN_FILL, RowPacker, pad_share_packed, segment_ids
from trimodal.shards.rows import layout_ids, paired_row
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.vocab import IMAGE, VocabLayout
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.objective import ObjectiveConfig, corrupt, score

LAYOUT = VocabLayout(text_codes=100, image_codes=64, audio_codes=32, audio_levels=2)
L = 48
TOK = {"text": {"kind": "test", "fingerprint": "t", "vocab_size": 100},
       "image": {"kind": "test", "fingerprint": "i", "vocab_size": 64},
       "audio": {"kind": "test", "fingerprint": "a", "vocab_size": 32, "levels": 2}}


def _image_segment(n_media: int, n_text: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    media = LAYOUT.to_global(IMAGE, rng.integers(0, 64, size=(1, n_media)))
    tokens, valid = paired_row(LAYOUT, "image_text", media, rng.integers(0, 100, n_text), 64)
    return tokens[: int(valid.sum())]


def test_segment_ids_follow_task_tokens_and_documents():
    a, b = _image_segment(6, 3), _image_segment(4, 2, 1)
    ids = layout_ids(LAYOUT)
    text = np.array([ids.task[0], ids.text_bos, 1, 2, ids.text_eos, ids.text_bos, 3, ids.text_eos])
    tokens = np.concatenate([a, b, text, [LAYOUT.pad] * 3])
    valid = tokens != LAYOUT.pad
    seg, pos = segment_ids(tokens, valid, LAYOUT)
    assert seg.tolist() == [0] * a.size + [1] * b.size + [2] * text.size + [-1] * 3
    assert pos[: a.size].tolist() == list(range(a.size)) and pos[a.size] == 0 and pos[-1] == 0
    seg_d, pos_d = segment_ids(tokens, valid, LAYOUT, documents=True)
    n = a.size + b.size
    assert seg_d[n : n + 8].tolist() == [2, 2, 2, 2, 2, 3, 3, 3]  # a new segment at the second BOS_text only
    assert pos_d[n + 5] == 0


def test_row_packer_first_fit_and_filler():
    p = RowPacker(LAYOUT, 20, lookahead=4)
    for n in (9, 12, 8):
        p.add(np.full(n, LAYOUT.task_token("image_text")))
    assert p.ready()
    tokens, valid = p.pop(None)
    assert valid.sum() == 17 and [len(s) for s in p.queue] == [12]  # 9 and 8 fit; 12 waits
    tokens, valid = p.pop(lambda room: np.arange(room) + 1)
    assert valid.all() and (tokens[12:] == np.arange(8) + 1).all()
    p.add(np.ones(20 - MIN_FILL + 1))
    tokens, valid = p.pop(lambda room: np.zeros(room))
    assert valid.sum() == 20 - MIN_FILL + 1  # room below MIN_FILL stays PAD
    with pytest.raises(ValueError, match="does not fit"):
        p.add(np.ones(21))


def _source(root, task, n, seed):
    rng = np.random.default_rng(seed)
    samples = []
    for j in range(n):
        rid = f"{task}-{j}"
        if task == "text":
            arrays = {"text": rng.integers(0, 100, size=rng.integers(5, 40)).astype(np.uint16)}
        else:
            arrays = {"image": rng.integers(0, 64, size=(2, rng.integers(3, 8))).astype(np.uint16),
                      "text": rng.integers(0, 100, size=rng.integers(1, 10)).astype(np.uint16)}
        samples.append((key_from_id(rid), {"id": rid, "modality": task}, arrays))
    samples.sort(key=lambda s: s[0])
    infos = [write_shard(str(root), shard_name(k, 2), samples[k::2]) for k in range(2)]
    Manifest(kind="tokenized", modality=task, tokenizers={k: TOK[k] for k in ("text", "image")} if task != "text"
             else {"text": TOK["text"]}, shards=infos).save(str(root))
    return samples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("pack")
    return {"text": str(base / "text"), "image": str(base / "image"),
            "raw_text": _source(base / "text", "text", 60, 0), "raw_image": _source(base / "image", "image_text", 80, 1)}


def _cfg(data, **kw):
    return LoaderConfig(sources=[SourceConfig(data["text"]), SourceConfig(data["image"])], seq_len=L, num_streams=2,
                        seed=3, **kw)


def test_packed_rows_keep_every_sample_and_cut_padding(data):
    plain = list(TrimodalDataset(_cfg(data, cycle=False), LAYOUT))
    packed = TrimodalDataset(_cfg(data, cycle=False, pack_paired=True), LAYOUT)
    rows_p = list(packed)
    # every image sample appears once, exactly as in its own unpacked row (without the PAD tail)
    unpacked = Counter(r["tokens"].numpy()[: int(r["valid"].sum())].tobytes() for r in plain if int(r["task"]) == 1)
    got = Counter()
    for r in rows_p:
        t, seg = r["tokens"].numpy(), r["segments"].numpy()
        for s in range(int(seg.max()) + 1):
            piece = t[seg == s]
            if piece[0] == LAYOUT.task_token("image_text"):
                got[piece.tobytes()] += 1
        assert (r["positions"].numpy()[seg >= 0] < L).all()
    assert got == unpacked
    pad_plain = sum(int((~r["valid"]).sum()) for r in plain) / (L * len(plain))
    c = packed.counters()
    pad_packed = c["pad_tokens"] / (L * len(rows_p))
    assert pad_plain > 0.4 and pad_packed < 0.1, (pad_plain, pad_packed)
    assert c["packed_rows"] > 0 and c["segments_image_text"] == sum(unpacked.values()) and c["filler_tokens"] > 0


def test_packed_stream_resumes_exactly(data):
    def take(it, n):
        return [next(it)["tokens"].clone() for _ in range(n)]

    ds = TrimodalDataset(_cfg(data, pack_paired=True), LAYOUT)
    it = iter(ds)
    first = take(it, 7)
    state = json.loads(json.dumps(ds.state_dict()))
    rest = take(it, 9)
    assert any(r.numel() for r in first) and any(int((r == LAYOUT.task_token("text")).sum()) > 0 for r in rest)
    again = TrimodalDataset(_cfg(data, pack_paired=True), LAYOUT)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(iter(again), 9), rest))
    unpacked = TrimodalDataset(_cfg(data), LAYOUT)
    with pytest.raises(ValueError, match="pack_paired"):
        unpacked.load_state_dict(state)
        iter(unpacked)


def test_attention_is_per_sample_and_positions_restart():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(max_seq_len=64), LAYOUT).eval()
    a, b = _image_segment(6, 3), _image_segment(5, 4, 2)
    row = torch.from_numpy(np.concatenate([a, b, [LAYOUT.pad] * (40 - a.size - b.size)]))[None]
    valid = row != LAYOUT.pad
    seg, pos = (torch.from_numpy(x)[None] for x in segment_ids(row[0].numpy(), valid[0].numpy(), LAYOUT))
    with torch.no_grad():
        packed = model(row, valid, seg, pos)
        alone_a = model(torch.from_numpy(a)[None], None)
        alone_b = model(torch.from_numpy(b)[None], None)
    assert torch.allclose(packed[0, : a.size], alone_a[0], atol=1e-5)
    assert torch.allclose(packed[0, a.size : a.size + b.size], alone_b[0], atol=1e-5)


def test_loss_of_a_packed_batch_equals_the_loss_of_the_same_samples_unpacked():
    torch.manual_seed(1)
    model = Transformer(ModelConfig.tiny(max_seq_len=64), LAYOUT)
    segs = [_image_segment(6, 3, 0), _image_segment(5, 4, 1), _image_segment(7, 2, 2)]
    t_seg = torch.tensor([0.3, 0.6, 0.9])
    g = torch.Generator().manual_seed(5)
    u_seg = [torch.rand(s.size, generator=g) for s in segs]
    cfg = ObjectiveConfig(z_loss=1e-3)
    # unpacked: one row per sample, right-padded to 24
    tok = torch.full((3, 24), LAYOUT.pad)
    u = torch.ones(3, 24)
    for i, s in enumerate(segs):
        tok[i, : s.size] = torch.from_numpy(s)
        u[i, : s.size] = u_seg[i]
    valid = tok != LAYOUT.pad
    mod = torch.from_numpy(layout_ids(LAYOUT).modality_lut[tok.numpy()])
    c = corrupt(tok, mod, valid, t_seg, LAYOUT, cfg, uniforms=u)
    ref = score(model, c, LAYOUT, cfg)
    # packed: all three in one row of 40
    ptok = torch.full((1, 48), LAYOUT.pad)
    flat = np.concatenate(segs)
    ptok[0, : flat.size] = torch.from_numpy(flat)
    pvalid = ptok != LAYOUT.pad
    seg, pos = (torch.from_numpy(x)[None] for x in segment_ids(ptok[0].numpy(), pvalid[0].numpy(), LAYOUT))
    pu = torch.ones(1, 48)
    pu[0, : flat.size] = torch.cat(u_seg)
    t_pos = torch.where(seg >= 0, t_seg[seg.clamp(min=0)], torch.ones_like(seg, dtype=torch.float32))
    pmod = torch.from_numpy(layout_ids(LAYOUT).modality_lut[ptok.numpy()])
    pc = corrupt(ptok, pmod, pvalid, t_pos, LAYOUT, cfg, uniforms=pu, segments=seg, positions=pos)
    got = score(model, pc, LAYOUT, cfg)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert torch.allclose(got.weighted_sum, ref.weighted_sum, rtol=1e-5)
    got.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_stats_padding_with_packing():
    lengths = np.array([30] * 40 + [12] * 40)
    pad, slots = pad_share_packed(lengths, 48, text_available=True)
    pad_no_text, _ = pad_share_packed(lengths, 48, text_available=False)
    assert pad / slots < 0.1 and pad_no_text > pad and slots % 48 == 0
