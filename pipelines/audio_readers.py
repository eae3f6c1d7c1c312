"""Audio-transcript corpus readers: JSON-lines manifests and WebDataset tars, through fsspec.

Each input file becomes :class:`~trimodal.pipelines.records.Record` records (``text`` = the
transcript, ``media`` = the audio bytes) or dead letters. Record
ids are stable across runs (``<manifest>:<line>``, ``<tar>:<sample key>``), so shard contents
are deterministic. A file that cannot be opened at all becomes one rejected record with reason
``unreadable_file``.

**Manifests** (LibriSpeech/NeMo style): one JSON object per line with ``audio_filepath``
(relative to the manifest's folder, absolute, or a URL), ``text``, optional ``duration`` and
optional ``offset``. A line *with* ``offset`` names a segment of a longer recording: the reader
cuts ``[offset, offset + duration)`` (to the end when ``duration`` is absent) at the file's own
sample rate and passes just that segment on, as a float32 WAV, so a long recording is never
shipped whole once per segment and the segment -- not the recording -- is what ``max_seconds``
judges. Without ``offset`` the whole file is the record (``duration`` is then informational only:
the decoded length is what counts). Reasons: ``missing_file``, ``unreadable_file``, ``bad_json``,
``invalid_utf8``, ``missing_field``, ``bad_field_type``, ``bad_segment`` (negative/non-finite
times, or an offset past the end), and for segments the audio reasons of
:func:`trimodal.tokenizers.audio_io.load_audio` (``empty``, ``undecodable``).

**WebDataset tars**: members grouped by sample key (webdataset's rule: the path up to the first
dot of the file name), one audio member (flac, wav, mp3, ogg, opus) plus a transcript from
``.txt`` or from a ``.json`` with a ``text`` / ``transcript`` field. Reasons: ``missing_audio``,
``missing_transcript``, ``invalid_utf8``, ``bad_json``, ``duplicate_key``, and
``unreadable_file`` for a tar that breaks off mid-stream (the samples before the break are kept).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from typing import Any

import fsspec
import soundfile as sf

from trimodal import storage
from trimodal.pipelines.readers import Reader, json_objects, parse_json, split_key, tar_groups
from trimodal.pipelines.records import DeadLetter, Record
from trimodal.tokenizers.audio_io import AudioRejected

STAGE = "read"
FORMATS = ("auto", "manifest", "webdataset")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")
TRANSCRIPT_EXTS = ("txt", "text")
JSON_TEXT_FIELDS = ("text", "transcript")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def detect_format(url: str) -> str:
    return "webdataset" if url.lower().endswith(_TAR_SUFFIXES) else "manifest"


# ----------------------------------------------------------------------------- manifests


def resolve_audio_path(manifest_url: str, path: str) -> str:
    """``audio_filepath`` → URL, relative to the manifest's folder (see :func:`storage.resolve`)."""
    return storage.resolve(manifest_url.rsplit("/", 1)[0] if "/" in manifest_url else ".", path)


