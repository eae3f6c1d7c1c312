"""The shard-reading layer: the columnar index agrees with a member-by-member walk and with stock
``webdataset``; the json is parsed only when read; the one-array fast path; damage is named with
the shard and the member."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from trimodal.shards import reader
from trimodal.shards.format import ShardError, encode_sample, npy_bytes, scan_tar, tar_bytes
from trimodal.shards.reader import (
    Sample,
    ShardIndex,
    _index_members,
    decode_sample,
    index_shard,
    iter_arrays,
    iter_samples,
)
from trimodal.shards.writer import shard_name, write_shard

WHERE = "mem://shard-00000-of-00001.tar"


def text_samples(n=40, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = rng.integers(0, 1000, int(rng.integers(0, 300))).astype(dtype)
        meta = {"id": f"doc-{i}", "source": "test", "modality": "text", "lengths": {"text": int(text.size)},
                "provenance": {"line": i}}
        out.append((f"{i:08d}", meta, {"text": text}))
    return out


def paired_samples(n=30, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arrays = {"image": rng.integers(0, 64, (int(rng.integers(1, 5)), 3)).astype(np.uint16),
                  "text": rng.integers(0, 100, int(rng.integers(0, 9))).astype(np.uint32)}
        out.append((f"k{i:05d}", {"id": f"p{i}", "modality": "image_text"}, arrays))
    return out


def shard_of(samples) -> bytes:
    members = []
    for key, meta, arrays in samples:
        members += encode_sample(key, meta, arrays)
    return tar_bytes(members)


def check_same_as_samples(data, index, samples):
    assert len(index) == len(samples)
    for entry, (key, meta, arrays) in zip(index, samples):
        s = decode_sample(data, entry, WHERE)
        assert s["__key__"] == key and s["json"] == meta
        assert set(s) == {"__key__", "json", *arrays}
        for name, a in arrays.items():
            assert s[name].dtype == a.dtype and s[name].shape == a.shape and np.array_equal(s[name], a)


@pytest.mark.parametrize("make", [text_samples, paired_samples])
def test_columnar_index_matches_the_member_walk(make):
    samples = make()
    data = shard_of(samples)
    fast, slow = index_shard(data, WHERE), _index_members(data, WHERE)
    assert fast.uniform and not slow.uniform
    assert list(fast) == list(slow) and fast.keys == slow.keys == [k for k, _, _ in samples]
    assert fast[3] == slow[3] and fast[-1] == slow[-1] and len(fast[1:4]) == 3
    check_same_as_samples(data, fast, samples)
    for i in range(len(samples)):
        a, b = fast.sample(data, i, want_json=True), decode_sample(data, slow[i], WHERE)
        assert a.keys() == b.keys() and a["json"] == b["json"]
        assert all(np.array_equal(a[k], b[k]) for k in a if k not in ("__key__", "json"))


def test_mixed_sample_kinds_fall_back_and_read_the_same():
    samples = text_samples(10) + paired_samples(10)  # different members per sample: not uniform
    samples = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
    data = shard_of(samples)
    index = index_shard(data, WHERE)
    assert not index.uniform and list(index) == list(_index_members(data, WHERE))
    check_same_as_samples(data, index, samples)
    images = list(index.arrays(data, "image"))
    assert [a is None for a in images] == ["image" not in arr for _, _, arr in samples]
    assert set(index.extensions()) == {"json", "text.npy", "image.npy"}


def test_stock_webdataset_reads_the_same_samples(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = text_samples(25) + paired_samples(5, seed=3)
    info = write_shard(str(tmp_path), shard_name(0, 1), samples)
    theirs = list(wds.WebDataset(str(tmp_path / info.name), shardshuffle=False))
    ours = [s for _, s in iter_samples(str(tmp_path), [info], verify="sha256")]
    assert [t["__key__"] for t in theirs] == [s["__key__"] for s in ours]
    for t, s in zip(theirs, ours):
        assert json.loads(t["json"]) == s["json"]
        for name in ("text", "image"):
            if f"{name}.npy" in t:
                assert np.array_equal(np.load(io.BytesIO(t[f"{name}.npy"])), s[name])
            else:
                assert name not in s


def test_other_tar_dialects_take_the_member_walk():
    """GNU and PAX tars (long names, directories, a file outside a sample) are read by the
    sequential walk: scan_tar declines them and the index is the same as before."""
    rng = np.random.default_rng(0)
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            d = tarfile.TarInfo("somedir")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            for i in range(3):
                for name, payload in ((f"{'x' * 120}{i}.json", b"{}"),
                                      (f"{'x' * 120}{i}.text.npy", npy_bytes(rng.integers(0, 9, 4).astype(np.uint16)))):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(payload)
                    tf.addfile(ti, io.BytesIO(payload))
        data = buf.getvalue()
        index = index_shard(data, WHERE)
        assert list(index) == list(_index_members(data, WHERE))
        assert len(list(iter_arrays(data, WHERE))) == len(index)


def test_payload_that_looks_like_a_header_does_not_fool_the_scan():
    """A member whose payload carries the ustar magic at a block start is a candidate header
    that breaks the header chain: the scan declines and the member walk reads it right."""
    fake = bytearray(1024)
    fake[257:263] = b"ustar\0"
    fake[124:136] = b"00000000001\0"
    samples = text_samples(3)
    members = encode_sample(*samples[0]) + [("00000000.bin", bytes(fake))] + encode_sample(*samples[1])
    data = tar_bytes(members)
    assert scan_tar(data) is None
    index = index_shard(data, WHERE)
    assert list(index) == list(_index_members(data, WHERE))
    assert bytes(decode_sample(data, index[0], WHERE)["bin"]) == bytes(fake)
    clean = shard_of(samples)
    assert scan_tar(clean) is not None


def test_json_is_parsed_only_when_read(monkeypatch):
    samples = text_samples(5)
    data = shard_of(samples)
    calls = []
    real = json.loads
    monkeypatch.setattr(reader.json, "loads", lambda b: calls.append(1) or real(b))
    index = index_shard(data, WHERE)
    s = decode_sample(data, index[2], WHERE)
    assert isinstance(s, Sample) and np.array_equal(s["text"], samples[2][2]["text"])
    assert "json" in s and not calls  # presence is known without parsing
    assert s["json"] == samples[2][1] and len(calls) == 1
    assert s.get("json") is s["json"] and len(calls) == 1  # parsed once
    t = index.sample(data, 3, want_json=True)
    assert dict(t)["json"] == samples[3][1] and len(calls) == 2  # walking the items parses it
    u = decode_sample(data, index[4], WHERE)
    assert set(u.keys()) == {"__key__", "json", "text"}
    plain = pickle.loads(pickle.dumps(decode_sample(data, index[1], WHERE)))
    assert type(plain) is dict and plain["json"] == samples[1][1]
    assert json.loads(json.dumps({k: v for k, v in decode_sample(data, index[0], WHERE).items() if k != "text"}))
    none = decode_sample(data, index[0], WHERE, want_json=False)
    assert "json" not in none and none.get("json") is None and set(none) == {"__key__", "text"}
    with pytest.raises(KeyError):
        none["json"]


def test_fast_path_arrays():
    samples = text_samples(30, dtype=np.uint32)
    data = shard_of(samples)
    got = list(iter_arrays(data, WHERE, expect=len(samples)))
    assert len(got) == len(samples)
    for a, (_, _, arrays) in zip(got, samples):
        assert a.dtype == np.uint32 and np.array_equal(a, arrays["text"])
        assert np.shares_memory(a, np.frombuffer(data, np.uint8))  # zero-copy views of the shard
    index = index_shard(data, WHERE)
    assert all(np.array_equal(index.array(data, i), a) for i, a in enumerate(got))
    assert index.array(data, 0, "image") is None
    assert list(index.arrays(data, "image")) == [None] * len(samples)
    with pytest.raises(ShardError, match="manifest says 3"):
        list(iter_arrays(data, WHERE, expect=3))


def test_unusual_npy_payloads_decode_like_numpy():
    """Fortran order, 0-d, empty and 3-D arrays and a version-2 header: the per-shard tables
    or the per-member parse, same arrays as ``numpy.load``."""
    arrays = [np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4)), np.array(7, dtype=np.int32),
              np.zeros(0, dtype=np.uint16), np.arange(24, dtype=np.uint16).reshape(2, 3, 4)]
    members = []
    for i, a in enumerate(arrays):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        members += [(f"s{i}.json", b"{}"), (f"s{i}.text.npy", buf.getvalue())]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(5, dtype=np.uint16), version=(2, 0))
    members += [("s9.json", b"{}"), ("s9.text.npy", buf.getvalue())]
    arrays.append(np.arange(5, dtype=np.uint16))
    data = tar_bytes(members)
    index = index_shard(data, WHERE)
    assert index.uniform
    for i, (a, want) in enumerate(zip(index.arrays(data), arrays)):
        for got in (a, decode_sample(data, index[i], WHERE)["text"], index.sample(data, i)["text"]):
            assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)
    assert index.array(data, 0).flags.f_contiguous


def corrupt(data: bytes, old: bytes, new: bytes, nth: int = 0) -> bytes:
    at = -1
    for _ in range(nth + 1):
        at = data.index(old, at + 1)
    return data[:at] + new + data[at + len(new):]


def test_bad_npy_header_names_shard_and_member():
    samples = text_samples(6)
    data = corrupt(shard_of(samples), b"'<u2'", b"'?x9'", nth=2)  # sample 2's dtype
    index = index_shard(data, WHERE)  # indexing does not decode arrays
    member = rf"{samples[2][0]}\.text\.npy"
    for read in (lambda: decode_sample(data, index[2], WHERE), lambda: index.sample(data, 2),
                 lambda: index.array(data, 2), lambda: list(iter_arrays(data, WHERE))):
        with pytest.raises(ShardError, match=rf"{WHERE}: {member}: bad \.npy dtype"):
            read()
    assert np.array_equal(index.array(data, 1), samples[1][2]["text"])  # the others still read


def test_truncated_npy_payload_names_shard_and_member():
    samples = [(k, m, {"text": np.arange(10, dtype=np.uint16) + i}) for i, (k, m, _) in enumerate(text_samples(4))]
    data = corrupt(shard_of(samples), b"(10,)", b"(99,)", nth=1)
    index = index_shard(data, WHERE)
    with pytest.raises(ShardError, match=rf"{samples[1][0]}\.text\.npy: truncated \.npy payload"):
        index.array(data, 1)
    with pytest.raises(ShardError, match=rf"{WHERE}: {samples[1][0]}\.text\.npy: truncated"):
        decode_sample(data, index[1], WHERE)


def test_unparsable_json_names_shard_and_member_when_read():
    samples = text_samples(3)
    data = corrupt(shard_of(samples), b'{"id": "doc-1"', b'{"id": {doc-1"')
    index = index_shard(data, WHERE)
    s = decode_sample(data, index[1], WHERE)
    assert np.array_equal(s["text"], samples[1][2]["text"])  # the arrays are fine
    with pytest.raises(ShardError, match=rf"{WHERE}: {samples[1][0]}\.json: unparsable"):
        s["json"]
    for access in (lambda: s["json"], lambda: s.get("json"), lambda: list(s.items())):  # again: never silently absent
        with pytest.raises(ShardError, match=r"\.json: unparsable"):
            access()
    assert "json" in s
    with pytest.raises(ShardError, match=r"\.json: unparsable"):
        list(decode_sample(data, index[1], WHERE).items())


def test_damaged_tar_names_the_shard():
    data = shard_of(text_samples(4))
    bad_size = data[:124] + b"0000000x001\0" + data[136:]
    with pytest.raises(ShardError, match=rf"{WHERE}: bad tar header at offset 0"):
        index_shard(bad_size, WHERE)
    with pytest.raises(ShardError, match=rf"{WHERE}: 00000001\.text\.npy: truncated at offset"):
        index_shard(data[: data.index(b"00000001.text.npy") + 700], WHERE)
    end = -(-index_shard(data, WHERE)[-1][1][-1][2] // 512) * 512  # past the last member, padded
    with pytest.raises(ShardError, match=rf"{WHERE}: trailing garbage at offset {end}"):
        index_shard(data[:end] + b"\1" * 100, WHERE)
    assert len(index_shard(data[:end], WHERE)) == 4  # no end-of-archive marker is fine
    with pytest.raises(ShardError, match=rf"{WHERE}: 4 samples, manifest says 5"):
        index_shard(data, WHERE, expect=5)


def test_shard_index_is_a_sequence_of_entries():
    data = shard_of(text_samples(4))
    index = index_shard(data, WHERE)
    assert isinstance(index, ShardIndex) and len(index) == 4
    key, members = index[0]
    assert key == "00000000" and [m[0] for m in members] == ["json", "text.npy"]
    assert all(isinstance(x, int) for _, a, b in members for x in (a, b))
    empty = tar_bytes([])
    assert len(index_shard(empty, WHERE)) == 0 and list(iter_arrays(empty, WHERE)) == []


def test_a_mapped_file_reads_like_its_bytes(tmp_path):
    import mmap

    samples = paired_samples(12)
    info = write_shard(str(tmp_path), shard_name(0, 1), samples)
    with open(tmp_path / info.name, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    index = index_shard(mapped, WHERE)
    assert index.uniform and list(index) == list(index_shard((tmp_path / info.name).read_bytes(), WHERE))
    for i, (key, meta, arrays) in enumerate(samples):
        s = decode_sample(mapped, index[i], WHERE)
        assert s["json"] == meta and all(np.array_equal(s[k], a) for k, a in arrays.items())
        assert np.array_equal(index.array(mapped, i, "image"), arrays["image"])


def test_reads_check_each_shard_size_and_content_hash_by_default(tmp_path):
    """A shard rewritten behind the manifest's back: a changed size and a same-size change are
    both caught by the default check (size + xxh3); ``verify="size"`` misses the second."""
    from trimodal.shards.manifest import ShardInfo

    info: ShardInfo = write_shard(str(tmp_path), shard_name(0, 1), text_samples())
    path = tmp_path / info.name
    data = path.read_bytes()
    assert reader.read_shard(str(tmp_path), info) == data
    path.write_bytes(data + bytes(512))  # one more tar block: still a valid tar
    with pytest.raises(ShardError, match=rf"{info.name}.*{len(data) + 512} bytes, manifest says {len(data)}"):
        reader.read_shard(str(tmp_path), info)
    flipped = bytearray(data)
    flipped[data.rfind(b"\x93NUMPY") + 200] ^= 0xFF
    path.write_bytes(bytes(flipped))
    assert reader.read_shard(str(tmp_path), info, verify="size") == bytes(flipped)  # same size: size cannot tell
    with pytest.raises(ShardError, match=rf"{info.name}.*content hash xxh3 .* does not match the manifest.*rewritten"):
        reader.read_shard(str(tmp_path), info)
    with pytest.raises(ShardError, match=rf"{info.name}.*sha256 .* does not match the manifest"):
        reader.read_shard(str(tmp_path), info, verify="sha256")
    # a manifest from before the hash existed: the default falls back to the size check
    import dataclasses

    assert reader.read_shard(str(tmp_path), dataclasses.replace(info, xxh3="")) == bytes(flipped)
