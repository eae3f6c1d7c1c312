"""Shard statistics for people: a terminal summary and PNG histograms of :func:`compute_stats`."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from trimodal import storage
from trimodal.shards.stats import HISTOGRAMS

def _fmt_int(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, np.integer)) or (isinstance(n, float) and n.is_integer()) else f"{n:,.2f}"


def _fmt_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(headers), indent + "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def _pad_cell(p: dict[str, Any] | None) -> str:
    return "-" if not p else f"{100 * p['fraction']:.1f}%"


def format_stats(stats: dict[str, Any]) -> str:
    """A readable, terminal-width summary of :func:`compute_stats`' result."""
    lines: list[str] = []
    tok_names = sorted({k for sec in (stats.get("modalities") or {}).values() for k in sec["tokens"]} | set(stats["tokens"]))
    lines.append(
        f"Datasets: {len(stats.get('datasets', []))} root(s), {_fmt_int(stats['shards'])} shards, {_fmt_bytes(stats.get('bytes', 0))}"
    )
    if stats.get("datasets"):
        rows = [
            [d["root"], d["kind"], d["modality"], _fmt_int(d["shards"]), _fmt_bytes(d["bytes"]), _fmt_int(d["samples"]),
             _fmt_int(d["read"]), _fmt_int(sum(d["filtered"].values())), _fmt_int(sum(d["rejected"].values()))]
            for d in stats["datasets"]
        ]
        lines += _table(["root", "kind", "modality", "shards", "bytes", "samples", "read", "filtered", "rejected"], rows)
    lines.append("")
    tok = ", ".join(f"{k} {_fmt_int(v)}" for k, v in sorted(stats["tokens"].items())) or "none"
    lines.append(f"Samples: {_fmt_int(stats['samples'])}    tokens: {tok}")
    pad = stats.get("padding")
    if pad:
        L = pad["seq_len"]
        lines.append(
            f"Padding at L={L}{' (packed)' if pad.get('packed') else ''}: {100 * pad['fraction']:.2f}% of "
            f"{_fmt_int(pad['rows'])} rows' slots"
            f" ({_fmt_int(pad['pad_tokens'])} PAD tokens; {_fmt_int(pad['over_length'])} rows longer than L)"
        )
    ov = stats.get("audio_overflow")
    if ov:
        cut = f"; data.audio_overflow=crop would cut {ov['seconds_cropped']:,.1f} s" if ov.get("seconds_cropped") is not None else ""
        lines.append(f"Audio at L={ov['seq_len']}: {_fmt_int(ov['clips_over'])} of {_fmt_int(ov['clips'])} clips "
                     f"({100 * ov['fraction_over']:.1f}%, {ov['seconds_over']:,.1f} s) do not fit a row{cut}")
    for label, key in (("Filtered", "filtered"), ("Rejected", "rejected")):
        d = stats.get(key) or {}
        body = ", ".join(f"{r} {_fmt_int(n)}" for r, n in sorted(d.items(), key=lambda x: (-x[1], x[0]))) or "none"
        lines.append(f"{label}: {_fmt_int(sum(d.values()))}  ({body})")
    if stats.get("mismatches"):
        lines.append(f"WARNING: {len(stats['mismatches'])} shard(s) parse to a sample count other than the manifest's:")
        for m in stats["mismatches"]:
            lines.append(f"  {m['shard']}: manifest {m['manifest']}, parsed {m['parsed']}")

    for title, key, extra in (("By modality", "modalities", None), ("By root", "per_root", None),
                              ("By source", "sources", "modalities")):
        sec = stats.get(key) or {}
        if not sec or (key == "per_root" and len(sec) < 2):
            continue
        lines += ["", title]
        headers = [{"modalities": "modality", "per_root": "root", "sources": "source"}[key], "samples", *(f"{t} tok" for t in tok_names), "pad@L"]
        if extra:
            headers.insert(1, "modalities")
        rows = []
        for name, s in sec.items():
            r = [name, _fmt_int(s["samples"]), *(_fmt_int(s["tokens"][t]) if t in s["tokens"] else "-" for t in tok_names), _pad_cell(s.get("padding"))]
            if extra:
                r.insert(1, ",".join(sorted(s.get("modalities", {}))))
            rows.append(r)
        lines += _table(headers, rows)

    hists = stats.get("histograms") or {}
    if hists:
        lines += ["", "Lengths"]
        rows = []
        for name, h in hists.items():
            if name == "row_padding":
                rows.append([name, _fmt_int(h["n"]), "", "", "", "", "", f"{100 * h['mean']:.1f}%"])
                continue
            rows.append([name, *(_fmt_num(h.get(k)) for k in ("n", "min", "p50", "p90", "p99", "max", "mean"))])
        lines += _table(["histogram", "n", "min", "p50", "p90", "p99", "max", "mean"], rows)
        if "audio_seconds" in hists:
            sec = hists["audio_seconds"]["sum"]
            lines.append(f"  audio total: {sec:,.1f} s ({sec / 3600:,.2f} h)")
    return "\n".join(lines) + "\n"


def _fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{v:,.2f}"


#: histograms of whole numbers (tokens, codes, frames): integer ticks only
INTEGER_HISTOGRAMS = frozenset(HISTOGRAMS) - {"audio_seconds", "row_padding"}


def histogram_figure(name: str, h: dict[str, Any], stats: dict[str, Any]):
    """One histogram as a matplotlib figure: integer ticks for counts of whole things, and a note
    when every value is the same (a single bar that would otherwise look like a plotting fault)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    title, xlabel = HISTOGRAMS[name]
    edges = np.asarray(h["edges"], dtype=np.float64)
    counts = np.asarray(h["counts"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white", linewidth=0.5)
    if h.get("scale") == "log":
        ax.set_xscale("log")
    one_value = name != "row_padding" and h.get("min") is not None and h.get("min") == h.get("max")
    if name == "row_padding":
        ax.set_xlim(0, 1)
        sub = f"n={h['n']:,} rows, mean {100 * h['mean']:.1f}%"
        L = (stats.get("padding") or {}).get("seq_len")
        if L is not None:
            title = f"{title} at L={L}"
    elif one_value:
        v = h["min"]
        sub = f"n={h['n']:,}, every value is {v:,}: one bar"
        if h.get("scale") != "log" and name in INTEGER_HISTOGRAMS:
            ax.set_xlim(v - 2, v + 3)  # the bar in the middle, not filling the axes
    else:
        sub = f"n={h['n']:,}, mean {h['mean']:,.1f}, p50 {h['p50']:,}, p99 {h['p99']:,}, max {h['max']:,}"
    if name in INTEGER_HISTOGRAMS and h.get("scale") != "log":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(stats: dict[str, Any], out_dir: str) -> list[str]:
    """PNG histograms of the overall lengths (those with data) under ``out_dir``; returns paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fs, path = storage.fs_and_path(out_dir)
    fs.makedirs(path, exist_ok=True)
    written: list[str] = []
    for name in HISTOGRAMS:
        h = (stats.get("histograms") or {}).get(name)
        if not h or not h.get("counts") or sum(h["counts"]) == 0:
            continue
        fig = histogram_figure(name, h, stats)
        try:
            target = storage.join(out_dir, f"{name}.png")
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            storage.write_atomic(target, buf.getvalue())
            written.append(target)
        finally:
            plt.close(fig)
    return written
