"""File lists with sizes and SHA-256s (``files.json``), shared by checkpoints and exports.

A folder whose files are listed is complete and verifiable; a flipped byte, a truncation or a
missing file is then named instead of loaded. The shape of a list is checked too: valid JSON of the
wrong shape is damage like a truncation, and a list that lists nothing never verifies vacuously.
Imports nothing heavy (no torch), so an export is checked without DCP.
"""

from __future__ import annotations

import hashlib
from typing import Any

from trimodal import storage

FILES = "files.json"


def sha256_of(url: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 4 MiB chunks."""
    fs, path = storage.fs_and_path(url)
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def files_problem(record: Any, required: tuple[str, ...] = ()) -> str:
    """Why a parsed ``files.json`` is not a usable file list ('' when it is). Names are paths
    relative to the folder, without ``..`` or a leading ``/``."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    files = record.get("files")
    if not isinstance(files, dict):
        return "no 'files' object"
    if not files:
        return "its file list is empty"
    for name, meta in files.items():
        size = meta.get("bytes") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(meta.get("sha256"), str):
            return f"entry {name!r} lacks an integer 'bytes' and a 'sha256'"
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
            return f"entry {name!r} is not a plain path inside the folder"
    missing = [r for r in required if r not in files]
    if missing:
        return f"{', '.join(missing)} not listed"
    return ""


def check_file(folder: str, name: str, meta: dict[str, Any], error: type[Exception]) -> None:
    """Raise ``error`` naming the file when it is missing or differs from its entry."""
    url = storage.join(folder, name)
    try:
        size, digest = sha256_of(url)
    except FileNotFoundError:
        raise error(f"{url}: missing") from None
    if size != meta["bytes"]:
        raise error(f"{url}: {size} bytes, {FILES} says {meta['bytes']} (truncated or replaced)")
    if digest != meta["sha256"]:
        raise error(f"{url}: sha256 {digest[:12]}… differs from {FILES} ({meta['sha256'][:12]}…): damaged")


def list_files(folder: str, names: list[str]) -> dict[str, Any]:
    """``{"files": {name: {"bytes", "sha256"}}}`` for ``names`` (relative to ``folder``)."""
    out = {}
    for name in sorted(names):
        size, digest = sha256_of(storage.join(folder, name))
        out[name] = {"bytes": size, "sha256": digest}
    return out
