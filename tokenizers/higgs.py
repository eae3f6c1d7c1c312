"""Higgs Audio v2 audio tokenizer (Boson AI), written for this project, loading the released weights.

The paper's audio tokenizer: 24 kHz mono in, one code frame per 960 samples (25 frames/s), a
residual vector quantizer with 8 codebooks of 1,024 (the paper keeps the first 4). Each frame
is the quantized fusion of two branches:

* acoustic: a DAC-style convolutional encoder (Snake activations, dilated residual units,
  strided convolutions) on the 24 kHz waveform; its mirror, a transposed-convolution decoder,
  turns codes back into audio;
* semantic: a HuBERT-base model on the waveform resampled to 16 kHz (Hann-windowed sinc,
  :func:`~trimodal.tokenizers.audio_io.resample_sinc`); the mean of its hidden states (input of
  the first transformer layer and every layer's output), every second frame, through a small
  residual conv encoder.

Both are concatenated, mixed by ``fc`` and quantized by the RVQ (Euclidean nearest code; each
level quantizes what the previous ones left). Decoding uses the acoustic part only (``fc2`` ->
acoustic decoder); ``decoder_semantic`` and ``fc1`` exist only for training and are loaded but
never run.

Why it lives here and not behind ``transformers``' ``HiggsAudioV2TokenizerModel``: importing
``transformers`` costs seconds and hundreds of MB in every Beam worker, its model APIs churn
between releases (output capturing, config classes), and its class refuses to build without
``torchaudio``, which has no CPU build for our torch. So the architecture, the HuBERT branch
and the resampler are written here in plain torch from transformers 5.24.0's description.
Module and parameter names reproduce its ``save_pretrained`` layout exactly, so a user's local
copy of the released weights (a folder with ``config.json`` + ``model.safetensors``) loads with
strict key and shape matching against the model that folder's own config builds. Correctness
is pinned by golden codes/audio made with transformers (``tests/data/reference/higgs``).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimodal.tokenizers.audio_io import resample_sinc
from trimodal.tokenizers.codec import CodecTokenizer
from trimodal.tokenizers.dac import Snake1d
from trimodal.tokenizers.runtime import WeightsMismatch, check_weights

__all__ = [
    "AcousticConfig",
    "SemanticConfig",
    "HiggsConfig",
    "HiggsAudioTokenizerModel",
    "HiggsLoadError",
    "acoustic_frames",
    "semantic_frames",
    "build_higgs_model",
    "check_state_dict",
    "load_higgs",
    "HiggsTokenizer",
]

# transformers pads the 16 kHz signal by 160 samples (half a HuBERT frame) on both sides
# before HuBERT, so that its frames are centred like the acoustic ones
_HUBERT_EDGE_PAD = 160

# ----------------------------------------------------------------------------- configuration


def _ints(x: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in x)


def _pick(cls: type, d: dict[str, Any], **extra: Any) -> Any:
    """Build dataclass ``cls`` from the keys of ``d`` it declares; the rest of a transformers
    config (ids, labels, dropout, loss weights, version) does not change the forward pass."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names}, **extra)


@dataclass(frozen=True)
class AcousticConfig:
    """The DAC-style branch (``acoustic_model_config``); defaults are Higgs' released ones."""

    encoder_hidden_size: int = 64
    downsampling_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
    decoder_hidden_size: int = 1024
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
    hidden_size: int = 256  # channels of the acoustic latent

    def __post_init__(self) -> None:
        object.__setattr__(self, "downsampling_ratios", _ints(self.downsampling_ratios))
        object.__setattr__(self, "upsampling_ratios", _ints(self.upsampling_ratios))


