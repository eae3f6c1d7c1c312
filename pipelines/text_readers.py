"""Text corpus readers: JSON lines, Parquet and plain text files, through fsspec.

Each input file becomes :class:`~trimodal.pipelines.records.Record`\\ s (``text`` = the
document) or dead letters. Record ids are ``<file>:<line or row or paragraph>`` (or
``<file>:<id field>``): stable across runs, so shard contents are deterministic.

Inputs (also in the README's "Input formats"):

- **JSON lines** (``.jsonl``/``.json``/``.ndjson``, optionally compressed): one object per line
  with the document in ``text_field`` (default ``text``) and an optional id in ``id_field``.
  Reasons: ``invalid_utf8``, ``bad_json``, ``too_large``, ``missing_field``, ``bad_field_type``.
- **Parquet**: a string column ``text_field`` (and optionally ``id_field``); ``missing_field``
  (null) and ``bad_field_type`` per row.
- **Plain text**: one document per file, per blank-line paragraph or per line (``txt_unit``);
  ``invalid_utf8``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec

from trimodal.pipelines.readers import Reader, json_objects
from trimodal.pipelines.records import DeadLetter, Record

FORMATS = ("auto", "jsonl", "parquet", "txt")
TXT_UNITS = ("file", "paragraph", "line")


def txt_units(url: str, unit: str) -> tuple[int, int]:
    """(documents a plain-text file gives under ``unit`` -- the reader's own split --, its
    non-empty blank-line paragraphs) for the run's summary."""
    with fsspec.open(url, "rb", compression="infer") as f:
        data = f.read()
    paragraphs = sum(1 for c in data.split(b"\n\n") if c.strip(b"\r\n"))
    if unit == "file":
        return 1, paragraphs
    if unit == "paragraph":
        return paragraphs, paragraphs
    return len(data.split(b"\n")), paragraphs


def detect_format(url: str) -> str:
    lower = url.lower()
    for suffix in (".gz", ".zst", ".bz2", ".xz"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    return "txt"


class TextReader(Reader):
    def __init__(self, fmt: str = "auto", source: str = "", text_field: str = "text", id_field: str | None = None,
                 txt_unit: str = "file", **kw: Any) -> None:
        super().__init__(source, **kw)
        if fmt not in FORMATS:
            raise ValueError(f"unknown text format {fmt!r}; expected one of {FORMATS}")
        if txt_unit not in TXT_UNITS:
            raise ValueError(f"unknown txt_unit {txt_unit!r}; expected one of {TXT_UNITS}")
        self.fmt, self.text_field, self.id_field, self.txt_unit = fmt, text_field, id_field, txt_unit

    def records(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        fmt = detect_format(url) if self.fmt == "auto" else self.fmt
        if fmt == "jsonl":
            yield from self._jsonl(url, source)
        elif fmt == "parquet":
            yield from self._parquet(url, source)
        else:
            yield from self._txt(url, source)

    def _jsonl(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        for item in json_objects(url, source, self):
            if isinstance(item, DeadLetter):
                yield item
                continue
            rid, lineno, obj = item
            if self.id_field and obj.get(self.id_field) is not None:
                rid = f"{url}:{obj[self.id_field]}"
            if self.text_field not in obj:
                yield self.reject(rid, source, "missing_field", f"no {self.text_field!r} field")
                continue
            text = obj[self.text_field]
            if not isinstance(text, str):
                yield self.reject(rid, source, "bad_field_type", f"{self.text_field!r} is {type(text).__name__}, not a string")
                continue
            yield self.record(rid, source, text=text, provenance={"file": url, "line": lineno})

    def _parquet(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        import pyarrow.parquet as pq

        with fsspec.open(url, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if self.text_field not in names:
                raise ValueError(f"parquet file has no column {self.text_field!r} (columns: {names})")
            columns = [self.text_field] + ([self.id_field] if self.id_field and self.id_field in names else [])
            row = 0
            for batch in pf.iter_batches(columns=columns, batch_size=4096):
                texts = batch.column(0).to_pylist()
                ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
                for text, rid_value in zip(texts, ids):
                    rid = f"{url}:{rid_value if rid_value is not None else row}"
                    if text is None:
                        yield self.reject(rid, source, "missing_field", f"{self.text_field!r} is null")
                    elif not isinstance(text, str):
                        yield self.reject(rid, source, "bad_field_type", f"{self.text_field!r} is {type(text).__name__}")
                    else:
                        yield self.record(rid, source, text=text, provenance={"file": url, "row": row})
                    row += 1

    def _txt(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        with fsspec.open(url, "rb", compression="infer") as f:
            data = f.read()
        if self.txt_unit == "file":
            try:
                yield self.record(url, source, text=data.decode("utf-8"), provenance={"file": url})
            except UnicodeDecodeError as e:
                yield self.reject(url, source, "invalid_utf8", str(e))
            return
        sep = b"\n\n" if self.txt_unit == "paragraph" else b"\n"
        for i, chunk in enumerate(data.split(sep), start=1):
            if self.txt_unit == "paragraph" and not chunk.strip(b"\r\n"):
                continue
            rid = f"{url}:{i}"
            try:
                yield self.record(rid, source, text=chunk.decode("utf-8"), provenance={"file": url, self.txt_unit: i})
            except UnicodeDecodeError as e:
                yield self.reject(rid, source, "invalid_utf8", str(e))


def read_text_file(url: str, fmt: str = "auto", source: str = "", text_field: str = "text", id_field: str | None = None,
                   txt_unit: str = "file") -> Iterator[Record | DeadLetter]:
    """Records of one file (see :class:`TextReader`)."""
    return TextReader(fmt, source, text_field, id_field, txt_unit)(url)
