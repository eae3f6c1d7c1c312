"""No record can stop a job: hostile inputs become dead letters with a reason, the good records
around them are written; one writer per dataset; readers name the file of every read error."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest

from trimodal.pipelines.audio_text import AudioTextPipelineConfig, run_audio_text_pipeline
from trimodal.pipelines.records import DeadLetter, Record
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.pipelines.text_readers import read_text_file
from trimodal.shards.lock import LOCK_NAME, DatasetLock, DatasetLocked
from trimodal.shards.manifest import Manifest
from trimodal.tokenizers.audio_io import AudioRejected, load_audio

BEAM = ["--runner=DirectRunner"]



def _dead(root: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in Manifest.load(str(root)).dead_letters(str(root))}


def test_deep_json_and_oversized_lines_are_dead_letters_not_crashes(tmp_path, sp_model):
    corpus = tmp_path / "hostile.jsonl"
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    lines = [b'{"text": "a good document before"}', deep, b'{"text": "' + b"x" * 400_000 + b'"}',
             b'{"text": "a good document after"}']
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    recs = list(read_text_file(str(corpus)))
    assert [type(r).__name__ for r in recs] == ["Record", "DeadLetter", "Record", "Record"]  # 256 MB limit
    assert recs[1].reason == "bad_json" and "deep" in recs[1].detail
    out = tmp_path / "out"
    m = run_text_pipeline(TextPipelineConfig(inputs=[str(corpus)], text_tokenizer=sp_model, out=str(out),
                                             max_record_bytes=300_000), BEAM)
    assert m.counts["written"] == 2 and m.counts["read"] == 4
    assert m.counts["rejected"] == {"bad_json": 1, "too_large": 1}
    assert sorted(_dead(out).values()) == ["bad_json", "too_large"]


def test_a_lone_surrogate_is_a_dead_letter_not_a_failed_job(tmp_path, sp_model):
    """JSON can spell a lone surrogate (no Unicode text; the tokenizer fails on it)."""
    corpus = tmp_path / "surrogate.jsonl"
    corpus.write_text('{"text": "a good document"}\n{"text": "bad \\ud800 here"}\n{"text": "another good one"}\n')
    out = tmp_path / "out"
    m = run_text_pipeline(TextPipelineConfig(inputs=[str(corpus)], text_tokenizer=sp_model, out=str(out)), BEAM)
    assert m.counts["written"] == 2 and m.counts["rejected"] == {"invalid_unicode": 1}
    assert list(_dead(out).values()) == ["invalid_unicode"]


def _wav_with_rate(rate: int, frames: int = 100) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(frames, dtype=np.int16).tobytes())
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 24, rate)  # the fmt chunk's sample rate field
    struct.pack_into("<I", data, 28, rate * 2)
    return bytes(data)


def test_a_wav_header_claiming_an_absurd_rate_is_refused_before_allocation(tmp_path, sp_model):
    with pytest.raises(AudioRejected) as e:
        load_audio(_wav_with_rate(2**31 - 1), 16000)
    assert e.value.reason == "bad_header" and "sample rate" in e.value.detail
    # in a pipeline: the hostile clip is a dead letter, the good clip is written
    from trimodal.tokenizers.dac import DAC, DACConfig, save_dac

    import torch

    torch.manual_seed(0)
    dac = tmp_path / "dac.pth"
    save_dac(DAC(DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                           n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=16000)), dac)
    (tmp_path / "bad.wav").write_bytes(_wav_with_rate(2**31 - 1))
    (tmp_path / "good.wav").write_bytes(_wav_with_rate(16000, 8000))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "bad.wav", "text": "bad"}) + "\n"
                        + json.dumps({"audio_filepath": "good.wav", "text": "good"}) + "\n")
    out = tmp_path / "ds"
    m = run_audio_text_pipeline(AudioTextPipelineConfig(inputs=[str(manifest)], text_tokenizer=sp_model,
                                                        audio_tokenizer=str(dac), out=str(out), device="cpu"), BEAM)
    assert m.counts["written"] == 1 and m.counts["rejected"] == {"bad_header": 1}


def test_names_that_are_not_utf8_are_kept_as_escaped_ids(tmp_path, sp_model):
    # a webdataset tar whose member names are not UTF-8: the image-text reader keeps the sample
    tar = tmp_path / "names.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in [("ok.jpg", b"\xff\xd8 not decoded here"), ("ok.txt", b"a caption"),
                           (b"caf\xe9.jpg".decode("utf-8", "surrogateescape"), b"\xff\xd8 nor here"),
                           (b"caf\xe9.txt".decode("utf-8", "surrogateescape"), b"another")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    from trimodal.pipelines.image_readers import read_image_text_file

    recs = [r for r in read_image_text_file(str(tar), source="t") if isinstance(r, Record)]
    assert sorted(r.text for r in recs) == ["a caption", "another"]
    assert any("caf\\xe9" in r.id for r in recs) and all(r.id.encode("utf-8") for r in recs)
    # a plain-text corpus whose file name is not UTF-8
    folder = tmp_path / "plain"
    folder.mkdir()
    bad_name = os.fsdecode(b"doc-\xff.txt")
    (folder / bad_name).write_text("a document behind a hostile file name")
    (folder / "fine.txt").write_text("a document behind a fine file name")
    out = tmp_path / "out"
    m = run_text_pipeline(TextPipelineConfig(inputs=[str(folder / "*.txt")], text_tokenizer=sp_model, out=str(out)), BEAM)
    assert m.counts["written"] == 2
    from trimodal.shards.reader import iter_samples

    ids = sorted(s["json"]["id"] for _, s in iter_samples(str(out), m.shards))
    assert any("\\xff" in i for i in ids) and all(i.encode("utf-8") for i in ids)
    rec = Record(b"x\xff".decode("utf-8", "surrogateescape"), "s")
    assert rec.id == "x\\xff"


def test_a_second_writer_of_the_same_dataset_refuses(tmp_path, corpus, sp_model):
    out = tmp_path / "locked"
    holder = DatasetLock.acquire(str(out))  # another job holding the dataset
    cfg = TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=str(out))
    with pytest.raises(DatasetLocked, match=holder.run_id):
        run_text_pipeline(cfg, BEAM)
    assert not (out / "manifest.json").exists()
    holder.release()
    m = run_text_pipeline(cfg, BEAM)
    assert m.run_id and not (out / LOCK_NAME).exists()  # the writer released its own lock
    # a reader refuses a dataset that another run is rewriting
    from trimodal.shards.loader import LoaderConfig, SourceConfig, load_manifests

    other = DatasetLock.acquire(str(out))
    with pytest.raises(DatasetLocked, match="being rewritten"):
        load_manifests(LoaderConfig(sources=[SourceConfig(str(out))], seq_len=64))
    other.release()
    assert Manifest.load(str(out)).run_id == m.run_id


def test_a_lock_left_by_a_dead_local_process_is_taken_over(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    import socket

    (root / LOCK_NAME).write_text(json.dumps({"run_id": "dead", "host": socket.gethostname(), "pid": 2**22 + 12345,
                                              "started": 0}))
    lock = DatasetLock.acquire(str(root))
    assert lock.run_id != "dead"
    lock.release()


def _raw(shard) -> bytes:
    """A shard's tar bytes (pipelines write zstd shards by default)."""
    import zstandard

    data = shard.read_bytes()
    return zstandard.ZstdDecompressor().decompress(data) if shard.name.endswith(".zst") else data


