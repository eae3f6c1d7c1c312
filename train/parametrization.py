"""Width/depth parametrizations: ``standard``, or CompleteP for hyperparameter transfer.

Hyperparameters tuned on a base model (width ``base_dim``, ``base_layers`` blocks) transfer along
the ladder (width = 128·depth) when init, learning rates, weight decay, Adam ε and the residual
branches scale with the width multiplier m_N = d/d_base and the depth multiplier m_L = L/L_base.
CompleteP (Dey et al. 2025, "Don't be lazy: CompleteP enables compute-efficient deep
transformers", arXiv 2505.01618) is µP in width plus a residual multiplier 1/m_L^α in depth, with
α = 1 (``depth_alpha``; α = 0.5 is Depth-µP). The rules, per parameter role, for AdamW (the
paper's Table 1, its summary of parameterizations, with the AdamW ε rule of its eq. 40; its
coordinate check is the diagnostic, ``trimodal.experiments.coord_check``)::

    role            init std        LR                   WD        ε                    forward
    embedding       σ               η                    λ         ε/m_N                —
    hidden matrix   σ/√m_N          η/m_N · m_L^(α−1)    λ·m_N     ε/(m_N · m_L^α)      branch × m_L^(−α)
    hidden norm     1               η · m_L^(α−1)        0         ε/(m_N · m_L^α)      —
    final norm      1               η                    0         ε/m_N                —
    head            σ/m_N           η/m_N                λ·m_N     ε                    — (see below)

Why, row by row:

* embedding: a one-hot input has O(1) fan-in, so an O(1) init and an O(1) Adam step already give
  O(1) coordinates at any width; its gradient shrinks like 1/m_N (it reaches the table through the
  1/m_N-scaled head), so ε follows it, or ε would swamp √v at large width.
* hidden matrix (qkv, proj, gate, fc1, fc2): variance ∝ 1/fan_in keeps W·x O(1) at init; an Adam
  step moves every entry by ~η, so W·x moves by ~η·fan_in and η ∝ 1/fan_in keeps the change O(1)
  (µP). In depth, each of the L branches is multiplied by m_L^(−α); with α = 1 a branch's update
  must then be O(1) per block for the sum of L branches to move the stream by O(1), hence the
  factor m_L^(α−1) (= 1 for CompleteP). Gradients of hidden weights scale like 1/(m_N·m_L^α) (the
  width and the residual multiplier), so ε scales the same way (eq. 40). Weight decay is
  "independent": λ·m_N keeps η·λ, the per-step shrink of PyTorch's decoupled decay and its
  timescale 1/(η·λ), the same at every width (and, with α = 1, every depth).
* hidden norms (norm1, norm2, q_norm, k_norm) are vector-like: O(1) gains, O(1) LR in width,
  the same depth factor m_L^(α−1) as the block's matrices, ε as the block's gradients. No decay.
* final norm: outside the residual branches, so no depth factor; its gradient comes through the
  head (1/m_N), so ε/m_N.
* head (unembedding): µP multiplies the logits by 1/m_N (init σ, LR η, WD λ, ε ε/m_N). Here that
  multiplier is absorbed into the weight, W' = W/m_N, which is exactly the same AdamW trajectory
  (Adam is invariant to the gradient scale once ε is rescaled with it): init σ/m_N, LR η/m_N,
  WD λ·m_N (η'·λ' = η·λ) and ε·m_N·(1/m_N) = ε. So the forward pass of the heads (called by the
  objective, the sampler and the evaluator) is unchanged and a checkpoint holds the effective
  weights; only the global gradient-norm clip sees the head's gradient m_N times larger.

Width multipliers are per matrix: fan_in / base fan_in (= d/d_base for all but fc2, whose fan_in
is the rounded SwiGLU width). Attention keeps its 1/√head_dim scale: on the ladder the head
dimension is fixed (128), so µP's 1/head_dim rule is a constant there. ``standard`` is today's
model (trunc-normal σ everywhere, no multipliers) and builds it bit for bit. η, λ, β and ε are
the run's values after the SDE batch reparameterisation (``reparam``), when that is on: it
transfers along batch size and horizon, this along width and depth, and the two compose.

Table 6 of the tri-modal paper (``table="paper_table6"``) gives per-module multipliers (LR, WD,
α1, α2, ε, Init) found at the base model, plus factors for the first and second half of the
blocks; they multiply the rule's multipliers (a block's parameters get their module's row times
their half's row). The paper does not say what α1/α2 act on; here they scale 1 − β, the inverse
EMA timescale of Adam's moments: β' = 1 − α·(1 − β), floored at 0 (``beta_rule="one_minus"``), or
β' = β^α (``"power"``, the convention of the SDE reparameterisation). Multiplying β itself is ruled
out by the table: α1 = 4.508 (Unemb norm) would give β1 = 4.06. "Init" multiplies a matrix's init
std and a norm's initial gain (1). Norms are never decayed (the trainer's policy), so the WD
column of the norm rows has no effect; the task-token table has no row (multipliers 1).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trimodal.config import option

if TYPE_CHECKING:  # model.py imports this module lazily; keep the import one-way at load time
    from torch import Tensor

    from trimodal.tokenizers.vocab import VocabLayout
    from trimodal.train.model import ModelConfig, Transformer

KINDS = ("standard", "completep")
TABLES = ("paper_table6",)
BETA_RULES = ("one_minus", "power")
ROLES = ("embedding", "hidden", "hidden_norm", "final_norm", "head")


@dataclass
class ParamConfig:
    """The ``param`` section of a training config. ``base_dim``/``base_layers``: the model the
    hyperparameters were tuned on (multipliers are 1 there); ``depth_alpha``: α of the residual
    multiplier (L_base/L)^α, in [0.5, 1]; ``table``: optional per-module multipliers on top."""

    kind: str = option("standard", help="standard (today's model) or completep (µP in width + depth-scaled branches)")
    base_dim: int = option(256, help="width the hyperparameters were tuned at (multipliers are 1 there)")
    base_layers: int = option(2, help="depth the hyperparameters were tuned at")
    depth_alpha: float = option(1.0, help="α of the residual multiplier (L_base/L)^α, in [0.5, 1]; CompleteP: 1")
    table: str | None = option(None, help="per-module multipliers on top: null or paper_table6")
    beta_rule: str = option("one_minus", help="what a table's α1/α2 do: one_minus (1-β ← α(1-β)) or power (β ← β^α)")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"param.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.table is not None and self.table not in TABLES:
            raise ValueError(f"param.table must be null or one of {list(TABLES)}, got {self.table!r}")
        if self.beta_rule not in BETA_RULES:
            raise ValueError(f"param.beta_rule must be one of {list(BETA_RULES)}, got {self.beta_rule!r}")
        if self.base_dim <= 0 or self.base_dim % 2 or self.base_layers <= 0:
            raise ValueError(f"param.base_dim (even) and param.base_layers must be positive, "
                             f"got {self.base_dim}, {self.base_layers}")
        if not 0.5 <= self.depth_alpha <= 1.0:
            raise ValueError(f"param.depth_alpha must be in [0.5, 1] (CompleteP: 1), got {self.depth_alpha}")

    @property
    def is_identity(self) -> bool:
        """True when nothing changes: the model and optimizer are built exactly as without it."""
        return self.kind == "standard" and self.table is None


@dataclass(frozen=True)
class Multipliers:
    """Factors on the base values: init std (a norm: its initial gain), lr, weight decay, ε, and
    α1/α2 on 1 − β1 / 1 − β2 (see :func:`scale_beta`)."""

    init: float = 1.0
    lr: float = 1.0
    wd: float = 1.0
    beta1: float = 1.0
    beta2: float = 1.0
    eps: float = 1.0

    def __mul__(self, other: "Multipliers") -> "Multipliers":
        return Multipliers(*(a * b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


ONE = Multipliers()


def _row(lr: float, wd: float, a1: float, a2: float, eps: float, init: float) -> Multipliers:
    """A Table 6 row in the paper's column order (LR, WD, α1, α2, ε, Init)."""
    return Multipliers(init=init, lr=lr, wd=wd, beta1=a1, beta2=a2, eps=eps)


