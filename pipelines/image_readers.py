"""Image-caption corpus readers: WebDataset tars, Parquet, a folder + captions file, via fsspec.

Each input becomes :class:`~trimodal.pipelines.records.Record` records (``text`` = the caption,
``media`` = the image bytes, or ``media_url`` for lazily read images) or dead letters (stage
``read``). Record ids are stable across runs, so shard contents (and the per-record
preprocessing seed, :func:`trimodal.tokenizers.image_preprocess.record_seed`) are deterministic.
An input that cannot be opened at all becomes one rejected record with reason
``unreadable_file``. The readers do not decode images: that is the pipeline's job, on its
workers, with its own reasons.

**WebDataset tars** (img2dataset's ``webdataset`` output): members grouped by sample key
(webdataset's rule: the path up to the first dot of the file name); one image member (``jpg``,
``jpeg``, ``png``, ``webp``, also ``bmp``/``gif``/``tif``/``tiff``) plus a caption from ``.txt``
or from a ``.json`` with a ``caption`` / ``text`` field (``caption_field`` picks another).
Id ``<tar>:<key>``. Reasons: ``missing_image``, ``missing_caption``, ``invalid_utf8``,
``bad_json``, ``duplicate_key``, and ``unreadable_file`` for a tar that breaks off mid-stream (the
samples before the break are kept).

**Parquet**: one row per record, image bytes in a binary column or in a struct column with a
``bytes`` field (img2dataset's ``jpg`` column; Hugging Face's ``image`` feature
``{bytes, path}``, where a row with only a ``path`` is read from that path, relative to the
Parquet file). Columns are found by name (``image_field`` / ``caption_field``, or the first of
:data:`PARQUET_IMAGE_COLUMNS` / :data:`CAPTION_FIELDS` present). Id ``<file>:<row>`` (or
``<file>:<id_field value>``); ``url``/``key`` columns, when present, go to the provenance.
Reasons: ``missing_image`` (null or empty-struct image: img2dataset keeps failed downloads as
rows with a null ``jpg``), ``missing_caption`` (null caption), ``bad_field_type``.

**Folder + captions file**: a JSON-lines file of ``{"file", "caption"}`` objects (field names
configurable), ``file`` relative to the folder (or absolute, or a URL). The input is the folder
(captions default to ``<folder>/captions.jsonl``) or the captions file itself (the folder is its
parent). Id ``<captions file>:<line>`` -- a line, not an image, is the record: COCO-style
corpora caption one image several times. Reasons: ``bad_json``, ``invalid_utf8``,
``missing_field``, ``bad_field_type``, ``missing_file``, ``unreadable_file``; with
``report_uncaptioned`` every image file under the folder that no line names becomes a
``missing_caption`` record (id: the image's path), so an image without a caption is never
silently skipped. With ``lazy=True`` (what the pipeline uses) a record carries ``media_url``
instead of ``media`` and the bytes are fetched by :func:`fetch_image` later, after the records
have been spread over the workers: a folder of a million images is not read by one worker.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec

from trimodal import storage
from trimodal.pipelines.readers import Reader, json_objects, parse_json, split_key, tar_groups
from trimodal.pipelines.records import DeadLetter, Record

STAGE = "read"
FORMATS = ("auto", "webdataset", "parquet", "folder")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTS = ("txt", "text", "caption")
CAPTION_FIELDS = ("caption", "text", "txt")
PARQUET_IMAGE_COLUMNS = ("jpg", "image", "img", "png", "jpeg", "webp", "image_bytes", "bytes")
DEFAULT_CAPTIONS = "captions.jsonl"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".jsonl.zst")
PARQUET_BATCH_ROWS = 64  # images are large: small record batches keep a worker's memory flat


class FetchError(Exception):
    """An image URL that could not be read; ``reason`` is ``missing_file`` or ``unreadable_file``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def detect_format(url: str, is_dir: bool = False) -> str:
    lower = url.lower().rstrip("/")
    if is_dir:
        return "folder"
    if lower.endswith(_TAR_SUFFIXES):
        return "webdataset"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(_JSONL_SUFFIXES):
        return "folder"
    raise ValueError(f"cannot tell the format of {url!r} from its name; pass format= (one of {FORMATS[1:]})")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = _protocol(fs)
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def parent_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


