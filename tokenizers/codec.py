"""What every audio codec tokenizer shares (DAC, Higgs Audio v2): waveforms <-> (k, frames) codes.

A codec tokenizer wraps a model with ``encode(x [B, 1, T], n_quantizers) -> codes [B, K, frames]``
and a decoder, keeps the first ``n_keep`` residual levels, runs under the shared inference
context (TF32 off unless ``allow_tf32``, so GPU-made codes match CPU-made ones), and describes
itself to manifests (:class:`~trimodal.tokenizers.base.TokenizerInfo`). Subclasses say how a
batch is padded (:meth:`CodecTokenizer.encode`) and which model method decodes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from trimodal import storage
from trimodal.tokenizers.base import TokenizerInfo, state_dict_fingerprint
from trimodal.tokenizers.runtime import inference, resolve_device


class CodecTokenizer:
    """Mono waveforms at ``sample_rate`` <-> uint16 codes of shape (n_keep, frames)."""

    kind = ""  # "dac" | "higgs": the manifest's tokenizer kind and part of the fingerprint

    def __init__(self, model: Any, n_keep: int = 4, device: str | torch.device = "cpu", allow_tf32: bool = False,
                 path: str | os.PathLike[str] | None = None) -> None:
        if not 1 <= n_keep <= self.codebooks_of(model):
            raise ValueError(f"n_keep must be in [1, {self.codebooks_of(model)}], got {n_keep}")
        if model.config.codebook_size > 65536:
            raise ValueError("codebook_size does not fit uint16 codes")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.n_keep = n_keep
        self.allow_tf32 = allow_tf32
        self.path = None if path is None else os.fspath(path)
        self._fingerprint: str | None = None

    @staticmethod
    def codebooks_of(model: Any) -> int:
        """Residual levels the model has."""
        raise NotImplementedError

    @staticmethod
    def load_model(path: str | os.PathLike[str]) -> Any:
        """The codec model stored at ``path`` (strict weight checks)."""
        raise NotImplementedError

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], n_keep: int = 4, device: str | torch.device = "cpu",
                  allow_tf32: bool = False) -> Any:
        """Load the codec at ``path`` (see the subclass's ``load_model``)."""
        return cls(cls.load_model(path), n_keep=n_keep, device=device, allow_tf32=allow_tf32, path=path)

    def _inference(self) -> AbstractContextManager[None]:
        return inference(self.device, self.allow_tf32)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        """Ids per level; levels share this block unless the vocab layout splits them."""
        return self.config.codebook_size

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def fingerprint(self) -> str:
        """Hash of the weights + config + n_keep (codes from different k must not mix)."""
        if self._fingerprint is None:
            config = {"codec": self.kind, **self.config.to_dict(), "n_keep": self.n_keep}
            self._fingerprint = state_dict_fingerprint(self.model.state_dict(), config)
        return self._fingerprint

    def info(self, path: str | os.PathLike[str] | None = None) -> TokenizerInfo:
        """What a manifest records of this codec (``path``: where to load it again; default where
        it was loaded from), with local paths made absolute."""
        where = os.fspath(path) if path is not None else self.path
        return TokenizerInfo(modality="audio", kind=self.kind, fingerprint=self.fingerprint, vocab_size=self.vocab_size,
                             path=storage.absolute(where) if where else None, levels=self.n_keep,
                             codebooks=self.codebooks_of(self.model), sample_rate=self.sample_rate,
                             hop_length=self.hop_length)

    def n_frames(self, n_samples: int) -> int:
        """Code frames for a waveform of ``n_samples``: ceil(n / hop)."""
        return -(-n_samples // self.hop_length)

    # ---- encode / decode --------------------------------------------------------------------
    @staticmethod
    def _waveforms(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        wavs = [np.asarray(w, dtype=np.float32) for w in batch]
        for i, w in enumerate(wavs):
            if w.ndim != 1 or w.shape[0] == 0:
                raise ValueError(f"item {i}: expected a non-empty 1-D waveform, got {w.shape}")
        return wavs

    def _encode_padded(self, wavs: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Encode ``wavs`` right-padded with zeros to ``length`` samples in one pass; each result
        trimmed to its own ceil(len / hop) frames."""
        x = np.zeros((len(wavs), 1, length), dtype=np.float32)
        for row, w in enumerate(wavs):
            x[row, 0, : w.shape[0]] = w
        with self._inference():
            codes = self.model.encode(torch.from_numpy(x).to(self.device), n_quantizers=self.n_keep)
            codes_np = codes.to("cpu", torch.int32).numpy().astype(np.uint16)
        return [np.ascontiguousarray(codes_np[row, :, : self.n_frames(w.shape[0])]) for row, w in enumerate(wavs)]

    def encode(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """1-D float32 waveforms at ``sample_rate`` -> one uint16 array (n_keep, frames) each."""
        raise NotImplementedError

    def _decode_model(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, k, frames] int64 -> waveform [1, 1, samples]."""
        raise NotImplementedError

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (k, frames), k <= levels -> float32 waveform of exactly frames * hop samples (the
        decoder's output is cut or zero-filled to that length, predictable from the token count)."""
        c = np.asarray(codes)
        if c.ndim != 2 or c.shape[1] == 0:
            raise ValueError(f"expected codes of shape (k, frames), got {c.shape}")
        if c.size and (c.min() < 0 or c.max() >= self.vocab_size):
            raise ValueError(f"code ids must be in [0, {self.vocab_size})")
        with self._inference():
            t = torch.from_numpy(c.astype(np.int64)).to(self.device)[None]
            wav = self._decode_model(t)[0, 0].float().cpu().numpy()
        n = c.shape[1] * self.hop_length
        out = np.zeros(n, dtype=np.float32)
        out[: min(n, wav.shape[0])] = wav[:n]
        return out
