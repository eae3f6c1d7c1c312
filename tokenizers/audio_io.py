"""Audio bytes -> mono float32 waveform at the codec's rate, with a named reason for every refusal.

Pipelines read audio as bytes (tar members, blobs behind fsspec) and must never stop on a bad
record: :func:`load_audio` either returns a waveform or raises :class:`AudioRejected` whose
``reason`` is a short stable string (``empty``, ``undecodable``, ``zero_samples``,
``non_finite``, ``too_long``) that the pipeline counts and writes to its dead-letter output.
Decoding goes through ``soundfile`` (libsndfile: wav, flac, ogg/vorbis, mp3 with libsndfile >=
1.1); resampling is an exact rational polyphase filter (``scipy.signal.resample_poly``).
"""

from __future__ import annotations

import io
import math
import os
import re
from math import gcd
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

if TYPE_CHECKING:
    import torch

__all__ = ["AudioRejected", "REJECT_REASONS", "load_audio", "resample", "resample_sinc", "write_wav"]

REJECT_REASONS = ("empty", "undecodable", "bad_header", "zero_samples", "non_finite", "too_long")
MAX_SAMPLE_RATE = 768_000  # the highest rate of real audio formats; anything above is a broken header
MAX_CHANNELS = 64
MAX_DECODED_BYTES = 4 * 2**30  # float32 samples a header may ask for, at most


class AudioRejected(ValueError):
    """A record whose audio cannot be used; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact ratio target/orig (reduced by their gcd).

    Output length is ceil(len * target / orig), e.g. 1 s at 22,050 Hz -> 16,000 samples.
    """
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    g = gcd(int(orig_sr), int(target_sr))
    out = resample_poly(wav, int(target_sr) // g, int(orig_sr) // g, axis=-1)
    return out.astype(np.float32, copy=False)


def load_audio(data: bytes, target_sr: int, max_seconds: float | None = 30.0) -> np.ndarray:
    """Decode audio bytes to a mono float32 waveform at ``target_sr``.

    Channels are averaged to mono. A clip longer than ``max_seconds`` (None: no limit) is
    *filtered* with reason ``too_long`` rather than cut, so no record is silently truncated:
    corpora whose records carry segment times should cut those segments upstream and pass the
    segments here. Sample values are not clipped.

    Raises :class:`AudioRejected` with reason ``empty`` (zero bytes), ``undecodable`` (not audio,
    unsupported or truncated header), ``bad_header`` (a header claiming an absurd sample rate,
    channel count or size: refused before anything is allocated or resampled), ``zero_samples``,
    ``non_finite`` (NaN/inf samples) or ``too_long``.
    """
    if not data:
        raise AudioRejected("empty", "zero bytes")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = int(f.samplerate)
            n_declared = int(f.frames)
            channels = int(f.channels)
            if not 0 < sr <= MAX_SAMPLE_RATE:
                raise AudioRejected("bad_header", f"sample rate {sr} Hz outside (0, {MAX_SAMPLE_RATE}]")
            if not 0 < channels <= MAX_CHANNELS:
                raise AudioRejected("bad_header", f"{channels} channels")
            if n_declared * channels * 4 > MAX_DECODED_BYTES:
                raise AudioRejected("bad_header", f"{n_declared} frames × {channels} channels would need "
                                                  f"{n_declared * channels * 4 / 2**30:.1f} GiB")
            # refuse by the header's length before decoding a huge file
            if max_seconds is not None and sr > 0 and n_declared > max_seconds * sr:
                raise AudioRejected("too_long", f"{n_declared / sr:.2f} s > {max_seconds} s")
            x = f.read(dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError variants
        detail = re.sub(r"^Error opening <[^>]*>: ", "", str(e))
        raise AudioRejected("undecodable", f"{type(e).__name__}: {detail}") from None
    if sr <= 0:
        raise AudioRejected("undecodable", f"sample rate {sr}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise AudioRejected("zero_samples")
    if max_seconds is not None and x.shape[0] > max_seconds * sr:
        raise AudioRejected("too_long", f"{x.shape[0] / sr:.2f} s > {max_seconds} s")
    if not np.isfinite(x).all():
        raise AudioRejected("non_finite", "NaN or inf samples")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(resample(mono, sr, target_sr))


def write_wav(path_or_file: str | os.PathLike[str] | BinaryIO, wav: np.ndarray, sr: int) -> None:
    """Write a mono (T,) or multi-channel (T, C) waveform as 16-bit PCM WAV.

    Values are clipped to [-1, 1] first: integer PCM cannot hold more, and unclipped overshoot
    would wrap around into loud clicks.
    """
    x = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    sf.write(path_or_file, x, int(sr), format="WAV", subtype="PCM_16")


def resample_sinc(
    wav: torch.Tensor,
    orig_sr: int,
    target_sr: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Hann-windowed sinc resampling along the last axis, as ``torchaudio.functional.resample``.

    Why not :func:`resample`: models trained on torchaudio's resampler (Higgs' HuBERT branch sees
    24 kHz input resampled to 16 kHz this way) must get the same samples, and torchaudio has no CPU
    build for our torch. Plain torch, same arithmetic in the input's dtype (float32 kernel for
    float32 input), so results agree with torchaudio to rounding.

    Output sample j is ``sum_i x[i] * h(i / orig - j / new)`` with rates reduced by their gcd,
    ``h(t) = s * sinc(pi * b * t) * cos(pi * b * t / (2 w))^2`` for ``|b t| <= w`` (else 0),
    ``b = rolloff * min(orig, new)``, ``s = b / orig``, ``w = lowpass_filter_width``; x is zero
    outside the signal. Length ``ceil(n * new / orig)``. Computed as a strided conv1d with one
    filter per output phase.
    """
    import torch
    import torch.nn.functional as F

    if orig_sr <= 0 or target_sr <= 0 or int(orig_sr) != orig_sr or int(target_sr) != target_sr:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {target_sr}")
    if lowpass_filter_width <= 0:
        raise ValueError("lowpass_filter_width must be positive")
    if not wav.is_floating_point():
        raise TypeError(f"expected a floating point waveform, got {wav.dtype}")
    if orig_sr == target_sr:
        return wav
    g = gcd(int(orig_sr), int(target_sr))
    orig, new = int(orig_sr) // g, int(target_sr) // g
    base = min(orig, new) * rolloff  # cutoff, in units of the reduced rates
    width = math.ceil(lowpass_filter_width * orig / base)  # taps each side
    # t[p, 0, m]: time (in input periods / orig) of tap m for output phase p, scaled by the cutoff
    taps = torch.arange(-width, width + orig, dtype=wav.dtype, device=wav.device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=wav.dtype, device=wav.device)[:, None, None] / new + taps
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones((), dtype=t.dtype, device=t.device), t.sin() / t)
    kernel = kernel * (window * (base / orig))

    shape = wav.shape
    x = wav.reshape(-1, shape[-1])
    n = x.shape[-1]
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x[:, None], kernel, stride=orig)  # (N, new phases, blocks)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : -(-new * n // orig)]
    return y.reshape(*shape[:-1], y.shape[-1])
