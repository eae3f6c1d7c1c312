"""Every pipeline on Beam's portable runner, with SDK workers that share nothing with the launcher.

A session fixture starts Beam's Python job service (``local_job_service_main``) and an external
SDK worker pool (``worker_pool_main``) on loopback, on free ports, and stops them (and every
worker they started) at the end. Each pipeline then runs twice on the same input and config:
on the DirectRunner and with ``--runner=PortableRunner --environment_type=EXTERNAL``, where the
job is pickled, sent over gRPC and executed by worker processes of the pool. The shards and
dead-letter files must be byte-identical and the manifests equal apart from the run id. On the
portable runner the tokenize pipelines run their Beam graph sink (``WriteDataset``, what
Dataflow executes), not the local spill sink: the job's counters say which sink wrote the
shards, in the line the launcher prints when a remote job is done. One run writes to the
loopback S3 server (the ``s3`` fixture of ``tests/conftest.py``): the workers find it through
``FSSPEC_S3_ENDPOINT_URL``, inherited from the environment the pool was started in.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trimodal.pipelines import common
from trimodal.pipelines.audio_text import AudioTextPipelineConfig, run_audio_text_pipeline
from trimodal.pipelines.image_text import ImageTextPipelineConfig, run_image_text_pipeline
from trimodal.pipelines.mix import MixPipelineConfig, run_mix_pipeline
from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
from trimodal.shards.manifest import MANIFEST_NAME, Manifest

DIRECT = ["--runner=DirectRunner"]
BUCKET = "trimodal-test"  # the bucket of the s3 fixture
SR = 16000
WAIT_S = 120  # for the services to listen (a busy 2-core machine takes ~10 s)
JOB_LIMIT_S = 300  # one portable job at most (~30 s on a busy 2-core machine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """The service and every worker it started (its process group): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while _alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reap the leader, else its zombie keeps the group
            time.sleep(0.1)
    proc.wait(timeout=5)


@pytest.fixture(scope="session")
def portable(s3, tmp_path_factory):
    """The job service and the worker pool, started once; yields the PortableRunner's options.

    Started after the S3 server so the pool (and the workers it forks) inherit its endpoint."""
    logs = tmp_path_factory.mktemp("beam_services")
    job_port, pool_port = _free_port(), _free_port()
    cmds = {
        "job service": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                        "--port", str(job_port)],
        "worker pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                        "--service_port", str(pool_port)],
    }
    # the pool starts each worker as plain `python`: this interpreter's folder first on PATH, so
    # that the workers run this venv (with this package) whether or not it was activated; away
    # from the repository root, where ./tokenizers would shadow Hugging Face's package
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    procs = {}
    for name, cmd in cmds.items():
        log = open(logs / f"{name.replace(' ', '_')}.log", "wb")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                       cwd=logs)
        log.close()
    try:
        deadline = time.monotonic() + WAIT_S
        for name, port in (("job service", job_port), ("worker pool", pool_port)):
            while not _listening(port):
                if procs[name].poll() is not None:
                    raise RuntimeError(f"the {name} exited: {(logs / (name.replace(' ', '_') + '.log')).read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} did not listen on port {port} within {WAIT_S} s")
                time.sleep(0.2)
        def run(fn, *args, **kwargs):
            """``fn(*args, **kwargs)`` with a watchdog: a job the runner never finishes (a worker
            that died at start-up leaves the job service waiting for it) stops the services after
            JOB_LIMIT_S and fails the test instead of hanging the suite."""
            fired = threading.Event()

            def stop_all() -> None:
                fired.set()
                for proc in procs.values():
                    _stop(proc)

            timer = threading.Timer(JOB_LIMIT_S, stop_all)
            timer.daemon = True
            timer.start()
            try:
                return fn(*args, **kwargs)
            except Exception:
                if fired.is_set():
                    log = (logs / "worker_pool.log").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"the portable job ran past {JOB_LIMIT_S} s; services stopped. "
                                         f"Worker pool log:\n{log}") from None
                raise
            finally:
                timer.cancel()

        yield {"args": ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                        "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"],
               "procs": procs, "run": run}
    finally:
        for proc in procs.values():
            _stop(proc)
        left = [name for name, proc in procs.items() if _alive(proc.pid)]
        assert not left, f"processes left running: {left}"


