import json
import hashlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples
from trimodal.tokenizers.text import TextTokenizer


def _dead_letter(root: str) -> list[dict]:
    recs = []
    for f in sorted(Path(root, "deadletter").glob("*.jsonl")):
        recs += [json.loads(l) for l in f.read_text().splitlines()]
    return recs


def test_accounting_and_dead_letter(text_dataset, corpus):
    m = Manifest.load(text_dataset)
    c = m.counts
    n_filtered, n_rejected = sum(c["filtered"].values()), sum(c["rejected"].values())
    assert c["read"] == corpus["good"] + len(corpus["planted"])
    assert c["read"] == c["written"] + n_filtered + n_rejected
    assert c["written"] == m.samples == corpus["good"]
    dead = {r["id"]: (r["outcome"], r["reason"]) for r in _dead_letter(text_dataset)}
    assert dead == corpus["planted"]


def test_samples_round_trip_through_tokenizer(text_dataset, corpus, sp_model):
    tok = TextTokenizer.from_path(sp_model)
    m = Manifest.load(text_dataset)
    originals = {}
    for lineno, raw in enumerate(corpus["path"].read_bytes().splitlines(), start=1):
        try:
            originals[f"{corpus['path']}:{lineno}"] = json.loads(raw)["text"]
        except Exception:
            pass
    seen = 0
    for _, s in iter_samples(text_dataset, m.shards, verify="sha256"):
        if True:
            assert s["json"]["modality"] == "text"
            assert tok.decode(s["text"]) == originals[s["json"]["id"]]
            assert s["json"]["lengths"]["text"] == s["text"].size
            seen += 1
    assert seen == corpus["good"]
    assert m.tokens()["text"] == sum(len(tok.encode_one(t)) for t in originals.values() if t.strip())


def test_stock_webdataset_reads_shards(text_dataset):
    m = Manifest.load(text_dataset)
    urls = [str(Path(text_dataset) / s.name) for s in m.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == m.samples
    assert all(isinstance(s["text.npy"], np.ndarray) and s["json"]["modality"] == "text" for s in samples)


def test_manifest_checksums_match_files(text_dataset):
    m = Manifest.load(text_dataset)
    assert len(m.shards) > 1
    for s in m.shards:
        data = (Path(text_dataset) / s.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes


def test_multiprocessing_runner_gives_identical_dataset(tmp_path, corpus, sp_model, text_dataset):
    out = str(tmp_path / "mp")
    cfg = TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=out, target_shard_bytes=6000)
    m = run_text_pipeline(cfg, ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    ref = Manifest.load(text_dataset)
    assert [(s.name, s.sha256) for s in m.shards] == [(s.name, s.sha256) for s in ref.shards]
    assert m.counts == ref.counts


def test_missing_input_is_a_clear_error_and_writes_nothing(tmp_path, sp_model):
    out = tmp_path / "never"
    cfg = TextPipelineConfig(inputs=[str(tmp_path / "nope-*.jsonl")], text_tokenizer=sp_model, out=str(out))
    with pytest.raises(FileNotFoundError, match="nope-"):
        run_text_pipeline(cfg, ["--runner=DirectRunner"])
    assert not out.exists()


def test_parquet_and_plain_text_readers(tmp_path, sp_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["first parquet document", None, "second one"], "id": ["a", "b", "c"]}),
                   tmp_path / "docs.parquet")
    (tmp_path / "plain.txt").write_text("para one line\n\npara two line\n\n\n")
    out = str(tmp_path / "out")
    m = run_text_pipeline(TextPipelineConfig(inputs=[str(tmp_path / "docs.parquet")], text_tokenizer=sp_model, out=out,
                                             id_field="id"), ["--runner=DirectRunner"])
    assert m.counts["read"] == 3 and m.counts["written"] == 2 and m.counts["rejected"] == {"missing_field": 1}
    m2 = run_text_pipeline(TextPipelineConfig(inputs=[str(tmp_path / "plain.txt")], text_tokenizer=sp_model,
                                              out=str(tmp_path / "out2"), txt_unit="paragraph"), ["--runner=DirectRunner"])
    assert m2.counts["written"] == 2 and m2.counts["read"] == 2
