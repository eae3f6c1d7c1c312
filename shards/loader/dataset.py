"""The dataset the trainer iterates, its state, and the dataloader around it.

**Ownership.** Rank ``r`` of ``W`` owns streams ``{s : s % W == r}`` (``num_streams % W == 0`` is
required); inside a rank, dataloader worker ``w`` of ``n`` owns every n-th of those, and yields rows
round-robin over its streams. A stream's rows do not depend on who reads it, so the rows of a run
are the union of per-stream prefixes whatever the world size; with ``cycle=True`` every stream is
infinite and every rank yields the same number of steps.

**Resume.** :meth:`TrimodalDataset.state_dict` is what ``torchdata``'s ``StatefulDataLoader`` saves
inside each worker. :class:`RowLoader.resume` takes every rank's saved state: on the same world
size and worker count each rank restores its own (exactly the rows it would have read next);
otherwise the union of every stream's state is loaded and each rank and worker picks its own
streams (no row repeated or skipped; only the interleaving of streams changes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from trimodal.shards.loader.sources import LoaderConfig, load_manifests, resolve_sources, signature
from trimodal.shards.loader.stream import Context, Stream
from trimodal.shards.manifest import Manifest
from trimodal.shards.rows import row_dict
from trimodal.tokenizers.vocab import TASK, TEXT, VocabLayout

STATE_FORMAT = "trimodal-loader"
# 2: with fewer shards than streams, every stream of a source walks one shard order (seeded
# without the stream); a version-1 state would resume into a different order, so it is refused.
STATE_VERSION = 2


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank, dist.get_world_size() if world_size is None else world_size)
    return (0 if rank is None else rank, 1 if world_size is None else world_size)


class TrimodalDataset(IterableDataset):
    """Rows of length ``seq_len`` from tokenized and/or mixed roots.

    Yields dicts of tensors: ``tokens`` int64[L] (global ids), ``modality`` int64[L]
    (TEXT/IMAGE/AUDIO/TASK, PAD counted as TEXT), ``valid`` bool[L] (False on PAD) and ``task``
    int64 scalar (index in ``TASKS``). ``rank``/``world_size`` default to ``torch.distributed``
    when it is initialised, else 0/1. ``seed`` defaults to ``config.seed`` (or 0)."""

    def __init__(self, config: LoaderConfig, layout: VocabLayout, rank: int | None = None, world_size: int | None = None,
                 seed: int | None = None, manifests: dict[str, Manifest] | None = None) -> None:
        super().__init__()
        rank, world_size = _dist_rank_world(rank, world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} / world_size {world_size}")
        if config.num_streams % world_size:
            raise ValueError(
                f"num_streams={config.num_streams} is not divisible by world_size={world_size}: every rank must "
                f"own the same number of logical streams; choose num_streams as a multiple of the world sizes you use")
        self.config, self.layout, self.rank, self.world_size = config, layout, rank, world_size
        self.seed = int(seed if seed is not None else (config.seed if config.seed is not None else 0))
        self.sources = resolve_sources(config, layout, manifests if manifests is not None else load_manifests(config))
        self.signature = signature(config, self.seed, self.sources)
        self._ctx = Context(config, self.seed, layout, self.sources, self.signature)
        self._pending: dict[str, Any] | None = None
        self._streams: dict[int, Stream] | None = None
        self._owned: list[int] = []
        self._owner: tuple[int, int] | None = None
        self._rr = 0
        self._fresh = False

    # -- ownership
    def rank_streams(self) -> list[int]:
        return [s for s in range(self.config.num_streams) if s % self.world_size == self.rank]

    def owned_streams(self, worker: int | None = None, num_workers: int | None = None) -> list[int]:
        """Streams owned by a dataloader worker of this rank (default: the calling one)."""
        if worker is None or num_workers is None:
            worker, num_workers = _worker()
        mine = self.rank_streams()
        if len(mine) % num_workers:
            raise ValueError(
                f"rank {self.rank} owns {len(mine)} streams (num_streams={self.config.num_streams}, "
                f"world_size={self.world_size}), not divisible among num_workers={num_workers} dataloader workers")
        return mine[worker::num_workers]

    # -- streams
    def _live_state(self) -> dict[str, Any]:
        return {"streams": {str(s): st.state_dict() for s, st in self._streams.items()}, "owned": list(self._owned),
                "rr": self._rr}

    def _check_owner(self) -> None:
        """Streams built in another process or worker (inherited through fork by a dataloader
        worker) are handed over as a pending state, so each worker picks its own."""
        if self._streams is not None and self._owner != _worker():
            self._pending = self._live_state()
            self._streams = None

    def _materialise(self) -> None:
        owned = self.owned_streams()
        streams = {s: self._new_stream(s) for s in owned}
        rr = 0
        pending = self._pending
        if pending is not None:
            states = pending["streams"]
            missing = [s for s in owned if str(s) not in states]
            if missing:
                raise ValueError(f"loaded loader state has no state for streams {missing}: pass the union of all ranks' "
                                 f"stream states (load_stream_states) when the world size or worker count changed")
            for s in owned:
                streams[s].load_state_dict(states[str(s)])
            if pending.get("owned") == owned or pending.get("owned") is None:
                rr = int(pending.get("rr", 0)) % len(owned)
        self._streams, self._owned, self._owner, self._rr, self._fresh = streams, owned, _worker(), rr, True

    def _new_stream(self, s: int):
        st = Stream(self._ctx, s)
        if self.config.pack_paired:
            from trimodal.shards.loader.packed import PackedStream

            return PackedStream(st, self.config.pack_lookahead)
        return st

    @property
    def segmented(self) -> bool:
        """Whether rows carry ``segments``/``positions`` (packed rows or per-document attention)."""
        return self.config.pack_paired or self.config.document_attention

    def __iter__(self):
        return self._iter(arrays=False)

    def _iter(self, arrays: bool):
        self._check_owner()
        if self._streams is None or not self._fresh:
            self._materialise()
        self._fresh = False
        self._pending = None
        return self._generate([self._streams[s] for s in self._owned], arrays)

    def _generate(self, order: list[Stream], arrays: bool = False):
        """Rows round-robin over ``order``: dicts of tensors, or with ``arrays`` the light
        ``(tokens, task, parts)`` tuples :class:`BatchCollate` writes into a batch (``parts``:
        the row's make-up, :meth:`Stream.next_row`)."""
        from trimodal.shards.packing import segment_ids, segments_from_lengths

        lut, pad = self._ctx.ids.modality_lut, self._ctx.ids.pad
        segmented, documents, layout = self.segmented, self.config.document_attention, self.layout
        done = [False] * len(order)
        n = len(order)
        while not all(done):
            k = self._rr
            self._rr = (k + 1) % n
            if done[k]:
                continue
            st = order[k]
            out = st.next_row()
            if out is None:
                done[k] = True
                continue
            tokens, task, source = out
            st.count(tokens, task, source, st.comp)
            parts = st.parts
            if arrays:
                yield tokens, task, parts
                continue
            valid = tokens != pad
            row = row_dict(tokens, valid, lut[tokens], task)
            if segmented:
                if documents or parts is None:  # per-document segments: found in the tokens
                    seg, pos = segment_ids(tokens, valid, layout, documents)
                else:
                    seg, pos = np.empty(tokens.size, dtype=np.int64), np.empty(tokens.size, dtype=np.int64)
                    segments_from_lengths([p[0] for p in parts], seg, pos)
                row["segments"], row["positions"] = torch.from_numpy(seg), torch.from_numpy(pos)
            yield row

    # -- state
    def state_dict(self) -> dict[str, Any]:
        """This worker's streams and round-robin position (what ``StatefulDataLoader`` saves)."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        worker, num_workers = _worker()
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "num_streams": self.config.num_streams,
                "rank": self.rank, "world_size": self.world_size, "worker": worker, "num_workers": num_workers,
                "owned": list(self._owned), "rr": self._rr,
                "streams": {str(s): st.state_dict() for s, st in self._streams.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; applied by the next ``iter()``."""
        check_state(state, self.config.num_streams)
        self._pending = {"streams": dict(state["streams"]), "owned": list(state.get("owned", [])), "rr": state.get("rr", 0)}
        self._streams = None

    def stream_states(self) -> dict[int, dict[str, Any]]:
        """``stream → state`` for the streams this process iterates (gather the union over ranks)."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        return {s: st.state_dict() for s, st in self._streams.items()}

    def load_stream_states(self, states: dict[int | str, dict[str, Any]], rows_done: int = 0) -> None:
        """Load the union of stream states (any earlier world size / worker count).

        ``rows_done`` (rows this rank would have yielded so far on the new world size) sets the
        round-robin position to where an uninterrupted run would be: with strict round robin
        over the streams, the rows of a global batch then do not depend on the world size."""
        self._pending = {"streams": {str(k): v for k, v in states.items()}, "owned": None, "rr": int(rows_done)}
        self._streams = None

    def counters(self) -> dict[str, int]:
        """Counters of the streams this process holds (rows per task and source, tokens per
        modality, padding, skipped or cropped samples, damaged shards)."""
        self._check_owner()
        if self._streams is None:
            self._materialise()
        return sum_counters(st.counters for st in self._streams.values())

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into dataloader workers: live streams (and their shard buffers) stay here;
        # their state travels as a pending union state so that each worker picks its streams.
        d = self.__dict__.copy()
        if self._streams is not None:
            d["_pending"] = self._live_state()
        d["_streams"] = None
        d["_fresh"] = False
        return d


def check_state(state: dict[str, Any], num_streams: int) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a trimodal loader state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"loader state version {state.get('version')!r} is not this loader's ({STATE_VERSION}): "
                         "its shard order differs, so an exact resume is impossible; restart the run, or resume "
                         "with the trimodal version that wrote it")
    if state.get("num_streams") != num_streams:
        raise ValueError(f"loader state has num_streams={state.get('num_streams')}, config has {num_streams}")


def sum_counters(items) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in items:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def stream_states_from_loader_state(state: Any) -> dict[int, dict[str, Any]]:
    """Every stream state found in a (possibly nested) state: a ``StatefulDataLoader`` state
    with any number of workers, a dataset ``state_dict()``, or a list of them (one per rank)."""
    found: dict[int, dict[str, Any]] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if x.get("format") == STATE_FORMAT and isinstance(x.get("streams"), dict):
                for s, v in x["streams"].items():
                    found[int(s)] = v
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return found


def counters_from_loader_state(state: Any) -> dict[str, int]:
    """Counters summed over every stream found in a loader state (see above)."""
    return sum_counters(v.get("counters", {}) for v in stream_states_from_loader_state(state).values())


class BatchCollate:
    """Light rows ``(tokens, task, parts)`` → one batch: every row copied into a preallocated
    ``[B, L]`` array, valid (``tokens != PAD``: PAD is never inside a segment) computed on the
    whole batch, modality and segments written from each row's make-up (a few slice writes per
    segment; a look-up over the tokens only for a row without one), each array wrapped once as
    a tensor (the same dict of ``[B, …]`` tensors as stacking the dataset's rows)."""

    def __init__(self, dataset: TrimodalDataset) -> None:
        ids = dataset._ctx.ids
        self.lut, self.pad, self.seq_len = ids.modality_lut, ids.pad, dataset.config.seq_len
        self.segmented, self.documents, self.layout = dataset.segmented, dataset.config.document_attention, dataset.layout

    def __call__(self, rows: list[tuple[np.ndarray, int, tuple | None]]) -> dict[str, torch.Tensor]:
        from trimodal.shards.packing import segment_ids

        b, L = len(rows), self.seq_len
        tokens = np.empty((b, L), dtype=np.int64)
        for i, r in enumerate(rows):
            tokens[i] = r[0]
        valid = tokens != self.pad
        known = [i for i, r in enumerate(rows) if r[2] is not None]
        # rows whose make-up is known: modality and segments of all of them expanded from runs
        # with one np.repeat each (no per-segment writes); the others from their tokens
        mod_runs, seg_runs = _runs([rows[i][2] for i in known], L)
        if len(known) == b:
            modality = np.repeat(mod_runs[0], mod_runs[1]).reshape(b, L)
        else:
            modality = self.lut.take(tokens)  # TEXT for PAD
            if known:
                modality[known] = np.repeat(mod_runs[0], mod_runs[1]).reshape(len(known), L)
        out = {"tokens": torch.from_numpy(tokens), "modality": torch.from_numpy(modality),
               "valid": torch.from_numpy(valid), "task": torch.tensor([r[1] for r in rows], dtype=torch.int64)}
        if self.segmented:
            seg, pos = np.empty((b, L), dtype=np.int64), np.empty((b, L), dtype=np.int64)
            if known and not self.documents:
                ids, lengths = seg_runs
                flat = np.repeat(ids, lengths)
                ramp = _ramp(len(known) * L)
                p = ramp - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within its segment
                p[flat < 0] = 0  # PAD: segment -1, position 0
                seg[known], pos[known] = flat.reshape(-1, L), p.reshape(-1, L)
                rest = [i for i, r in enumerate(rows) if r[2] is None]
            else:
                rest = range(b)
            for i in rest:
                seg[i], pos[i] = segment_ids(tokens[i], valid[i], self.layout, self.documents)
            out["segments"], out["positions"] = torch.from_numpy(seg), torch.from_numpy(pos)
        return out


def _runs(makeups: list[tuple], L: int) -> tuple[tuple[np.ndarray, list[int]], tuple[np.ndarray, list[int]]]:
    """Runs ``(values, lengths)`` of the modality and of the segment ids of rows of length ``L``
    from their make-up (per segment ``(positions, media positions, media modality)``): a
    segment is TASK, its media positions, then TEXT; segment ``k`` of a row has id ``k``; what
    follows the last segment is PAD (TEXT, segment −1)."""
    mv: list[int] = []
    ml: list[int] = []
    sv: list[int] = []
    sl: list[int] = []
    for parts in makeups:
        used = 0
        for k, (n, media, kind) in enumerate(parts):
            mv += (TASK, kind, TEXT)
            ml += (1, media, n - 1 - media)
            sv.append(k)
            sl.append(n)
            used += n
        mv.append(TEXT)
        ml.append(L - used)
        sv.append(-1)
        sl.append(L - used)
    return (np.asarray(mv, dtype=np.int64), ml), (np.asarray(sv, dtype=np.int64), np.asarray(sl, dtype=np.int64))


_RAMPS: dict[int, np.ndarray] = {}


def _ramp(n: int) -> np.ndarray:
    r = _RAMPS.get(n)
    if r is None:
        if len(_RAMPS) > 16:
            _RAMPS.clear()
        r = _RAMPS[n] = np.arange(n, dtype=np.int64)
        r.setflags(write=False)
    return r


class _BatchRows(IterableDataset):
    """The dataset as the :class:`RowLoader` reads it: the same rows, state and ownership, as
    light tuples for :class:`BatchCollate` (no tensors per row)."""

    def __init__(self, dataset: TrimodalDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def __iter__(self):
        return self.dataset._iter(arrays=True)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


class RowLoader:
    """Batches of rows through ``torchdata``'s ``StatefulDataLoader`` (``num_workers`` processes
    load off the training thread, ``pin_memory`` on CUDA); the state is the dataloader's.

    Why the dataloader even with 0 workers: one code path for the state (``state_dict`` /
    ``resume``) whatever the worker count; at 0 workers it adds no thread and no copy."""

    def __init__(self, dataset: TrimodalDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        from torchdata.stateful_dataloader import StatefulDataLoader

        dataset.owned_streams(0, max(1, num_workers))  # an impossible split fails here, not in a worker
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.dl = StatefulDataLoader(_BatchRows(dataset), batch_size=batch_size, num_workers=num_workers,
                                     collate_fn=BatchCollate(dataset),
                                     pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                     prefetch_factor=2 if num_workers > 0 else None)
        self._it = None

    def next(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.dl)
        return next(self._it)

    def state_dict(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "world_size": self.dataset.world_size, "rank": self.dataset.rank,
                "dataloader": self.dl.state_dict()}

    def resume(self, rank_states: list[dict[str, Any]], rows_done: int = 0) -> str:
        """Restore from every rank's saved :meth:`state_dict`; returns how (``exact`` or
        ``streams``: the union of stream states, after a world-size or worker change, with the
        round-robin position of ``rows_done`` rows per rank)."""
        same = (len(rank_states) == self.dataset.world_size
                and all(isinstance(s, dict) and s.get("num_workers") == self.num_workers for s in rank_states))
        if same:
            self.dl.load_state_dict(rank_states[self.dataset.rank]["dataloader"])
            self._it = None
            return "exact"
        union = stream_states_from_loader_state(rank_states)
        if not union:
            raise ValueError("the saved loader states hold no stream state")
        self.dataset.load_stream_states(union, rows_done)
        self._it = None
        return "streams"

    def counters(self) -> dict[str, int]:
        """Counters of this rank's streams, read from the dataloader's state (the live streams
        are in the workers when there are any)."""
        return counters_from_loader_state(self.dl.state_dict())
