"""``trimodal pipeline audio-text``: an audio-transcript corpus → tokenized WebDataset shards.

read (JSON-lines manifests / WebDataset tars, :mod:`trimodal.pipelines.audio_readers`) →
transcript normalise + SentencePiece encode → audio decode + validate (mono, resampled to the
codec rate) → batched DAC encode with length bucketing (model loaded once per worker) →
shards + dead-letter + manifest.

Outcomes (besides the readers' own reasons):

- transcript: ``empty_transcript`` (filtered: nothing left after whitespace stripping);
- decode: ``empty``, ``undecodable``, ``zero_samples``, ``non_finite`` (rejected) and
  ``too_long``, ``too_short`` (filtered). **A clip longer than ``max_seconds`` is filtered, not
  cut**: cutting an utterance mid-word would pair audio with a transcript it no longer matches.
  Only when the manifest line gives segment times (``offset`` [+ ``duration``]) is the audio cut,
  to that segment, by the reader; ``max_seconds`` then applies to the segment.

**Length bucketing and exact codes.** The codec's receptive field reaches a few frames past a
clip's end, so the zeros a batch adds after a short clip (to match a longer batch-mate) can change
its last frames. Here every clip is zero-padded to the end of its *own* duration bucket, a
multiple of ``pad_multiple`` samples (``bucket_seconds`` rounded up to whole codec frames), which
depends on nothing but the clip's length; clips are batched only with clips of the same bucket,
so a batch is a stack of equal-length inputs and adds no padding of its own. Codes are then
trimmed to the clip's ``ceil(len / hop)`` frames. The codes of a clip are therefore exactly
:func:`encode_clips` of that clip alone, whatever batch it ran in (given a backend whose
per-item results do not depend on the batch size: checked on CPU; on CUDA, cuDNN may pick
another algorithm for another batch size, so GPU codes are reproducible run to run but a
near-tie code may differ from a CPU or batch-of-one encode). ``bucket_seconds=0``
pads to the hop only: codes equal ``DACTokenizer.encode([clip])`` but only clips with the same
frame count can share a batch. The bucket size is recorded in the manifest
(``tokenizers.audio.pad_multiple``) because it is part of what the codes mean.

Batches: at most ``batch_size`` clips and at most ``batch_seconds`` of padded audio (long-clip
buckets get fewer clips), filled per bucket inside each bundle; partial buckets are encoded at
the end of the bundle. ``device="auto"`` picks CUDA on a worker that has it. Beam counters
(``trimodal`` namespace): ``<stage>/<outcome>/<reason>`` for every record, ``encode/batches`` and
``encode/codec_ms`` (time inside the codec, to compare with the job's wall time).

Readers put the audio bytes in the record, so the shuffle after reading (which spreads the codec
work over workers) carries them: roughly the corpus size in shuffle volume on Dataflow.
"""

from __future__ import annotations

import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import apache_beam as beam
import numpy as np
import soundfile as sf
from apache_beam.transforms import window
from apache_beam.utils import shared

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import common
from trimodal.pipelines.audio_readers import FORMATS, AudioTextReader
from trimodal.pipelines.outcomes import FILTERED, REJECTED, Step, count
from trimodal.pipelines.records import Record, filtered, rejected
from trimodal.pipelines.sink import SinkConfig, make_sample
from trimodal.pipelines.text import EncodePairedText
from trimodal.tokenizers.audio_io import AudioRejected, load_audio
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.registry import load_audio_tokenizer, load_text_tokenizer
from trimodal.tokenizers.runtime import resolve_device


@dataclass
class AudioTextPipelineConfig(common.PipelineConfig):
    audio_tokenizer: str = option("", help="DAC weight file (weights_*.pth) or Higgs Audio v2 folder")
    format: str = option("auto", help=f"input format: {', '.join(FORMATS)}")
    n_keep: int = option(4, flag="codebooks", help="residual codebooks kept (k)")
    max_seconds: float | None = option(30.0, help="longer clips are filtered (too_long)")
    min_seconds: float = option(0.0, help="shorter clips are filtered (too_short)")
    device: str = option("auto", help="codec device: auto, cpu, cuda, cuda:N")
    batch_size: int = option(8, help="clips per codec call, at most")
    batch_seconds: float = option(240.0, help="padded audio seconds per codec call, at most")
    bucket_seconds: float = option(1.0, help="clips are padded to the end of their length bucket of this width")
    text_field: str = option("text", help="manifest field holding the transcript")
    audio_field: str = option("audio_filepath", help="manifest field holding the audio path")
    allow_tf32: bool = option(False, help="faster on GPU; codes may then differ from CPU-made shards")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.audio_tokenizer:
            raise ValueError("--audio-tokenizer is required")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bucket_seconds < 0 or self.batch_seconds <= 0:
            raise ValueError("bucket_seconds must be >= 0 and batch_seconds > 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive (or None), got {self.max_seconds}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")


