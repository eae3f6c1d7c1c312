"""One ``.npy`` member of every sample of a shard, gathered once and range-checked once.

Why: reading a sample's array (a header table look-up, a ``frombuffer``) and checking its ids (a
``min``/``max`` reduction) per sample were a third of the loader's time. A :class:`Column` copies
the payloads of a shard's ``<name>.npy`` members into one flat array of the stored dtype (a
memcpy each, once per shard and process: the streams of a process share it with the shard) and
finds the samples holding an id outside ``[0, codes)`` with two ``reduceat`` calls, so reading a
sample is a slice and checking it a set look-up. Nothing is converted to int64 here: the row
writers convert while they copy into the row (one pass).

A column whose members are not all one integer dtype, C-ordered and readable from the index's
tables (a damaged or unusual header) takes the per-sample path: the reader's
:meth:`~trimodal.shards.reader.ShardIndex.array` and the same check, with the same errors.
"""

from __future__ import annotations

import numpy as np

from trimodal.shards.reader import ShardIndex


def _out_of_range(what: str, codes: int) -> ValueError:
    return ValueError(f"{what} code out of range [0, {codes})")


class Column:
    """Sample ``i``'s flattened array: :meth:`get`; its range check: :meth:`check`."""

    __slots__ = ("name", "values", "starts", "ends", "_bad")

    def __init__(self, data: bytes | memoryview, index: ShardIndex, name: str) -> None:
        self.name = name
        self.values: np.ndarray | None = None
        self._bad: dict[int, frozenset[int]] = {}
        col = index._column(data, name)  # the reader's per-member tables (offsets, dtypes, shapes)
        dtypes = col.dtypes
        known = [d for d in dtypes if d is not None]
        if not known or any(d is None and s >= 0 for d, s in zip(dtypes, col.starts)):
            return  # damaged or unusual headers: per-sample path
        first = known[0]
        if first.kind not in "ui" or any(d != first for d in known) or \
                any(s is not None and s[1] != "C" for s in col.shapes):
            return
        frombuffer = np.frombuffer
        counts = [c if d is not None else 0 for c, d in zip(col.counts, dtypes)]
        views = [frombuffer(data, first, c, o) for c, o, d in zip(counts, col.offsets, dtypes) if d is not None]
        self.values = np.concatenate(views) if views else np.zeros(0, dtype=first)
        ends = np.cumsum(counts, dtype=np.int64)
        starts = ends - np.asarray(counts, dtype=np.int64)
        self.starts = starts.tolist()
        # an absent member: end -1 marks it (get returns None)
        self.ends = [e if d is not None else -1 for e, d in zip(ends.tolist(), dtypes)]

    def get(self, data: bytes | memoryview, index: ShardIndex, i: int) -> np.ndarray | None:
        """Sample ``i``'s array, 1-D in the stored dtype (a view), or None when it has none
        (``data``, ``index``: the shard this column was built from, read on the per-sample path)."""
        if self.values is None:
            arr = index.array(data, i, self.name)
            return None if arr is None else arr.reshape(-1)
        e = self.ends[i]
        return None if e < 0 else self.values[self.starts[i]:e]

    def check(self, i: int, arr: np.ndarray, codes: int, what: str) -> None:
        """Raise what the per-sample check raises when sample ``i`` (``arr``) holds an id
        outside ``[0, codes)``."""
        if self.values is None:
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= codes):
                raise _out_of_range(what, codes)
            return
        bad = self._bad.get(codes)
        if bad is None:
            bad = self._bad[codes] = self._find_bad(codes)
        if i in bad:
            raise _out_of_range(what, codes)

    def clean(self, codes: int) -> bool:
        """Whether every sample is in the flat array and every id in ``[0, codes)`` (the loader
        may then slice samples without a per-sample check)."""
        if self.values is None:
            return False
        bad = self._bad.get(codes)
        if bad is None:
            bad = self._bad[codes] = self._find_bad(codes)
        return not bad

    def _find_bad(self, codes: int) -> frozenset[int]:
        """Samples with an id outside ``[0, codes)``: one reduction over the column, then
        per-sample ``reduceat`` only when the column has one."""
        v = self.values
        if not v.size:
            return frozenset()
        dtype = v.dtype
        unsigned = dtype.kind == "u"
        if unsigned and dtype.itemsize < 8 and codes > int(np.iinfo(dtype).max):
            return frozenset()
        if int(v.max()) < codes and (unsigned or int(v.min()) >= 0):
            return frozenset()
        starts = np.asarray(self.starts, dtype=np.int64)
        ends = np.asarray(self.ends, dtype=np.int64)
        nonempty = np.flatnonzero(ends > starts)
        hi = np.maximum.reduceat(v, starts[nonempty])
        bad = hi >= codes
        if not unsigned:
            bad |= np.minimum.reduceat(v, starts[nonempty]) < 0
        return frozenset(nonempty[bad].tolist())
