"""trimodal: data and training stack for tri-modal masked diffusion models.

Subpackages: ``trimodal.tokenizers`` (text/image/audio tokenizers and the vocabulary layout),
``trimodal.shards`` (shard format, manifest, reader, statistics, streaming loader),
``trimodal.pipelines`` (Apache Beam jobs writing tokenized shards), ``trimodal.train`` (model,
objective, trainer, evaluation, sampler) and ``trimodal.experiments`` (grids of runs and the
paper's fits). ``trimodal.load(path)`` returns a trained model to generate and score with
(:mod:`trimodal.api`). The design is described in ``docs/``.
"""

__version__ = "0.2.0"


def load(path: str, device: str = "auto", verify: bool = True):
    """A trained model from a run, checkpoint or exported folder (see :mod:`trimodal.api`)."""
    from trimodal.api import load as _load

    return _load(path, device, verify)
