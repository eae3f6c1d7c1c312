import copy
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from trimodal.shards.format import key_from_id
from trimodal.shards.loader import (
    LoaderConfig,
    SourceConfig,
    TrimodalDataset,
    counters_from_loader_state,
    stream_states_from_loader_state,
)
from trimodal.shards.manifest import Manifest
from trimodal.shards.format import ShardError
from trimodal.shards.rows import layout_ids, paired_row
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.vocab import AUDIO, IMAGE, VocabLayout

LAYOUT = VocabLayout(text_codes=100, image_codes=64, audio_codes=32, audio_levels=2)
L = 24
TOKENIZERS = {
    "text": {"kind": "test", "fingerprint": "text-fp", "vocab_size": 100},
    "image": {"kind": "test", "fingerprint": "image-fp", "vocab_size": 64},
    "audio": {"kind": "test", "fingerprint": "audio-fp", "vocab_size": 32, "levels": 2},
}


def make_sample(modality, rid, rng):
    if modality == "text":
        arrays = {"text": rng.integers(0, 100, size=rng.integers(1, 30)).astype(np.uint16)}
    elif modality == "image_text":
        arrays = {
            "image": rng.integers(0, 64, size=(2, 3)).astype(np.uint16),
            "text": rng.integers(0, 100, size=rng.integers(0, 16)).astype(np.uint16),
        }
    else:  # audio_text: 2..12 frames of 3 levels (the layout keeps 2) -> 4..24 media tokens
        arrays = {
            "audio": rng.integers(0, 32, size=(3, rng.integers(2, 13))).astype(np.uint16),
            "text": rng.integers(0, 100, size=rng.integers(0, 8)).astype(np.uint32),
        }
    meta = {
        "id": rid,
        "source": "test",
        "modality": modality,
        "lengths": {k: int(v.size) for k, v in arrays.items()},
        "provenance": {},
    }
    return key_from_id(rid), meta, arrays


def make_source(root, modality, n_shards, per_shard, seed, tokenizers=TOKENIZERS):
    rng = np.random.default_rng(seed)
    infos, raw = [], []
    for k in range(n_shards):
        samples = [make_sample(modality, f"{modality}-{seed}-{k}-{j}", rng) for j in range(per_shard)]
        raw.extend(samples)
        infos.append(write_shard(root, shard_name(k, n_shards), samples))
    Manifest(kind="tokenized", modality=modality, tokenizers=tokenizers, shards=infos).save(root)
    return raw


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    roots = {}
    raw = {}
    # text: 10 shards >= 8 streams (shard striding); image: 3 shards (sample striding);
    # audio: 9 shards (shard striding, uneven).
    for modality, n, per, seed in (("text", 10, 12, 1), ("image_text", 3, 10, 2), ("audio_text", 9, 5, 3)):
        root = str(base / modality)
        raw[modality] = make_source(root, modality, n, per, seed)
        roots[modality] = root
    return roots, raw


def config(roots, **kw):
    sources = kw.pop("sources", None) or [SourceConfig(roots[m]) for m in ("text", "image_text", "audio_text")]
    return LoaderConfig(sources=sources, seq_len=kw.pop("seq_len", L), **kw)


def key(row):
    return row["tokens"].numpy().tobytes()


def take(it, n):
    out = []
    for _ in range(n):
        out.append(next(it))
    return out


def same_rows(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("tokens", "modality", "valid", "task")
    )


def test_rows_well_formed(data):
    roots, _ = data
    ds = TrimodalDataset(config(roots, audio_overflow="skip"), LAYOUT)
    rows = take(iter(ds), 300)
    tasks = Counter()
    for r in rows:
        t, v, m = r["tokens"], r["valid"], r["modality"]
        assert t.dtype == torch.int64 and t.shape == (L,)
        assert v.dtype == torch.bool and m.dtype == torch.int64 and r["task"].shape == ()
        task = int(r["task"])
        tasks[task] += 1
        assert int(t[0]) == LAYOUT.task_token(("text", "image_text", "audio_text")[task])
        assert torch.equal(v, t != LAYOUT.pad)
        assert m.tolist() == layout_ids(LAYOUT).modality_lut[t.numpy()].tolist()
        if task == 0:
            assert bool(v.all())
    assert set(tasks) == {0, 1, 2}
    c = ds.counters()
    assert c["rows_text"] + c["rows_image_text"] + c["rows_audio_text"] == 300
    assert sum(c[f"tokens_{m}"] for m in ("text", "image", "audio", "task")) + c["pad_tokens"] == 300 * L
    assert c["rows_skipped_too_long"] > 0  # long audio clips do not fit in L=24
    assert c["captions_truncated"] > 0


