"""The synthetic tri-modal datasets: deterministic, split into train and val, readable by the
loader as rows of all three tasks, and with captions and transcripts that match their media."""

from __future__ import annotations

import numpy as np
import pytest

from trimodal.experiments import synthetic as syn
from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset, load_manifests, tokenizers_of
from trimodal.pipelines.sink import split_of
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples
from trimodal.tokenizers.vocab import VocabLayout


def _cfg(out, **kw) -> syn.SyntheticConfig:
    return syn.SyntheticConfig(out=str(out), text_docs=200, image_samples=60, audio_samples=60, val_fraction=0.2,
                               samples_per_shard=50, **kw)


def test_deterministic_with_both_splits(tmp_path):
    a, b = syn.write_synthetic(_cfg(tmp_path / "a")), syn.write_synthetic(_cfg(tmp_path / "b"))
    for task in syn.TASKS:
        ma, mb = Manifest.load(a[task]), Manifest.load(b[task])
        assert [s.sha256 for s in ma.shards] == [s.sha256 for s in mb.shards]
        assert ma.modality == task and ma.splits() == ["train", "val"]
        for split in ("train", "val"):  # every record in the split its id hashes to
            ids = [s["json"]["id"] for _, s in iter_samples(a[task], ma.split_shards(split))]
            assert ids and all(split_of(i, 0.2) == split for i in ids)
    other = syn.write_synthetic(_cfg(tmp_path / "c", seed=1))
    assert Manifest.load(other["text"]).shards[0].sha256 != Manifest.load(a["text"]).shards[0].sha256


def test_the_loader_reads_rows_of_all_three_tasks(tmp_path):
    roots = syn.write_synthetic(_cfg(tmp_path))
    cfg = LoaderConfig(sources=[SourceConfig(root=r) for r in roots.values()], seq_len=96, num_streams=1)
    manifests = load_manifests(cfg)
    layout = VocabLayout.from_tokenizers(tokenizers_of(manifests))
    assert (layout.text_codes, layout.image_codes, layout.audio_codes, layout.audio_levels) == (
        syn.TEXT_VOCAB, syn.IMAGE_VOCAB, syn.AUDIO_VOCAB, syn.AUDIO_LEVELS)
    rows = []
    for r in TrimodalDataset(cfg, layout, manifests=manifests):
        rows.append(r)
        if len(rows) == 60:
            break
    assert {int(r["task"]) for r in rows} == {0, 1, 2}
    assert all(r["tokens"].shape == (96,) for r in rows)


def test_captions_and_transcripts_describe_their_media():
    world = syn.make_world(1234)
    rng = np.random.default_rng(0)
    for _ in range(20):
        codes, caption, attrs = syn.image_caption(world, rng)
        assert codes.shape == syn.GRID and caption.max() < syn.TEXT_VOCAB and caption.min() >= 256
        object_codes = 16 + 2 * (attrs["color"] * syn.N_SHAPES + attrs["shape"]) + np.array([0, 1])
        assert np.isin(codes, object_codes).sum() >= 2  # the named object is in the picture
        assert 259 + attrs["color"] in caption and 267 + attrs["shape"] in caption
        audio, words = syn.audio_transcript(world, rng)
        level0, level1 = audio.astype(np.int64)
        speaker = {(int(b) - 64 - 5 * int(a)) % 64 for a, b in zip(level0, level1)}
        assert len(speaker) == 1  # level 1 is a function of the phone and one speaker
        spoken = [int(p) for p in level0 if p]
        expected = [int(p) for w in words for p in world.phones[int(w) - 320]]
        assert [p for k, p in enumerate(spoken) if k == 0 or p != spoken[k - 1]] == \
            [p for k, p in enumerate(expected) if k == 0 or p != expected[k - 1]]


def test_config_errors():
    with pytest.raises(ValueError, match="--out"):
        syn.SyntheticConfig()
    with pytest.raises(ValueError, match="val_fraction"):
        syn.SyntheticConfig(out="x", val_fraction=0.0)
