"""``trimodal demo``: the whole chain on the small sample shipped with the package.

tokenizers (SentencePiece trained here; *tiny random-initialised* MoVQGAN and DAC saved to disk
and loaded back through the real loading path) → Beam pipelines for text, image-text and
audio-text → shard statistics → a short CPU training run → sampling (text, PNG, WAV).

A random image/audio tokenizer decodes to noise: the demo proves the plumbing, not quality.
Point the pipelines at the real MoVQGAN / DAC weights for real images and speech (README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from trimodal.config import option

DATA = resources.files("trimodal") / "data"
SEQ_LEN = 256  # fits a 0.9 s clip (45 frames x 4 codebooks) plus its transcript


@dataclass
class DemoConfig:
    out: str = option("demo_out", help="output folder")
    steps: int | None = option(None, help="training steps (default 200: about a CPU minute)")
    modalities: str = option("text,image,audio", help="comma list of text,image,audio")
    audio_codec: str = option("dac", help="the demo's (tiny, random) audio codec: dac or higgs")

    def __post_init__(self) -> None:
        mods = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if set(mods) - {"text", "image", "audio"} or "text" not in mods:
            raise ValueError(f"--modalities must include text and only text,image,audio; got {self.modalities!r}")
        if self.audio_codec not in ("dac", "higgs"):
            raise ValueError(f"--audio-codec must be dac or higgs, got {self.audio_codec!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")

    @property
    def modality_list(self) -> list[str]:
        return [m.strip() for m in self.modalities.split(",") if m.strip()]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _write_tiny_image_tokenizer(path: Path) -> None:
    import torch

    from trimodal.tokenizers.movqgan import MoVQGAN, MoVQGANConfig, save_movqgan

    torch.manual_seed(0)
    save_movqgan(MoVQGAN(MoVQGANConfig.tiny()), str(path))


def _write_tiny_audio_tokenizer(path: Path) -> None:
    import torch

    from trimodal.tokenizers.dac import DAC, DACConfig, save_dac

    torch.manual_seed(0)
    cfg = DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], latent_dim=None, decoder_dim=64,
                    decoder_rates=[8, 5, 4, 2], n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=16000)
    save_dac(DAC(cfg), str(path))


def _write_tiny_higgs(folder: Path) -> None:
    """A tiny random Higgs Audio v2 tokenizer (the layout of the released one, small widths)."""
    import torch

    from trimodal.tokenizers.higgs import HiggsConfig, build_higgs_model, save_higgs

    torch.manual_seed(0)
    config_json = json.loads((DATA / "higgs_tiny_config.json").read_text())
    model = build_higgs_model(HiggsConfig.from_dict(config_json))
    save_higgs(model, folder, config_json)


def _synthesise_speech_corpus(folder: Path, sr: int = 16000) -> Path:
    """A few short clips (tones and chirps) with transcripts, as a NeMo-style JSON-lines manifest."""
    from trimodal.tokenizers.audio_io import write_wav

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (kind, f0) in enumerate([("rising", 220), ("falling", 440), ("steady", 330), ("rising", 262),
                                    ("falling", 392), ("steady", 294), ("rising", 349), ("steady", 494)]):
        seconds = 0.5 + 0.2 * (i % 3)
        t = np.arange(int(sr * seconds)) / sr
        slope = {"rising": 1.0, "falling": -0.5, "steady": 0.0}[kind]
        phase = 2 * np.pi * f0 * (t + slope * t**2 / (2 * seconds))
        wav = 0.3 * np.sin(phase) * np.minimum(1.0, 20 * t) * np.minimum(1.0, 20 * (seconds - t))
        wav = (wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        name = f"clip_{i:02d}.wav"
        write_wav(str(folder / name), wav, sr)
        lines.append({"audio_filepath": name, "text": f"a {kind} tone near {f0} hertz", "duration": seconds})
    lines.append({"audio_filepath": "missing.wav", "text": "this file does not exist"})
    (folder / "bad.wav").write_bytes(b"RIFF\x00\x00")
    lines.append({"audio_filepath": "bad.wav", "text": "a truncated file"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


HELD_OUT = 2  # images and clips of the small sample kept for the held-out ELBO


def holding_out(record_ids: list[str], n: int) -> float:
    """The val fraction that puts exactly ``n`` of these records in the val split. The split is a
    hash of each id, and a dozen records at a fixed fraction could give none: the demo picks the
    fraction from the ids the pipeline will see (the same hash, ``split_hash``)."""
    from trimodal.pipelines.sink import split_hash

    h = sorted(split_hash(i) for i in record_ids)
    if len(h) <= n:
        raise ValueError(f"{len(h)} records cannot hold out {n}")
    return (h[n - 1] + h[n]) / 2


def run_demo(cfg: DemoConfig | None = None) -> dict:
    from trimodal.pipelines.common import summary
    from trimodal.pipelines.records import Record
    from trimodal.pipelines.text import TextPipelineConfig, run_text_pipeline
    from trimodal.pipelines.text_readers import read_text_file
    from trimodal.shards.report import format_stats, write_plots
    from trimodal.shards.stats import compute_stats
    from trimodal.tokenizers.text import train_text_tokenizer
    from trimodal.train.trainer import TrainConfig, train

    cfg = cfg or DemoConfig()
    modalities, steps = cfg.modality_list, cfg.steps
    root = Path(cfg.out).resolve()
    (root / "tokenizers").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    text_files = sorted(str(p) for p in (DATA / "text").iterdir() if p.name.endswith(".jsonl"))
    speech_sr = 24000 if cfg.audio_codec == "higgs" else 16000
    speech_manifest = _synthesise_speech_corpus(root / "raw" / "speech", speech_sr) if "audio" in modalities else None

    # 1. tokenizers -----------------------------------------------------------------------
    captions = [json.loads(l)["caption"] for l in (DATA / "images" / "captions.jsonl").read_text().splitlines()]
    transcripts = [json.loads(l)["text"] for l in speech_manifest.read_text().splitlines()] if speech_manifest else []

    def corpus():
        for url in text_files:
            for rec in read_text_file(url):
                if isinstance(rec, Record):
                    yield rec.text
        yield from captions * 5
        yield from transcripts * 5

    text_model = root / "tokenizers" / "text.model"
    tok = train_text_tokenizer(corpus(), 1024, str(text_model))
    _say(f"text tokenizer: {text_model} (SentencePiece BPE, {tok.vocab_size} pieces)")
    image_ckpt = root / "tokenizers" / "movqgan_tiny_random.ckpt"
    audio_ckpt = root / "tokenizers" / ("higgs_tiny_random" if cfg.audio_codec == "higgs" else "dac_tiny_random.pth")
    if "image" in modalities:
        _write_tiny_image_tokenizer(image_ckpt)
        _say(f"image tokenizer: {image_ckpt} (tiny MoVQGAN, RANDOM weights: decoded images are noise)")
    if "audio" in modalities and cfg.audio_codec == "higgs":
        _write_tiny_higgs(audio_ckpt)
        _say(f"audio tokenizer: {audio_ckpt} (tiny Higgs Audio v2, 24 kHz, RANDOM weights: decoded audio is noise)")
    elif "audio" in modalities:
        _write_tiny_audio_tokenizer(audio_ckpt)
        _say(f"audio tokenizer: {audio_ckpt} (tiny 16 kHz DAC, RANDOM weights: decoded audio is noise)")

    # 2. pipelines (Apache Beam, DirectRunner) -------------------------------------------
    beam_args = ["--runner=DirectRunner"]
    datasets = {}
    text_root = str(root / "data" / "text")
    # 5 % of the documents (by a hash of their id) go to the val split: the held-out ELBO below
    m = run_text_pipeline(TextPipelineConfig(inputs=text_files, text_tokenizer=str(text_model), out=text_root,
                                             target_shard_bytes=64_000, val_fraction=0.05), beam_args)
    _say("pipeline text:\n" + summary(m, text_root))
    datasets["text"] = text_root
    if "image" in modalities:
        from trimodal.pipelines.image_text import ImageTextPipelineConfig, run_image_text_pipeline

        from trimodal.pipelines.image_readers import ImageTextReader, expand_image_inputs

        image_root = str(root / "data" / "image_text")
        captions = str(DATA / "images" / "captions.jsonl")
        reader = ImageTextReader("folder", captions=captions, lazy=True)
        image_ids = [r.id for url in expand_image_inputs([str(DATA / "images")], "folder") for r in reader(url)
                     if isinstance(r, Record)]
        m = run_image_text_pipeline(ImageTextPipelineConfig(
            inputs=[str(DATA / "images")], captions=captions, format="folder",
            text_tokenizer=str(text_model), image_tokenizer=str(image_ckpt), out=image_root,
            device="cpu", target_shard_bytes=64_000, val_fraction=holding_out(image_ids, HELD_OUT)), beam_args)
        _say("pipeline image-text:\n" + summary(m, image_root))
        datasets["image_text"] = image_root
    if "audio" in modalities:
        from trimodal.pipelines.audio_text import AudioTextPipelineConfig, run_audio_text_pipeline

        from trimodal.pipelines.audio_readers import AudioTextReader

        audio_root = str(root / "data" / "audio_text")
        clip_ids = [r.id for r in AudioTextReader("manifest")(str(speech_manifest))  # the good clips
                    if isinstance(r, Record) and Path(r.provenance.get("audio", "")).name.startswith("clip_")]
        m = run_audio_text_pipeline(AudioTextPipelineConfig(
            inputs=[str(speech_manifest)], text_tokenizer=str(text_model), audio_tokenizer=str(audio_ckpt),
            out=audio_root, format="manifest", device="cpu", target_shard_bytes=64_000,
            val_fraction=holding_out(clip_ids, HELD_OUT)), beam_args)
        _say("pipeline audio-text:\n" + summary(m, audio_root))
        datasets["audio_text"] = audio_root

    # 3. statistics -------------------------------------------------------------------------
    stats = compute_stats(list(datasets.values()), seq_len=SEQ_LEN)
    plots = write_plots(stats, str(root / "stats"))
    (root / "stats").mkdir(parents=True, exist_ok=True)
    (root / "stats" / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
    _say("shard statistics:\n" + format_stats(stats))

    # 4. training -----------------------------------------------------------------------------
    run_dir = root / "run"
    n_steps = steps or 200
    tcfg = TrainConfig.load(None, [
        f"run.out_dir={run_dir}", "run.overwrite=true", f"run.steps={n_steps}", "run.batch_size=8", "run.log_every=25",
        f"run.ckpt_every={max(1, n_steps // 2)}", "run.device=cpu", "run.progress=true",
        f"data.seq_len={SEQ_LEN}", "data.num_streams=2",
        "model.dim=128", "model.n_layers=4", "model.n_heads=4", f"model.max_seq_len={SEQ_LEN}",
        "optim.lr=3e-3", "optim.warmup_steps=20", "optim.min_lr=3e-4", "optim.weight_decay=0.0",
        f"eval.every={max(1, n_steps // 2)}", "eval.rows=16", "eval.t_levels=4",
    ])
    from trimodal.shards.loader import SourceConfig

    tcfg.data.sources = [SourceConfig(root=r) for r in datasets.values()]
    tcfg.eval.sources = [SourceConfig(root=r) for r in datasets.values()]  # their val splits: every modality
    _say(f"training a {tcfg.model.n_layers}x{tcfg.model.dim} model for {n_steps} steps on CPU ...")
    result = train(tcfg)

    # 5. sampling -------------------------------------------------------------------------------
    from trimodal.train.generate import SampleConfig, run_sample

    samples = root / "samples"
    outputs = {}
    base = dict(checkpoint=str(run_dir), device="cpu", length=48, seconds=1.0)
    for task, prompt, name, extra in [
        ("text", "Return a new", "text.txt", {"steps": 48}),
        ("text", "", "text_unconditional.txt", {"steps": 48, "seed": 1}),
        ("image", "a red circle on a white background", "image.png", {"steps": 16, "num": 4}),
        ("speech", "a rising tone near 220 hertz", "speech.wav", {"steps": 25, "seconds": 0.5}),
    ]:
        if (task == "image" and "image" not in modalities) or (task == "speech" and "audio" not in modalities):
            continue
        scfg = SampleConfig(**{**base, **extra, "task": task, "prompt": prompt, "out": str(samples / name)})
        for line in run_sample(scfg):
            _say(f"sample {task} ({prompt!r}): {line}")
        outputs[name] = str(samples / name)

    elapsed = time.perf_counter() - t_start
    # The 1/t-weighted loss of one step is noisy: compare the means of the first and last 10 steps.
    losses = result["losses"]
    k = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    fell = last < first
    _say(f"first loss {first:.4f} -> last loss {last:.4f} (means of the first/last {k} steps; "
         f"{'fell' if fell else 'DID NOT FALL'}) over {n_steps} steps")
    from trimodal.train.metrics import read_log

    for rec in (r for r in read_log(result["log"]) if r.get("event") == "eval"):
        bpb = rec.get("bits_per_byte/text")
        per = ", ".join(f"{m} {rec[f'elbo/{m}']:.4f}" for m in ("text", "image", "audio") if f"elbo/{m}" in rec)
        _say(f"held-out ELBO at step {rec['step']}: {rec['elbo']:.4f} ± {rec['elbo_se']:.4f} nats/token ({per})"
             + (f", text {bpb:.3f} bits/byte" if bpb is not None else ""))
    _say("outputs:")
    for label, path in [("tokenizers", root / "tokenizers"), *[(f"dataset {k}", v) for k, v in datasets.items()],
                        ("stats", root / "stats" / "stats.json"), *[("plot", p) for p in plots],
                        ("training log", result["log"]), ("checkpoints", result["checkpoints"]),
                        *[("sample", p) for p in outputs.values()]]:
        _say(f"  {label:<20} {path}")
    _say(f"done in {elapsed:.0f} s")
    if not fell:
        raise RuntimeError(f"demo training loss did not fall: {first:.4f} -> {last:.4f}")
    return {"result": result, "datasets": datasets, "outputs": outputs, "stats": stats}
