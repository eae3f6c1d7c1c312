"""Load any tokenizer from the path a user gives, or from what a manifest recorded.

- text: a SentencePiece ``.model`` file, or tiktoken (a ``.tiktoken`` rank file, or a named
  encoding such as ``cl100k_base`` resolved offline from ``TIKTOKEN_CACHE_DIR``);
- image: a MoVQGAN checkpoint;
- audio: a DAC weight file (``weights_*.pth``) or a Higgs Audio v2 ``save_pretrained`` folder
  (``config.json`` + ``model.safetensors``).

The sampler and ``trimodal eval`` reload tokenizers from the :class:`TokenizerInfo` stored in a
checkpoint (its ``path``); a file whose fingerprint differs from the recorded one is refused.
"""

from __future__ import annotations

from typing import Any

from trimodal import storage
from trimodal.tokenizers.base import TokenizerInfo


def load_text_tokenizer(spec: str) -> Any:
    """SentencePiece or tiktoken, by what ``spec`` names."""
    from trimodal.tokenizers.tiktoken_text import TiktokenTokenizer, is_tiktoken_spec

    if is_tiktoken_spec(spec):
        return TiktokenTokenizer.from_path(spec)
    from trimodal.tokenizers.text import TextTokenizer

    return TextTokenizer.from_path(spec)


def is_higgs_folder(path: str) -> bool:
    fs, p = storage.fs_and_path(path)
    return fs.isdir(p) and fs.exists(f"{p}/config.json")


def load_audio_tokenizer(path: str, n_keep: int = 4, device: str = "cpu", allow_tf32: bool = False) -> Any:
    """A DAC weight file or a Higgs Audio v2 folder."""
    if is_higgs_folder(path):
        from trimodal.tokenizers.higgs import HiggsTokenizer

        return HiggsTokenizer.from_path(path, n_keep=n_keep, device=device, allow_tf32=allow_tf32)
    from trimodal.tokenizers.dac import DACTokenizer

    return DACTokenizer.from_path(path, n_keep=n_keep, device=device, allow_tf32=allow_tf32)


def load_image_tokenizer(path: str, device: str = "cpu", batch_size: int = 16, allow_tf32: bool = False) -> Any:
    from trimodal.tokenizers.movqgan import MoVQGANTokenizer

    return MoVQGANTokenizer.from_path(path, device=device, batch_size=batch_size, allow_tf32=allow_tf32)


def load_from_info(info: TokenizerInfo, path: str | None = None, device: str = "cpu") -> Any:
    """Reload the tokenizer a manifest or checkpoint recorded (``path`` overrides the recorded
    one), refusing one whose fingerprint differs."""
    where = path or info.path
    if not where:
        raise ValueError(f"no {info.modality} tokenizer path recorded: pass --{info.modality}-tokenizer")
    if info.modality == "text":
        tok = load_text_tokenizer(where)
    elif info.modality == "image":
        tok = load_image_tokenizer(where, device=device)
    else:
        tok = load_audio_tokenizer(where, n_keep=info.levels or 4, device=device)
    if tok.fingerprint != info.fingerprint:
        raise ValueError(f"{info.modality} tokenizer at {where} has fingerprint {tok.fingerprint}, the data was made with "
                         f"{info.fingerprint} ({info.kind}): pass the tokenizer the data was made with")
    return tok
