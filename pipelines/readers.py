"""The reader base and the building blocks the text, image and audio readers share.

A :class:`Reader` turns one input file into :class:`~trimodal.pipelines.records.Record`\\ s and
:class:`~trimodal.pipelines.records.DeadLetter`\\ s (datatrove's shape: one small unit, with
counters). The base counts both, names the source (default: the file's folder and name) and wraps a file
that cannot be read at all into one ``unreadable_file`` dead letter, so a bad file never stops a
job and is never silently lost. Subclasses implement :meth:`Reader.records`;
:meth:`Reader.batches` hands the same items out in batches, counted once per batch.

Building blocks, each yielding parsed items or dead letters:

- :func:`json_objects`: JSON lines → ``(record id, line number, object)``; blank lines are
  separators, not records; ``invalid_utf8``, ``bad_json`` (also for nesting deeper than the
  parser's limit) and ``too_large`` (a line over ``max_bytes``) otherwise;
- :func:`tar_groups`: a webdataset-style tar → ``(key, {extension: bytes})`` groups, keyed the
  way webdataset keys them; ``duplicate_key`` when a key's members appear twice apart, one
  ``unreadable_file`` for a tar that breaks off (the groups before the break are kept), and
  ``too_large`` for a member over ``max_bytes`` (skipped without being read into memory).
"""

from __future__ import annotations

import copy
import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec

from trimodal.pipelines.outcomes import Tally, count
from trimodal.pipelines.records import REJECTED, DeadLetter, Record

STAGE = "read"
MAX_RECORD_BYTES = 256 * 2**20  # one JSON line or tar member; larger ones are rejected unread
BATCH_CHARS = 16 * 2**20  # text characters in one batch of :meth:`Reader.batches`, past its first record

# webdataset's rule: key = the path up to the first dot of the file name, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else None


_COMPRESSED = (".gz", ".zst", ".bz2", ".xz")


def file_stem(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def source_name(url: str) -> str:
    """The default source name of an input: its folder and file name, compression suffix off
    (``laion/00000.tar``, ``corpus/docs-00000.jsonl``). The stem alone merged unrelated datasets
    in ``shards stats`` (image and audio tars both named ``00000.tar``; a JSONL and a Parquet
    file both named ``docs-00000``)."""
    parts = url.rstrip("/").split("://", 1)[-1].rsplit("/", 2)
    name = parts[-1]
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return f"{parts[-2]}/{name}" if len(parts) > 1 and parts[-2] else name


class Reader:
    """One input file → records and dead letters; see the module docstring."""

    stage = STAGE
    wrapped: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, RecursionError, tarfile.TarError)

    def __init__(self, source: str = "", max_bytes: int = MAX_RECORD_BYTES) -> None:
        self.source = source
        self.max_bytes = max_bytes

    def records(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        raise NotImplementedError

    def __call__(self, url: str) -> Iterator[Record | DeadLetter]:
        source = self.source or source_name(url)
        try:
            yield from self.records(url, source)
        except self.wrapped as e:
            yield self.reject(url, source, "unreadable_file", f"{type(e).__name__}: {e}")

    def batches(self, url: str, size: int, max_chars: int = BATCH_CHARS) -> Iterator[tuple[list[Record], list[DeadLetter]]]:
        """The same records and dead letters in batches: at most ``size`` items, and at most
        ``max_chars`` characters of text past the first record (a batch is one element in Beam
        and one tokenizer call; characters, not bytes: counting them costs nothing). Counters
        are bumped once per batch, with the same totals."""
        reader = copy.copy(self)  # its own tally: an instance may serve several threads
        reader._tally = tally = Tally()
        records: list[Record] = []
        dead: list[DeadLetter] = []
        nchars = 0
        for x in reader(url):
            if isinstance(x, DeadLetter):
                dead.append(x)
            else:
                records.append(x)
                nchars += len(x.text)
            if len(records) + len(dead) >= size or nchars >= max_chars:
                tally.flush()
                yield records, dead
                records, dead, nchars = [], [], 0
        tally.flush()
        if records or dead:
            yield records, dead

    # what subclasses emit
    _tally: Tally | None = None

    def record(self, rid: str, source: str, **fields: Any) -> Record:
        if self._tally is None:
            count(self.stage, "read")
        else:
            self._tally.add(self.stage, "read")
        return Record(id=rid, source=source, **fields)

    def reject(self, rid: str, source: str, reason: str, detail: str = "") -> DeadLetter:
        if self._tally is None:
            count(self.stage, REJECTED, reason)
        else:
            self._tally.add(self.stage, REJECTED, reason)
        return DeadLetter(rid, source, REJECTED, reason, self.stage, detail)


def parse_json(raw: bytes) -> tuple[Any, str, str]:
    """``(object, "", "")`` or ``(None, reason, detail)`` for bytes that are not one JSON value."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, "invalid_utf8", str(e)
    try:
        return json.loads(text), "", ""
    except json.JSONDecodeError as e:
        return None, "bad_json", str(e)
    except RecursionError:
        return None, "bad_json", "nested too deeply"


def bounded_lines(f, max_bytes: int, chunk: int = 1 << 20) -> Iterator[bytes | None]:
    """The lines of a binary stream (newline kept), or None for a line longer than
    ``max_bytes``, which is skipped without being held in memory. Works on any ``read(n)``."""
    buf = b""
    skipping = False
    while True:
        data = f.read(chunk)
        if not data:
            break
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line, start = buf[start : nl + 1], nl + 1
            if skipping:
                skipping = False
                continue
            yield None if len(line) > max_bytes else line
        buf = buf[start:]
        if len(buf) > max_bytes and not skipping:
            yield None
            skipping = True
        if skipping:
            buf = b""
    if buf and not skipping:
        yield None if len(buf) > max_bytes else buf


def json_objects(url: str, source: str, reader: Reader) -> Iterator[tuple[str, int, dict[str, Any]] | DeadLetter]:
    with fsspec.open(url, "rb", compression="infer") as f:
        lineno = 0
        for raw in bounded_lines(f, reader.max_bytes):
            lineno += 1
            rid = f"{url}:{lineno}"
            if raw is None:
                yield reader.reject(rid, source, "too_large", f"line over {reader.max_bytes} bytes")
                continue
            if not raw.strip():
                continue  # blank separator lines are not records
            obj, reason, detail = parse_json(raw)
            if reason:
                yield reader.reject(rid, source, reason, detail)
                continue
            if not isinstance(obj, dict):
                yield reader.reject(rid, source, "bad_json", f"expected an object, got {type(obj).__name__}")
                continue
            yield rid, lineno, obj


def tar_groups(url: str, source: str, reader: Reader) -> Iterator[tuple[str, dict[str, bytes]] | DeadLetter]:
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    oversized: set[str] = set()  # keys already dead-lettered for a too-large member

    def flush():
        if key is None or key in oversized:
            return None
        if key in seen:
            return reader.reject(f"{url}:{key}", source, "duplicate_key", "members of this key appear twice, apart")
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
                    if info.size > reader.max_bytes:
                        if k not in oversized:
                            oversized.add(k)
                            yield reader.reject(f"{url}:{k}", source, "too_large",
                                                f".{ext} member of {info.size} bytes (limit {reader.max_bytes})")
                        continue
                    data = tar.extractfile(info)
                    members[ext] = data.read() if data is not None else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            # the group being read when the tar broke off is incomplete: it is not a record
            yield reader.reject(f"{url}:<truncated after {key}>", source, "unreadable_file", f"{type(e).__name__}: {e}")
            return
        out = flush()
        if out is not None:
            yield out
