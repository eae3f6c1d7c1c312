"""Iterative unmasking sampler (docs/sampling.md).

Start from a task template whose target span is all MASK; for K steps run the model, draw a
token for every still-masked target position from the softmax over its modality block's
predictable ids (after classifier-free guidance, temperature and top-p), and reveal some of
them: by the end of step k, round(n·k/K) of the n target positions are revealed (linear
unmasking schedule, ≈ n/K per step). Which ones: uniformly random (default; the paper leaves it
open) or most confident first (highest probability of the drawn distribution's mode).
Revealed tokens are never re-masked.

CFG: the unconditional pass sees the text prompt replaced by MASK_text;
guided = uncond + s·(cond − uncond) on the logits, before temperature and top-p. s = 1 is plain
conditional sampling (one pass), s = 0 is unconditional sampling.
"""

from __future__ import annotations

import os

from dataclasses import dataclass

import torch
from torch import Tensor

from trimodal.tokenizers.vocab import MODALITIES, TASK, TASK_MEDIA, TASKS, TEXT, VocabLayout
from trimodal.train.objective import mask_ids

ORDERS = ("random", "confidence")


@dataclass
class SamplerConfig:
    """``media_codes_only``: image/audio positions draw codes only (no BOS/EOS inside a fixed-size
    media span, which the codec could not decode); text positions may draw EOS to end early."""

    steps: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    order: str = "random"
    seed: int = 0
    media_codes_only: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"SamplerConfig.steps must be positive, got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"SamplerConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplerConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.order not in ORDERS:
            raise ValueError(f"SamplerConfig.order must be one of {ORDERS}, got {self.order!r}")

    @classmethod
    def for_task(cls, task: str, **overrides) -> "SamplerConfig":
        """Paper defaults: text→image 1,024 steps, CFG 6, T 1.0, top-p 1.0; text→speech 1,000
        steps, CFG 3, T 1.2, top-p 0.9. Text settings are unspecified [paper]: no guidance."""
        presets = {
            "text": dict(steps=64, cfg_scale=1.0, temperature=1.0, top_p=1.0),
            "image_text": dict(steps=1024, cfg_scale=6.0, temperature=1.0, top_p=1.0),
            "audio_text": dict(steps=1000, cfg_scale=3.0, temperature=1.2, top_p=0.9),
        }
        if task not in presets:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return cls(**{**presets[task], **overrides})


@dataclass
class Template:
    """A prompt row: ``tokens``/``modality`` [L]; ``prompt`` [L] marks the conditioning text
    (what CFG's unconditional pass replaces by MASK_text)."""

    tokens: Tensor
    modality: Tensor
    prompt: Tensor


