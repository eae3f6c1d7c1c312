"""One writer per dataset root: a lock object created atomically, naming the run that holds it.

``ROOT/.trimodal-lock`` is created with an exclusive create (``O_EXCL`` locally; a conditional
write on object storage) holding ``{run_id, host, pid, started}``. A second pipeline writing the
same root refuses at once, naming the holder. The writing job removes the lock after it has
written the manifest (which records the same run id). A lock left by a process that is gone
(same host, dead pid) is taken over; any other stale lock must be removed by hand — the error
says how. The takeover is atomic: processes that find the same stale lock at once serialise on
an OS file lock (``flock``) held on this host while one of them checks the lock is still the
stale one, removes it and creates its own with the exclusive create; the others then find a
live holder and refuse. (Takeover needs the same host, so a host-local guard suffices.) Readers refuse a root whose lock names another run than its manifest: it is being
rewritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from trimodal import storage

LOCK_NAME = ".trimodal-lock"


class DatasetLocked(RuntimeError):
    """Another run is writing this dataset."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(root: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(root, LOCK_NAME)))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"run_id": "?", "host": "?", "pid": -1, "started": 0}


def _stale(held: dict) -> bool:
    """A lock whose process is gone: same host, pid not running."""
    return held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not pid_alive(held["pid"])


@contextmanager
def _takeover_guard(url: str) -> Iterator[None]:
    """An exclusive ``flock`` on a host-local file named after the lock's URL, held while a
    stale lock is checked, removed and re-created (released by the OS if the process dies)."""
    name = hashlib.sha256(storage.absolute(url).encode()).hexdigest()[:24]
    path = os.path.join(tempfile.gettempdir(), f"trimodal-lock-{name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@dataclass
class DatasetLock:
    root: str
    run_id: str

    @property
    def url(self) -> str:
        return storage.join(self.root, LOCK_NAME)

    @classmethod
    def acquire(cls, root: str, run_id: str | None = None) -> "DatasetLock":
        lock = cls(root, run_id or uuid.uuid4().hex[:12])
        body = json.dumps({"run_id": lock.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.time()}).encode()
        if storage.create_exclusive(lock.url, body):
            return lock
        with _takeover_guard(lock.url):
            # Only one process of this host at a time gets here; the lock read now is the current one.
            if storage.create_exclusive(lock.url, body):
                return lock
            held = read_lock(root) or {}
            if _stale(held):
                fs, path = storage.fs_and_path(lock.url)
                fs.rm(path)  # its process is gone: a crashed local run
                if storage.create_exclusive(lock.url, body):
                    return lock
                held = read_lock(root) or {}  # another host created one in between: it holds the root
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
        raise DatasetLocked(
            f"{root} is being written by run {held.get('run_id')} (host {held.get('host')}, pid {held.get('pid')}, "
            f"since {when}); wait for it, or if that job is dead remove {lock.url}")

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        held = read_lock(self.root)
        if held is not None and held.get("run_id") == self.run_id:
            fs, path = storage.fs_and_path(self.url)
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass


def check_readable(root: str, manifest_run_id: str | None) -> None:
    """Refuse to read a dataset that another run is rewriting."""
    held = read_lock(root)
    if held is not None and held.get("run_id") != manifest_run_id:
        raise DatasetLocked(f"{root} is being rewritten by run {held.get('run_id')} (its manifest is from run "
                            f"{manifest_run_id}); read it when that job has finished")
