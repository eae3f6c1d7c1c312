"""Reader building blocks shared by the text, image and audio readers.

Both yield either a parsed item or a dead-letter dict made by the caller's ``bad(record id,
source, reason, detail)``, so every line or tar member group ends as a record or a reason:

- :func:`json_objects`: JSON lines → ``(record id, line number, object)``; blank lines are
  separators, not records; ``invalid_utf8`` / ``bad_json`` otherwise;
- :func:`tar_groups`: a webdataset-style tar → ``(key, {extension: bytes})`` groups, keyed the
  way webdataset keys them; ``duplicate_key`` when a key's members appear twice apart, and one
  ``unreadable_file`` for a tar that breaks off (the groups before the break are kept).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

Bad = Callable[..., dict[str, Any]]

# webdataset's rule: key = the path up to the first dot of the file name, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else None


def json_objects(url: str, source: str, bad: Bad) -> Iterator[tuple[str, int, dict[str, Any]] | dict[str, Any]]:
    with fsspec.open(url, "rb", compression="infer") as f:
        for lineno, raw in enumerate(f, start=1):
            rid = f"{url}:{lineno}"
            if not raw.strip():
                continue  # blank separator lines are not records
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield bad(rid, source, "invalid_utf8", str(e))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield bad(rid, source, "bad_json", str(e))
                continue
            if not isinstance(obj, dict):
                yield bad(rid, source, "bad_json", f"expected an object, got {type(obj).__name__}")
                continue
            yield rid, lineno, obj


def tar_groups(url: str, source: str, bad: Bad) -> Iterator[tuple[str, dict[str, bytes]] | dict[str, Any]]:
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}

    def flush():
        if key is None:
            return None
        if key in seen:
            return bad(f"{url}:{key}", source, "duplicate_key", "members of this key appear twice, apart")
        seen.add(key)
        return key, members

    with fsspec.open(url, "rb", compression="infer") as f:
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    parts = split_key(info.name)
                    if parts is None or parts[1] == "":
                        continue  # no extension: not a sample member (webdataset skips it too)
                    k, ext = parts
                    if k != key:
                        out = flush()
                        if out is not None:
                            yield out
                        key, members = k, {}
                    data = tar.extractfile(info)
                    members[ext] = data.read() if data is not None else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            # the group being read when the tar broke off is incomplete: it is not a record
            yield bad(f"{url}:<truncated after {key}>", source, "unreadable_file", f"{type(e).__name__}: {e}")
            return
        out = flush()
        if out is not None:
            yield out
