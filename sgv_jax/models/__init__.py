"""The model family: CLIP ViT + projector + LLaMA, composed as LLaVA / ShareGPT4V."""

from sgv_jax.models.config import (
           PRESETS,
           TextConfig,
           VisionConfig,
           VLMConfig,
           get_preset,
)
from sgv_jax.models.llava import forward, loss, param_specs

__all__ = [
           "PRESETS",
           "TextConfig",
           "VLMConfig",
           "VisionConfig",
           "forward",
           "get_preset",
           "loss",
           "param_specs",
]