# ----------------------------------------------------------------------------- bucketing + encode


def pad_multiple(bucket_seconds: float, sample_rate: int, hop_length: int) -> int:
    """Bucket width in samples: ``bucket_seconds`` rounded up to whole codec frames (>= one hop)."""
    return hop_length * max(1, math.ceil(bucket_seconds * sample_rate / hop_length - 1e-9))


def bucket_end(n_samples: int, multiple: int) -> int:
    """Padded length of a clip: the end of its bucket (a function of its own length only)."""
    return -(-n_samples // multiple) * multiple


def encode_clips(tok, wavs: Sequence[np.ndarray], multiple: int) -> list[np.ndarray]:
    """The canonical codes of each clip: zero-padded to :func:`bucket_end`, encoded, trimmed to
    ``ceil(len / hop)`` frames. Clips of different buckets are encoded in separate batches, so
    the result for one clip never depends on the others."""
    out: list[np.ndarray | None] = [None] * len(wavs)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(wavs):
        groups[bucket_end(len(w), multiple)].append(i)
    for end, idx in groups.items():
        x = np.zeros((len(idx), end), dtype=np.float32)
        for row, i in enumerate(idx):
            x[row, : len(wavs[i])] = wavs[i]
        codes = tok.encode(list(x))
        for row, i in enumerate(idx):
            out[i] = np.ascontiguousarray(codes[row][:, : tok.n_frames(len(wavs[i]))])
    return out  # type: ignore[return-value]


# One codec per worker process, shared by that process's DoFn instances (threads).
_CODECS = shared.Shared()


class _CodecHolder:
    def __init__(self, tok):
        self.tok = tok


def load_codec_shared(path: str, n_keep: int, device: str, allow_tf32: bool = False):
    """The codec (DAC or Higgs) of this worker process, loaded once."""
    device = str(resolve_device(device))
    return _CODECS.acquire(
        lambda: _CodecHolder(load_audio_tokenizer(path, n_keep=n_keep, device=device, allow_tf32=allow_tf32)),
        tag=f"codec:{path}:{n_keep}:{device}:{allow_tf32}",
    ).tok


# ----------------------------------------------------------------------------- steps


def PrepareTranscript(tokenizer_path: str) -> EncodePairedText:
    """Transcript normalisation + encoding (``empty_transcript`` filtered)."""
    return EncodePairedText(tokenizer_path, name="transcript")


class DecodeAudio(Step):
    """Audio bytes → mono float32 at the codec rate; ``too_long``/``too_short`` are filtered,
    undecodable or broken audio is rejected with :func:`load_audio`'s reason."""

    stage = "decode"

    def __init__(self, sample_rate: int, max_seconds: float | None, min_seconds: float = 0.0):
        self.sample_rate, self.max_seconds, self.min_seconds = sample_rate, max_seconds, min_seconds

    def apply(self, record: Record) -> Record:
        data = record.media
        try:
            wav = load_audio(data, self.sample_rate, self.max_seconds)
        except AudioRejected as e:
            raise (filtered if e.reason == "too_long" else rejected)(e.reason, e.detail) from None
        seconds = wav.shape[0] / self.sample_rate
        if seconds < self.min_seconds:
            raise filtered("too_short", f"{seconds:.3f} s < {self.min_seconds} s")
        info = sf.info(io.BytesIO(data))  # header only; it decoded above, so it parses
        record.provenance = {**record.provenance, "sample_rate": int(info.samplerate), "channels": int(info.channels)}
        record.media, record.wav, record.seconds = None, wav, seconds
        return record


class EncodeAudio(beam.DoFn):
    """Bucketed, batched DAC encoding: records → tokenized samples.

    Keeps one buffer per bucket (see :func:`bucket_end`); a bucket is encoded as soon as it holds
    ``batch_size`` clips or ``batch_seconds`` of padded audio, and whatever is left at the end of
    the bundle is encoded then. A clip's codes equal :func:`encode_clips` of it alone."""

    stage = "encode"

    def __init__(self, codec_path: str, n_keep: int, device: str, multiple: int, batch_size: int,
                 batch_samples: int, allow_tf32: bool = False):
        self.codec_path, self.n_keep, self.device, self.allow_tf32 = codec_path, n_keep, device, allow_tf32
        self.multiple, self.batch_size, self.batch_samples = multiple, batch_size, batch_samples

    def setup(self) -> None:
        self.tok = load_codec_shared(self.codec_path, self.n_keep, self.device, self.allow_tf32)

    def start_bundle(self) -> None:
        self.buffers: dict[int, list[Record]] = {}

    def capacity(self, end: int) -> int:
        return max(1, min(self.batch_size, self.batch_samples // end))

    def process(self, record: Record):
        end = bucket_end(record.wav.shape[0], self.multiple)
        buf = self.buffers.setdefault(end, [])
        buf.append(record)
        if len(buf) >= self.capacity(end):
            del self.buffers[end]
            yield from self._encode(buf)

    def finish_bundle(self):
        buffers, self.buffers = self.buffers, {}
        for end in sorted(buffers):
            for sample in self._encode(buffers[end]):
                yield window.GlobalWindows.windowed_value(sample)

    def _encode(self, batch: list[Record]):
        t0 = time.perf_counter()
        codes = encode_clips(self.tok, [r.wav for r in batch], self.multiple)
        count(self.stage, "batches")
        count(self.stage, "codec_ms", n=int(round(1000 * (time.perf_counter() - t0))))
        for record, audio in zip(batch, codes):
            count(self.stage, "ok")
            text = np.asarray(record.text_ids)
            lengths = {"audio_frames": int(audio.shape[1]), "text": int(text.size),
                       "seconds": round(float(record.seconds), 4)}
            yield make_sample(record, "audio_text", lengths, {"audio": audio, "text": text})


class _Encode(beam.PTransform):
    def __init__(self, encode: EncodeAudio):
        super().__init__()
        self.encode = encode

    def expand(self, pcoll):
        return pcoll | "EncodeAudio" >> beam.ParDo(self.encode).with_outputs(FILTERED, REJECTED, main="ok")


# ----------------------------------------------------------------------------- wiring


def audio_tokenizer_info(tok, path: str, multiple: int) -> TokenizerInfo:
    """What the manifest records about the codec (DAC or Higgs: each says itself, ``info``);
    the bucket padding is added because it is part of what the codes mean."""
    from dataclasses import replace

    info = tok.info(path)
    return replace(info, extra={**info.extra, "pad_multiple": multiple})


def build_audio_text_pipeline(p: beam.Pipeline, cfg: AudioTextPipelineConfig, inputs: list[str], text_tok, audio_tok,
                              run_id: str | None = None):
    sr, hop = audio_tok.sample_rate, audio_tok.hop_length
    multiple = hop if cfg.bucket_seconds == 0 else pad_multiple(cfg.bucket_seconds, sr, hop)
    sink = SinkConfig(
        root=cfg.out, modality="audio_text",
        tokenizers={"text": text_tok.info(), "audio": audio_tokenizer_info(audio_tok, cfg.audio_tokenizer, multiple)},
        target_shard_bytes=cfg.target_shard_bytes, compression=cfg.compression, val_fraction=cfg.val_fraction,
        run_id=run_id, config=cfg.recorded(),
    )
    reader = AudioTextReader(cfg.format, cfg.source, cfg.text_field, cfg.audio_field, max_bytes=cfg.max_record_bytes)
    encode = EncodeAudio(cfg.audio_tokenizer, cfg.n_keep, cfg.device, multiple, cfg.batch_size,
                         max(1, int(cfg.batch_seconds * sr)), cfg.allow_tf32)
    return common.build(
        p, inputs, reader,
        steps=[("Transcript", PrepareTranscript(cfg.text_tokenizer)),
               ("DecodeAudio", DecodeAudio(sr, cfg.max_seconds, cfg.min_seconds))],
        sink=sink, batch_step=("Encode", _Encode(encode)),
    )


def run_audio_text_pipeline(cfg: AudioTextPipelineConfig, beam_args: list[str] | None = None):
    """Validate inputs and load both tokenizers up front (clear error, nothing written), then run
    on the named runner. The codec is loaded here on the CPU only for its fingerprint; workers
    load their own on ``cfg.device``."""
    inputs = storage.expand_inputs(cfg.inputs)
    text_tok = load_text_tokenizer(cfg.text_tokenizer)
    audio_tok = load_audio_tokenizer(cfg.audio_tokenizer, n_keep=cfg.n_keep, device="cpu")
    return common.run(lambda p, run_id: build_audio_text_pipeline(p, cfg, inputs, text_tok, audio_tok, run_id),
                      cfg.out, beam_args or [], cfg.progress)


__all__ = [
    "AudioTextPipelineConfig", "run_audio_text_pipeline", "build_audio_text_pipeline", "PrepareTranscript",
    "DecodeAudio", "EncodeAudio", "encode_clips", "bucket_end", "pad_multiple", "audio_tokenizer_info",
    "load_codec_shared", "resolve_device"
]
