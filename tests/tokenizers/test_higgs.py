"""Higgs Audio v2 tokenizer: golden parity with transformers 5.24.0, strict loading of the released
layout, the 24 -> 16 kHz sinc resampler, and the tokenizer interface (as DAC's)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from trimodal.tokenizers.audio_io import resample_sinc
from trimodal.tokenizers.base import Tokenizer, TokenizerInfo
from trimodal.tokenizers.higgs import (
    HiggsConfig,
    HiggsLoadError,
    HiggsTokenizer,
    acoustic_frames,
    build_higgs_model,
    check_state_dict,
    load_higgs,
    semantic_frames,
)
from trimodal.tokenizers.runtime import WeightsMismatch

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "higgs"
TINY = REF / "higgs_tiny_hf"
CODEBOOK_BUFFERS = (".inited", ".cluster_size", ".embed", ".embed_avg")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(REF / "higgs_tiny_golden.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tok() -> HiggsTokenizer:
    return HiggsTokenizer.from_path(TINY)


@pytest.fixture(scope="module")
def released() -> dict:
    return json.loads((REF / "higgs_released_state_dict.json").read_text())


def _clip(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24000
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- golden


def _check_golden(golden: dict[str, np.ndarray], device: str) -> dict[str, float]:
    from safetensors.numpy import load_file

    model = load_higgs(TINY, device=device)
    saved = load_file(str(TINY / "model.safetensors"))  # the weights the golden outputs were made with
    for key, value in model.state_dict().items():  # loaded bit for bit
        np.testing.assert_array_equal(value.cpu().numpy(), saved[key], err_msg=key)
    assert len(model.state_dict()) == len(saved)
    assert model.config.quantizers_for_bandwidth(1) == 4  # codes_4 came from bandwidth=1
    tok = HiggsTokenizer(model, n_keep=4, device=device)
    with tok._inference():
        x = torch.from_numpy(golden["input"])[None, None].to(device)
        codes = model.encode(x).cpu().numpy()
        codes_4 = model.encode(x, n_quantizers=4).cpu().numpy()
        decoded = model.decode(torch.from_numpy(golden["codes"]).to(device)).cpu().numpy()
        decoded_4 = model.decode(torch.from_numpy(golden["codes_4"]).to(device)).cpu().numpy()
    np.testing.assert_array_equal(codes, golden["codes"])
    np.testing.assert_array_equal(codes_4, golden["codes_4"])
    assert decoded.shape == golden["decoded"].shape and decoded_4.shape == golden["decoded_4"].shape
    np.testing.assert_allclose(decoded, golden["decoded"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(decoded_4, golden["decoded_4"], rtol=0, atol=1e-4)
    # the tokenizer path: k = 4 of 8 codebooks by default, uint16, the same numbers
    got = tok.encode([golden["input"]])[0]
    assert got.dtype == np.uint16 and got.shape == (4, 50)
    np.testing.assert_array_equal(got, golden["codes_4"][0])
    wav = tok.decode(got)
    np.testing.assert_allclose(wav, golden["decoded_4"][0, 0], rtol=0, atol=1e-4)
    return {
        "decoded": float(np.abs(decoded - golden["decoded"]).max()),
        "decoded_4": float(np.abs(decoded_4 - golden["decoded_4"]).max()),
    }


def test_golden_codes_and_audio_match_transformers(golden) -> None:
    diffs = _check_golden(golden, "cpu")
    print("max abs diff vs transformers:", diffs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_golden_on_cuda(golden) -> None:
    _check_golden(golden, "cuda")


# ----------------------------------------------------------------------------- released layout


def test_released_config_builds_exactly_the_released_keys(released) -> None:
    model = build_higgs_model(released["config"], "meta")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = released["state_dict_shapes"]
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert got == expected
    n_params = sum(p.numel() for p in model.parameters())
    listed = sum(math.prod(s) for k, s in expected.items() if not k.endswith(CODEBOOK_BUFFERS))
    assert n_params == listed
    assert round(n_params / 1e6) == 200
    cfg = model.config
    assert (cfg.sample_rate, cfg.hop_length, cfg.frame_rate) == (24000, 960, 25)
    assert (cfg.num_quantizers, cfg.codebook_size, cfg.quantizers_for_bandwidth(1)) == (8, 1024, 4)
    check_state_dict(model, expected)  # the checker takes shapes as well as tensors


def test_check_lists_every_offending_key_of_the_released_layout(released) -> None:
    model = build_higgs_model(released["config"], "meta")
    shapes = dict(released["state_dict_shapes"])
    del shapes["fc.bias"]
    shapes["quantizer.quantizers.8.codebook.embed"] = [1024, 64]
    shapes["fc2.weight"] = [255, 1024]
    with pytest.raises(HiggsLoadError) as e:
        check_state_dict(model, shapes)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "fc.bias" in msg
    assert "unexpected keys (1)" in msg and "quantizer.quantizers.8.codebook.embed" in msg
    assert "shape mismatches (1)" in msg and "fc2.weight: file (255, 1024), model (256, 1024)" in msg
    assert isinstance(e.value, WeightsMismatch)


# ----------------------------------------------------------------------------- strict loading


def _copy_tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "higgs"
    shutil.copytree(TINY, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder


def test_tampered_weights_give_one_error_listing_the_keys(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["semantic_model.encoder.layers.1.final_layer_norm.bias"]
    state["quantizer.quantizers.8.project_in.bias"] = torch.zeros(8)
    state["acoustic_decoder.conv2.weight"] = torch.zeros(1, 3, 7)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(HiggsLoadError) as e:
        HiggsTokenizer.from_path(folder)
    msg = str(e.value)
    assert msg.count("weights do not match") == 1
    assert "missing keys (1)" in msg and "semantic_model.encoder.layers.1.final_layer_norm.bias" in msg
    assert "unexpected keys (1)" in msg and "quantizer.quantizers.8.project_in.bias" in msg
    assert "acoustic_decoder.conv2.weight: file (1, 3, 7), model (1, 2, 7)" in msg


def test_unused_hubert_mask_vector_is_dropped_as_transformers_does(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    state = load_file(folder / "model.safetensors")
    save_file({**state, "semantic_model.masked_spec_embed": torch.rand(16)}, folder / "model.safetensors")
    assert "masked_spec_embed" not in dict(load_higgs(folder).named_parameters())
    # a config with masking on builds the vector: then it is an expected key like any other
    cfg = json.loads((folder / "config.json").read_text())
    cfg["semantic_model_config"]["mask_time_prob"] = 0.05
    (folder / "config.json").write_text(json.dumps(cfg))
    assert "semantic_model.masked_spec_embed" in load_higgs(folder).state_dict()
    save_file(state, folder / "model.safetensors")
    with pytest.raises(HiggsLoadError, match="semantic_model.masked_spec_embed"):
        load_higgs(folder)


def test_config_decides_the_expected_keys(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["semantic_model_config"]["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HiggsLoadError, match=r"missing keys \(\d+\)") as e:
        load_higgs(folder)
    assert "semantic_model.encoder.layers.2.attention.q_proj.weight" in str(e.value)


def test_sharded_folder_loads_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(TINY / "config.json", folder / "config.json")
    state = load_file(TINY / "model.safetensors")
    keys = sorted(state)
    parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in parts.items():
        save_file({k: state[k] for k in ks}, folder / name)
    index = {"weight_map": {k: name for name, ks in parts.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load_higgs(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_half_precision_files_load_as_float32(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    state = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, folder / "model.safetensors")
    model = load_higgs(folder)
    assert {v.dtype for v in model.state_dict().values()} == {torch.float32}


def test_loader_refuses_incomplete_folders_and_other_variants(tmp_path: Path) -> None:
    with pytest.raises(HiggsLoadError, match="no config.json"):
        load_higgs(tmp_path)
    folder = _copy_tiny(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(HiggsLoadError, match="no model.safetensors"):
        load_higgs(folder)
    cfg = json.loads((TINY / "config.json").read_text())
    for section, key, value in [
        ("semantic_model_config", "do_stable_layer_norm", True),
        ("semantic_model_config", "feat_extract_norm", "layer"),
        ("acoustic_model_config", "model_type", "encodec"),
    ]:
        bad = json.loads(json.dumps(cfg))
        bad[section][key] = value
        with pytest.raises(ValueError, match="not implemented"):
            HiggsConfig.from_dict(bad)
    with pytest.raises(ValueError, match="not a Higgs"):
        HiggsConfig.from_dict({**cfg, "model_type": "dac"})


# ----------------------------------------------------------------------------- resampling


def _resample_reference(x: np.ndarray, sr_in: int, sr_out: int, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """The windowed-sinc formula evaluated directly in float64, in physical time:
    y[j] = sum_i x[i] * (c / sr_in) * sinc(c (i / sr_in - j / sr_out)) * cos^2(pi c (.) / 2w),
    over |c (i / sr_in - j / sr_out)| <= w, with cutoff c = rolloff * min(sr_in, sr_out)."""
    x = np.asarray(x, dtype=np.float64)
    c = rolloff * min(sr_in, sr_out)
    n_out = math.ceil(len(x) * sr_out / sr_in)
    reach = width * sr_in / c + 2  # input samples within the window, each side
    y = np.zeros(n_out)
    for j in range(n_out):
        centre = j * sr_in / sr_out
        i = np.arange(max(0, math.floor(centre - reach)), min(len(x), math.ceil(centre + reach) + 1))
        t = c * (i / sr_in - j / sr_out)
        h = np.where(np.abs(t) <= width, np.sinc(t) * np.cos(np.pi * t / (2 * width)) ** 2, 0.0) * (c / sr_in)
        y[j] = np.dot(x[i], h)
    return y


# float32 input: the kernel is computed in float32 too (as torchaudio does), so its time arguments
# carry ~1e-7 relative error times the reduced rate: tight for 24k -> 16k (3:2), looser for 147:160
@pytest.mark.parametrize(
    "sr_in,sr_out,atol32", [(24000, 16000, 2e-6), (16000, 24000, 2e-6), (44100, 16000, 2e-5), (22050, 24000, 5e-5)]
)
def test_resample_sinc_matches_the_formula(sr_in: int, sr_out: int, atol32: float) -> None:
    rng = np.random.default_rng(sr_in + sr_out)
    n = 2001
    x = (np.sin(2 * np.pi * 300 * np.arange(n) / sr_in) + 0.3 * rng.standard_normal(n)).astype(np.float32)
    ref = _resample_reference(x, sr_in, sr_out)
    got32 = resample_sinc(torch.from_numpy(x), sr_in, sr_out)
    assert got32.dtype == torch.float32 and got32.shape == (math.ceil(n * sr_out / sr_in),)
    np.testing.assert_allclose(got32.numpy(), ref, rtol=0, atol=atol32)
    got64 = resample_sinc(torch.from_numpy(x.astype(np.float64)), sr_in, sr_out)
    np.testing.assert_allclose(got64.numpy(), ref, rtol=0, atol=1e-12)
    # leading dims are kept; each row is resampled on its own
    batch = resample_sinc(torch.from_numpy(np.stack([x, 2 * x]))[:, None], sr_in, sr_out)
    assert batch.shape == (2, 1, got32.shape[0])
    torch.testing.assert_close(batch[1, 0], 2 * got32, rtol=0, atol=1e-5)


def test_resample_sinc_keeps_a_sine_at_its_frequency() -> None:
    sr_in, sr_out, f = 24000, 16000, 440.0
    x = np.sin(2 * np.pi * f * np.arange(sr_in) / sr_in).astype(np.float32)  # 1 s
    y = resample_sinc(torch.from_numpy(x), sr_in, sr_out).numpy()
    assert y.shape == (sr_out,)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / sr_out)[spectrum.argmax()] == f
    want = np.sin(2 * np.pi * f * np.arange(sr_out) / sr_out)
    inner = slice(100, -100)  # away from the zero-padded edges
    np.testing.assert_allclose(y[inner], want[inner], rtol=0, atol=2e-3)


def test_resample_sinc_edge_cases() -> None:
    x = torch.randn(5)
    assert resample_sinc(x, 16000, 16000) is x
    assert resample_sinc(torch.randn(1), 24000, 16000).shape == (1,)
    with pytest.raises(ValueError):
        resample_sinc(x, 0, 16000)
    with pytest.raises(TypeError):
        resample_sinc(torch.arange(5), 24000, 16000)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_interface(tok: HiggsTokenizer) -> None:
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.sample_rate, tok.hop_length, tok.frames_per_second) == (1024, 24000, 960, 25.0)
    assert tok.n_keep == 4 and tok.config.num_quantizers == tok.config.n_codebooks == 8
    assert [tok.n_frames(n) for n in (1, 960, 961, 48000)] == [1, 1, 2, 50]
    info = tok.info()
    assert isinstance(info, TokenizerInfo)
    assert (info.modality, info.kind, info.levels, info.codebooks) == ("audio", "higgs", 4, 8)
    assert (info.sample_rate, info.hop_length, info.vocab_size, info.frame_rate) == (24000, 960, 1024, 25.0)
    assert info.fingerprint == tok.fingerprint and info.path == str(TINY)
    assert tok.info("/models/higgs").path == "/models/higgs"
    assert TokenizerInfo.from_dict(info.to_dict()) == info


def test_fingerprint_tracks_weights_and_k(tok: HiggsTokenizer, tmp_path: Path) -> None:
    assert HiggsTokenizer.from_path(TINY).fingerprint == tok.fingerprint
    assert HiggsTokenizer.from_path(TINY, n_keep=8).fingerprint != tok.fingerprint
    folder = _copy_tiny(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["fc.bias"] = state["fc.bias"] + 1e-3
    save_file(state, folder / "model.safetensors")
    assert HiggsTokenizer.from_path(folder).fingerprint != tok.fingerprint
    with pytest.raises(ValueError, match="n_keep"):
        HiggsTokenizer.from_path(TINY, n_keep=9)


def test_batched_encode_equals_encoding_each_clip_alone(tok: HiggsTokenizer) -> None:
    n = 24000 + 123  # not a whole number of frames: every clip is padded to 26 frames
    clips = [_clip(n, seed) for seed in range(3)]
    alone = [tok.encode([c])[0] for c in clips]
    together = tok.encode(clips)
    for a, b in zip(alone, together):
        assert a.shape == (4, 26) and a.dtype == np.uint16
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a in alone}) == 3  # distinct clips, distinct codes
    # clips of other lengths are not padded to the longest: their codes stay those of a lone encode
    short = clips[1][:9000]
    mixed = tok.encode([clips[0], short, clips[2]])
    np.testing.assert_array_equal(mixed[0], alone[0])
    np.testing.assert_array_equal(mixed[2], alone[2])
    np.testing.assert_array_equal(mixed[1], tok.encode([short])[0])
    assert mixed[1].shape == (4, tok.n_frames(9000))


def test_frame_counts_of_both_branches(tok: HiggsTokenizer) -> None:
    cfg = tok.config
    for frames in (1, 2, 7, 50, 751):
        n = frames * cfg.hop_length
        assert acoustic_frames(n, cfg.acoustic.downsampling_ratios) == frames
        assert semantic_frames(n, cfg) == frames
    model = tok.model
    with torch.inference_mode():
        for n in (5000, 24000 + 500):  # lengths the branches disagree on: transformers' padding rule
            x = torch.from_numpy(_clip(n, n))[None, None]
            s = model.encoder_semantic(model.semantic_features(x).transpose(1, 2)).shape[2]
            assert s == semantic_frames(n, cfg)
            assert model.encode(x, n_quantizers=1).shape == (1, 1, s)


def test_decode_length_and_validation(tok: HiggsTokenizer) -> None:
    codes = np.random.default_rng(0).integers(0, 1024, (4, 7)).astype(np.uint16)
    wav = tok.decode(codes)
    assert wav.dtype == np.float32 and wav.shape == (7 * 960,) and np.isfinite(wav).all()
    assert tok.decode(codes[:1]).shape == (7 * 960,)  # fewer levels: coarser audio, same length
    with pytest.raises(ValueError, match="code ids"):
        tok.decode(np.full((4, 3), 1024))
    with pytest.raises(ValueError, match="shape"):
        tok.decode(codes[0])
    with pytest.raises(ValueError, match="levels"):
        tok.decode(np.zeros((9, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        tok.encode([np.zeros((2, 100), np.float32)])
    assert tok.encode([]) == []


def test_a_relative_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """The manifest must resolve from any working directory (sample, show, export run elsewhere)."""
    shutil.copytree(TINY, tmp_path / "codec")
    monkeypatch.chdir(tmp_path)
    info = HiggsTokenizer.from_path("codec", n_keep=4).info()
    assert info.path == str(tmp_path / "codec")
    monkeypatch.chdir("/")
    assert HiggsTokenizer.from_path(info.path, n_keep=4).fingerprint == info.fingerprint
