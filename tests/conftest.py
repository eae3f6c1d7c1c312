"""Shared fixtures: a small text corpus with planted bad records, a SentencePiece model trained
on it, and one text dataset written by the real Beam pipeline (session-scoped: built once)."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

WORDS = (
    "the model reads a corpus of documents and learns to fill masked tokens with words that fit "
    "their context while images and audio share one sequence with captions and transcripts"
).split()

BAD_LINES = [
    (b'{"text": ""}', "filtered", "empty"),
    (b'{"text": "   \\n\\t  "}', "filtered", "empty"),
    (b'\xff\xfe{"text": "invalid utf-8"}', "rejected", "invalid_utf8"),
    (b"{this is not json}", "rejected", "bad_json"),
    (b'{"body": "no text field"}', "rejected", "missing_field"),
]


def make_corpus(path: Path, n_docs: int = 200, seed: int = 0, bad: bool = True) -> dict:
    rng = random.Random(seed)
    lines = []
    for i in range(n_docs):
        n = rng.randint(5, 80)
        lines.append(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n))}).encode())
    planted = {}
    if bad:
        for raw, outcome, reason in BAD_LINES:
            pos = rng.randint(0, len(lines))
            lines.insert(pos, raw)
        # line numbers of planted records, after all insertions
        for lineno, raw in enumerate(lines, start=1):
            for b, outcome, reason in BAD_LINES:
                if raw == b:
                    planted[f"{path}:{lineno}"] = (outcome, reason)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"good": n_docs, "planted": planted}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    info = make_corpus(folder / "corpus.jsonl")
    info["path"] = folder / "corpus.jsonl"
    return info


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, corpus) -> str:
    from trimodal.tokenizers.text import train_text_tokenizer

    texts = [json.loads(l)["text"] for l in corpus["path"].read_bytes().splitlines() if l.startswith(b'{"text": "')]
    path = tmp_path_factory.mktemp("tok") / "text.model"
    train_text_tokenizer(texts + [" ".join(WORDS)] * 10, 300, str(path))
    return str(path)


@pytest.fixture(scope="session")
def movq_ckpt(tmp_path_factory) -> str:
    """The tiny random MoVQGAN (``MoVQGANConfig.tiny()``: 64 px, 8 x 8 codes) saved as a checkpoint."""
    import torch

    from trimodal.tokenizers.movqgan import MoVQGAN, MoVQGANConfig, save_movqgan

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("movq") / "movqgan_tiny.ckpt"
    save_movqgan(MoVQGAN(MoVQGANConfig.tiny()), path)
    return str(path)


@pytest.fixture(scope="session")
def text_dataset(tmp_path_factory, corpus, sp_model) -> str:
    from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline

    out = str(tmp_path_factory.mktemp("ds") / "text")
    run_text_pipeline(
        TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=out, target_shard_bytes=6000),
        ["--runner=DirectRunner"],
    )
    return out


# ---- a real S3-API server (moto, server mode) on loopback, shared by the object-storage tests ----
BUCKET = "trimodal-test"
S3_WORDS = "object storage keeps shards and manifests behind one url scheme for every reader".split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    import fsspec

    from trimodal.tokenizers.text import train_text_tokenizer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines
    for attempt in range(5):  # a port found free can be taken before the server binds it
        port = _free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        try:
            server.start()
            break
        except OSError:
            if attempt == 4:
                raise
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }.items():
        mp.setenv(k, v)
    mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)

    # corpus (two JSONL files) and tokenizer, uploaded
    rng = random.Random(0)
    docs = [" ".join(rng.choice(S3_WORDS) for _ in range(rng.randint(3, 50))) for _ in range(160)]
    for part in range(2):
        body = "".join(json.dumps({"text": d}) + "\n" for d in docs[part::2])
        fs.pipe(f"{BUCKET}/corpus/part-{part}.jsonl", body.encode())
    local = tmp_path_factory.mktemp("s3tok") / "text.model"
    train_text_tokenizer(docs, 300, str(local))
    fs.put(str(local), f"{BUCKET}/tokenizers/text.model")
    yield {"fs": fs, "endpoint": endpoint, "docs": docs, "tmp": tmp_path_factory.mktemp("s3local")}
    mp.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()




@pytest.fixture(scope="session")
def check_val_split():
    """``check(plain_root, split_root, fraction)``: the split dataset holds exactly the plain one's
    samples (same keys, same arrays), each in the split its id hashes to (``sink.split_of``)."""
    from trimodal.pipelines.sink import split_of
    from trimodal.shards.manifest import Manifest
    from trimodal.shards.reader import iter_samples

    def samples(root: str, shards) -> dict[str, tuple]:
        return {s["__key__"]: (s["json"]["id"], tuple(sorted((k, v.tobytes()) for k, v in s.items()
                                                              if hasattr(v, "tobytes"))))
                for _, s in iter_samples(root, shards)}

    def check(plain_root: str, split_root: str, fraction: float) -> dict[str, int]:
        plain, split = Manifest.load(plain_root), Manifest.load(split_root)
        assert split.splits() == ["train", "val"]
        got, sizes = {}, {}
        for name in ("train", "val"):
            part = samples(split_root, split.split_shards(name))
            assert all(split_of(rid, fraction) == name for rid, _ in part.values())
            got.update(part)
            sizes[name] = len(part)
        assert got == samples(plain_root, plain.shards)
        return sizes

    return check


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Every test leaves torch's process-global numerics as it found them: thread count, oneDNN,
    default dtype, deterministic mode, matmul precision (a flag one test sets must not change the
    codes or losses another test computes)."""
    import torch

    saved = (torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.get_default_dtype(),
             torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())
    yield
    now = (torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.get_default_dtype(),
           torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())
    if now != saved:
        torch.set_num_threads(saved[0])
        torch.backends.mkldnn.enabled = saved[1]
        torch.set_default_dtype(saved[2])
        torch.use_deterministic_algorithms(saved[3])
        torch.set_float32_matmul_precision(saved[4])