resolve_path = storage.resolve  # a captions line or a Parquet ``path``: see storage.resolve


def fetch_image(url: str) -> bytes:
    """The bytes of one image file, or :class:`FetchError` (missing / unreadable)."""
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise FetchError("missing_file", f"{url}: {e}") from None
    except (OSError, ValueError) as e:  # a folder, permissions, a broken remote object
        raise FetchError("unreadable_file", f"{url}: {type(e).__name__}: {e}") from None


def _caption_from_json(obj: Any, caption_field: str | None) -> Any:
    """The caption of a JSON object (``None`` if absent); a non-string value is returned as is."""
    if not isinstance(obj, dict):
        return None
    for name in ((caption_field,) if caption_field else CAPTION_FIELDS):
        if obj.get(name) is not None:
            return obj[name]
    return None


def _pick_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    if wanted:
        if wanted not in names:
            raise ValueError(f"parquet file has no {what} column {wanted!r} (columns: {names})")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"parquet file has none of the {what} columns {list(candidates)} (columns: {names}); "
                     f"name it with the {what}_field option")


def _folder_and_captions(url: str, captions: str | None, is_dir: bool) -> tuple[str, str]:
    if is_dir:
        return url.rstrip("/"), captions or f"{url.rstrip('/')}/{DEFAULT_CAPTIONS}"
    return parent_url(url), url  # the input is the captions file itself


def _norm(url: str) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    return _with_protocol(fs, posixpath.normpath(path))


