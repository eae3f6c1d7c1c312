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
import os
import re
from math import gcd
from typing import BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["AudioRejected", "REJECT_REASONS", "load_audio", "resample", "write_wav"]

REJECT_REASONS = ("empty", "undecodable", "zero_samples", "non_finite", "too_long")


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
    unsupported or truncated header), ``zero_samples``, ``non_finite`` (NaN/inf samples) or
    ``too_long``.
    """
    if not data:
        raise AudioRejected("empty", "zero bytes")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = int(f.samplerate)
            n_declared = int(f.frames)
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