# The tri-modal paper's Table 6: per-module multipliers at the base model, and per depth half.
PAPER_TABLE6: dict[str, Multipliers] = {
    "emb.audio": _row(2.192, 1.009, 0.962, 1.493, 1.494, 1.826),
    "emb.image": _row(1.013, 0.864, 2.108, 0.685, 0.734, 0.554),
    "emb.text": _row(3.937, 1.593, 1.421, 1.791, 0.317, 0.379),
    "unemb.audio": _row(1.633, 1.510, 3.442, 0.594, 0.742, 3.422),
    "unemb.image": _row(1.655, 1.213, 1.929, 1.042, 0.635, 1.524),
    "unemb.text": _row(3.008, 0.737, 1.346, 0.955, 1.206, 0.341),
    "unemb_norm": _row(2.305, 0.817, 4.508, 2.740, 1.938, 2.175),
    "attn_qkv": _row(1.714, 0.821, 0.173, 0.557, 0.391, 2.498),
    "attn_proj": _row(0.630, 0.354, 0.256, 0.339, 1.627, 4.732),
    "attn_q_norm": _row(0.535, 0.731, 1.530, 0.902, 0.848, 1.344),
    "attn_k_norm": _row(0.754, 0.497, 1.074, 0.822, 0.368, 0.436),
    "mlp_gate": _row(0.489, 0.634, 1.171, 1.870, 4.913, 0.643),
    "mlp_fc1": _row(1.271, 1.295, 1.590, 3.309, 1.415, 1.944),
    "mlp_fc2": _row(1.405, 1.308, 2.684, 0.655, 1.790, 0.878),
    "norm1": _row(1.311, 1.105, 0.282, 1.161, 1.477, 2.171),
    "norm2": _row(0.899, 0.525, 1.533, 1.789, 0.712, 1.189),
    "depth_0_50": _row(1.102, 0.725, 1.030, 3.053, 0.663, 0.997),
    "depth_50_100": _row(0.877, 1.018, 0.911, 1.149, 2.645, 0.485),
}
TABLE_DATA = {"paper_table6": PAPER_TABLE6}


