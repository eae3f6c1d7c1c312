"""Coordinate check (CompleteP's diagnostic): does the residual stream keep its scale as the model
widens or deepens, a few optimizer steps in?

Tiny models are trained for a few AdamW steps on one fixed random batch with the masked-diffusion
loss (the same t and mask every step), under ``standard`` and ``completep``
(:mod:`trimodal.train.parametrization`), across widths at a fixed depth and across depths at a
fixed width (the head dimension fixed, as on the ladder). After each step the RMS of every block's
output on that batch is recorded. Under a parametrization that transfers, the curves for the
different widths (depths) lie on top of each other; under the standard one they fan out, because
an Adam step moves a width-d matrix's output by ~lr·d and L unscaled branches add up.

    python -m trimodal.experiments.coord_check --out docs/coord_check.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import torch

from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TEXT, VocabLayout
from trimodal.train.model import ModelConfig
from trimodal.train.objective import ObjectiveConfig, diffusion_loss
from trimodal.train.optim import build_optimizer
from trimodal.train.parametrization import ParamConfig, build_model, optimizer_settings

LAYOUT = VocabLayout(text_codes=50, image_codes=32, audio_codes=16, audio_levels=2)
_TASK_OF = {TEXT: "text", IMAGE: "image_text", AUDIO: "audio_text"}


@dataclass
class CoordConfig:
    """One coordinate check. ``base_dim``/``base_layers`` default to the smallest width/depth."""

    widths: tuple[int, ...] = (64, 128, 256)
    width_depth: int = 2
    depths: tuple[int, ...] = (2, 4, 8)
    depth_width: int = 64
    head_dim: int = 16
    steps: int = 5
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch: int = 8
    seq_len: int = 32
    seed: int = 0
    kinds: tuple[str, ...] = ("standard", "completep")
    base_dim: int = 0
    base_layers: int = 0
    alpha: float = 1.0

    def param(self, kind: str) -> ParamConfig:
        return ParamConfig(kind=kind, base_dim=self.base_dim or min(self.widths),
                           base_layers=self.base_layers or min(self.depths), depth_alpha=self.alpha)


@dataclass
class CoordResult:
    """``stream[kind][size]``: per step (0 = init, then after each step) the RMS of the last
    block's output (the residual stream the final norm sees); ``blocks``: the mean over blocks."""

    axis: str
    sizes: list[int]
    stream: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    blocks: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    loss: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    def spread(self, kind: str, step: int = -1) -> float:
        """max/min over sizes of the stream RMS at ``step``: 1 is perfectly flat."""
        v = [self.stream[kind][s][step] for s in self.sizes]
        return max(v) / min(v)


