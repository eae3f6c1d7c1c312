"""FAD: the Fréchet distance between frame embeddings of generated and reference audio.

As in the original FAD (Kilgour et al. 2019), the Gaussians are fitted to *frame* embeddings
pooled over all clips (not one vector per clip). The embedding model is any ``transformers``
audio encoder saved with ``save_pretrained`` whose output has ``last_hidden_state`` [B, T, D]
(HuBERT, wav2vec2, WavLM, …) with its feature-extractor file; frames are the encoder's output
frames (20 ms for these). FAD values are comparable only between runs on the same model and layer.
Reference statistics are stored as an ``.npz`` (:mod:`trimodal.quality.frechet`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trimodal.quality.frechet import FeatureStats, stats_distance
from trimodal.quality.hf import transformers
from trimodal.quality.wer import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass
class AudioEmbedder:
    model: Any
    feature_extractor: Any

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "AudioEmbedder":
        tf = transformers()
        model = tf.AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        fe = tf.AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        return cls(model, fe)

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @torch.no_grad()
    def frames(self, clips: list[np.ndarray], sr: int) -> np.ndarray:
        """[total frames, D] float64 embeddings of all clips (each clip on its own: no padding)."""
        device = next(self.model.parameters()).device
        out = []
        for wav in clips:
            audio = resample(wav, sr, self.sample_rate)
            x = self.feature_extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")["input_values"]
            out.append(self.model(x.to(device)).last_hidden_state[0].double().cpu().numpy())
        if not out:
            raise ValueError("no clips to embed")
        return np.concatenate(out)


def folder_clips(folder: str | Path, limit: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    import soundfile as sf

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    clips, rates = [], []
    for p in paths:
        try:
            wav, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as e:  # a corrupt reference file must not pass unnoticed
            raise ValueError(f"{p}: unreadable audio file ({e})") from e
        clips.append(wav.mean(axis=1))
        rates.append(int(sr))
    return clips, rates


def reference_stats(source: str, embedder: AudioEmbedder | None = None, out: str | None = None,
                    limit: int | None = None) -> FeatureStats:
    """Statistics of ``source`` (an ``.npz`` or a folder of audio files), written to ``out``."""
    p = Path(source)
    if p.suffix == ".npz":
        stats = FeatureStats.load(p)
    else:
        if embedder is None:
            raise ValueError(f"computing statistics of {source} needs the audio embedding model")
        clips, rates = folder_clips(p, limit)
        stats = FeatureStats.of(np.concatenate([embedder.frames([c], r) for c, r in zip(clips, rates)]))
    if out:
        stats.save(out)
    return stats


def fad(embedder: AudioEmbedder, clips: list[np.ndarray], sr: int, reference: FeatureStats) -> float:
    return stats_distance(FeatureStats.of(embedder.frames(clips, sr)), reference)
