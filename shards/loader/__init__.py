"""The streaming loader: sources → mixed rows of length L, with exact resume on any world size.

``sources`` (what is read, weights), ``cursor`` (one source's share of one stream), ``stream`` (one
logical stream of rows) and ``dataset`` (ownership by rank and worker, state, the dataloader).
``docs/loader.md`` explains the design.
"""

from trimodal.shards.loader.dataset import (
    RowLoader,
    TrimodalDataset,
    counters_from_loader_state,
    stream_states_from_loader_state,
)
from trimodal.shards.loader.sources import LoaderConfig, SourceConfig, load_manifests, tokenizers_of

__all__ = ["LoaderConfig", "RowLoader", "SourceConfig", "TrimodalDataset", "counters_from_loader_state",
           "load_manifests", "stream_states_from_loader_state", "tokenizers_of"]
