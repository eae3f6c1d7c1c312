"""Dataset statistics: samples, tokens, length histograms, padding at L, filtered/rejected counts.

``compute_stats(roots)`` starts from each root's manifest (never lists a bucket) and reads every
shard once through the shared reader (:mod:`trimodal.shards.reader`; sha256 checked, since every
byte is read anyway). Presentation (tables, plots) is in :mod:`trimodal.shards.report`. Per sample it
only records a handful of integers (array sizes, audio seconds); every reduction is done with
numpy per shard, so there is no per-token Python work and memory does not grow with the dataset:
lengths are kept as exact integer count tables (:class:`Counts`), from which histograms, means
and percentiles are derived at the end, and from which the padding at any row length L follows.

Groups are ``(source, task, split)``; they are merged into the ``sources``, ``modalities``
(tasks), ``splits`` and top-level views. Everything returned is plain ``int``/``float``/``str``/``list``/``dict`` so that
``json.dumps(stats)`` works.

Row arithmetic (:mod:`trimodal.shards.rows`): a paired row is ``[TASK, BOS_m, media…, EOS_m,
BOS_text, text…, EOS_text, PAD…]``, i.e. ``media + text + 5`` tokens before padding; its padding at L is
``max(0, L - (media + text + 5))`` (a longer row is counted in ``over_length``). Image media =
the code count (h·w); audio media = frames × k (k = the levels stored, or ``audio_levels`` when
given). Text documents are packed into rows with no padding, each framed ``BOS … EOS`` and each
row opened by ``TASK_text``: ``rows = ceil(Σ(n + 2) / (L - 1))``, padding 0. Mixed shards hold
rows already packed; their padding is the measured count of PAD ids at their own length.

Audio that does not fit a row of L: ``audio_overflow`` counts the clips whose row would be
longer than L, their seconds, and the seconds ``data.audio_overflow=crop`` would cut (the media
tokens past the row's end over the codec's tokens per second), before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.counts import Counts
from trimodal.shards.format import ShardError
from trimodal.shards.manifest import Manifest
from trimodal.shards.packing import pad_share_packed
from trimodal.shards.reader import decode_sample, index_shard, iter_shards
from trimodal.shards.rows import check_seq_len, framed_tokens, paired_length, text_rows
from trimodal.tokenizers.vocab import TASKS, VocabLayout
PAD_BINS = 20
UNKNOWN_SOURCE = "(unknown)"

# Histogram names, in display order, with (title, x label).
HISTOGRAMS: dict[str, tuple[str, str]] = {
    "text_tokens_per_document": ("Text tokens per document", "tokens"),
    "caption_tokens": ("Caption tokens", "tokens"),
    "transcript_tokens": ("Transcript tokens", "tokens"),
    "image_tokens": ("Image tokens (codes per image)", "codes"),
    "audio_frames": ("Audio frames", "frames"),
    "audio_seconds": ("Audio seconds", "seconds"),
    "row_padding": ("Row padding fraction", "padding fraction of the row"),
}
_TEXT_HIST = {"text": "text_tokens_per_document", "image_text": "caption_tokens", "audio_text": "transcript_tokens"}


class _Group:
    def __init__(self) -> None:
        self.samples = 0
        self.tokens: dict[str, int] = {}
        self.hist: dict[str, Counts] = {}
        self.paired = Counts()  # content length media + text + 5 per paired row
        self.text_framed = 0  # Σ (n + 2) over text-only documents
        self.text_docs = 0
        self.mixed_pad: dict[int, Counts] = {}  # row length L → PAD count per row
        self.seconds_missing = 0
        self.audio_len = Counts()  # row length of each audio-text sample
        self.audio_secs: dict[int, float] = {}  # row length → seconds of the clips of that length
        self.audio_tps = 0.0  # media tokens per second (frames/s × k)

    def h(self, name: str, scale: float = 1.0) -> Counts:
        c = self.hist.get(name)
        if c is None:
            c = self.hist[name] = Counts(scale)
        return c

    def add_tokens(self, name: str, n: int) -> None:
        self.tokens[name] = self.tokens.get(name, 0) + int(n)

    def merge(self, other: "_Group") -> None:
        self.samples += other.samples
        for k, v in other.tokens.items():
            self.add_tokens(k, v)
        for k, c in other.hist.items():
            self.h(k, c.scale).merge(c)
        self.paired.merge(other.paired)
        self.text_framed += other.text_framed
        self.text_docs += other.text_docs
        for L, c in other.mixed_pad.items():
            self.mixed_pad.setdefault(L, Counts()).merge(c)
        self.seconds_missing += other.seconds_missing
        self.audio_len.merge(other.audio_len)
        for k, v in other.audio_secs.items():
            self.audio_secs[k] = self.audio_secs.get(k, 0.0) + v
        self.audio_tps = self.audio_tps or other.audio_tps

    def overflow(self, seq_len: int | None) -> dict[str, Any] | None:
        """Audio clips whose row would not fit ``seq_len``: count, seconds, seconds a crop cuts."""
        if seq_len is None or not self.audio_len.n:
            return None
        vals, cnts = self.audio_len.items()
        over = vals > seq_len
        seconds = sum(self.audio_secs.get(int(v), 0.0) for v in vals[over].tolist())
        cut = float(((vals[over] - seq_len) * cnts[over]).sum() / self.audio_tps) if self.audio_tps else None
        n = int(cnts.sum())
        return {"seq_len": int(seq_len), "clips": n, "clips_over": int(cnts[over].sum()),
                "fraction_over": float(round(cnts[over].sum() / n, 6)), "seconds_over": round(seconds, 3),
                "seconds_cropped": None if cut is None else round(cut, 3)}

    # ---- padding ---------------------------------------------------------------------------
    def padding(self, seq_len: int | None, packed: bool = False, text_available: bool = False
                ) -> tuple[dict[str, Any] | None, np.ndarray]:
        """Padding summary and the per-row padding-fraction histogram (PAD_BINS over [0, 1]).
        With ``packed``, paired samples share rows as ``data.pack_paired`` packs them (seeded
        order; a text filler when the run has text: ``text_available``)."""
        rows = pad_tokens = slots = over = 0
        frac_hist = np.zeros(PAD_BINS, dtype=np.int64)
        have = False
        if seq_len is not None:
            L = int(seq_len)
            vals, cnts = self.paired.items()
            if cnts.size and packed:
                have = True
                pad_p, slots_p = pad_share_packed(np.repeat(vals, cnts), L, text_available)
                rows += slots_p // L
                pad_tokens += pad_p
                slots += slots_p
                over += int(cnts[vals > L].sum())
                frac_hist[min(PAD_BINS - 1, int(PAD_BINS * pad_p / max(1, slots_p)))] += slots_p // L
            elif cnts.size:
                have = True
                pad = np.clip(L - vals, 0, None)
                rows += int(cnts.sum())
                pad_tokens += int((pad * cnts).sum())
                slots += int(cnts.sum()) * L
                over += int(cnts[vals > L].sum())
                frac_hist += _frac_hist(pad / L, cnts)
            if self.text_docs:
                have = True
                n_text = text_rows(self.text_framed, L)
                rows += n_text
                slots += n_text * L
                frac_hist[0] += n_text  # packed text rows carry no padding
        for L, c in self.mixed_pad.items():
            vals, cnts = c.items()
            if cnts.size:
                have = True
                rows += int(cnts.sum())
                pad_tokens += int((vals * cnts).sum())
                slots += int(cnts.sum()) * L
                frac_hist += _frac_hist(vals / max(1, L), cnts)
        if not have:
            return None, frac_hist
        seq = sorted({*(self.mixed_pad or {}), *([int(seq_len)] if seq_len is not None and (self.paired.n or self.text_docs) else [])})
        return (
            {
                "seq_len": seq[0] if len(seq) == 1 else seq,
                "rows": rows,
                "pad_tokens": pad_tokens,
                "fraction": float(round(pad_tokens / slots, 6)) if slots else 0.0,
                "over_length": over,
            },
            frac_hist,
        )

    def to_json(self, seq_len: int | None, packed: bool = False, text_available: bool = False) -> dict[str, Any]:
        hists = {name: self.hist[name].histogram() for name in HISTOGRAMS if name in self.hist and self.hist[name].n}
        padding, frac = self.padding(seq_len, packed, text_available)
        if padding is not None:
            padding["packed"] = packed
        if padding is not None and frac.sum():
            hists["row_padding"] = _pad_histogram(frac, padding["fraction"])
        out: dict[str, Any] = {
            "samples": self.samples,
            "tokens": dict(sorted(self.tokens.items())),
            "histograms": hists,
            "padding": padding,
        }
        if self.seconds_missing:
            out["audio_seconds_unknown"] = self.seconds_missing
        overflow = self.overflow(seq_len)
        if overflow is not None:
            out["audio_overflow"] = overflow
        return out


def _frac_hist(frac: np.ndarray, weights: np.ndarray) -> np.ndarray:
    idx = np.minimum((np.asarray(frac, dtype=np.float64) * PAD_BINS).astype(np.int64), PAD_BINS - 1)
    return np.bincount(idx, weights=weights, minlength=PAD_BINS).astype(np.int64)


def _pad_histogram(frac_hist: np.ndarray, mean: float) -> dict[str, Any]:
    edges = [round(i / PAD_BINS, 6) for i in range(PAD_BINS + 1)]
    return {
        "n": int(frac_hist.sum()),
        "mean": mean,  # padding tokens / row slots over all rows
        "edges": edges,
        "counts": [int(c) for c in frac_hist.tolist()],
        "scale": "linear",
    }


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _audio_frame_rate(manifest: Manifest) -> float | None:
    info = manifest.tokenizers.get("audio")
    return info.frame_rate if info is not None else None


def _samples(data: bytes, where: str):
    for entry in index_shard(data, where):
        yield decode_sample(data, entry, where)


def _tokenized_shard(data: bytes, where: str, split: str, manifest: Manifest, groups: dict, audio_levels: int | None,
                     frame_rate: float | None) -> int:
    """Accumulate one tokenized shard; returns its sample count."""
    # Per group, per sample: (text, image, audio frames, audio k, centiseconds); -1 = absent.
    rows: dict[tuple[str, str], list[tuple[int, int, int, int, int]]] = {}
    secs: dict[tuple[str, str], float] = {}
    missing: dict[tuple[str, str], int] = {}
    default_mod = manifest.modality
    n = 0
    for s in _samples(data, where):
        n += 1
        meta = s.get("json") or {}
        key = (str(meta.get("source") or UNKNOWN_SOURCE), str(meta.get("modality") or default_mod), split)
        t = s["text"].size if "text" in s else -1
        im = s["image"].size if "image" in s else -1
        af = ak = cs = -1
        if "audio" in s:
            a = s["audio"]
            if a.ndim == 2:
                ak, af = a.shape
            else:
                ak, af = 1, a.size
            sec = (meta.get("lengths") or {}).get("seconds")
            if sec is None and frame_rate:
                sec = af / frame_rate
            if sec is None:
                missing[key] = missing.get(key, 0) + 1
            else:
                cs = int(round(float(sec) * 100))
                secs[key] = secs.get(key, 0.0) + float(sec)
        lst = rows.get(key)
        if lst is None:
            lst = rows[key] = []
        lst.append((t, im, af, ak, cs))
        if "tokens" in s:  # a mixed-style row inside a tokenized dataset: count it, nothing else
            groups.setdefault(key, _Group()).add_tokens("tokens", s["tokens"].size)
    for key, lst in rows.items():
        g = groups.get(key)
        if g is None:
            g = groups[key] = _Group()
        arr = np.array(lst, dtype=np.int64).reshape(-1, 5)
        t, im, af, ak, cs = arr.T
        g.samples += arr.shape[0]
        has_t, has_i, has_a = t >= 0, im >= 0, af >= 0
        if has_t.any():
            g.add_tokens("text", t[has_t].sum())
            g.h(_TEXT_HIST.get(key[1], "text_tokens_per_document" if not (has_i.any() or has_a.any()) else "caption_tokens")).add(t[has_t])
        if has_i.any():
            g.add_tokens("image", im[has_i].sum())
            g.h("image_tokens").add(im[has_i])
        if has_a.any():
            # tokens = every stored code (levels × frames), as the manifest counts them
            g.add_tokens("audio", (af[has_a] * ak[has_a]).sum())
            g.h("audio_frames").add(af[has_a])
            has_s = cs >= 0
            if has_s.any():
                g.h("audio_seconds", 0.01).add(cs[has_s], exact_sum=secs.get(key, 0.0))
        g.seconds_missing += missing.get(key, 0)
        paired = has_i | has_a
        if paired.any():
            k = np.maximum(ak, 0) if audio_levels is None else np.clip(ak, 0, audio_levels)
            media = np.where(has_i, im, 0) + np.where(has_a, af * k, 0)
            content = paired_length(media, np.where(has_t, t, 0))
            g.paired.add(content[paired])
            if has_a.any():
                g.audio_len.add(content[has_a])
                for v, c in zip(content[has_a].tolist(), cs[has_a].tolist()):
                    if c >= 0:
                        g.audio_secs[v] = g.audio_secs.get(v, 0.0) + c / 100
                if frame_rate:
                    g.audio_tps = frame_rate * float(k[has_a][0])
        text_only = has_t & ~paired
        if text_only.any():
            g.text_docs += int(text_only.sum())
            g.text_framed += framed_tokens(int(t[text_only].sum()), int(text_only.sum()))
    return n


def _mixed_shard(data: bytes, where: str, split: str, manifest: Manifest, groups: dict, layout: Any) -> int:
    """Accumulate one mixed shard (rows of global ids packed to L)."""
    metas: list[tuple[str, str, str]] = []
    rows: list[np.ndarray] = []
    for s in _samples(data, where):
        meta = s.get("json") or {}
        tok = s.get("tokens")
        if tok is None:
            raise ShardError(where, "mixed sample has no tokens.npy", s["__key__"])
        src = meta.get("source")
        if src is None and isinstance(meta.get("sources"), list) and meta["sources"]:
            src = "+".join(sorted({str(x) for x in meta["sources"]}))
        mod = None
        if layout is not None and tok.size:  # rows open with their task token (docs/vocabulary.md)
            t0 = int(tok.reshape(-1)[0]) - layout.task_offset
            if 0 <= t0 < len(TASKS):
                mod = TASKS[t0]
        mod = mod or meta.get("task") or meta.get("modality")
        metas.append((str(src or UNKNOWN_SOURCE), str(mod or manifest.modality), split))
        rows.append(tok.reshape(-1))
    if not rows:
        return 0
    pad_id = layout.pad if layout is not None else None
    keys = sorted(set(metas))
    kidx = {k: i for i, k in enumerate(keys)}
    gi = np.array([kidx[m] for m in metas], dtype=np.int64)
    lengths = np.array([r.size for r in rows], dtype=np.int64)
    # classes: 0 text code, 1 text special (incl. PAD), 2 image code, 3 image special,
    #          4 audio code, 5 audio special, 6 task
    if layout is not None:
        edges = np.array([layout.text.bos, layout.image.offset, layout.image.bos, layout.audio.offset, layout.audio.bos, layout.task_offset])
    for L in np.unique(lengths).tolist():
        sel = np.nonzero(lengths == L)[0]
        X = np.stack([rows[i] for i in sel.tolist()]).astype(np.int64, copy=False)
        g_sel = gi[sel]
        npad = (X == pad_id).sum(axis=1) if pad_id is not None else np.zeros(len(sel), dtype=np.int64)
        if layout is not None:
            cls = np.searchsorted(edges, X, side="right")
            per = np.bincount((np.arange(len(sel))[:, None] * 7 + cls).reshape(-1), minlength=len(sel) * 7).reshape(-1, 7)
            per[:, 1] -= npad
            names = {"text": per[:, 0], "image": per[:, 2], "audio": per[:, 4], "special": per[:, 1] + per[:, 3] + per[:, 5] + per[:, 6]}
        else:
            names = {"tokens": L - npad}
        for k in np.unique(g_sel).tolist():
            m = g_sel == k
            g = groups.get(keys[k])
            if g is None:
                g = groups[keys[k]] = _Group()
            g.samples += int(m.sum())
            for name, v in names.items():
                g.add_tokens(name, int(v[m].sum()))
            g.mixed_pad.setdefault(int(L), Counts()).add(npad[m])
    return len(rows)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def compute_stats(roots: list[str] | str, seq_len: int | None = None, audio_levels: int | None = None,
                  packed: bool = False, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Statistics of one or more dataset roots (tokenized or mixed), as a JSON-ready dict.

    Top-level keys: ``samples``, ``tokens`` (per modality/array name), ``shards``, ``bytes``,
    ``read``, ``written``, ``filtered`` and ``rejected`` (per reason, summed over roots),
    ``seq_len``, ``padding`` (None without a row length), ``histograms`` (overall),
    ``modalities``, ``sources`` and ``per_root`` (each with samples, tokens, histograms, padding;
    a source name found under several roots is suffixed with its root),
    ``datasets`` (per root: kind, modality, shard count, bytes, manifest counts) and
    ``mismatches`` (shards whose parsed sample count differs from the manifest).

    ``seq_len`` is the row length L for the padding figures of tokenized data (mixed data
    reports padding at its own row length). ``audio_levels`` caps k, the audio levels a row
    keeps (default: all stored levels). A missing or unparsable shard raises ``ShardError`` naming it.
    ``progress(done, total, shard_name)`` is called after each shard when given (shards are read
    one at a time, so memory does not grow with their number).
    """
    if isinstance(roots, str):
        roots = [roots]
    if seq_len is not None:
        check_seq_len(seq_len, "--seq-len")
    root_groups: dict[str, dict[tuple[str, str, str], _Group]] = {}
    datasets: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    totals = {"read": 0, "written": 0}
    filtered: dict[str, int] = {}
    rejected: dict[str, int] = {}
    n_shards = n_bytes = 0
    done = 0
    manifests = {}
    for root in roots:
        root = root.rstrip("/")
        manifests[root] = Manifest.load(root)
    total = sum(len(m.shards) for m in manifests.values())
    for root, manifest in manifests.items():
        counts = manifest.counts or {}
        layout = VocabLayout.from_dict(manifest.layout) if manifest.layout else None
        frame_rate = _audio_frame_rate(manifest)
        groups = root_groups.setdefault(root, {})
        for info, data in iter_shards(root, manifest.shards, verify="sha256"):
            where = storage.join(root, info.name)
            if manifest.kind == "mixed":
                n = _mixed_shard(data, where, info.split, manifest, groups, layout)
            else:
                n = _tokenized_shard(data, where, info.split, manifest, groups, audio_levels, frame_rate)
            if n != info.samples:
                mismatches.append({"shard": where, "manifest": info.samples, "parsed": n})
            done += 1
            if progress is not None:
                progress(done, total, info.name)
        for k in ("read", "written"):
            totals[k] += int(counts.get(k, 0) or 0)
        for src, dst in ((counts.get("filtered") or {}, filtered), (counts.get("rejected") or {}, rejected)):
            for reason, v in src.items():
                dst[reason] = dst.get(reason, 0) + int(v)
        shard_bytes = sum(s.bytes for s in manifest.shards)
        n_shards += len(manifest.shards)
        n_bytes += shard_bytes
        datasets.append(
            {
                "root": root,
                "kind": manifest.kind,
                "modality": manifest.modality,
                "shards": len(manifest.shards),
                "bytes": shard_bytes,
                "samples": manifest.samples,
                "tokens": dict(sorted(manifest.tokens().items())),
                "read": int(counts.get("read", 0) or 0),
                "written": int(counts.get("written", 0) or 0),
                "filtered": dict(sorted((k, int(v)) for k, v in (counts.get("filtered") or {}).items())),
                "rejected": dict(sorted((k, int(v)) for k, v in (counts.get("rejected") or {}).items())),
                "seq_len": manifest.seq_len,
                "splits": {sp: sum(x.samples for x in manifest.split_shards(sp)) for sp in manifest.splits()},
                "tokenizers": {name: t.fingerprint for name, t in sorted(manifest.tokenizers.items())},
            }
        )

    overall = _Group()
    by_source: dict[str, _Group] = {}
    by_modality: dict[str, _Group] = {}
    by_split: dict[str, _Group] = {}
    by_root: dict[str, _Group] = {}
    source_modalities: dict[str, dict[str, int]] = {}
    # a source name found under several roots (shards written before names carried the input's
    # folder, e.g. image and audio tars both named 00000.tar) is told apart by its root
    name_roots: dict[str, set[str]] = {}
    for root, gs in root_groups.items():
        for (src, _, _) in gs:
            name_roots.setdefault(src, set()).add(root)
    flat = [(root, key, g) for root, gs in root_groups.items() for key, g in sorted(gs.items())]
    for root, (src, mod, split), g in flat:
        src = src if len(name_roots[src]) == 1 else f"{src} ({root})"
        overall.merge(g)
        by_root.setdefault(root, _Group()).merge(g)
        by_source.setdefault(src, _Group()).merge(g)
        by_modality.setdefault(mod, _Group()).merge(g)
        by_split.setdefault(split, _Group()).merge(g)
        per = source_modalities.setdefault(src, {})
        per[mod] = per.get(mod, 0) + g.samples
    text = overall.text_docs > 0  # a packed run fills rows with text when it has text
    top = overall.to_json(seq_len, packed, text)
    sources = {}
    for src, g in sorted(by_source.items()):
        sources[src] = {**g.to_json(seq_len, packed, text), "modalities": source_modalities[src]}
    modalities = {mod: g.to_json(seq_len, packed, text) for mod, g in sorted(by_modality.items())}
    splits = {sp: g.to_json(seq_len, packed, text) for sp, g in sorted(by_split.items())}
    per_root = {r: g.to_json(seq_len, packed, text) for r, g in by_root.items()}
    return {
        "roots": [d["root"] for d in datasets],
        "seq_len": seq_len,
        "samples": top["samples"],
        "tokens": top["tokens"],
        "shards": n_shards,
        "bytes": n_bytes,
        "read": totals["read"],
        "written": totals["written"],
        "filtered": dict(sorted(filtered.items())),
        "rejected": dict(sorted(rejected.items())),
        "padding": top["padding"],
        "histograms": top["histograms"],
        "modalities": modalities,
        "splits": splits,
        "audio_overflow": top.get("audio_overflow"),
        "sources": sources,
        "per_root": per_root,
        "datasets": datasets,
        "mismatches": mismatches,
    }