def _files(root: str | Path) -> dict[str, bytes]:
    """Every file under a local root but the manifest, by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}


def _manifest_json(root: str) -> dict:
    d = json.loads(Manifest.load(root).to_json())
    assert d.pop("run_id", None)
    return d


def _check_same(direct_root: str, portable_root: str) -> Manifest:
    """Byte-identical shards and dead letters; manifests equal but for the run id."""
    a, b = _files(direct_root), _files(portable_root)
    assert a and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert _manifest_json(direct_root) == _manifest_json(portable_root)
    return Manifest.load(portable_root)


def _check_accounting(m: Manifest, root: str, expected_dead: dict[str, tuple[str, str]] | None = None) -> None:
    """Every record read ends written, filtered or rejected; each dead one with its reason."""
    c = m.counts
    n_dead = sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert c["read"] == c["written"] + n_dead and c["written"] == m.samples > 0
    dead = list(m.dead_letters(root)) if m.dead_letter else []
    assert len(dead) == n_dead
    assert all(r["reason"] and r["outcome"] in ("filtered", "rejected") for r in dead)
    if expected_dead is not None:
        assert {r["id"]: (r["outcome"], r["reason"]) for r in dead} == expected_dead


def _check_job_line(err: str, m: Manifest) -> None:
    """The launcher's line for a finished remote job: the counts, and the Beam graph sink's shards."""
    (line,) = [x for x in err.splitlines() if x.startswith("job done:")]
    c = m.counts
    assert (f"read {c['read']:,}  written {c['written']:,}  filtered {sum(c['filtered'].values()):,}  "
            f"rejected {sum(c['rejected'].values()):,}") in line
    assert line.endswith(f"(sink WriteDataset: {len(m.shards)} shards)"), line  # not the spill sink


# ----------------------------------------------------------------------------- text


def _text_cfg(corpus, sp_model, out, **kw) -> TextPipelineConfig:
    return TextPipelineConfig(inputs=[str(corpus["path"])], text_tokenizer=sp_model, out=str(out),
                              target_shard_bytes=6000, val_fraction=0.1, **kw)


@pytest.fixture(scope="module")
def direct_text(tmp_path_factory, corpus, sp_model) -> str:
    out = str(tmp_path_factory.mktemp("direct") / "text")
    run_text_pipeline(_text_cfg(corpus, sp_model, out), DIRECT)
    return out


def test_text_portable_matches_direct(portable, direct_text, corpus, sp_model, tmp_path, capfd):
    out = str(tmp_path / "text")
    portable["run"](run_text_pipeline, _text_cfg(corpus, sp_model, out), portable["args"])
    m = _check_same(direct_text, out)
    assert m.splits() == ["train", "val"]
    _check_accounting(m, out, corpus["planted"])
    _check_job_line(capfd.readouterr().err, m)


def test_text_portable_writes_to_s3(portable, s3, tmp_path, capfd):
    """Input, tokenizer and output on the S3 server: the workers read and write through fsspec."""
    cfg = dict(inputs=[f"s3://{BUCKET}/corpus/*.jsonl"], text_tokenizer=f"s3://{BUCKET}/tokenizers/text.model",
               target_shard_bytes=25_000)
    local = str(tmp_path / "direct")
    run_text_pipeline(TextPipelineConfig(out=local, **cfg), DIRECT)
    remote = f"s3://{BUCKET}/portable/text"
    m = portable["run"](run_text_pipeline, TextPipelineConfig(out=remote, **cfg), portable["args"])
    fs = s3["fs"]
    objects = {p.split(f"{BUCKET}/portable/text/", 1)[1]: fs.cat_file(p) for p in fs.find(f"{BUCKET}/portable/text")}
    assert objects.pop(MANIFEST_NAME)
    assert objects == _files(local)  # byte-identical, no temporary objects left
    assert len(m.shards) > 1 and m.counts["written"] == m.counts["read"] == len(s3["docs"])
    d = json.loads(Manifest.load(remote).to_json())
    d.pop("run_id")
    assert d == _manifest_json(local)
    _check_job_line(capfd.readouterr().err, m)


def test_worker_that_cannot_read_the_tokenizer_fails_in_one_line(portable, corpus, sp_model, tmp_path, monkeypatch, capfd):
    """A tokenizer path only the launcher can read: the job is built (the launcher loads it),
    then the file is gone before the workers start; the error names it, in one line."""
    from trimodal import cli
    from trimodal.pipelines import text

    tok = tmp_path / "launcher_only.model"
    tok.write_bytes(Path(sp_model).read_bytes())
    build = text.build_text_pipeline

    def build_then_hide(*args, **kwargs):
        out = build(*args, **kwargs)
        tok.rename(tmp_path / "elsewhere.model")  # the workers look for it after the graph is built
        return out

    monkeypatch.setattr(text, "build_text_pipeline", build_then_hide)
    code = portable["run"](cli.main, ["pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", str(tok),
                     "--out", str(tmp_path / "out"), *portable["args"]])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: the job failed on a worker: "), err
    assert str(tok) in err[0]
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


# ----------------------------------------------------------------------------- image-text


def _load_test_module(name: str):
    """A sibling test module's corpus builders (plain functions), imported by path."""
    spec = importlib.util.spec_from_file_location(f"_portable_{name}", Path(__file__).parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def image_setup(tmp_path_factory, sp_model, movq_ckpt):
    it = _load_test_module("test_image_text")
    corpus = it.make_corpus(tmp_path_factory.mktemp("imgcorpus"))

    def cfg(out: str) -> ImageTextPipelineConfig:
        return ImageTextPipelineConfig(inputs=corpus["inputs"], text_tokenizer=sp_model, image_tokenizer=movq_ckpt,
                                       out=out, image_size=it.SIZE, device="cpu", batch_size=4,
                                       max_pixels=it.MAX_PIXELS, target_shard_bytes=4000)

    direct = str(tmp_path_factory.mktemp("direct") / "image_text")
    run_image_text_pipeline(cfg(direct), DIRECT)
    return {"cfg": cfg, "direct": direct, "corpus": corpus}


def test_image_text_portable_matches_direct(portable, image_setup, tmp_path, capfd):
    out = str(tmp_path / "image_text")
    portable["run"](run_image_text_pipeline, image_setup["cfg"](out), portable["args"])
    m = _check_same(image_setup["direct"], out)
    _check_accounting(m, out, image_setup["corpus"]["bad"])
    _check_job_line(capfd.readouterr().err, m)


# ----------------------------------------------------------------------------- audio-text


@pytest.fixture(scope="module")
def audio_setup(tmp_path_factory, sp_model):
    import torch

    from trimodal.tokenizers.dac import DAC, DACConfig, save_dac

    folder = tmp_path_factory.mktemp("portable_speech")
    torch.manual_seed(0)
    dac = str(folder / "dac_tiny.pth")
    save_dac(DAC(DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                           n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=SR)), dac)
    rng = np.random.default_rng(0)
    lines = []
    for i, seconds in enumerate([0.1, 0.15, 0.2, 0.25]):
        buf = io.BytesIO()
        sf.write(buf, (0.2 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, format="WAV")
        (folder / f"clip{i}.wav").write_bytes(buf.getvalue())
        lines.append({"audio_filepath": f"clip{i}.wav", "text": f"clip {i} of the model reads a corpus"})
    (folder / "empty.wav").write_bytes(b"")
    lines += [{"audio_filepath": "empty.wav", "text": "zero bytes"},
              {"audio_filepath": "missing.wav", "text": "no file"},
              {"audio_filepath": "clip0.wav", "text": "  "}]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    bad = {f"{manifest}:5": ("rejected", "empty"), f"{manifest}:6": ("rejected", "missing_file"),
           f"{manifest}:7": ("filtered", "empty_transcript")}

    def cfg(out: str) -> AudioTextPipelineConfig:
        return AudioTextPipelineConfig(inputs=[str(manifest)], text_tokenizer=sp_model, audio_tokenizer=dac, out=out,
                                       device="cpu", max_seconds=1.0, batch_size=2, bucket_seconds=0.25,
                                       target_shard_bytes=2000)

    direct = str(tmp_path_factory.mktemp("direct") / "audio_text")
    run_audio_text_pipeline(cfg(direct), DIRECT)
    return {"cfg": cfg, "direct": direct, "bad": bad}


def test_audio_text_portable_matches_direct(portable, audio_setup, tmp_path, capfd):
    out = str(tmp_path / "audio_text")
    portable["run"](run_audio_text_pipeline, audio_setup["cfg"](out), portable["args"])
    m = _check_same(audio_setup["direct"], out)
    _check_accounting(m, out, audio_setup["bad"])
    _check_job_line(capfd.readouterr().err, m)


# ----------------------------------------------------------------------------- mix


def test_mix_portable_matches_direct(portable, direct_text, image_setup, audio_setup, tmp_path, capfd):
    """The three modalities above, pre-mixed into rows on both runners."""
    def cfg(out: str) -> MixPipelineConfig:
        return MixPipelineConfig(inputs=[f"text={direct_text}", f"image={image_setup['direct']}",
                                         f"audio={audio_setup['direct']}"], weights=[2, 1, 1], seq_len=160,
                                 out=out, seed=1, target_shard_bytes=20_000, group_bytes=1)

    direct = str(tmp_path / "direct_mix")
    run_mix_pipeline(cfg(direct), DIRECT)
    out = str(tmp_path / "mix")
    m = portable["run"](run_mix_pipeline, cfg(out), portable["args"])
    assert _check_same(direct, out).counts == m.counts
    assert m.kind == "mixed" and m.counts["written"] > 0
    assert set(m.counts["sources"]) == {"text", "image", "audio"}
    assert all(s["rows"] > 0 for s in m.counts["sources"].values())
    (line,) = [x for x in capfd.readouterr().err.splitlines() if x.startswith("job done:")]
    assert f"written {m.counts['written']:,}" in line


def test_job_error_keeps_the_root_cause():
    report = ("Pipeline job_1 failed in state FAILED: Traceback (most recent call last):\n"
              '  File "x.py", line 1, in setup\n'
              "OSError: could not read the text tokenizer /data/tok.model: No such file\n\n"
              "During handling of the above exception, another exception occurred:\n"
              "RuntimeError: Pipeline job_1 failed\n")
    assert common.job_error(report) == ("the job failed on a worker: OSError: could not read the text tokenizer "
                                        "/data/tok.model: No such file")
    harness = ("Pipeline job_2 failed in state FAILED: RuntimeError: Error received from SDK harness for "
               "instruction 7: Traceback (most recent call last):\n  File \"y.py\", line 2\n"
               "FileNotFoundError: text tokenizer model not found: /tok.model [while running 'Tokenize']\n")
    assert common.job_error(harness) == ("the job failed on a worker: FileNotFoundError: text tokenizer model not "
                                         "found: /tok.model [while running 'Tokenize']")
    assert common.job_error("no exception named\nhere") == "the job failed on a worker: no exception named"