@dataclass(frozen=True)
class SemanticConfig:
    """The HuBERT branch (``semantic_model_config``); defaults are HuBERT-base's.

    Only post-norm HuBERT with a group-normalised feature extractor and a weight-normalised
    positional convolution is implemented (what Higgs ships); other variants are refused.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    feat_proj_layer_norm: bool = True
    # a training-only mask vector that transformers creates (and saves) when masking is enabled
    masked_spec_embed: bool = False

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, _ints(getattr(self, name)))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("semantic config: conv_dim, conv_kernel and conv_stride differ in length")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("semantic config: hidden_size is not a multiple of num_attention_heads")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SemanticConfig:
        """From a transformers ``HubertConfig`` dict (Higgs turns masking off by default)."""
        d = {"mask_time_prob": 0.0, **d}
        unsupported = {
            "model_type": ("hubert", d.get("model_type", "hubert")),
            "feat_extract_norm": ("group", d.get("feat_extract_norm", "group")),
            "feat_extract_activation": ("gelu", d.get("feat_extract_activation", "gelu")),
            "hidden_act": ("gelu", d.get("hidden_act", "gelu")),
            "do_stable_layer_norm": (False, bool(d.get("do_stable_layer_norm", False))),
            "conv_pos_batch_norm": (False, bool(d.get("conv_pos_batch_norm", False))),
        }
        bad = {k: got for k, (want, got) in unsupported.items() if got != want}
        if bad:
            raise ValueError(f"semantic model variant not implemented: {bad}")
        n_layers = d.get("num_feat_extract_layers")
        if n_layers is not None and int(n_layers) != len(d.get("conv_dim", cls.conv_dim)):
            raise ValueError("semantic config: num_feat_extract_layers != len(conv_dim)")
        masked = float(d.get("mask_time_prob") or 0) > 0 or float(d.get("mask_feature_prob") or 0) > 0
        d = {k: v for k, v in d.items() if k != "masked_spec_embed"}
        return _pick(cls, d, masked_spec_embed=masked)


@dataclass(frozen=True)
class HiggsConfig:
    """Constructor arguments of the tokenizer, named as in transformers' ``config.json``."""

    acoustic: AcousticConfig = field(default_factory=AcousticConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    sample_rate: int = 24000
    semantic_sample_rate: int = 16000
    downsample_factor: int = 320  # HuBERT's stride in 16 kHz samples
    # transformers' class default ends at 4 kbps (16 codebooks); the released file says 2 (8)
    target_bandwidths: tuple[float, ...] = (0.5, 1, 1.5, 2, 4)
    codebook_size: int = 1024
    codebook_dim: int | None = 64  # None: hidden_size, as transformers
    kernel_size: int = 3
    channel_ratios: tuple[float, ...] = (1, 1)
    strides: tuple[int, ...] = (1, 1)
    block_dilations: tuple[int, ...] = (1, 1)
    unit_kernel_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_bandwidths", tuple(float(b) for b in self.target_bandwidths))
        object.__setattr__(self, "channel_ratios", tuple(float(r) for r in self.channel_ratios))
        object.__setattr__(self, "strides", _ints(self.strides))
        object.__setattr__(self, "block_dilations", _ints(self.block_dilations))
        if self.codebook_dim is None:
            object.__setattr__(self, "codebook_dim", self.hidden_size)
        if len(self.strides) != len(self.channel_ratios):
            raise ValueError("strides and channel_ratios differ in length")
        if self.codebook_size > 65536:
            raise ValueError("codebook_size does not fit uint16 codes")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HiggsConfig:
        """From a ``config.json`` dict (``save_pretrained``'s; absent keys take transformers'
        defaults, including its Higgs-specific acoustic defaults)."""
        if d.get("model_type", "higgs_audio_v2_tokenizer") != "higgs_audio_v2_tokenizer":
            raise ValueError(f"not a Higgs Audio v2 tokenizer config: model_type {d.get('model_type')!r}")
        ac = dict(d.get("acoustic_model_config") or {})
        if ac.get("model_type", "dac") != "dac":
            raise ValueError(f"acoustic model {ac.get('model_type')!r} not implemented (only dac)")
        acoustic = _pick(AcousticConfig, ac)
        semantic = SemanticConfig.from_dict(dict(d.get("semantic_model_config") or {}))
        top = {k: v for k, v in d.items() if k not in ("acoustic", "semantic")}
        return _pick(cls, top, acoustic=acoustic, semantic=semantic)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (codebook_dim resolved) for fingerprints and manifests."""
        return asdict(self)

    @property
    def hop_length(self) -> int:
        """Samples per code frame: the product of the acoustic encoder's strides."""
        return int(np.prod(self.acoustic.downsampling_ratios))

    @property
    def frame_rate(self) -> int:
        """Frames per second, rounded up (transformers' integer rate, used for bandwidths)."""
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def hidden_size(self) -> int:
        """Channels of the fused latent: acoustic + semantic."""
        return self.acoustic.hidden_size + self.semantic.hidden_size

    @property
    def num_quantizers(self) -> int:
        """RVQ levels: as many as the highest target bandwidth pays for."""
        bits = math.ceil(math.log2(self.codebook_size))
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * bits))

    @property
    def n_codebooks(self) -> int:
        """Alias of :attr:`num_quantizers` (the name DAC's config uses)."""
        return self.num_quantizers

    @property
    def semantic_downsample_factor(self) -> int:
        """HuBERT frames per code frame (2: HuBERT runs at 50 frames/s)."""
        ratio = self.sample_rate / self.semantic_sample_rate
        return int(self.hop_length / ratio / self.downsample_factor)

    def quantizers_for_bandwidth(self, kbps: float) -> int:
        """Levels transformers' ``encode(..., bandwidth=kbps)`` uses: floor(kbps / kbps per level)."""
        per_level = math.log2(self.codebook_size) * self.frame_rate / 1000
        return int(max(1, math.floor(kbps / per_level)))


