"""What every tokenizer offers, and the fingerprint that ties shards and checkpoints to it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, runtime_checkable


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