def _store(shard, tar: bytes) -> bytes:
    """Write tar bytes back as the shard stores them; returns the stored bytes."""
    import zstandard

    data = zstandard.ZstdCompressor(level=3).compress(tar) if shard.name.endswith(".zst") else tar
    shard.write_bytes(data)
    return data


def test_stats_names_the_file_of_a_bad_npy_header(text_dataset, tmp_path):
    import shutil

    from trimodal.shards.format import ShardError
    from trimodal.shards.stats import compute_stats

    copy = tmp_path / "ds"
    shutil.copytree(text_dataset, copy)
    shard = sorted(copy.glob("shard-*.tar*"))[0]
    data = bytearray(_raw(shard))
    at = data.find(b"{'descr'")
    data[at + 10 : at + 13] = b"?x9"  # a dtype numpy does not know, same size
    data = _store(shard, bytes(data))
    m = Manifest.load(str(copy))
    for s in m.shards:  # make the manifest agree, so only the header is wrong
        if s.name == shard.name:
            import hashlib

            s.sha256 = hashlib.sha256(bytes(data)).hexdigest()
            s.bytes = len(data)
    m.save(str(copy))
    with pytest.raises(ShardError, match=shard.name + r".*\.npy"):
        compute_stats(str(copy))


def test_dead_letter_type_is_what_readers_emit(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b'{"text": "ok"}\n\xff\n')
    recs = list(read_text_file(str(f)))
    assert isinstance(recs[0], Record) and isinstance(recs[1], DeadLetter) and recs[1].reason == "invalid_utf8"


def test_stats_is_not_silent_about_flipped_token_bytes(text_dataset, tmp_path, capsys):
    import shutil

    from trimodal.cli import main

    copy = tmp_path / "ds"
    shutil.copytree(text_dataset, copy)
    shard = sorted(copy.glob("shard-*.tar*"))[0]
    data = bytearray(shard.read_bytes())
    if shard.name.endswith(".zst"):
        data[len(data) // 2] ^= 0xFF  # a flipped stored byte: same size
    else:
        data[data.rfind(b"\x93NUMPY") + 200] ^= 0xFF  # inside a token payload: the tar still parses
    shard.write_bytes(bytes(data))
    assert main(["shards", "stats", str(copy)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "sha256" in err