def test_deterministic_per_seed(data):
    roots, _ = data
    a = take(iter(TrimodalDataset(config(roots, seed=5), LAYOUT)), 100)
    b = take(iter(TrimodalDataset(config(roots, seed=5), LAYOUT)), 100)
    c = take(iter(TrimodalDataset(config(roots, seed=6), LAYOUT)), 100)
    assert same_rows(a, b)
    assert not same_rows(a, c)


@pytest.mark.parametrize(
    "weights,expected",
    [(None, [1 / 3, 1 / 3, 1 / 3]), ([0.6, 0.1, 0.3], [0.6, 0.1, 0.3])],
)
def test_mixing_weights(data, weights, expected):
    roots, _ = data
    mods = ("text", "image_text", "audio_text")
    sources = [SourceConfig(roots[m], weight=None if weights is None else weights[i]) for i, m in enumerate(mods)]
    n = 1500
    rows = take(iter(TrimodalDataset(config(roots, sources=sources, seed=3), LAYOUT)), n)
    counts = Counter(int(r["task"]) for r in rows)
    for i, p in enumerate(expected):
        assert abs(counts[i] / n - p) < 0.05, (counts, expected)


def test_default_weights_split_among_sources_of_a_modality(data, tmp_path):
    roots, _ = data
    second = str(tmp_path / "text2")
    make_source(second, "text", 2, 4, seed=11)
    sources = [SourceConfig(roots["text"]), SourceConfig(second), SourceConfig(roots["image_text"])]
    ds = TrimodalDataset(config(roots, sources=sources), LAYOUT)
    assert [round(s.weight, 6) for s in ds.sources] == [0.25, 0.25, 0.5]
    ds = TrimodalDataset(config(roots, sources=sources, task_weights={"text": 0.8, "image_text": 0.2}), LAYOUT)
    assert [round(s.weight, 6) for s in ds.sources] == [0.4, 0.4, 0.2]
    with pytest.raises(ValueError, match="every source or to none"):
        TrimodalDataset(config(roots, sources=[SourceConfig(roots["text"], weight=1.0), SourceConfig(second)]), LAYOUT)


def test_resume_direct(data):
    roots, _ = data
    cfg = config(roots, seed=2)
    ds = TrimodalDataset(cfg, LAYOUT)
    it = iter(ds)
    take(it, 137)
    state = json.loads(json.dumps(ds.state_dict()))  # plain JSON-able
    expected = take(it, 200)  # crosses epochs of the small sources

    ds2 = TrimodalDataset(cfg, LAYOUT)
    ds2.load_state_dict(state)
    assert same_rows(take(iter(ds2), 200), expected)
    assert ds2.counters() == ds.counters()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_stateful_dataloader(data, num_workers):
    roots, _ = data
    cfg = config(roots, seed=4)
    kw = dict(batch_size=4, num_workers=num_workers)
    loader = StatefulDataLoader(TrimodalDataset(cfg, LAYOUT), **kw)
    it = iter(loader)
    take(it, 9)
    state = copy.deepcopy(loader.state_dict())
    expected = take(it, 12)
    del it, loader

    loader2 = StatefulDataLoader(TrimodalDataset(cfg, LAYOUT), **kw)
    loader2.load_state_dict(state)
    got = take(iter(loader2), 12)
    assert same_rows(got, expected)
    counters = counters_from_loader_state(state)
    assert counters["rows_text"] + counters["rows_image_text"] + counters["rows_audio_text"] == 9 * 4


