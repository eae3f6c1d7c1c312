import json

import numpy as np
import pytest

from trimodal.tokenizers.vocab import AUDIO, IMAGE, TASK, TEXT, VocabLayout


def test_paper_sizes_add_up_to_117698():
    layout = VocabLayout(text_codes=100277)
    assert layout.vocab_size == 117698
    assert layout.text.size == 100281 and layout.image.size == 16387 and layout.audio.size == 1027


def test_blocks_are_disjoint_and_each_modality_has_its_own_mask():
    layout = VocabLayout(text_codes=50, image_codes=20, audio_codes=8, audio_levels=2)
    ranges = [range(b.offset, b.end) for b in layout.blocks] + [range(layout.task_offset, layout.vocab_size)]
    ids = [i for r in ranges for i in r]
    assert ids == list(range(layout.vocab_size))
    masks = {layout.blocks[m].mask for m in (TEXT, IMAGE, AUDIO)}
    assert len(masks) == 3
    assert layout.modality_of(np.array([layout.pad, layout.text.mask, layout.image.bos, layout.audio.eos,
                                        layout.task_token("audio_text")])).tolist() == [TEXT, TEXT, IMAGE, AUDIO, TASK]


@pytest.mark.parametrize("shared", [True, False])
def test_audio_flattening_is_frame_major_and_invertible(shared):
    layout = VocabLayout(text_codes=10, image_codes=4, audio_codes=8, audio_levels=3, audio_shared_block=shared)
    codes = np.array([[1, 2, 3, 4], [5, 6, 7, 0], [2, 2, 1, 1], [7, 7, 7, 7]])  # 4 levels, keep 3
    flat = layout.audio_to_global(codes)
    assert flat.size == 12
    local = flat - layout.audio.offset
    if shared:
        assert local[:3].tolist() == [1, 5, 2]  # frame 0: level 0, 1, 2
    else:
        assert local[:3].tolist() == [1, 8 + 5, 16 + 2]
    assert (layout.audio_from_global(flat) == codes[:3]).all()


def test_json_round_trip_and_compatibility_checks():
    a = VocabLayout(text_codes=300, fingerprints={"text": "abc"})
    b = VocabLayout.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b == a and b.fingerprints == {"text": "abc"}
    a.check_compatible(b)
    with pytest.raises(ValueError, match="different tokenizer"):
        a.check_compatible(VocabLayout(text_codes=300, fingerprints={"text": "xyz"}))
    with pytest.raises(ValueError, match="differs"):
        a.check_compatible(VocabLayout(text_codes=301))
    with pytest.raises(ValueError, match="unknown VocabLayout keys"):
        VocabLayout.from_dict({"text_codes": 3, "bogus": 1})


def test_out_of_range_codes_are_refused():
    layout = VocabLayout(text_codes=10, image_codes=4)
    with pytest.raises(ValueError, match="out of range"):
        layout.to_global(IMAGE, np.array([4]))
    with pytest.raises(ValueError, match="positive integer"):
        VocabLayout(text_codes=0)


def test_layout_from_tokenizer_infos_and_defaults():
    from trimodal.tokenizers.base import TokenizerInfo
    from trimodal.tokenizers.vocab import BlockDefaults

    infos = {"text": TokenizerInfo("text", "tiktoken", "t", 100277), "image": TokenizerInfo("image", "movqgan", "i", 16384),
             "audio": TokenizerInfo("audio", "higgs", "a", 1024, levels=4, codebooks=8)}
    layout = VocabLayout.from_tokenizers(infos)
    assert layout.vocab_size == 117698 and layout.fingerprints == {"audio": "a", "image": "i", "text": "t"}
    text_only = VocabLayout.from_tokenizers({"text": infos["text"]}, BlockDefaults(image_codes=64, audio_codes=32,
                                                                                   audio_levels=2))
    assert (text_only.image_codes, text_only.audio_codes, text_only.audio_levels) == (64, 32, 2)
    with pytest.raises(ValueError, match="no text tokenizer"):
        VocabLayout.from_tokenizers({"image": infos["image"]})
