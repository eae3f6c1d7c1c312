"""Nothing a pipeline writes or removes resolves outside its root, and one writer per root even
when many processes find the same stale lock at once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess

import pytest

from trimodal.cli import main
from trimodal.pipelines.sink import remove_stale
from trimodal.shards.lock import LOCK_NAME, DatasetLock, DatasetLocked, read_lock


def _outside(tmp_path):
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    for i in (1, 2, 3):
        (keep / f"keep{i}.jsonl").write_text(f"precious {i}\n")
    return keep


def test_a_deadletter_link_leaving_the_root_is_refused_and_nothing_outside_is_touched(tmp_path, corpus, sp_model, capsys):
    keep = _outside(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(keep, root / "deadletter")
    capsys.readouterr()
    code = main(["pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", sp_model, "--out", str(root),
                 "--runner=DirectRunner"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert f"{root / 'deadletter'} is a symbolic link" in err[0] and "outside the output root" in err[0]
    assert sorted(p.name for p in keep.iterdir()) == ["keep1.jsonl", "keep2.jsonl", "keep3.jsonl"]
    assert not (root / LOCK_NAME).exists()  # refused before the lock was taken
    # a shard name that is a link out of the root is refused the same way
    os.unlink(root / "deadletter")
    os.symlink(keep / "keep1.jsonl", root / "shard-00000-of-00009.tar")
    capsys.readouterr()
    assert main(["pipeline", "text", "--input", str(corpus["path"]), "--text-tokenizer", sp_model, "--out", str(root),
                 "--runner=DirectRunner"]) == 1
    assert "shard-00000-of-00009.tar is a symbolic link" in capsys.readouterr().err
    assert (keep / "keep1.jsonl").read_text() == "precious 1\n"


def test_cleaning_never_follows_links(tmp_path):
    keep = _outside(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(keep, root / "deadletter")
    os.symlink(keep / "keep2.jsonl", root / "shard-00001-of-00002.tar")
    (root / "shard-00000-of-00002.tar").write_bytes(b"old")
    removed = remove_stale(str(root), keep_shards=set(), keep_dead=set())
    assert sorted(removed) == ["shard-00000-of-00002.tar", "shard-00001-of-00002.tar"]
    assert not os.path.lexists(root / "shard-00001-of-00002.tar")  # the link went, not its target
    assert sorted(p.name for p in keep.iterdir()) == ["keep1.jsonl", "keep2.jsonl", "keep3.jsonl"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no live process has it (pid reuse within the test is negligible)


def _contend(root: str, barrier, done, results) -> None:
    barrier.wait()
    try:
        lock = DatasetLock.acquire(root)
        results.put(("won", lock.run_id))
    except DatasetLocked as e:
        results.put(("refused", str(e)))
    done.wait()  # the winner stays alive until all have tried: its lock is not stale meanwhile


@pytest.mark.parametrize("trial", range(8))
def test_racing_takeovers_of_a_stale_lock_leave_exactly_one_writer(tmp_path, trial):
    root = tmp_path / "root"
    root.mkdir()
    stale = {"run_id": "crashed", "host": socket.gethostname(), "pid": _dead_pid(), "started": 0}
    (root / LOCK_NAME).write_text(json.dumps(stale))
    ctx = mp.get_context("fork")
    n = 12
    barrier, done, results = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(root), barrier, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    winners = [o[1] for o in outcomes if o[0] == "won"]
    assert len(winners) == 1, outcomes
    assert read_lock(str(root))["run_id"] == winners[0]  # the lock on disk names the one winner
    assert all("is being written by run" in o[1] for o in outcomes if o[0] == "refused")
