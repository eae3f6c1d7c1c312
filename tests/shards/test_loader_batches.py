"""RowLoader batches (light rows written into one [B, L] batch, make-up known from the packer)
are the dataset's rows stacked; counters and segments from the make-up are those the tokens give;
a bad id in a shard column raises what the per-sample check raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trimodal.shards.format import key_from_id
from trimodal.shards.loader import LoaderConfig, RowLoader, SourceConfig, TrimodalDataset
from trimodal.shards.manifest import Manifest
from trimodal.shards.packing import segment_ids
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, VocabLayout

LAYOUT = VocabLayout(text_codes=100, image_codes=64, audio_codes=32, audio_levels=2)
L = 48
TOK = {"text": {"kind": "test", "fingerprint": "t", "vocab_size": 100},
       "image": {"kind": "test", "fingerprint": "i", "vocab_size": 64}}


def _source(root, task, n, seed, bad: int | None = None):
    rng = np.random.default_rng(seed)
    samples = []
    for j in range(n):
        rid = f"{task}-{j}"
        if task == "text":
            arrays = {"text": rng.integers(0, 100, size=rng.integers(5, 40)).astype(np.uint16)}
            if j == bad:
                arrays["text"][0] = 100
        else:
            arrays = {"image": rng.integers(0, 64, size=(2, rng.integers(3, 8))).astype(np.uint16),
                      "text": rng.integers(0, 100, size=rng.integers(1, 10)).astype(np.uint16)}
        samples.append((key_from_id(rid), {"id": rid, "modality": task}, arrays))
    samples.sort(key=lambda s: s[0])
    infos = [write_shard(str(root), shard_name(k, 2), samples[k::2]) for k in range(2)]
    Manifest(kind="tokenized", modality=task, tokenizers={k: TOK[k] for k in ("text", "image")} if task != "text"
             else {"text": TOK["text"]}, shards=infos).save(str(root))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("batches")
    _source(base / "text", "text", 50, 0)
    _source(base / "image", "image_text", 60, 1)
    return [str(base / "text"), str(base / "image")]


def _cfg(roots, **kw):
    return LoaderConfig(sources=[SourceConfig(r) for r in roots], seq_len=L, num_streams=2, seed=5, cycle=False, **kw)


@pytest.mark.parametrize("kw", [{}, {"pack_paired": True}, {"pack_paired": True, "document_attention": True}])
def test_batches_are_the_rows_stacked(roots, kw):
    rows = list(TrimodalDataset(_cfg(roots, **kw), LAYOUT))
    batches = list(RowLoader(TrimodalDataset(_cfg(roots, **kw), LAYOUT), batch_size=4).dl)
    assert sum(b["tokens"].shape[0] for b in batches) == len(rows) > 8
    for k in rows[0]:
        stacked = torch.cat([b[k] for b in batches])
        assert stacked.dtype == rows[0][k].dtype and torch.equal(stacked, torch.stack([r[k] for r in rows])), k


@pytest.mark.parametrize("pack", [False, True])
def test_counters_and_segments_from_make_up_match_the_tokens(roots, pack):
    ds = TrimodalDataset(_cfg(roots, pack_paired=pack), LAYOUT)
    rows = list(ds)
    c = ds.counters()
    mod = torch.stack([r["modality"] for r in rows])
    valid = torch.stack([r["valid"] for r in rows])
    assert c["tokens_image"] == int((mod == IMAGE).sum()) and c["tokens_audio"] == int((mod == AUDIO).sum())
    assert c["tokens_task"] == int((mod == TASK).sum()) and c["pad_tokens"] == int((~valid).sum())
    assert c["tokens_text"] == int(((mod == 0) & valid).sum())
    if pack:
        for r in rows:
            seg, pos = segment_ids(r["tokens"].numpy(), r["valid"].numpy(), LAYOUT)
            assert np.array_equal(seg, r["segments"].numpy()) and np.array_equal(pos, r["positions"].numpy())


def test_resumed_packed_rows_count_and_segment_alike(roots):
    """Segments restored from a state carry no make-up: their rows are read from the tokens."""
    ds = TrimodalDataset(_cfg(roots, pack_paired=True), LAYOUT)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = ds.state_dict()
    rest = list(it)
    again = TrimodalDataset(_cfg(roots, pack_paired=True), LAYOUT)
    again.load_state_dict(state)
    batches = list(RowLoader(again, batch_size=3).dl)
    for k in rest[0]:
        assert torch.equal(torch.cat([b[k] for b in batches]), torch.stack([r[k] for r in rest])), k
    assert again.counters() == ds.counters()


def test_bad_text_id_in_a_column_raises_the_range_error(tmp_path):
    _source(tmp_path / "bad", "text", 30, 2, bad=17)
    with pytest.raises(ValueError, match=r"text code out of range \[0, 100\)"):
        list(TrimodalDataset(_cfg([str(tmp_path / "bad")]), LAYOUT))

