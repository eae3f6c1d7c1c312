"""Descript Audio Codec (DAC), written for this project, loading the official weight files.

Why it lives here: the ``descript-audio-codec`` package cannot share an environment with
apache-beam (its ``descript-audiotools`` dependency pins ``protobuf<3.20``), so the architecture is
re-implemented from its description: Snake activations, weight-normalised 1-D convolutions,
dilated residual units, a strided convolutional encoder, a transposed-convolution decoder and a
factorised residual vector quantizer with L2-normalised codebook lookup.

Module and parameter names reproduce the released state dicts exactly (old-style weight norm
``weight_g``/``weight_v``, Snake ``alpha``), so ``load_dac`` reads the official
``weights_*.pth`` files (``{"state_dict", "metadata": {"kwargs"}}``) with strict key and shape
matching. Correctness is pinned against golden codes/audio made with the official package
(``tests/data/reference/dac``).
"""

from __future__ import annotations

import contextvars
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimodal.tokenizers.codec import CodecTokenizer
from trimodal.tokenizers.runtime import WeightsMismatch, check_weights

__all__ = [
    "DACConfig",
    "PUBLIC_CONFIGS",
    "DAC",
    "DACLoadError",
    "check_state_dict",
    "load_dac",
    "save_dac",
    "DACTokenizer",
]

# ----------------------------------------------------------------------------- configuration


@dataclass
class DACConfig:
    """Constructor arguments of a DAC model, named as in the weight files' ``metadata.kwargs``."""

    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    latent_dim: int | None = None  # None: encoder_dim * 2 ** len(encoder_rates), as upstream
    decoder_dim: int = 1536
    decoder_rates: list[int] = field(default_factory=lambda: [8, 8, 4, 2])
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    sample_rate: int = 44100

    # kwargs that released files carry but that only matter for training
    _TRAINING_ONLY = ("quantizer_dropout",)

    def __post_init__(self) -> None:
        self.encoder_rates = [int(r) for r in self.encoder_rates]
        self.decoder_rates = [int(r) for r in self.decoder_rates]
        if self.latent_dim is None:
            self.latent_dim = self.encoder_dim * 2 ** len(self.encoder_rates)

    @property
    def hop_length(self) -> int:
        """Samples per code frame: the product of the encoder strides."""
        return int(np.prod(self.encoder_rates))

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any]) -> DACConfig:
        """Build from a weight file's ``metadata.kwargs``; training-only keys are ignored.

        Unknown keys raise, so a file from an incompatible model variant is not loaded silently.
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(k for k in kwargs if k not in known and k not in cls._TRAINING_ONLY)
        if unknown:
            raise ValueError(f"unknown DAC config keys: {unknown}")
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (latent_dim resolved) for fingerprints and manifests."""
        return asdict(self)

    def to_kwargs(self) -> dict[str, Any]:
        """The ``metadata.kwargs`` the official package writes (incl. ``quantizer_dropout``)."""
        d = self.to_dict()
        return {
            "encoder_dim": d["encoder_dim"],
            "encoder_rates": d["encoder_rates"],
            "latent_dim": d["latent_dim"],
            "decoder_dim": d["decoder_dim"],
            "decoder_rates": d["decoder_rates"],
            "n_codebooks": d["n_codebooks"],
            "codebook_size": d["codebook_size"],
            "codebook_dim": d["codebook_dim"],
            "quantizer_dropout": False,
            "sample_rate": d["sample_rate"],
        }