def test_num_streams_must_divide():
    cfg = LoaderConfig(sources=[SourceConfig("memory://nowhere")], seq_len=L, num_streams=6)
    with pytest.raises(ValueError, match="not divisible by world_size"):
        TrimodalDataset(cfg, LAYOUT, rank=0, world_size=4)


def test_workers_must_divide(data):
    roots, _ = data
    ds = TrimodalDataset(config(roots, num_streams=8), LAYOUT, rank=1, world_size=2)
    assert ds.rank_streams() == [1, 3, 5, 7]
    assert ds.owned_streams(1, 2) == [3, 7]
    assert ds.owned_streams(0, 4) == [1]
    with pytest.raises(ValueError, match="num_workers=3"):
        ds.owned_streams(0, 3)


def all_rows(ds):
    return [key(r) for r in ds]


def test_world_size_change_union_of_rows(data):
    """cycle=False, finite data: rows seen by 2 ranks for n steps each, then the remaining rows
    on 1 rank after loading the union of the 2 ranks' stream states, are exactly (as a multiset)
    the rows one uninterrupted 1-rank run over all streams produces."""
    roots, _ = data
    cfg = config(roots, seed=7, cycle=False)
    reference = Counter(all_rows(TrimodalDataset(cfg, LAYOUT, rank=0, world_size=1)))
    total = sum(reference.values())
    assert total > 100

    seen = []
    union = {}
    n = 25
    for rank in range(2):
        ds = TrimodalDataset(cfg, LAYOUT, rank=rank, world_size=2)
        seen += [key(r) for r in take(iter(ds), n)]
        states = ds.stream_states()
        assert sorted(states) == ds.rank_streams()
        union.update(json.loads(json.dumps({str(k): v for k, v in states.items()})))

    resumed = TrimodalDataset(cfg, LAYOUT, rank=0, world_size=1)
    with pytest.raises(ValueError, match="no state for streams"):
        partial = TrimodalDataset(cfg, LAYOUT, rank=0, world_size=1)
        partial.load_stream_states({k: v for k, v in union.items() if int(k) % 2 == 0})
        iter(partial)
    resumed.load_stream_states(union)
    seen += all_rows(resumed)
    assert len(seen) == total
    assert Counter(seen) == reference


def test_world_size_change_through_workers(data):
    """2 ranks x 2 dataloader workers (StatefulDataLoader) → 1 rank x 2 workers, via the union
    of the stream states found in the loaders' state dicts: no repeat and no gap. The resumed
    dataset's streams were materialised in the main process first (stream_states), which the
    forked workers must hand over rather than reuse."""
    roots, _ = data
    cfg = config(roots, seed=8, cycle=False, num_streams=4)
    reference = Counter(all_rows(TrimodalDataset(cfg, LAYOUT)))

    seen, loader_states = [], []
    for rank in range(2):
        loader = StatefulDataLoader(TrimodalDataset(cfg, LAYOUT, rank=rank, world_size=2), batch_size=3, num_workers=2)
        it = iter(loader)
        for batch in take(it, 5):
            seen += [t.numpy().tobytes() for t in batch["tokens"]]
        loader_states.append(copy.deepcopy(loader.state_dict()))
        del it, loader
    union = stream_states_from_loader_state(loader_states)
    assert sorted(union) == [0, 1, 2, 3]

    ds = TrimodalDataset(cfg, LAYOUT, rank=0, world_size=1)
    ds.load_stream_states(union)
    assert ds.stream_states() == union
    loader = StatefulDataLoader(ds, batch_size=3, num_workers=2)
    for batch in loader:
        seen += [t.numpy().tobytes() for t in batch["tokens"]]
    assert Counter(seen) == reference


def test_paired_rows_cover_each_sample_once(data):
    """Sample striding (3 shards < 8 streams): one epoch over all streams yields every image
    sample's row exactly once."""
    roots, raw = data
    cfg = config(roots, sources=[SourceConfig(roots["image_text"])], cycle=False)
    expected = Counter()
    for _, _, arrays in raw["image_text"]:
        tokens, _ = paired_row(LAYOUT, "image_text", LAYOUT.to_global(IMAGE, arrays["image"]), arrays["text"], L)
        expected[tokens.tobytes()] += 1
    assert Counter(all_rows(TrimodalDataset(cfg, LAYOUT))) == expected


