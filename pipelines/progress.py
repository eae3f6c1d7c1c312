"""A live count of records read, written, filtered and rejected while a local pipeline runs.

Beam's own counters can only be read once a DirectRunner job has finished, so a long local job
was silent until its end. Here each worker process keeps its counts and rewrites one small file
(``<dir>/<pid>.json``, at most once a second) in a folder the launcher names through the
``TRIMODAL_PROGRESS_DIR`` environment variable (DirectRunner worker processes inherit it); the
launcher sums the files once a second into one status line on stderr. Without the variable (on
Dataflow, say, where the UI shows Beam's counters) this does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "TRIMODAL_PROGRESS_DIR"
KINDS = ("read", "written", "filtered", "rejected")
_lock = threading.Lock()
_counts: dict[str, int] = {}
_last = 0.0


def bump(kind: str, n: int = 1) -> None:
    """Add ``n`` to this process's count of ``kind`` (cheap; flushed at most once a second)."""
    global _last
    folder = os.environ.get(ENV)
    if not folder:
        return
    with _lock:
        _counts[kind] = _counts.get(kind, 0) + n
        now = time.monotonic()
        if now - _last < 1.0:
            return
        _last = now
        data = json.dumps(_counts)
    path = os.path.join(folder, f"{os.getpid()}.json")
    tmp = f"{path}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # progress is best effort; the manifest has the real totals


def totals(folder: str) -> dict[str, int]:
    out = {k: 0 for k in KINDS}
    for name in os.listdir(folder):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    for k, v in json.load(f).items():
                        out[k] = out.get(k, 0) + int(v)
            except (OSError, ValueError):
                continue
    return out


def line(t: dict[str, int], elapsed: float) -> str:
    return (f"\r[{elapsed:6.0f} s] read {t['read']:,}  written {t['written']:,}  filtered {t['filtered']:,}  "
            f"rejected {t['rejected']:,}")


@contextmanager
def report(enabled: bool = True, stream=None) -> Iterator[None]:
    """Show the live status line for the duration of a local job (on ``sys.stderr`` as it is
    when the job starts, not as it was at import: a replaced stream may be closed since)."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        yield
        return
    global _counts, _last
    folder = tempfile.mkdtemp(prefix="trimodal-progress-")
    old = os.environ.get(ENV)
    os.environ[ENV] = folder
    with _lock:
        _counts, _last = {}, 0.0
    stop = threading.Event()
    t0 = time.monotonic()

    def loop() -> None:
        while not stop.wait(1.0):
            stream.write(line(totals(folder), time.monotonic() - t0))
            stream.flush()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()
        if time.monotonic() - t0 >= 1.0:
            stream.write("\n")
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
        for name in os.listdir(folder):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
        os.rmdir(folder)