# The released configurations (embedded: the tests' reference data does not ship with the
# package). Keys/shapes checked against tests/data/reference/dac/dac_state_dicts.json.
_COMMON = {"encoder_dim": 64, "decoder_dim": 1536, "codebook_size": 1024, "codebook_dim": 8}
PUBLIC_CONFIGS: dict[str, dict[str, Any]] = {
    "16khz": {**_COMMON, "encoder_rates": [2, 4, 5, 8], "decoder_rates": [8, 5, 4, 2], "n_codebooks": 12,
              "sample_rate": 16000},
    "24khz": {**_COMMON, "encoder_rates": [2, 4, 5, 8], "decoder_rates": [8, 5, 4, 2], "n_codebooks": 32,
              "sample_rate": 24000},
    "44khz_8kbps": {**_COMMON, "encoder_rates": [2, 4, 8, 8], "decoder_rates": [8, 8, 4, 2], "n_codebooks": 9,
                    "sample_rate": 44100},
}


# ----------------------------------------------------------------------------- building blocks


# set while load_dac builds a model whose every parameter is about to be overwritten
_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("dac_skip_init", default=False)


def _init_weight_norm(v: Tensor, g: Tensor, bias: Tensor, fan_in: int) -> None:
    """PyTorch's default conv init for ``v``; ``g = ||v||`` so the initial weight equals ``v``."""
    if _SKIP_INIT.get():
        return
    nn.init.kaiming_uniform_(v, a=math.sqrt(5))
    with torch.no_grad():
        g.copy_(v.flatten(1).norm(dim=1).view_as(g))
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        bias.uniform_(-bound, bound)


def _weight_normed(v: Tensor, g: Tensor) -> Tensor:
    """torch's ``weight_norm`` over dim 0: g * v / ||v||, the norm over every other dim."""
    return v * (g / v.norm(p=2, dim=(1, 2), keepdim=True))


class WNConv1d(nn.Module):
    """Conv1d with weight normalisation over all dims but 0, stored as ``weight_g``/``weight_v``.

    Written as a module (not ``torch.nn.utils.weight_norm``) so the old-style parameter names of
    the released files are the module's own, independent of torch's weight-norm API changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # registration order (bias, g, v) = the released files' key order
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        _init_weight_norm(self.weight_v, self.weight_g, self.bias, in_channels * kernel_size)

    @property
    def weight(self) -> Tensor:
        """g * v / ||v||, the norm taken per output channel (dim 0)."""
        return _weight_normed(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(nn.Module):
    """ConvTranspose1d with weight norm over dim 0 (the *input* channels of a transposed weight).

    That is torch's ``weight_norm`` default (dim=0) the official code used: ``weight_g`` has shape
    (in_channels, 1, 1).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(in_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size))
        _init_weight_norm(self.weight_v, self.weight_g, self.bias, out_channels * kernel_size)

    @property
    def weight(self) -> Tensor:
        return _weight_normed(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding)