# ---- which parameter is which --------------------------------------------------------------------


@dataclass(frozen=True)
class ParamInfo:
    """A parameter's role (a row of the rules), its Table 6 module (None: no row) and block."""

    name: str
    role: str
    module: str | None
    layer: int | None = None


# leaf name inside a block → (role, Table 6 module)
_BLOCK_LEAVES = {
    "attn.qkv.weight": ("hidden", "attn_qkv"),
    "attn.proj.weight": ("hidden", "attn_proj"),
    "attn.q_norm.weight": ("hidden_norm", "attn_q_norm"),
    "attn.k_norm.weight": ("hidden_norm", "attn_k_norm"),
    "mlp.gate.weight": ("hidden", "mlp_gate"),
    "mlp.fc1.weight": ("hidden", "mlp_fc1"),
    "mlp.fc2.weight": ("hidden", "mlp_fc2"),
    "norm1.weight": ("hidden_norm", "norm1"),
    "norm2.weight": ("hidden_norm", "norm2"),
}
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")
_BLOCK = re.compile(r"layers\.(\d+)\.(.+)")
_TABLE = re.compile(r"(embeddings|heads)\.(\w+)\.weight")


def canonical_name(name: str) -> str:
    """A parameter name without the wrappers that activation checkpointing, ``torch.compile`` or
    DDP insert, so the same rule applies however the model is wrapped."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name[len("module."):] if name.startswith("module.") else name


def classify(name: str, ndim: int = 2) -> ParamInfo:
    """The role of ``name`` (a ``Transformer`` parameter). A parameter of a block that the table
    above does not know (a new one) is a hidden matrix if 2-D, else a hidden norm-like vector;
    one outside the blocks that is not an embedding, head or the final norm is an error (no rule
    should apply silently)."""
    name = canonical_name(name)
    if m := _BLOCK.fullmatch(name):
        role, module = _BLOCK_LEAVES.get(m.group(2), ("hidden" if ndim >= 2 else "hidden_norm", None))
        return ParamInfo(name, role, module, int(m.group(1)))
    if m := _TABLE.fullmatch(name):
        kind, modality = m.groups()
        if kind == "embeddings":
            return ParamInfo(name, "embedding", None if modality == "task" else f"emb.{modality}")
        return ParamInfo(name, "head", f"unemb.{modality}")
    if name == "norm.weight":
        return ParamInfo(name, "final_norm", "unemb_norm")
    raise ValueError(f"no parametrization rule for parameter {name!r}")


# ---- the rules (pure) -----------------------------------------------------------------------------


def width_multiplier(fan_in: int, base_fan_in: int) -> float:
    """m_N of one matrix: its fan-in over the base model's."""
    return fan_in / base_fan_in


