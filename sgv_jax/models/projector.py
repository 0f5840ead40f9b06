"""Vision→language connectors: 'linear' and 'mlp{N}x_gelu' (REFERENCE.md §1.3).

Layers are named `linear_1..linear_N` (HF's names); the original LLaVA's `mm_projector.{0,2,4..}`
maps onto them in the converters.
"""

from __future__ import annotations

import re

import jax

from sgv_jax.models.layers import dense, gelu_exact
from sgv_jax.models.params import dense_spec


def projector_depth(projector_type: str) -> int:
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector_type {projector_type!r}: use 'linear' or 'mlpNx_gelu'")
    return int(match.group(1))


def param_specs(projector_type: str, d_vision: int, d_text: int, bias: bool = True) -> dict:
    depth = projector_depth(projector_type)
    # Axis names alternate so no kernel puts two dims on the same mesh axis (sharding.py).
    specs = {"linear_1": dense_spec(d_vision, d_text, ("vis_embed", "mlp"), bias)}
    for i in range(2, depth + 1):
        specs[f"linear_{i}"] = dense_spec(d_text, d_text, ("mlp", "embed"), bias)
    return specs


def project(p: dict, projector_type: str, features: jax.Array) -> jax.Array:
    """[B, P, D_vis] → [B, P, D]: linear, then (GELU, linear) repeated (exact erf GELU)."""
    depth = projector_depth(projector_type)
    x = dense(features, p["linear_1"])
    for i in range(2, depth + 1):
        x = dense(gelu_exact(x), p[f"linear_{i}"])
    return x
