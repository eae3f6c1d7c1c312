"""``trimodal eval --generate``: sample N images and/or speech clips from a run or an export with
given sampling settings, score them with the generation-quality metrics whose weights are given
(FID, CLIP score, FAD, WER; :mod:`trimodal.quality`, docs/quality.md), and write everything a
person needs to check the numbers:

    OUT/images/0000.png …      the images; OUT/images.png a contact sheet (each under its prompt)
    OUT/speech/0000.wav …      the clips; OUT/speech.tsv file, prompt and transcript per clip
    OUT/samples.jsonl          one record per sample (task, index, seed, prompt, file, transcript)
    OUT/metrics.json           the metrics, the resolved sampling settings and the weights used

Sample i of a task uses prompt i mod P and seed ``seed + i``: the same command writes the same
files. A metric whose weights are not given is left out (and listed under ``skipped``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trimodal.config import option

# Used when no --prompts file is given: short and concrete; the speech ones plain words (for WER).
DEFAULT_PROMPTS = {
    "image": ("a red circle on a white background", "a small boat on a calm lake", "a green apple on a wooden table",
              "a city street at night"),
    "speech": ("hello there how are you", "the weather is nice today", "please open the window",
               "one two three four five"),
}


@dataclass
class GenerateEvalConfig:
    checkpoint: str = option("", help="run folder, checkpoint folder or exported model folder")
    generate: bool = option(True, help="generate and score samples (this mode of `trimodal eval`)")
    out: str = option("", help="output folder (samples, contact sheet, metrics.json)")
    tasks: list[str] = option(default_factory=list, help="image and/or speech (default: every medium the model has)")
    prompts: str | None = option(None, help="prompt file: one per line, or JSON lines with a 'prompt' key")
    num: int = option(8, help="samples per task (prompts are cycled)")
    seed: int = option(0, help="seed of sample 0 (sample i uses seed + i)")
    steps: int | None = option(None, help="sampling steps (default: the paper's per task)")
    cfg: float | None = option(None, help="classifier-free guidance scale (default: the paper's per task)")
    temperature: float | None = option(None, help="sampling temperature (default: the paper's per task)")
    top_p: float | None = option(None, help="nucleus mass (default: the paper's per task)")
    order: Literal["random", "confidence"] = option("random", help="which masked positions are revealed first")
    seconds: float = option(2.0, help="speech: seconds per clip (capped to what a trained row holds)")
    inception: str | None = option(None, help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth or its folder)")
    fid_ref: str | None = option(None, help="FID reference: .npz statistics, an image folder or a tokenized shard root")
    clip: str | None = option(None, help="CLIP model folder (save_pretrained layout)")
    asr: str | None = option(None, help="ASR model folder for WER (Whisper or a CTC model, save_pretrained layout)")
    audio_embed: str | None = option(None, help="audio embedding model folder for FAD (HuBERT/wav2vec2-like)")
    fad_ref: str | None = option(None, help="FAD reference: .npz statistics or a folder of audio files")
    ref_split: str = option("val", help="split of a shard root given as --fid-ref")
    ref_limit: int | None = option(None, help="at most this many reference items when computing statistics")
    batch_size: int = option(16, help="images per Inception forward pass")
    device: str = option("auto", help="auto, cpu or cuda")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if not self.out:
            raise ValueError("--out is required")
        if self.num < 1:
            raise ValueError("--num must be >= 1")
        bad = [t for t in self.tasks if t not in ("image", "speech")]
        if bad:
            raise ValueError(f"--tasks takes image and/or speech, got {bad[0]!r}")
        if (self.fid_ref is None) != (self.inception is None):
            raise ValueError("FID needs both --inception and --fid-ref")
        if self.fad_ref is not None and self.audio_embed is None:
            raise ValueError("FAD needs --audio-embed as well as --fad-ref")


def read_prompts(path: str | None, task: str = "image") -> list[str]:
    if path is None:
        return list(DEFAULT_PROMPTS[task])
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    prompts = []
    for k, ln in enumerate(lines, 1):
        if ln.startswith("{"):
            rec = json.loads(ln)
            if not isinstance(rec.get("prompt"), str):
                raise ValueError(f"{path}:{k}: a JSON line needs a string 'prompt'")
            prompts.append(rec["prompt"])
        else:
            prompts.append(ln)
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def contact_sheet(images: np.ndarray, captions: list[str], min_tile: int = 128, cols: int | None = None) -> np.ndarray:
    """A PNG-ready uint8 grid: each image (upscaled by an integer factor to at least
    ``min_tile`` px, nearest neighbour so codes stay visible) above its wrapped caption."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    k = max(1, math.ceil(min_tile / max(h, w)))
    tw, th = w * k, h * k
    font = ImageFont.load_default()
    line_h, chars = 12, max(8, tw // 6)
    wrapped = [textwrap.wrap(c, chars)[:3] or [""] for c in captions]
    cap_h = line_h * max(len(x) for x in wrapped) + 4
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = 4
    sheet = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(i, cols)
        x, y = pad + c * (tw + pad), pad + r * (th + cap_h + pad)
        sheet.paste(Image.fromarray(img).resize((tw, th), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + th + 2 + j * line_h), line, fill="black", font=font)
    return np.asarray(sheet)


def _sampler_settings(cfg: GenerateEvalConfig, task: str) -> dict[str, Any]:
    from trimodal.train.sampler import SamplerConfig

    given = {"steps": cfg.steps, "cfg_scale": cfg.cfg, "temperature": cfg.temperature, "top_p": cfg.top_p}
    resolved = SamplerConfig.for_task(task, seed=cfg.seed, order=cfg.order,
                                      **{k: v for k, v in given.items() if v is not None})
    return {k: v for k, v in asdict(resolved).items() if k != "seed"}


def _images(cfg: GenerateEvalConfig, m: Any, prompts: list[str], out: Path, metrics: dict, skipped: list) -> list[dict]:
    from PIL import Image

    sampler = {"steps": cfg.steps, "cfg_scale": cfg.cfg, "temperature": cfg.temperature, "top_p": cfg.top_p,
               "order": cfg.order}
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    used = [prompts[i % len(prompts)] for i in range(cfg.num)]
    images = np.concatenate([m.generate_image(p, 1, seed=cfg.seed + i, **sampler) for i, p in enumerate(used)])
    records = []
    for i, (img, p) in enumerate(zip(images, used)):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        records.append({"task": "image", "index": i, "seed": cfg.seed + i, "prompt": p, "file": f"images/{i:04d}.png"})
    Image.fromarray(contact_sheet(images, used)).save(out / "images.png")
    res: dict[str, Any] = {"n": len(images), "settings": _sampler_settings(cfg, "image_text")}
    if cfg.inception and cfg.fid_ref:
        from trimodal.quality.fid import image_features, reference_stats
        from trimodal.quality.frechet import FeatureStats, stats_distance
        from trimodal.quality.inception import load_fid_inception

        net = load_fid_inception(cfg.inception, m.device)
        stored = cfg.fid_ref if cfg.fid_ref.endswith(".npz") else str(out / "fid_reference.npz")
        ref = reference_stats(cfg.fid_ref, net, out=None if stored == cfg.fid_ref else stored, split=cfg.ref_split,
                              limit=cfg.ref_limit, batch_size=cfg.batch_size)
        gen = FeatureStats.of(image_features(net, images, cfg.batch_size)) if len(images) > 1 else None
        if gen is None:
            skipped.append("fid (needs at least 2 images)")
        else:
            res["fid"] = stats_distance(gen, ref)
            res["fid_reference"] = {"source": cfg.fid_ref, "stats": stored, "n": ref.n}
    else:
        skipped.append("fid (give --inception and --fid-ref)")
    if cfg.clip:
        from trimodal.quality.clip_score import ClipScorer

        cos = ClipScorer.load(cfg.clip, m.device).cosines(images, used)
        res["clip_score"] = float(np.mean(100.0 * np.maximum(cos, 0.0)))
        for r, c in zip(records, cos):
            r["clip_cosine"] = float(c)
    else:
        skipped.append("clip_score (give --clip)")
    metrics["image"] = res
    return records


def _speech(cfg: GenerateEvalConfig, m: Any, prompts: list[str], out: Path, metrics: dict, skipped: list) -> list[dict]:
    from trimodal.tokenizers.audio_io import write_wav

    sampler = {"steps": cfg.steps, "cfg_scale": cfg.cfg, "temperature": cfg.temperature, "top_p": cfg.top_p,
               "order": cfg.order}
    folder = out / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    used = [prompts[i % len(prompts)] for i in range(cfg.num)]
    clips, records, sr = [], [], 0
    for i, p in enumerate(used):
        n_tok = len(m._prompt_ids(p, None))
        seconds = min(cfg.seconds, m.max_speech_seconds(n_tok))
        if seconds <= 0:
            raise ValueError(f"prompt {p!r} leaves no room for audio in a row of {m.seq_len} positions")
        wav, sr = m.generate_speech(p, seconds, 1, seed=cfg.seed + i, **sampler)
        write_wav(str(folder / f"{i:04d}.wav"), wav, sr)
        clips.append(wav)
        records.append({"task": "speech", "index": i, "seed": cfg.seed + i, "prompt": p,
                        "file": f"speech/{i:04d}.wav", "seconds": len(wav) / sr})
    res: dict[str, Any] = {"n": len(clips), "sample_rate": sr, "settings": _sampler_settings(cfg, "audio_text")}
    if cfg.asr:
        from trimodal.quality.wer import Transcriber, word_error_rate

        texts = Transcriber.load(cfg.asr, m.device).transcribe(clips, sr)
        res["wer"] = word_error_rate(used, texts)
        for r, t in zip(records, texts):
            r["transcript"] = t
            r["wer"] = word_error_rate([r["prompt"]], [t])
    else:
        skipped.append("wer (give --asr)")
    if cfg.audio_embed and cfg.fad_ref:
        from trimodal.quality.fad import AudioEmbedder, reference_stats
        from trimodal.quality.frechet import FeatureStats, stats_distance

        emb = AudioEmbedder.load(cfg.audio_embed, m.device)
        stored = cfg.fad_ref if cfg.fad_ref.endswith(".npz") else str(out / "fad_reference.npz")
        ref = reference_stats(cfg.fad_ref, emb, out=None if stored == cfg.fad_ref else stored, limit=cfg.ref_limit)
        res["fad"] = stats_distance(FeatureStats.of(emb.frames(clips, sr)), ref)
        res["fad_reference"] = {"source": cfg.fad_ref, "stats": stored, "frames": ref.n}
    else:
        skipped.append("fad (give --audio-embed and --fad-ref)")
    with open(out / "speech.tsv", "w", encoding="utf-8") as fh:
        fh.write("file\tprompt\ttranscript\n")
        for r in records:
            fh.write(f"{r['file']}\t{r['prompt']}\t{r.get('transcript', '')}\n".replace("\r", " "))
    metrics["speech"] = res
    return records


def run_generate_eval(cfg: GenerateEvalConfig) -> dict[str, Any]:
    """Generate, score and write; returns the metrics.json content."""
    import trimodal

    m = trimodal.load(cfg.checkpoint, device=cfg.device)
    have = [t for t, mod in (("image", "image"), ("speech", "audio")) if mod in m.tokenizers]
    tasks = list(cfg.tasks) or have
    missing = [t for t in tasks if t not in have]
    if missing or not tasks:
        raise ValueError(f"this model has no tokenizer for {missing or 'images or speech'} (it can: {have or 'text only'})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    skipped: list[str] = []
    records = []
    if "image" in tasks:
        records += _images(cfg, m, read_prompts(cfg.prompts, "image"), out, metrics, skipped)
    if "speech" in tasks:
        records += _speech(cfg, m, read_prompts(cfg.prompts, "speech"), out, metrics, skipped)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    result = {"checkpoint": m.source, "step": m.step, "loaded": m.describe(), "seed": cfg.seed, "metrics": metrics,
              "skipped": skipped, "weights": {k: getattr(cfg, k) for k in ("inception", "clip", "asr", "audio_embed")},
              "prompts": cfg.prompts or "built-in"}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def format_result(result: dict[str, Any], out: str) -> str:
    lines = [result["loaded"]]
    for task, res in result["metrics"].items():
        vals = ", ".join(f"{k} {res[k]:.4f}" for k in ("fid", "clip_score", "wer", "fad") if k in res)
        lines.append(f"  {task}: {res['n']} sample(s){': ' + vals if vals else ''}")
    if result["skipped"]:
        lines.append(f"  not scored: {'; '.join(result['skipped'])}")
    lines.append(f"wrote {out}/metrics.json, samples and contact sheet")
    return "\n".join(lines)
