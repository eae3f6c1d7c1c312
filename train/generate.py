"""``trimodal sample``: load a model, sample text, images or speech, write them to a file.

Outputs: text (``.txt``), images (``.png``, several seeds as a near-square grid) and speech
(``.wav``, several clips concatenated). Tokenizers default to the ones recorded with the model
(the dataset manifests' paths); ``--*-tokenizer`` overrides a location. The generation itself is
the Python API's (:mod:`trimodal.api`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


from trimodal.config import option
from trimodal.shards.show import image_grid


@dataclass
class SampleConfig:
    checkpoint: str = option("", help="run folder, checkpoint folder, or an exported model folder")
    task: Literal["text", "image", "speech"] = option("text", help="what to generate")
    prompt: str = option("", help="the text prompt (empty: unconditional)")
    out: str = option("", help="output file (.txt, .png or .wav)")
    steps: int | None = option(None, help="sampling steps (default: the paper's per task)")
    cfg: float | None = option(None, help="classifier-free guidance scale (default: the paper's per task)")
    temperature: float | None = option(None, help="sampling temperature (default: the paper's per task)")
    top_p: float | None = option(None, help="nucleus sampling mass (default: the paper's per task)")
    order: Literal["random", "confidence"] = option("random", help="which masked positions are revealed first")
    length: int = option(64, help="text: new tokens")
    seconds: float = option(5.0, help="speech: duration")
    num: int = option(1, help="samples (images: a grid; speech: concatenated clips)")
    seed: int = option(0, help="seed of the first sample (the i-th uses seed + i)")
    text_tokenizer: str | None = option(None, help="text tokenizer location (default: recorded)")
    image_tokenizer: str | None = option(None, help="image tokenizer location (default: recorded)")
    audio_tokenizer: str | None = option(None, help="audio tokenizer location (default: recorded)")
    device: str = option("auto", help="auto, cpu or cuda")
    verify_model: bool = option(True, help="check an exported model's files against its files.json before loading")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if not self.out:
            raise ValueError("--out is required")
        if self.num < 1 or self.length < 1:
            raise ValueError("--num and --length must be >= 1")


def run_sample(cfg: SampleConfig) -> list[str]:
    """Generate and write ``cfg.out``; returns the lines to print (what was loaded and written)."""
    import trimodal

    m = trimodal.load(cfg.checkpoint, device=cfg.device, verify=cfg.verify_model)
    lines = [m.describe()]
    sampler = {"steps": cfg.steps, "cfg_scale": cfg.cfg, "temperature": cfg.temperature, "top_p": cfg.top_p,
               "order": cfg.order}
    if not cfg.prompt and cfg.task != "text" and cfg.cfg not in (None, 1.0):
        lines.append("empty prompt: unconditional sampling (no classifier-free guidance)")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.task == "text":
        texts = [m.generate_text(cfg.prompt, cfg.length, seed=cfg.seed + i, text_tokenizer=cfg.text_tokenizer, **sampler)
                 for i in range(cfg.num)]
        out.write_text("\n\n".join(texts) + "\n")
        lines += [f"sample {i}: {t!r}" for i, t in enumerate(texts)]
    elif cfg.task == "image":
        from PIL import Image

        images = m.generate_image(cfg.prompt, cfg.num, seed=cfg.seed, text_tokenizer=cfg.text_tokenizer,
                                  image_tokenizer=cfg.image_tokenizer, **sampler)
        Image.fromarray(image_grid(images)).save(out)
        lines.append(f"wrote {out} ({len(images)} image(s) of {images.shape[1]}x{images.shape[2]})")
    else:
        from trimodal.tokenizers.audio_io import write_wav

        wav, sr = m.generate_speech(cfg.prompt, cfg.seconds, cfg.num, seed=cfg.seed, text_tokenizer=cfg.text_tokenizer,
                                    audio_tokenizer=cfg.audio_tokenizer, **sampler)
        write_wav(str(out), wav, sr)
        lines.append(f"wrote {out} ({cfg.num} clip(s), {len(wav) / cfg.num / sr:.2f} s each at {sr} Hz)")
    return lines
