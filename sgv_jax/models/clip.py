"""CLIP ViT vision tower (HF `CLIPVisionModel`, REFERENCE.md §1.1–1.2).

Parameter names follow HF so conversion is renames and transposes. The tree holds every block and
`post_layernorm` (so checkpoints round-trip), but the forward pass only runs the blocks needed to
reach the selected hidden state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgv_jax.models.config import VisionConfig
from sgv_jax.models.layers import ACTIVATIONS, attention, dense, layer_norm
from sgv_jax.models.params import ParamSpec, dense_spec, norm_spec


def block_specs(cfg: VisionConfig) -> dict:
    d, f = cfg.hidden_size, cfg.intermediate_size
    return {
        "self_attn": {
            "q_proj": dense_spec(d, d, ("vis_embed", "vis_heads"), bias=True),
            "k_proj": dense_spec(d, d, ("vis_embed", "vis_heads"), bias=True),
            "v_proj": dense_spec(d, d, ("vis_embed", "vis_heads"), bias=True),
            "out_proj": dense_spec(d, d, ("vis_heads", "vis_embed"), bias=True),
        },
        "layer_norm1": norm_spec(d, "vis_embed", bias=True),
        "mlp": {
            "fc1": dense_spec(d, f, ("vis_embed", "vis_mlp"), bias=True),
            "fc2": dense_spec(f, d, ("vis_mlp", "vis_embed"), bias=True),
        },
        "layer_norm2": norm_spec(d, "vis_embed", bias=True),
    }


def param_specs(cfg: VisionConfig) -> dict:
    d, p = cfg.hidden_size, cfg.patch_size
    return {
        "embeddings": {
            "class_embedding": ParamSpec((d,), ("vis_embed",)),
            # Conv2d(3→D, kernel=stride=patch, bias=False) in Flax layout [kh, kw, in, out].
            "patch_embedding": {"kernel": ParamSpec((p, p, 3, d), (None, None, None, "vis_embed"))},
            "position_embedding": {"embedding": ParamSpec((cfg.num_patches + 1, d), (None, "vis_embed"))},
        },
        "pre_layrnorm": norm_spec(d, "vis_embed", bias=True),  # sic: HF's key has the typo
        "layers": {str(i): block_specs(cfg) for i in range(cfg.num_layers)},
        "post_layernorm": norm_spec(d, "vis_embed", bias=True),
    }


def embed_patches(p: dict, cfg: VisionConfig, pixel_values: jax.Array) -> jax.Array:
    """pixel_values [B, H, W, 3] → [B, 1+P, D]: CLS + patches (row-major, h then w) + positions."""
    b, hgt, wid, c = pixel_values.shape
    ps = cfg.patch_size
    if hgt != cfg.image_size or wid != cfg.image_size:
        raise ValueError(f"pixel_values are {hgt}x{wid}; the vision tower expects "
                         f"{cfg.image_size}x{cfg.image_size}")
    # The stride-P convolution is a matmul over flattened (kh, kw, c) patches.
    patches = pixel_values.reshape(b, hgt // ps, ps, wid // ps, ps, c)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ps * ps * c)
    kernel = p["patch_embedding"]["kernel"].astype(pixel_values.dtype).reshape(ps * ps * c, -1)
    x = patches @ kernel  # [B, P, D]
    cls = jnp.broadcast_to(p["class_embedding"].astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    return x + p["position_embedding"]["embedding"].astype(x.dtype)[None]


def encoder_block(p: dict, cfg: VisionConfig, x: jax.Array) -> jax.Array:
    """Pre-LN transformer block, bidirectional attention."""
    b, t, d = x.shape
    n, h = cfg.num_heads, cfg.head_dim
    y = layer_norm(x, p["layer_norm1"], cfg.layer_norm_eps)
    a = p["self_attn"]
    q = dense(y, a["q_proj"]).reshape(b, t, n, h)
    k = dense(y, a["k_proj"]).reshape(b, t, n, h)
    v = dense(y, a["v_proj"]).reshape(b, t, n, h)
    x = x + dense(attention(q, k, v, mask=None).reshape(b, t, d), a["out_proj"])
    y = layer_norm(x, p["layer_norm2"], cfg.layer_norm_eps)
    y = dense(ACTIVATIONS[cfg.hidden_act](dense(y, p["mlp"]["fc1"])), p["mlp"]["fc2"])
    return x + y


def hidden_state(p: dict, cfg: VisionConfig, pixel_values: jax.Array, index: int,
                 remat_block=lambda f: f) -> jax.Array:
    """HF's `hidden_states[index]` (0 = pre_layrnorm(embeddings), k = output of block k-1),
    computed without running the blocks after it. [B, 1+P, D]"""
    x = layer_norm(embed_patches(p["embeddings"], cfg, pixel_values), p["pre_layrnorm"],
                   cfg.layer_norm_eps)
    block = remat_block(lambda bp, x: encoder_block(bp, cfg, x))
    for i in range(index):
        x = block(p["layers"][str(i)], x)
    return x