# ----------------------------------------------------------------------------- pure length maths


def _conv_len(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """torch's Conv1d output length, truncated like transformers' ``conv1d_output_length``."""
    return int((n + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


def acoustic_frames(n_samples: int, ratios: Sequence[int]) -> int:
    """Frames the acoustic encoder makes of ``n_samples`` (only its strided convs change length)."""
    n = n_samples
    for s in ratios:
        n = _conv_len(n, 2 * s, s, math.ceil(s / 2))
    return n


def semantic_frames(n_samples: int, config: HiggsConfig) -> int:
    """Frames the semantic branch makes of ``n_samples`` at ``sample_rate``: resampled length,
    edge padding, HuBERT's conv stack, every ``semantic_downsample_factor``-th frame, the
    semantic encoder's strides."""
    n = -(-n_samples * config.semantic_sample_rate // config.sample_rate)
    n += 2 * _HUBERT_EDGE_PAD
    for k, s in zip(config.semantic.conv_kernel, config.semantic.conv_stride):
        n = _conv_len(n, k, s)
    sub = config.semantic_downsample_factor
    if sub > 1:
        n = -(-n // sub)
    for s in config.strides:
        kernel = 3 if s == 1 else 2 * s
        n = _conv_len(n, kernel, s, (kernel - 1) // 2)
    return n


# ----------------------------------------------------------------------------- acoustic branch


class AcousticResidualUnit(nn.Module):
    """Snake -> dilated k=7 conv -> Snake -> 1x1 conv, plus the input (lengths are preserved)."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class AcousticEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``dim // 2``, then a stride-s conv to ``dim``."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        half = dim // 2
        self.res_unit1 = AcousticResidualUnit(half, 1)
        self.res_unit2 = AcousticResidualUnit(half, 3)
        self.res_unit3 = AcousticResidualUnit(half, 9)
        self.snake1 = Snake1d(half)
        self.conv1 = nn.Conv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class AcousticEncoder(nn.Module):
    """Waveform (N, 1, T) -> acoustic latent (N, hidden_size, frames); channels double per stride."""

    def __init__(self, cfg: AcousticConfig) -> None:
        super().__init__()
        ratios = cfg.downsampling_ratios
        self.conv1 = nn.Conv1d(1, cfg.encoder_hidden_size, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            AcousticEncoderBlock(cfg.encoder_hidden_size * 2 ** (i + 1), s) for i, s in enumerate(ratios)
        )
        top = cfg.encoder_hidden_size * 2 ** len(ratios)
        self.snake1 = Snake1d(top)
        self.conv2 = nn.Conv1d(top, cfg.hidden_size, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class AcousticDecoderBlock(nn.Module):
    """Snake, a stride-s transposed conv halving the channels, three residual units.

    ``output_padding = s % 2`` makes every block exactly s times longer (Higgs' change to DAC,
    whose odd strides lose a sample), so decoded audio is frames * hop samples long.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(in_dim)
        self.conv_t1 = nn.ConvTranspose1d(
            in_dim, out_dim, kernel_size=2 * stride, stride=stride,
            padding=math.ceil(stride / 2), output_padding=stride % 2,
        )
        self.res_unit1 = AcousticResidualUnit(out_dim, 1)
        self.res_unit2 = AcousticResidualUnit(out_dim, 3)
        self.res_unit3 = AcousticResidualUnit(out_dim, 9)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class AcousticDecoder(nn.Module):
    """Acoustic latent (N, hidden_size, F) -> waveform (N, 1, F * hop); no output tanh (Higgs)."""

    def __init__(self, cfg: AcousticConfig) -> None:
        super().__init__()
        width = cfg.decoder_hidden_size
        self.conv1 = nn.Conv1d(cfg.hidden_size, width, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            AcousticDecoderBlock(width // 2**i, width // 2 ** (i + 1), s) for i, s in enumerate(cfg.upsampling_ratios)
        )
        out = width // 2 ** len(cfg.upsampling_ratios)
        self.snake1 = Snake1d(out)
        self.conv2 = nn.Conv1d(out, 1, kernel_size=7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


# ----------------------------------------------------------------------------- semantic convs


class SemanticResidualUnit(nn.Module):
    """ELU -> dilated conv -> ELU -> 1x1 conv (no biases), plus the input."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.activation = nn.ELU()
        pad = (kernel - 1) // 2 * dilation
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.activation(self.conv1(self.activation(x))))


class SemanticEncoderBlock(nn.Module):
    """Residual units, then a conv (k=3 at stride 1, else k=2s) to the block's width."""

    def __init__(self, cfg: HiggsConfig, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.res_units = nn.ModuleList(
            SemanticResidualUnit(in_ch, in_ch, cfg.unit_kernel_size, d) for d in cfg.block_dilations
        )
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    """HuBERT features (N, C, S) -> semantic latent (N, C', S)."""

    def __init__(self, cfg: HiggsConfig) -> None:
        super().__init__()
        c = cfg.semantic.hidden_size
        self.conv = nn.Conv1d(c, c, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)
        widths = [int(c * r) for r in cfg.channel_ratios]
        ins = [c] + widths[:-1]
        self.conv_blocks = nn.ModuleList(
            SemanticEncoderBlock(cfg, i, o, s) for i, o, s in zip(ins, widths, cfg.strides)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x


class SemanticDecoderBlock(nn.Module):
    """A conv (transposed for strides > 1), then residual units. Training only."""

    def __init__(self, cfg: HiggsConfig, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if stride == 1:
            self.conv: nn.Module = nn.Conv1d(in_ch, out_ch, kernel_size=3, padding=1)
        else:
            self.conv = nn.ConvTranspose1d(
                in_ch, out_ch, 2 * stride, stride, padding=(stride + 1) // 2, output_padding=stride % 2, bias=False
            )
        self.res_units = nn.ModuleList(
            SemanticResidualUnit(out_ch, out_ch, cfg.unit_kernel_size, d) for d in cfg.block_dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        for unit in self.res_units:
            x = unit(x)
        return x


class SemanticDecoder(nn.Module):
    """Reconstructs HuBERT features from the quantized latent: a training target, never run here."""

    def __init__(self, cfg: HiggsConfig) -> None:
        super().__init__()
        c = cfg.semantic.hidden_size
        widths = [int(c * r) for r in cfg.channel_ratios]
        self.conv1 = nn.Conv1d(c, widths[0], cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)
        outs = widths[1:] + [c]
        self.conv_blocks = nn.ModuleList(
            SemanticDecoderBlock(cfg, i, o, s) for i, o, s in zip(widths, outs, cfg.strides)
        )
        self.conv2 = nn.Conv1d(c, c, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.conv_blocks:
            x = block(x)
        return self.conv2(x)


# ----------------------------------------------------------------------------- HuBERT


class _FeatureConv(nn.Module):
    """One layer of HuBERT's waveform conv stack; the first also normalises each channel over
    time (GroupNorm with one group per channel, stored as ``layer_norm``)."""

    def __init__(self, cfg: SemanticConfig, i: int) -> None:
        super().__init__()
        c_in = cfg.conv_dim[i - 1] if i > 0 else 1
        c_out = cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True) if i == 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureEncoder(nn.Module):
    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(_FeatureConv(cfg, i) for i in range(len(cfg.conv_dim)))

    def forward(self, wav: Tensor) -> Tensor:
        """(N, T) at 16 kHz -> (N, C, frames)."""
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        c = cfg.conv_dim[-1]
        self.layer_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = nn.Linear(c, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class _WeightNormParams(nn.Module):
    """``torch.nn.utils.parametrizations.weight_norm``'s storage: original0 = g, original1 = v."""

    def __init__(self, g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.original0 = nn.Parameter(torch.empty(g_shape))
        self.original1 = nn.Parameter(torch.empty(v_shape))


class _WeightNormConv1d(nn.Module):
    """Grouped 'same' Conv1d with weight g * v / ||v||, the norm over all dims but the kernel axis.

    Written out (not ``parametrizations.weight_norm``) so the stored names are this module's own;
    ``torch._weight_norm`` is the op that parametrization calls, for identical rounding.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.bias = nn.Parameter(torch.zeros(channels))
        self.parametrizations = nn.ModuleDict(
            {"weight": _WeightNormParams((1, 1, kernel), (channels, channels // groups, kernel))}
        )
        p = self.parametrizations["weight"]
        with torch.no_grad():
            nn.init.normal_(p.original1, std=math.sqrt(2.0 / (kernel * channels // groups)))
            p.original0.copy_(p.original1.norm(dim=(0, 1), keepdim=True))

    @property
    def weight(self) -> Tensor:
        p = self.parametrizations["weight"]
        return torch._weight_norm(p.original1, p.original0, 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class _PositionalConv(nn.Module):
    """HuBERT's relative position signal: a wide grouped conv over time, GELU, added to the input."""

    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = _WeightNormConv1d(cfg.hidden_size, k, cfg.num_conv_pos_embedding_groups)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with k // 2 padding makes one frame too many

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class _SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention (no mask: every clip is encoded whole)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        hd = d // self.heads

        def split(y: Tensor) -> Tensor:
            return y.view(n, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)
        return self.out_proj(y.transpose(1, 2).contiguous().reshape(n, t, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    """Post-norm transformer layer (HuBERT-base): attention, add, norm, MLP, add, norm."""

    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        self.attention = _SelfAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = _FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        self.pos_conv_embed = _PositionalConv(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        """All hidden states: the first layer's input, then every layer's output."""
        x = self.layer_norm(x + self.pos_conv_embed(x))
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        return states


class HubertModel(nn.Module):
    """HuBERT (post-norm variant), inference only: waveform -> its hidden states."""

    def __init__(self, cfg: SemanticConfig) -> None:
        super().__init__()
        self.feature_extractor = _FeatureEncoder(cfg)
        self.feature_projection = _FeatureProjection(cfg)
        self.encoder = _Encoder(cfg)
        if cfg.masked_spec_embed:
            self.masked_spec_embed = nn.Parameter(torch.rand(cfg.hidden_size))

    def forward(self, wav: Tensor) -> list[Tensor]:
        """(N, T) at 16 kHz -> num_hidden_layers + 1 tensors (N, frames, hidden_size)."""
        x = self.feature_extractor(wav).transpose(1, 2)
        return self.encoder(self.feature_projection(x))


# ----------------------------------------------------------------------------- quantizer


class Codebook(nn.Module):
    """1,024 code vectors, nearest by Euclidean distance. ``inited``/``cluster_size``/``embed_avg``
    are the EMA training state the released files carry; only ``embed`` is used."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        # transformers initialises codes to zeros (a weight file overwrites them); random codes
        # keep a freshly built model from emitting code 0 everywhere
        self.register_buffer("embed", torch.randn(size, dim))
        self.register_buffer("embed_avg", torch.zeros(size, dim))

    def nearest(self, x: Tensor) -> Tensor:
        """Indices of the nearest code for x (..., dim); distance written as transformers does,
        for identical rounding and tie-breaking."""
        flat = x.reshape(-1, x.shape[-1])
        e = self.embed.t()
        dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e + e.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices.view(x.shape[:-1])


class VectorQuantizer(nn.Module):
    """One RVQ level: project the latent down to the codebook's space, look up, project back."""

    def __init__(self, hidden: int, size: int, dim: int) -> None:
        super().__init__()
        self.codebook = Codebook(size, dim)
        self.project_in = nn.Linear(hidden, dim)
        self.project_out = nn.Linear(dim, hidden)

    def encode(self, z: Tensor) -> Tensor:
        """Latent (N, hidden, F) -> codes (N, F)."""
        return self.codebook.nearest(self.project_in(z.permute(0, 2, 1)))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (N, F) -> latent contribution (N, hidden, F)."""
        return self.project_out(F.embedding(codes, self.codebook.embed)).permute(0, 2, 1)


class ResidualVectorQuantizer(nn.Module):
    """Level i quantizes what levels < i left, so the first k levels alone are a coarser code."""

    def __init__(self, cfg: HiggsConfig) -> None:
        super().__init__()
        assert cfg.codebook_dim is not None
        self.quantizers = nn.ModuleList(
            VectorQuantizer(cfg.hidden_size, cfg.codebook_size, cfg.codebook_dim) for _ in range(cfg.num_quantizers)
        )

    def encode(self, z: Tensor, n: int) -> Tensor:
        """Latent (N, hidden, F) -> codes (N, n, F)."""
        residual, codes = z, []
        for q in self.quantizers[:n]:
            c = q.encode(residual)
            residual = residual - q.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (N, k, F), k <= levels -> quantized latent (N, hidden, F)."""
        out = self.quantizers[0].decode(codes[:, 0])
        for i in range(1, codes.shape[1]):
            out = out + self.quantizers[i].decode(codes[:, i])
        return out


# ----------------------------------------------------------------------------- the model


class HiggsAudioTokenizerModel(nn.Module):
    """Both branches, the fusion layers and the RVQ, in transformers' state-dict layout."""

    def __init__(self, config: HiggsConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.acoustic_encoder = AcousticEncoder(config.acoustic)
        self.acoustic_decoder = AcousticDecoder(config.acoustic)
        self.encoder_semantic = SemanticEncoder(config)
        self.decoder_semantic = SemanticDecoder(config)
        self.semantic_model = HubertModel(config.semantic)
        self.fc = nn.Linear(h, h)
        self.fc1 = nn.Linear(h, config.semantic.hidden_size)
        self.fc2 = nn.Linear(h, config.acoustic.hidden_size)
        self.quantizer = ResidualVectorQuantizer(config)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def semantic_features(self, wav: Tensor) -> Tensor:
        """Waveform (N, 1, T) -> HuBERT features (N, S, C): mean over hidden states, every
        ``semantic_downsample_factor``-th frame (HuBERT's 50 frames/s -> the codec's 25)."""
        cfg = self.config
        x = resample_sinc(wav, cfg.sample_rate, cfg.semantic_sample_rate)[:, 0]
        x = F.pad(x, (_HUBERT_EDGE_PAD, _HUBERT_EDGE_PAD))
        feats = torch.stack(self.semantic_model(x), dim=1).mean(dim=1)
        sub = cfg.semantic_downsample_factor
        return feats[:, ::sub] if sub > 1 else feats

    def latent(self, wav: Tensor) -> Tensor:
        """Waveform (N, 1, T) -> fused latent (N, hidden_size, F) before quantization.

        When the acoustic encoder would make a different number of frames than the semantic
        branch (T not a multiple of the hop, by 120 samples or more), transformers pads the
        acoustic input by hop // 2 on both sides; so does this. Frame counts that still differ
        raise (transformers fails there too).
        """
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected a mono batch (N, 1, T), got shape {tuple(wav.shape)}")
        e_sem = self.encoder_semantic(self.semantic_features(wav).transpose(1, 2))
        if acoustic_frames(wav.shape[-1], self.config.acoustic.downsampling_ratios) != e_sem.shape[2]:
            pad = self.hop_length // 2
            wav = F.pad(wav, (pad, pad))
        e_ac = self.acoustic_encoder(wav)
        if e_ac.shape[2] != e_sem.shape[2]:
            raise ValueError(
                f"{wav.shape[-1]} samples give {e_ac.shape[2]} acoustic but {e_sem.shape[2]} semantic frames; "
                f"pad the input to a multiple of {self.hop_length} samples"
            )
        z = torch.cat([e_ac, e_sem], dim=1)
        return self.fc(z.transpose(1, 2)).transpose(1, 2)

    def encode(self, wav: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Waveform (N, 1, T) at ``sample_rate`` -> codes LongTensor (N, k, frames).

        Only the first ``n_quantizers`` levels are computed (default: all); they equal the first
        levels of a full encode, and transformers' ``bandwidth=b`` is
        ``n_quantizers=config.quantizers_for_bandwidth(b)``.
        """
        n = self.config.num_quantizers if n_quantizers is None else n_quantizers
        if not 1 <= n <= self.config.num_quantizers:
            raise ValueError(f"n_quantizers must be in [1, {self.config.num_quantizers}], got {n}")
        return self.quantizer.encode(self.latent(wav), n)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (N, k, F), k <= levels -> waveform (N, 1, F * hop)."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes (N, k, frames), got shape {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.config.num_quantizers:
            raise ValueError(f"codes have {codes.shape[1]} levels; this model has {self.config.num_quantizers}")
        z = self.quantizer.decode(codes.long())
        return self.acoustic_decoder(self.fc2(z.transpose(1, 2)).transpose(1, 2))


# ----------------------------------------------------------------------------- weight files


# transformers' ``_keys_to_ignore_on_load_unexpected``: HuBERT's training-only mask vector, which
# checkpoints made with masking on carry even when the config turns masking off
_IGNORED_IF_UNEXPECTED = ("semantic_model.masked_spec_embed",)


class HiggsLoadError(WeightsMismatch):
    """A Higgs folder is incomplete or its weights do not match the model its config builds."""


def build_higgs_model(
    config: HiggsConfig | dict[str, Any], device: str | torch.device = "cpu"
) -> HiggsAudioTokenizerModel:
    """The model a config builds, in eval mode; ``device="meta"`` allocates nothing (for key and
    shape checks, or to load weights into with ``assign=True``)."""
    cfg = config if isinstance(config, HiggsConfig) else HiggsConfig.from_dict(config)
    with torch.device(device):
        return HiggsAudioTokenizerModel(cfg).eval()


def check_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Strict key and shape check, raising one :class:`HiggsLoadError` naming every offending key."""
    try:
        check_weights(model.state_dict(), state_dict, "Higgs tokenizer weights")
    except WeightsMismatch as e:
        raise HiggsLoadError(str(e)) from None


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """``model.safetensors``, or the shards a ``model.safetensors.index.json`` names."""
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for name in files:
            part = load_file(folder / name)
            dup = sorted(set(part) & set(state))
            if dup:
                raise HiggsLoadError(f"{folder}: keys in more than one shard: {dup[:5]}")
            state.update(part)
        return state
    raise HiggsLoadError(f"{folder}: no model.safetensors (or model.safetensors.index.json)")


def load_higgs(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> HiggsAudioTokenizerModel:
    """Load a ``save_pretrained`` folder (``config.json`` + safetensors weights).

    Builds the model from the folder's own config on the meta device (no memory, no random
    init for ~200M parameters), matches every key and shape strictly, then takes the file's
    tensors as float32 parameters. Returns the model in eval mode on ``device``. The one
    exception to strictness is transformers' own: an unused HuBERT ``masked_spec_embed`` in a
    file whose config turns masking off is dropped, as ``from_pretrained`` drops it.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise HiggsLoadError(f"{folder}: not a Higgs tokenizer folder (no config.json)")
    config = HiggsConfig.from_dict(json.loads(config_file.read_text()))
    state = _read_weights(folder)
    model = build_higgs_model(config, "meta")
    expected = model.state_dict()
    for key in _IGNORED_IF_UNEXPECTED:
        if key not in expected:
            state.pop(key, None)
    check_state_dict(model, state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def save_higgs(model: HiggsAudioTokenizerModel, folder: str | os.PathLike[str], config_json: dict[str, Any]) -> None:
    """Write ``model`` as a ``save_pretrained``-style folder: ``config.json`` (the transformers-
    format dict the model was built from) + ``model.safetensors``."""
    from safetensors.torch import save_file

    if HiggsConfig.from_dict(config_json) != model.config:
        raise ValueError("config_json does not describe this model")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- tokenizer


class HiggsTokenizer(CodecTokenizer):
    """Higgs Audio v2 as a tokenizer: 24 kHz mono waveforms <-> (k, frames) uint16 codes
    (:class:`~trimodal.tokenizers.codec.CodecTokenizer`).

    Keeps the first ``n_keep`` residual levels (default 4 of 8, as the paper; equal to
    transformers' ``bandwidth=1``). On CUDA, TF32 is off during calls unless ``allow_tf32``.
    """

    kind = "higgs"

    @staticmethod
    def codebooks_of(model: HiggsAudioTokenizerModel) -> int:
        return model.config.num_quantizers

    @staticmethod
    def load_model(path: str | os.PathLike[str]) -> Any:
        """Load a ``save_pretrained`` folder (see :func:`load_higgs`)."""
        return load_higgs(path)

    def encode(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """1-D float32 waveforms at ``sample_rate`` -> one uint16 array (n_keep, frames) each.

        Each clip is right-padded with zeros to a whole number of frames, ceil(len / hop) (for
        such lengths the result equals transformers' ``encode``). Clips of equal padded length
        are encoded together in one pass; other lengths in separate passes, never padded to
        each other: HuBERT's self-attention and its 128-frame positional conv reach across the
        whole clip, so extra padding would change *every* frame's code, not just the last few
        (as DAC's local receptive field would). A clip's codes therefore depend only on the
        clip, its own hop padding and float rounding; pad clips to a fixed bucket first (as the
        audio pipeline does) and that bucket padding is part of what the codes mean. Batch size
        can change float rounding on some backends, so a near-tie code may rarely differ from
        a batch-of-one encode.
        """
        if len(batch) == 0:
            return []
        wavs = self._waveforms(batch)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(wavs):
            groups[self.n_frames(w.shape[0]) * self.hop_length].append(i)
        out: list[np.ndarray | None] = [None] * len(wavs)
        for length, idx in groups.items():
            for i, codes in zip(idx, self._encode_padded([wavs[i] for i in idx], length)):
                out[i] = codes
        return out  # type: ignore[return-value]

    def _decode_model(self, codes: Tensor) -> Tensor:
        return self.model.decode(codes)
