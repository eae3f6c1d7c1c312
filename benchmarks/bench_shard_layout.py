"""Shard size and reading speed per layout, on short and on long documents.

What is measured, per layout: stored bytes per token (and over the token payload, 2 bytes per
uint16 token) and the reader's tokens/s (``process_time``, medians over interleaved rounds), from
the page cache, decompression included.

Data: real text, not random ids (random ids do not compress like real ones): the repository's
sample corpus (``trimodal/data/text``, Python docstrings) tokenized with a 4,000-piece
SentencePiece BPE trained on it. *short*: one document per paragraph (tens of tokens, like
fortunes or captions); *long*: whole docstrings, concatenated to at least 2,500 characters. Every
document is used once (no repeats: a repeated document would compress away). Each
sample carries the metadata the text pipeline writes (``id`` = ``<file>:<line>``, ``source``,
``modality``, ``lengths``, ``provenance`` = file and line).

Layouts:

- ``tar``: today's default (``<key>.json`` + ``<key>.text.npy`` per sample, 512-byte tar headers);
- ``tar+zstd3``: the same tar, zstd level 3 (the writers' existing ``compression="zstd"``);
- ``tar+zstd9`` / ``tar+zstd19``: the same tar at higher zstd levels (read speed is the same
  decoder; only writing is slower);
- ``batched``: a prototype of a batched layout, *not* in the library: one ``.npy`` of all tokens
  + one ``.npy`` of offsets + one JSON-lines member of the metadata per shard (three tar
  members per shard instead of two per sample);
- ``batched+zstd3``: that, zstd level 3.

Readers: the tar layouts use the library reader (``index_shard`` + ``decode_sample``, json lazy:
the loader's path); the batched prototype is read by splitting the token array at the offsets
(one view per sample, no metadata parsed: the same work).

    python benchmarks/bench_shard_layout.py [--repeats 5] [--docs N] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEVELS = (3, 9, 19)


def corpus(work: Path) -> tuple[list[str], list[str]]:
    """(short documents, long documents) of real text."""
    docs = [json.loads(l)["text"] for l in (REPO / "trimodal" / "data" / "text" / "python_docs.jsonl").read_text().splitlines()]
    short = [p.strip() for d in docs for p in d.split("\n\n") if len(p.strip()) >= 8]
    long, cur = [], ""
    for d in docs:
        cur = f"{cur}\n\n{d}" if cur else d
        if len(cur) >= 2500:
            long.append(cur)
            cur = ""
    return short, long


def tokenizer(work: Path, texts: list[str]):
    from trimodal.tokenizers.text import TextTokenizer, train_text_tokenizer

    path = work / "sp4000.model"
    if not path.exists():
        train_text_tokenizer(texts, 4000, str(path))
    return TextTokenizer.from_path(str(path))


def samples(tok, texts: list[str], n: int, name: str) -> list[tuple[str, dict, dict]]:
    from trimodal.shards.format import key_from_id

    ids = tok.encode(texts)
    out = []
    for i in range(n):
        t = np.asarray(ids[i % len(ids)], dtype=np.uint16)
        rid = f"/data/corpus/{name}-00000.jsonl:{i + 1}"
        meta = {"id": rid, "source": f"corpus/{name}-00000.jsonl", "modality": "text", "lengths": {"text": int(t.size)},
                "provenance": {"file": f"/data/corpus/{name}-00000.jsonl", "line": i + 1}}
        out.append((key_from_id(rid), meta, {"text": t}))
    out.sort(key=lambda s: s[0])
    return out


def tar_bytes(smp) -> bytes:
    from trimodal.shards.writer import fast_encode_sample, frame_sample, tar_end

    body = b"".join(frame_sample(fast_encode_sample(k, m, a)) for k, m, a in smp)
    return body + tar_end(len(body))


def batched_bytes(smp) -> bytes:
    from trimodal.shards.writer import tar_end, tar_member

    tokens = np.concatenate([a["text"] for _, _, a in smp]).astype(np.uint16)
    offsets = np.cumsum([0] + [a["text"].size for _, _, a in smp]).astype(np.int64)
    meta = "".join(json.dumps({"key": k, **m}, separators=(",", ":")) + "\n" for k, m, _ in smp).encode()

    def npy(a):
        b = io.BytesIO()
        np.save(b, a, allow_pickle=False)
        return b.getvalue()

    body = tar_member("shard.tokens.npy", npy(tokens)) + tar_member("shard.offsets.npy", npy(offsets)) + \
        tar_member("shard.meta.jsonl", meta)
    return body + tar_end(len(body))


def zstd(data: bytes, level: int) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(data)


def read_tar(blobs: list[bytes], compressed: bool) -> int:
    import zstandard

    from trimodal.shards.reader import decode_sample, index_shard

    n = 0
    for blob in blobs:
        data = zstandard.ZstdDecompressor().decompress(blob) if compressed else blob
        for entry in index_shard(data, "bench"):
            n += decode_sample(data, entry, "bench")["text"].size
    return n


def read_batched(blobs: list[bytes], compressed: bool) -> int:
    import zstandard

    from trimodal.shards.format import iter_tar_offsets

    n = 0
    for blob in blobs:
        data = zstandard.ZstdDecompressor().decompress(blob) if compressed else blob
        arrays = {}
        for name, start, end in iter_tar_offsets(data):
            if name.endswith(".npy"):
                arrays[name] = np.load(io.BytesIO(data[start:end]), allow_pickle=False)
        tokens, offsets = arrays["shard.tokens.npy"], arrays["shard.offsets.npy"]
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            n += tokens[a:b].size
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100000, help="samples per corpus, at most (each document once)")
    ap.add_argument("--shards", type=int, default=4)
    bc.add_args(ap, repeats=5, work=True)
    args = ap.parse_args(argv)
    work = bc.work_dir("shard_layout", args.work)
    short, long = corpus(work)
    tok = tokenizer(work, short + long)
    results: dict[str, Any] = {}
    for name, texts in (("short", short), ("long", long)):
        smp = samples(tok, texts, min(args.docs, len(texts)), name)
        tokens = sum(a["text"].size for _, _, a in smp)
        parts = np.array_split(np.arange(len(smp)), args.shards)
        shards = [[smp[i] for i in p.tolist()] for p in parts]
        tars = [tar_bytes(s) for s in shards]
        bat = [batched_bytes(s) for s in shards]
        layouts = {"tar": (tars, read_tar, False), "batched": (bat, read_batched, False)}
        for lv in LEVELS:
            layouts[f"tar+zstd{lv}"] = ([zstd(b, lv) for b in tars], read_tar, True)
        layouts["batched+zstd3"] = ([zstd(b, 3) for b in bat], read_batched, True)
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for _ in range(args.repeats):
            for k, (blobs, fn, comp) in layouts.items():
                cpu, _, got = bc.timed(lambda: fn(blobs, comp))
                assert got == tokens, (k, got, tokens)
                times[k].append(cpu)
        rows = {}
        for k, (blobs, _, _) in layouts.items():
            size = sum(len(b) for b in blobs)
            med = bc.median(times[k])
            rows[k] = {"bytes": size, "bytes_per_token": bc.rnd(size / tokens), "over_payload": bc.rnd(size / (2 * tokens)),
                       "tokens_per_s": bc.rnd(tokens / med, 0), "spread": bc.rnd(bc.spread(times[k]))}
        results[name] = {"samples": len(smp), "tokens": tokens, "tokens_per_sample": bc.rnd(tokens / len(smp), 1),
                         "text_bytes": sum(len(texts[i].encode()) for i in range(len(smp))), "layouts": rows}
    best = results["short"]["layouts"]["tar+zstd3"]["over_payload"]
    return bc.emit({**bc.headline("shard_layout", "stored bytes / token payload, short documents", "process_time",
                                  "tar+zstd3", "token payload", best, 1.5, higher_is_better=False),
                    "docs": args.docs, "shards": args.shards, "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
