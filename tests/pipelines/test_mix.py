"""`trimodal pipeline mix`: tokenized roots → mixed rows packed to L (real Beam runs, DirectRunner).

The inputs are a text dataset made by the real text pipeline (tiny SentencePiece model trained
here) and image-text / audio-text datasets written with the shard writer (their tokenizers are
not needed to mix: only their manifests' vocab sizes and fingerprints).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from dataclasses import replace

from trimodal.pipelines.mix import MixPipelineConfig, plan_sources, run_mix_pipeline
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.vocab import VocabLayout
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.format import key_from_id
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples
from trimodal.shards.rows import TextPacker, paired_row
from trimodal.shards.verify import verify
from trimodal.shards.writer import shard_name, write_shard
from trimodal.tokenizers.text import TextTokenizer, train_text_tokenizer
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASKS

BEAM = ["--runner=DirectRunner"]
WORDS = "the cat sat on a mat while images and audio share one sequence with captions transcripts".split()
L = 40
IMAGE_TOK = {"kind": "movqgan", "fingerprint": "image-fp", "vocab_size": 64}
AUDIO_TOK = {"kind": "dac", "fingerprint": "audio-fp", "vocab_size": 32, "n_keep": 2}


def _paired_source(root: Path, modality: str, tok: TextTokenizer, n_shards: int, per_shard: int, seed: int) -> list:
    """Write a tokenized image_text/audio_text dataset; a few samples are too long for L."""
    rng = np.random.default_rng(seed)
    infos, raw = [], []
    for k in range(n_shards):
        samples = []
        for j in range(per_shard):
            rid = f"{modality}-{seed}-{k}-{j}"
            if modality == "image_text":
                shape = (8, 8) if j % 7 == 3 else (3, 4)  # 64 + 5 > L: filtered
                media = rng.integers(0, 64, size=shape).astype(np.uint16)
                arrays = {"image": media}
            else:
                frames = 30 if j % 5 == 2 else int(rng.integers(2, 10))  # 60 + 5 > L: filtered
                arrays = {"audio": rng.integers(0, 32, size=(2, frames)).astype(np.uint16)}
            arrays["text"] = rng.integers(0, tok.vocab_size, size=int(rng.integers(0, 30))).astype(np.uint16)
            meta = {"id": rid, "source": modality, "modality": modality, "lengths": {}, "provenance": {}}
            samples.append((key_from_id(rid), meta, arrays))
        samples.sort(key=lambda s: s[0])
        raw.extend(samples)
        infos.append(write_shard(str(root), shard_name(k, n_shards), samples))
    toks = {"text": tok.info(), ("image" if modality == "image_text" else "audio"): IMAGE_TOK if modality == "image_text" else AUDIO_TOK}
    Manifest(kind="tokenized", modality=modality, tokenizers=toks, shards=infos,
             counts={"read": len(raw), "written": len(raw), "filtered": {}, "rejected": {}}).save(str(root))
    return raw


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixdata")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))) for _ in range(240)]
    (base / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = train_text_tokenizer(docs + [" ".join(WORDS)] * 5, 300, str(base / "text.model"))
    text_root = base / "text"
    run_text_pipeline(
        TextPipelineConfig(inputs=[str(base / "corpus.jsonl")], text_tokenizer=str(base / "text.model"), out=str(text_root),
                          target_shard_bytes=4000),
        BEAM,
    )
    assert len(Manifest.load(str(text_root)).shards) >= 4
    image = _paired_source(base / "image", "image_text", tok, 3, 14, 1)
    audio = _paired_source(base / "audio", "audio_text", tok, 2, 15, 2)
    return {"base": base, "tok": tok, "text": str(text_root), "image": str(base / "image"), "audio": str(base / "audio"),
            "image_raw": image, "audio_raw": audio}


def _rows(root: str) -> list[dict]:
    m = Manifest.load(root)
    out = []
    for _, s in iter_samples(root, m.shards, verify="sha256"):
        out.append({"key": s["__key__"], "meta": s["json"], "tokens": np.array(s["tokens"])})
    return out


def _tree_digest(root: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _text_docs(root: str) -> list[tuple[str, np.ndarray]]:
    m = Manifest.load(root)
    return [(s["__key__"], np.array(s["text"])) for _, s in iter_samples(root, m.shards)]


@pytest.fixture(scope="module")
def mixed(data, tmp_path_factory):
    """Three sources, one shard per unit (so text rows are stitched across units)."""
    out = str(tmp_path_factory.mktemp("mixed") / "mix")
    cfg = MixPipelineConfig(inputs=[data["text"], data["image"], data["audio"]], weights=[2, 1, 1], seq_len=L, out=out,
                            seed=3, target_shard_bytes=20_000, group_bytes=1)
    m = run_mix_pipeline(cfg, BEAM)
    return {"cfg": cfg, "out": out, "manifest": m, "rows": _rows(out)}


def test_manifest_and_rows_well_formed(data, mixed):
    m, rows = mixed["manifest"], mixed["rows"]
    assert m.kind == "mixed" and m.modality == "mixed" and m.seq_len == L
    toks = {"text": data["tok"].info(), "image": TokenizerInfo.from_dict(IMAGE_TOK, "image"),
            "audio": TokenizerInfo.from_dict(AUDIO_TOK, "audio")}
    assert m.tokenizers == toks
    layout = VocabLayout.from_tokenizers(toks)
    assert m.layout == layout.to_dict()
    assert (layout.text_codes, layout.image_codes, layout.audio_codes, layout.audio_levels) == (data["tok"].vocab_size, 64, 32, 2)
    assert len(m.shards) > 1 and m.counts["written"] == m.samples == len(rows)
    assert [r["meta"]["row"] for r in rows] == list(range(len(rows)))
    for r in rows:
        t = r["tokens"]
        assert r["key"] == f"{r['meta']['row']:012d}"
        assert t.dtype == np.uint32 and t.shape == (L,)
        assert int(t[0]) == layout.task_token(r["meta"]["task"])
        assert r["meta"]["sources"] and r["meta"]["samples"]
        assert int(t.max()) < layout.vocab_size
        if r["meta"]["task"] == "text":
            assert not (t == layout.pad).any()
    report = verify(mixed["out"])
    assert report.ok, report.format()


def test_text_rows_are_one_sequential_packer_over_the_source(data, mixed):
    layout = VocabLayout.from_tokenizers(mixed["manifest"].tokenizers)
    text_rows = [r for r in mixed["rows"] if r["meta"]["task"] == "text"]
    packer = TextPacker(layout, L)
    docs = _text_docs(data["text"])
    expected = list(packer.rows(d for _, d in docs))[: len(text_rows)]
    assert len(expected) == len(text_rows) > 3
    for got, exp in zip(text_rows, expected):
        assert got["tokens"].tolist() == exp.tolist()
    # provenance: every doc key of a row, in order; consecutive rows share the straddling doc
    keys = [k for k, _ in docs]
    assert text_rows[0]["meta"]["samples"][0] == keys[0]
    flat = list(dict.fromkeys(k for r in text_rows for k in r["meta"]["samples"]))
    assert flat == keys[: len(flat)]
    src = mixed["manifest"].counts["sources"]["text"]
    assert src["samples_consumed"] == len(flat) and src["rows"] == len(text_rows)


@pytest.mark.parametrize("modality", ["image_text", "audio_text"])
def test_paired_rows_in_manifest_order_too_long_filtered(data, mixed, modality):
    layout = VocabLayout.from_tokenizers(mixed["manifest"].tokenizers)
    raw = data["image_raw" if modality == "image_text" else "audio_raw"]
    got = [r for r in mixed["rows"] if r["meta"]["task"] == modality]
    expected, keys, too_long = [], [], 0
    for key, _, arrays in raw:
        media = layout.to_global(IMAGE, arrays["image"]) if modality == "image_text" else layout.to_global(AUDIO, arrays["audio"])
        if media.size + 5 > L:
            too_long += 1
            continue
        tokens, _ = paired_row(layout, modality, media, arrays["text"], L)
        expected.append(tokens)
        keys.append(key)
        if len(expected) == len(got):
            break
    assert len(got) == len(expected) > 0
    for g, e, k in zip(got, expected, keys):
        assert g["tokens"].tolist() == e.tolist() and g["meta"]["samples"] == [k]
    name = Path(data["image" if modality == "image_text" else "audio"]).name
    src = mixed["manifest"].counts["sources"][name]
    assert src["too_long_for_seq_len"] == too_long and src["rows"] == len(got)
    assert src["samples_consumed"] == len(got) + too_long


def test_counts_and_plan_stop(mixed):
    c = mixed["manifest"].counts
    srcs = c["sources"]
    assert c["read"] == sum(s["samples_consumed"] for s in srcs.values())
    assert c["filtered"] == {"too_long_for_seq_len": sum(s["too_long_for_seq_len"] for s in srcs.values())}
    assert c["filtered"]["too_long_for_seq_len"] > 0
    assert sum(c["rows_per_task"].values()) == c["written"]
    # default --rows: until the first source is exhausted
    exhausted = [n for n, s in srcs.items() if s["rows"] == s["rows_available"]]
    assert len(exhausted) == 1 and c["stopped"] == f"source {exhausted[0]!r} exhausted"
    assert all(s["rows"] <= s["rows_available"] for s in srcs.values())


def test_loader_and_stats_read_the_mixed_root(mixed):
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
    from trimodal.shards.stats import compute_stats
    from trimodal.tokenizers.vocab import VocabLayout

    m = mixed["manifest"]
    layout = VocabLayout.from_dict(m.layout)
    ds = TrimodalDataset(LoaderConfig(sources=[SourceConfig(mixed["out"])], seq_len=L, cycle=False, num_streams=1), layout)
    got = sorted(r["tokens"].numpy().astype(np.uint32).tobytes() for r in ds)
    assert got == sorted(r["tokens"].tobytes() for r in mixed["rows"])
    stats = compute_stats(mixed["out"])
    assert stats["samples"] == m.samples and stats["written"] == m.samples
    assert stats["filtered"] == m.counts["filtered"]


def test_deterministic_and_independent_of_grouping_and_workers(data, mixed, tmp_path):
    cfg = mixed["cfg"]
    ref = _tree_digest(mixed["out"])
    # same config into another root, one unit per source (no stitching), 2 worker processes
    other = str(tmp_path / "again")
    run_mix_pipeline(
        MixPipelineConfig(**{**cfg.__dict__, "out": other, "group_bytes": 1 << 40}),
        BEAM + ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    got = _tree_digest(other)
    ref_m = json.loads(Path(mixed["out"], "manifest.json").read_text())
    got_m = json.loads(Path(other, "manifest.json").read_text())
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {k: v for k, v in ref.items() if k != "manifest.json"}
    ref_m["config"].pop("group_bytes"), got_m["config"].pop("group_bytes")
    assert ref_m.pop("run_id") != got_m.pop("run_id")  # each run names itself
    assert ref_m == got_m
    # re-run into the same root: byte-identical shards; the manifest differs only in its run id
    run_mix_pipeline(cfg, BEAM)
    again = _tree_digest(mixed["out"])
    assert {k: v for k, v in again.items() if k != "manifest.json"} == {k: v for k, v in ref.items() if k != "manifest.json"}
    again_m = json.loads(Path(mixed["out"], "manifest.json").read_text())
    again_m.pop("run_id"), again_m["config"].pop("group_bytes")
    assert again_m == got_m


def test_explicit_rows_seed_and_weights(data, tmp_path):
    base = dict(inputs=[data["text"], f"pics={data['image']}"], seq_len=L, target_shard_bytes=1 << 20)
    a = run_mix_pipeline(MixPipelineConfig(**base, weights=[1, 3], out=str(tmp_path / "a"), rows=50, seed=1), BEAM)
    b = run_mix_pipeline(MixPipelineConfig(**base, weights=[1, 3], out=str(tmp_path / "b"), rows=50, seed=2), BEAM)
    assert a.counts["written"] == b.counts["written"] == 50 and len(a.shards) == 1
    assert set(a.counts["sources"]) == {"text", "pics"}
    ra, rb = _rows(str(tmp_path / "a")), _rows(str(tmp_path / "b"))
    assert [r["meta"]["task"] for r in ra] != [r["meta"]["task"] for r in rb]  # the seed changes the plan
    # image has 36 rows: with 50 rows asked and weight 3/4 it runs out, leaves the draw, text fills up
    pics = a.counts["sources"]["pics"]
    assert pics["rows"] == pics["rows_available"] and a.counts["stopped"] == "rows"
    assert a.counts["sources"]["text"]["rows"] == 50 - pics["rows"]
    assert all(r["meta"]["sources"] == (["pics"] if r["meta"]["task"] == "image_text" else ["text"]) for r in ra)


def test_plan_follows_weights():
    choice, stopped = plan_sources([0.2, 0.5, 0.3], [10**6] * 3, 60_000, seed=0)
    freq = np.bincount(choice, minlength=3) / choice.size
    assert np.allclose(freq, [0.2, 0.5, 0.3], atol=0.01) and stopped == "rows"
    again, _ = plan_sources([0.2, 0.5, 0.3], [10**6] * 3, 60_000, seed=0)
    assert np.array_equal(choice, again)
    # until-exhausted: stops right before the first draw of an exhausted source
    choice, stopped = plan_sources([0.5, 0.5], [5, 1000], None, seed=0, names=["small", "big"])
    assert (choice == 0).sum() == 5 and stopped == "source 'small' exhausted"
    with pytest.raises(ValueError, match="only"):
        plan_sources([1, 1], [3, 4], 10, seed=0)


def test_packed_counts_keep_too_long_samples_of_units_without_rows(data, tmp_path):
    """A unit whose samples are all too long has no row to charge them to: they still count once
    a later row of the source is used, whatever the grouping (the same counts as one unit)."""
    root = tmp_path / "tl"
    fit = {"image": np.zeros((3, 4), np.uint16)}  # 12 + 5 positions: two share a row of 40
    big = {"image": np.zeros((8, 8), np.uint16)}  # 64 + 5 > 40: too long
    plan = [[fit, fit, big, big], [big, big], [big, fit, fit]]
    infos, n = [], 0
    for k, arrays in enumerate(plan):
        samples = []
        for a in arrays:
            rid = f"s{n:03d}"
            n += 1
            samples.append((key_from_id(rid), {"id": rid, "source": "t", "modality": "image_text"}, a))
        samples.sort(key=lambda x: x[0])
        infos.append(write_shard(str(root), shard_name(k, len(plan)), samples))
    Manifest(kind="tokenized", modality="image_text", tokenizers={"text": data["tok"].info(), "image": IMAGE_TOK},
             shards=infos, counts={"read": n, "written": n, "filtered": {}, "rejected": {}}).save(str(root))
    counts = []
    for group_bytes in (1, 1 << 40):
        m = run_mix_pipeline(MixPipelineConfig([str(root)], [1], L, str(tmp_path / f"out{group_bytes}"), rows=2,
                                               pack_paired=True, group_bytes=group_bytes), BEAM)
        src = m.counts["sources"]["tl"]
        counts.append((src["samples_consumed"], src["too_long_for_seq_len"], m.counts["read"]))
    assert counts == [(9, 5, 9), (9, 5, 9)]


def test_plan_filler_deals_unused_text_in_row_order():
    from trimodal.pipelines.mix_plan import plan_filler

    out_rows = [np.array([0, 2]), np.array([1, 3, 4, 5]), np.array([6])]  # text, paired, paired
    lengths = {1: np.array([60, 30, 64, 50, 7]), 2: np.array([20])}  # the 5th candidate of source 1 is unused
    f = plan_filler(out_rows, lengths, source=0, available=4, seq_len=64)
    # rooms: 4 (< MIN_FILL: none), 34, 0, 14, 44 → text lengths 33, 13, 43 from 2 rows × 63 on
    assert f.rows.tolist() == [3, 5, 6] and f.length.tolist() == [33, 13, 43] and f.start.tolist() == [126, 159, 172]
    assert f.unfilled == 0 and list(f.spans(150, 170)) == [0, 1] and f.of_row(5) == 1 and f.of_row(4) is None
    short = plan_filler(out_rows, lengths, source=0, available=3, seq_len=64)  # 63 tokens of text left
    assert short.rows.tolist() == [3, 5] and short.unfilled == 1


def test_refusals(data, tmp_path):
    with pytest.raises(ValueError, match="weights"):
        run_mix_pipeline(MixPipelineConfig([data["text"]], [1, 2], L, str(tmp_path / "x")), BEAM)
    with pytest.raises(ValueError, match="more than the inputs"):
        run_mix_pipeline(MixPipelineConfig([data["image"]], [1], L, str(tmp_path / "x"), rows=10_000), BEAM)
    with pytest.raises(ValueError, match="not a text input"):
        run_mix_pipeline(MixPipelineConfig([data["text"], data["image"]], [1, 1], L, str(tmp_path / "x"), pack_paired=True,
                                           filler="image"), BEAM)
    with pytest.raises(ValueError, match="only applies with --pack-paired"):
        MixPipelineConfig([data["text"]], [1], L, str(tmp_path / "x"), filler="text")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        run_mix_pipeline(MixPipelineConfig([str(tmp_path / "nothing")], [1], L, str(tmp_path / "x")), BEAM)
    # a dataset made with another text tokenizer is refused
    other = tmp_path / "other"
    m = Manifest.load(data["image"])
    m.tokenizers = {**m.tokenizers, "text": replace(m.tokenizers["text"], fingerprint="not-the-same")}
    for s in m.shards:
        (other / s.name).parent.mkdir(parents=True, exist_ok=True)
        (other / s.name).write_bytes((Path(data["image"]) / s.name).read_bytes())
    m.save(str(other))
    with pytest.raises(ValueError, match="text tokenizer differs"):
        run_mix_pipeline(MixPipelineConfig([data["text"], str(other)], [1, 1], L, str(tmp_path / "x")), BEAM)
    assert not (tmp_path / "x").exists()


def test_cli(data, tmp_path, capsys):
    from trimodal.cli import main

    out = tmp_path / "cli"
    rc = main(["pipeline", "mix", "--inputs", data["text"], data["audio"], "--weights", "1", "1", "--seq-len", str(L),
               "--out", str(out), "--rows", "12", "--runner=DirectRunner"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote 12 rows of {L} tokens" in captured.out
    m = Manifest.load(str(out))
    assert m.counts["written"] == 12 and set(m.counts["rows_per_task"]) == set(TASKS)
    rc = main(["pipeline", "mix", "--inputs", data["text"], "--weights", "1", "2", "--seq-len", "40", "--out", str(out)])
    assert rc == 1 and "weights" in capsys.readouterr().err


def test_pack_paired_rows_hold_whole_samples_as_segments(data, mixed, tmp_path):
    """--pack-paired: each paired row is its samples' own unpadded rows back to back, then a text
    filler cut from the text input's unused stream (or PAD with --filler none); every sample is in
    one row at most; counts stay exact; the loader reads the segments.
    L = 64: room for two or three of the test's paired samples, the 8×8 images still too long."""
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset

    L = 64
    out = str(tmp_path / "packed")
    cfg = replace(mixed["cfg"], out=out, seq_len=L, pack_paired=True)
    m = run_mix_pipeline(cfg, BEAM)
    assert m.config["pack_paired"] is True and m.config["pack_lookahead"] == 8 and m.config["filler"] == "text"
    layout = VocabLayout.from_dict(m.layout)
    rows = _rows(out)
    run_mix_pipeline(replace(cfg, out=str(tmp_path / "unpacked"), pack_paired=False), BEAM)
    unpacked_rows = _rows(str(tmp_path / "unpacked"))
    run_mix_pipeline(replace(cfg, out=str(tmp_path / "nofill"), filler="none"), BEAM)
    nofill_rows = _rows(str(tmp_path / "nofill"))
    # the text input's packed stream: the filler is cut from it after the rows the plan used
    docs = _text_docs(data["text"])
    stream = np.concatenate([r[1:] for r in TextPacker(layout, L).rows(d for _, d in docs)])
    n_text_rows = m.counts["sources"]["text"]["rows"]
    next_start = n_text_rows * (L - 1)
    task_text = layout.task_token("text")
    shared, fill_tokens = [], 0
    for modality, media_key, block in (("image_text", "image", IMAGE), ("audio_text", "audio", AUDIO)):
        segment, too_long = {}, set()
        for key, _, arrays in data[f"{media_key}_raw"]:
            media = layout.to_global(block, arrays[media_key])
            if media.size + 5 > L:
                too_long.add(key)
                continue
            tokens, valid = paired_row(layout, modality, media, arrays["text"], L)
            segment[key] = tokens[valid]
        got = [r for r in rows if r["meta"]["task"] == modality]
        seen = []
        for r in got:
            body = np.concatenate([segment[k] for k in r["meta"]["samples"]])
            assert r["tokens"][: body.size].tolist() == body.tolist()
            rest = r["tokens"][body.size :]
            fill = r["meta"].get("filler")
            if fill is None:
                assert (rest == layout.pad).all() and rest.size < 8  # too little room for a filler
            else:
                assert fill["source"] == "text" and r["meta"]["sources"] == [Path(data[media_key]).name, "text"]
                assert rest[0] == task_text and fill["tokens"] == rest.size - 1
                assert rest[1:].tolist() == stream[fill["start"] : fill["start"] + fill["tokens"]].tolist()
                fill_tokens += fill["tokens"]
            seen += r["meta"]["samples"]
        assert len(seen) == len(set(seen)) and not too_long & set(seen)
        shared.append(max(len(r["meta"]["samples"]) for r in got))
        src = m.counts["sources"][Path(data[media_key]).name]
        assert src["rows"] == len(got) and src["samples_consumed"] == len(seen) + src["too_long_for_seq_len"]
        assert 0 < src["too_long_for_seq_len"] <= len(too_long)
        pad = {name: np.mean([(r["tokens"] == layout.pad).mean() for r in rs if r["meta"]["task"] == modality])
               for name, rs in (("filled", got), ("nofill", nofill_rows), ("unpacked", unpacked_rows))}
        print(modality, "PAD share", {k: round(float(v), 3) for k, v in pad.items()})
        assert pad["filled"] < pad["nofill"] < pad["unpacked"]
    print("most samples in one row (image, audio):", shared)
    assert max(shared) >= 2  # rows really are shared
    # fillers are dealt in output-row order, back to back, from the end of the used text rows
    fills = sorted((r["meta"]["row"], r["meta"]["filler"]) for r in rows if "filler" in r["meta"])
    assert fills
    for _, fill in fills:
        assert fill["start"] == next_start
        next_start += fill["tokens"]
    assert m.counts["filler"] == {"source": "text", "rows": len(fills), "tokens": fill_tokens, "rows_left_padded": 0}
    assert m.counts["sources"]["text"]["filler_tokens"] == fill_tokens
    # the text input counts every document whose text reached a row (its BOS before the last filler's end)
    doc_starts = np.cumsum([0] + [d.size + 2 for _, d in docs])[:-1]
    assert m.counts["sources"]["text"]["samples_consumed"] == int((doc_starts < next_start).sum())
    assert m.counts["read"] == sum(s["samples_consumed"] for s in m.counts["sources"].values())
    assert all("filler" not in r["meta"] for r in nofill_rows) and "filler" not in Manifest.load(str(tmp_path / "nofill")).counts

    plain = LoaderConfig(sources=[SourceConfig(out)], seq_len=L, cycle=False, num_streams=1)
    with pytest.raises(ValueError, match="data.pack_paired=true"):
        list(TrimodalDataset(plain, layout))
    meta = {r["tokens"].tobytes(): r["meta"] for r in rows}
    n = 0
    for r in TrimodalDataset(replace(plain, pack_paired=True), layout):
        row_meta = meta[r["tokens"].numpy().astype(np.uint32).tobytes()]
        segments = int(r["segments"].max()) + 1
        expected = 1 if row_meta["task"] == "text" else len(row_meta["samples"]) + ("filler" in row_meta)
        assert segments == expected
        n += 1
    assert n == len(rows)

    # two worker processes: the same bytes
    other = str(tmp_path / "packed2")
    run_mix_pipeline(replace(cfg, out=other), BEAM + ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    strip = lambda d: {k: v for k, v in d.items() if k != "manifest.json"}  # noqa: E731
    assert strip(_tree_digest(other)) == strip(_tree_digest(out))
