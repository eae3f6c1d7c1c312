"""MoVQGAN: golden reference match, strict checkpoint loading, tokenizer interface.

Real model classes with real (small or random) weights, saved to files and loaded through
``load_movqgan``; nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trimodal.tokenizers.base import Tokenizer
from trimodal.tokenizers.image_preprocess import preprocess
from trimodal.tokenizers.movqgan import (
    PUBLIC_CONFIGS,
    MoVQGAN,
    MoVQGANConfig,
    MoVQGANLoadError,
    MoVQGANTokenizer,
    load_movqgan,
    save_movqgan,
)

TINY = {
    "ddconfig": {
        "double_z": False,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2, 4],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
    },
    "embed_dim": 4,
    "n_embed": 512,
}


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    """The golden data shipped with the tests (``tests/data/reference/movqgan``)."""
    return Path(__file__).resolve().parents[1] / "data" / "reference" / "movqgan"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model saved the way the demo saves it (state dict + sidecar .json)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    save_movqgan(MoVQGAN(TINY), path)
    return path


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (size + 10 * i, size + 7, 3), dtype=np.uint8)
        out.append(preprocess(Image.fromarray(arr), size, seed=i))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Golden reference
# ---------------------------------------------------------------------------------------------


def test_golden_reference(reference_dir: Path, tmp_path: Path) -> None:
    golden = np.load(reference_dir / "movqgan_tiny_golden.npz")
    config = json.loads((reference_dir / "movqgan_tiny_golden.json").read_text())
    state = {k.removeprefix("state_dict/"): torch.from_numpy(golden[k]) for k in golden.files if k.startswith("state_dict/")}
    ckpt = tmp_path / "golden.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, ckpt)

    model = load_movqgan(ckpt, config)
    x = torch.from_numpy(golden["input"])
    with torch.inference_mode():
        latent = model.encode_latent(x)
        codes = model.encode_codes(x)
        zq = model.quantize.lookup(codes, (8, 8))
        from_zq = model.decode_quantized(zq)
        from_codes = model.decode_codes(codes)
    np.testing.assert_allclose(latent.numpy(), golden["latent"], atol=1e-4)
    np.testing.assert_array_equal(codes.numpy(), golden["codes"])
    np.testing.assert_allclose(from_zq.numpy(), golden["decoded"], atol=1e-4)
    np.testing.assert_allclose(from_codes.numpy(), golden["decoded"], atol=1e-4)
    assert torch.equal(from_codes, from_zq)

    # the tokenizer gives the same codes as a [N, h, w] uint16 grid
    tok = MoVQGANTokenizer(model)
    np.testing.assert_array_equal(tok.encode(golden["input"]).reshape(2, -1), golden["codes"])


def test_public_configs_reproduce_reference_keys(reference_dir: Path) -> None:
    ref = json.loads((reference_dir / "movqgan_state_dicts.json").read_text())
    assert set(ref) == set(PUBLIC_CONFIGS)
    for name, entry in ref.items():
        assert MoVQGANConfig.from_dict(entry["config"]) == MoVQGANConfig.from_dict(PUBLIC_CONFIGS[name])
        with torch.device("meta"):
            model = MoVQGAN(PUBLIC_CONFIGS[name])
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == entry["state_dict"], name
        assert sum(p.numel() for p in model.parameters()) == entry["n_params"], name


# ---------------------------------------------------------------------------------------------
# Strict loading of a 67M-shaped Lightning checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_67m(reference_dir: Path) -> dict[str, torch.Tensor]:
    shapes = json.loads((reference_dir / "movqgan_state_dicts.json").read_text())["movqgan_67M"]["state_dict"]
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}


def _lightning(state: dict[str, torch.Tensor]) -> dict:
    training = {
        "loss.discriminator.main.0.weight": torch.zeros(64, 3, 4, 4),
        "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(64, 3, 3, 3),
        "loss.logvar": torch.zeros(()),
    }
    return {"epoch": 3, "global_step": 12345, "pytorch-lightning_version": "1.6.5", "state_dict": {**state, **training}}


def test_load_67m_lightning_checkpoint(state_67m: dict[str, torch.Tensor], tmp_path: Path) -> None:
    ckpt = tmp_path / "movqgan_67M.ckpt"  # the public file name selects the config
    torch.save(_lightning(state_67m), ckpt)
    model = load_movqgan(ckpt)
    assert model.config == MoVQGANConfig.from_dict(PUBLIC_CONFIGS["movqgan_67M"])
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state_67m)
    for key in ("encoder.conv_in.weight", "decoder.up.3.attn.2.norm.conv_b.weight", "quantize.embedding.weight"):
        assert torch.equal(loaded[key], state_67m[key]), key
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())

    # without a telling name or sidecar, the shapes pick the public config; a bare dict works too
    bare = tmp_path / "weights.pt"
    torch.save(state_67m, bare)
    assert load_movqgan(bare).config.num_res_blocks == 2
    # a config that does not fit is refused, naming a key
    with pytest.raises(MoVQGANLoadError, match="shape mismatches"):
        load_movqgan(bare, "movqgan_270M")


def test_missing_key_and_wrong_shape_are_named(reference_dir: Path, tmp_path: Path) -> None:
    # Loading fails before any weight is used, so every tensor can be a stride-0 view of one
    # shared scalar: the right shapes at a few bytes on disk.
    shapes = json.loads((reference_dir / "movqgan_state_dicts.json").read_text())["movqgan_67M"]["state_dict"]
    one = torch.zeros(())
    state_67m = {k: one.expand(s) for k, s in shapes.items()}
    missing = dict(state_67m)
    del missing["decoder.mid.attn_1.norm.conv_y.weight"]
    p1 = tmp_path / "missing.ckpt"
    torch.save(_lightning(missing), p1)
    with pytest.raises(MoVQGANLoadError) as info:
        load_movqgan(p1, "movqgan_67M")
    assert "missing keys (1)" in str(info.value) and "decoder.mid.attn_1.norm.conv_y.weight" in str(info.value)

    wrong = dict(state_67m)
    wrong["quantize.embedding.weight"] = torch.zeros(8192, 4)
    p2 = tmp_path / "wrong.ckpt"
    torch.save(_lightning(wrong), p2)
    with pytest.raises(MoVQGANLoadError) as info:
        load_movqgan(p2, "movqgan_67M")
    msg = str(info.value)
    assert "shape mismatches (1)" in msg and "quantize.embedding.weight: file (8192, 4), model (16384, 4)" in msg

    extra = {**state_67m, "decoder.conv_in.conv.weight": torch.zeros(4, 4, 3, 3)}
    p3 = tmp_path / "extra.ckpt"
    torch.save(_lightning(extra), p3)
    with pytest.raises(MoVQGANLoadError, match=r"unexpected keys \(1\):\n    decoder.conv_in.conv.weight"):
        load_movqgan(p3, "movqgan_67M")

    not_a_ckpt = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], not_a_ckpt)
    with pytest.raises(MoVQGANLoadError, match="not a MoVQGAN checkpoint.*holds a list, not a state dict"):
        load_movqgan(not_a_ckpt, "movqgan_67M")


# ---------------------------------------------------------------------------------------------
# Tokenizer interface on the tiny config
# ---------------------------------------------------------------------------------------------


def test_codes_do_not_depend_on_batch_mates_or_threads(tiny_path: Path) -> None:
    """Batch invariance (the default on CPU): an image's codes and its latent are bit for bit the
    same alone, among 12 others, and under 1 or 2 threads. Without it the latent moves by ~1e-6
    with the batch (oneDNN/NNPACK pick algorithms by batch size), enough to flip near ties."""
    from trimodal.tokenizers.runtime import inference

    x = _images(13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = MoVQGANTokenizer.from_path(tiny_path, device="cpu", batch_size=1).encode(x)
        torch.set_num_threads(2)
        big = MoVQGANTokenizer.from_path(tiny_path, device="cpu", batch_size=16).encode(x)
        odd = MoVQGANTokenizer.from_path(tiny_path, device="cpu", batch_size=5).encode(x)
        np.testing.assert_array_equal(big, alone)
        np.testing.assert_array_equal(odd, alone)
        model = MoVQGANTokenizer.from_path(tiny_path, device="cpu").model
        xt = torch.from_numpy(x)
        latents = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            with inference(torch.device("cpu"), batch_invariant=True):
                latents[n] = torch.cat([model.encode_latent(xt[i:i + 1]) for i in range(len(x))])
        assert torch.equal(latents[1], latents[2])
        assert torch.backends.mkldnn.enabled  # the switch is restored on the way out
    finally:
        torch.set_num_threads(threads)


def test_tokenizer_encode_decode(tiny_path: Path) -> None:
    tok = MoVQGANTokenizer.from_path(tiny_path, device="cpu", batch_size=2)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 512
    x = _images(3)
    codes = tok.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == np.uint16
    assert codes.max() < 512
    assert len(np.unique(codes)) > 1

    # every input form gives the same codes; batching does not change them
    pil = [Image.fromarray(((im.transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)) for im in x]
    np.testing.assert_array_equal(tok.encode(pil), MoVQGANTokenizer(tok.model, batch_size=8).encode(pil))
    np.testing.assert_array_equal(tok.encode(torch.from_numpy(x)), codes)
    np.testing.assert_array_equal(tok.encode(list(x)), codes)
    np.testing.assert_array_equal(tok.encode(x[0]), codes[:1])

    images = tok.decode(codes)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert images.max() > images.min()
    with torch.inference_mode():
        ref = tok.model.decode_codes(torch.from_numpy(codes.astype(np.int64)).reshape(3, -1))
    expect = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # batches of 2 vs 3 may differ in the last float bit, hence at most one grey level apart
    assert np.abs(images.astype(int) - expect.astype(int)).max() <= 1
    np.testing.assert_array_equal(tok.decode(codes[0]), MoVQGANTokenizer(tok.model, batch_size=1).decode(codes)[:1])

    with pytest.raises(ValueError, match="outside"):
        tok.decode(np.full((1, 8, 8), 512, dtype=np.int64))
    with pytest.raises(ValueError, match="multiple of 8"):
        tok.encode(np.zeros((1, 3, 60, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="share a size"):
        tok.encode([x[0], x[0][:, :32, :32]])


def test_non_square_grid(tiny_path: Path) -> None:
    model = load_movqgan(tiny_path)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 64)).astype(np.float32))
    with torch.inference_mode():
        codes = model.encode_codes(x)
        assert codes.shape == (1, 4 * 8)
        assert model.decode_codes(codes, grid=(4, 8)).shape == (1, 3, 32, 64)
        with pytest.raises(ValueError, match="square"):
            model.decode_codes(codes[:, :31])


def test_fingerprint_stable_and_sensitive(tiny_path: Path, tmp_path: Path) -> None:
    a = MoVQGANTokenizer.from_path(tiny_path).fingerprint
    b = MoVQGANTokenizer.from_path(tiny_path).fingerprint
    assert a == b and isinstance(a, str) and len(a) == 16

    model = load_movqgan(tiny_path)
    with torch.no_grad():
        model.decoder.conv_out.bias[0] += 1e-3
    changed = tmp_path / "changed.ckpt"
    save_movqgan(model, changed)
    assert MoVQGANTokenizer.from_path(changed).fingerprint != a

    # same weights, config differing only in a field that does not change shapes
    other = dict(TINY, ddconfig=dict(TINY["ddconfig"], dropout=0.1))
    assert MoVQGANTokenizer.from_path(tiny_path, config=other).fingerprint != a


def test_sidecar_config_round_trip(tiny_path: Path) -> None:
    side = Path(str(tiny_path) + ".json")
    assert MoVQGANConfig.from_dict(json.loads(side.read_text())) == MoVQGANConfig.from_dict(TINY)
    flat = {**TINY["ddconfig"], "embed_dim": 4, "n_embed": 512}
    assert MoVQGANConfig.from_dict(flat).to_dict() == TINY
    with pytest.raises(ValueError, match="unknown"):
        MoVQGANConfig.from_dict({**flat, "bogus": 1})