def _text_ids(layout: VocabLayout, prompt_ids) -> list[int]:
    ids = [int(i) for i in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
    bad = [i for i in ids if not 0 <= i < layout.text.codes]
    if bad:
        raise ValueError(f"prompt ids must be text-local codes in [0, {layout.text.codes}), got {bad[:5]}")
    return [layout.text.offset + i for i in ids]


def _template(parts: list[tuple[list[int], int, bool]]) -> Template:
    tokens, modality, prompt = [], [], []
    for ids, mod, is_prompt in parts:
        tokens += ids
        modality += [mod] * len(ids)
        prompt += [is_prompt] * len(ids)
    return Template(torch.tensor(tokens), torch.tensor(modality), torch.tensor(prompt, dtype=torch.bool))


def text_template(layout: VocabLayout, prompt_ids, n_new: int) -> Template:
    """``[TASK_text, BOS_text, prompt…, MASK_text×n_new, EOS_text]``; ``prompt_ids`` are text-local
    (SentencePiece) ids; an empty prompt gives unconditional generation."""
    t = layout.text
    return _template([
        ([layout.task_token("text")], TASK, False),
        ([t.bos], TEXT, False),
        (_text_ids(layout, prompt_ids), TEXT, True),
        ([t.mask] * n_new + [t.eos], TEXT, False),
    ])


def media_template(layout: VocabLayout, task: str, n_media: int, prompt_ids) -> Template:
    """``[TASK_m, BOS_m, MASK_m×n_media, EOS_m, BOS_text, prompt…, EOS_text]`` for ``task`` in
    image_text / audio_text (media first, text second, as in training rows)."""
    if task not in ("image_text", "audio_text"):
        raise ValueError(f"media_template task must be image_text or audio_text, got {task!r}")
    m = TASK_MEDIA[task]
    b, t = layout.blocks[m], layout.text
    return _template([
        ([layout.task_token(task)], TASK, False),
        ([b.bos] + [b.mask] * n_media + [b.eos], m, False),
        ([t.bos], TEXT, False),
        (_text_ids(layout, prompt_ids), TEXT, True),
        ([t.eos], TEXT, False),
    ])


def unconditional(template: Template, layout: VocabLayout) -> Template:
    """The same row with its text prompt replaced by MASK_text (CFG's unconditional input)."""
    tokens = torch.where(template.prompt, torch.full_like(template.tokens, layout.text.mask), template.tokens)
    return Template(tokens, template.modality.clone(), template.prompt.clone())


def reveal_counts(n: Tensor, step: int, steps: int) -> Tensor:
    """Positions to reveal at ``step`` (1-based) of ``steps``: round(n·k/K) − round(n·(k−1)/K),
    rounding halves up, so exactly n are revealed after K steps."""
    n = n.double()
    done = lambda k: torch.floor(n * k / steps + 0.5)  # noqa: E731
    return (done(step) - done(step - 1)).long()


def _draw(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample one column per row of float32 ``logits`` [N, V]; returns (column, confidence),
    confidence being the largest probability of the distribution drawn from."""
    if temperature == 0:
        probs = logits.softmax(-1)
        conf, col = probs.max(-1)
        return col, conf
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
        pick = torch.multinomial(sorted_p, 1, generator=generator).squeeze(1)
        return order.gather(1, pick[:, None]).squeeze(1), sorted_p[:, 0]
    col = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return col, probs.max(-1).values


@torch.inference_mode()
def sample(
    model,
    tokens: Tensor,
    modality: Tensor | None,
    layout: VocabLayout,
    cfg: SamplerConfig,
    *,
    prompt: Tensor | None = None,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: str | None = None,
) -> Tensor:
    """Fill every MASK of ``tokens`` ([L] or [B, L]) outside ``prompt`` in ``cfg.steps`` steps.

    ``modality`` defaults to the blocks the ids fall in; ``prompt`` ([L]/[B, L] bool) is needed
    for CFG (cfg_scale != 1); ``valid`` defaults to non-PAD. Steps that reveal nothing in any
    row (K > n) skip their forward pass. Returns the filled tokens, same shape as the input.
    ``progress``: a label for a progress bar over the steps, shown once the loop has run a second
    (an image on CPU takes minutes; a short text never shows one)."""
    squeeze = tokens.dim() == 1
    x = tokens.unsqueeze(0).clone() if squeeze else tokens.clone()
    device = x.device
    if modality is None:
        modality = torch.from_numpy(layout.modality_of(x.cpu().numpy())).long().to(device)
    modality = modality.reshape(x.shape).to(device)
    prompt = torch.zeros_like(x, dtype=torch.bool) if prompt is None else prompt.reshape(x.shape).to(device)
    valid = (x != layout.pad) if valid is None else valid.reshape(x.shape).to(device)
    guided = cfg.cfg_scale != 1.0
    if guided and not prompt.any():
        raise ValueError("CFG (cfg_scale != 1) needs the prompt positions: pass prompt=template.prompt")
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

    still = (x == mask_ids(layout, modality)) & (modality != TASK) & ~prompt & valid
    n = still.sum(1)
    seq_len = x.shape[1]
    ranks_base = torch.arange(seq_len, device=device).expand_as(x)
    steps = range(1, cfg.steps + 1)
    if progress is not None:
        from tqdm import tqdm

        off = os.environ.get("TQDM_DISABLE", "") not in ("", "0")  # read per call, not at tqdm's import
        steps = tqdm(steps, desc=progress, unit="step", delay=1.0, leave=False, dynamic_ncols=True, disable=off)
    for step in steps:
        r = reveal_counts(n, step, cfg.steps)
        if not r.any():
            continue
        rows, cols = still.nonzero(as_tuple=True)
        mod = modality[rows, cols]
        h = model(x, valid)[rows, cols]
        if guided:
            x_u = torch.where(prompt, torch.full_like(x, layout.text.mask), x)
            h_u = model(x_u, valid)[rows, cols]
        cand = torch.zeros_like(rows)
        conf = torch.zeros(rows.shape[0], device=device)
        for m in range(len(MODALITIES)):
            idx = (mod == m).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            logits = model.head_logits(h[idx], m).float()
            if guided:
                lu = model.head_logits(h_u[idx], m).float()
                logits = lu + cfg.cfg_scale * (logits - lu)
            block = layout.blocks[m]
            if cfg.media_codes_only and m != TEXT:
                logits[:, block.codes :] = float("-inf")
            col, c = _draw(logits, cfg.temperature, cfg.top_p, generator)
            cand[idx] = block.offset + col
            conf[idx] = c
        if cfg.order == "random":
            conf = torch.rand(rows.shape[0], generator=generator, device=device)
        score = torch.full(x.shape, -1.0, device=device)
        score[rows, cols] = conf
        order = score.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, ranks_base)
        reveal = still & (rank < r.unsqueeze(1))
        full_cand = torch.zeros_like(x)
        full_cand[rows, cols] = cand
        x = torch.where(reveal, full_cand, x)
        still &= ~reveal
    return x.squeeze(0) if squeeze else x


def span(layout: VocabLayout, tokens: Tensor, modality: int) -> Tensor:
    """Global ids strictly between the first BOS of ``modality`` and the next EOS (or the row's
    end) of a 1-D row: the generated image/audio codes, or a text document."""
    block = layout.blocks[modality]
    tokens = tokens.reshape(-1)
    starts = (tokens == block.bos).nonzero(as_tuple=True)[0]
    if starts.numel() == 0:
        raise ValueError(f"no BOS_{block.name} in row")
    start = int(starts[0]) + 1
    ends = (tokens[start:] == block.eos).nonzero(as_tuple=True)[0]
    end = start + int(ends[0]) if ends.numel() else tokens.numel()
    return tokens[start:end]
