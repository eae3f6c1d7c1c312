"""Checkpoints with ``torch.distributed.checkpoint`` (DCP), on local disk or object storage.

Layout of ``<run>/checkpoints/step-0000100/`` (``docs/checkpoints.md``):

- DCP files (``.metadata``, ``__<rank>_0.distcp``): sharded model and optimizer, each rank writing
  its shards; DCP reshards on load, so a checkpoint resumes on another world size;
- ``rank-<r>.json``: that rank's loader state (the data position);
- ``state.json``: step, run id, config, vocabulary layout, tokenizers, reparameterisation values,
  world size;
- ``files.json``, **written last** by rank 0 once every rank has finished: every file of the
  checkpoint with its size and sha256. A checkpoint is complete only when ``files.json`` exists,
  and loading checks every file against it, so a truncated, missing or altered file is named
  instead of loaded.

Local folders are first written as ``step-….partial`` and renamed once complete; on object
storage (``s3://``, ``gs://``, through DCP's fsspec storage) the files are written in place and
``files.json`` alone marks completion. Random numbers need no saved state: every draw is seeded
from (seed, step, global row).
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

from trimodal import integrity, storage
from trimodal.train import distributed as D

STEP_RE = re.compile(r"^step-(\d{7})$")
STATE = "state.json"
FILES = integrity.FILES


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or damaged; the message names the checkpoint and the file."""


def step_dir(root: str, step: int) -> str:
    return storage.join(os.fspath(root), f"step-{step:07d}")


def _is_local(url: str) -> bool:
    fs, _ = storage.fs_and_path(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _writer(path: str):
    if _is_local(path):
        return dcp.FileSystemWriter(storage.fs_and_path(path)[1])
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return FsspecWriter(path)


def _reader(path: str):
    if _is_local(path):
        return dcp.FileSystemReader(storage.fs_and_path(path)[1])
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(path)


def complete_checkpoints(root: str) -> list[str]:
    """Checkpoints under ``root`` that have their ``files.json``, oldest first."""
    root = os.fspath(root)
    fs, path = storage.fs_and_path(root)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    steps = sorted(int(m.group(1)) for n in names if (m := STEP_RE.match(n)))
    return [step_dir(root, s) for s in steps if fs.exists(f"{storage.fs_and_path(step_dir(root, s))[1]}/{FILES}")]


def step_of(path: str) -> int:
    m = STEP_RE.match(path.rstrip("/").rsplit("/", 1)[-1])
    if not m:
        raise ValueError(f"{path} is not a step-NNNNNNN checkpoint folder")
    return int(m.group(1))


def _list_files(path: str) -> list[str]:
    fs, p = storage.fs_and_path(path)
    return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in fs.ls(p, detail=False) if fs.isfile(x))


