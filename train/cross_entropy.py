"""A linear + cross-entropy loss head that never materialises the full [N × V] logits.

The objective scores each masked position over its modality block's predictable ids: ~100k
columns for text at paper scale. Computing ``hidden @ W.T`` in one go stores an [N × V] fp32
logits matrix, its logsumexp temporaries and, in backward, a same-sized gradient: at N = 13k
masked rows that is gigabytes for one head. :func:`linear_cross_entropy` returns the same two
per-row quantities the loss needs,

    ce_i  = lse_i − z_i[t_i]        (cross-entropy of the target)
    lse_i = log Σ_v exp z_iv        (for the z-loss term λ·Σ lse²)

with z = hidden · Wᵀ, differentiable w.r.t. ``hidden`` and ``weight`` through both outputs:
with upstream gradients g_ce, g_lse,

    ∂L/∂z_iv = g_ce_i · (softmax_iv − 1{v = t_i}) + g_lse_i · softmax_iv
             = (g_ce_i + g_lse_i) · softmax_iv − g_ce_i · 1{v = t_i}.

Implementations (``impl``):

- ``"reference"``: today's math in ``objective.py``, unchanged (``F.linear`` in the input
  dtype, upcast to fp32, ``logsumexp``, ``gather``). It materialises the logits; it is the exact
  CPU reference.
- ``"chunked"``: :class:`ChunkedLinearCrossEntropy`, pure PyTorch, any device. Tiles of at most
  ``row_chunk_size × chunk_size`` logits, computed in the input dtype (bf16 on GPU, as
  today's head) and reduced in fp32; backward recomputes each tile instead of storing it.
- ``"cce"``: Apple's ``cut-cross-entropy`` (Triton kernels, CUDA only), when importable.
- ``"auto"``: see :func:`resolve_impl`: ``cce`` → ``chunked`` on CUDA, ``reference`` elsewhere.

Chunking choice (``chunked``): the vocabulary is the outer loop. Each vocab chunk's weight
gradient [chunk, D] is then produced by *one* GEMM over all rows of the chunk (fp32
accumulation inside the GEMM, written straight into the output), and only the small hidden
gradient [N, D] is accumulated across chunks (fp32). The alternative (rows outer) would need a
[V, D] fp32 accumulator for the weight gradient, re-read and re-written once per row chunk:
1.2 GB per pass for a 100k × 3072 head. Rows are tiled too (``row_chunk_size``) so the peak
stays bounded when a step masks many positions; with the defaults and N ≤ 16,384 rows there is
one row tile and peak extra memory is O(N × chunk_size), independent of V.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "reference", "chunked", "cce")
DEFAULT_CHUNK_SIZE = 8192  # vocab columns per tile: 13 tiles for the 100,281-id text block
DEFAULT_ROW_CHUNK_SIZE = 16384  # rows per tile: one tile at the usual masked count per head


# ---- the reference (today's math) ---------------------------------------------------------


def reference_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(ce, lse)`` exactly as ``masked_diffusion_loss`` computes them today: full logits via
    ``F.linear`` (what ``nn.Linear`` heads call), upcast to fp32, logsumexp, gather."""
    logits = F.linear(hidden, weight).float()
    lse = torch.logsumexp(logits, dim=-1)
    ce = lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return ce, lse


