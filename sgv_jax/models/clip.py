"""CLIP ViT vision tower (HF `CLIPVisionModel`, REFERENCE.md §1.1–1.2) as NNX modules.

Attribute names follow HF so conversion is renames and transposes. The 24 blocks are one
stacked module (`layers`, leading `layers` axis) run with `lax.scan`; the tree holds every
block and `post_layernorm` (so checkpoints round-trip), but the forward pass only runs the
blocks needed to reach the selected hidden state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sgv_jax.models import nn
from sgv_jax.models.config import VisionConfig
from sgv_jax.models.layers import ACTIVATIONS, attention
from sgv_jax.sharding import constrain

# Image activations are split over the data-parallel axes like text ones. Without these
# constraints XLA shards the tower by its weights and runs every device on the whole global
# batch of images (the planner's buffer report showed f32[256,16,577,577] attention scores).
ACT = ("act_batch", "act_seq", "act_embed")


class CLIPAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.q_proj = nn.linear(d, d, ("vis_embed", "vis_heads"), True, rngs)
        self.k_proj = nn.linear(d, d, ("vis_embed", "vis_heads"), True, rngs)
        self.v_proj = nn.linear(d, d, ("vis_embed", "vis_heads"), True, rngs)
        self.out_proj = nn.linear(d, d, ("vis_heads", "vis_embed"), True, rngs)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        n, h = self.num_heads, self.head_dim
        q, k, v = (proj(x).reshape(b, t, n, h) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attention(q, k, v, mask=None).reshape(b, t, d))


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        self.fc1 = nn.linear(cfg.hidden_size, cfg.intermediate_size, ("vis_embed", "vis_mlp"), True, rngs)
        self.fc2 = nn.linear(cfg.intermediate_size, cfg.hidden_size, ("vis_mlp", "vis_embed"), True, rngs)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN transformer block, bidirectional attention."""

    ATTENTION = CLIPAttention  # EVA's block differs only here (eva_vit.EvaBlock)

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        eps = cfg.layer_norm_eps
        self.self_attn = self.ATTENTION(cfg, rngs)
        self.layer_norm1 = nn.layer_norm(cfg.hidden_size, "vis_embed", eps, rngs)
        self.mlp = CLIPMLP(cfg, rngs)
        self.layer_norm2 = nn.layer_norm(cfg.hidden_size, "vis_embed", eps, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = constrain(x + self.self_attn(self.layer_norm1(x)), ACT)
        return constrain(x + self.mlp(self.layer_norm2(x)), ACT)


class CLIPEmbeddings(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.class_embedding = nnx.Param(nn.param(nn.NORMAL, ("vis_embed",))(rngs.params(), (d,)))
        # Conv2d(3→D, kernel=stride=patch, bias=False); kernel [kh, kw, in, out].
        self.patch_embedding = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID",
                                        use_bias=False,
                                        kernel_init=nn.param(nn.NORMAL, (None, None, None, "vis_embed")),
                                        rngs=rngs)
        self.position_embedding = nn.embed(cfg.num_patches + 1, d, (None, "vis_embed"), rngs)
        self.image_size = cfg.image_size

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [B, H, W, 3] → [B, 1+P, D]: CLS + patches (row-major) + positions."""
        b, hgt, wid, _ = pixel_values.shape
        if hgt != self.image_size or wid != self.image_size:
            raise ValueError(f"pixel_values are {hgt}x{wid}; the vision tower expects "
                             f"{self.image_size}x{self.image_size}")
        x = self.patch_embedding(pixel_values)  # [B, H/p, W/p, D]
        x = x.reshape(b, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class CLIPVisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        eps = cfg.layer_norm_eps
        self.embeddings = CLIPEmbeddings(cfg, rngs)
        self.pre_layrnorm = nn.layer_norm(cfg.hidden_size, "vis_embed", eps, rngs)  # sic: HF's typo
        self.layers = nn.stacked(lambda r: CLIPEncoderLayer(cfg, r), cfg.num_layers, rngs)
        self.post_layernorm = nn.layer_norm(cfg.hidden_size, "vis_embed", eps, rngs)

    def hidden_state(self, pixel_values: jax.Array, index: int, *, remat: str = "none",
                     no_grad_below: int = 0) -> jax.Array:
        """HF's `hidden_states[index]` (0 = pre_layrnorm(embeddings), k = output of block k-1),
        computed without running the blocks after it. [B, 1+P, D]

        Blocks below `no_grad_below` run as a separate scan behind a stop-gradient (ShareGPT4V
        stage 1 trains blocks >= 12 only, REFERENCE §4.1): the backward pass never enters them."""
        pixel_values = constrain(pixel_values, ("act_batch", None, None, None))
        x = constrain(self.pre_layrnorm(self.embeddings(pixel_values)), ACT)

        def block(layer, x, _):
            return layer(x), None

        split = min(no_grad_below, index)
        if split:
            x, _ = nn.scan_layers(self.layers, block, x, stop=split, remat=remat)
            x = jax.lax.stop_gradient(x)
        x, _ = nn.scan_layers(self.layers, block, x, start=split, stop=index, remat=remat)
        return x
