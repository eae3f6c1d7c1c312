"""Check every shard of a dataset against its manifest: presence, size, sha256, parse, counts.

``verify(root)`` reads the manifest, then streams the shards (a few in flight at a time, so memory
stays at a few shards whatever the dataset size; reading and hashing overlap in threads) and for
each one recomputes its byte size and sha256, parses it with the zero-copy reader and counts its
samples and tokens per array. Every bad shard is named with each of its problems:

- ``missing``: the file named in the manifest does not exist (``unreadable``: it exists but
  reading it fails);
- ``size mismatch``: its byte size differs from the manifest's;
- ``checksum mismatch``: same size, different sha256;
- ``unparsable``: the tar (or zstd, or an ``.npy``/``.json`` member) does not parse;
- ``count mismatch``: it parses to another number of samples than the manifest says;
- ``token mismatch``: its tokens per array differ from the manifest's;
- ``row length mismatch`` (mixed datasets): a row is not ``seq_len`` long.

Dataset-level problems (manifest unreadable, duplicate shard names, ``counts.written`` not equal
to the shards' samples) are reported under the manifest's name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trimodal import storage
from trimodal.shards.format import ShardError
from trimodal.shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, content_hash
from trimodal.shards.reader import decode_sample, index_shard, prefetch

MISSING = "missing"
SIZE_MISMATCH = "size mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
UNPARSABLE = "unparsable"
COUNT_MISMATCH = "count mismatch"
TOKEN_MISMATCH = "token mismatch"
ROW_LENGTH_MISMATCH = "row length mismatch"
UNREADABLE = "unreadable"
MANIFEST_PROBLEM = "manifest"


@dataclass
class ShardProblem:
    shard: str  # shard name relative to the root (or manifest.json for dataset-level problems)
    problem: str  # one of the constants above
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.shard}: {self.problem}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyReport:
    root: str
    shards: int = 0  # shards listed in the manifest
    checked: int = 0  # shards examined
    samples: int = 0  # samples parsed from good-parsing shards
    bytes: int = 0  # bytes read
    problems: list[ShardProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[str]:
        """Names of shards with at least one problem, in manifest order, each once."""
        return list(dict.fromkeys(p.shard for p in self.problems if p.shard != MANIFEST_NAME))

    def problems_of(self, shard: str) -> list[str]:
        return [p.problem for p in self.problems if p.shard == shard]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "shards": self.shards,
            "checked": self.checked,
            "samples": self.samples,
            "bytes": self.bytes,
            "bad_shards": self.bad_shards,
            "problems": [{"shard": p.shard, "problem": p.problem, "detail": p.detail} for p in self.problems],
        }

    def summary(self) -> str:
        """One line: how many problems, in how many shards (dataset-level ones said apart)."""
        n_manifest = sum(1 for p in self.problems if p.shard == MANIFEST_NAME)
        parts = []
        shard_problems = len(self.problems) - n_manifest
        if shard_problems:
            parts.append(f"{shard_problems} problem{'s' if shard_problems != 1 else ''} in "
                         f"{len(self.bad_shards)} shard{'s' if len(self.bad_shards) != 1 else ''}")
        if n_manifest:
            parts.append(f"{n_manifest} problem{'s' if n_manifest != 1 else ''} in the manifest")
        return ", ".join(parts) or "no problems"

    def format(self) -> str:
        head = (
            f"{self.root}: {self.checked}/{self.shards} shards checked, {self.samples:,} samples, "
            f"{self.bytes:,} bytes"
        )
        if self.ok:
            return f"{head}\nOK: every shard matches the manifest\n"
        lines = [head, f"FAILED: {self.summary()}"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines) + "\n"


def _load(root: str, info: ShardInfo) -> tuple[bytes | None, str | None]:
    """Read and hash one shard in a worker thread (hashlib and file I/O release the GIL).

    Returns ``(data, sha256)``, or ``(None, None)`` when the shard does not exist, or
    ``(None, error message)`` when it exists but cannot be read. Verification wants every
    problem of a shard, so it reads the raw bytes itself rather than through ``read_shard``,
    which stops at the first."""
    try:
        data = storage.read_bytes(storage.join(root, info.name))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{type(e).__name__}: {e}"
    return data, hashlib.sha256(data).hexdigest()


def _parse(data: bytes, info: ShardInfo, where: str, seq_len: int | None) -> tuple[int, dict[str, int], set[int]]:
    if info.name.endswith(".zst"):
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise ShardError(where, f"zstd: {e}") from None
    n = 0
    tokens: dict[str, int] = {}
    row_lengths: set[int] = set()
    for entry in index_shard(data, where):
        s = decode_sample(data, entry, where)
        n += 1
        if "json" not in s:
            raise ShardError(where, "sample has no .json member", s["__key__"])
        for k, v in s.items():
            if k in ("__key__", "json"):
                continue
            size = getattr(v, "size", None)
            if size is None:
                raise ShardError(where, f"unexpected member .{k}", s["__key__"])
            tokens[k] = tokens.get(k, 0) + int(size)
            if k == "tokens" and seq_len is not None:
                row_lengths.add(int(size))
    return n, tokens, row_lengths


def verify(root: str, workers: int = 4, progress: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    """Check every shard of ``root`` against its manifest; never raises for a bad dataset.

    ``progress(done, total, shard_name)`` is called after each shard when given.
    """
    root = root.rstrip("/")
    report = VerifyReport(root=root)
    try:
        manifest = Manifest.load(root)
    except (FileNotFoundError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        report.problems.append(ShardProblem(MANIFEST_NAME, MANIFEST_PROBLEM, f"unreadable: {e}"))
        return report
    shards = manifest.shards
    report.shards = len(shards)
    seen: set[str] = set()
    for info in shards:
        if info.name in seen:
            report.problems.append(ShardProblem(MANIFEST_NAME, MANIFEST_PROBLEM, f"shard {info.name} listed twice"))
        seen.add(info.name)
    written = (manifest.counts or {}).get("written")
    if written is not None and int(written) != manifest.samples:
        report.problems.append(
            ShardProblem(MANIFEST_NAME, MANIFEST_PROBLEM, f"counts.written is {written} but the shards list {manifest.samples} samples")
        )
    seq_len = manifest.seq_len if manifest.kind == "mixed" else None

    loaded = prefetch(lambda info: _load(root, info), shards, depth=workers)
    for done, (info, (data, digest)) in enumerate(loaded, 1):
        report.checked += 1
        where = storage.join(root, info.name)
        problems: list[ShardProblem] = []
        if data is None and digest is not None:
            problems.append(ShardProblem(info.name, UNREADABLE, digest))
        elif data is None:
            problems.append(ShardProblem(info.name, MISSING, f"{where} does not exist"))
        else:
            report.bytes += len(data)
            if len(data) != info.bytes:
                problems.append(ShardProblem(info.name, SIZE_MISMATCH, f"{len(data)} bytes, manifest says {info.bytes}"))
            elif digest != info.sha256:
                problems.append(
                    ShardProblem(info.name, CHECKSUM_MISMATCH, f"sha256 {digest[:16]}…, manifest says {info.sha256[:16]}…")
                )
            elif info.xxh3 and content_hash(data) != info.xxh3:  # a manifest whose two checksums disagree
                problems.append(ShardProblem(info.name, CHECKSUM_MISMATCH, f"xxh3 {content_hash(data)}, manifest says {info.xxh3}"))
            try:
                n, tokens, row_lengths = _parse(data, info, where, seq_len)
            except (ShardError, ValueError, UnicodeDecodeError, SyntaxError, KeyError, TypeError) as e:
                problems.append(ShardProblem(info.name, UNPARSABLE, str(e) or type(e).__name__))
            else:
                report.samples += n
                if n != info.samples:
                    problems.append(ShardProblem(info.name, COUNT_MISMATCH, f"{n} samples, manifest says {info.samples}"))
                if info.tokens and tokens != {k: v for k, v in info.tokens.items() if v or k in tokens}:
                    problems.append(ShardProblem(info.name, TOKEN_MISMATCH, f"tokens {tokens}, manifest says {info.tokens}"))
                bad_rows = sorted(row_lengths - {int(seq_len)}) if seq_len is not None else []
                if bad_rows:
                    problems.append(ShardProblem(info.name, ROW_LENGTH_MISMATCH, f"rows of length {bad_rows}, seq_len {seq_len}"))
        report.problems.extend(problems)
        if progress is not None:
            progress(done, len(shards), info.name)
    return report