def save_checkpoint(root: str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rank_state: dict[str, Any], info: D.DistInfo) -> str:
    """Save collectively (every rank calls this); returns the final folder. Any failure (a full
    disk above all) is one :class:`CheckpointError` on every rank naming the folder and the cause;
    the previous complete checkpoint is never touched, and a local ``.partial`` is removed."""
    root = os.fspath(root)
    final = step_dir(root, step)
    local = _is_local(root)
    target = final + ".partial" if local else final
    fs, tpath = storage.fs_and_path(target)
    problem = ""
    try:
        if info.is_main:
            if fs.exists(tpath):
                fs.rm(tpath, recursive=True)
            if not local and fs.exists(storage.fs_and_path(final)[1]):
                fs.rm(storage.fs_and_path(final)[1], recursive=True)
            fs.makedirs(tpath, exist_ok=True)
    except BaseException as e:  # noqa: B036
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        problem = _save_failure(root, target, e)
    _raise_save_failure(D.first_error(problem), root, target, info)  # also the barrier before writing
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=_writer(target))
        storage.write_atomic(storage.join(target, f"rank-{info.rank}.json"), json.dumps(rank_state, sort_keys=True).encode())
    except BaseException as e:  # noqa: B036 - DCP's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        problem = _save_failure(root, target, e)
    _raise_save_failure(D.first_error(problem), root, target, info)
    D.barrier()
    try:
        if info.is_main:
            storage.write_atomic(storage.join(target, STATE), json.dumps(
                {**state, "step": step, "world_size": info.world_size}, indent=1, sort_keys=True).encode())
            files = {}
            for name in _list_files(target):
                if name == FILES or storage.TMP_MARK in name:
                    continue
                size, digest = integrity.sha256_of(storage.join(target, name))
                files[name] = {"bytes": size, "sha256": digest}
            record = {"step": step, "run_id": state.get("run_id"), "files": files}
            storage.write_atomic(storage.join(target, FILES), json.dumps(record, indent=1, sort_keys=True).encode())
            if local:
                ffs, fpath = storage.fs_and_path(final)
                if ffs.exists(fpath):
                    ffs.rm(fpath, recursive=True)
                ffs.mv(tpath, fpath, recursive=True)
    except BaseException as e:  # noqa: B036
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        problem = _save_failure(root, target, e)
    _raise_save_failure(D.first_error(problem), root, target, info)
    D.barrier()
    return final


_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                errno.EFBIG: "the file-size limit (ulimit -f) was reached"}


def _oserror_in(e: BaseException) -> OSError | None:
    """The first OSError with an errno in ``e``'s chain (DCP wraps its writers' errors)."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno:
            return x
        stack += [x.__cause__, x.__context__]
        failures = getattr(x, "failures", None)  # CheckpointException: {rank: exception}
        if isinstance(failures, dict):
            stack += [v for v in failures.values() if isinstance(v, BaseException)]
    return None


def _probe_space(target: str) -> OSError | None:
    """Write (then remove) up to 16 MiB beside the failed save: the OSError a full disk or a
    file-size limit gives, when the writer's own error lost it (torch's zip writer says only
    "unexpected pos")."""
    if not _is_local(target):
        return None
    folder = storage.fs_and_path(target)[1]
    if not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    probe = os.path.join(folder, f".space-probe{storage.TMP_MARK}{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            block = bytes(1 << 20)
            for _ in range(16):
                f.write(block)
                f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    return None


def _save_failure(root: str, target: str, e: BaseException) -> str:
    """One line for a failed save: the folder and, for a full disk or a size limit, the cause."""
    err = _oserror_in(e)
    if err is None or err.errno not in _DISK_ERRNOS:
        probed = _probe_space(target)
        if probed is not None and probed.errno in _DISK_ERRNOS:
            err = probed
    prev = complete_checkpoints(root)
    kept = f"the previous checkpoint {prev[-1]} is intact" if prev else "no earlier checkpoint was touched"
    if err is not None and err.errno in _DISK_ERRNOS:
        fix = "raise the limit" if err.errno == errno.EFBIG else f"free space under {root}"
        return (f"could not save checkpoint {target}: {os.strerror(err.errno)} ({_DISK_ERRNOS[err.errno]}); "
                f"nothing was lost: {kept}; {fix}, then resume with --resume")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"could not save checkpoint {target} ({type(e).__name__}: {first}); {kept}"


def _raise_save_failure(problem: str, root: str, target: str, info: D.DistInfo) -> None:
    """Raise ``problem`` on every rank, after rank 0 removed the incomplete local folder."""
    if not problem:
        return
    if info.is_main and _is_local(target):
        fs, tpath = storage.fs_and_path(target)
        try:
            if fs.exists(tpath):
                fs.rm(tpath, recursive=True)
        except OSError:
            pass
    raise CheckpointError(problem)


def prune(root: str, keep_last: int, run_id: str | None) -> list[str]:
    """Delete all but the ``keep_last`` newest complete checkpoints of run ``run_id``."""
    if keep_last <= 0:
        return []
    ours = [p for p in complete_checkpoints(root) if (rid := _run_id_or_none(p)) is not None and rid == run_id]
    removed = []
    for p in ours[:-keep_last]:
        fs, path = storage.fs_and_path(p)
        fs.rm(path, recursive=True)
        removed.append(p)
    return removed


def _run_id_or_none(path: str) -> str | None:
    """The run id in a checkpoint's ``files.json``; a damaged one is left alone by pruning."""
    try:
        return read_files(path).get("run_id")
    except CheckpointError:
        return None