class ImageTextReader(Reader):
    """WebDataset tars, Parquet, or a folder + captions file (see the module docstring)."""

    def __init__(self, fmt: str = "auto", source: str = "", captions: str | None = None, image_field: str | None = None,
                 caption_field: str | None = None, id_field: str | None = None, file_field: str = "file",
                 lazy: bool = False, report_uncaptioned: bool = True, **kw: Any) -> None:
        super().__init__(source, **kw)
        if fmt not in FORMATS:
            raise ValueError(f"unknown image-text format {fmt!r}; expected one of {FORMATS}")
        self.fmt, self.captions, self.image_field, self.caption_field = fmt, captions, image_field, caption_field
        self.id_field, self.file_field, self.lazy, self.report_uncaptioned = id_field, file_field, lazy, report_uncaptioned

    def records(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        fs, path = fsspec.core.url_to_fs(url)
        is_dir = fs.isdir(path)
        fmt = detect_format(url, is_dir) if self.fmt == "auto" else self.fmt
        if fmt == "webdataset":
            yield from self.webdataset(url, source)
        elif fmt == "parquet":
            yield from self.parquet(url, source)
        else:
            yield from self.folder(url, source, is_dir)

    def _at(self, rid: str, source: str, caption: str, prov: dict[str, Any], image_url: str) -> Record | DeadLetter:
        """A record for an image stored at ``image_url``: the URL only (``lazy``: fetched after the
        records are spread over workers) or the fetched bytes; a failed fetch is a dead letter."""
        if self.lazy:
            return self.record(rid, source, text=caption, media_url=image_url, provenance=prov)
        try:
            return self.record(rid, source, text=caption, media=fetch_image(image_url), provenance=prov)
        except FetchError as e:
            return self.reject(rid, source, e.reason, e.detail)

    # ---- webdataset tars
    def _group(self, url: str, source: str, key: str, members: dict[str, bytes]) -> Record | DeadLetter:
        rid = f"{url}:{key}"
        exts = {ext.lower(): ext for ext in members}
        image_ext = next((exts[e] for e in IMAGE_EXTS if e in exts), None)
        if image_ext is None:
            return self.reject(rid, source, "missing_image", f"members: {sorted(members)}")
        caption: Any = None
        txt_ext = next((exts[e] for e in CAPTION_EXTS if e in exts), None)
        meta: dict[str, Any] = {}
        if "json" in exts:
            obj, reason, detail = parse_json(members[exts["json"]])
            if reason:
                return self.reject(rid, source, reason, f".json: {detail}")
            if isinstance(obj, dict):
                meta = {k: obj[k] for k in ("url", "key", "width", "height") if isinstance(obj.get(k), (str, int))}
            if txt_ext is None:
                caption = _caption_from_json(obj, self.caption_field)
        if txt_ext is not None:
            try:
                caption = members[txt_ext].decode("utf-8")
            except UnicodeDecodeError as e:
                return self.reject(rid, source, "invalid_utf8", f".{txt_ext}: {e}")
        if caption is None:
            return self.reject(rid, source, "missing_caption", f"members: {sorted(members)}")
        if not isinstance(caption, str):
            return self.reject(rid, source, "bad_field_type", f"caption is {type(caption).__name__}, not a string")
        prov = {"file": url, "key": key, "member": f"{key}.{image_ext}", **{f"src_{k}": v for k, v in meta.items()}}
        return self.record(rid, source, text=caption, media=members[image_ext], provenance=prov)

    def webdataset(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        for item in tar_groups(url, source, self):
            yield item if isinstance(item, DeadLetter) else self._group(url, source, *item)

    # ---- parquet
    def parquet(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        import pyarrow.parquet as pq

        folder = parent_url(url)
        with fsspec.open(url, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            img_col = _pick_column(names, self.image_field, PARQUET_IMAGE_COLUMNS, "image")
            cap_col = _pick_column(names, self.caption_field, CAPTION_FIELDS, "caption")
            extra = [c for c in ("url", "key") if c in names and c not in (img_col, cap_col)]
            id_field = self.id_field
            if id_field and id_field not in names:
                raise ValueError(f"parquet file has no id column {id_field!r} (columns: {names})")
            columns = list(dict.fromkeys([img_col, cap_col, *extra, *([id_field] if id_field else [])]))
            row = 0
            for batch in pf.iter_batches(columns=columns, batch_size=PARQUET_BATCH_ROWS):
                cols = {name: batch.column(i).to_pylist() for i, name in enumerate(columns)}
                for j in range(batch.num_rows):
                    rid_value = cols[id_field][j] if id_field else None
                    rid = f"{url}:{rid_value if rid_value is not None else row}"
                    prov: dict[str, Any] = {"file": url, "row": row}
                    prov.update({f"src_{c}": cols[c][j] for c in extra if cols[c][j] is not None})
                    row += 1
                    image, caption = cols[img_col][j], cols[cap_col][j]
                    path = None
                    if isinstance(image, dict):  # {"bytes": ..., "path": ...} (Hugging Face Image feature)
                        path = image.get("path")
                        image = image.get("bytes")
                    if caption is None:
                        yield self.reject(rid, source, "missing_caption", f"{cap_col!r} is null")
                    elif not isinstance(caption, str):
                        yield self.reject(rid, source, "bad_field_type", f"{cap_col!r} is {type(caption).__name__}, not a string")
                    elif image is None and path:
                        image_url = resolve_path(folder, path)
                        prov["image"] = image_url
                        yield self._at(rid, source, caption, prov, image_url)
                    elif image is None:
                        yield self.reject(rid, source, "missing_image", f"{img_col!r} is null")
                    elif not isinstance(image, (bytes, bytearray, memoryview)):
                        yield self.reject(rid, source, "bad_field_type", f"{img_col!r} is {type(image).__name__}, not bytes")
                    elif len(image) > self.max_bytes:
                        yield self.reject(rid, source, "too_large", f"image of {len(image)} bytes (limit {self.max_bytes})")
                    else:
                        yield self.record(rid, source, text=caption, media=bytes(image), provenance=prov)

    # ---- folder + captions
    def folder(self, url: str, source: str, is_dir: bool) -> Iterator[Record | DeadLetter]:
        folder, captions_url = _folder_and_captions(url, self.captions, is_dir)
        caption_key = self.caption_field or "caption"
        file_field = self.file_field
        referenced: set[str] = set()
        for item in json_objects(captions_url, source, self):
            if isinstance(item, DeadLetter):
                yield item
                continue
            rid, lineno, obj = item
            name = obj.get(file_field)
            if isinstance(name, str) and name:
                referenced.add(_norm(resolve_path(folder, name)))
            missing = [k for k in (file_field, caption_key) if obj.get(k) is None]
            if missing:
                yield self.reject(rid, source, "missing_field", f"no {' / '.join(map(repr, missing))} field")
                continue
            caption = obj[caption_key]
            if not isinstance(name, str) or not name or not isinstance(caption, str):
                which = caption_key if isinstance(name, str) and name else file_field
                yield self.reject(rid, source, "bad_field_type",
                                  f"{which!r} is {type(obj[which]).__name__}, not a (non-empty) string")
                continue
            image_url = resolve_path(folder, name)
            yield self._at(rid, source, caption, {"file": captions_url, "line": lineno, "image": image_url}, image_url)
        if self.report_uncaptioned and is_dir:
            fs, path = fsspec.core.url_to_fs(folder)
            if fs.isdir(path):
                for full in sorted(fs.find(path)):
                    if full.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
                        image_url = _with_protocol(fs, full)
                        if _norm(image_url) not in referenced:
                            yield self.reject(image_url, source, "missing_caption",
                                              "no line of the captions file names this image")


# ----------------------------------------------------------------------------- inputs + dispatch


def expand_image_inputs(patterns: list[str] | str, fmt: str = "auto") -> list[str]:
    """Globs → sorted input URLs. A folder is an input of its own for the folder format; for the
    webdataset / parquet formats a folder stands for the ``*.tar*`` / ``*.parquet`` files in it.
    A pattern matching nothing is an error naming it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image-text format {fmt!r}; expected one of {FORMATS}")
    if isinstance(patterns, str):
        patterns = [patterns]
    from trimodal.storage import expand_braces

    out: list[str] = []
    for pattern in [p for original in patterns for p in expand_braces(original)]:
        fs, path = fsspec.core.url_to_fs(pattern)
        path = path.rstrip("/") or path
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        found: list[str] = []
        for m in matches:
            if fs.isdir(m):
                if fmt in ("auto", "folder"):
                    found.append(m)
                else:
                    suffixes = _TAR_SUFFIXES if fmt == "webdataset" else (".parquet",)
                    found += sorted(p for p in fs.find(m) if p.lower().endswith(suffixes))
            elif fs.isfile(m):
                found.append(m)
        if not found:
            raise FileNotFoundError(f"input not found or matched no files: {pattern}")
        out += [_with_protocol(fs, m) for m in found]
    return out


def read_image_text_file(url: str, fmt: str = "auto", source: str = "", captions: str | None = None,
                         image_field: str | None = None, caption_field: str | None = None,
                         id_field: str | None = None, file_field: str = "file", lazy: bool = False,
                         report_uncaptioned: bool = True) -> Iterator[Record | DeadLetter]:
    """Records of one input (see :class:`ImageTextReader`)."""
    return ImageTextReader(fmt, source, captions, image_field, caption_field, id_field, file_field, lazy,
                           report_uncaptioned)(url)


__all__ = [
    "FORMATS",
    "IMAGE_EXTS",
    "CAPTION_FIELDS",
    "PARQUET_IMAGE_COLUMNS",
    "FetchError",
    "detect_format",
    "expand_image_inputs",
    "fetch_image",
    "ImageTextReader",
    "read_image_text_file",
    "resolve_path",
    "split_key",
]