def test_audio_rows_and_too_long_skipped(data):
    roots, raw = data
    cfg = config(roots, sources=[SourceConfig(roots["audio_text"])], cycle=False, audio_overflow="skip")
    expected, too_long = Counter(), 0
    for _, _, arrays in raw["audio_text"]:
        media = LAYOUT.to_global(AUDIO, arrays["audio"])
        if media.size + arrays["text"].size + 5 > L:  # the clip and its transcript must fit
            too_long += 1
            continue
        expected[paired_row(LAYOUT, "audio_text", media, arrays["text"], L)[0].tobytes()] += 1
    ds = TrimodalDataset(cfg, LAYOUT)
    assert Counter(all_rows(ds)) == expected
    assert too_long > 0 and ds.counters()["rows_skipped_too_long"] == too_long
    assert ds.counters()["audio_too_long_skipped"] == too_long


def test_audio_overflow_crop_keeps_the_transcript_and_the_frames_that_fit(data):
    roots, raw = data
    cfg = config(roots, sources=[SourceConfig(roots["audio_text"])], cycle=False, audio_overflow="crop")
    expected, cropped, dropped, fit_alone = Counter(), 0, 0, 0
    for _, _, arrays in raw["audio_text"]:
        media = LAYOUT.to_global(AUDIO, arrays["audio"])
        text = arrays["text"]
        if media.size + text.size + 5 > L:
            frames = (L - 5 - text.size) // LAYOUT.audio_levels
            assert frames >= 1  # the fixture's transcripts always leave room
            fit_alone += media.size + 5 <= L  # the clip alone would fit: its transcript is kept whole all the same
            cropped += 1
            dropped += media.size // LAYOUT.audio_levels - frames
            media = media[: frames * LAYOUT.audio_levels]
        expected[paired_row(LAYOUT, "audio_text", media, text, L)[0].tobytes()] += 1
    ds = TrimodalDataset(cfg, LAYOUT)
    assert Counter(all_rows(ds)) == expected
    c = ds.counters()
    assert cropped > 0 and c["audio_too_long_cropped"] == cropped and c["audio_frames_dropped"] == dropped
    assert fit_alone > 0 and c["rows_skipped_too_long"] == 0 and c["captions_truncated"] == 0


def test_audio_overflow_error_names_the_limit(data):
    roots, _ = data
    cfg = config(roots, sources=[SourceConfig(roots["audio_text"])], cycle=False, audio_overflow="error")
    with pytest.raises(ValueError, match=rf"of source 'audio_text' needs \d+ positions, rows have {L}.*audio_overflow=error"):
        list(TrimodalDataset(cfg, LAYOUT))


def test_text_documents_once_in_order_per_stream(data):
    roots, raw = data
    cfg = config(roots, sources=[SourceConfig(roots["text"])], cycle=False, num_streams=1)
    rows = [r["tokens"].numpy() for r in TrimodalDataset(cfg, LAYOUT)]
    body = np.concatenate([r[1:] for r in rows])
    # every document appears exactly once (framed), whatever the shuffled order
    docs = Counter()
    start = None
    for i, t in enumerate(body.tolist()):
        if t == LAYOUT.text.bos:
            start = i
        elif t == LAYOUT.text.eos and start is not None:
            docs[body[start + 1 : i].tobytes()] += 1
            start = None
    want = Counter(a["text"].astype(np.int64).tobytes() for _, _, a in raw["text"])
    # the packed tail shorter than a row is dropped at the end of a finite run
    assert sum((want - docs).values()) <= 2 and not (docs - want)


