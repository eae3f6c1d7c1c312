"""Every path goes through fsspec (local, ``s3://``, ``gs://``, ``memory://``); writes are atomic.

The ground floor of the import graph: tokenizers, shards, pipelines and the trainer all read
and write through here, and this module imports nothing of the project.

Atomic write = write under a temporary name in the same folder, then move it to the final name.
On local disks the move is a rename; on object stores it is a copy + delete, and the object
appears under its final name only once complete. Either way a crash never leaves a partial file
under a final name.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid

import fsspec

TMP_MARK = ".tmp-"


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


WRITABLE_PROTOCOLS = ("file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")


def check_writable(url: str, what: str) -> None:
    """Refuse, in one line, a folder URL that cannot hold files we write and list back (an
    ``http://`` URL, an unknown protocol, or an object store whose fsspec package is missing)."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol not in WRITABLE_PROTOCOLS:
        raise ValueError(f"{what} {url!r}: {protocol}:// cannot hold written files here; use a local path, s3:// or "
                         f"gs:// (also az://, abfs://, memory://)")
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{what} {url!r}: {protocol}:// needs its fsspec package ({e})") from None


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def read_bytes(url: str) -> bytes:
    fs, path = fs_and_path(url)
    return fs.cat_file(path)


def is_local(url: str) -> bool:
    """Whether ``url`` is on the local file system (a plain path or ``file://``)."""
    fs, _ = fs_and_path(url)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def resolve(base_folder: str, path: str) -> str:
    """``path`` named inside a file of ``base_folder`` (a manifest, a captions file, Parquet):
    URLs and absolute paths as they are (an absolute path stays on the base's filesystem),
    anything else relative to the folder."""
    if "://" in path:
        return path
    if path.startswith("/"):
        if "://" in base_folder:
            protocol = base_folder.split("://", 1)[0]
            return f"{protocol}://{path.lstrip('/')}" if protocol not in ("file", "local") else path
        return path
    return f"{base_folder.rstrip('/')}/{path}"


def absolute(url: str) -> str:
    """``url`` with a local path made absolute (URLs unchanged): what a manifest records, so that
    it still resolves from another working directory."""
    return url if "://" in url else os.path.abspath(url)


def local_path(url: str) -> str:
    """The OS path of a local ``url``; raises for object storage."""
    if not is_local(url):
        raise ValueError(f"{url} is not a local path")
    return fs_and_path(url)[1]


def links_leaving(root: str, names: list[str]) -> list[str]:
    """Entries of a local ``root`` (its ``names`` and what the globs among them match) that are
    symbolic links resolving outside ``root``: writing or cleaning through them would touch
    files elsewhere. Object stores have no links: always empty there."""
    if not is_local(root):
        return []
    import glob as _glob

    base = os.path.realpath(local_path(root))
    found = []
    for name in names:
        for entry in sorted(_glob.glob(os.path.join(local_path(root), name))):
            if os.path.islink(entry):
                target = os.path.realpath(entry)
                if target != base and not target.startswith(base + os.sep):
                    found.append(entry)
    return found


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


_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, as webdataset and img2dataset users write shard lists:
    ``a{00000..00099}.tar`` (zero-padded ranges keep their width) and ``{train,val}/*.tar``."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        a, b = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).lstrip("-").startswith("0") else 0
        step = 1 if b >= a else -1
        items = [f"{i:0{width}d}" for i in range(a, b + step, step)]
    elif "," in body:
        items = body.split(",")
    else:  # a literal brace pair (no range, no alternatives) stays as it is
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [x for item in items for x in expand_braces(head + item + tail)]


def expand_inputs(patterns: list[str] | str) -> list[str]:
    """Expand braces and globs to a sorted list of URLs; a pattern matching nothing is an error
    naming it (a brace range lists every missing member)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for original in patterns:
        missing = []
        found = 0
        for pattern in expand_braces(original):
            fs, path = fs_and_path(pattern)
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
            matches = [m for m in matches if fs.isfile(m)]
            if not matches:
                missing.append(pattern)
            found += len(matches)
            for m in matches:
                out.append(m if protocol in ("file", "local") else f"{protocol}://{m}")
        if missing:
            shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            what = original if len(missing) == 1 and missing[0] == original else f"{original}: {shown}"
            raise FileNotFoundError(f"input not found or matched no files: {what}")
    return out


def create_exclusive(url: str, data: bytes) -> bool:
    """Create ``url`` holding ``data`` only if it does not exist yet; False if it does.

    Local files use ``O_CREAT | O_EXCL`` (atomic on POSIX file systems); object stores use a
    conditional write where fsspec offers one (``mode="xb"``), which S3 and GCS implement as an
    if-none-match put. Used for the dataset writer lock."""
    fs, path = fs_and_path(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_local(url):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # no conditional write here: best effort
        if fs.exists(path):
            return False
        with fs.open(path, "wb") as f:
            f.write(data)
    return True
