"""DAC: golden parity with the official package, strict loading of released layouts, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trimodal.tokenizers.base import Tokenizer
from trimodal.tokenizers.dac import (
    DAC,
    PUBLIC_CONFIGS,
    DACConfig,
    DACLoadError,
    DACTokenizer,
    load_dac,
    save_dac,
)


def _reference_dir() -> Path:
    """The golden data shipped with the tests (``tests/data/reference/dac``)."""
    return Path(__file__).resolve().parents[1] / "data" / "reference" / "dac"


REF = _reference_dir()

# a tiny config with other strides (incl. an odd one) and an unusual rate, for the round trip
TINY = DACConfig(
    encoder_dim=8,
    encoder_rates=[2, 3, 4],
    decoder_dim=32,
    decoder_rates=[4, 3, 2],
    n_codebooks=6,
    codebook_size=256,
    codebook_dim=4,
    sample_rate=12000,
)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dac") / "tiny.pth"
    save_dac(DAC(TINY), path)
    return path


# ----------------------------------------------------------------------------- golden


def _check_golden(device: str) -> None:
    golden = np.load(REF / "dac_tiny_golden.npz")
    model = load_dac(REF / "dac_tiny_official_format.pth", device=device)
    saved = torch.load(REF / "dac_tiny_official_format.pth", map_location="cpu", weights_only=True)["state_dict"]
    # the weights the golden outputs were made with, loaded bit for bit
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.cpu().numpy(), saved[key].numpy(), err_msg=key)
    assert set(model.state_dict()) == set(saved)
    tok = DACTokenizer(model, n_keep=4, device=device)
    with tok._inference():
        x = torch.from_numpy(golden["input"]).to(device)
        codes, z_q = model.encode(x, return_z=True)
        decoded = model.decode_codes(torch.from_numpy(golden["codes"]).to(device))
    np.testing.assert_array_equal(codes.cpu().numpy(), golden["codes"])
    np.testing.assert_allclose(z_q.cpu().numpy(), golden["z_quantized"], rtol=0, atol=1e-4)
    assert decoded.shape == golden["decoded"].shape
    np.testing.assert_allclose(decoded.cpu().numpy(), golden["decoded"], rtol=0, atol=1e-4)
    # the tokenizer path gives the same codes and audio (zero-filled to frames * hop)
    got = tok.encode([golden["input"][0, 0], golden["input"][1, 0][:12345]])
    np.testing.assert_array_equal(got[0], golden["codes"][0].astype(np.uint16))
    assert got[1].shape == (4, 39)
    wav = tok.decode(golden["codes"][1].astype(np.uint16))
    assert wav.shape == (16000,) and wav.dtype == np.float32
    np.testing.assert_allclose(wav[:15992], golden["decoded"][1, 0], rtol=0, atol=1e-4)
    assert not wav[15992:].any()


def test_golden_official_codes_latent_and_audio() -> None:
    _check_golden("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_golden_on_cuda() -> None:
    _check_golden("cuda")


# ----------------------------------------------------------------------------- released layouts


@pytest.mark.parametrize("name", sorted(PUBLIC_CONFIGS))
def test_public_configs_reproduce_released_keys(name: str) -> None:
    ref = json.loads((REF / "dac_state_dicts.json").read_text())[name]
    assert PUBLIC_CONFIGS[name] == ref["kwargs"]
    config = DACConfig.from_dict(PUBLIC_CONFIGS[name])
    assert config.hop_length == ref["hop_length"]
    with torch.device("meta"):
        model = DAC(config)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(ref["state_dict"].items())  # names, shapes and order
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]


@pytest.fixture(scope="module")
def state_44k() -> tuple[dict[str, torch.Tensor], dict]:
    ref = json.loads((REF / "dac_state_dicts.json").read_text())["44khz_8kbps"]
    gen = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in ref["state_dict"].items()}
    kwargs = {**ref["kwargs"], "latent_dim": 1024, "quantizer_dropout": False}
    return sd, kwargs


def _save_official(path: Path, sd: dict[str, torch.Tensor], kwargs: dict) -> Path:
    torch.save({"state_dict": sd, "metadata": {"kwargs": kwargs}}, path)
    return path


def test_strict_loading_of_44khz_layout(state_44k, tmp_path: Path) -> None:
    sd, kwargs = state_44k
    model = load_dac(_save_official(tmp_path / "w.pth", sd, kwargs))
    assert model.config.sample_rate == 44100 and model.hop_length == 512
    key = "decoder.model.1.block.1.weight_v"
    assert torch.equal(model.state_dict()[key], sd[key])
    assert not model.training

    # same key set, stored as broadcast views of one zero (a tiny file: the loader still sees the
    # full shapes), minus one key, one shape changed and one key added
    bad = {k: torch.zeros(()).expand(v.shape) for k, v in sd.items()}
    del bad["quantizer.quantizers.3.codebook.weight"]
    bad["encoder.block.6.weight_v"] = torch.zeros(1024, 1024, 5)
    bad["encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(DACLoadError) as err:
        load_dac(_save_official(tmp_path / "bad.pth", bad, kwargs))
    msg = str(err.value)
    assert "missing keys (1):\n    quantizer.quantizers.3.codebook.weight" in msg
    assert "encoder.block.6.weight_v: file (1024, 1024, 5), model (1024, 1024, 3)" in msg
    assert "unexpected keys (1):\n    encoder.extra.weight" in msg


def test_loader_refuses_files_without_config(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "a.pth")
    with pytest.raises(DACLoadError, match="metadata.kwargs"):
        load_dac(tmp_path / "a.pth")
    torch.save({"state_dict": {}, "metadata": {"kwargs": {"encoder_dim": 8, "bogus": 1}}},
               tmp_path / "b.pth")
    with pytest.raises(ValueError, match="bogus"):
        load_dac(tmp_path / "b.pth")


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_tiny(tiny_path: Path) -> None:
    tok = DACTokenizer.from_path(tiny_path, n_keep=3)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 and tok.sample_rate == 12000 and tok.hop_length == 24
    assert tok.frames_per_second == 500.0
    rng = np.random.default_rng(0)
    lengths = [1200, 1000, 25, 1]  # 50, 42, 2, 1 frames
    batch = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    codes = tok.encode(batch)
    assert [c.shape for c in codes] == [(3, 50), (3, 42), (3, 2), (3, 1)]
    assert all(c.dtype == np.uint16 and int(c.max()) < 256 for c in codes)
    assert len(np.unique(codes[0])) > 5  # not a degenerate constant code

    # batching does not change codes away from the padded tail (receptive field < 8 frames)
    solo = [tok.encode([w])[0] for w in batch[:2]]
    np.testing.assert_array_equal(codes[0], solo[0])
    np.testing.assert_array_equal(codes[1][:, :-8], solo[1][:, :-8])
    # the kept levels are the first levels of a full encode
    with torch.inference_mode():
        full = tok.model.encode(torch.from_numpy(batch[0])[None, None])[0].numpy()
    assert full.shape == (6, 50)
    np.testing.assert_array_equal(codes[0], full[:3])

    wav = tok.decode(codes[0])
    assert wav.shape == (50 * 24,) and wav.dtype == np.float32 and np.isfinite(wav).all()
    assert np.abs(wav).max() <= 1.0 and np.abs(wav).max() > 0
    # decoding with fewer levels works and differs
    wav1 = tok.decode(codes[0][:1])
    assert wav1.shape == wav.shape and not np.allclose(wav1, wav)
    with pytest.raises(ValueError):
        tok.model.decode_codes(torch.zeros(1, 7, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        tok.decode(np.full((2, 3), 256))


def test_fingerprint_tracks_weights_and_k(tiny_path: Path, tmp_path: Path) -> None:
    a = DACTokenizer.from_path(tiny_path, n_keep=3)
    assert a.fingerprint == DACTokenizer.from_path(tiny_path, n_keep=3).fingerprint
    assert a.fingerprint != DACTokenizer.from_path(tiny_path, n_keep=4).fingerprint
    model = load_dac(tiny_path)
    with torch.no_grad():
        model.quantizer.quantizers[0].codebook.weight[0, 0] += 1.0
    save_dac(model, tmp_path / "other.pth")
    assert a.fingerprint != DACTokenizer.from_path(tmp_path / "other.pth", n_keep=3).fingerprint


def test_save_load_round_trip_preserves_outputs(tiny_path: Path, tmp_path: Path) -> None:
    model = load_dac(tiny_path)
    save_dac(model, tmp_path / "again.pth")
    again = load_dac(tmp_path / "again.pth")
    ckpt = torch.load(tmp_path / "again.pth", weights_only=True)
    assert set(ckpt) == {"state_dict", "metadata"}
    assert ckpt["metadata"]["kwargs"]["latent_dim"] == 64
    x = torch.randn(2, 1, 500, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(model.encode(x), again.encode(x))
