"""The Python API: load a trained model and generate or score with it, no command line needed.

    import trimodal
    m = trimodal.load("runs/my")                 # a run, a checkpoint, or an exported folder
    print(m.generate_text("The design space of", length=48))
    images = m.generate_image("a red bicycle", num=4)           # uint8 [4, H, W, 3]
    wav, sr = m.generate_speech("hello there", seconds=3.0)
    m.score_choices("The capital of France is", [" Paris", " Rome"])   # ELBO per choice, nats
    m.elbo_of_text("a held-out sentence")

``load`` accepts a run folder (its newest complete checkpoint), a checkpoint folder
(``step-NNNNNNN``) or a folder written by ``trimodal export`` (``model.safetensors`` +
``config.json``; no FSDP or DCP needed to read it). It says which one it loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trimodal import storage
from trimodal.config import from_dict
from trimodal.tokenizers.base import TokenizerInfo
from trimodal.tokenizers.vocab import AUDIO, IMAGE, TEXT, VocabLayout
from trimodal.train.model import ModelConfig, Transformer

EXPORT_MODEL = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT = "trimodal-export"


class ExportError(ValueError):
    """An exported folder is damaged or incomplete; the message names the file."""


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a run / checkpoints folder (its newest complete checkpoint)."""
    from trimodal.train import checkpoint as ckpt

    fs, p = storage.fs_and_path(path)
    if fs.exists(f"{p}/{ckpt.FILES}"):
        return path
    for root in (storage.join(path, "checkpoints"), path):
        found = ckpt.complete_checkpoints(root)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no complete checkpoint under {path} (and it is not an exported model folder)")


def is_export(path: str) -> bool:
    fs, p = storage.fs_and_path(path)
    return fs.exists(f"{p}/{EXPORT_MODEL}") and fs.exists(f"{p}/{EXPORT_CONFIG}")


