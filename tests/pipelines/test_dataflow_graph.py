"""The Dataflow launch path without a network: build the job the DataflowRunner would submit.

``--dry_run=True`` makes the DataflowRunner translate the pipeline (runner-v2 portable proto,
Docker environment from ``--sdk_container_image``, Dataflow overrides) and stop before it
talks to the service. The job's ``Environment`` (worker pool, machine type, GPU service options,
experiments) is then built from the same options with Beam's own ``apiclient.Environment``, which
is what the job request would carry. Any attempt to open a non-loopback socket fails the test.
Needs ``apache-beam[gcp]`` (in the ``test`` extra); skipped without it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

apiclient = pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient")

import apache_beam as beam  # noqa: E402
from apache_beam import version as beam_version  # noqa: E402
from apache_beam.internal import pickler  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.portability import common_urns  # noqa: E402
from apache_beam.portability.api import beam_runner_api_pb2  # noqa: E402

from trimodal.pipelines.mix import build_mix_pipeline, prepare_mix  # noqa: E402
from trimodal.pipelines.text import TextPipelineConfig, build_text_pipeline  # noqa: E402
from trimodal.shards.format import key_from_id  # noqa: E402
from trimodal.shards.manifest import Manifest  # noqa: E402
from trimodal.shards.writer import shard_name, write_shard  # noqa: E402
from trimodal.tokenizers.text import train_text_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "infra" / "dataflow"
BUCKET = "gs://trimodal-test-bucket"
IMAGE = "us-central1-docker.pkg.dev/trimodal-test/trimodal/worker:cuda"
GPU = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
OFFLINE = ["--dry_run=True", "--no_auth"]  # build the job, never talk to the service


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loopback only: a DNS lookup or connection to anything else raises at once."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise RuntimeError(f"network access attempted: {address!r}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"DNS lookup attempted: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def text_tok(tmp_path_factory):
    rng = random.Random(0)
    words = "dataflow workers read shards through fsspec and write them back".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(200)]
    return train_text_tokenizer(docs, 300, str(tmp_path_factory.mktemp("dftok") / "text.model"))


def _script_argv(tmp_path: Path, script: str, *args: str, **env: str) -> list[str]:
    """Run an infra/dataflow script with a stand-in launcher that records its argv."""
    out = tmp_path / f"{script}.argv.json"
    fake = tmp_path / "fake_trimodal"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    full_env = {**os.environ, "PROJECT": "trimodal-test", "BUCKET": BUCKET, "IMAGE": IMAGE, "TRIMODAL": str(fake), **env}
    subprocess.run(["bash", str(SCRIPTS / script), *args], check=True, env=full_env, capture_output=True, timeout=60)
    return json.loads(out.read_text())


def _parse(argv: list[str]):
    """What ``trimodal`` does with the argv: the command, its config, and the rest for Beam."""
    from trimodal.cli import parse

    return parse(argv)


def _dry_run(beam_args: list[str], build) -> apiclient.Job:
    options = PipelineOptions(beam_args + OFFLINE)
    p = beam.Pipeline(options=options)
    build(p)
    result = p.run()
    result.wait_until_finish()
    return result.job


def _environment(job: apiclient.Job):
    """The Environment proto the job request would carry (built offline, as create_job does)."""
    return apiclient.Environment(
        packages=[],
        options=job.options,
        environment_version=beam_version.__version__,
        proto_pipeline_staged_url=f"{BUCKET}/staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline,
    ).proto


def _dofn(job: apiclient.Job, prefix: str):
    """The DoFn a worker would unpickle for the ParDo named ``prefix`` (or nested under it)."""
    for t in job.proto_pipeline.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn and (t.unique_name == prefix or t.unique_name.startswith(prefix + "/")):
            payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
            return pickler.loads(payload.do_fn.payload)[0]
    raise AssertionError(f"no ParDo {prefix!r} in the job")


def _names(job: apiclient.Job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def _check_docker_env(job: apiclient.Job) -> None:
    envs = job.proto_pipeline.components.environments
    assert envs, "no environment in the pipeline proto"
    for env in envs.values():
        assert env.urn == common_urns.environments.DOCKER.urn
        payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
        assert payload.container_image == IMAGE


def _check_worker_pool(job: apiclient.Job, machine_type: str, gpu: bool) -> None:
    env = _environment(job)
    assert (GPU in list(env.service_options)) == gpu
    assert "use_runner_v2" in list(env.experiments)
    (pool,) = env.worker_pools
    assert pool.machine_type == machine_type
    assert pool.worker_harness_container_image == IMAGE
    assert [c.container_image for c in pool.sdk_harness_container_images] == [IMAGE]
    assert pool.autoscaling_settings.max_num_workers == 32
    options = dict(env.sdk_pipeline_options)["options"]
    assert options["project"] == "trimodal-test" and options["region"] == "us-central1"
    assert options["temp_location"].startswith(f"{BUCKET}/tmp")


def test_text_script_builds_a_dataflow_job(text_tok, tmp_path):
    argv = _script_argv(tmp_path, "text.sh", f"{BUCKET}/raw/c4/*.jsonl.gz", "c4")
    cmd, cfg, beam_args = _parse(argv)
    assert cmd.name == "pipeline text" and isinstance(cfg, TextPipelineConfig) and cfg.out == f"{BUCKET}/datasets/c4"
    inputs = [f"{BUCKET}/raw/c4/part-{i:03d}.jsonl.gz" for i in range(3)]  # what expand_inputs would list
    job = _dry_run(beam_args, lambda p: build_text_pipeline(p, cfg, inputs, text_tok))
    names = _names(job)
    for expected in ("Inputs", "SpreadFiles", "Read", "Rebalance", "Tokenize",
                     "WriteDataset/GroupShards", "WriteDataset/WriteShards", "WriteDataset/WriteDead",
                     "WriteDataset/WriteManifest"):
        assert any(n == expected or n.startswith(expected + "/") for n in names), expected
    # what the workers unpickle: the tokenizer's bucket URL and the output root
    assert _dofn(job, "Tokenize").step.tokenizer_path == f"{BUCKET}/tokenizers/text.model"
    assert _dofn(job, "WriteDataset/WriteShards").cfg.root == f"{BUCKET}/datasets/c4"
    _check_docker_env(job)
    _check_worker_pool(job, "n2-standard-8", gpu=False)


def test_mix_script_builds_a_dataflow_job(text_tok, tmp_path):
    argv = _script_argv(tmp_path, "mix.sh", "mix-v1", "c4=2", "wiki=1", SEQ_LEN="16", ROWS="40")
    cmd, cfg, beam_args = _parse(argv)
    assert cfg.inputs == [f"c4={BUCKET}/datasets/c4", f"wiki={BUCKET}/datasets/wiki"]
    assert cfg.weights == [2.0, 1.0] and cfg.seq_len == 16 and cfg.rows == 40
    # the launcher reads the input manifests; here they are local stand-ins for the bucket roots
    rng = np.random.default_rng(0)
    local = []
    for name in ("c4", "wiki"):
        root = tmp_path / name
        samples = [(key_from_id(f"{name}{i}"), {"id": i}, {"text": rng.integers(0, 300, 20).astype(np.uint16)}) for i in range(30)]
        infos = [write_shard(str(root), shard_name(k, 2), samples[k::2]) for k in range(2)]
        Manifest(kind="tokenized", modality="text", tokenizers={"text": text_tok.info()}, shards=infos).save(str(root))
        local.append(f"{name}={root}")
    from dataclasses import replace

    job = prepare_mix(replace(cfg, inputs=local))
    dfjob = _dry_run(beam_args, lambda p: build_mix_pipeline(p, job))
    names = _names(dfjob)
    for expected in ("Units", "Pack", "GroupFragments", "Stitch", "Plan", "Assign", "GroupShards", "WriteShards", "WriteManifest"):
        assert expected in names, expected
    assert _dofn(dfjob, "WriteShards").root == f"{BUCKET}/datasets/mix-v1"
    assert _dofn(dfjob, "Pack").seq_len == 16
    _check_docker_env(dfjob)
    _check_worker_pool(dfjob, "n2-standard-8", gpu=False)


@pytest.mark.parametrize("script,command", [("image_text.sh", "image-text"), ("audio_text.sh", "audio-text")])
def test_gpu_scripts_request_an_l4_per_worker(tmp_path, script, command):
    argv = _script_argv(tmp_path, script, f"{BUCKET}/raw/x/*", "x")
    cmd, cfg, beam_args = _parse(argv)
    assert cmd.name == f"pipeline {command}" and cfg.device == "cuda"
    assert (cfg.image_tokenizer if command == "image-text" else cfg.audio_tokenizer).startswith("/opt/trimodal/weights/")
    # the same options on a stand-in graph: what the worker pool of that job would be
    job = _dry_run(beam_args, lambda p: p | beam.Create([1, 2]) | beam.Map(lambda x: x + 1))
    _check_docker_env(job)
    _check_worker_pool(job, "g2-standard-8", gpu=True)
    assert _environment(job).worker_pools[0].disk_size_gb == 100


def test_every_script_parses():
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert {s.name for s in scripts} >= {"common.sh", "text.sh", "image_text.sh", "audio_text.sh", "mix.sh", "build_image.sh"}
    for s in scripts:
        subprocess.run(["bash", "-n", str(s)], check=True)


# ----------------------------------------------------------------------------- staged package


def _staged(job: apiclient.Job) -> dict[str, str]:
    """What Beam would stage for the workers: staged name → the local file (every environment)."""
    out = {}
    for env in job.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            if dep.type_urn == common_urns.artifact_types.FILE.urn:
                path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
                name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
                out[name] = path
    return out


def test_setup_file_route_stages_a_package_workers_can_run(text_tok, tmp_path):
    """``--setup_file=pyproject.toml``: Beam builds the sdist it stages (``python -m build
    --sdist --no-isolation``, offline); a wheel built from that sdist, alone on a worker's path,
    unpickles and runs the job's DoFns (the tokenize step, the graph sink's shard writer)."""
    pytest.importorskip("build")
    import tarfile

    argv = _script_argv(tmp_path, "text.sh", f"{BUCKET}/raw/c4/*.jsonl.gz", "c4")
    _, cfg, beam_args = _parse(argv)
    job = _dry_run(beam_args + [f"--setup_file={REPO / 'pyproject.toml'}"],
                   lambda p: build_text_pipeline(p, cfg, [f"{BUCKET}/raw/c4/part-000.jsonl.gz"], text_tok))
    staged = _staged(job)
    assert "workflow.tar.gz" in staged, sorted(staged)  # the name Beam gives the --setup_file sdist
    with tarfile.open(staged["workflow.tar.gz"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    sources = {str(p.relative_to(REPO)) for d in ("trimodal", "tokenizers", "shards", "pipelines", "train", "experiments")
               for p in (REPO / d).rglob("*.py")}
    assert sources <= names, sorted(sources - names)[:5]

    # the worker's side: install (here: unpack) a wheel of the staged sdist, nothing else of ours
    sdist = tmp_path / "sdist"
    sdist.mkdir()
    with tarfile.open(staged["workflow.tar.gz"]) as tf:
        tf.extractall(sdist, filter="data")
    (src,) = sdist.iterdir()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("trimodal-*.whl")
    site = tmp_path / "site"
    import zipfile

    zipfile.ZipFile(wheel).extractall(site)
    payloads = {}
    for prefix in ("Tokenize", "WriteDataset/WriteShards"):
        for t in job.proto_pipeline.components.transforms.values():
            if t.spec.urn == common_urns.primitives.PAR_DO.urn and (t.unique_name == prefix
                                                                     or t.unique_name.startswith(prefix + "/")):
                payloads[prefix] = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
    assert set(payloads) == {"Tokenize", "WriteDataset/WriteShards"}
    for name, payload in payloads.items():
        (tmp_path / f"{name.replace('/', '_')}.pkl").write_bytes(payload)
    check = (
        "import sys, glob\n"
        "from apache_beam.internal import pickler\n"
        "fns = [pickler.loads(open(p, 'rb').read())[0] for p in sorted(glob.glob(sys.argv[2] + '/*.pkl'))]\n"
        "import trimodal\n"
        "assert trimodal.__file__.startswith(sys.argv[1]), trimodal.__file__\n"
        "print(' '.join(sorted(type(f).__module__ + '.' + type(f).__name__ for f in fns)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", check, str(site), str(tmp_path)], check=True, capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120).stdout.split()
    assert out == ["trimodal.pipelines.batch_sink._WriteShardPieces", "trimodal.pipelines.common._BatchOut"], out
