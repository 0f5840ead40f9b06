"""EVA ViT-g/14, the vision encoder of BLIP-2 and MiniGPT-4 (MINIGPT4.md §1.1), as NNX modules.

Differences from CLIP's tower (clip.py) that matter: the patch conv has a bias; no pre-norm and
no final norm (the last block's 257 tokens, CLS included, go to `ln_vision`); one fused `qkv`
kernel with separate `q_bias` / `v_bias` and **no k bias** (`cat(q_bias, 0, v_bias)`); exact
GELU. Attribute names follow HF's `Blip2VisionModel` (`embeddings`, `layers`, `self_attn.qkv`,
`projection`, `layer_norm1/2`, `mlp.fc1/fc2`) so both checkpoint formats are renames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sgv_jax.models import nn
from sgv_jax.models.clip import CLIPEncoderLayer
from sgv_jax.models.config import VisionConfig
from sgv_jax.models.layers import attention


class EvaAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.qkv = nn.linear(d, 3 * d, ("vis_embed", "vis_heads"), False, rngs)
        self.q_bias = nnx.Param(nn.param(nn.ZEROS, ("vis_heads",))(rngs.params(), (d,)))
        self.v_bias = nnx.Param(nn.param(nn.ZEROS, ("vis_heads",))(rngs.params(), (d,)))
        self.projection = nn.linear(d, d, ("vis_heads", "vis_embed"), True, rngs)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        # eva_vit.py Attention.forward: qkv_bias = cat(q_bias, zeros_like(v_bias), v_bias).
        bias = jnp.concatenate([self.q_bias[...], jnp.zeros_like(self.v_bias[...]),
                                self.v_bias[...]]).astype(x.dtype)
        qkv = (self.qkv(x) + bias).reshape(b, t, 3, self.num_heads, self.head_dim)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=None)
        return self.projection(out.reshape(b, t, d))


class EvaBlock(CLIPEncoderLayer):
    """CLIP's pre-LN block (same norms, fc1/fc2 MLP and residuals) with EVA's attention; no
    layer scale, no drop path (init_values=None, drop_path_rate=0)."""

    ATTENTION = EvaAttention


class EvaEmbeddings(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.class_embedding = nnx.Param(nn.param(nn.NORMAL, ("vis_embed",))(rngs.params(), (d,)))
        # Conv2d(3→D, kernel=stride=patch) WITH bias (PatchEmbed); kernel [kh, kw, in, out].
        self.patch_embedding = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID",
                                        use_bias=True,
                                        kernel_init=nn.param(nn.NORMAL, (None, None, None, "vis_embed")),
                                        bias_init=nn.param(nn.ZEROS, ("vis_embed",)), rngs=rngs)
        self.position_embedding = nnx.Param(
            nn.param(nn.NORMAL, (None, "vis_embed"))(rngs.params(), (cfg.num_patches + 1, d)))
        self.image_size = cfg.image_size

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [B, H, W, 3] → [B, 1+P, D]: CLS + patches (row-major) + positions."""
        b, hgt, wid, _ = pixel_values.shape
        if hgt != self.image_size or wid != self.image_size:
            raise ValueError(f"pixel_values are {hgt}x{wid}; the EVA ViT expects "
                             f"{self.image_size}x{self.image_size}")
        x = self.patch_embedding(pixel_values)
        x = x.reshape(b, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding[...].astype(x.dtype)[None]


class EvaVisionTower(nnx.Module):
    """`visual_encoder` (embeddings and the stacked blocks, run with `lax.scan`) and the
    `ln_vision` that MiniGPT-4 / BLIP-2 apply to its output — held here as HF holds it
    (`vision_model.post_layernorm`), with the original's eps (1e-5, MINIGPT4.md §1.1)."""

    def __init__(self, cfg: VisionConfig, ln_vision_eps: float, rngs: nnx.Rngs):
        self.embeddings = EvaEmbeddings(cfg, rngs)
        self.layers = nn.stacked(lambda r: EvaBlock(cfg, r), cfg.num_layers, rngs)
        self.ln_vision = nn.layer_norm(cfg.hidden_size, "vis_embed", ln_vision_eps, rngs)

    def __call__(self, pixel_values: jax.Array, *, remat: str = "none",
                 no_grad_below: int = 0) -> jax.Array:
        """The last block's output [B, 1+P, D] (no final norm). Blocks below `no_grad_below`
        run behind a stop-gradient, as in CLIPVisionTower.hidden_state."""
        x = self.embeddings(pixel_values)

        def block(layer, x, _):
            return layer(x), None

        if no_grad_below:
            x, _ = nn.scan_layers(self.layers, block, x, stop=no_grad_below, remat=remat)
            x = jax.lax.stop_gradient(x)
        x, _ = nn.scan_layers(self.layers, block, x, start=no_grad_below, remat=remat)
        return x
