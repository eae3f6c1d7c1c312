"""Idempotence and crash safety of the text pipeline (DirectRunner).

- Re-running over the same input and config gives byte-identical shards, dead-letter files and
  manifest (sha256 of every file), into the same root or another one.
- ``trimodal pipeline text`` killed with SIGKILL while it writes shards leaves no partial file
  under a final name (every ``shard-*.tar`` present parses completely, with its end-of-archive
  marker) and no manifest; a re-run completes, cleans the leftovers, and gives the same bytes as
  an uninterrupted run; ``verify`` accepts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.reader import decode_sample, index_shard
from trimodal.storage import TMP_MARK
from trimodal.shards.verify import verify
from trimodal.tokenizers.text import train_text_tokenizer

BEAM = ["--runner=DirectRunner"]
WORDS = "a crash must never leave half a shard under its final name so readers trust names".split()
SHARD_BYTES = 500  # about one sample per shard: hundreds of atomic writes, a wide window to kill in
FINAL_SHARD = re.compile(r"^shard-\d{5}-of-\d{5}\.tar(\.zst)?$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25))) for _ in range(300)]
    lines = [json.dumps({"text": d}) for d in docs]
    lines[17] = "{not json"  # dead-letter files are part of the output too
    lines[201] = json.dumps({"text": "   "})
    (base / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    train_text_tokenizer(docs, 300, str(base / "text.model"))
    return base


def _cfg(corpus: Path, out: Path) -> TextPipelineConfig:
    # the config the CLI builds for: --input C --text-tokenizer T --out O --shard-mb 0.0005
    return TextPipelineConfig(inputs=[str(corpus / "corpus.jsonl")], text_tokenizer=str(corpus / "text.model"), out=str(out),
                              target_shard_bytes=SHARD_BYTES)


def _digests(root: Path) -> dict[str, str]:
    """Every file's sha256; the manifest's without its run id (each run names itself)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "manifest.json":
                m = json.loads(data)
                assert m.pop("run_id")
                data = json.dumps(m, sort_keys=True).encode()
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(corpus):
    out = corpus / "reference"
    m = run_text_pipeline(_cfg(corpus, out), BEAM)
    assert len(m.shards) > 100 and m.dead_letter
    return out


def test_rerun_is_byte_identical(corpus, reference):
    before = _digests(reference)
    assert "manifest.json" in before and any(k.startswith("deadletter/") for k in before)
    run_text_pipeline(_cfg(corpus, reference), BEAM)
    assert _digests(reference) == before
    other = corpus / "other-root"
    run_text_pipeline(_cfg(corpus, other), BEAM)
    assert _digests(other) == before


def _check_complete_tar(data: bytes, name: str) -> int:
    """A whole shard: tarfile reads every member, it ends with the end-of-archive blocks, and the
    zero-copy reader parses every sample."""
    if name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompress(data)  # a truncated frame raises here
    assert len(data) % 512 == 0 and len(data) >= 1024, name
    assert data[-1024:] == bytes(1024), f"{name}: no end-of-archive marker"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for member in tf.getmembers():
            assert len(tf.extractfile(member).read()) == member.size
    n = 0
    for entry in index_shard(data, name):
        s = decode_sample(data, entry, name)
        assert "json" in s and "text" in s, name
        n += 1
    return n


def test_sigkill_mid_write_leaves_no_partial_final_file(corpus, reference):
    out = corpus / "killed"
    cmd = [sys.executable, "-m", "trimodal.cli", "pipeline", "text", "--input", str(corpus / "corpus.jsonl"),
           "--text-tokenizer", str(corpus / "text.model"), "--out", str(out), "--shard-mb", str(SHARD_BYTES / 1e6),
           "--runner=DirectRunner"]
    # cwd away from the repo root (./tokenizers would shadow trimodal.tokenizers); own process
    # group so that the kill reaches every process the job started
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=corpus, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            names = [p.name for p in out.glob("shard-*")] if out.exists() else []
            if sum(1 for n in names if FINAL_SHARD.match(n)) >= 3:
                break
            time.sleep(0.002)
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stderr = proc.stderr.read().decode(errors="replace")
    assert running, f"the pipeline ended before it could be killed (rc={proc.returncode}): {stderr[-2000:]}"
    assert proc.returncode == -signal.SIGKILL

    assert not (out / "manifest.json").exists(), "a killed run must not leave a manifest"
    finals = sorted(p for p in out.glob("shard-*") if FINAL_SHARD.match(p.name))
    temps = [p for p in out.rglob("*") if TMP_MARK in p.name]
    assert finals, "killed before any shard was complete"
    others = [p.name for p in out.glob("shard-*") if not FINAL_SHARD.match(p.name) and TMP_MARK not in p.name]
    assert not others, others
    ref = _digests(reference)
    for p in finals:
        data = p.read_bytes()
        assert _check_complete_tar(data, p.name) >= 1
        assert hashlib.sha256(data).hexdigest() == ref[p.name]  # a file under a final name is that final file
    for p in (out / "deadletter").glob("*.jsonl") if (out / "deadletter").exists() else []:
        if TMP_MARK not in p.name:
            text = p.read_text()
            assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    print(f"killed with {len(finals)} complete shards and {len(temps)} temporary files on disk")

    # the re-run completes, removes the leftovers, and equals an uninterrupted run byte for byte
    run_text_pipeline(_cfg(corpus, out), BEAM)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
    assert _digests(out) == _digests(reference)
    report = verify(str(out))
    assert report.ok, report.format()


def test_ctrl_c_is_one_line_and_leaves_the_output_clean(corpus, reference):
    out = corpus / "interrupted"
    cmd = [sys.executable, "-m", "trimodal.cli", "pipeline", "text", "--input", str(corpus / "corpus.jsonl"),
           "--text-tokenizer", str(corpus / "text.model"), "--out", str(out), "--shard-mb", str(SHARD_BYTES / 1e6),
           "--runner=DirectRunner"]
    proc = subprocess.Popen(cmd, cwd=corpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        names = [p.name for p in out.glob("shard-*")] if out.exists() else []
        if sum(1 for n in names if FINAL_SHARD.match(n)) >= 3:
            break
        time.sleep(0.002)
    running = proc.poll() is None
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert running, "the pipeline ended before it could be interrupted"
    lines = [l for l in err.decode(errors="replace").replace("\r", "\n").splitlines() if l.strip() and not l.startswith("[")]
    assert proc.returncode == 130 and len(lines) == 1, lines[:20]
    assert "left clean" in lines[0] and "run the same command again" in lines[0] and "Traceback" not in err.decode()
    assert not (out / "manifest.json").exists() and not (out / ".trimodal-lock").exists()
    run_text_pipeline(_cfg(corpus, out), BEAM)  # the same command again: the reference's bytes
    assert _digests(out) == _digests(reference)
