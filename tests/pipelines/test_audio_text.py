"""Audio-text pipeline: readers, accounting, dead-letter reasons, stock webdataset, exact codes.

A NeMo-style manifest corpus with planted bad records (zero-byte file, truncated wav, random
bytes, zero samples, NaN samples, too long, missing file, empty transcript, bad JSON, missing
field, segment past the end) and good clips at 16 kHz, 22.05 kHz (resampled), stereo FLAC and a
segment of a recording longer than ``max_seconds``; a tiny random DAC and the session's
SentencePiece model; the real Beam pipeline on the DirectRunner.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import apache_beam as beam
import torch
import webdataset as wds

from trimodal.pipelines import common
from trimodal.pipelines.audio_readers import read_audio_file, resolve_audio_path, split_key
from trimodal.pipelines.records import Record
from trimodal.pipelines.audio_text import (
    AudioTextPipelineConfig,
    bucket_end,
    build_audio_text_pipeline,
    encode_clips,
    pad_multiple,
    resolve_device,
    run_audio_text_pipeline,
)
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import read_dataset
from trimodal.tokenizers.audio_io import load_audio
from trimodal.tokenizers.dac import DAC, DACConfig, DACTokenizer, save_dac
from trimodal.tokenizers.text import TextTokenizer

SR = 16000
RUNNER = ["--runner=DirectRunner"]
MAX_SECONDS = 3.0
BUCKET_SECONDS = 0.25
WORDS = "the model reads a corpus of documents and learns to fill masked tokens with words".split()


def _clip(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 150 + 50 * seed
    x = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(n)
    if channels == 2:
        x = np.stack([x, 0.5 * np.roll(x, 37)], axis=1)
    return x.astype(np.float32)


def _audio_bytes(x: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 5))


@pytest.fixture(scope="module")
def dac_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dac") / "dac_tiny.pth"
    save_dac(DAC(DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                           n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=SR)), path)
    return str(path)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("speech")
    (folder / "audio").mkdir()
    lines: list[bytes] = []
    planted: dict[int, tuple[str, str]] = {}  # line number -> (outcome, reason)
    good: dict[int, dict] = {}  # line number -> what the sample must hold

    def add(obj, bad: tuple[str, str] | None = None, raw: bytes | None = None, expect: dict | None = None):
        lines.append(raw if raw is not None else json.dumps(obj).encode())
        if bad:
            planted[len(lines)] = bad
        else:
            good[len(lines)] = expect or {}

    # good clips, several per 0.25 s bucket so that batches really mix clips (kept short: the
    # tiny codec still costs ~1 s of CPU per second of audio)
    for i, seconds in enumerate([0.12, 0.15, 0.22, 0.26, 0.31, 0.45, 0.52]):
        name = f"audio/clip_{i:02d}.wav"
        (folder / name).write_bytes(_audio_bytes(_clip(seconds, SR, i), SR))
        add({"audio_filepath": name, "text": "  " + _sentence(i) + "\n", "duration": seconds},
            expect={"samples": int(round(seconds * SR)), "text": _sentence(i)})
    # another sample rate (resampled: 0.4 s at 22,050 Hz -> 6,400 samples) and stereo FLAC
    (folder / "audio/clip_22k.wav").write_bytes(_audio_bytes(_clip(0.4, 22050, 11), 22050, subtype="FLOAT"))
    add({"audio_filepath": "audio/clip_22k.wav", "text": _sentence(11)}, expect={"samples": 6400, "text": _sentence(11)})
    (folder / "audio/stereo.flac").write_bytes(_audio_bytes(_clip(0.3, SR, 12, channels=2), SR, "FLAC"))
    add({"audio_filepath": str(folder / "audio/stereo.flac"), "text": _sentence(12)},  # absolute path
        expect={"samples": int(0.3 * SR), "text": _sentence(12)})
    # a 5 s recording (longer than max_seconds) whose manifest line names a 0.5 s segment
    long = _clip(5.0, SR, 13)
    (folder / "audio/long.wav").write_bytes(_audio_bytes(long, SR, subtype="FLOAT"))
    add({"audio_filepath": "audio/long.wav", "text": _sentence(13), "offset": 2.0, "duration": 0.5},
        expect={"samples": int(0.5 * SR), "text": _sentence(13), "segment_of": long[2 * SR: int(2.5 * SR)]})

    # planted bad records
    (folder / "audio/zero_bytes.wav").write_bytes(b"")
    add({"audio_filepath": "audio/zero_bytes.wav", "text": "zero bytes"}, ("rejected", "empty"))
    (folder / "audio/truncated.wav").write_bytes(_audio_bytes(_clip(0.5, SR, 20), SR)[:20])
    add({"audio_filepath": "audio/truncated.wav", "text": "truncated header"}, ("rejected", "undecodable"))
    (folder / "audio/random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    add({"audio_filepath": "audio/random.wav", "text": "random bytes"}, ("rejected", "undecodable"))
    (folder / "audio/zero_samples.wav").write_bytes(_audio_bytes(np.zeros((0, 1), np.float32), SR))
    add({"audio_filepath": "audio/zero_samples.wav", "text": "no samples"}, ("rejected", "zero_samples"))
    nan = _clip(0.2, SR, 21)
    nan[100] = np.nan
    (folder / "audio/nan.wav").write_bytes(_audio_bytes(nan, SR, subtype="FLOAT"))
    add({"audio_filepath": "audio/nan.wav", "text": "a NaN sample"}, ("rejected", "non_finite"))
    add({"audio_filepath": "audio/long.wav", "text": "the whole long file"}, ("filtered", "too_long"))
    add({"audio_filepath": "audio/does_not_exist.wav", "text": "missing"}, ("rejected", "missing_file"))
    add({"audio_filepath": "audio/clip_00.wav", "text": " \n\t "}, ("filtered", "empty_transcript"))
    add(None, ("rejected", "bad_json"), raw=b"{not json")
    add({"audio_filepath": "audio/clip_01.wav"}, ("rejected", "missing_field"))
    add({"audio_filepath": "audio/clip_01.wav", "text": "bad offset", "offset": "soon"}, ("rejected", "bad_field_type"))
    add({"audio_filepath": "audio/long.wav", "text": "past the end", "offset": 9.0, "duration": 1.0},
        ("rejected", "bad_segment"))
    add(None, ("rejected", "invalid_utf8"), raw=b'{"audio_filepath": "audio/clip_02.wav", "text": "\xff\xfe"}')

    manifest = folder / "manifest.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return {
        "manifest": str(manifest),
        "planted": {f"{manifest}:{n}": v for n, v in planted.items()},
        "good": {f"{manifest}:{n}": v for n, v in good.items()},
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, speech, sp_model, dac_path) -> str:
    """Run through ``common.run``'s own steps, keeping the Beam result to read its counters
    (``run_audio_text_pipeline`` itself is exercised by the tar test)."""
    out = str(tmp_path_factory.mktemp("ds") / "audio_text")
    cfg = AudioTextPipelineConfig(inputs=[speech["manifest"]], text_tokenizer=sp_model, audio_tokenizer=dac_path,
                                  out=out, format="auto", device="auto", max_seconds=MAX_SECONDS, batch_size=4,
                                  bucket_seconds=BUCKET_SECONDS, target_shard_bytes=4000)
    text_tok = TextTokenizer.from_path(sp_model)
    audio_tok = DACTokenizer.from_path(dac_path, n_keep=cfg.n_keep)
    common.prepare_output(out)
    with beam.Pipeline(options=common.pipeline_options(RUNNER)) as p:
        build_audio_text_pipeline(p, cfg, [speech["manifest"]], text_tok, audio_tok)
    counters = {r.key.metric.name: r.committed for r in p.result.metrics().query()["counters"]}
    speech["counters"] = counters
    return out





def test_val_split_partitions_the_samples_by_id(tmp_path, dataset, speech, sp_model, dac_path, check_val_split):
    out = str(tmp_path / "split")
    run_audio_text_pipeline(AudioTextPipelineConfig(inputs=[speech["manifest"]], text_tokenizer=sp_model,
                                                    audio_tokenizer=dac_path, out=out, format="auto", device="auto",
                                                    max_seconds=MAX_SECONDS, batch_size=4, bucket_seconds=BUCKET_SECONDS,
                                                    target_shard_bytes=4000, val_fraction=0.4), RUNNER)
    sizes = check_val_split(dataset, out, 0.4)
    assert sizes["train"] > 0 and sizes["val"] > 0


def test_accounting_and_dead_letter(dataset, speech):
    m = Manifest.load(dataset)
    good, planted = len(speech["good"]), speech["planted"]
    assert (m.counts["read"], m.counts["written"], m.samples, m.unaccounted) == (good + len(planted), good, good, 0)
    assert len(m.shards) > 1 and m.dead_letter_outcomes(dataset) == planted
    assert len(m.dead_letters(dataset)) == len(planted)  # each bad record once
    from trimodal.pipelines.readers import source_name

    assert all(r["source"] == source_name(speech["manifest"]) and r["stage"] for r in m.dead_letters(dataset))
    # Beam counters agree, and the codec really ran batches of several clips
    counters = speech["counters"]
    assert counters["encode/ok"] == m.counts["written"]
    assert counters["read/read"] + sum(v for k, v in counters.items() if k.startswith("read/rejected/")) == m.counts["read"]
    assert counters["encode/batches"] < counters["encode/ok"]


def test_manifest_records_both_tokenizers(dataset, dac_path, sp_model):
    m = Manifest.load(dataset)
    assert m.modality == "audio_text"
    audio = m.tokenizers["audio"]
    tok = DACTokenizer.from_path(dac_path, n_keep=4)
    assert audio.kind == "dac" and audio.fingerprint == tok.fingerprint
    assert (audio.vocab_size, audio.levels, audio.sample_rate, audio.hop_length) == (1024, 4, SR, 320)
    assert audio.frame_rate == pytest.approx(50.0) and Path(audio.path) == Path(dac_path).resolve()
    assert audio.extra["pad_multiple"] == pad_multiple(BUCKET_SECONDS, SR, 320) == 4160
    assert m.tokenizers["text"].fingerprint == TextTokenizer.from_path(sp_model).fingerprint
    assert m.tokens()["audio"] == sum(s["audio"].size for s in list(read_dataset(dataset)))


def test_samples_hold_exact_codes_of_each_clip_alone(dataset, speech, dac_path, sp_model):
    """Codes equal encoding each clip by itself: bucketing makes batch-mates irrelevant."""
    tok = DACTokenizer.from_path(dac_path, n_keep=4)
    text_tok = TextTokenizer.from_path(sp_model)
    multiple = pad_multiple(BUCKET_SECONDS, SR, tok.hop_length)
    # the waveforms the pipeline should have seen, decoded one by one
    wavs = {r.id: load_audio(r.media, SR, None) for r in read_audio_file(speech["manifest"])
            if isinstance(r, Record) and r.id in speech["good"]}
    samples = list(read_dataset(dataset))
    assert {s["json"]["id"] for s in samples} == set(speech["good"])
    for s in samples:
        meta, want = s["json"], speech["good"][s["json"]["id"]]
        wav = wavs[meta["id"]]
        assert wav.shape == (want["samples"],)
        if "segment_of" in want:  # cut from the 5 s recording, independently of the reader
            np.testing.assert_array_equal(wav, want["segment_of"])
            assert meta["provenance"]["segment"]["offset"] == 2.0
        alone = encode_clips(tok, [wav], multiple)[0]
        assert s["audio"].dtype == np.uint16 and s["audio"].shape == (4, -(-want["samples"] // 320))
        np.testing.assert_array_equal(s["audio"], alone)
        np.testing.assert_array_equal(s["text"], text_tok.encode_one(want["text"]))
        assert meta["modality"] == "audio_text" and meta["source"].endswith("/manifest.jsonl")
        assert meta["lengths"] == {"audio_frames": s["audio"].shape[1], "text": s["text"].size,
                                   "seconds": round(want["samples"] / SR, 4)}
    stereo = next(s for s in samples if s["json"]["provenance"]["audio"].endswith("stereo.flac"))
    assert stereo["json"]["provenance"]["channels"] == 2
    resampled = next(s for s in samples if s["json"]["provenance"]["audio"].endswith("clip_22k.wav"))
    assert resampled["json"]["provenance"]["sample_rate"] == 22050


def test_encode_clips_is_batch_invariant_where_naive_batching_is_not(dac_path):
    tok = DACTokenizer.from_path(dac_path, n_keep=4)
    rng = np.random.default_rng(1)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (700, 1200, 1590, 1600, 1601, 2500, 330)]
    multiple = pad_multiple(0.1, SR, tok.hop_length)
    assert multiple == 1600
    together = encode_clips(tok, wavs, multiple)
    for w, codes in zip(wavs, together):
        np.testing.assert_array_equal(codes, encode_clips(tok, [w], multiple)[0])
        assert codes.shape == (4, tok.n_frames(len(w)))
        assert bucket_end(len(w), multiple) % multiple == 0 and 0 <= bucket_end(len(w), multiple) - len(w) < multiple
    # what bucketing prevents: padding a clip to a longer batch-mate changes its last frames
    naive = tok.encode(wavs)
    plain = [tok.encode([w])[0] for w in wavs]
    assert any(not np.array_equal(a, b) for a, b in zip(naive, plain))
    # bucket width 0 s = pad to the hop only = exactly DACTokenizer.encode of the clip alone
    for w, p in zip(wavs, plain):
        np.testing.assert_array_equal(encode_clips(tok, [w], tok.hop_length)[0], p)


def test_stock_webdataset_reads_shards(dataset, tmp_path):
    """Stock webdataset reads the shards once ``zstd -d`` made them plain tars (``--compression
    none`` writes plain tars)."""
    import zstandard

    m = Manifest.load(dataset)
    urls = []
    for s in m.shards:
        data = (Path(dataset) / s.name).read_bytes()
        assert s.name.endswith(".tar.zst")  # the default
        urls.append(str(tmp_path / s.name[: -len(".zst")]))
        Path(urls[-1]).write_bytes(zstandard.ZstdDecompressor().decompress(data))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == m.samples
    for s in samples:
        assert s["audio.npy"].dtype == np.uint16 and s["audio.npy"].shape[0] == 4
        assert s["json"]["lengths"]["audio_frames"] == s["audio.npy"].shape[1]
        assert s["json"]["modality"] == "audio_text" and s["text.npy"].size == s["json"]["lengths"]["text"]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar_reader(tmp_path, sp_model, dac_path):
    wav = _audio_bytes(_clip(0.2, SR, 1), SR)
    flac = _audio_bytes(_clip(0.5, 24000, 2), 24000, "FLAC")
    members = [
        ("part/a.flac", flac), ("part/a.txt", b"a flac clip with a text file"),
        ("part/b.wav", wav), ("part/b.json", json.dumps({"transcript": "a wav clip with json", "spk": 3}).encode()),
        ("part/c.wav", wav), ("part/c.json", json.dumps({"text": "the json text field"}).encode()),
        ("part/d.wav", wav),  # no transcript
        ("part/e.txt", b"no audio for this one"),
        ("part/f.wav", wav), ("part/f.txt", b"\xff\xfe not utf-8"),
        ("part/g.wav", wav), ("part/g.json", b"{broken"),
        ("part/h.wav", b"\x00" * 100), ("part/h.txt", b"undecodable audio"),
        ("part/i.seg.0.wav", wav), ("part/i.seg.0.txt", b"a key with dots after the first"),
    ]
    path = tmp_path / "speech-000.tar"
    _tar(path, members)
    assert split_key("part/i.seg.0.wav") == ("part/i", "seg.0.wav")
    out = str(tmp_path / "out")
    m = run_audio_text_pipeline(AudioTextPipelineConfig(inputs=[str(path)], text_tokenizer=sp_model,
                                                        audio_tokenizer=dac_path, out=out, device="cpu"), RUNNER)
    c = m.counts
    assert c["read"] == 9 and c["written"] == 4
    assert c["rejected"] == {"bad_json": 1, "invalid_utf8": 1, "missing_audio": 1, "missing_transcript": 1,
                             "undecodable": 1}
    dead = {r["id"].rsplit(":", 1)[1]: r["reason"] for r in Manifest.load(str(out)).dead_letters(str(out))}
    assert dead == {"part/d": "missing_transcript", "part/e": "missing_audio", "part/f": "invalid_utf8",
                    "part/g": "bad_json", "part/h": "undecodable"}
    tok = TextTokenizer.from_path(sp_model)
    by_key = {s["json"]["provenance"]["key"]: s for s in list(read_dataset(out))}
    assert set(by_key) == {"part/a", "part/b", "part/c", "part/i"}
    assert tok.decode(by_key["part/b"]["text"]) == "a wav clip with json"
    assert tok.decode(by_key["part/c"]["text"]) == "the json text field"
    assert by_key["part/a"]["json"]["lengths"]["seconds"] == pytest.approx(0.5, abs=1e-3)  # 24 kHz resampled
    assert by_key["part/a"]["audio"].shape == (4, 25)


def test_truncated_tar_keeps_earlier_samples_and_reports_the_break(tmp_path):
    path = tmp_path / "broken.tar"
    wav = _audio_bytes(_clip(0.2, SR, 3), SR)
    _tar(path, [("a.wav", wav), ("a.txt", b"first"), ("b.wav", wav), ("b.txt", b"second")])
    with tarfile.open(path) as tar:
        cut = tar.getmember("b.wav").offset_data + 1000
    path.write_bytes(path.read_bytes()[:cut])  # cut inside b.wav's data
    recs = list(read_audio_file(str(path)))
    assert [r.text for r in recs[:1]] == ["first"]
    assert recs[-1].reason == "unreadable_file" and len(recs) == 2


def test_resolve_audio_path_and_device():
    assert resolve_audio_path("/data/ls/train.jsonl", "a/b.flac") == "/data/ls/a/b.flac"
    assert resolve_audio_path("/data/ls/train.jsonl", "/abs/b.flac") == "/abs/b.flac"
    assert resolve_audio_path("gs://bucket/ls/m.jsonl", "x.wav") == "gs://bucket/ls/x.wav"
    assert resolve_audio_path("gs://bucket/ls/m.jsonl", "/other/x.wav") == "gs://other/x.wav"
    assert resolve_audio_path("/m.jsonl", "https://host/x.wav") == "https://host/x.wav"
    assert str(resolve_device("auto")) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="format"):
        AudioTextPipelineConfig(inputs=["x"], text_tokenizer="t", audio_tokenizer="a", out="o", format="mp4")
