"""The FID Inception-v3: its size against the published one, strict loading of a state dict saved
as the official file is (``torch.save`` of the plain state dict), and the reference resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trimodal.quality.inception import FID_WEIGHTS, FIDInceptionV3, _avg_pool, load_fid_inception, preprocess


def test_parameter_count_is_inception_v3_with_a_1008_way_head() -> None:
    # Keras' InceptionV3 (no aux head, 1000 classes): 23,851,784 parameters, of which 34,432 are
    # batch-norm moving statistics and none a BN scale. torch counts no moving statistics but one
    # BN scale per channel (34,432 / 2), and the FID graph's head has 8 more classes (8·2048 + 8).
    expected = 23_851_784 - 34_432 + 34_432 // 2 + 8 * 2048 + 8
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == expected == 23_850_960


def test_tensorflow_average_pool_leaves_the_padding_out() -> None:
    x = torch.ones(1, 1, 5, 5)
    assert torch.equal(_avg_pool(x), x)  # counting the zero padding would give 4/9 in the corners


def test_preprocess_is_the_reference_bilinear_resize() -> None:
    x = torch.rand(2, 3, 37, 53)
    ref = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(preprocess(x), ref)


def test_strict_loading_of_the_weight_file_layout(metric_weights, tmp_path) -> None:
    path = metric_weights["inception"]
    assert path.endswith(FID_WEIGHTS)
    state = torch.load(path, weights_only=True)
    net = load_fid_inception(path)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    # the folder form finds the official file name
    assert load_fid_inception(path.rsplit("/", 1)[0]).Mixed_7c.branch_pool.conv.weight.shape == (192, 2048, 1, 1)
    # a file without the BN counters (older torch saves) still loads; a wrong key does not
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    load_fid_inception(tmp_path / "old.pth")
    bad = dict(state)
    bad["AuxLogits.fc.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unexpected"):
        load_fid_inception(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="docs/quality.md"):
        load_fid_inception(tmp_path / "nothing.pth")
