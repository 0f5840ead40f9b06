"""llava-hf (`LlavaForConditionalGeneration`) tensors ↔ our parameters, in memory.

The streaming, file-level converters build on these; tests use them on `model.state_dict()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgv_jax.convert import formats
from sgv_jax.convert.hf_config import vlm_from_llava_hf
from sgv_jax.convert.state_dict import params_from_state_dict, state_dict_from_params
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.storage import storage_shapes


def from_llava_hf_state_dict(state: Mapping[str, Any], hf_config: dict[str, Any],
                             source: str = "llava-hf state dict") -> tuple[VLMConfig, dict]:
    """(model config, parameters) from a llava-hf state dict in any of its key layouts."""
    cfg = vlm_from_llava_hf(hf_config)
    layout = formats.detect_llava_hf_layout(state.keys())
    table = formats.key_table(cfg, layout)
    return cfg, params_from_state_dict(state, table, storage_shapes(cfg), f"{source} ({layout.name})")


def to_llava_hf_state_dict(params: dict, cfg: VLMConfig,
                           layout: formats.Layout = formats.LLAVA_HF_OLD) -> dict:
    return state_dict_from_params(params, formats.key_table(cfg, layout))