def depth_multiplier(cfg: "ModelConfig", p: ParamConfig) -> float:
    """m_L = L / L_base."""
    return cfg.n_layers / p.base_layers


def residual_multiplier(cfg: "ModelConfig", p: ParamConfig) -> float:
    """The factor on every residual branch: (L_base/L)^α under CompleteP, 1 otherwise."""
    if p.kind != "completep":
        return 1.0
    return depth_multiplier(cfg, p) ** -p.depth_alpha


def completep_rule(role: str, m_n: float, m_l: float, alpha: float) -> Multipliers:
    """One row of the rules in the module docstring (m_n: width, m_l: depth multiplier)."""
    depth_lr = m_l ** (alpha - 1.0)
    hidden_eps = 1.0 / (m_n * m_l**alpha)
    if role == "embedding":
        return Multipliers(eps=1.0 / m_n)
    if role == "hidden":
        return Multipliers(init=m_n**-0.5, lr=depth_lr / m_n, wd=m_n, eps=hidden_eps)
    if role == "hidden_norm":
        return Multipliers(lr=depth_lr, eps=hidden_eps)
    if role == "final_norm":
        return Multipliers(eps=1.0 / m_n)
    if role == "head":
        return Multipliers(init=1.0 / m_n, lr=1.0 / m_n, wd=m_n)
    raise ValueError(f"unknown role {role!r}")


def _base_fan_ins(cfg: "ModelConfig", p: ParamConfig) -> tuple[int, int]:
    """(fan_in of a matrix reading the stream, fan_in of fc2) at the model's and the base width."""
    base = dataclasses.replace(cfg, dim=p.base_dim, n_layers=p.base_layers, n_heads=1)
    return p.base_dim, base.hidden_dim


def table_multipliers(info: ParamInfo, n_layers: int, table: str | None) -> Multipliers:
    """The Table 6 factors of one parameter: its module's row times its depth half's row (for a
    block's parameters; block i is in the first half when i < L/2)."""
    if table is None:
        return ONE
    rows = TABLE_DATA[table]
    out = rows.get(info.module, ONE) if info.module else ONE
    if info.layer is not None:
        out = out * rows["depth_0_50" if 2 * info.layer < n_layers else "depth_50_100"]
    return out


def multipliers(cfg: "ModelConfig", p: ParamConfig, name: str, ndim: int = 2) -> Multipliers:
    """All factors of parameter ``name`` of a model of shape ``cfg``: the rule's times the table's."""
    info = classify(name, ndim)
    out = ONE
    if p.kind == "completep":
        base_dim, base_hidden = _base_fan_ins(cfg, p)
        is_fc2 = info.name.endswith("mlp.fc2.weight")
        m_n = width_multiplier(cfg.hidden_dim, base_hidden) if is_fc2 else width_multiplier(cfg.dim, base_dim)
        out = completep_rule(info.role, m_n, depth_multiplier(cfg, p), p.depth_alpha)
    return out * table_multipliers(info, cfg.n_layers, p.table)


def scale_beta(beta: float, alpha: float, rule: str = "one_minus") -> float:
    """β with its Table 6 factor α: ``one_minus``: 1 − α·(1 − β), floored at 0 (AdamW needs
    0 ≤ β < 1; it stays below 1 for any α > 0); ``power``: β^α. α = 1 returns β unchanged."""
    if alpha == 1.0:
        return beta
    if rule == "power":
        return beta**alpha
    return max(0.0, 1.0 - alpha * (1.0 - beta))