def _time_field(obj: dict[str, Any], name: str) -> float | None:
    """A manifest's optional time value in seconds; raises ValueError naming the problem."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name!r} is {type(value).__name__}, not a number")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name!r} is {value}")
    return value


def cut_segment(f, offset: float, duration: float | None) -> tuple[bytes, dict[str, Any]]:
    """Decode ``[offset, offset + duration)`` of an open audio file and return it as float32 WAV
    bytes at the file's own rate (all channels), plus what was cut. Seeks instead of decoding
    what lies before the segment. Raises :class:`AudioRejected` (``empty``, ``undecodable``,
    ``bad_segment``)."""
    try:
        with sf.SoundFile(f) as snd:
            sr, total = int(snd.samplerate), int(snd.frames)
            start = int(round(offset * sr))
            if start >= total > 0 or (total == 0 and start > 0):
                raise AudioRejected("bad_segment", f"offset {offset} s is past the end ({total / max(sr, 1):.3f} s)")
            n = total - start if duration is None else min(int(round(duration * sr)), total - start)
            if start:
                snd.seek(start)
            x = snd.read(n, dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError variants
        detail = re.sub(r"^Error opening <[^>]*>: ", "", str(e))
        raise AudioRejected("undecodable", f"{type(e).__name__}: {detail}") from None
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue(), {"offset": offset, "duration": round(x.shape[0] / sr, 6), "file_sample_rate": sr}


def _read_audio_url(audio_url: str, offset: float | None, duration: float | None,
                    max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """Bytes of a whole file, or of one segment of it (see :func:`cut_segment`); a whole file
    over ``max_bytes`` is refused (``too_large``) without being read."""
    with fsspec.open(audio_url, "rb") as f:
        if offset is None:
            size = getattr(f, "size", None)
            if size is not None and size > max_bytes:
                raise AudioRejected("too_large", f"{size} bytes (limit {max_bytes})")
            data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise AudioRejected("too_large", f"over {max_bytes} bytes")
            return data, {}
        head = f.read(1)
        if not head:
            raise AudioRejected("empty", "zero bytes")
        f.seek(0)
        return cut_segment(f, offset, duration)


class AudioTextReader(Reader):
    """JSON-lines manifests or WebDataset tars (see the module docstring)."""

    def __init__(self, fmt: str = "auto", source: str = "", text_field: str = "text",
                 audio_field: str = "audio_filepath", **kw: Any) -> None:
        super().__init__(source, **kw)
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio-text format {fmt!r}; expected one of {FORMATS}")
        self.fmt, self.text_field, self.audio_field = fmt, text_field, audio_field

    def records(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        fmt = detect_format(url) if self.fmt == "auto" else self.fmt
        yield from (self.manifest(url, source) if fmt == "manifest" else self.webdataset(url, source))

    def manifest(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        text_field, audio_field = self.text_field, self.audio_field
        for item in json_objects(url, source, self):
            if isinstance(item, DeadLetter):
                yield item
                continue
            rid, lineno, obj = item
            missing = [k for k in (audio_field, text_field) if obj.get(k) is None]
            if missing:
                yield self.reject(rid, source, "missing_field", f"no {' / '.join(map(repr, missing))} field")
                continue
            path, text = obj[audio_field], obj[text_field]
            if not isinstance(path, str) or not path or not isinstance(text, str):
                which = audio_field if not isinstance(path, str) or not path else text_field
                yield self.reject(rid, source, "bad_field_type",
                                  f"{which!r} is {type(obj[which]).__name__}, not a non-empty string")
                continue
            try:
                offset = _time_field(obj, "offset")
                duration = _time_field(obj, "duration")
            except TypeError as e:
                yield self.reject(rid, source, "bad_field_type", str(e))
                continue
            except ValueError as e:
                yield self.reject(rid, source, "bad_segment", str(e))
                continue
            audio_url = resolve_audio_path(url, path)
            try:
                data, segment = _read_audio_url(audio_url, offset, duration, self.max_bytes)
            except FileNotFoundError as e:
                yield self.reject(rid, source, "missing_file", f"{audio_url}: {e}")
                continue
            except AudioRejected as e:
                yield self.reject(rid, source, e.reason, f"{audio_url}: {e.detail}")
                continue
            except (OSError, ValueError) as e:  # a folder, permissions, a broken remote object
                yield self.reject(rid, source, "unreadable_file", f"{audio_url}: {type(e).__name__}: {e}")
                continue
            prov: dict[str, Any] = {"file": url, "line": lineno, "audio": audio_url}
            if duration is not None and offset is None:
                prov["declared_duration"] = duration
            if segment:
                prov["segment"] = segment
            yield self.record(rid, source, text=text, media=data, provenance=prov)

    def _group(self, url: str, source: str, key: str, members: dict[str, bytes]) -> Record | DeadLetter:
        rid = f"{url}:{key}"
        # a member's type is the last part of its extension ("seg.0.wav" is a wav), as webdataset decodes
        exts: dict[str, str] = {}
        for ext in sorted(members):
            exts.setdefault(ext.rsplit(".", 1)[-1].lower(), ext)
        audio_ext = next((exts[e] for e in AUDIO_EXTS if e in exts), None)
        if audio_ext is None:
            return self.reject(rid, source, "missing_audio", f"members: {sorted(members)}")
        text = None
        txt_ext = next((exts[e] for e in TRANSCRIPT_EXTS if e in exts), None)
        if txt_ext is not None:
            try:
                text = members[txt_ext].decode("utf-8")
            except UnicodeDecodeError as e:
                return self.reject(rid, source, "invalid_utf8", f".{txt_ext}: {e}")
        elif "json" in exts:
            obj, reason, detail = parse_json(members[exts["json"]])
            if reason:
                return self.reject(rid, source, reason, f".json: {detail}")
            if isinstance(obj, dict):
                text = next((obj[f] for f in JSON_TEXT_FIELDS if isinstance(obj.get(f), str)), None)
        if text is None:
            return self.reject(rid, source, "missing_transcript", f"members: {sorted(members)}")
        return self.record(rid, source, text=text, media=members[audio_ext],
                           provenance={"file": url, "key": key, "member": f"{key}.{audio_ext}"})

    def webdataset(self, url: str, source: str) -> Iterator[Record | DeadLetter]:
        for item in tar_groups(url, source, self):
            yield item if isinstance(item, DeadLetter) else self._group(url, source, *item)


def read_audio_file(url: str, fmt: str = "auto", source: str = "", text_field: str = "text",
                    audio_field: str = "audio_filepath") -> Iterator[Record | DeadLetter]:
    """Records of one input file (see :class:`AudioTextReader`)."""
    return AudioTextReader(fmt, source, text_field, audio_field)(url)


__all__ = ["FORMATS", "AUDIO_EXTS", "AudioTextReader", "detect_format", "resolve_audio_path", "cut_segment",
           "split_key", "read_audio_file"]