class Snake1d(nn.Module):
    """Snake activation x + sin(alpha x)^2 / alpha, one learned alpha per channel.

    Periodic inductive bias that suits audio; the 1e-9 keeps alpha -> 0 finite, as upstream.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        a = self.alpha
        return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> dilated k=7 conv -> Snake -> 1x1 conv, added to the (center-cropped) input."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:  # never with the 'same' padding above; kept for parity with upstream
            x = x[..., crop:-crop]
        return x + y


def _residual_stack(dim: int) -> list[nn.Module]:
    return [ResidualUnit(dim, 1), ResidualUnit(dim, 3), ResidualUnit(dim, 9)]


class EncoderBlock(nn.Module):
    """Three residual units at dim/2 channels, then a stride-s conv doubling the channels."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *_residual_stack(dim // 2),
            Snake1d(dim // 2),
            WNConv1d(
                dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """Waveform (N,1,T) -> latent (N, latent_dim, T / hop)."""

    def __init__(self, d_model: int, strides: Sequence[int], d_latent: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride))
        layers += [Snake1d(d_model), WNConv1d(d_model, d_latent, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, stride-s transposed conv halving the channels, then three residual units."""

    def __init__(self, input_dim: int, output_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(input_dim),
            WNConvTranspose1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
            *_residual_stack(output_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """Latent (N, latent_dim, F) -> waveform (N, 1, ~F * hop) in [-1, 1] (tanh output)."""

    def __init__(self, input_channel: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(input_channel, channels, kernel_size=7, padding=3)]
        output_dim = channels
        for i, stride in enumerate(rates):
            input_dim, output_dim = channels // 2**i, channels // 2 ** (i + 1)
            layers.append(DecoderBlock(input_dim, output_dim, stride))
        layers += [
            Snake1d(output_dim),
            WNConv1d(output_dim, 1, kernel_size=7, padding=3),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class VectorQuantizer(nn.Module):
    """One factorised VQ level: project to a small space, nearest L2-normalised code, project back.

    Looking codes up in a small normalised space (cosine similarity) is what gives DAC its high
    codebook usage; ``out_proj`` maps the (unnormalised) code vector back to the latent space.
    """

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: Tensor) -> Tensor:
        """Indices (N, F) of the nearest normalised code for projected latents z_e (N, D, F)."""
        n = z_e.shape[0]
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        cb = F.normalize(self.codebook.weight)
        # squared euclidean distance written as upstream does, for identical tie behaviour
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1)[None, :]
        return dist.neg().argmax(dim=1).view(n, -1)

    def embed(self, codes: Tensor) -> Tensor:
        """Codes (N, F) -> latent contribution (N, input_dim, F)."""
        return self.out_proj(self.codebook(codes).transpose(1, 2))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.nearest(self.in_proj(z))
        return self.embed(codes), codes


class ResidualVectorQuantizer(nn.Module):
    """Levels applied to successive residuals; the first k levels alone give a coarser code."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantizer(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)
        )

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> tuple[Tensor, Tensor]:
        """Latent (N, D, F) -> (quantized latent (N, D, F), codes (N, n_quantizers, F))."""
        n = len(self.quantizers) if n_quantizers is None else n_quantizers
        residual, z_q, codes = z, torch.zeros_like(z), []
        for quantizer in self.quantizers[:n]:
            z_q_i, codes_i = quantizer(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
        return z_q, torch.stack(codes, dim=1)

    def from_codes(self, codes: Tensor) -> Tensor:
        """Codes (N, k, F), k <= n_codebooks -> quantized latent from the first k levels."""
        z_q = None
        for i in range(codes.shape[1]):
            z_q_i = self.quantizers[i].embed(codes[:, i, :])
            z_q = z_q_i if z_q is None else z_q + z_q_i
        assert z_q is not None
        return z_q


# ----------------------------------------------------------------------------- the codec


class DAC(nn.Module):
    """Encoder + residual vector quantizer + decoder, with the official state-dict layout."""

    def __init__(self, config: DACConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DACConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a DACConfig or keyword arguments, not both")
        self.config = config
        assert config.latent_dim is not None
        self.encoder = Encoder(config.encoder_dim, config.encoder_rates, config.latent_dim)
        self.quantizer = ResidualVectorQuantizer(
            config.latent_dim, config.n_codebooks, config.codebook_size, config.codebook_dim
        )
        self.decoder = Decoder(config.latent_dim, config.decoder_dim, config.decoder_rates)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def preprocess(self, wav: Tensor) -> Tensor:
        """Right-pad with zeros to a multiple of the hop length (the official preprocess)."""
        length = wav.shape[-1]
        right_pad = math.ceil(length / self.hop_length) * self.hop_length - length
        return F.pad(wav, (0, right_pad))

    def encode(
        self, wav: Tensor, n_quantizers: int | None = None, return_z: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Waveform (N, 1, T) at ``sample_rate`` -> codes LongTensor (N, k, ceil(T / hop)).

        Only the first ``n_quantizers`` levels are computed (default: all); they are identical to
        the first levels of a full encode. With ``return_z`` also returns the quantized latent.
        """
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected a mono batch (N, 1, T), got shape {tuple(wav.shape)}")
        n = self.config.n_codebooks if n_quantizers is None else n_quantizers
        if not 1 <= n <= self.config.n_codebooks:
            raise ValueError(f"n_quantizers must be in [1, {self.config.n_codebooks}], got {n}")
        z = self.encoder(self.preprocess(wav))
        z_q, codes = self.quantizer(z, n)
        return (codes, z_q) if return_z else codes

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes (N, k, F) -> waveform (N, 1, ~F * hop), using only the first k <= n levels."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes (N, k, frames), got shape {tuple(codes.shape)}")
        k = codes.shape[1]
        if not 1 <= k <= self.config.n_codebooks:
            raise ValueError(f"codes have {k} levels; this model has {self.config.n_codebooks}")
        return self.decoder(self.quantizer.from_codes(codes.long()))

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantized latent (N, latent_dim, F) -> waveform (N, 1, ~F * hop)."""
        return self.decoder(z_q)


# ----------------------------------------------------------------------------- weight files


class DACLoadError(WeightsMismatch):
    """A weight file does not match the architecture its own kwargs describe."""


def check_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Strict key and shape check, raising one error that names every offending key."""
    try:
        check_weights(model.state_dict(), state_dict, "DAC state dict")
    except WeightsMismatch as e:
        raise DACLoadError(str(e)) from None


def load_dac(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> DAC:
    """Load an official-format DAC weight file (``{"state_dict", "metadata": {"kwargs"}}``).

    Loads with ``weights_only=True`` (no pickled code runs), builds the model from the file's own
    kwargs and matches keys and shapes strictly. Returns the model in eval mode on ``device``.
    """
    ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DACLoadError(f"{path}: not a DAC weight file (no 'state_dict' entry)")
    kwargs = (ckpt.get("metadata") or {}).get("kwargs")
    if not isinstance(kwargs, dict):
        raise DACLoadError(f"{path}: no metadata.kwargs with the model configuration")
    config = DACConfig.from_dict(kwargs)
    token = _SKIP_INIT.set(True)  # no random init of ~76M parameters only to overwrite them
    try:
        model = DAC(config)
    finally:
        _SKIP_INIT.reset(token)
    state_dict = ckpt["state_dict"]
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)  # copies (and casts) into float32 params
    return model.to(device).eval()


def save_dac(model: DAC, path: str | os.PathLike[str]) -> None:
    """Write ``model`` in the official file layout (also readable by ``dac.DAC.load``)."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state_dict, "metadata": {"kwargs": model.config.to_kwargs()}}, path)


# ----------------------------------------------------------------------------- tokenizer

class DACTokenizer(CodecTokenizer):
    """The Descript Audio Codec as a tokenizer: mono waveforms at the codec rate <-> (k, frames)
    uint16 codes (:class:`~trimodal.tokenizers.codec.CodecTokenizer`).

    Keeps the first ``n_keep`` residual levels (default 4, as the paper kept 4 of 8 codebooks):
    coarser audio, far fewer tokens per second. On CUDA, TF32 is off during calls unless
    ``allow_tf32`` (faster, but codes may then differ from CPU-made shards).
    """

    kind = "dac"

    @staticmethod
    def codebooks_of(model: DAC) -> int:
        return model.config.n_codebooks

    @staticmethod
    def load_model(path: str | os.PathLike[str]) -> Any:
        """Load an official-format weight file (see :func:`load_dac`)."""
        return load_dac(path)

    def encode(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """1-D float32 waveforms at ``sample_rate`` -> one uint16 array (n_keep, frames) each.

        The batch is right-padded with zeros to its longest item and encoded in one pass; each
        result is trimmed to its own ceil(len / hop) frames. The last frames of a shorter item can
        depend (slightly) on how much padding its batch added, because the encoder's receptive
        field reaches past the item's end; batch equal lengths together where that matters.
        """
        if len(batch) == 0:
            return []
        wavs = self._waveforms(batch)
        return self._encode_padded(wavs, max(w.shape[0] for w in wavs))

    def _decode_model(self, codes: Tensor) -> Tensor:
        return self.model.decode_codes(codes)
