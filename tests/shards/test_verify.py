"""verify(): a good dataset passes; each kind of damage is named with the shard it is in."""

from __future__ import annotations

import json

import numpy as np

from trimodal.shards.manifest import Manifest
from trimodal.shards.verify import verify
from trimodal.shards.writer import write_shard


def make_dataset(root, n_shards=3, compression="none"):
    rng = np.random.default_rng(0)
    shards = []
    suffix = ".tar.zst" if compression == "zstd" else ".tar"
    for s in range(n_shards):
        samples = []
        for i in range(5 + s):
            key = f"s{s}k{i:04d}"
            if i % 2:
                arrays = {"image": rng.integers(0, 16, (4, 4)).astype(np.uint16), "text": rng.integers(0, 100, 7).astype(np.uint16)}
                meta = {"id": key, "source": "cc", "modality": "image_text", "lengths": {}, "provenance": {}}
            else:
                arrays = {"text": rng.integers(0, 100, int(rng.integers(20, 200))).astype(np.uint16)}
                meta = {"id": key, "source": "wiki", "modality": "text", "lengths": {}, "provenance": {}}
            samples.append((key, meta, arrays))
        shards.append(write_shard(str(root), f"shard-{s:05d}-of-{n_shards:05d}{suffix}", samples, compression=compression))
    written = sum(s.samples for s in shards)
    Manifest(
        kind="tokenized",
        modality="image_text",
        tokenizers={},
        shards=shards,
        counts={"read": written + 3, "written": written, "filtered": {"empty": 1}, "rejected": {"bad_json": 2}},
    ).save(str(root))
    return shards


def test_good_dataset_passes(tmp_path):
    shards = make_dataset(tmp_path)
    r = verify(str(tmp_path))
    assert r.ok, r.format()
    assert r.shards == r.checked == 3
    assert r.samples == sum(s.samples for s in shards)
    assert r.bytes == sum(s.bytes for s in shards)
    assert "OK" in r.format()
    json.dumps(r.to_dict())


def test_good_zstd_dataset_passes(tmp_path):
    make_dataset(tmp_path, compression="zstd")
    r = verify(str(tmp_path), workers=1)
    assert r.ok, r.format()


def test_flipped_byte_is_named(tmp_path):
    shards = make_dataset(tmp_path)
    bad = shards[1].name
    path = tmp_path / bad
    data = bytearray(path.read_bytes())
    # a byte inside the last .npy payload: the shard still parses, only the checksum differs
    pos = data.rfind(b"\x93NUMPY") + 200
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    r = verify(str(tmp_path))
    assert not r.ok
    assert r.bad_shards == [bad]
    assert r.problems_of(bad) == ["checksum mismatch"]
    out = r.format()
    assert "FAILED" in out and bad in out and "checksum mismatch" in out
    assert r.summary() == "1 problem in 1 shard"  # one problem, not "1 bad shard" of a dataset that is fine otherwise


def test_flipped_header_byte_is_unparsable(tmp_path):
    shards = make_dataset(tmp_path)
    bad = shards[0].name
    path = tmp_path / bad
    data = bytearray(path.read_bytes())
    data[124] = ord("x")  # first member's size field
    path.write_bytes(bytes(data))
    r = verify(str(tmp_path))
    assert r.bad_shards == [bad]
    assert set(r.problems_of(bad)) == {"checksum mismatch", "unparsable"}


def test_deleted_shard_is_named(tmp_path):
    shards = make_dataset(tmp_path)
    bad = shards[2].name
    (tmp_path / bad).unlink()
    r = verify(str(tmp_path))
    assert not r.ok and r.bad_shards == [bad]
    assert r.problems_of(bad) == ["missing"]
    assert r.checked == 3  # the others were still checked
    assert bad in r.format() and "missing" in r.format()


def test_truncated_shard(tmp_path):
    shards = make_dataset(tmp_path)
    bad = shards[0].name
    path = tmp_path / bad
    path.write_bytes(path.read_bytes()[:1500])
    r = verify(str(tmp_path))
    assert r.bad_shards == [bad]
    assert "size mismatch" in r.problems_of(bad) and "unparsable" in r.problems_of(bad)


def test_wrong_manifest_count_is_named(tmp_path):
    shards = make_dataset(tmp_path)
    m = Manifest.load(str(tmp_path))
    m.shards[1].samples += 2
    m.counts["written"] += 2  # keep the dataset total consistent: only the shard is wrong
    m.save(str(tmp_path))
    r = verify(str(tmp_path))
    assert not r.ok
    assert r.bad_shards == [shards[1].name]
    assert r.problems_of(shards[1].name) == ["count mismatch"]
    assert "count mismatch" in r.format()


def test_wrong_manifest_totals_and_tokens(tmp_path):
    shards = make_dataset(tmp_path)
    m = Manifest.load(str(tmp_path))
    m.shards[0].tokens["text"] += 1
    m.counts["written"] += 1
    m.save(str(tmp_path))
    r = verify(str(tmp_path))
    assert r.bad_shards == [shards[0].name]
    assert r.problems_of(shards[0].name) == ["token mismatch"]
    assert r.problems_of("manifest.json") == ["manifest"]


def test_missing_manifest(tmp_path):
    r = verify(str(tmp_path / "nothing"))
    assert not r.ok and r.problems_of("manifest.json") == ["manifest"]
    assert "manifest" in r.format()
