"""What every neural tokenizer shares: the device resolver, strict weight matching, the TF32 switch.

MoVQGAN, DAC and Higgs all load published weight files into architectures written in this
project. Loading is strict (every key and shape must match the model the file's own config
builds) and one error lists every offending key, so a wrong or truncated file is named at once.
Inference runs with TF32 off on CUDA unless a caller opts in: TF32 convolutions carry ~1e-3
relative error, enough to flip a code whose nearest and second-nearest codebook entries are
close, and GPU workers would then write other tokens than CPU workers.

**Batch invariance on CPU.** oneDNN (and NNPACK, for batches of 16 or more) pick convolution
algorithms by batch size and thread count, so an image's float32 latent moves by ~1e-6 with the
images that share its batch and with ``torch.get_num_threads()``; an argmin whose two nearest
codebook entries are that close (about 1 position in 10^4 with a random 512-entry codebook) then
flips. :func:`inference` with ``batch_invariant=True`` turns oneDNN off (ATen's own convolution
loops over the batch, one GEMM per item), and callers encode one item per call: the codes of an
input then depend on nothing but the input and the weights (checked bit for bit over batch
sizes and thread counts in the tests).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["WeightsMismatch", "check_weights", "inference", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; an explicit CUDA device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


class WeightsMismatch(ValueError):
    """A weight file does not match the architecture its configuration builds."""


def _listing(items: list[str], limit: int = 20) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... {len(items) - limit} more" if len(items) > limit else ""
    return f"\n    {shown}{more}"


def _shape(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return None


def check_weights(expected: Mapping[str, Any], found: Mapping[str, Any], what: str) -> None:
    """Strict key and shape match of ``found`` (tensors or shapes) against ``expected``.

    Raises :class:`WeightsMismatch` naming ``what`` and listing every missing key, unexpected
    key and shape mismatch (the first 20 of each)."""
    exp = {k: _shape(v) for k, v in expected.items()}
    missing = sorted(set(exp) - set(found))
    unexpected = sorted(set(found) - set(exp))
    wrong = sorted(
        f"{k}: file {_shape(found[k]) or type(found[k]).__name__}, model {exp[k]}"
        for k in set(exp) & set(found)
        if _shape(found[k]) != exp[k]
    )
    if missing or unexpected or wrong:
        parts = [f"{what}: weights do not match the model"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if keys:
                parts.append(f"  {title} ({len(keys)}):{_listing(keys)}")
        raise WeightsMismatch("\n".join(parts))


_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] = (True, False)


@contextmanager
def _no_tf32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls while any caller is inside (the flags
    are process-global; the reference count keeps concurrent calls from restoring them early)."""
    global _tf32_users, _tf32_saved
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _tf32_saved


_onednn_users = 0
_onednn_saved = True


@contextmanager
def _no_onednn() -> Iterator[None]:
    """oneDNN off while any caller is inside (a process-global flag, reference counted as above)."""
    global _onednn_users, _onednn_saved
    with _tf32_lock:
        if _onednn_users == 0:
            _onednn_saved = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _onednn_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _onednn_users -= 1
            if _onednn_users == 0:
                torch.backends.mkldnn.enabled = _onednn_saved


@contextmanager
def inference(device: torch.device, allow_tf32: bool = False, batch_invariant: bool = False) -> Iterator[None]:
    """``torch.inference_mode`` plus, on CUDA without ``allow_tf32``, TF32 off; on CPU with
    ``batch_invariant``, oneDNN off (see the module docstring)."""
    with torch.inference_mode():
        if device.type == "cuda" and not allow_tf32:
            with _no_tf32():
                yield
        elif device.type == "cpu" and batch_invariant:
            with _no_onednn():
                yield
        else:
            yield
