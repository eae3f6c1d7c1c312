"""The audio-text pipeline with the paper's codec: the tiny Higgs Audio v2 folder (the layout of
the released weights) on real speech clips (``tests/data/speech``: espeak-ng voices, 16 kHz FLAC,
resampled to the codec's 24 kHz by the pipeline), and a refusal to mix its shards with DAC ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from trimodal.pipelines.audio_text import AudioTextPipelineConfig, run_audio_text_pipeline
from trimodal.shards.loader import LoaderConfig, SourceConfig, load_manifests, tokenizers_of
from trimodal.shards.reader import iter_samples
from trimodal.tokenizers.audio_io import load_audio
from trimodal.tokenizers.higgs import HiggsTokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
HIGGS = DATA / "reference" / "higgs" / "higgs_tiny_hf"
SPEECH = DATA / "speech"


@pytest.fixture(scope="module")
def higgs_dataset(tmp_path_factory, sp_model):
    base = tmp_path_factory.mktemp("higgs")
    speech = base / "speech"
    shutil.copytree(SPEECH, speech)
    out = base / "ds"
    m = run_audio_text_pipeline(AudioTextPipelineConfig(inputs=[str(speech / "manifest.jsonl")], text_tokenizer=sp_model,
                                                        audio_tokenizer=str(HIGGS), out=str(out), device="cpu",
                                                        bucket_seconds=0), ["--runner=DirectRunner"])
    return {"root": str(out), "manifest": m, "speech": speech}


def test_higgs_codes_in_the_shards_equal_encoding_each_clip_alone(higgs_dataset):
    m = higgs_dataset["manifest"]
    assert m.counts["written"] == 3 and m.counts["read"] == 3
    info = m.tokenizers["audio"]
    tok = HiggsTokenizer.from_path(HIGGS, n_keep=4)
    assert (info.kind, info.levels, info.codebooks, info.sample_rate, info.hop_length) == ("higgs", 4, 8, 24000, 960)
    assert info.frame_rate == 25 and info.fingerprint == tok.fingerprint
    for _, s in iter_samples(higgs_dataset["root"], m.shards):
        name = s["json"]["provenance"]["audio"].rsplit("/", 1)[-1]
        wav = load_audio((higgs_dataset["speech"] / name).read_bytes(), 24000, 30.0)
        want = tok.encode([wav])[0]
        assert s["audio"].shape == (4, tok.n_frames(len(wav))) and s["audio"].dtype == np.uint16
        np.testing.assert_array_equal(s["audio"], want)
        assert s["json"]["lengths"]["seconds"] == pytest.approx(len(wav) / 24000, abs=1e-3)


def test_mixing_shards_of_two_codecs_is_refused(higgs_dataset, tmp_path, sp_model):
    import torch

    from trimodal.tokenizers.dac import DAC, DACConfig, save_dac

    torch.manual_seed(0)
    dac = tmp_path / "dac.pth"
    save_dac(DAC(DACConfig(encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64, decoder_rates=[8, 5, 4, 2],
                           n_codebooks=4, codebook_size=1024, codebook_dim=8, sample_rate=16000)), dac)
    speech = tmp_path / "speech"
    shutil.copytree(SPEECH, speech)
    dac_root = tmp_path / "dac_ds"
    run_audio_text_pipeline(AudioTextPipelineConfig(inputs=[str(speech / "manifest.jsonl")], text_tokenizer=sp_model,
                                                    audio_tokenizer=str(dac), out=str(dac_root), device="cpu"),
                            ["--runner=DirectRunner"])
    cfg = LoaderConfig(sources=[SourceConfig(higgs_dataset["root"], name="h"), SourceConfig(str(dac_root), name="d")],
                       seq_len=256)
    fp_h = higgs_dataset["manifest"].tokenizers["audio"].fingerprint
    with pytest.raises(ValueError, match=f"audio tokenizer differs.*higgs {fp_h}.*dac "):
        tokenizers_of(load_manifests(cfg))
