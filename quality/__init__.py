"""Generation-quality metrics with locally supplied weights (docs/quality.md): FID on the FID
Inception-v3, CLIP score, FAD on an audio embedding model and WER through a local ASR model.
Nothing here downloads: every model is read from a path the user gives."""
