"""CLIP score of image–prompt pairs: 100 · max(cos(E_image, E_text), 0), averaged over pairs
(the definition of torchmetrics' ``CLIPScore``; Hessel et al. 2021 scale by 2.5 instead of 100).

The model is any CLIP checkpoint saved with ``save_pretrained`` (``config.json`` +
``model.safetensors``, the tokenizer files and ``preprocessor_config.json`` in one folder,
e.g. ``openai/clip-vit-large-patch14`` downloaded once by the user); it is read with
``local_files_only``: nothing downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trimodal.quality.hf import transformers


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ClipScorer:
    model: Any
    tokenizer: Any
    image_processor: Any

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "ClipScorer":
        tf = transformers()
        model = tf.CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        proc = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, tok, proc)

    @torch.no_grad()
    def cosines(self, images: np.ndarray | list[np.ndarray], prompts: list[str]) -> np.ndarray:
        """Cosine similarity of each image with its prompt (uint8 [H, W, 3] images)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        device = next(self.model.parameters()).device
        pix = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        max_len = self.model.config.text_config.max_position_embeddings
        ids = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        img = _features(self.model.get_image_features(pixel_values=pix))
        txt = _features(self.model.get_text_features(input_ids=ids["input_ids"].to(device),
                                                     attention_mask=ids["attention_mask"].to(device)))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (img * txt).sum(-1).double().cpu().numpy()

    def score(self, images: np.ndarray | list[np.ndarray], prompts: list[str]) -> float:
        return float(np.mean(100.0 * np.maximum(self.cosines(images, prompts), 0.0)))
