"""Object storage end to end: a real S3-API server (moto, server mode) on loopback.

The corpus and the tokenizer are uploaded to ``s3://``; the text pipeline (DirectRunner) reads
and writes there; ``compute_stats``, ``verify``, the loader and the mix pipeline read it back
through fsspec. fsspec finds the endpoint the way a deployment would: ``FSSPEC_S3_ENDPOINT_URL``
in the environment (for worker processes started later) and ``fsspec.config.conf`` (for this
process, which imported fsspec before the fixture ran).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

BUCKET = "trimodal-test"  # the bucket of the loopback S3 server fixture (tests/conftest.py)

from trimodal.pipelines.mix import MixPipelineConfig, run_mix_pipeline  # noqa: E402
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline  # noqa: E402
from trimodal.shards.manifest import Manifest  # noqa: E402
from trimodal.storage import TMP_MARK  # noqa: E402
from trimodal.shards.verify import verify  # noqa: E402

BEAM = ["--runner=DirectRunner"]


@pytest.fixture(scope="module")
def s3_dataset(s3):
    cfg = TextPipelineConfig(
        inputs=[f"s3://{BUCKET}/corpus/*.jsonl"],
        text_tokenizer=f"s3://{BUCKET}/tokenizers/text.model",
        out=f"s3://{BUCKET}/ds/text",
        target_shard_bytes=25_000,
    )
    manifest = run_text_pipeline(cfg, BEAM)
    return {"cfg": cfg, "root": cfg.out, "manifest": manifest}


def _objects(fs, prefix: str) -> dict[str, str]:
    return {p.split(prefix, 1)[1]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(prefix))}


def test_text_pipeline_writes_to_s3(s3, s3_dataset):
    fs, m = s3["fs"], s3_dataset["manifest"]
    assert m.counts["written"] == len(s3["docs"]) and m.counts["read"] == len(s3["docs"])
    assert len(m.shards) > 2
    names = {p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/ds/text")}
    assert names == {"manifest.json"} | {s.name for s in m.shards}  # no temp objects left behind
    assert not any(TMP_MARK in n for n in names)
    assert Manifest.load(s3_dataset["root"]).to_json() == m.to_json()


def test_stats_and_verify_over_s3(s3_dataset):
    from trimodal.shards.stats import compute_stats

    m = s3_dataset["manifest"]
    stats = compute_stats(s3_dataset["root"], seq_len=64)
    assert stats["samples"] == m.samples and stats["shards"] == len(m.shards)
    assert stats["tokens"]["text"] == m.tokens()["text"]
    report = verify(s3_dataset["root"])
    assert report.ok, report.format()
    assert report.checked == len(m.shards)


def test_loader_streams_rows_from_s3(s3, s3_dataset):
    from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset
    from trimodal.tokenizers.vocab import VocabLayout

    fs, root = s3["fs"], s3_dataset["root"]
    local = s3["tmp"] / "text"
    fs.get(root.removeprefix("s3://") + "/", str(local), recursive=True)
    m = s3_dataset["manifest"]
    layout = VocabLayout(text_codes=m.tokenizers["text"].vocab_size, fingerprints=m.fingerprints())

    def rows(r):
        ds = TrimodalDataset(LoaderConfig(sources=[SourceConfig(r, name="t")], seq_len=32, cycle=False, num_streams=2), layout)
        return [x["tokens"].numpy().copy() for x in ds]

    remote = rows(root)
    assert len(remote) > 10
    assert all(r.shape == (32,) for r in remote)
    assert [r.tolist() for r in remote] == [r.tolist() for r in rows(str(local))]


def test_rerun_on_s3_is_idempotent_and_cleans_stale_shards(s3, s3_dataset):
    fs, cfg = s3["fs"], s3_dataset["cfg"]
    prefix = f"{BUCKET}/ds/text/"
    before = _objects(fs, prefix)
    run_text_pipeline(cfg, BEAM)
    after = _objects(fs, prefix)
    # byte-identical shards and dead letters; the manifest differs only in its run id
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items() if k != "manifest.json"}
    assert set(after) == set(before)
    # other shard size: other names; the old shards are removed once the new manifest is in place
    bigger = TextPipelineConfig(**{**cfg.__dict__, "out": cfg.out + "-copy"})
    for k in before:
        fs.copy(prefix + k, f"{BUCKET}/ds/text-copy/{k}")
    bigger.target_shard_bytes = 1 << 20
    m = run_text_pipeline(bigger, BEAM)
    assert len(m.shards) == 1
    assert sorted(_objects(fs, f"{BUCKET}/ds/text-copy/")) == sorted(["manifest.json", m.shards[0].name])
    assert verify(bigger.out).ok


def test_mix_pipeline_reads_and_writes_s3(s3, s3_dataset):
    out = f"s3://{BUCKET}/mix/a"
    m = run_mix_pipeline(MixPipelineConfig(inputs=[s3_dataset["root"]], weights=[1], seq_len=24, out=out, rows=20,
                                           target_shard_bytes=5 * 4 * 24 + 5 * 2048), BEAM)
    assert m.kind == "mixed" and m.counts["written"] == 20 and len(m.shards) == 4
    report = verify(out)
    assert report.ok, report.format()
    first = Manifest.load(out).shards[0]
    from trimodal.shards.reader import iter_samples

    rows = [s for _, s in iter_samples(out, [first], verify="sha256")]
    assert len(rows) == 5 and all(np.asarray(r["tokens"]).shape == (24,) for r in rows)


def test_fresh_process_finds_the_endpoint_in_the_environment(s3, s3_dataset, tmp_path):
    """A new process (a Beam worker, a CLI call) gets the endpoint from FSSPEC_S3_ENDPOINT_URL."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "trimodal.cli", "shards", "verify", s3_dataset["root"]], cwd=tmp_path,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK: every shard matches the manifest" in proc.stdout


def test_one_writer_per_dataset_on_s3(s3, s3_dataset):
    """The writer lock on object storage is a conditional write: a second writer of the same root
    refuses, naming the holder's run; once released, the root can be written again."""
    from trimodal.shards.lock import DatasetLock, DatasetLocked

    root = f"s3://{BUCKET}/ds/locked"
    holder = DatasetLock.acquire(root)
    with pytest.raises(DatasetLocked, match=holder.run_id):
        DatasetLock.acquire(root)
    with pytest.raises(DatasetLocked, match=holder.run_id):
        run_text_pipeline(TextPipelineConfig(**{**s3_dataset["cfg"].__dict__, "out": root}), BEAM)
    holder.release()
    again = DatasetLock.acquire(root)
    assert again.run_id != holder.run_id
    again.release()