# ---- chunked (pure PyTorch) ---------------------------------------------------------------


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` pieces of ``range(n)`` of at most ``size`` (the last may be shorter)."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where reductions and accumulators live: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def tile_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    """One tile of logits, hidden [n, D] · weight [v, D]ᵀ, computed in the inputs' dtype (as
    the ``nn.Linear`` head does) and returned in fp32 (fp64 stays fp64) for the reductions."""
    return (hidden @ weight.t()).to(acc_dtype(hidden.dtype))


def tile_target_logits(logits: Tensor, targets: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """The target's logit for rows whose target lies in this tile's columns
    ``[start, start + logits.shape[1])``: ``(values [n], inside [n] bool)``; values are
    meaningless where ``inside`` is False."""
    local = targets - start
    inside = (local >= 0) & (local < logits.shape[1])
    values = logits.gather(1, local.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    return values, inside


def tile_grad_logits_(
    logits: Tensor, lse: Tensor, g_ce: Tensor, g_lse: Tensor, targets: Tensor, start: int
) -> Tensor:
    """∂L/∂z for one fp32 tile, in place: (g_ce + g_lse)·softmax − g_ce·onehot(target).
    ``lse`` is the full-row logsumexp (so the tile's softmax is exact, not tile-local)."""
    probs = logits.sub_(lse.unsqueeze(1)).exp_()
    probs.mul_((g_ce + g_lse).unsqueeze(1))
    local = targets - start
    inside = (local >= 0) & (local < probs.shape[1])
    onehot = torch.where(inside, -g_ce, torch.zeros_like(g_ce))
    return probs.scatter_add_(1, local.clamp(0, probs.shape[1] - 1).unsqueeze(1), onehot.unsqueeze(1))


def chunked_forward(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, row_chunk_size: int
) -> tuple[Tensor, Tensor]:
    """``(ce, lse)`` in fp32 from tiles of at most ``row_chunk_size × chunk_size`` logits; the
    row logsumexp is combined across vocab tiles with ``logaddexp`` (stable, fp32). A target
    outside [0, V) leaves its ce NaN (loud, and no device sync to check it)."""
    n, v = hidden.shape[0], weight.shape[0]
    acc = acc_dtype(hidden.dtype)
    lse = torch.full((n,), -float("inf"), dtype=acc, device=hidden.device)
    target_logit = torch.full((n,), float("nan"), dtype=acc, device=hidden.device)
    for r0, r1 in spans(n, row_chunk_size):
        h, t = hidden[r0:r1], targets[r0:r1]
        for c0, c1 in spans(v, chunk_size):
            logits = tile_logits(h, weight[c0:c1])
            lse[r0:r1] = torch.logaddexp(lse[r0:r1], torch.logsumexp(logits, dim=1))
            values, inside = tile_target_logits(logits, t, c0)
            target_logit[r0:r1] = torch.where(inside, values, target_logit[r0:r1])
            del logits
    return lse - target_logit, lse


def chunked_backward(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    lse: Tensor,
    g_ce: Tensor,
    g_lse: Tensor,
    chunk_size: int,
    row_chunk_size: int,
    need_hidden: bool = True,
    need_weight: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """``(grad_hidden, grad_weight)`` by recomputing each logits tile. Vocab chunks outer: the
    weight gradient of a chunk is one GEMM over the rows (or, with several row tiles, an fp32
    [chunk, D] accumulator); the hidden gradient is accumulated across chunks in fp32."""
    n, d = hidden.shape
    v = weight.shape[0]
    dtype, device, acc = hidden.dtype, hidden.device, acc_dtype(hidden.dtype)
    row_spans = spans(n, row_chunk_size)
    grad_h = torch.zeros(n, d, dtype=acc, device=device) if need_hidden else None
    grad_w = (torch.zeros if n == 0 else torch.empty)(v, d, dtype=weight.dtype, device=device) if need_weight else None
    g_ce, g_lse = g_ce.to(acc), g_lse.to(acc)
    for c0, c1 in spans(v, chunk_size):
        w = weight[c0:c1]
        acc_w = None
        if need_weight and len(row_spans) > 1:
            acc_w = torch.zeros(c1 - c0, d, dtype=acc, device=device)
        for r0, r1 in row_spans:
            h = hidden[r0:r1]
            g = tile_grad_logits_(tile_logits(h, w), lse[r0:r1], g_ce[r0:r1], g_lse[r0:r1], targets[r0:r1], c0)
            g = g.to(dtype)
            if grad_h is not None:
                if dtype == acc:
                    grad_h[r0:r1].addmm_(g, w)
                else:
                    grad_h[r0:r1] += (g @ w).to(acc)
            if grad_w is not None:
                if acc_w is None:
                    torch.mm(g.t(), h, out=grad_w[c0:c1])
                elif dtype == acc:
                    acc_w.addmm_(g.t(), h)
                else:
                    acc_w += (g.t() @ h).to(acc)
            del g
        if acc_w is not None:
            grad_w[c0:c1].copy_(acc_w)
    return (grad_h.to(dtype) if grad_h is not None else None), grad_w


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper of :func:`chunked_forward` / :func:`chunked_backward`: saves only
    hidden, weight, targets and lse (never the logits). First-order only."""

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, row_chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        with torch.autocast(hidden.device.type, enabled=False):
            ce, lse = chunked_forward(hidden, weight, targets, chunk_size, row_chunk_size)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunks = (chunk_size, row_chunk_size)
        return ce, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_ce: Tensor, g_lse: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = chunked_backward(
                hidden, weight, targets, lse, g_ce, g_lse, *ctx.chunks, need_hidden=need_h, need_weight=need_w
            )
        return grad_h, grad_w, None, None, None


# ---- cut-cross-entropy (optional, CUDA) ---------------------------------------------------


@lru_cache(maxsize=1)
def _cce_module() -> ModuleType | None:
    """``cut_cross_entropy`` if it is installed and imports (it needs Triton), else None."""
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return None
    try:
        return importlib.import_module("cut_cross_entropy")
    except Exception:  # a broken install (e.g. no Triton) counts as unavailable
        return None


def cce_available() -> bool:
    """Whether the ``cce`` implementation can be imported here (it still needs CUDA tensors)."""
    return _cce_module() is not None


def cce_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, options: Mapping[str, Any] | None = None
) -> tuple[Tensor, Tensor]:
    """``(ce, lse)`` through ``cut_cross_entropy.linear_cross_entropy`` (reduction "none").

    CCE returns only the per-row loss; lse is rebuilt as ce + z[target], with the target
    logit an O(N·D) dot product under plain autograd, so the z-loss gradient is exact:
    ∂lse = ∂ce + ∂z_t. ``options`` go to CCE (e.g. ``filter_eps=None`` turns off its gradient
    filtering, which by default skips softmax entries below ~2⁻¹² in backward)."""
    module = _cce_module()
    if module is None:
        raise RuntimeError("impl='cce' needs the cut-cross-entropy package (pip install cut-cross-entropy; Triton, CUDA)")
    if hidden.device.type != "cuda" or weight.device.type != "cuda":
        raise RuntimeError(f"impl='cce' runs on CUDA tensors only, got {hidden.device} / {weight.device}")
    ce = module.linear_cross_entropy(hidden, weight, targets, reduction="none", **dict(options or {})).float()
    target_logit = (hidden.float() * weight[targets].float()).sum(-1)
    return ce, ce + target_logit


# ---- dispatch -----------------------------------------------------------------------------


def resolve_impl(impl: str, device: torch.device | str, cce_importable: bool | None = None) -> str:
    """The implementation ``impl`` means on ``device``. Policy for ``"auto"``:

    - CUDA: ``cce`` when importable (the paper's kernels), else ``chunked`` (the full logits
      are what runs out of memory at scale; the tiles are bf16 like today's head);
    - anything else (CPU): ``reference``, today's exact math, so CPU runs and tests keep
      their numbers. Request ``chunked`` explicitly to bound CPU memory.
    Explicit ``cce`` where it cannot run raises instead of silently changing the numerics."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device_type = torch.device(device).type
    importable = cce_available() if cce_importable is None else cce_importable
    if impl == "auto":
        if device_type == "cuda":
            return "cce" if importable else "chunked"
        return "reference"
    if impl == "cce":
        if not importable:
            raise RuntimeError("impl='cce' needs the cut-cross-entropy package (pip install cut-cross-entropy; Triton, CUDA)")
        if device_type != "cuda":
            raise RuntimeError(f"impl='cce' runs on CUDA tensors only, got device {device_type!r}")
    return impl


def compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on for the device (what
    ``nn.Linear`` would use under it), else the promoted dtype of the two inputs."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _check(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, row_chunk_size: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, D] and weight [V, D], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1] or targets.dtype != torch.long:
        raise ValueError(f"need targets [N] int64, got {tuple(targets.shape)} {targets.dtype}")
    if chunk_size < 1 or row_chunk_size < 1:
        raise ValueError(f"chunk sizes must be positive, got {chunk_size}, {row_chunk_size}")
    # A range check costs a device sync on CUDA: there an out-of-range target gives NaN instead.
    if targets.numel() and targets.device.type == "cpu":
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise IndexError(f"targets must lie in [0, {weight.shape[0]}), got [{lo}, {hi}]")


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    row_chunk_size: int = DEFAULT_ROW_CHUNK_SIZE,
    impl: str = "auto",
    cce_options: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(ce [N], lse [N])`` in fp32 of the head ``hidden [N, D] · weight [V, D]ᵀ``
    against ``targets [N]`` (int64, in [0, V)), differentiable w.r.t. hidden and weight
    through both outputs, without storing [N, V] logits (except ``impl="reference"``).
    (``chunked`` keeps fp64 inputs in fp64, for gradcheck.)

    ``chunk_size``: vocab columns per tile; ``row_chunk_size``: rows per tile (chunked only).
    N = 0 is fine: empty outputs, zero weight gradient (ranks with no masked rows still run
    the head). Under autocast the matmuls use autocast's dtype, as ``nn.Linear`` would."""
    _check(hidden, weight, targets, chunk_size, row_chunk_size)
    impl = resolve_impl(impl, hidden.device)
    if impl == "reference":
        return reference_linear_cross_entropy(hidden, weight, targets)
    dtype = compute_dtype(hidden, weight)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    if impl == "cce" and hidden.shape[0] > 0:  # zero rows: CCE's kernels are not needed
        with torch.autocast(hidden.device.type, enabled=False):
            return cce_linear_cross_entropy(hidden, weight, targets, cce_options)
    ce, lse = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, row_chunk_size)
    return ce, lse