def _read_json(url: str, missing: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise CheckpointError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{url}: damaged ({e})") from None


def read_files(path: str) -> dict[str, Any]:
    """``files.json`` of a checkpoint, checked for shape: valid JSON of the wrong shape (``{}``,
    ``[]``, a file list that lists nothing or lacks ``state.json``) is damage like a truncation,
    so that it falls back instead of failing with a KeyError and a file list never verifies
    vacuously."""
    path = os.fspath(path)
    url = storage.join(path, FILES)
    record = _read_json(url, f"{path} is not a complete checkpoint (no {FILES})")
    problem = integrity.files_problem(record, required=(STATE,))
    if problem:
        raise CheckpointError(f"{url}: damaged ({problem})")
    return record


def verify(path: str, rank: int = 0, world_size: int = 1) -> None:
    """Check the files of a checkpoint against ``files.json``; rank ``r`` of ``W`` hashes every
    W-th file (the callers all-reduce the outcome). Raises :class:`CheckpointError` naming the
    first bad file."""
    path = os.fspath(path)
    record = read_files(path)
    for i, (name, meta) in enumerate(sorted(record["files"].items())):
        if i % world_size != rank:
            continue
        integrity.check_file(path, name, meta, CheckpointError)


def read_state(path: str) -> dict[str, Any]:
    """``state.json`` of a complete checkpoint (its files are not hashed here)."""
    path = os.fspath(path)
    read_files(path)
    url = storage.join(path, STATE)
    state = _read_json(url, f"{url}: missing")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("world_size"), int) or state["world_size"] < 1 \
            or not isinstance(state.get("layout"), dict):
        raise CheckpointError(f"{url}: damaged (not an object with an integer 'step', 'world_size' and a 'layout')")
    return state


@dataclass
class Loaded:
    path: str
    state: dict[str, Any]
    rank_states: list[dict[str, Any]]


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: D.DistInfo | None = None) -> Loaded:
    """Verify, then load model (and optimizer) in place, resharding as needed. Every failure,
    DCP's own included (its ``CheckpointException`` is a ``BaseException``), becomes a
    :class:`CheckpointError` naming the checkpoint."""
    path = os.fspath(path)
    info = info or D.DistInfo()
    problem = ""
    try:
        verify(path, info.rank, info.world_size)
    except CheckpointError as e:
        problem = str(e)
    problem = D.first_error(problem)
    if problem:
        raise CheckpointError(problem)
    state = read_state(path)
    try:
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            sd = {"model": model_sd, "optim": optim_sd}
            dcp.load(sd, storage_reader=_reader(path))
            set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        else:
            sd = {"model": get_model_state_dict(model)}
            dcp.load(sd, storage_reader=_reader(path))
            set_model_state_dict(model, sd["model"])
    except (Exception, BaseException) as e:  # noqa: B036 - CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{path}: could not be loaded ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    rank_states = []
    for r in range(int(state["world_size"])):
        url = storage.join(path, f"rank-{r}.json")
        try:
            rank_states.append(json.loads(storage.read_bytes(url)))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{url}: {type(e).__name__}") from None
        if not isinstance(rank_states[-1], dict):
            raise CheckpointError(f"{url}: damaged (not a JSON object)")
    return Loaded(path=path, state=state, rank_states=rank_states)