def test_corrupted_shard(data, tmp_path):
    roots, _ = data
    root = str(tmp_path / "text")
    shutil.copytree(roots["text"], root)
    bad = os.path.join(root, shard_name(3, 10))
    with open(bad, "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    cfg = dict(sources=[SourceConfig(root)], cycle=False, verify="sha256")
    with pytest.raises(ShardError, match=shard_name(3, 10)):
        list(TrimodalDataset(config(roots, **cfg), LAYOUT))
    ds = TrimodalDataset(config(roots, on_corrupt="skip", **cfg), LAYOUT)
    rows = list(ds)
    c = ds.counters()
    assert c["shards_skipped_corrupt"] == 1
    clean = TrimodalDataset(config(roots, sources=[SourceConfig(roots["text"])], cycle=False), LAYOUT)
    assert 0 < len(rows) < len(list(clean))


def test_fingerprint_mismatch_refused(data, tmp_path):
    roots, _ = data
    other = str(tmp_path / "other")
    make_source(other, "text", 1, 3, seed=5, tokenizers={"text": {"kind": "test", "fingerprint": "another", "vocab_size": 100}})
    layout = VocabLayout(text_codes=100, image_codes=64, audio_codes=32, audio_levels=2, fingerprints={"text": "text-fp"})
    TrimodalDataset(config(roots), layout)  # matches
    with pytest.raises(ValueError, match="text tokenizer fingerprint"):
        TrimodalDataset(config(roots, sources=[SourceConfig(other)]), layout)
    with pytest.raises(ValueError, match="text tokenizer differs"):
        TrimodalDataset(config(roots, sources=[SourceConfig(roots["text"]), SourceConfig(other)]), LAYOUT)
    small = VocabLayout(text_codes=50, image_codes=64, audio_codes=32, audio_levels=2)
    with pytest.raises(ValueError, match="vocab_size"):
        TrimodalDataset(config(roots, sources=[SourceConfig(roots["text"])]), small)


def test_mixed_shards_yield_rows_as_they_are(tmp_path):
    root = str(tmp_path / "mixed")
    rng = np.random.default_rng(0)
    rows = []
    for j in range(6):
        media = LAYOUT.to_global(IMAGE, rng.integers(0, 64, size=(2, 2)))
        tokens, _ = paired_row(LAYOUT, "image_text", media, rng.integers(0, 100, size=3), L)
        rows.append(tokens)
    samples = [(f"row{j:04d}", {"id": f"row{j}"}, {"tokens": t.astype(np.uint32)}) for j, t in enumerate(rows)]
    info = write_shard(root, shard_name(0, 1), samples)
    Manifest(kind="mixed", modality="mixed", tokenizers=TOKENIZERS, shards=[info], layout=LAYOUT.to_dict(), seq_len=L).save(root)
    cfg = LoaderConfig(sources=[SourceConfig(root)], seq_len=L, cycle=False, num_streams=2)
    got = list(TrimodalDataset(cfg, LAYOUT))
    assert Counter(key(r) for r in got) == Counter(t.tobytes() for t in rows)
    assert all(int(r["task"]) == 1 for r in got)
    assert all(torch.equal(r["valid"], r["tokens"] != LAYOUT.pad) for r in got)
    with pytest.raises(ValueError, match="seq_len"):
        TrimodalDataset(LoaderConfig(sources=[SourceConfig(root)], seq_len=L + 1), LAYOUT)


def test_state_refused_for_other_seed(data):
    roots, _ = data
    ds = TrimodalDataset(config(roots, seed=1), LAYOUT)
    take(iter(ds), 3)
    state = ds.state_dict()
    other = TrimodalDataset(config(roots, seed=2), LAYOUT)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="refusing to resume"):
        iter(other)


