"""Small random-initialised metric weights, written through the real save formats, so the whole
evaluation path can be run (and tested) without the real models: the FID Inception (real
architecture, random weights, ``torch.save`` of its state dict), and tiny CLIP, CTC-ASR, Whisper
and HuBERT folders (``save_pretrained``). Every number they give is meaningless.

    python -m trimodal.quality.tiny OUT    # writes OUT/{inception,clip,asr,whisper,audio_embed}
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


def _letter_vocab(specials: list[str], space: str, suffix: str) -> dict[str, int]:
    """Single letters, each also as a word start (``space`` prefix) or word end (``suffix``)."""
    vocab = {t: i for i, t in enumerate(specials)}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[space + c + suffix] = len(vocab)
    return vocab


def _clip_tokenizer(tf, folder: Path):
    # transformers 5's tokenizers take the vocabulary itself (``vocab=``; a ``vocab_file=`` is ignored)
    tok = tf.CLIPTokenizer(vocab=_letter_vocab(["<|startoftext|>", "<|endoftext|>"], "", "</w>"), merges=[])
    tok.save_pretrained(str(folder))
    return len(tok)


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


def write_whisper(folder: Path, seed: int = 0) -> Path:
    """A tiny Whisper (sequence-to-sequence ASR) with a letter vocabulary: the other WER path."""
    tf = transformers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    tok = tf.WhisperTokenizer(vocab=_letter_vocab(specials, "\u0120", ""), merges=[])
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    proc = tf.WhisperProcessor(feature_extractor=tf.WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    cfg = tf.WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=1500, max_target_positions=32, pad_token_id=eot, bos_token_id=eot,
                           eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=None, suppress_tokens=None)
    model = tf.WhisperForConditionalGeneration(cfg)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.no_timestamps_token_id, gen.forced_decoder_ids = sot, ids["<|notimestamps|>"], None
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def write_all(out: str | Path, seed: int = 0) -> dict[str, str]:
    out = Path(out)
    return {"inception": str(write_inception(out / "inception", seed)),
            "clip": str(write_clip(out / "clip", seed)),
            "asr": str(write_asr(out / "asr", seed)),
            "whisper": str(write_whisper(out / "whisper", seed)),
            "audio_embed": str(write_audio_embedder(out / "audio_embed", seed))}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m trimodal.quality.tiny OUT")
    for k, v in write_all(sys.argv[1]).items():
        print(f"{k}: {v}")
