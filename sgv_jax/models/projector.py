"""Vision→language connectors: 'linear' and 'mlp{N}x_gelu' (REFERENCE.md §1.3).

Layers are named `linear_1..linear_N` (HF's names); the original LLaVA's `mm_projector.{0,2,4..}`
maps onto them in the converters.
"""

from __future__ import annotations

import re

import jax
from flax import nnx

from sgv_jax.models import nn
from sgv_jax.models.layers import gelu_exact


def projector_depth(projector_type: str) -> int:
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector_type {projector_type!r}: use 'linear' or 'mlpNx_gelu'")
    return int(match.group(1))


class Projector(nnx.Module):
    """[B, P, D_vis] → [B, P, D]: linear, then (GELU, linear) repeated (exact erf GELU)."""

    def __init__(self, projector_type: str, d_vision: int, d_text: int, bias: bool,
                 rngs: nnx.Rngs):
        self.depth = projector_depth(projector_type)
        # Axis names alternate so no kernel puts two dims on the same mesh axis (sharding.py).
        self.linear_1 = nn.linear(d_vision, d_text, ("vis_embed", "mlp"), bias, rngs)
        for i in range(2, self.depth + 1):
            setattr(self, f"linear_{i}", nn.linear(d_text, d_text, ("mlp", "embed"), bias, rngs))

    def __call__(self, features: jax.Array) -> jax.Array:
        x = self.linear_1(features)
        for i in range(2, self.depth + 1):
            x = getattr(self, f"linear_{i}")(gelu_exact(x))
        return x
