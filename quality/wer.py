"""WER of generated speech against its prompt text, transcribed by a local ASR model.

Text normalisation (applied to both the prompt and the transcript before counting):
Unicode NFKC; lower case; every character that is not a letter, a digit or an apostrophe inside a
word becomes a space; runs of whitespace collapse to one space; leading/trailing space removed.
Numbers are not spelled out and no spelling variants are merged (Whisper's English normaliser
does both; its numbers differ from this one on text with digits or British spellings).
WER = (substitutions + deletions + insertions) / reference words, summed over the corpus
(``jiwer``), so long prompts weigh more than short ones.

The ASR model is a folder written by ``save_pretrained``: a CTC model (``*ForCTC``, e.g.
wav2vec2 / HuBERT fine-tuned for ASR) or a sequence-to-sequence one (Whisper), with its processor
files. It is read with ``local_files_only``: nothing downloads.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trimodal.quality.hf import transformers

_NOT_WORD = re.compile(r"[^\w']|_")
_EDGE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    t = _NOT_WORD.sub(" ", t)
    t = _EDGE_APOSTROPHE.sub(" ", t)
    return " ".join(t.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after :func:`normalize`; a reference that normalises to nothing is an error."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    refs, hyps = [normalize(r) for r in references], [normalize(h) for h in hypotheses]
    empty = [r for r, n in zip(references, refs) if not n]
    if empty:
        raise ValueError(f"reference text with no words after normalisation: {empty[0]!r}")
    return float(jiwer.wer(refs, hyps))


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy) to the rate the model's feature extractor expects."""
    from math import gcd

    from scipy.signal import resample_poly

    if sr == target:
        return np.asarray(wav, dtype=np.float32)
    g = gcd(sr, target)
    return resample_poly(np.asarray(wav, np.float64), target // g, sr // g).astype(np.float32)


@dataclass
class Transcriber:
    model: Any
    processor: Any
    ctc: bool
    max_new_tokens: int = 128

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "Transcriber":
        tf = transformers()
        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        ctc = any(a.endswith("ForCTC") for a in (config.architectures or []))
        auto = tf.AutoModelForCTC if ctc else tf.AutoModelForSpeechSeq2Seq
        model = auto.from_pretrained(path, local_files_only=True).to(device).eval()
        processor = tf.AutoProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor, ctc)

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def _new_tokens(self) -> int:
        """At most ``max_new_tokens``, and never past the decoder's positions (Whisper: 448) less
        its start tokens (start of transcript, language, task, no timestamps)."""
        limit = getattr(self.model.config, "max_target_positions", None)
        return self.max_new_tokens if limit is None else max(1, min(self.max_new_tokens, int(limit) - 4))

    @torch.no_grad()
    def transcribe(self, clips: list[np.ndarray], sr: int) -> list[str]:
        device = next(self.model.parameters()).device
        out = []
        for wav in clips:  # one at a time: no padding to change what a clip's transcript is
            audio = resample(wav, sr, self.sample_rate)
            feats = self.processor(audio=audio, sampling_rate=self.sample_rate, return_tensors="pt")
            if self.ctc:
                ids = self.model(feats["input_values"].to(device)).logits.argmax(-1)
            else:
                ids = self.model.generate(feats["input_features"].to(device), max_new_tokens=self._new_tokens())
            out.append(self.processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0])
        return out
