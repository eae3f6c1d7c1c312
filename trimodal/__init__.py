"""trimodal: data and training stack for tri-modal masked diffusion models.

Subpackages: ``trimodal.tokenizers`` (text/image/audio tokenizers and the vocabulary layout),
``trimodal.pipelines`` (Apache Beam jobs writing tokenized shards), ``trimodal.shards`` (shard
format, manifest, statistics, streaming loader) and ``trimodal.train`` (model, objective,
trainer, sampler).
"""

__version__ = "0.1.0"
