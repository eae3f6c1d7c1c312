"""Every path goes through fsspec (local, ``s3://``, ``gs://``, ``memory://``); writes are atomic.

Atomic write = write under a temporary name in the same folder, then move it to the final name.
On local disks the move is a rename; on object stores it is a copy + delete, and the object
appears under its final name only once complete. Either way a crash never leaves a partial file
under a final name.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec

TMP_MARK = ".tmp-"


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def read_bytes(url: str) -> bytes:
    fs, path = fs_and_path(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def write_atomic(url: str, data: bytes) -> str:
    """Write ``data`` to ``url`` atomically; returns its sha256."""
    fs, path = fs_and_path(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
        if hasattr(f, "flush"):
            f.flush()
        if hasattr(f, "fileno"):
            try:
                os.fsync(f.fileno())
            except (OSError, ValueError, AttributeError):
                pass
    fs.mv(tmp, path)
    return hashlib.sha256(data).hexdigest()


def expand_inputs(patterns: list[str] | str) -> list[str]:
    """Expand globs to a sorted list of URLs; a pattern matching nothing is an error naming it."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        fs, path = fs_and_path(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        matches = [m for m in matches if fs.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"input not found or matched no files: {pattern}")
        for m in matches:
            out.append(m if protocol in ("file", "local") else f"{protocol}://{m}")
    return out
