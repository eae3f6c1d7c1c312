"""What every tokenizer offers, and the fingerprint that ties shards and checkpoints to it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

TOKENIZER_MODALITIES = ("text", "image", "audio")


@runtime_checkable
class Tokenizer(Protocol):
    """``encode(batch) -> codes``, ``decode(codes) -> media``, ``vocab_size``, ``fingerprint``.

    ``vocab_size`` is the number of modality-local code ids (specials are added by the
    :class:`~trimodal.tokenizers.vocab.VocabLayout`, not by the tokenizer).
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, batch: Any) -> Any: ...

    def decode(self, codes: Any) -> Any: ...


def fingerprint_of(*parts: bytes | str | dict[str, Any]) -> str:
    """A short stable hash of weight/model bytes and config (dicts are hashed as sorted JSON)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            part = json.dumps(part, sort_keys=True, default=str)
        if isinstance(part, str):
            part = part.encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def state_dict_fingerprint(state_dict: dict[str, Any], config: dict[str, Any]) -> str:
    """Fingerprint of a torch state dict (keys, shapes and raw bytes, in key order) + config."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return fingerprint_of(h.hexdigest(), config)


@dataclass(frozen=True)
class TokenizerInfo:
    """What a manifest and a checkpoint record of one tokenizer: enough to build the vocabulary
    layout, refuse data from another tokenizer, and load the tokenizer again to decode.

    ``vocab_size`` counts modality-local code ids (for audio: ids per codebook level; the levels
    share one block unless the layout splits them). Audio also records ``levels`` (k, the
    codebooks kept), ``codebooks`` (trained), ``sample_rate`` and ``hop_length``; images their
    code ``grid`` and ``image_size``. ``extra`` holds kind-specific facts that change what the
    codes mean (audio bucket padding, image preprocessing).
    """

    modality: str
    kind: str
    fingerprint: str
    vocab_size: int
    path: str | None = None
    levels: int | None = None
    codebooks: int | None = None
    sample_rate: int | None = None
    hop_length: int | None = None
    grid: tuple[int, int] | None = None
    image_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.modality not in TOKENIZER_MODALITIES:
            raise ValueError(f"TokenizerInfo.modality must be one of {TOKENIZER_MODALITIES}, got {self.modality!r}")
        if not isinstance(self.vocab_size, int) or self.vocab_size <= 0:
            raise ValueError(f"TokenizerInfo.vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(x) for x in self.grid))

    @property
    def frame_rate(self) -> float | None:
        """Audio code frames per second."""
        if self.sample_rate and self.hop_length:
            return self.sample_rate / self.hop_length
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; unset fields are left out (``frame_rate`` is written for readers)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name == "extra" and not v):
                continue
            d[f.name] = list(v) if f.name == "grid" else v
        if self.frame_rate is not None:
            d["frame_rate"] = self.frame_rate
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], modality: str | None = None) -> "TokenizerInfo":
        """From :meth:`to_dict` or a version-1 manifest entry (``n_keep``, ``n_codebooks`` and
        kind-specific keys at the top level)."""
        d = dict(d)
        d.pop("frame_rate", None)
        if "n_keep" in d:
            d.setdefault("levels", d.pop("n_keep"))
        if "n_codebooks" in d:
            d.setdefault("codebooks", d.pop("n_codebooks"))
        d.setdefault("modality", modality)
        known = {f.name for f in fields(cls)}
        extra = dict(d.pop("extra", {}) or {})
        extra.update({k: d.pop(k) for k in list(d) if k not in known})
        missing = [k for k in ("modality", "kind", "fingerprint", "vocab_size") if d.get(k) is None]
        if missing:
            raise ValueError(f"tokenizer record lacks {missing}: {d}")
        return cls(**d, extra=extra)
