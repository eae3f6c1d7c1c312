"""compute_stats / format_stats / write_plots on small datasets written with the real writer."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from trimodal.shards.manifest import Manifest
from trimodal.shards.report import format_stats, write_plots
from trimodal.shards.counts import Counts
from trimodal.shards.stats import compute_stats
from trimodal.shards.writer import write_shard
from trimodal.tokenizers.vocab import VocabLayout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(i: int, source: str, modality: str, arrays: dict, **lengths):
    key = f"{modality}{i:05d}{source}"
    meta = {
        "id": key,
        "source": source,
        "modality": modality,
        "lengths": {k: int(v.size) for k, v in arrays.items()} | lengths,
        "provenance": {},
    }
    return key, meta, arrays


def make_text(root, rng, compression="none"):
    """Two shards, two sources; returns the per-document lengths by source."""
    lengths = {"wiki": [], "books": []}
    shards = []
    i = 0
    for s in range(2):
        samples = []
        for j in range(7 + 4 * s):
            src = "wiki" if j % 3 else "books"
            n = int(rng.integers(1, 300)) if j != 5 else 1000  # one long document
            lengths[src].append(n)
            samples.append(_sample(i, src, "text", {"text": rng.integers(0, 1000, n).astype(np.uint16)}))
            i += 1
        samples.sort(key=lambda x: x[0])
        suffix = ".tar.zst" if compression == "zstd" else ".tar"
        shards.append(write_shard(str(root), f"shard-{s:05d}-of-00002{suffix}", samples, compression=compression))
    written = sum(len(v) for v in lengths.values())
    Manifest(
        kind="tokenized",
        modality="text",
        tokenizers={"text": {"kind": "test", "fingerprint": "abc", "vocab_size": 100}},
        shards=shards,
        counts={"read": written + 6, "written": written, "filtered": {"too_few_tokens": 3}, "rejected": {"bad_json": 2, "undecodable": 1}},
    ).save(str(root))
    return lengths


def make_image_text(root, rng):
    """One shard; returns (image code counts, caption lengths)."""
    images, captions, samples = [], [], []
    for i in range(9):
        h, w = [(4, 4), (2, 3), (8, 8)][i % 3]
        c = int(rng.integers(2, 30))
        images.append(h * w)
        captions.append(c)
        samples.append(
            _sample(i, "cc3m", "image_text", {"image": rng.integers(0, 16, (h, w)).astype(np.uint16), "text": rng.integers(0, 1000, c).astype(np.uint16)})
        )
    samples.sort(key=lambda x: x[0])
    info = write_shard(str(root), "shard-00000-of-00001.tar", samples)
    Manifest(
        kind="tokenized",
        modality="image_text",
        tokenizers={"text": {"kind": "test", "fingerprint": "abc", "vocab_size": 100}, "image": {"kind": "test", "fingerprint": "img", "vocab_size": 64}},
        shards=[info],
        counts={"read": 13, "written": 9, "filtered": {}, "rejected": {"bad_json": 1, "corrupt_image": 3}},
    ).save(str(root))
    return images, captions


def make_audio_text(root, rng):
    frames, seconds, transcripts, samples = [], [], [], []
    for i in range(5):
        f = int(rng.integers(10, 40))
        sec = round(f / 86.0, 3)
        c = int(rng.integers(1, 20))
        frames.append(f)
        seconds.append(sec)
        transcripts.append(c)
        samples.append(
            _sample(
                i, "ljspeech", "audio_text",
                {"audio": rng.integers(0, 1024, (4, f)).astype(np.uint16), "text": rng.integers(0, 1000, c).astype(np.uint16)},
                seconds=sec,
            )
        )
    info = write_shard(str(root), "shard-00000-of-00001.tar", sorted(samples, key=lambda x: x[0]))
    Manifest(kind="tokenized", modality="audio_text", tokenizers={}, shards=[info], counts={"read": 5, "written": 5, "filtered": {}, "rejected": {}}).save(str(root))
    return frames, seconds, transcripts


def test_text_and_image_text_numbers_match(tmp_path):
    rng = np.random.default_rng(0)
    text_root, img_root = tmp_path / "text", tmp_path / "img"
    lengths = make_text(text_root, rng)
    images, captions = make_image_text(img_root, rng)
    L = 64
    stats = compute_stats([str(text_root), str(img_root)], seq_len=L)

    docs = lengths["wiki"] + lengths["books"]
    assert stats["samples"] == len(docs) + 9
    assert stats["shards"] == 3
    assert stats["tokens"] == {"text": sum(docs) + sum(captions), "image": sum(images)}
    assert stats["rejected"] == {"bad_json": 3, "undecodable": 1, "corrupt_image": 3}
    assert stats["filtered"] == {"too_few_tokens": 3}
    assert stats["read"] == len(docs) + 6 + 13 and stats["written"] == len(docs) + 9
    shard_bytes = sum(os.path.getsize(p) for p in [*text_root.glob("*.tar"), *img_root.glob("*.tar")])
    assert stats["bytes"] == shard_bytes
    assert stats["mismatches"] == []
    assert [d["shards"] for d in stats["datasets"]] == [2, 1]

    # per source
    assert set(stats["sources"]) == {"wiki", "books", "cc3m"}
    for src in ("wiki", "books"):
        s = stats["sources"][src]
        assert s["samples"] == len(lengths[src])
        assert s["tokens"] == {"text": sum(lengths[src])}
        assert s["modalities"] == {"text": len(lengths[src])}
        h = s["histograms"]["text_tokens_per_document"]
        assert h["n"] == len(lengths[src]) and sum(h["counts"]) == len(lengths[src])
        assert h["min"] == min(lengths[src]) and h["max"] == max(lengths[src])
    assert stats["sources"]["cc3m"]["tokens"] == {"text": sum(captions), "image": sum(images)}

    # per modality
    assert stats["modalities"]["text"]["samples"] == len(docs)
    assert stats["modalities"]["image_text"]["samples"] == 9

    # histograms (overall)
    h = stats["histograms"]
    td = h["text_tokens_per_document"]
    assert td["n"] == len(docs) and sum(td["counts"]) == len(docs) and td["sum"] == sum(docs)
    assert td["min"] == min(docs) and td["max"] == max(docs) == 1000
    assert td["mean"] == pytest.approx(sum(docs) / len(docs))
    assert td["p50"] == sorted(docs)[math.ceil(0.5 * len(docs)) - 1]
    assert len(td["edges"]) == len(td["counts"]) + 1
    # each value falls in its bin: recompute with the edges
    recount = np.histogram(docs, bins=np.asarray(td["edges"]))[0]
    assert recount.tolist() == td["counts"]
    cap = h["caption_tokens"]
    assert cap["n"] == 9 and cap["sum"] == sum(captions) and sum(cap["counts"]) == 9
    im = h["image_tokens"]
    assert im["n"] == 9 and im["sum"] == sum(images) and im["min"] == 6 and im["max"] == 64
    assert "audio_seconds" not in h

    # padding at L: paired rows L - (media + text + 5) clipped at 0; text rows packed, no padding
    content = [i + c + 5 for i, c in zip(images, captions)]
    pad = [max(0, L - x) for x in content]
    text_rows = math.ceil(sum(n + 2 for n in docs) / (L - 1))
    p = stats["padding"]
    assert p["seq_len"] == L
    assert p["rows"] == 9 + text_rows
    assert p["pad_tokens"] == sum(pad)
    assert p["over_length"] == sum(x > L for x in content)
    assert p["fraction"] == pytest.approx(sum(pad) / ((9 + text_rows) * L), abs=1e-6)
    pm = stats["modalities"]["image_text"]["padding"]
    assert pm["rows"] == 9 and pm["fraction"] == pytest.approx(sum(pad) / (9 * L), abs=1e-6)
    assert stats["modalities"]["text"]["padding"]["fraction"] == 0.0
    rp = h["row_padding"]
    assert rp["n"] == 9 + text_rows and sum(rp["counts"]) == 9 + text_rows  # text rows sit at 0
    assert rp["counts"] == np.histogram([x / L for x in pad] + [0.0] * text_rows, bins=20, range=(0, 1))[0].tolist()

    # JSON-ready, and it survives a round trip unchanged
    assert json.loads(json.dumps(stats)) == stats

    text = format_stats(stats)
    for word in ("wiki", "books", "cc3m", "bad_json", "corrupt_image", "too_few_tokens", "text_tokens_per_document", f"L={L}"):
        assert word in text


def test_without_seq_len_no_padding(tmp_path):
    rng = np.random.default_rng(1)
    make_image_text(tmp_path / "img", rng)
    stats = compute_stats(str(tmp_path / "img"))
    assert stats["padding"] is None and "row_padding" not in stats["histograms"]
    json.dumps(stats)
    assert "cc3m" in format_stats(stats)


def test_plots_are_nonempty_pngs(tmp_path):
    rng = np.random.default_rng(2)
    make_text(tmp_path / "text", rng)
    make_image_text(tmp_path / "img", rng)
    make_audio_text(tmp_path / "audio", rng)
    stats = compute_stats([str(tmp_path / "text"), str(tmp_path / "img"), str(tmp_path / "audio")], seq_len=128)
    paths = write_plots(stats, str(tmp_path / "plots"))
    names = {os.path.basename(p) for p in paths}
    for expected in ("text_tokens_per_document.png", "caption_tokens.png", "image_tokens.png", "audio_seconds.png", "row_padding.png"):
        assert expected in names
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG_MAGIC and len(data) > 1024


def test_plots_only_those_with_data(tmp_path):
    make_text(tmp_path / "text", np.random.default_rng(3))
    stats = compute_stats(str(tmp_path / "text"))  # no L: no row padding plot
    names = {os.path.basename(p) for p in write_plots(stats, str(tmp_path / "plots"))}
    assert names == {"text_tokens_per_document.png"}


def test_audio_seconds_and_frames(tmp_path):
    frames, seconds, transcripts = make_audio_text(tmp_path / "a", np.random.default_rng(4))
    L = 200
    stats = compute_stats(str(tmp_path / "a"), seq_len=L)
    assert stats["tokens"] == {"audio": 4 * sum(frames), "text": sum(transcripts)}
    h = stats["histograms"]
    assert h["audio_frames"]["sum"] == sum(frames) and h["audio_frames"]["n"] == 5
    assert h["audio_seconds"]["sum"] == pytest.approx(sum(seconds))
    assert h["audio_seconds"]["max"] == pytest.approx(max(seconds), abs=0.006)
    assert h["transcript_tokens"]["sum"] == sum(transcripts)
    pad = [max(0, L - (4 * f + c + 5)) for f, c in zip(frames, transcripts)]
    assert stats["padding"]["pad_tokens"] == sum(pad)
    # k capped by the layout's audio levels
    stats2 = compute_stats(str(tmp_path / "a"), seq_len=L, audio_levels=2)
    assert stats2["padding"]["pad_tokens"] == sum(max(0, L - (2 * f + c + 5)) for f, c in zip(frames, transcripts))
    assert stats2["tokens"] == stats["tokens"]  # stored codes are still counted in full


def test_zstd_and_manifest_mismatch(tmp_path):
    rng = np.random.default_rng(5)
    lengths = make_text(tmp_path / "t", rng, compression="zstd")
    stats = compute_stats(str(tmp_path / "t"))
    assert stats["tokens"]["text"] == sum(lengths["wiki"]) + sum(lengths["books"])
    m = Manifest.load(str(tmp_path / "t"))
    m.shards[0].samples += 1
    m.save(str(tmp_path / "t"))
    stats = compute_stats(str(tmp_path / "t"))
    assert len(stats["mismatches"]) == 1 and stats["mismatches"][0]["shard"].endswith(m.shards[0].name)
    assert "WARNING" in format_stats(stats)


def test_mixed_rows(tmp_path):
    layout = VocabLayout(text_codes=50, image_codes=16, audio_codes=8, audio_levels=2)
    L = 16
    pad = layout.pad
    rows, expect_pad, expect_text, expect_image = [], [], 0, 0
    rng = np.random.default_rng(6)
    for i in range(6):
        if i % 2:  # paired image row: TASK BOS img… EOS BOS txt… EOS PAD…
            ni, nt = 4, int(rng.integers(1, 5))
            body = [layout.task_token("image_text"), layout.image.bos, *(layout.image.offset + rng.integers(0, 16, ni)).tolist(),
                    layout.image.eos, layout.text.bos, *rng.integers(0, 50, nt).tolist(), layout.text.eos]
            expect_image += ni
        else:  # packed text row
            nt = L - 3
            body = [layout.task_token("text"), layout.text.bos, *rng.integers(0, 50, nt).tolist(), layout.text.eos]
        expect_text += nt
        row = np.full(L, pad, dtype=np.uint32)
        row[: len(body)] = body
        expect_pad.append(L - len(body))
        rows.append((f"row{i:04d}", {"id": f"row{i}", "source": "mix"}, {"tokens": row}))
    info = write_shard(str(tmp_path / "m"), "shard-00000-of-00001.tar", rows)
    Manifest(kind="mixed", modality="mixed", tokenizers={}, shards=[info], layout=layout.to_dict(), seq_len=L).save(str(tmp_path / "m"))
    stats = compute_stats(str(tmp_path / "m"))
    assert stats["samples"] == 6
    assert stats["tokens"]["text"] == expect_text and stats["tokens"]["image"] == expect_image
    assert stats["padding"]["pad_tokens"] == sum(expect_pad) and stats["padding"]["seq_len"] == L
    assert stats["padding"]["fraction"] == pytest.approx(sum(expect_pad) / (6 * L), abs=1e-6)
    assert set(stats["modalities"]) == {"text", "image_text"}
    assert stats["modalities"]["text"]["padding"]["pad_tokens"] == 0
    json.dumps(stats)
    format_stats(stats)


def test_counts_exact_beyond_dense_cap():
    c = Counts()
    vals = np.array([3, 3, 7, 70_000, 70_000, 1_000_000], dtype=np.int64)
    c.add(vals[:3])
    c.add(vals[3:])
    s = c.histogram()
    assert s["n"] == 6 and s["sum"] == int(vals.sum()) and s["max"] == 1_000_000 and s["min"] == 3
    assert sum(s["counts"]) == 6 and s["p50"] == 7 and s["p90"] == 1_000_000
    assert np.histogram(vals, bins=np.asarray(s["edges"]))[0].tolist() == s["counts"]


def test_audio_overflow_counts_the_clips_and_seconds_that_do_not_fit(tmp_path):
    """``shards stats --seq-len L``: the clips whose clip + transcript + 5 exceed L (the loader's
    rule for cropping or skipping them), their seconds, and what a crop would cut."""
    frames, seconds, transcripts = make_audio_text(tmp_path / "a", np.random.default_rng(4))
    L = 100
    need = [4 * f + c + 5 for f, c in zip(frames, transcripts)]
    over = [i for i, n in enumerate(need) if n > L]
    assert 0 < len(over) < 5
    got = compute_stats(str(tmp_path / "a"), seq_len=L)["audio_overflow"]
    assert got["seq_len"] == L and got["clips"] == 5 and got["clips_over"] == len(over)
    assert got["fraction_over"] == pytest.approx(len(over) / 5)
    assert got["seconds_over"] == pytest.approx(sum(seconds[i] for i in over), abs=0.006 * len(over))  # 10 ms bins
    assert compute_stats(str(tmp_path / "a"), seq_len=10_000)["audio_overflow"]["clips_over"] == 0


def test_same_named_inputs_of_two_datasets_stay_apart_by_source_and_by_root(tmp_path, sp_model, capsys):
    """Two corpora, each a folder with a file named ``docs-00000.jsonl``, tokenized by the real
    pipeline: ``shards stats`` names two sources (folder + file name) and reports each root."""
    from trimodal import cli

    roots = []
    for folder in ("news", "forum"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "docs-00000.jsonl").write_text(
            "".join(json.dumps({"text": f"{folder} document number {i}"}) + "\n" for i in range(5 if folder == "news" else 3)))
        roots.append(str(tmp_path / "data" / folder))
        assert cli.main(["pipeline", "text", "--input", str(tmp_path / folder / "docs-00000.jsonl"), "--text-tokenizer",
                         sp_model, "--out", roots[-1], "--runner=DirectRunner"]) == 0
    capsys.readouterr()
    assert cli.main(["shards", "stats", *roots, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: v["samples"] for k, v in stats["sources"].items()} == {"news/docs-00000.jsonl": 5, "forum/docs-00000.jsonl": 3}
    assert {k: v["samples"] for k, v in stats["per_root"].items()} == {roots[0]: 5, roots[1]: 3}
    assert cli.main(["shards", "stats", *roots]) == 0
    text = capsys.readouterr().out
    assert "By root" in text and "news/docs-00000.jsonl" in text and "forum/docs-00000.jsonl" in text


def test_a_source_name_under_two_roots_is_told_apart_by_its_root(tmp_path):
    """Shards written before names carried the folder (both sources named ``00000``)."""
    rng = np.random.default_rng(0)
    roots = []
    for name in ("a", "b"):
        root = tmp_path / name
        samples = [_sample(i, "00000", "text", {"text": rng.integers(0, 100, 5).astype(np.uint16)}) for i in range(2)]
        shard = write_shard(str(root), "shard-00000-of-00001.tar", samples)
        Manifest(kind="tokenized", modality="text", tokenizers={"text": {"kind": "test", "fingerprint": "abc", "vocab_size": 100}},
                 shards=[shard], counts={"read": 2, "written": 2}).save(str(root))
        roots.append(str(root))
    stats = compute_stats(roots)
    assert set(stats["sources"]) == {f"00000 ({roots[0]})", f"00000 ({roots[1]})"}


def test_integer_histograms_get_integer_ticks_and_a_one_value_one_a_note(tmp_path):
    from trimodal.shards.report import histogram_figure

    samples = [_sample(i, "s", "image_text", {"image": np.zeros((8, 8), np.uint16),
                                              "text": np.arange(3 + i % 4, dtype=np.uint16)}) for i in range(10)]
    info = write_shard(str(tmp_path), "shard-00000-of-00001.tar", sorted(samples, key=lambda x: x[0]))
    Manifest(kind="tokenized", modality="image_text", tokenizers={"text": {"kind": "t", "fingerprint": "a", "vocab_size": 100}},
             shards=[info], counts={"read": 10, "written": 10}).save(str(tmp_path))
    stats = compute_stats(str(tmp_path))
    for name in ("image_tokens", "caption_tokens"):
        fig = histogram_figure(name, stats["histograms"][name], stats)
        ticks = fig.axes[0].get_xticks()
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)
    assert "every value is 64: one bar" in histogram_figure("image_tokens", stats["histograms"]["image_tokens"], stats).axes[0].get_title()
    assert write_plots(stats, str(tmp_path / "plots"))
