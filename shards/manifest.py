"""The dataset manifest: every shard with its counts and checksum, the tokenizers, the rejects.

Loaders, stats and verify start from ``ROOT/manifest.json`` and never list a bucket. The file is
deterministic (sorted keys, no timestamps) so re-running a pipeline writes identical bytes, and
it is written last and atomically: a dataset without a manifest is an incomplete dataset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from trimodal.shards import storage

MANIFEST_NAME = "manifest.json"
FORMAT = "trimodal-shards"
VERSION = 1


@dataclass
class ShardInfo:
    name: str
    samples: int
    tokens: dict[str, int]
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """``kind`` is ``tokenized`` (one sample per source record, local codes) or ``mixed``
    (rows packed to ``seq_len`` with global ids; then ``layout`` is required)."""

    kind: str
    modality: str
    tokenizers: dict[str, dict[str, Any]]
    shards: list[ShardInfo]
    counts: dict[str, Any] = field(default_factory=lambda: {"read": 0, "written": 0, "filtered": {}, "rejected": {}})
    dead_letter: str | None = None
    layout: dict[str, Any] | None = None
    seq_len: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def tokens(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.shards:
            for k, v in s.tokens.items():
                total[k] = total.get(k, 0) + v
        return total

    def fingerprints(self) -> dict[str, str]:
        return {name: t["fingerprint"] for name, t in self.tokenizers.items() if "fingerprint" in t}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if d.get("format") != FORMAT:
            raise ValueError(f"{where}: not a trimodal manifest (format={d.get('format')!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"{where}: unsupported manifest version {d.get('version')!r}")
        d = dict(d)
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        return cls(**d)

    def save(self, root: str) -> None:
        storage.write_atomic(storage.join(root, MANIFEST_NAME), self.to_json().encode())

    @classmethod
    def load(cls, root: str) -> "Manifest":
        path = storage.join(root, MANIFEST_NAME)
        try:
            raw = storage.read_bytes(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no manifest at {path}: not a dataset root, or its pipeline did not finish") from None
        return cls.from_dict(json.loads(raw), where=path)


def check_same_tokenizers(manifests: dict[str, Manifest]) -> None:
    """Refuse to mix datasets whose shared tokenizers differ (e.g. two text tokenizers)."""
    seen: dict[str, tuple[str, str]] = {}
    for root, m in manifests.items():
        for name, fp in m.fingerprints().items():
            if name in seen and seen[name][0] != fp:
                raise ValueError(
                    f"{name} tokenizer differs between {seen[name][1]} ({seen[name][0]}) and {root} ({fp}); "
                    "re-tokenize one of them with the same tokenizer"
                )
            seen.setdefault(name, (fp, root))
