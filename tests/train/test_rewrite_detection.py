"""A dataset rewritten under a running training: the loader refuses it before any rewritten
sample is used (the writer lock from the rewrite's first moment, the xxh3 content hash once a
shard changed), the error names the root and the shard, and ``--resume`` after the data is
restored continues exactly as an uninterrupted run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from trimodal.cli import main
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.format import ShardError
from trimodal.shards.loader import LoaderConfig, SourceConfig, TrimodalDataset, load_manifests, tokenizers_of
from trimodal.shards.lock import DatasetLock, DatasetLocked
from trimodal.tokenizers.text import train_text_tokenizer
from trimodal.tokenizers.vocab import VocabLayout

BEAM = ["--runner=DirectRunner"]


def _write(corpus, tokenizer: str, out) -> None:
    run_text_pipeline(TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=tokenizer, out=str(out),
                                         target_shard_bytes=3000), BEAM)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, corpus) -> str:
    texts = [json.loads(l)["text"] for l in corpus["path"].read_bytes().splitlines() if l.startswith(b'{"text": "')]
    path = tmp_path_factory.mktemp("tokB") / "b.model"
    # the same vocabulary size (so a run's model still fits) from other text: other ids
    train_text_tokenizer([" ".join(reversed(t.split())) + " zebra" for t in texts], 300, str(path))
    return str(path)


def _rows(root: str):
    cfg = LoaderConfig(sources=[SourceConfig(root=root)], seq_len=64, num_streams=1)
    layout = VocabLayout.from_tokenizers(tokenizers_of(load_manifests(cfg)))
    return iter(TrimodalDataset(cfg, layout))


def test_the_loader_refuses_a_rewrite_before_using_any_rewritten_sample(tmp_path, corpus, sp_model, other_tokenizer):
    root, ref_root = tmp_path / "a" / "data", tmp_path / "b" / "data"
    _write(corpus, sp_model, root)
    shutil.copytree(root, ref_root)
    reference = [r["tokens"].clone() for r, _ in zip(_rows(str(ref_root)), range(400))]

    rows = _rows(str(root))
    seen = [next(rows)["tokens"].clone() for _ in range(3)]
    # another job starts rewriting the root: its lock alone stops the next shard open
    lock = DatasetLock.acquire(str(root))
    with pytest.raises(DatasetLocked, match=rf"{root}/.*shard.*not opened: {root} is being rewritten"):
        while True:
            seen.append(next(rows)["tokens"].clone())
    lock.release()
    assert all(torch.equal(a, b) for a, b in zip(seen, reference))

    # the rewrite ran to the end with another tokenizer (same shard names): the content hash stops it
    rows = _rows(str(root))
    seen = [next(rows)["tokens"].clone() for _ in range(3)]
    _write(corpus, other_tokenizer, root)
    with pytest.raises(ShardError, match=rf"{root}/.*shard.*(content hash xxh3|bytes, manifest says|missing).*rewrit"):
        while True:
            seen.append(next(rows)["tokens"].clone())
    assert all(torch.equal(a, b) for a, b in zip(seen, reference))  # no rewritten row used


def _train(root, out, *extra: str) -> int:
    sets = [f'data.sources=[{{"root": "{root}"}}]', f"run.out_dir={out}", "run.steps=6", "run.batch_size=4",
            "run.device=cpu", "run.progress=false", "run.log_every=1", "run.ckpt_every=0", "data.seq_len=64",
            "data.num_streams=2", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
            "optim.lr=3e-3", "optim.warmup_steps=2", "eval.every=0", "log.tensorboard=false"]
    args = ["train"]
    for s in sets:
        args += ["--set", s]
    return main(args + list(extra))


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if r.get("event", "train") == "train" and "loss" in r}


def test_resume_after_the_data_is_restored_continues_exactly(tmp_path, corpus, sp_model, other_tokenizer, capsys):
    root, ref_root = tmp_path / "a" / "data", tmp_path / "b" / "data"
    _write(corpus, sp_model, root)
    shutil.copytree(root, ref_root)
    assert _train(ref_root, tmp_path / "ref") == 0
    assert _train(root, tmp_path / "run", "--set", "run.stop_at_step=3") == 0

    _write(corpus, other_tokenizer, root)  # rewritten while the run was stopped: other ids
    capsys.readouterr()
    assert _train(root, tmp_path / "run", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different tokenizer" in err[0], err
    lock = DatasetLock.acquire(str(root))  # a rewrite under way
    assert _train(root, tmp_path / "run", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{root} is being rewritten by run {lock.run_id}" in err[0], err
    lock.release()

    _write(corpus, sp_model, root)  # restored: the same input and tokenizer give the same bytes
    assert _train(root, tmp_path / "run", "--resume") == 0
    ref, run = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(run) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([run[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-6)


def test_a_manifest_naming_a_file_outside_the_root_is_refused_everywhere(tmp_path, text_dataset, capsys):
    root = tmp_path / "root"
    shutil.copytree(text_dataset, root)
    (tmp_path / "outside.tar").write_bytes((root / json.loads((root / "manifest.json").read_text())["shards"][0]["name"])
                                           .read_bytes())
    m = json.loads((root / "manifest.json").read_text())
    m["shards"][0]["name"] = "../outside.tar"
    (root / "manifest.json").write_text(json.dumps(m))
    for argv in (["shards", "stats", str(root)], ["shards", "verify", str(root)],
                 ["train", "--set", f'data.sources=[{{"root": "{root}"}}]', "--set", f"run.out_dir={tmp_path / 'run'}",
                  "--set", "run.steps=1", "--set", "run.device=cpu"]):
        capsys.readouterr()
        assert main(argv) != 0, argv
        said = capsys.readouterr()
        assert "shard name '../outside.tar' is not a plain file name inside the root" in said.out + said.err, argv
