"""``trimodal plot``: the train and validation curves of one or several runs, per modality, on one figure."""

from __future__ import annotations

from trimodal import storage
from trimodal.tokenizers.vocab import MODALITIES
from trimodal.train.metrics import read_log


def curves(log: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``name → (steps, values)``: ``train/<modality>`` from step records, ``val/<modality>``
    from eval records (the ELBO over all evaluation sources)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in log:
        step = r.get("step")
        if step is None:
            continue
        if r.get("event") == "eval":
            pairs = [(f"val/{m}", r.get(f"elbo/{m}")) for m in MODALITIES]
        elif "event" not in r:
            pairs = [(f"train/{m}", r.get(f"loss/{m}")) for m in MODALITIES]
        else:
            continue
        for name, v in pairs:
            if v is not None:
                s, vals = out.setdefault(name, ([], []))
                s.append(int(step))
                vals.append(float(v))
    return out


def plot_runs(runs: list[str], out: str) -> str:
    """One panel per modality: each run's train curve (thin) and val ELBO (markers)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    data = {run: curves(read_log(storage.join(run, "log.jsonl"))) for run in runs}
    present = [m for m in MODALITIES if any(f"train/{m}" in c or f"val/{m}" in c for c in data.values())]
    if not present:
        raise ValueError(f"no per-modality loss records in {', '.join(runs)} (log.jsonl missing or empty?)")
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.8), dpi=100, squeeze=False)
    for ax, m in zip(axes[0], present):
        for i, (run, c) in enumerate(data.items()):
            color = f"C{i}"
            label = run.rstrip("/").rsplit("/", 1)[-1]
            if f"train/{m}" in c:
                ax.plot(*c[f"train/{m}"], color=color, alpha=0.5, lw=1, label=f"{label} train")
            if f"val/{m}" in c:
                ax.plot(*c[f"val/{m}"], color=color, marker="o", lw=2, label=f"{label} val")
        ax.set_title(f"{m}: ELBO (nats / token)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage.write_atomic(out, buf.getvalue())
    return out
