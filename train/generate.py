"""``trimodal sample``: load a checkpoint, build the task template, sample, decode to a file.

Outputs: text (``.txt``), images (``.png``, several seeds as a grid) and speech (``.wav``).
Tokenizer paths default to those recorded in the checkpoint (from the dataset manifests).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trimodal.tokenizers.vocab import AUDIO, IMAGE, TEXT, VocabLayout
from trimodal.train import checkpoint as ckpt
from trimodal.train.configs import from_dict
from trimodal.train.distributed import pick_device
from trimodal.train.model import ModelConfig, Transformer
from trimodal.train.sampler import SamplerConfig, media_template, sample, span, text_template


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder (its latest complete one)."""
    path = Path(path)
    if (path / ckpt.STATE).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = ckpt.latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"no complete checkpoint under {path}")


def load_model(path: str | Path, device: torch.device) -> tuple[Transformer, VocabLayout, dict[str, Any]]:
    path = resolve_checkpoint(path)
    state = ckpt.read_state(path)
    layout = VocabLayout.from_dict(state["layout"])
    model = Transformer(from_dict(ModelConfig, state["config"]["model"]), layout)
    ckpt.load_checkpoint(path, model, None)
    return model.to(device).eval(), layout, state


def _tokenizer_path(override: str | None, state: dict[str, Any], name: str) -> str:
    path = override or state.get("tokenizers", {}).get(name, {}).get("path")
    if not path:
        raise ValueError(f"no {name} tokenizer recorded in the checkpoint: pass --{name}-tokenizer")
    return path


def image_grid(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 → one near-square grid image."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return grid


def generate_cli(args) -> list[str]:
    from trimodal.tokenizers.text import TextTokenizer

    device = pick_device(args.device, 0)
    model, layout, state = load_model(args.checkpoint, device)
    text_tok = TextTokenizer.from_path(_tokenizer_path(args.text_tokenizer, state, "text"))
    prompt_ids = text_tok.encode_one(args.prompt) if args.prompt else np.zeros(0, dtype=np.int64)
    task = {"text": "text", "image": "image_text", "speech": "audio_text"}[args.task]
    overrides = {k: v for k, v in {"steps": args.steps, "cfg_scale": args.cfg, "temperature": args.temperature,
                                   "top_p": args.top_p}.items() if v is not None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if prompt_ids.size == 0 and SamplerConfig.for_task(task, **overrides).cfg_scale != 1.0:
        # an empty prompt is unconditional sampling: there is nothing for CFG to guide by
        overrides["cfg_scale"] = 1.0
        lines.append("empty prompt: unconditional sampling (no classifier-free guidance)")

    if task == "text":
        tpl = text_template(layout, prompt_ids, args.length)
        texts = []
        for i in range(args.num):
            cfg = SamplerConfig.for_task("text", order=args.order, seed=args.seed + i, **overrides)
            row = sample(model, tpl.tokens.to(device), tpl.modality.to(device), layout, cfg, prompt=tpl.prompt.to(device))
            ids = span(layout, row.cpu(), TEXT) - layout.text.offset
            ids = ids[(ids >= 0) & (ids < layout.text.codes)]
            texts.append(text_tok.decode(ids.numpy()))
        out.write_text("\n\n".join(texts) + "\n")
        lines += [f"sample {i}: {t!r}" for i, t in enumerate(texts)]
    elif task == "image_text":
        from trimodal.tokenizers.movqgan import MoVQGANTokenizer

        img_tok = MoVQGANTokenizer.from_path(_tokenizer_path(args.image_tokenizer, state, "image"), device=str(device))
        grid_hw = tuple(state.get("tokenizers", {}).get("image", {}).get("grid") or img_tok.grid)
        n_media = int(grid_hw[0] * grid_hw[1])
        tpl = media_template(layout, task, n_media, prompt_ids)
        codes = []
        for i in range(args.num):
            cfg = SamplerConfig.for_task(task, order=args.order, seed=args.seed + i, **overrides)
            row = sample(model, tpl.tokens.to(device), tpl.modality.to(device), layout, cfg, prompt=tpl.prompt.to(device))
            local = (span(layout, row.cpu(), IMAGE) - layout.image.offset).numpy()
            codes.append(local[:n_media].reshape(grid_hw))
        images = img_tok.decode(np.stack(codes))
        from PIL import Image

        Image.fromarray(image_grid(images)).save(out)
        lines.append(f"wrote {out} ({len(codes)} image(s) of {images.shape[1]}x{images.shape[2]})")
    else:
        if args.seconds <= 0:
            raise ValueError(f"--seconds must be positive, got {args.seconds}")
        from trimodal.tokenizers.audio_io import write_wav
        from trimodal.tokenizers.dac import DACTokenizer

        levels = layout.audio_levels
        aud_tok = DACTokenizer.from_path(_tokenizer_path(args.audio_tokenizer, state, "audio"), n_keep=levels,
                                         device=str(device))
        frames = max(1, math.ceil(aud_tok.frames_per_second * args.seconds - 1e-9))  # never shorter than asked
        tpl = media_template(layout, task, frames * levels, prompt_ids)
        waves = []
        for i in range(args.num):
            cfg = SamplerConfig.for_task(task, order=args.order, seed=args.seed + i, **overrides)
            row = sample(model, tpl.tokens.to(device), tpl.modality.to(device), layout, cfg, prompt=tpl.prompt.to(device))
            codes = layout.audio_from_global(span(layout, row.cpu(), AUDIO).numpy())
            wav = aud_tok.decode(codes)
            waves.append(wav[: int(round(args.seconds * aud_tok.sample_rate))])
        wav = np.concatenate(waves)
        write_wav(str(out), wav, aud_tok.sample_rate)
        lines.append(f"wrote {out} ({len(waves)} clip(s), {len(waves[0]) / aud_tok.sample_rate:.2f} s each at "
                     f"{aud_tok.sample_rate} Hz)")
    return lines