def fixed_batch(batch: int, seq_len: int, seed: int, layout: VocabLayout = LAYOUT) -> tuple[torch.Tensor, ...]:
    """Rows of one modality each (text, image, audio in turn) behind their task token: random
    content ids, no padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(batch, seq_len, dtype=torch.long)
    modality = torch.empty(batch, seq_len, dtype=torch.long)
    for r in range(batch):
        m = (TEXT, IMAGE, AUDIO)[r % 3]
        block = layout.blocks[m]
        tokens[r, 0] = layout.task_token(_TASK_OF[m])
        tokens[r, 1:] = block.offset + torch.randint(0, block.codes, (seq_len - 1,), generator=g)
        modality[r, 0], modality[r, 1:] = TASK, m
    return tokens, modality, torch.ones(batch, seq_len, dtype=torch.bool)


def train_and_measure(dim: int, depth: int, kind: str, cc: CoordConfig) -> tuple[list[float], list[float], list[float]]:
    """(stream RMS, mean block RMS, loss) per step for one model, steps+1 values each."""
    cfg = ModelConfig(dim=dim, n_layers=depth, n_heads=dim // cc.head_dim, max_seq_len=cc.seq_len)
    p = cc.param(kind)
    torch.manual_seed(cc.seed)
    model = build_model(cfg, LAYOUT, p)
    opt = build_optimizer(model, cc.lr, cc.betas, cc.eps, cc.weight_decay,
                          optimizer_settings(cfg, p, cc.betas, cc.eps, cc.weight_decay))
    tokens, modality, valid = fixed_batch(cc.batch, cc.seq_len, cc.seed)
    t = torch.linspace(0.3, 0.9, cc.batch)
    obj = ObjectiveConfig(z_loss=0.0)
    outs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda _m, _i, o: outs.append(o.detach())) for blk in model.layers]

    def loss_now() -> torch.Tensor:
        outs.clear()
        return diffusion_loss(model, tokens, modality, valid, LAYOUT, obj, t=t,
                              generator=torch.Generator().manual_seed(cc.seed + 1)).loss

    stream, blocks, losses = [], [], []
    for step in range(cc.steps + 1):
        loss = loss_now()
        rms = [float(o.pow(2).mean().sqrt()) for o in outs]
        stream.append(rms[-1])
        blocks.append(sum(rms) / len(rms))
        losses.append(float(loss))
        if step == cc.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for h in hooks:
        h.remove()
    return stream, blocks, losses


def coord_check(cc: CoordConfig | None = None) -> dict[str, CoordResult]:
    """Both sweeps (``width`` at ``width_depth`` blocks, ``depth`` at ``depth_width``) for every kind."""
    cc = cc or CoordConfig()
    out = {"width": CoordResult("width", list(cc.widths)), "depth": CoordResult("depth", list(cc.depths))}
    for kind in cc.kinds:
        for axis, sizes in (("width", cc.widths), ("depth", cc.depths)):
            res = out[axis]
            for key in ("stream", "blocks", "loss"):
                getattr(res, key)[kind] = {}
            for s in sizes:
                dim, depth = (s, cc.width_depth) if axis == "width" else (cc.depth_width, s)
                st, bl, lo = train_and_measure(dim, depth, kind, cc)
                res.stream[kind][s], res.blocks[kind][s], res.loss[kind][s] = st, bl, lo
    return out


def plot(results: dict[str, CoordResult], path: str, kinds: tuple[str, ...] = ("standard", "completep")) -> None:
    """One panel per (sweep, kind): stream RMS against width (depth), one line per step; a row
    shares its y axis, so flat and fanning-out curves compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), len(kinds), figsize=(4.2 * len(kinds), 3.0 * len(results)),
                             squeeze=False, sharey="row")
    for i, res in enumerate(results.values()):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            n = len(res.stream[kind][res.sizes[0]])
            cmap = plt.get_cmap("viridis")
            for step in range(n):
                ax.plot(res.sizes, [res.stream[kind][s][step] for s in res.sizes], marker="o", ms=3,
                        color=cmap(step / max(1, n - 1)), label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(res.sizes, [str(s) for s in res.sizes])
            ax.set_xlabel(res.axis)
            ax.set_ylabel("residual stream RMS")
            ax.set_title(f"{kind}: {res.axis} (max/min at last step {res.spread(kind):.2f})", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/coord_check.png", help="PNG to write")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--json", default="", help="also write the numbers here")
    a = ap.parse_args(argv)
    cc = CoordConfig(widths=tuple(a.widths), depths=tuple(a.depths), steps=a.steps, lr=a.lr)
    results = coord_check(cc)
    plot(results, a.out)
    summary = {axis: {kind: {"spread": r.spread(kind), "stream": {s: r.stream[kind][s] for s in r.sizes}}
                      for kind in cc.kinds} for axis, r in results.items()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    for axis, r in results.items():
        for kind in cc.kinds:
            vals = "  ".join(f"{s}: {r.stream[kind][s][-1]:.3f}" for s in r.sizes)
            print(f"{axis:5s} {kind:9s} step {cc.steps} stream RMS  {vals}   max/min {r.spread(kind):.2f}")
    return summary


if __name__ == "__main__":
    main()
