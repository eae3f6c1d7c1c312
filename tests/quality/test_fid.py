"""FID end to end on random Inception weights: features of a folder equal those of the same arrays,
stored reference statistics reload to the same distance, a set against itself scores 0."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trimodal.quality.fid import fid, folder_images, image_features, reference_stats
from trimodal.quality.frechet import FeatureStats, stats_distance
from trimodal.quality.inception import load_fid_inception


@pytest.fixture(scope="module")
def net(metric_weights):
    return load_fid_inception(metric_weights["inception"])


def test_folder_reference_stats_are_stored_and_reused(net, tmp_path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    Image.fromarray(imgs[0][:, :, 0]).save(tmp_path / "gray.png")  # grayscale files enter as RGB
    feats = image_features(net, list(imgs) + [np.repeat(imgs[0][:, :, :1], 3, axis=2)], batch_size=2)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all() and feats.std(axis=0).max() > 0
    out = tmp_path / "stats" / "ref.npz"
    ref = reference_stats(str(tmp_path), net, out=str(out))  # the folder: 0, 1, 2, gray (sorted)
    direct = FeatureStats.of(feats)
    np.testing.assert_allclose(ref.mu, direct.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.sigma, direct.sigma, rtol=1e-4, atol=1e-8)
    again = reference_stats(str(out))  # from the .npz, no network needed
    np.testing.assert_array_equal(again.mu, ref.mu)
    assert again.n == 4
    # zero up to sqrtm's error on a rank-3 2048 × 2048 product (~1e-6 of the total variance)
    assert stats_distance(direct, again) == pytest.approx(0.0, abs=1e-4 * np.trace(ref.sigma))
    assert fid(net, rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8), again) > 0


def test_bad_inputs_say_what_is_wrong(net, tmp_path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_features(net, [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="no image files"):
        list(folder_images(tmp_path))
    with pytest.raises(FileNotFoundError):
        reference_stats(str(tmp_path / "missing"), net)
