"""Exact, bounded-memory multisets of non-negative integers: the length tables of
:mod:`trimodal.shards.stats` (histograms, means, percentiles and the padding at any row length
are derived from them at the end, with no per-token Python work)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

HIST_BINS = 40


class Counts:
    """Exact multiset of non-negative integers: a dense bincount below ``cap``, a sparse dict above.

    ``scale`` converts stored integers to the reported unit (0.01 for seconds kept in
    centiseconds). ``exact_sum`` optionally carries the unquantised sum (seconds).
    """

    CAP = 1 << 16

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.dense = np.zeros(0, dtype=np.int64)
        self.sparse: dict[int, int] = {}
        self.exact_sum: float | None = None

    @property
    def n(self) -> int:
        return int(self.dense.sum()) + sum(self.sparse.values())

    def add(self, values: np.ndarray, exact_sum: float | None = None) -> None:
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        if values.size == 0:
            return
        if values.min() < 0:
            raise ValueError("counts must be non-negative")
        small = values[values < self.CAP]
        if small.size:
            bc = np.bincount(small)
            if bc.size > self.dense.size:
                grown = np.zeros(bc.size, dtype=np.int64)
                grown[: self.dense.size] = self.dense
                self.dense = grown
            self.dense[: bc.size] += bc
        big = values[values >= self.CAP]
        if big.size:
            u, c = np.unique(big, return_counts=True)
            for v, k in zip(u.tolist(), c.tolist()):
                self.sparse[v] = self.sparse.get(v, 0) + k
        if exact_sum is not None:
            self.exact_sum = (self.exact_sum or 0.0) + exact_sum

    def merge(self, other: "Counts") -> None:
        if other.dense.size > self.dense.size:
            grown = np.zeros(other.dense.size, dtype=np.int64)
            grown[: self.dense.size] = self.dense
            self.dense = grown
        self.dense[: other.dense.size] += other.dense
        for v, k in other.sparse.items():
            self.sparse[v] = self.sparse.get(v, 0) + k
        if other.exact_sum is not None:
            self.exact_sum = (self.exact_sum or 0.0) + other.exact_sum

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct stored values (ascending) and their counts."""
        vals = np.nonzero(self.dense)[0]
        cnts = self.dense[vals]
        if self.sparse:
            sv = np.array(sorted(self.sparse), dtype=np.int64)
            sc = np.array([self.sparse[v] for v in sv.tolist()], dtype=np.int64)
            vals, cnts = np.concatenate([vals, sv]), np.concatenate([cnts, sc])
        return vals.astype(np.int64), cnts.astype(np.int64)

    def total(self) -> int:
        vals, cnts = self.items()
        return int((vals * cnts).sum())

    def summary(self) -> dict[str, Any]:
        vals, cnts = self.items()
        n = int(cnts.sum())
        if n == 0:
            return {"n": 0}
        raw_sum = int((vals * cnts).sum())
        s = self.exact_sum if self.exact_sum is not None else raw_sum * self.scale
        cum = np.cumsum(cnts)

        def pct(p: float) -> float | int:
            v = vals[int(np.searchsorted(cum, max(1, math.ceil(p * n))))]
            return self._unit(int(v))

        return {
            "n": n,
            "sum": self._round(s),
            "min": self._unit(int(vals[0])),
            "max": self._unit(int(vals[-1])),
            "mean": self._round(s / n),
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
        }

    def histogram(self, bins: int = HIST_BINS) -> dict[str, Any]:
        """``{"edges", "counts", "scale", …summary}``; bin i holds values in [edges[i], edges[i+1])."""
        vals, cnts = self.items()
        out = self.summary()
        if out["n"] == 0:
            return {**out, "edges": [], "counts": [], "scale": "linear"}
        lo, hi = int(vals[0]), int(vals[-1]) + 1  # half-open integer range [lo, hi)
        scale = "linear"
        if hi - lo <= bins:
            edges = np.arange(lo, hi + 1, dtype=np.int64)
        elif lo > 0 and hi / lo > 100:
            scale = "log"
            edges = np.unique(np.round(np.geomspace(lo, hi, bins + 1)).astype(np.int64))
            edges[-1] = hi
        else:
            width = math.ceil((hi - lo) / bins)
            edges = lo + width * np.arange(math.ceil((hi - lo) / width) + 1, dtype=np.int64)
        idx = np.searchsorted(edges, vals, side="right") - 1
        counts = np.bincount(idx, weights=cnts, minlength=edges.size - 1)[: edges.size - 1]
        edges_out = [self._unit(int(e)) for e in edges.tolist()]
        return {**out, "edges": edges_out, "counts": [int(c) for c in counts.tolist()], "scale": scale}

    def _unit(self, v: int) -> float | int:
        return v if self.scale == 1.0 else self._round(v * self.scale)

    @staticmethod
    def _round(x: float) -> float:
        return float(round(x, 6))