def test_sample_striding_reads_each_shard_once_per_pass(data, monkeypatch):
    """Fewer shards than streams: the streams of a process walk one shard order in step and
    share each shard's bytes and index, so a pass reads every shard once (not once per stream),
    and at most SHARED_PER_SOURCE shards per source are held."""
    from trimodal.shards.loader import cursor as cursor_mod

    roots, raw = data
    reads = Counter()
    real = cursor_mod.read_shard

    def counting(root, info, verify):
        reads[info.name] += 1
        return real(root, info, verify)

    monkeypatch.setattr(cursor_mod, "read_shard", counting)
    cfg = config(roots, sources=[SourceConfig(roots["image_text"])], cycle=False, num_streams=8)
    ds = TrimodalDataset(cfg, LAYOUT)
    it = iter(ds)
    rows = [next(it)]
    cursors = [st.cursors[0] for st in ds._streams.values()]
    assert all(c.stride for c in cursors)
    assert len({tuple(c._shard_order().tolist()) for c in cursors}) == 1  # one order for every stream
    for r in it:
        rows.append(r)
        assert len(ds._ctx.index_cache) <= cursor_mod.SHARED_PER_SOURCE
    assert len(rows) == len(raw["image_text"])
    assert reads == Counter({shard_name(k, 3): 1 for k in range(3)})

    # shard striding (at least as many shards as streams): each stream its own shards and order
    ds = TrimodalDataset(config(roots, sources=[SourceConfig(roots["text"])], num_streams=4), LAYOUT)
    iter(ds)
    cursors = [st.cursors[0] for st in ds._streams.values()]
    assert not any(c.stride for c in cursors)
    orders = [c._shard_order().tolist() for c in cursors]
    assert sorted(sum(orders, [])) == list(range(10)) and len({tuple(o) for o in orders}) == 4


def test_shared_shards_do_not_change_the_rows(data, monkeypatch):
    """Reading a shard once and sharing it gives the rows that reading it per stream gives."""
    from trimodal.shards.loader import cursor as cursor_mod

    roots, _ = data
    cfg = config(roots, seed=9, cycle=False)
    shared = all_rows(TrimodalDataset(cfg, LAYOUT))
    reads = []

    def unshared(self, root, info, verify, where):  # what each stream did before: its own read
        reads.append(info.name)
        d = cursor_mod.read_shard(root, info, verify)
        return d, cursor_mod.index_shard(d, where, expect=info.samples)

    monkeypatch.setattr(cursor_mod.SharedShards, "get", unshared)
    assert all_rows(TrimodalDataset(cfg, LAYOUT)) == shared
    assert len(reads) > 3  # the image source's 3 shards, read by several streams each


@pytest.mark.parametrize("offset", [0, 1000])
def test_text_packer_rows_equal_the_framed_stream(offset):
    """TextPacker keeps the documents it is fed (views, any int dtype) and converts each piece
    once into the row: rows, the pending state mid-document and the range check are those of
    the plain framed stream ``[BOS, doc…, EOS, …]`` cut into rows."""
    from trimodal.shards.rows import TextPacker

    rng = np.random.default_rng(offset)
    buf = rng.integers(0, 100, 5000).astype(np.uint16)
    docs = []
    for _ in range(120):  # views of one buffer (as from a shard), owned arrays, other dtypes
        n, at = int(rng.integers(0, 60)), int(rng.integers(0, 4000))
        kind = int(rng.integers(0, 3))
        docs.append(buf[at : at + n] if kind == 0 else buf[at : at + n].astype((np.uint32, np.int64, np.uint16)[kind]))
    p = TextPacker(LAYOUT, 23)
    p._ids = p._ids._replace(text_offset=offset)  # every real layout has text first (offset 0)
    ids = p._ids
    stream = np.concatenate([np.concatenate([[ids.text_bos], d.astype(np.int64) + offset, [ids.text_eos]]) for d in docs])
    rows, states = [], []
    for d in docs:
        p.add(d)
        while p.ready():
            rows.append(p.pop())
        states.append(p.state_dict()["pending"])
    body = np.concatenate([r[1:] for r in rows])
    assert all(r[0] == ids.task[0] and r.dtype == np.int64 and r.size == 23 for r in rows)
    assert np.array_equal(body, stream[: body.size])
    assert states[-1] == stream[body.size :].tolist()
    q = TextPacker(LAYOUT, 23)
    q._ids = ids
    q.load_state_dict({"pending": states[60]})
    emitted = sum(d.size + 2 for d in docs[:61]) - len(states[60])
    assert list(q.rows(docs[61:]))[0].tolist()[1:] == stream[emitted : emitted + 22].tolist()
    for bad in (np.array([100], np.uint16), np.array([-1]), np.array([5, 100], np.uint32)):
        with pytest.raises(ValueError, match="out of range"):
            TextPacker(LAYOUT, 23).add(bad)
    TextPacker(VocabLayout(text_codes=70000), 23).add(np.array([65535], np.uint16))  # any uint16 fits: no check
