"""``trimodal eval --generate`` parts that need no model: prompt files and the contact sheet.
The whole command runs on the demo's run in tests/test_demo.py."""

from __future__ import annotations

import numpy as np
import pytest

from trimodal.cli import parse
from trimodal.train.generate_eval import GenerateEvalConfig, contact_sheet, read_prompts


def test_prompt_files(tmp_path) -> None:
    p = tmp_path / "p.txt"
    p.write_text('a cat\n\n{"prompt": "a dog", "id": 3}\n')
    assert read_prompts(str(p)) == ["a cat", "a dog"]
    assert read_prompts(None, "speech")[0] == "hello there how are you"
    p.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=":1: a JSON line needs"):
        read_prompts(str(p))


def test_contact_sheet_tiles_images_above_their_captions() -> None:
    imgs = np.zeros((3, 16, 16, 3), np.uint8)
    imgs[1] = 255
    sheet = contact_sheet(imgs, ["black", "white", "a long caption " * 10], min_tile=64)
    # 2 columns of 64-px tiles (16 px × 4) with 4-px gaps, two rows each with a caption band
    assert sheet.shape[1] == 2 * (64 + 4) + 4 and sheet.dtype == np.uint8
    assert (sheet[4:68, 4:68] == 0).all() and (sheet[4:68, 72:136] == 255).all()
    band = sheet[68:68 + 12, 4:68]
    assert (band < 128).any()  # the caption is drawn


def test_eval_generate_parses_to_its_own_config() -> None:
    c, cfg, _ = parse(["eval", "--generate", "--checkpoint", "r", "--out", "o", "--tasks", "image", "--num", "2"])
    assert isinstance(cfg, GenerateEvalConfig) and cfg.tasks == ["image"] and cfg.num == 2
    with pytest.raises(ValueError, match="--inception and --fid-ref"):
        GenerateEvalConfig(checkpoint="r", out="o", inception="x")
