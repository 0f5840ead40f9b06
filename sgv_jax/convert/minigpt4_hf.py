"""MiniGPT-4 ↔ HF `Blip2ForConditionalGeneration` (LLaMA text model): configs and, in memory,
state dicts. The file-level converters (minigpt4_io.py) build on these; tests use them on
`model.state_dict()`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgv_jax.constants import IMAGE_TOKEN_INDEX
from sgv_jax.convert import minigpt4_formats as mf
from sgv_jax.convert.hf_config import text_from_hf
from sgv_jax.convert.state_dict import (
    params_from_state_dict,
    state_dict_from_params,
    to_numpy,
)
from sgv_jax.models.config import MiniGPT4Config, QFormerConfig, VisionConfig
from sgv_jax.models.storage import storage_shapes


def config_from_blip2_hf(c: dict[str, Any], ln_vision_eps: float = 1e-5) -> MiniGPT4Config:
    """Our config from a `Blip2Config` dict. HF carries one eps for the ViT and its
    `post_layernorm`; MiniGPT-4's ln_vision uses torch's 1e-5 (MINIGPT4.md §5.2), the default
    here (an exported config records it as `ln_vision_eps`)."""
    v, q = c["vision_config"], c["qformer_config"]
    if c["text_config"].get("model_type", "llama") != "llama":
        raise ValueError(f"Blip2 text model {c['text_config'].get('model_type')!r}: only a LLaMA "
                         "(Vicuna) text model is a MiniGPT-4")
    vision = VisionConfig(
        hidden_size=v.get("hidden_size", 1408), intermediate_size=v.get("intermediate_size", 6144),
        num_layers=v.get("num_hidden_layers", 39), num_heads=v.get("num_attention_heads", 16),
        patch_size=v.get("patch_size", 14), image_size=v.get("image_size", 224),
        layer_norm_eps=v.get("layer_norm_eps", 1e-6), hidden_act=v.get("hidden_act", "gelu"))
    qformer = QFormerConfig(
        hidden_size=q.get("hidden_size", 768), intermediate_size=q.get("intermediate_size", 3072),
        num_layers=q.get("num_hidden_layers", 12), num_heads=q.get("num_attention_heads", 12),
        cross_attention_freq=q.get("cross_attention_frequency", 2),
        num_query_tokens=c.get("num_query_tokens", 32), layer_norm_eps=q.get("layer_norm_eps", 1e-12),
        max_position_embeddings=q.get("max_position_embeddings", 512))
    return MiniGPT4Config(vision=vision, qformer=qformer, text=text_from_hf(c["text_config"]),
                          ln_vision_eps=c.get("ln_vision_eps", ln_vision_eps),
                          image_token_id=c.get("image_token_index", c.get("image_token_id"))
                          or IMAGE_TOKEN_INDEX)


def from_blip2_hf_state_dict(state: Mapping[str, Any], hf_config: dict[str, Any],
                             source: str = "blip2-hf state dict") -> tuple[MiniGPT4Config, dict]:
    cfg = config_from_blip2_hf(hf_config)
    state = mf.split_qkv_bias({k: to_numpy(v) for k, v in state.items()}, source)
    return cfg, params_from_state_dict(state, mf.blip2_hf_table(cfg), storage_shapes(cfg), source)


def to_blip2_hf_state_dict(params: dict, cfg: MiniGPT4Config) -> dict:
    return mf.fuse_qkv_bias(state_dict_from_params(params, mf.blip2_hf_table(cfg)))
