"""Small random-initialised metric weights, written through the real save formats, so the whole
evaluation path can be run (and tested) without the real models: the FID Inception (real
architecture, random weights, ``torch.save`` of its state dict), and tiny CLIP, CTC-ASR and
HuBERT folders (``save_pretrained``). Every number they give is meaningless.

    python -m trimodal.quality.tiny OUT    # writes OUT/{inception,clip,asr,audio_embed}
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from trimodal.quality.hf import transformers

LETTERS = "abcdefghijklmnopqrstuvwxyz'"


def write_inception(folder: Path, seed: int = 0) -> Path:
    from trimodal.quality.inception import FID_WEIGHTS, FIDInceptionV3

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FID_WEIGHTS
    net = FIDInceptionV3()
    for mod in net.modules():  # He init keeps the activations' scale through 94 layers
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def _clip_tokenizer(tf, folder: Path):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        tok = tf.CLIPTokenizer(vocab_file=str(Path(d) / "vocab.json"), merges_file=str(Path(d) / "merges.txt"))
    tok.save_pretrained(str(folder))
    return len(vocab)


def write_clip(folder: Path, seed: int = 0) -> Path:
    tf = transformers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = _clip_tokenizer(tf, folder)
    cfg = tf.CLIPConfig(
        text_config=dict(vocab_size=n_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    tf.CLIPModel(cfg).save_pretrained(str(folder))
    tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def _feature_extractor(tf):
    return tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                       return_attention_mask=False)


def _tiny_conv() -> dict:
    return dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                num_conv_pos_embedding_groups=2, do_stable_layer_norm=False)


def write_asr(folder: Path, seed: int = 0) -> Path:
    """A tiny wav2vec2 CTC model with a character vocabulary (``|`` is the word delimiter)."""
    tf = transformers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        tok = tf.Wav2Vec2CTCTokenizer(str(Path(d) / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                      word_delimiter_token="|")
    proc = tf.Wav2Vec2Processor(feature_extractor=_feature_extractor(tf), tokenizer=tok)
    cfg = tf.Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0, **_tiny_conv())
    tf.Wav2Vec2ForCTC(cfg).save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def write_audio_embedder(folder: Path, seed: int = 0) -> Path:
    tf = transformers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tf.HubertModel(tf.HubertConfig(**_tiny_conv())).save_pretrained(str(folder))
    _feature_extractor(tf).save_pretrained(str(folder))
    return folder


def write_all(out: str | Path, seed: int = 0) -> dict[str, str]:
    out = Path(out)
    return {"inception": str(write_inception(out / "inception", seed)),
            "clip": str(write_clip(out / "clip", seed)),
            "asr": str(write_asr(out / "asr", seed)),
            "audio_embed": str(write_audio_embedder(out / "audio_embed", seed))}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m trimodal.quality.tiny OUT")
    for k, v in write_all(sys.argv[1]).items():
        print(f"{k}: {v}")
