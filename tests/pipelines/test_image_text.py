"""The image-text pipeline end to end on the DirectRunner, with all three reader formats.

One img_corpus holds a WebDataset tar, two Parquet files (img2dataset's binary ``jpg`` column and
Hugging Face's ``image`` struct) and a folder + captions file, with good images of every mode the
pipeline meets and planted bad records of every kind. The pipeline runs once over all of it
(module fixture); the tests check accounting, the dead-letter, the codes against the tokenizer
applied directly, and the manifest. The tokenizers are real: a tiny random MoVQGAN saved to a
file and loaded through the real path, and the session's SentencePiece model.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trimodal.pipelines.image_readers import ImageTextReader, expand_image_inputs, read_image_text_file
from trimodal.pipelines.records import Record
from trimodal.pipelines.image_text import ImageTextPipelineConfig, run_image_text_pipeline, to_model_input, to_uint8
from trimodal.shards.manifest import Manifest
from trimodal.shards.reader import read_dataset
from trimodal.tokenizers.image_preprocess import load_image, preprocess, record_seed
from trimodal.tokenizers.movqgan import MoVQGANTokenizer
from trimodal.tokenizers.text import TextTokenizer

SIZE = 64
MAX_PIXELS = 200_000  # the planted bomb claims 2000x2000; every good image is far below
BEAM = ["--runner=DirectRunner"]
CAPTIONS = ["a red circle on white", "images and audio share one sequence", "the model reads a img_corpus",
            "masked tokens with words that fit", "documents and captions and transcripts", "a img_corpus of images"]


# ----------------------------------------------------------------------------- img_corpus


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth image with some noise (compressible, but not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def good_images() -> dict[str, bytes]:
    """One encoded file per input mode: RGB (jpeg, png, webp), RGBA, palette, grey, grey+alpha,
    CMYK, 16-bit grey."""
    a = _pattern(60, 80, 1)
    grey = a[..., 0]
    alpha = (np.arange(80)[None, :].repeat(60, 0) * 3).astype(np.uint8)
    return {
        "rgb_jpeg": _enc(Image.fromarray(a), "JPEG", quality=90),
        "rgb_png": _enc(Image.fromarray(_pattern(70, 50, 2)), "PNG"),
        "rgb_webp": _enc(Image.fromarray(_pattern(48, 96, 3)), "WEBP", quality=90),
        "rgba_png": _enc(Image.fromarray(np.dstack([a, alpha]), "RGBA"), "PNG"),
        "palette_png": _enc(Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
        "grey_png": _enc(Image.fromarray(grey, "L"), "PNG"),
        "grey_alpha_png": _enc(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"),
        "cmyk_jpeg": _enc(Image.fromarray(np.dstack([a, grey]), "CMYK"), "JPEG"),
        "grey16_png": _enc(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
    }


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR (with a valid CRC) claims another size: a decompression-bomb header."""
    data = bytearray(_enc(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def bad_images() -> dict[str, tuple[bytes, str, str]]:
    png = _enc(Image.fromarray(_pattern(64, 64, 9)), "PNG")
    garbled = bytearray(png)
    garbled[len(png) // 2: len(png) // 2 + 64] = bytes(64)
    return {
        "zero_bytes": (b"", "rejected", "empty"),
        "truncated_png": (png[: len(png) // 2], "rejected", "truncated"),
        "garbled_png": (bytes(garbled), "rejected", "corrupt"),
        "random_bytes": (np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "rejected", "not_an_image"),
        "tiny_4x4": (_enc(Image.new("RGB", (4, 4), (9, 9, 9)), "PNG"), "filtered", "too_small"),
        "bomb_header": (_png_claiming(2000, 2000), "rejected", "decompression_bomb"),
    }


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def make_corpus(root: Path) -> dict:
    """Write the img_corpus; return inputs, good records (id → (image bytes, caption)) and the
    planted bad ones (id → (outcome, reason))."""
    root.mkdir(parents=True, exist_ok=True)
    good_imgs, bad_imgs = good_images(), bad_images()
    good: dict[str, tuple[bytes, str]] = {}
    bad: dict[str, tuple[str, str]] = {}

    # --- img2dataset-style WebDataset tar
    tar = root / "wds-00000.tar"
    members = [
        ("000000000.jpg", good_imgs["rgb_jpeg"]), ("000000000.txt", CAPTIONS[0].encode()),
        ("000000000.json", json.dumps({"url": "http://x/0.jpg", "key": "000000000", "caption": "ignored: txt wins"}).encode()),
        ("000000001.png", good_imgs["rgba_png"]), ("000000001.json", json.dumps({"caption": CAPTIONS[1]}).encode()),
        ("000000002.webp", good_imgs["rgb_webp"]), ("000000002.json", json.dumps({"text": CAPTIONS[2]}).encode()),
        ("000000003.txt", b"a caption without an image"),
        ("000000004.jpg", good_imgs["rgb_jpeg"]), ("000000004.json", json.dumps({"url": "http://x/4.jpg"}).encode()),
        ("000000005.png", bad_imgs["truncated_png"][0]), ("000000005.txt", CAPTIONS[3].encode()),
        ("000000006.png", good_imgs["rgb_png"]), ("000000006.txt", b"  \n\t "),
    ]
    _tar(tar, members)
    for k, (img, cap) in {0: ("rgb_jpeg", 0), 1: ("rgba_png", 1), 2: ("rgb_webp", 2)}.items():
        good[f"{tar}:00000000{k}"] = (good_imgs[img], CAPTIONS[cap])
    bad[f"{tar}:000000003"] = ("rejected", "missing_image")
    bad[f"{tar}:000000004"] = ("rejected", "missing_caption")
    bad[f"{tar}:000000005"] = ("rejected", "truncated")
    bad[f"{tar}:000000006"] = ("filtered", "empty_caption")

    # --- Parquet, img2dataset's columns (jpg binary, caption, url, key)
    pq1 = root / "img2ds.parquet"
    rows = [
        (good_imgs["grey_png"], CAPTIONS[3], None),
        (good_imgs["palette_png"], CAPTIONS[4], None),
        (good_imgs["cmyk_jpeg"], CAPTIONS[5], None),
        (None, CAPTIONS[0], ("rejected", "missing_image")),  # a failed download
        (good_imgs["rgb_png"], None, ("rejected", "missing_caption")),
        (bad_imgs["random_bytes"][0], CAPTIONS[1], ("rejected", "not_an_image")),
        (bad_imgs["tiny_4x4"][0], CAPTIONS[2], ("filtered", "too_small")),
    ]
    pq.write_table(pa.table({
        "jpg": pa.array([r[0] for r in rows], pa.binary()),
        "caption": pa.array([r[1] for r in rows], pa.string()),
        "url": [f"http://x/{i}" for i in range(len(rows))],
        "key": [f"{i:09d}" for i in range(len(rows))],
    }), pq1)
    for i, (img, cap, outcome) in enumerate(rows):
        (bad.__setitem__(f"{pq1}:{i}", outcome) if outcome else good.__setitem__(f"{pq1}:{i}", (img, cap)))

    # --- Parquet, Hugging Face image feature ({bytes, path}) + "text" column; a path-only row
    (root / "hf_files").mkdir()
    (root / "hf_files" / "side.png").write_bytes(good_imgs["grey_alpha_png"])
    pq2 = root / "hf.parquet"
    struct_rows = [{"bytes": good_imgs["grey16_png"], "path": None}, {"bytes": None, "path": "hf_files/side.png"},
                   {"bytes": None, "path": "hf_files/nope.png"}, {"bytes": None, "path": None}]
    pq.write_table(pa.table({"image": pa.array(struct_rows, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             "text": [CAPTIONS[0], CAPTIONS[1], CAPTIONS[2], CAPTIONS[3]]}), pq2)
    good[f"{pq2}:0"] = (good_imgs["grey16_png"], CAPTIONS[0])
    good[f"{pq2}:1"] = (good_imgs["grey_alpha_png"], CAPTIONS[1])
    bad[f"{pq2}:2"] = ("rejected", "missing_file")
    bad[f"{pq2}:3"] = ("rejected", "missing_image")

    # --- folder + captions.jsonl
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    files = {"a.png": good_imgs["rgb_png"], "sub/b.jpg": good_imgs["rgb_jpeg"], "c.png": good_imgs["grey16_png"]}
    files.update({f"{name}.png": data for name, (data, _, _) in bad_imgs.items()})
    files["uncaptioned.png"] = good_imgs["rgb_png"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    lines: list[tuple[bytes, tuple[str, str] | None, str | None]] = [
        (json.dumps({"file": "a.png", "caption": CAPTIONS[4]}).encode(), None, "a.png"),
        (json.dumps({"file": "sub/b.jpg", "caption": CAPTIONS[5]}).encode(), None, "sub/b.jpg"),
        (json.dumps({"file": "c.png", "caption": CAPTIONS[0]}).encode(), None, "c.png"),
        (json.dumps({"file": "a.png", "caption": CAPTIONS[1]}).encode(), None, "a.png"),  # second caption, same image
    ]
    for name, (_, outcome, reason) in bad_imgs.items():
        lines.append((json.dumps({"file": f"{name}.png", "caption": CAPTIONS[2]}).encode(), (outcome, reason), None))
    lines += [
        (json.dumps({"file": "missing.png", "caption": CAPTIONS[3]}).encode(), ("rejected", "missing_file"), None),
        (json.dumps({"file": "a.png"}).encode(), ("rejected", "missing_field"), None),
        (json.dumps({"file": "a.png", "caption": ""}).encode(), ("filtered", "empty_caption"), None),
        (b"{not json", ("rejected", "bad_json"), None),
    ]
    caps = folder / "captions.jsonl"
    caps.write_bytes(b"\n".join(l for l, _, _ in lines) + b"\n")
    for lineno, (raw, outcome, file) in enumerate(lines, start=1):
        rid = f"{caps}:{lineno}"
        if outcome:
            bad[rid] = outcome
        else:
            good[rid] = (files[file], json.loads(raw)["caption"])
    bad[str(folder / "uncaptioned.png")] = ("rejected", "missing_caption")

    return {"inputs": [str(tar), str(pq1), str(pq2), str(folder)], "good": good, "bad": bad, "root": root}


# ----------------------------------------------------------------------------- fixtures




@pytest.fixture(scope="module")
def img_corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.mktemp("imgcorpus"))


def _cfg(img_corpus, sp_model, movq_ckpt, out, **kw) -> ImageTextPipelineConfig:
    return ImageTextPipelineConfig(inputs=img_corpus["inputs"], text_tokenizer=sp_model, image_tokenizer=movq_ckpt, out=str(out),
                                   image_size=SIZE, device="cpu", batch_size=4, max_pixels=MAX_PIXELS,
                                   target_shard_bytes=4000, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, img_corpus, sp_model, movq_ckpt) -> str:
    out = tmp_path_factory.mktemp("imgds") / "image_text"
    run_image_text_pipeline(_cfg(img_corpus, sp_model, movq_ckpt, out), BEAM)
    return str(out)





# ----------------------------------------------------------------------------- pipeline


def test_accounting_and_dead_letter(dataset, img_corpus):
    m, bad = Manifest.load(dataset), img_corpus["bad"]
    c, good = m.counts, len(img_corpus["good"])
    assert (c["read"], c["written"], m.samples, m.unaccounted) == (good + len(bad), good, good, 0)
    assert m.dead_letter_outcomes(dataset) == bad
    assert len(m.dead_letters(dataset)) == len(bad)  # each bad record once
    reasons = {r for _, r in img_corpus["bad"].values()}
    assert set(c["filtered"]) | set(c["rejected"]) == reasons
    for o, r in img_corpus["bad"].values():
        assert c[o][r] == sum(1 for v in img_corpus["bad"].values() if v == (o, r))


def test_samples_hold_the_tokenizers_codes_and_the_caption(dataset, img_corpus, sp_model, movq_ckpt):
    tok = MoVQGANTokenizer.from_path(movq_ckpt, device="cpu")
    text_tok = TextTokenizer.from_path(sp_model)
    samples = list(read_dataset(dataset))
    assert len(samples) == len(img_corpus["good"])
    for s in samples:
        meta = s["json"]
        data, caption = img_corpus["good"][meta["id"]]
        assert meta["modality"] == "image_text"
        assert s["image"].dtype == np.uint16 and s["image"].shape == (8, 8)
        assert meta["lengths"] == {"image": 64, "text": int(s["text"].size)}
        assert text_tok.decode(s["text"]) == caption
        # the tokenizer applied directly to the preprocessed image, one image at a time
        x = preprocess(load_image(data, MAX_PIXELS), SIZE, seed=record_seed(meta["id"]))
        np.testing.assert_array_equal(to_model_input(to_uint8(x)), x)  # the uint8 hop is lossless
        np.testing.assert_array_equal(s["image"], tok.encode(x[None])[0], err_msg=meta["id"])
        prov = meta["provenance"]
        assert prov["width"] > 0 and prov["height"] > 0 and prov["bytes"] == len(data)
    sources = {s["json"]["source"] for s in samples}
    # the default name is the input's folder and file name (tells same-named inputs of two folders apart)
    assert all("/" in x for x in sources)
    assert {x.rsplit("/", 1)[-1].split(".")[0] for x in sources} == {"wds-00000", "img2ds", "hf", "folder"}


def test_manifest_records_the_image_tokenizer(dataset, movq_ckpt, sp_model):
    m = Manifest.load(dataset)
    tok = MoVQGANTokenizer.from_path(movq_ckpt, device="cpu")
    assert m.modality == "image_text" and m.kind == "tokenized"
    img = m.tokenizers["image"]
    assert img.kind == "movqgan" and img.fingerprint == tok.fingerprint and img.vocab_size == 512
    assert img.grid == (8, 8) and img.image_size == SIZE and Path(img.path) == Path(movq_ckpt).resolve()
    assert m.tokenizers["text"] == TextTokenizer.from_path(sp_model).info()
    assert m.tokens()["image"] == 64 * m.samples
    assert len(m.shards) > 1


def test_rerun_on_two_processes_is_identical(tmp_path, dataset, img_corpus, sp_model, movq_ckpt):
    """Seeded preprocessing + deterministic sink: same shards byte for byte, model loaded per
    worker process (Shared) in subprocesses."""
    out = tmp_path / "again"
    m = run_image_text_pipeline(_cfg(img_corpus, sp_model, movq_ckpt, out),
                                BEAM + ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    ref = Manifest.load(dataset)
    assert [(s.name, s.sha256) for s in m.shards] == [(s.name, s.sha256) for s in ref.shards]
    assert m.counts == ref.counts


def test_val_split_partitions_the_samples_by_id(tmp_path, dataset, img_corpus, sp_model, movq_ckpt, check_val_split):
    out = tmp_path / "split"
    run_image_text_pipeline(_cfg(img_corpus, sp_model, movq_ckpt, out, val_fraction=0.4), BEAM)
    sizes = check_val_split(dataset, str(out), 0.4)
    assert sizes["train"] > 0 and sizes["val"] > 0


def test_decode_of_encode_has_image_shape_and_range(dataset, movq_ckpt):
    tok = MoVQGANTokenizer.from_path(movq_ckpt, device="cpu")
    codes = np.stack([s["image"] for s in list(read_dataset(dataset))[:3]])
    images = tok.decode(codes)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert tok.grid == (8, 8)
    again = tok.encode(images)  # uint8 [N, H, W, 3] in → codes of the same grid out
    assert again.shape == codes.shape and again.dtype == np.uint16 and int(again.max()) < tok.vocab_size


def test_bad_inputs_fail_up_front_and_write_nothing(tmp_path, sp_model, movq_ckpt, img_corpus):
    out = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match="nope"):
        run_image_text_pipeline(ImageTextPipelineConfig(inputs=[str(tmp_path / "nope-*.tar")], text_tokenizer=sp_model,
                                                        image_tokenizer=movq_ckpt, out=str(out)), BEAM)
    with pytest.raises(ValueError, match="multiple of 8"):
        run_image_text_pipeline(ImageTextPipelineConfig(inputs=img_corpus["inputs"], text_tokenizer=sp_model,
                                                        image_tokenizer=movq_ckpt, out=str(out), image_size=60), BEAM)
    with pytest.raises(ValueError, match="format"):
        ImageTextPipelineConfig(inputs=["x"], text_tokenizer="t", image_tokenizer="i", out="o", format="zip")
    assert not out.exists()


# ----------------------------------------------------------------------------- readers


def test_readers_standalone_carry_bytes(img_corpus):
    recs = list(read_image_text_file(img_corpus["inputs"][0]))
    assert sum(isinstance(r, Record) for r in recs) == 5  # 3 good + truncated png + empty caption
    assert all(isinstance(r.media, bytes) for r in recs if isinstance(r, Record))
    r0 = next(r for r in recs if r.id.endswith(":000000000"))
    assert r0.text == CAPTIONS[0] and r0.provenance["src_url"] == "http://x/0.jpg"
    folder = [r for r in ImageTextReader(source="f")(img_corpus["inputs"][3]) if isinstance(r, Record)]
    assert len(folder) == 4 + len(bad_images()) + 1  # bad images and the empty caption are read fine: later steps judge them
    assert all(isinstance(r.media, bytes) and r.media_url is None for r in folder)
    lazy = [r for r in ImageTextReader(source="f", lazy=True)(img_corpus["inputs"][3]) if isinstance(r, Record)]
    assert len(lazy) == len(folder) + 1  # lazily, the missing file is found only when fetched
    assert all(r.media is None for r in lazy)
    assert sum(not Path(r.media_url).is_file() for r in lazy) == 1
    hf = list(ImageTextReader(source="hf")(img_corpus["inputs"][2]))
    assert [getattr(r, "reason", None) for r in hf] == [None, None, "missing_file", "missing_image"]


def test_folder_input_may_be_the_captions_file(img_corpus):
    caps = str(Path(img_corpus["inputs"][3]) / "captions.jsonl")
    assert expand_image_inputs([caps]) == [caps]
    recs = list(read_image_text_file(caps))
    ids = {r.id for r in recs}
    assert all(i.startswith(caps) for i in ids)  # no directory listing: no uncaptioned report
    assert expand_image_inputs([img_corpus["inputs"][3]]) == [img_corpus["inputs"][3]]
    # a folder of tars stands for its tars under the webdataset format
    assert expand_image_inputs([str(img_corpus["root"])], "webdataset") == [img_corpus["inputs"][0]]


def test_webdataset_reader_edge_cases(tmp_path):
    tar = tmp_path / "edge.tar"
    png = good_images()["rgb_png"]
    _tar(tar, [("a.png", png), ("a.txt", b"one"), ("b.png", png), ("b.txt", b"\xff\xfe"),
               ("c.png", png), ("c.json", b"{bad"), ("a.json", b"{}"), ("d.jpg", png), ("d.json", b'{"caption": 3}')])
    got = {r.id.rsplit(":", 1)[1]: getattr(r, "reason", None) for r in ImageTextReader(source="s")(str(tar))}
    assert got == {"a": "duplicate_key", "b": "invalid_utf8", "c": "bad_json", "d": "bad_field_type"}
    # a tar that breaks off: the samples before the break are kept, the break is one record
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 5 + 100])
    recs = list(read_image_text_file(str(cut)))
    assert recs[-1].reason == "unreadable_file"


def test_parquet_reader_names_missing_columns(tmp_path):
    p = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"pixels": [b"x"], "alt": ["a"]}), p)
    recs = list(read_image_text_file(str(p)))
    assert len(recs) == 1 and recs[0].reason == "unreadable_file" and "image_field" in recs[0].detail
    recs = list(read_image_text_file(str(p), image_field="pixels", caption_field="alt"))
    assert recs[0].media == b"x" and recs[0].text == "a"