# ---- what the model and the optimizer get ---------------------------------------------------------


def init_scales(cfg: "ModelConfig", p: ParamConfig, names: Mapping[str, int]) -> dict[str, float]:
    """``name → init scale`` for ``Transformer.init_weights``: the trunc-normal std of a matrix
    (``cfg.init_std`` × its init multiplier), the initial value of a norm's gain (1 × it).
    ``names`` maps each parameter name to its ndim."""
    out = {}
    for name, ndim in names.items():
        base = cfg.init_std if ndim >= 2 else 1.0
        out[canonical_name(name)] = base * multipliers(cfg, p, name, ndim).init
    return out


def adamw_settings(cfg: "ModelConfig", p: ParamConfig, name: str, ndim: int, betas: tuple[float, float],
                   eps: float, weight_decay: float) -> dict[str, Any]:
    """One parameter's AdamW group values from the base ones: ``lr_mult`` (``set_lr`` multiplies
    the scheduled lr by it), weight decay (matrices only, as in standard), betas and ε."""
    m = multipliers(cfg, p, name, ndim)
    return {
        "lr_mult": m.lr,
        "weight_decay": weight_decay * m.wd if ndim >= 2 else 0.0,
        "betas": (scale_beta(betas[0], m.beta1, p.beta_rule), scale_beta(betas[1], m.beta2, p.beta_rule)),
        "eps": eps * m.eps,
    }


def optimizer_settings(cfg: "ModelConfig", p: ParamConfig, betas: tuple[float, float], eps: float,
                       weight_decay: float) -> Callable[[str, "Tensor"], dict[str, Any]] | None:
    """The per-parameter settings function for ``optim.build_optimizer``; None for the identity
    parametrization, so the optimizer is built exactly as before (two groups)."""
    if p.is_identity:
        return None
    return lambda name, param: adamw_settings(cfg, p, name, param.ndim, betas, eps, weight_decay)


def set_parametrization(model: "Transformer", p: ParamConfig) -> None:
    """Set what the forward pass and a later ``init_weights()`` need: every block's residual
    multiplier and the per-parameter init scales (``model.init_scales``). Touches no weight, so
    it is also what a model rebuilt from a checkpoint needs before loading its state."""
    cfg = model.cfg
    r = residual_multiplier(cfg, p)
    for block in model.layers:
        getattr(block, "_checkpoint_wrapped_module", block).residual_mult = r
    model.init_scales = init_scales(cfg, p, {n: q.ndim for n, q in model.named_parameters()})


def build_model(cfg: "ModelConfig", layout: "VocabLayout", p: ParamConfig | None = None) -> "Transformer":
    """The model under parametrization ``p``: ``Transformer(cfg, layout)`` (the identity
    parametrization's model, bit for bit), then each matrix's trunc-normal(σ) draw rescaled to
    its own std (trunc-normal(σ)·s/σ is trunc-normal(s), the truncation at ±3 std included) and
    each norm's gain set to its initial value. The random draws are thus the standard model's:
    at the base shape without a table a CompleteP model is the standard one exactly."""
    import torch

    from trimodal.train.model import Transformer

    model = Transformer(cfg, layout)
    if p is None or p.is_identity:
        return model
    set_parametrization(model, p)
    with torch.no_grad():
        for name, q in model.named_parameters():
            scale = model.init_scales[canonical_name(name)]
            if q.ndim >= 2 and scale != cfg.init_std:
                q.mul_(scale / cfg.init_std)
            elif q.ndim < 2 and scale != 1.0:
                q.fill_(scale)
    return model


def param_config_of(config: Mapping[str, Any] | None) -> ParamConfig:
    """The ``param`` section of a saved training config (a checkpoint's ``state["config"]``);
    the default (standard) for configs written before the section existed."""
    from trimodal.config import from_dict

    return from_dict(ParamConfig, dict((config or {}).get("param") or {}), prefix="param")
