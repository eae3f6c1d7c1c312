"""Audio loading: real encoded files, downmix, resampling, and every rejection reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trimodal.tokenizers.audio_io import REJECT_REASONS, AudioRejected, load_audio, write_wav


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(wav: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(AudioRejected) as err:
        load_audio(data, 16000, **kwargs)
    assert err.value.reason in REJECT_REASONS
    return err.value.reason


def test_wav_round_trip_through_a_file(tmp_path: Path) -> None:
    x = _tone(0.5, 16000)
    write_wav(tmp_path / "a.wav", x, 16000)
    info = sf.info(tmp_path / "a.wav")
    assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_16", 16000)
    y = load_audio((tmp_path / "a.wav").read_bytes(), 16000)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-6)


def test_write_wav_clips_instead_of_wrapping() -> None:
    buf = io.BytesIO()
    write_wav(buf, np.array([2.0, -3.0, 0.25], dtype=np.float32), 8000)
    y = load_audio(buf.getvalue(), 8000)
    assert y[0] > 0.99 and y[1] < -0.99 and abs(y[2] - 0.25) < 1e-4


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", None), ("MP3", "MPEG_LAYER_III", None)],
)
def test_compressed_formats_decode(fmt: str, subtype: str, atol: float | None) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    x = _tone(1.0, 16000)
    y = load_audio(_encode(x, 16000, fmt, subtype), 16000)
    assert y.dtype == np.float32
    if atol is not None:  # lossless: exact length and samples
        assert y.shape == x.shape
        np.testing.assert_allclose(y, x, atol=atol)
    else:  # lossy: about the right length and a loud tone
        assert abs(len(y) - len(x)) < 0.1 * len(x)
        assert 0.3 < np.abs(y).max() < 0.7


def test_stereo_is_averaged_to_mono() -> None:
    left, right = _tone(0.25, 16000, 300), _tone(0.25, 16000, 700)
    data = _encode(np.stack([left, right], axis=1), 16000, "WAV", "FLOAT")
    y = load_audio(data, 16000)
    assert y.ndim == 1
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_resampling_lengths_and_content() -> None:
    y = load_audio(_encode(_tone(1.0, 22050, 440), 22050, "WAV", "FLOAT"), 16000)
    assert y.shape == (16000,)
    # the tone survives at its frequency
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 1
    assert load_audio(_encode(_tone(1.0, 48000), 48000, "WAV"), 44100).shape == (44100,)
    assert load_audio(_encode(_tone(0.5, 8000), 8000, "WAV"), 24000).shape == (12000,)


def test_rejection_reasons_from_real_bad_bytes() -> None:
    good = _encode(_tone(1.0, 16000), 16000, "WAV", "PCM_16")
    assert _reason(b"") == "empty"
    assert _reason(np.random.default_rng(0).bytes(4096)) == "undecodable"
    assert _reason(good[:20]) == "undecodable"  # header cut inside the fmt chunk
    assert _reason(b"RIFF\x00\x00\x00\x00WAVE") == "undecodable"
    assert _reason(_encode(np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16")) == "zero_samples"
    nan = _tone(0.1, 16000)
    nan[7] = np.nan
    assert _reason(_encode(nan, 16000, "WAV", "FLOAT")) == "non_finite"
    inf = _tone(0.1, 16000)
    inf[-1] = np.inf
    assert _reason(_encode(inf, 16000, "WAV", "DOUBLE")) == "non_finite"
    long = _encode(np.zeros(31 * 8000, np.float32), 8000, "FLAC", "PCM_16")
    assert _reason(long) == "too_long"
    assert _reason(good, max_seconds=0.5) == "too_long"
    # exactly at the limit is kept; no limit keeps everything
    assert load_audio(good, 16000, max_seconds=1.0).shape == (16000,)
    assert load_audio(long, 8000, max_seconds=None).shape == (31 * 8000,)
