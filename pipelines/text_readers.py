"""Text corpus readers: JSON lines, Parquet and plain text files, through fsspec.

Each reader turns one input file into records ``{"id", "source", "text", "provenance"}`` or
dead-letter dicts (a line that is not UTF-8, not JSON, lacks the text field…). Record ids are
``<file>:<line or row or paragraph>``: stable across runs, so shard contents are deterministic.
A file that cannot be opened at all becomes one rejected record with reason ``unreadable_file``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec

from trimodal.pipelines.outcomes import REJECTED, count, dead_letter
from trimodal.pipelines.readers import json_objects

STAGE = "read"
FORMATS = ("auto", "jsonl", "parquet", "txt")


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


def _bad(record_id: str, source: str, reason: str, detail: str = "") -> dict[str, Any]:
    count(STAGE, REJECTED, reason)
    return dead_letter(record_id, source, REJECTED, reason, STAGE, detail)


def _record(record_id: str, source: str, text: str, **prov: Any) -> dict[str, Any]:
    count(STAGE, "read")
    return {"id": record_id, "source": source, "text": text, "provenance": prov}


def read_jsonl(url: str, source: str, text_field: str = "text", id_field: str | None = None) -> Iterator[dict[str, Any]]:
    for item in json_objects(url, source, _bad):
        if isinstance(item, dict):
            yield item
            continue
        rid, lineno, obj = item
        if id_field and obj.get(id_field) is not None:
            rid = f"{url}:{obj[id_field]}"
        if text_field not in obj:
            yield _bad(rid, source, "missing_field", f"no {text_field!r} field")
            continue
        text = obj[text_field]
        if not isinstance(text, str):
            yield _bad(rid, source, "bad_field_type", f"{text_field!r} is {type(text).__name__}, not a string")
            continue
        yield _record(rid, source, text, file=url, line=lineno)


def read_parquet(url: str, source: str, text_field: str = "text", id_field: str | None = None) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise ValueError(f"parquet file has no column {text_field!r} (columns: {names})")
        columns = [text_field] + ([id_field] if id_field and id_field in names else [])
        row = 0
        for batch in pf.iter_batches(columns=columns, batch_size=4096):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, rid_value in zip(texts, ids):
                rid = f"{url}:{rid_value if rid_value is not None else row}"
                if text is None:
                    yield _bad(rid, source, "missing_field", f"{text_field!r} is null")
                elif not isinstance(text, str):
                    yield _bad(rid, source, "bad_field_type", f"{text_field!r} is {type(text).__name__}")
                else:
                    yield _record(rid, source, text, file=url, row=row)
                row += 1


def read_txt(url: str, source: str, unit: str = "file") -> Iterator[dict[str, Any]]:
    """Plain text: one document per file (``unit=file``), per blank-line paragraph, or per line."""
    with fsspec.open(url, "rb", compression="infer") as f:
        data = f.read()
    if unit == "file":
        try:
            yield _record(url, source, data.decode("utf-8"), file=url)
        except UnicodeDecodeError as e:
            yield _bad(url, source, "invalid_utf8", str(e))
        return
    sep = b"\n\n" if unit == "paragraph" else b"\n"
    for i, chunk in enumerate(data.split(sep), start=1):
        if unit == "paragraph" and not chunk.strip(b"\r\n"):
            continue
        rid = f"{url}:{i}"
        try:
            yield _record(rid, source, chunk.decode("utf-8"), file=url, **{unit: i})
        except UnicodeDecodeError as e:
            yield _bad(rid, source, "invalid_utf8", str(e))


def read_text_file(url: str, fmt: str = "auto", source: str = "", text_field: str = "text",
                   id_field: str | None = None, txt_unit: str = "file") -> Iterator[dict[str, Any]]:
    """Dispatch on format; an unreadable file becomes one rejected record naming the error."""
    fmt = detect_format(url) if fmt == "auto" else fmt
    source = source or url.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        if fmt == "jsonl":
            yield from read_jsonl(url, source, text_field, id_field)
        elif fmt == "parquet":
            yield from read_parquet(url, source, text_field, id_field)
        elif fmt == "txt":
            yield from read_txt(url, source, txt_unit)
        else:
            raise ValueError(f"unknown text format {fmt!r}; expected one of {FORMATS}")
    except (OSError, ValueError, EOFError) as e:
        yield _bad(url, source, "unreadable_file", f"{type(e).__name__}: {e}")
