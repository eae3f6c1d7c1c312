"""MoVQGAN image tokenizer: the SBER-MoVQGAN architecture, implemented here (docs/tokenizers.md).

Why in-project: the public ``movqgan_67M/102M/270M.ckpt`` files must load with strict key and
shape matching, without the upstream package (and its Lightning/omegaconf stack) in the
pipeline's environment. The module names below reproduce the upstream state-dict keys exactly:

- encoder: VQGAN-style conv/ResnetBlock/Downsample/attention stack, plain GroupNorm;
- ``quant_conv`` -> vector quantizer (``quantize.embedding.weight``) -> ``post_quant_conv``;
- decoder: the MoVQ decoder, whose every normalisation is a :class:`SpatialNorm`, i.e. a GroupNorm
  modulated per pixel by 1x1 convs of the (nearest-upsampled) quantized latent ``zq``.

Images are RGB, NCHW, in [-1, 1]; codes are in row-major order over the latent grid.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimodal.tokenizers.base import state_dict_fingerprint
from trimodal.tokenizers.runtime import WeightsMismatch, check_weights, inference, resolve_device

__all__ = [
    "INFERENCE_PREFIXES",
    "PUBLIC_CONFIGS",
    "MoVQGAN",
    "MoVQGANConfig",
    "MoVQGANLoadError",
    "MoVQGANTokenizer",
    "load_movqgan",
    "save_movqgan",
]

#: State-dict prefixes used at inference; everything else in a checkpoint (loss, discriminator,
#: EMA, optimizer...) is training-only and ignored.
INFERENCE_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")

_GN_GROUPS = 32
_GN_EPS = 1e-6


def _public(ch: int, num_res_blocks: int) -> dict[str, Any]:
    return {
        "ddconfig": {
            "double_z": False,
            "z_channels": 4,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": ch,
            "ch_mult": [1, 2, 2, 4],
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": [32],
            "dropout": 0.0,
        },
        "embed_dim": 4,
        "n_embed": 16384,
    }


#: Constructor configs of the three public checkpoints (embedded: the reference folder is not
#: shipped with the package). 256 px -> 32x32 latent grid, codebook 16,384 x 4.
PUBLIC_CONFIGS: dict[str, dict[str, Any]] = {
    "movqgan_67M": _public(ch=128, num_res_blocks=2),
    "movqgan_102M": _public(ch=128, num_res_blocks=4),
    "movqgan_270M": _public(ch=256, num_res_blocks=2),
}


@dataclass
class MoVQGANConfig:
    """The upstream ``ddconfig`` fields plus ``embed_dim`` and ``n_embed`` (codebook size)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    double_z: bool = False
    dropout: float = 0.0
    embed_dim: int = 4
    n_embed: int = 16384

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)

    @classmethod
    def tiny(cls) -> "MoVQGANConfig":
        """A small architecture (64 px → 8 × 8 codes of 512) for the demo and tests, with random
        weights: it exercises every code path of the real model in milliseconds."""
        return cls.from_dict({
            "ddconfig": {"double_z": False, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                         "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0},
            "embed_dim": 4, "n_embed": 512,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MoVQGANConfig":
        """Accept the upstream nested form (``{"ddconfig": {...}, "embed_dim", "n_embed"}``) or flat."""
        flat = dict(d.get("ddconfig", {}))
        flat.update({k: v for k, v in d.items() if k != "ddconfig"})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown MoVQGAN config fields: {unknown}")
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        """The upstream nested form (what the sidecar ``.json`` holds and the fingerprint hashes)."""
        d = asdict(self)
        top = {"embed_dim": d.pop("embed_dim"), "n_embed": d.pop("n_embed")}
        d["ch_mult"] = list(d["ch_mult"])
        d["attn_resolutions"] = list(d["attn_resolutions"])
        return {"ddconfig": d, **top}

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class MoVQGANLoadError(WeightsMismatch):
    """A checkpoint that does not match the architecture (lists the offending keys)."""


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GN_GROUPS, channels, eps=_GN_EPS, affine=True)


class SpatialNorm(nn.Module):
    """GroupNorm whose output is scaled and shifted per pixel from the quantized latent.

    This is what makes the decoder "modulated": ``norm(f) * conv_y(zq) + conv_b(zq)`` with ``zq``
    resized (nearest) to ``f``'s grid, so codebook information reaches every decoder stage.
    """

    def __init__(self, channels: int, zq_channels: int) -> None:
        super().__init__()
        self.norm_layer = _group_norm(channels)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        if zq.shape[-2:] != f.shape[-2:]:
            zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def _make_norm(channels: int, zq_channels: int | None) -> nn.Module:
    # The encoder's state-dict keys are ``norm1.weight`` (a bare GroupNorm); the decoder's are
    # ``norm1.norm_layer.weight`` etc. (a SpatialNorm).
    return _group_norm(channels) if zq_channels is None else SpatialNorm(channels, zq_channels)


def _apply_norm(norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
    return norm(x, zq) if isinstance(norm, SpatialNorm) else norm(x)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3, twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int, dropout: float, zq_channels: int | None) -> None:
        super().__init__()
        self.norm1 = _make_norm(c_in, zq_channels)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _make_norm(c_out, zq_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(_apply_norm(self.norm1, x, zq)))
        h = self.conv2(self.dropout(F.silu(_apply_norm(self.norm2, h, zq))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv q/k/v/proj and a residual."""

    def __init__(self, channels: int, zq_channels: int | None) -> None:
        super().__init__()
        self.norm = _make_norm(channels, zq_channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        n, c, hh, ww = x.shape
        h = _apply_norm(self.norm, x, zq)

        def seq(t: Tensor) -> Tensor:  # [N, C, H, W] -> [N, 1, H*W, C]
            return t.reshape(n, 1, c, hh * ww).transpose(-1, -2)

        out = F.scaled_dot_product_attention(seq(self.q(h)), seq(self.k(h)), seq(self.v(h)))
        out = out.transpose(-1, -2).reshape(n, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after an asymmetric (right/bottom) zero pad, as in VQGAN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block.<i>``, optional ``attn.<i>``, optional down/upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, zq_channels: int | None) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, zq_channels)
        self.attn_1 = AttnBlock(channels, zq_channels)
        self.block_2 = ResnetBlock(channels, channels, dropout, zq_channels)

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h, zq), zq), zq)


class Encoder(nn.Module):
    """Image -> continuous latent at 1/2**(len(ch_mult)-1) resolution."""

    def __init__(self, cfg: MoVQGANConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res = cfg.resolution
        c_in = cfg.ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            c_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c_in, c_out, cfg.dropout, None))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_in, None))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(c_in, cfg.dropout, None)
        self.norm_out = _group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MoVQDecoder(nn.Module):
    """Latent -> image, every norm conditioned on the quantized latent ``zq`` (SpatialNorm)."""

    def __init__(self, cfg: MoVQGANConfig) -> None:
        super().__init__()
        zq_ch = cfg.embed_dim
        n_levels = len(cfg.ch_mult)
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in, cfg.dropout, zq_ch)
        levels: list[_Level] = []
        for i in reversed(range(n_levels)):
            level = _Level()
            c_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, c_out, cfg.dropout, zq_ch))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_in, zq_ch))
            if i != 0:
                level.upsample = Upsample(c_in)
                res *= 2
            levels.insert(0, level)  # stored low index = high resolution, as upstream
        self.up = nn.ModuleList(levels)
        self.norm_out = SpatialNorm(c_in, zq_ch)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor, zq: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z), zq)
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h, zq)
                if len(level.attn):
                    h = level.attn[i](h, zq)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (squared L2), no training-time machinery."""

    #: Latent vectors compared with the codebook per chunk: bounds the [chunk, n_embed] distance
    #: matrix (4096 x 16384 floats = 256 MiB) whatever the batch size.
    chunk = 4096

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        # Passing the weight skips nn.Embedding's own init, which on the meta device (used when
        # loading) imports torch._dynamo: seconds of start-up for nothing.
        weight = torch.empty(n_embed, embed_dim)
        if not weight.is_meta:
            weight.normal_()
        self.embedding = nn.Embedding(n_embed, embed_dim, _weight=weight)

    def codes(self, z: Tensor) -> Tensor:
        """[N, D, h, w] latent -> [N, h*w] int64 indices, row-major over (h, w)."""
        n, d, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        e_sq = (e * e).sum(1)
        out = []
        for part in flat.split(self.chunk):
            # |z|^2 is constant per row and does not change the argmin.
            dist = torch.addmm(e_sq, part, e.t(), alpha=-2.0)
            out.append(dist.argmin(1))
        return torch.cat(out).reshape(n, hh * ww)

    def lookup(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """[N, h*w] indices -> [N, D, h, w] quantized latent."""
        n = codes.shape[0]
        zq = self.embedding(codes.reshape(n, -1))  # [N, h*w, D]
        return zq.transpose(1, 2).reshape(n, -1, grid[0], grid[1])


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class MoVQGAN(nn.Module):
    """Encoder + quantizer + MoVQ decoder, inference only."""

    def __init__(self, config: MoVQGANConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, MoVQGANConfig) else MoVQGANConfig.from_dict(config)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = MoVQDecoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid for an image size; the size must be a multiple of the downsample factor."""
        f = self.config.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of {f}")
        return height // f, width // f

    def encode_latent(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] in [-1, 1] -> continuous latent after ``quant_conv`` [N, D, h, w]."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected [N, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        self.latent_grid(x.shape[-2], x.shape[-1])
        return self.quant_conv(self.encoder(x))

    def encode_codes(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] in [-1, 1] -> int64 codes [N, h*w], row-major over the latent grid."""
        return self.quantize.codes(self.encode_latent(x))

    def decode_quantized(self, zq: Tensor) -> Tensor:
        """Quantized latent [N, D, h, w] -> image [N, 3, H, W] (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(zq), zq)

    def decode_codes(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Codes [N, h*w] (or [N, h, w]) -> image [N, 3, H, W]; a square grid unless ``grid``."""
        if codes.ndim == 3:
            grid = grid or (codes.shape[1], codes.shape[2])
            codes = codes.reshape(codes.shape[0], -1)
        if codes.ndim != 2:
            raise ValueError(f"expected codes [N, h*w] or [N, h, w], got {tuple(codes.shape)}")
        if grid is None:
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes do not form a square grid; pass grid=")
            grid = (side, side)
        if grid[0] * grid[1] != codes.shape[1]:
            raise ValueError(f"grid {grid} does not hold {codes.shape[1]} codes")
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_embed):
            raise ValueError(f"codes outside [0, {self.config.n_embed})")
        return self.decode_quantized(self.quantize.lookup(codes, grid))


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _sidecar(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + ".json")


def save_movqgan(model: MoVQGAN, path: str | os.PathLike[str]) -> None:
    """Write ``{"state_dict": ...}`` (torch.save) and the config as ``<path>.json``, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, tmp)
    os.replace(tmp, path)
    side = _sidecar(path)
    tmp_side = side.with_name(side.name + ".tmp")
    tmp_side.write_text(json.dumps(model.config.to_dict(), indent=1))
    os.replace(tmp_side, side)


_NOT_MOVQGAN = "not a MoVQGAN checkpoint (a torch state dict with {} keys)".format(
    ", ".join(p + "*" for p in INFERENCE_PREFIXES))


def _torch_load_weights(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)``; a file it refuses (another format, or one that pickles
    objects) is named as not a MoVQGAN checkpoint. Torch's own advice to retry with
    ``weights_only=False`` (running the file's code) is deliberately not relayed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, OSError) as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:2] != b"PK" and head[:1] != b"\x80":
            what = "it is not a file torch.save writes (neither a zip archive nor a pickle)"
        elif "unsupported global" in str(e).lower():
            what = "it pickles objects other than tensors, which are never loaded"
        else:
            what = "torch cannot read it as a weights file"
        raise MoVQGANLoadError(f"{path}: {_NOT_MOVQGAN}: {what}") from None


def _inference_state_dict(obj: Any, path: str | os.PathLike[str]) -> dict[str, Tensor]:
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise MoVQGANLoadError(f"{path}: {_NOT_MOVQGAN}: it holds a {type(obj).__name__}, not a state dict")
    out = {k: v for k, v in sd.items() if isinstance(k, str) and k.startswith(INFERENCE_PREFIXES)}
    if not out:
        some = ", ".join(sorted(map(str, sd))[:3]) or "none"
        raise MoVQGANLoadError(f"{path}: {_NOT_MOVQGAN}: it has none of them (keys: {some}{', ...' if len(sd) > 3 else ''})")
    return out


def _expected_shapes(cfg: MoVQGANConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = MoVQGAN(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatches(
    sd: dict[str, Tensor], expected: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape) if isinstance(sd[k], Tensor) else type(sd[k]).__name__}"
        f" vs model {expected[k]}"
        for k in set(sd) & set(expected)
        if not isinstance(sd[k], Tensor) or tuple(sd[k].shape) != expected[k]
    )
    return missing, unexpected, wrong


def _resolve_config(
    path: str | os.PathLike[str], config: MoVQGANConfig | dict[str, Any] | str | None, sd: dict[str, Tensor]
) -> MoVQGANConfig:
    """Given config > sidecar ``<path>.json`` > public name in the file name > public shapes."""
    if isinstance(config, MoVQGANConfig):
        return config
    if isinstance(config, str):
        if config not in PUBLIC_CONFIGS:
            raise ValueError(f"unknown MoVQGAN config name {config!r}; known: {sorted(PUBLIC_CONFIGS)}")
        return MoVQGANConfig.from_dict(PUBLIC_CONFIGS[config])
    if isinstance(config, dict):
        return MoVQGANConfig.from_dict(config)
    side = _sidecar(path)
    if side.is_file():
        return MoVQGANConfig.from_dict(json.loads(side.read_text()))
    stem = Path(path).name.split(".")[0]
    for name in sorted(PUBLIC_CONFIGS, key=len, reverse=True):
        if name.lower() == stem.lower():
            return MoVQGANConfig.from_dict(PUBLIC_CONFIGS[name])
    for cfg_dict in PUBLIC_CONFIGS.values():
        cfg = MoVQGANConfig.from_dict(cfg_dict)
        if not any(_mismatches(sd, _expected_shapes(cfg))):
            return cfg
    raise MoVQGANLoadError(
        f"{path}: no config given, no sidecar {side.name}, and the weights match none of "
        f"{sorted(PUBLIC_CONFIGS)}; pass config="
    )


def load_movqgan(
    path: str | os.PathLike[str],
    config: MoVQGANConfig | dict[str, Any] | str | None = None,
    device: str | torch.device = "cpu",
) -> MoVQGAN:
    """Load a MoVQGAN checkpoint with strict key and shape matching on the inference keys.

    ``path`` holds a Lightning checkpoint (``{"state_dict": ...}``, training-only keys ignored) or
    a bare state dict. ``config`` may be a :class:`MoVQGANConfig`, a dict, or a public name
    (``"movqgan_67M"``); if omitted it comes from ``<path>.json``, else from a public name in the
    file name, else from the public config whose shapes match. The model is returned in eval mode,
    float32, on ``device``.
    """
    obj = _torch_load_weights(path)
    sd = _inference_state_dict(obj, path)
    cfg = _resolve_config(path, config, sd)
    try:
        check_weights(_expected_shapes(cfg), sd, f"{path} (MoVQGAN config {cfg.to_dict()})")
    except WeightsMismatch as e:
        raise MoVQGANLoadError(str(e)) from None
    # Built on the meta device and filled by assignment: no random init, no second copy in memory.
    with torch.device("meta"):
        model = MoVQGAN(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)
    return model.float().to(device).eval()


# ----------------------------------------------------------------------------------------------
# Tokenizer interface
# ----------------------------------------------------------------------------------------------


def _one_image(img: Any) -> np.ndarray:
    """One image -> float32 [3, H, W] in [-1, 1] (uint8 HWC / PIL are scaled, float CHW kept)."""
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL.Image
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [H, W, 3], got {arr.shape}")
        return arr.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"float images must be [3, H, W] in [-1, 1], got {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _as_batch(images: Any) -> Tensor:
    """Tensor/array [N,3,H,W] or [3,H,W] in [-1,1], uint8 [N,H,W,3], or a list of images."""
    if isinstance(images, Tensor):
        x = images.float()
        return x[None] if x.ndim == 3 else x
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 and images.ndim == 4:
            return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
        if images.ndim == 4:
            return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return torch.from_numpy(_one_image(images))[None]
    arrays = [_one_image(im) for im in images]
    if not arrays:
        raise ValueError("empty image batch")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in one batch must share a size (preprocess them first), got {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays))


class MoVQGANTokenizer:
    """Images <-> uint16 code grids through a :class:`MoVQGAN` (the project's image tokenizer).

    ``allow_tf32`` is off by default so that GPU and CPU runs pick the same codes wherever the
    nearest codebook entry is not a near tie (a re-run must give the same tokens).

    ``batch_invariant`` (default on): on CPU each image is encoded alone with oneDNN off, so its
    codes do not depend on the images that share a call nor on the thread count (see
    :mod:`trimodal.tokenizers.runtime`); this costs about 3x the batched oneDNN time on CPU.
    Off, or on CUDA, images are encoded ``batch_size`` at a time: a code whose two nearest
    codebook entries are within float32 noise (~1e-6) can then differ with the batch.
    """

    def __init__(
        self,
        model: MoVQGAN,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        allow_tf32: bool = False,
        batch_invariant: bool = True,
    ) -> None:
        if model.config.n_embed > np.iinfo(np.uint16).max + 1:
            raise ValueError(f"codebook of {model.config.n_embed} does not fit uint16 codes")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.allow_tf32 = allow_tf32
        self.batch_invariant = bool(batch_invariant)
        self._fingerprint: str | None = None

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        config: MoVQGANConfig | dict[str, Any] | str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        allow_tf32: bool = False,
        batch_invariant: bool = True,
    ) -> "MoVQGANTokenizer":
        """Load a checkpoint (see :func:`load_movqgan`) straight onto ``device``."""
        model = load_movqgan(path, config, device=resolve_device(device))
        return cls(model, device=device, batch_size=batch_size, allow_tf32=allow_tf32, batch_invariant=batch_invariant)

    @property
    def vocab_size(self) -> int:
        return self.model.config.n_embed

    @property
    def config(self) -> MoVQGANConfig:
        return self.model.config

    @property
    def grid(self) -> tuple[int, int]:
        """Latent grid (h, w) at the model's configured ``resolution`` (32x32 for the public
        256 px models). Data made at another size records its own grid in the manifest."""
        r = self.config.resolution
        return self.model.latent_grid(r, r)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (as loaded, computed once) and the config."""
        if self._fingerprint is None:
            self._fingerprint = state_dict_fingerprint(self.model.state_dict(), self.config.to_dict())
        return self._fingerprint

    @property
    def _invariant(self) -> bool:
        return self.batch_invariant and self.device.type == "cpu"

    def _chunks(self, n: int, size: int | None = None) -> Iterable[slice]:
        size = size or self.batch_size
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def encode(self, images: Any) -> np.ndarray:
        """Images (see :func:`_as_batch`; values in [-1, 1]) -> uint16 codes [N, h, w]."""
        x = _as_batch(images)
        h, w = self.model.latent_grid(x.shape[-2], x.shape[-1])
        out = np.empty((x.shape[0], h, w), dtype=np.uint16)
        with inference(self.device, self.allow_tf32, batch_invariant=self._invariant):
            for sl in self._chunks(x.shape[0], 1 if self._invariant else None):
                codes = self.model.encode_codes(x[sl].to(self.device, non_blocking=True))
                out[sl] = codes.reshape(-1, h, w).cpu().numpy().astype(np.uint16)
        return out

    def decode(self, codes: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Codes [N, h, w] (or one grid [h, w]) -> uint8 images [N, H, W, 3]."""
        arr = np.asarray(codes)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"expected codes [N, h, w], got {arr.shape}")
        n, h, w = arr.shape
        f = self.config.downsample_factor
        out = np.empty((n, h * f, w * f, 3), dtype=np.uint8)
        with inference(self.device, self.allow_tf32):
            for sl in self._chunks(n):
                t = torch.from_numpy(arr[sl].astype(np.int64)).to(self.device)
                img = self.model.decode_codes(t, grid=(h, w))
                img = ((img.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
                out[sl] = img.permute(0, 2, 3, 1).cpu().numpy()
        return out
