import json
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import iter_samples
from trimodal.tokenizers.text import TextTokenizer



def test_accounting_and_dead_letter(text_dataset, corpus):
    m = Manifest.load(text_dataset)
    c = m.counts
    assert c["read"] == corpus["good"] + len(corpus["planted"])
    assert m.unaccounted == 0
    assert c["written"] == m.samples == corpus["good"]
    assert m.dead_letter_outcomes(text_dataset) == corpus["planted"]
    assert len(m.dead_letters(text_dataset)) == len(corpus["planted"])  # each bad record once


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


def test_stock_webdataset_reads_shards(text_dataset, tmp_path):
    """Stock webdataset reads the shards once ``zstd -d`` made them plain tars (``--compression
    none`` writes plain tars)."""
    import zstandard

    m = Manifest.load(text_dataset)
    urls = []
    for s in m.shards:
        data = (Path(text_dataset) / s.name).read_bytes()
        assert s.name.endswith(".tar.zst")  # the default
        urls.append(str(tmp_path / s.name[: -len(".zst")]))
        Path(urls[-1]).write_bytes(zstandard.ZstdDecompressor().decompress(data))
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


# ---- the batched pipeline: same bytes as before on both graphs, bounded-memory local runs ----

def _digests(root: Path) -> dict[str, str]:
    """Every file's sha256; the manifest's without its run id."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "manifest.json":
                m = json.loads(data)
                m.pop("run_id", None)
                data = json.dumps(m, sort_keys=True).encode()
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def test_fast_serialisation_is_byte_identical_to_tarfile_and_numpy():
    import random

    from trimodal.shards.format import encode_sample, tar_bytes
    from trimodal.shards.writer import fast_encode_sample, frame_sample, tar_end, tar_member

    rng = random.Random(0)
    for _ in range(200):
        samples = []
        for i in range(rng.randint(0, 5)):
            key = "%020x" % rng.getrandbits(80)
            n = rng.choice([0, 1, 7, 255, 256, 257, 3000])
            arrays = {"text": np.arange(n, dtype=rng.choice([np.uint16, np.uint32, np.int64, np.float32]))}
            if rng.random() < 0.3:
                arrays["image"] = np.zeros((rng.randint(0, 40), 7), np.uint16)
            if rng.random() < 0.3:
                arrays["audio"] = np.asfortranarray(np.ones((4, rng.randint(1, 30)), np.uint16))
            meta = {"id": f"x:{i} é 日本", "lengths": {"text": n}, "provenance": {"line": i}}
            members = encode_sample(key, meta, arrays)
            assert fast_encode_sample(key, meta, arrays) == members
            samples.append(members)
        body = b"".join(frame_sample(s) for s in samples)
        assert body + tar_end(len(body)) == tar_bytes([m for s in samples for m in s])
    for name in ("a" * 100, "é.json", "b" * 90 + ".text.npy"):  # the edges of the fast header
        member = tar_member(name, b"z" * 700)
        assert member + tar_end(len(member)) == tar_bytes([(name, b"z" * 700)])


def test_batch_framing_is_byte_identical_to_per_sample_framing():
    # make_samples (the text pipeline's batch path: tar headers of a batch at once, json from a
    # template) against make_sample (json.dumps + per-member headers), whose bytes the test above
    # pins to tarfile and numpy
    import random

    from trimodal.pipelines.outcomes import Tally
    from trimodal.pipelines.records import Record
    from trimodal.pipelines.sink import make_sample, make_samples
    from trimodal.shards.writer import fast_encode_sample, frame_sample, frame_samples

    rng = random.Random(1)
    provenances = [{"file": "/d/a.jsonl", "line": 3}, {"file": "caf\u00e9 \udcff.jsonl", "line": 1},
                   {"row": 2, "file": None, "x": 1.5, "ok": True}, {"nested": {"b": [1, "\udc80"], "a": (2,)}},
                   {3: "int key"}, ["list"], None]
    for _ in range(60):
        n = rng.randint(0, 9)
        records, lengths, arrays = [], [], []
        for i in range(n):
            text = rng.choice(["plain ascii", "é 日本 text", "x" * 700])
            rid = rng.choice([f"f.jsonl:{i}", f"données/日本.jsonl:{i}", f'quote"back\\slash:{i}'])
            records.append(Record(id=rid, source=rng.choice(["src", "s\u00e9"]), text=text,
                                  provenance=rng.choice(provenances)))
            size = rng.choice([0, 1, 7, 255, 256, 257, 3000])
            arrays.append(np.arange(size, dtype=rng.choice([np.uint16, np.uint32, np.int64])))
            lengths.append({"text": size, "chars": len(text)})
        tally = Tally()
        got = make_samples(records, "text", lengths, "text", arrays, tally)
        want = [make_sample(r, "text", ln, {"text": a}, Tally()) for r, ln, a in zip(records, lengths, arrays)]
        assert got == want
        assert tally.counts.get(("sink", "written", ""), 0) == n
    # outside the fast case (keys of unequal length, an object dtype falls to numpy's own path)
    keys = ["k" * 20, "k" * 80, "short"]
    metas = [b'{"a": 1}', b"{}", b'{"b": "\xc3\xa9"}']
    arrays = [np.arange(5, dtype=np.uint16), np.arange(0, dtype=np.uint16), np.arange(300, dtype=np.int32)]
    want = []
    for k, m, a in zip(keys, metas, arrays):
        members = fast_encode_sample(k, {}, {"text": a})
        want.append(frame_sample([(members[0][0], m), members[1]]))
    assert frame_samples(keys, metas, "text", arrays) == want
    keys = ["a" * 30, "b" * 30, "c" * 30]  # equal, but not the 20 of key_from_id: the fast path too
    want = []
    for k, m, a in zip(keys, metas, arrays):
        members = fast_encode_sample(k, {}, {"text": a})
        want.append(frame_sample([(members[0][0], m), members[1]]))
    assert frame_samples(keys, metas, "text", arrays) == want
    with pytest.raises(ValueError, match="must not contain"):
        frame_samples(["a.b"], [b"{}"], "text", [np.arange(2, dtype=np.uint16)])


def test_reader_batches_hold_the_same_items_in_order(tmp_path, corpus):
    from trimodal.pipelines.text_readers import TextReader

    reader = TextReader()
    items = list(reader(str(corpus["path"])))
    for size in (1, 7, 10_000):
        batches = list(reader.batches(str(corpus["path"]), size))
        assert all(len(r) + len(d) <= size for r, d in batches)
        flat_records = [x for r, _ in batches for x in r]
        flat_dead = [x for _, d in batches for x in d]
        assert flat_records == [x for x in items if not hasattr(x, "outcome")]
        assert flat_dead == [x for x in items if hasattr(x, "outcome")]


def _run_graph(cfg: TextPipelineConfig, graph: str, beam_args: list[str], dead_per_file: int | None = None):
    """The text job on the local runner with the chosen graph (``beam``: the Dataflow one)."""
    from dataclasses import replace

    from trimodal.pipelines import common, text
    from trimodal.storage import expand_inputs
    from trimodal.tokenizers.registry import load_text_tokenizer

    tok = load_text_tokenizer(cfg.text_tokenizer)
    inputs = expand_inputs(cfg.inputs)

    def build(p, run_id):
        if dead_per_file is None:
            return text.build_text_pipeline(p, cfg, inputs, tok, run_id, graph=graph)
        real = text.SinkConfig
        try:  # the same job with a small dead-letter file size (not a pipeline option)
            text.SinkConfig = lambda **kw: replace(real(**kw), dead_letter_records_per_file=dead_per_file)
            return text.build_text_pipeline(p, cfg, inputs, tok, run_id, graph=graph)
        finally:
            text.SinkConfig = real

    return common.run(build, cfg.out, beam_args, show_progress=False)


@pytest.mark.parametrize("runner", ["in_memory", "multi_processing"])
def test_local_spill_and_beam_graph_write_the_same_bytes(tmp_path, corpus, sp_model, monkeypatch, runner):
    from trimodal.pipelines import spill

    # many small spill parts, several shards per split, three dead-letter files
    monkeypatch.setattr(spill, "SPILL_PART_ROWS", 17)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": f"doc {i} " + "word " * (i % 9)}) + "\n" for i in range(60))
                     + '{"text": "  "}\n{bad\n{"text": "a"}\n' * 4)
    cfg = dict(inputs=[str(corpus["path"]), str(extra)], text_tokenizer=sp_model, target_shard_bytes=4000,
               val_fraction=0.3, min_tokens=3, batch_size=16, progress=False)
    args = ["--runner=DirectRunner"] + (["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
                                        if runner == "multi_processing" else [])
    local = _run_graph(TextPipelineConfig(out=str(tmp_path / "local"), **cfg), "auto", args, dead_per_file=5)
    plain = _run_graph(TextPipelineConfig(out=str(tmp_path / "plain"), **cfg), "beam", ["--runner=DirectRunner"],
                       dead_per_file=5)
    assert len(local.shards) > 4 and len(local.split_shards("val")) > 1
    assert len(list((tmp_path / "local" / "deadletter").glob("*.jsonl"))) > 1
    assert local.counts == plain.counts and local.counts["filtered"].get("too_few_tokens")
    assert _digests(tmp_path / "local") == _digests(tmp_path / "plain")


def test_counters_are_the_same_on_both_graphs(tmp_path, corpus, sp_model):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from trimodal.pipelines import common
    from trimodal.pipelines.text import build_text_pipeline
    from trimodal.tokenizers.text import TextTokenizer

    tok = TextTokenizer.from_path(sp_model)
    got = {}
    for graph in ("auto", "beam"):
        cfg = TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=str(tmp_path / graph),
                                 min_tokens=4)
        options = common.pipeline_options(["--runner=DirectRunner"])
        p = beam.Pipeline(runner=common.direct_runner(options), options=options)
        build_text_pipeline(p, cfg, cfg.inputs, tok, graph=graph)
        result = p.run()
        result.wait_until_finish()
        got[graph] = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    m = Manifest.load(str(tmp_path / "auto"))
    # which sink wrote the shards: the spill sink on the local graph, the Beam graph sink else
    assert got["auto"].pop("AssembleDataset/shards") == len(m.shards) == got["beam"].pop("WriteDataset/shards")
    c = got["auto"]
    assert c == got["beam"]
    assert c["read/read"] + sum(v for k, v in c.items() if k.startswith("read/rejected/")) == m.counts["read"]
    assert c["sink/written"] == c["tokenize/ok"] == m.counts["written"]
    assert c["normalize/filtered/empty"] == m.counts["filtered"]["empty"] == 2
    assert c.get("tokenize/filtered/too_few_tokens", 0) == m.counts["filtered"].get("too_few_tokens", 0)
    assert c["normalize/ok"] == c["tokenize/ok"] + c.get("tokenize/filtered/too_few_tokens", 0)
    assert {k.split("/", 2)[2]: v for k, v in c.items() if k.startswith("read/rejected/")} == m.counts["rejected"]


def test_local_run_leaves_no_spill_and_sweeps_a_killed_one(tmp_path, corpus, sp_model):
    import tempfile

    from trimodal.pipelines.spill import SPILL_PREFIX

    dead = 2**22 + 12345  # above Linux's largest pid: never a live process; its spill folder is a killed run's leftover
    stale = Path(tempfile.gettempdir()) / f"{SPILL_PREFIX}{dead}-0123456789ab"
    (stale / "x").mkdir(parents=True)
    run_text_pipeline(TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=str(tmp_path / "o")),
                      ["--runner=DirectRunner"])
    assert not stale.exists()
    mine = [p for p in Path(tempfile.gettempdir()).glob(f"{SPILL_PREFIX}{os.getpid()}-*")]
    assert not mine


def test_workers_share_the_cores_for_encoding():
    from trimodal.pipelines import common, text

    def threads(*args):
        return text.encode_threads(common.pipeline_options(list(args)))

    cores = os.cpu_count() or 1
    assert threads() is None and threads("--runner=DirectRunner") is None  # one worker: the tokenizer's default
    assert threads("--direct_running_mode=multi_processing", "--direct_num_workers=2") == max(1, cores // 2)
    assert threads("--direct_running_mode=multi_processing", "--direct_num_workers=0") == 1  # one worker per core
    assert threads("--runner=DataflowRunner") is None
    assert common.direct_runner(common.pipeline_options(["--runner=DataflowRunner"])) is None
    assert type(common.direct_runner(common.pipeline_options([]))).__name__ == "FnApiRunner"


@pytest.mark.parametrize("cpus,workers", [(1, 1), (2, 1), (3, 1), (8, 4)])
def test_multi_worker_default_is_one_worker_per_two_cores(monkeypatch, cpus, workers):
    from trimodal.pipelines import common

    monkeypatch.setattr(common.os, "cpu_count", lambda: cpus)
    for mode in ("multi_processing", "multi_threading"):
        assert common.local_workers(common.pipeline_options([f"--direct_running_mode={mode}"])) == workers
    # a count the user names, in_memory and other runners are left as they are
    assert common.local_workers(common.pipeline_options(["--direct_running_mode=multi_processing",
                                                         "--direct_num_workers=3"])) == 3
    assert common.local_workers(common.pipeline_options([])) == 1
    remote = common.pipeline_options(["--runner=DataflowRunner", "--direct_running_mode=multi_processing"])
    assert remote.get_all_options()["direct_num_workers"] == 1  # Beam's own default, untouched
