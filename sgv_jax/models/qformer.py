"""BLIP-2's Q-Former as MiniGPT-4 runs it (MINIGPT4.md §1.2): learned query tokens through
BERT-base layers, the text half deleted (no word/position embeddings, no text FFN, no MLM head).

Per layer (post-LN residuals, BERT style): self-attention over the queries → (every
`cross_attention_freq`-th layer, from layer 0) cross-attention to the image tokens → the
*query* FFN (`intermediate_query` / `output_query`). The image mask is all ones, so no mask.

The layers differ (cross-attention or not), so they are separate modules `layer_0 …` run in a
Python loop, not a stacked scan: 12 small frozen layers cost little to compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sgv_jax.models import nn
from sgv_jax.models.config import QFormerConfig
from sgv_jax.models.layers import attention, gelu_exact


class QFormerAttention(nnx.Module):
    """`attention.{attention,output}` (HF) / `attention.{self,output}` (LAVIS): multi-head
    attention, then dense + LayerNorm over the residual."""

    def __init__(self, cfg: QFormerConfig, d_kv: int, kv_axis: str, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.query = nn.linear(d, d, ("qf_embed", "qf_heads"), True, rngs)
        self.key = nn.linear(d_kv, d, (kv_axis, "qf_heads"), True, rngs)
        self.value = nn.linear(d_kv, d, (kv_axis, "qf_heads"), True, rngs)
        self.dense = nn.linear(d, d, ("qf_heads", "qf_embed"), True, rngs)
        self.norm = nn.layer_norm(d, "qf_embed", cfg.layer_norm_eps, rngs)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, t, d = x.shape
        s = context.shape[1]
        q = self.query(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.key(context).reshape(b, s, self.num_heads, self.head_dim)
        v = self.value(context).reshape(b, s, self.num_heads, self.head_dim)
        out = attention(q, k, v, mask=None).reshape(b, t, d)
        return self.norm(self.dense(out) + x)


class QFormerFFN(nnx.Module):
    """`intermediate_query.dense` (fc1), `output_query.{dense,LayerNorm}` (fc2, norm)."""

    def __init__(self, cfg: QFormerConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.fc1 = nn.linear(d, f, ("qf_embed", "qf_mlp"), True, rngs)
        self.fc2 = nn.linear(f, d, ("qf_mlp", "qf_embed"), True, rngs)
        self.norm = nn.layer_norm(d, "qf_embed", cfg.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # BERT's hidden_act "gelu" is the erf GELU.
        return self.norm(self.fc2(gelu_exact(self.fc1(x))) + x)


class QFormerLayer(nnx.Module):
    def __init__(self, cfg: QFormerConfig, d_image: int, cross: bool, rngs: nnx.Rngs):
        self.self_attn = QFormerAttention(cfg, cfg.hidden_size, "qf_embed", rngs)
        if cross:
            self.cross_attn = QFormerAttention(cfg, d_image, "vis_embed", rngs)
        self.mlp = QFormerFFN(cfg, rngs)
        self.cross = cross

    def __call__(self, x: jax.Array, image: jax.Array) -> jax.Array:
        x = self.self_attn(x, x)
        if self.cross:
            x = self.cross_attn(x, image)
        return self.mlp(x)


class QFormerEmbeddings(nnx.Module):
    """The learned `query_tokens` [Q, D_q] and BertEmbeddings' LayerNorm: with input_ids=None
    the embeddings are just LayerNorm(query_embeds) (Qformer.py l.85-108)."""

    def __init__(self, cfg: QFormerConfig, rngs: nnx.Rngs):
        self.query_tokens = nnx.Param(nn.param(nn.NORMAL, (None, "qf_embed"))(
            rngs.params(), (cfg.num_query_tokens, cfg.hidden_size)))
        self.layernorm = nn.layer_norm(cfg.hidden_size, "qf_embed", cfg.layer_norm_eps, rngs)

    def __call__(self, batch: int, dtype) -> jax.Array:
        queries = self.query_tokens[...].astype(dtype)
        return self.layernorm(jnp.broadcast_to(queries[None], (batch, *queries.shape)))


class QFormer(nnx.Module):
    """[B, S, D_vis] image tokens → [B, Q, D_q] query outputs (`last_hidden_state`)."""

    def __init__(self, cfg: QFormerConfig, d_image: int, rngs: nnx.Rngs):
        self.embeddings = QFormerEmbeddings(cfg, rngs)
        for i in range(cfg.num_layers):
            setattr(self, f"layer_{i}", QFormerLayer(cfg, d_image, cfg.has_cross_attention(i), rngs))
        self.num_layers = cfg.num_layers

    def __call__(self, image: jax.Array) -> jax.Array:
        x = self.embeddings(image.shape[0], image.dtype)
        for i in range(self.num_layers):
            x = getattr(self, f"layer_{i}")(x, image)
        return x
