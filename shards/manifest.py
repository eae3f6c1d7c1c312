"""The dataset manifest: every shard with its counts and checksum, the tokenizers, the rejects.

Loaders, stats and verify start from ``ROOT/manifest.json`` and never list a bucket. The file is
deterministic (sorted keys, no timestamps) apart from the writing run's id, and it is written
last and atomically: a dataset without a manifest is an incomplete dataset. The layout is
described in ``docs/shards.md``.

Version 2 records each tokenizer as a :class:`~trimodal.tokenizers.base.TokenizerInfo`, each
shard's split (``train``/``val``) and the id of the run that wrote the dataset: readers refuse a
dataset whose writer lock is held by another run (it is being rewritten), and check every shard
against its recorded size or sha256 (a shard replaced since is refused). Version 1 manifests
still load.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from trimodal import storage
from trimodal.tokenizers.base import TokenizerInfo

MANIFEST_NAME = "manifest.json"
FORMAT = "trimodal-shards"
VERSION = 2
SPLITS = ("train", "val")


def content_hash(data: bytes | memoryview) -> str:
    """xxh3-64 (hex) of a shard's stored bytes: ~7 GB/s on one core, so readers can check every
    shard they open for a concurrent rewrite at a few per cent of the loader's time (sha256, at
    ~1.2 GB/s, stays the archival checksum that ``shards verify`` checks)."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(data)


def check_plain_name(name: Any, where: str) -> None:
    """A manifest names files inside its root only: a plain file name, never a path (``../x``,
    ``/etc/x``, ``a/b``) that would make readers open a file outside the root."""
    if (not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\x00")
            or "://" in name):
        raise ValueError(f"{where}: shard name {name!r} is not a plain file name inside the root")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cycle collector paused while a manifest is parsed: building 200,000 shard
    entries (no cycles among them) otherwise triggers collections that rescan the growing heap,
    which took as long as the parse itself (``benchmarks/bench_scale.py``)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(slots=True)
class ShardInfo:
    name: str
    samples: int
    tokens: dict[str, int]
    bytes: int
    sha256: str
    split: str = "train"
    text_bytes: int = 0  # UTF-8 bytes of the shard's text before tokenization (bits per byte)
    xxh3: str = ""  # xxh3-64 of the stored bytes: the fast content check readers make by default ("" in older manifests)


@dataclass
class Manifest:
    """``kind`` is ``tokenized`` (one sample per source record, local codes) or ``mixed``
    (rows packed to ``seq_len`` with global ids; then ``layout`` is required)."""

    kind: str
    modality: str
    tokenizers: dict[str, TokenizerInfo]
    shards: list[ShardInfo]
    counts: dict[str, Any] = field(default_factory=lambda: {"read": 0, "written": 0, "filtered": {}, "rejected": {}})
    dead_letter: str | None = None
    layout: dict[str, Any] | None = None
    seq_len: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self) -> None:
        # plain dicts (what a hand-built manifest passes) become TokenizerInfo
        self.tokenizers = {k: v if isinstance(v, TokenizerInfo) else TokenizerInfo.from_dict(v, k)
                           for k, v in self.tokenizers.items()}

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def split_shards(self, split: str | None) -> list[ShardInfo]:
        """The shards of one split (``None``: all)."""
        return list(self.shards) if split is None else [s for s in self.shards if s.split == split]

    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def tokens(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.shards:
            for k, v in s.tokens.items():
                total[k] = total.get(k, 0) + v
        return total

    def fingerprints(self) -> dict[str, str]:
        return {name: t.fingerprint for name, t in self.tokenizers.items()}

    def to_json(self) -> str:
        d = asdict(self)
        d["tokenizers"] = {k: v.to_dict() for k, v in sorted(self.tokenizers.items())}
        return json.dumps(d, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{where}: not a trimodal manifest (format={d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") not in (1, VERSION):
            raise ValueError(f"{where}: unsupported manifest version {d.get('version')!r}")
        d = dict(d)
        try:
            d["shards"] = [ShardInfo(**s) for s in d["shards"]]
            d["tokenizers"] = {k: TokenizerInfo.from_dict(v, k) for k, v in (d.get("tokenizers") or {}).items()}
            d["version"] = VERSION
            for name in [s.name for s in d["shards"]] + ([d["dead_letter"]] if d.get("dead_letter") else []):
                check_plain_name(name, where)
            return cls(**d)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{where}: malformed manifest ({e})") from None

    def save(self, root: str) -> None:
        storage.write_atomic(storage.join(root, MANIFEST_NAME), self.to_json().encode())

    @classmethod
    def load(cls, root: str) -> "Manifest":
        return cls.load_raw(root)[0]

    @classmethod
    def load_raw(cls, root: str) -> tuple["Manifest", bytes]:
        """The manifest and the bytes it was read from (the mix job fingerprints its inputs)."""
        path = storage.join(root, MANIFEST_NAME)
        try:
            raw = storage.read_bytes(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no manifest at {path}: not a dataset root, or its pipeline did not finish") from None
        with _gc_paused():
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            return cls.from_dict(data, where=path), raw

    @property
    def unaccounted(self) -> int:
        """Records read but neither written, filtered nor rejected: 0 for every complete dataset
        (nothing is lost silently)."""
        c = self.counts
        return c["read"] - c["written"] - sum(c["filtered"].values()) - sum(c["rejected"].values())

    def dead_letter_outcomes(self, root: str) -> dict[str, tuple[str, str]]:
        """``record id → (outcome, reason)`` of every dead letter of the dataset at ``root``."""
        return {r["id"]: (r["outcome"], r["reason"]) for r in self.dead_letters(root)}

    def dead_letters(self, root: str) -> list[dict[str, Any]]:
        """Every dead-letter record of the dataset at ``root`` (one dict per filtered or rejected
        record: ``id``, ``outcome``, ``reason``, ``stage``, …), in file order."""
        if not self.dead_letter:
            return []
        fs, folder = storage.fs_and_path(storage.join(root, self.dead_letter))
        out: list[dict[str, Any]] = []
        for path in sorted(fs.glob(f"{folder}/*.jsonl")):
            out += [json.loads(line) for line in fs.cat_file(path).decode("utf-8").splitlines() if line]
        return out


def merged_tokenizers(manifests: dict[str, Manifest]) -> dict[str, TokenizerInfo]:
    """The tokenizers of several datasets, refusing two datasets whose tokenizer of the same
    modality differs (the message names both datasets and both fingerprints)."""
    seen: dict[str, tuple[TokenizerInfo, str]] = {}
    for root, m in manifests.items():
        for name, info in sorted(m.tokenizers.items()):
            if name in seen and seen[name][0].fingerprint != info.fingerprint:
                first, where = seen[name]
                raise ValueError(
                    f"{name} tokenizer differs between {where} ({first.kind} {first.fingerprint}) and {root} "
                    f"({info.kind} {info.fingerprint}); re-tokenize one of them with the same tokenizer"
                )
            seen.setdefault(name, (info, root))
    return {name: info for name, (info, _) in sorted(seen.items())}
