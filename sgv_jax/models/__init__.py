"""The model family: CLIP ViT + projector + LLaMA, composed as LLaVA / ShareGPT4V (Flax NNX)."""

from sgv_jax.models.config import (
    PRESETS,
    TextConfig,
    VisionConfig,
    VLMConfig,
    get_preset,
)
from sgv_jax.models.llava import LlavaModel, build_model, forward, loss

__all__ = [
    "PRESETS",
    "LlavaModel",
    "TextConfig",
    "VLMConfig",
    "VisionConfig",
    "build_model",
    "forward",
    "get_preset",
    "loss",
]