@dataclass
class Model:
    """A loaded denoiser with its vocabulary layout and the tokenizers its data was made with."""

    model: Transformer
    layout: VocabLayout
    tokenizers: dict[str, TokenizerInfo]
    source: str  # what was loaded
    step: int | None = None
    run_id: str | None = None
    seq_len: int | None = None  # the trained row length
    param: dict[str, Any] = field(default_factory=dict)  # the run's parametrization section
    # what scoring must match in the run: its objective section and data.document_attention
    scoring: dict[str, Any] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        what = f"step {self.step}" if self.step is not None else "exported model"
        return f"loaded {self.source} ({what}{f', run {self.run_id}' if self.run_id else ''})"

    # ---- tokenizers ---------------------------------------------------------------------------
    def tokenizer(self, modality: str, path: str | None = None) -> Any:
        """The tokenizer of ``modality`` (text/image/audio), loaded once; ``path`` overrides the
        recorded location (its fingerprint must still match)."""
        key = (modality, path)
        if key not in self._loaded:
            from trimodal.tokenizers.registry import load_from_info

            info = self.tokenizers.get(modality)
            if info is None:
                raise ValueError(f"this model's data had no {modality} tokenizer")
            self._loaded[key] = load_from_info(info, path, device=str(self.device))
        return self._loaded[key]

    # ---- generation -----------------------------------------------------------------------------
    def _sample(self, tpl, task: str, seed: int, label: str | None = None, **overrides: Any) -> torch.Tensor:
        from trimodal.train.sampler import SamplerConfig, sample

        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = SamplerConfig.for_task(task, seed=seed, **given)
        if not bool(tpl.prompt.any()) and cfg.cfg_scale != 1.0:  # nothing to guide by: unconditional
            cfg = SamplerConfig.for_task(task, seed=seed, **{**given, "cfg_scale": 1.0})
        d = self.device
        return sample(self.model, tpl.tokens.to(d), tpl.modality.to(d), self.layout, cfg, prompt=tpl.prompt.to(d),
                      progress=label or f"sampling {task}").cpu()

    def _prompt_ids(self, prompt: str, text_tokenizer: str | None) -> np.ndarray:
        return self.tokenizer("text", text_tokenizer).encode_one(prompt) if prompt else np.zeros(0, dtype=np.int64)

    def generate_text(self, prompt: str = "", length: int = 64, seed: int = 0, text_tokenizer: str | None = None,
                      **sampler: Any) -> str:
        """Continue ``prompt`` with ``length`` new text tokens (an empty prompt: unconditional)."""
        from trimodal.train.sampler import span, text_template

        tpl = text_template(self.layout, self._prompt_ids(prompt, text_tokenizer), length)
        row = self._sample(tpl, "text", seed, **sampler)
        ids = span(self.layout, row, TEXT) - self.layout.text.offset
        ids = ids[(ids >= 0) & (ids < self.layout.text.codes)]
        tok = self.tokenizer("text", text_tokenizer)
        keep = getattr(tok, "_is_token", None)  # tiktoken has ids without a token (cl100k: 100256, …)
        return tok.decode([int(i) for i in ids.tolist() if keep is None or keep(int(i))])

    def generate_image(self, prompt: str, num: int = 1, seed: int = 0, text_tokenizer: str | None = None,
                       image_tokenizer: str | None = None, **sampler: Any) -> np.ndarray:
        """``num`` images for ``prompt``: uint8 [num, H, W, 3] (seeds ``seed`` … ``seed+num-1``)."""
        from trimodal.train.sampler import media_template, span

        tok = self.tokenizer("image", image_tokenizer)
        info = self.tokenizers.get("image")
        grid = tuple(info.grid) if info is not None and info.grid else tok.grid
        tpl = media_template(self.layout, "image_text", grid[0] * grid[1], self._prompt_ids(prompt, text_tokenizer))
        codes = []
        for i in range(num):
            row = self._sample(tpl, "image_text", seed + i, f"image {i + 1}/{num}", **sampler)
            local = (span(self.layout, row, IMAGE) - self.layout.image.offset).numpy()
            codes.append(local[: grid[0] * grid[1]].reshape(grid))
        return tok.decode(np.stack(codes))

    def max_speech_seconds(self, prompt_tokens: int = 0) -> float:
        """The longest clip a trained row holds after a prompt of ``prompt_tokens`` tokens."""
        from trimodal.shards.rows import paired_length

        info = self.tokenizers.get("audio")
        if info is None or not info.frame_rate:
            raise ValueError("this model's data had no audio tokenizer with a frame rate")
        budget = (self.seq_len or self.model.cfg.max_seq_len) - paired_length(0, prompt_tokens)
        return max(0.0, budget // self.layout.audio_levels / info.frame_rate)

    def generate_speech(self, prompt: str, seconds: float = 5.0, num: int = 1, seed: int = 0,
                        text_tokenizer: str | None = None, audio_tokenizer: str | None = None,
                        **sampler: Any) -> tuple[np.ndarray, int]:
        """``num`` clips of ``seconds`` for ``prompt``, concatenated: (float32 wav, sample rate).
        A duration beyond what a trained row holds is refused, naming the maximum."""
        from trimodal.train.sampler import media_template, span

        if not seconds > 0:
            raise ValueError(f"--seconds must be positive, got {seconds}")
        prompt_ids = self._prompt_ids(prompt, text_tokenizer)
        limit = self.max_speech_seconds(int(prompt_ids.size))
        tok = self.tokenizer("audio", audio_tokenizer)
        frames = max(1, math.ceil(tok.frames_per_second * seconds - 1e-9))  # never shorter than asked
        if frames > math.floor(limit * tok.frames_per_second + 1e-9):
            raise ValueError(f"--seconds {seconds} is beyond what a row of {self.seq_len} positions holds with this "
                             f"prompt: at most {limit:.2f} s")
        tpl = media_template(self.layout, "audio_text", frames * self.layout.audio_levels, prompt_ids)
        waves = []
        for i in range(num):
            row = self._sample(tpl, "audio_text", seed + i, f"speech {i + 1}/{num}", **sampler)
            codes = self.layout.audio_from_global(span(self.layout, row, AUDIO).numpy())
            waves.append(tok.decode(codes)[: int(round(seconds * tok.sample_rate))])
        return np.concatenate(waves), tok.sample_rate

    # ---- scoring --------------------------------------------------------------------------------
    def score_choices(self, prompt: str, choices: list[str], samples: int = 8, seed: int = 0) -> list[float]:
        """Conditional ELBO (nats, a lower bound on log p) of each continuation given ``prompt``."""
        from trimodal.train.evaluate import score_choices

        tok = self.tokenizer("text")
        return score_choices(self.model, self.layout, [int(x) for x in tok.encode_one(prompt)],
                             [[int(x) for x in tok.encode_one(c)] for c in choices], samples, seed)

    def elbo_of_text(self, text: str, samples: int = 8, seed: int = 0) -> float:
        """ELBO (nats) of a whole text: its conditional ELBO given an empty prompt."""
        return self.score_choices("", [text], samples, seed)[0]


def _parametrize(model: Transformer, config: dict[str, Any]) -> None:
    """The forward-pass part of the run's parametrization (CompleteP's residual multipliers):
    weights alone do not carry it."""
    from trimodal.train.parametrization import param_config_of, set_parametrization

    set_parametrization(model, param_config_of(config))


def _state_dict_from_checkpoint(path: str, model: Transformer) -> None:
    from trimodal.train import checkpoint as ckpt

    ckpt.load_checkpoint(path, model, None)


def scoring_of(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's config that an ELBO of its model depends on."""
    data = config.get("data") or {}
    ev = config.get("eval") or {}
    return {"objective": config.get("objective") or {}, "document_attention": bool(data.get("document_attention")),
            # the run's own held-out estimator: `trimodal eval` reuses it so it reproduces the logged ELBO
            "eval": {k: ev[k] for k in ("rows", "t_levels", "seed", "split") if k in ev}}


def verify_export(path: str) -> None:
    """Check every file of an export against its ``files.json`` (sizes and SHA-256s, written by
    :func:`export`); raises :class:`ExportError` naming the first bad file."""
    from trimodal import integrity

    url = storage.join(path, integrity.FILES)
    hint = "(pass --no-verify-model, or verify=False, to load it anyway)"
    try:
        record = json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise ExportError(f"{url}: missing: the export cannot be verified {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{url}: damaged ({e}) {hint}") from None
    problem = integrity.files_problem(record, required=(EXPORT_MODEL, EXPORT_CONFIG))
    if problem:
        raise ExportError(f"{url}: damaged ({problem}) {hint}")
    for name, meta in sorted(record["files"].items()):
        integrity.check_file(path, name, meta, ExportError)


def _export_config(path: str) -> dict[str, Any]:
    url = storage.join(path, EXPORT_CONFIG)
    try:
        meta = json.loads(storage.read_bytes(url))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{url}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{url}: a JSON {type(meta).__name__}, not an object")
    return meta


def load(path: str, device: str = "auto", verify: bool = True) -> Model:
    """A model from a run, checkpoint or export folder (see the module docstring). An export is
    checked against its ``files.json`` first unless ``verify=False`` (a checkpoint always is)."""
    from trimodal.tokenizers.runtime import resolve_device

    dev = resolve_device(device)
    if is_export(path):
        if verify:
            verify_export(path)
        meta = _export_config(path)
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path}/{EXPORT_CONFIG} is not a trimodal export (format={meta.get('format')!r})")
        layout = VocabLayout.from_dict(meta["layout"])
        model = Transformer(from_dict(ModelConfig, meta["model"]), layout)
        _parametrize(model, meta)
        from safetensors.torch import load as load_safetensors

        sd = load_safetensors(storage.read_bytes(storage.join(path, EXPORT_MODEL)))
        model.load_state_dict(sd, strict=True)
        tokenizers = {}
        for k, v in meta.get("tokenizers", {}).items():
            info = TokenizerInfo.from_dict(v, k)
            if info.path and not info.path.startswith("/") and "://" not in info.path:
                from dataclasses import replace

                info = replace(info, path=storage.join(path, info.path))  # files shipped inside the export
            tokenizers[k] = info
        out = Model(model.to(dev).eval(), layout, tokenizers, path, meta.get("step"), meta.get("run_id"), meta.get("seq_len"),
                    meta.get("param") or {}, meta.get("scoring") or {})
    else:
        from trimodal.train import checkpoint as ckpt

        found = resolve_checkpoint(path)
        state = ckpt.read_state(found)
        layout = VocabLayout.from_dict(state["layout"])
        model = Transformer(from_dict(ModelConfig, state["config"]["model"]), layout)
        _parametrize(model, state["config"])
        _state_dict_from_checkpoint(found, model)
        tokenizers = {k: TokenizerInfo.from_dict(v, k) for k, v in (state.get("tokenizers") or {}).items()}
        seq_len = ((state.get("config") or {}).get("data") or {}).get("seq_len")
        config = state.get("config") or {}
        out = Model(model.to(dev).eval(), layout, tokenizers, found, int(state["step"]), state.get("run_id"), seq_len,
                    config.get("param") or {}, scoring_of(config))
    return out


def export(checkpoint: str, out: str) -> list[str]:
    """Write ``out/model.safetensors``, ``out/config.json`` (model config, layout, tokenizers,
    step, run id) and the tokenizer files (``out/tokenizers/``): a folder that loads with
    :func:`load` (or plain ``safetensors``) without FSDP or DCP. Returns the files written."""
    from safetensors.torch import save as save_safetensors

    m = load(checkpoint, device="cpu")
    fs, root = storage.fs_and_path(out)
    if fs.exists(root) and fs.ls(root):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    fs.makedirs(root, exist_ok=True)
    written = []
    sd = {k: v.detach().cpu().contiguous() for k, v in m.model.state_dict().items()}
    storage.write_atomic(storage.join(out, EXPORT_MODEL), save_safetensors(sd))
    written.append(storage.join(out, EXPORT_MODEL))
    tokenizers = {}
    for name, info in m.tokenizers.items():
        d = info.to_dict()
        if info.path:
            rel = _copy_tokenizer(info.path, out, name)
            if rel is not None:
                d["path"] = rel
                written.append(storage.join(out, rel))
        tokenizers[name] = d
    from dataclasses import asdict

    meta = {"format": EXPORT_FORMAT, "model": asdict(m.model.cfg), "layout": m.layout.to_dict(), "tokenizers": tokenizers,
            "step": m.step, "run_id": m.run_id, "seq_len": m.seq_len, "source": m.source, "param": m.param,
            "scoring": m.scoring}
    storage.write_atomic(storage.join(out, EXPORT_CONFIG), json.dumps(meta, indent=1, sort_keys=True).encode())
    written.append(storage.join(out, EXPORT_CONFIG))
    from trimodal import integrity

    # written last, like a checkpoint's: every file above with its size and sha256
    names = [f[len(root.rstrip("/")) + 1:] for f in fs.find(root)]
    record = {"format": EXPORT_FORMAT, "files": integrity.list_files(out, [n for n in names if n != integrity.FILES])}
    storage.write_atomic(storage.join(out, integrity.FILES), json.dumps(record, indent=1, sort_keys=True).encode())
    written.append(storage.join(out, integrity.FILES))
    return written


def _copy_tokenizer(src: str, out: str, name: str) -> str | None:
    """Copy a tokenizer file or folder (and a MoVQGAN ``.json`` sidecar) into ``out/tokenizers/``;
    returns its path relative to ``out`` (None when the source is gone: the path stays as it was)."""
    fs, p = storage.fs_and_path(src)
    if not fs.exists(p):
        return None
    base = p.rstrip("/").rsplit("/", 1)[-1]
    rel = f"tokenizers/{name}/{base}"
    if fs.isdir(p):
        for f in fs.find(p):
            storage.write_atomic(storage.join(out, rel, f[len(p.rstrip('/')) + 1:]), fs.cat_file(f))
    else:
        storage.write_atomic(storage.join(out, rel), fs.cat_file(p))
        if fs.exists(p + ".json"):
            storage.write_atomic(storage.join(out, rel + ".json"), fs.cat_file(p + ".json"))
    return rel
