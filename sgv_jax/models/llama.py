"""LLaMA decoder (HF `LlamaModel` + `lm_head`, REFERENCE.md §1.4).

RMSNorm with eps from config, rotate-half RoPE (HF layout, so HF weights load without a q/k
permutation), grouped-query attention, SwiGLU MLP, and an optional preallocated KV cache.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sgv_jax.models.config import TextConfig
from sgv_jax.models.layers import attention, dense, rms_norm
from sgv_jax.models.params import ParamSpec, dense_spec, norm_spec
from sgv_jax.sharding import constrain

ACT = ("act_batch", "act_seq", "act_embed")


def block_specs(cfg: TextConfig) -> dict:
    d, f = cfg.hidden_size, cfg.intermediate_size
    q_dim = cfg.num_heads * cfg.resolved_head_dim
    kv_dim = cfg.num_kv_heads * cfg.resolved_head_dim
    return {
        "self_attn": {
            "q_proj": dense_spec(d, q_dim, ("embed", "heads"), bias=False),
            "k_proj": dense_spec(d, kv_dim, ("embed", "kv_heads"), bias=False),
            "v_proj": dense_spec(d, kv_dim, ("embed", "kv_heads"), bias=False),
            "o_proj": dense_spec(q_dim, d, ("heads", "embed"), bias=False),
        },
        "mlp": {
            "gate_proj": dense_spec(d, f, ("embed", "mlp"), bias=False),
            "up_proj": dense_spec(d, f, ("embed", "mlp"), bias=False),
            "down_proj": dense_spec(f, d, ("mlp", "embed"), bias=False),
        },
        "input_layernorm": norm_spec(d, "norm", bias=False),
        "post_attention_layernorm": norm_spec(d, "norm", bias=False),
    }


def param_specs(cfg: TextConfig) -> dict:
    d, v = cfg.hidden_size, cfg.vocab_size
    specs = {
        "embed_tokens": {"embedding": ParamSpec((v, d), ("vocab", "embed"))},
        "layers": {str(i): block_specs(cfg) for i in range(cfg.num_layers)},
        "norm": norm_spec(d, "norm", bias=False),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = dense_spec(d, v, ("embed", "vocab"), bias=False)
    return specs


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE. x [B, T, N, H], positions [B, T]."""
    h = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype, per_slot: bool = False) -> dict:
    """Preallocated KV cache: fixed shapes so decoding compiles once. K/V are heads-major
    [B, K, S, H], the layout attention reads: a sequence-major cache would be transposed in
    full at every decode step (on XLA:CPU that transpose cost 9x the attention math at 32 rows
    x 512 slots, benchmarks/bench_serve.py). The write `index` is one scalar for the whole
    (left-padded) batch, or with `per_slot` an int32 [B] so that each row (a continuous-batching
    slot) writes at its own position."""
    shape = (batch, cfg.num_kv_heads, max_len, cfg.resolved_head_dim)
    layers = {str(i): {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
              for i in range(cfg.num_layers)}
    index = jnp.zeros((batch,) if per_slot else (), jnp.int32)
    return {"layers": layers, "mask": jnp.zeros((batch, max_len), jnp.bool_), "index": index}


def write_cache(cache: jax.Array, new: jax.Array, index: jax.Array, axis: int = 1) -> jax.Array:
    """Writes `new` into `cache` (batch first) at position `index` of `axis`: a scalar (every
    row at the same position) or an int32 [B] (row b at index[b], a scatter)."""
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=axis)
    return jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis - 1))(
        cache, new, index)


def decoder_block(p: dict, cfg: TextConfig, x: jax.Array, positions: jax.Array,
                  mask: jax.Array, kv: dict | None, index: jax.Array | None):
    """One pre-norm block. Returns (x, new kv or None)."""
    b, t, _ = x.shape
    n, k_heads, h = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    a = p["self_attn"]
    y = rms_norm(x, p["input_layernorm"], cfg.rms_norm_eps)
    q = rope(dense(y, a["q_proj"]).reshape(b, t, n, h), positions, cfg.rope_theta)
    k = rope(dense(y, a["k_proj"]).reshape(b, t, k_heads, h), positions, cfg.rope_theta)
    v = dense(y, a["v_proj"]).reshape(b, t, k_heads, h)
    if kv is None:
        out = attention(q, k, v, mask)
    else:
        heads_major = lambda y, c: y.transpose(0, 2, 1, 3).astype(c.dtype)
        k = write_cache(kv["k"], heads_major(k, kv["k"]), index, axis=2)
        v = write_cache(kv["v"], heads_major(v, kv["v"]), index, axis=2)
        kv = {"k": k, "v": v}
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, kv_heads_major=True)
    x = x + dense(out.reshape(b, t, n * h), a["o_proj"])
    x = constrain(x, ACT)
    y = rms_norm(x, p["post_attention_layernorm"], cfg.rms_norm_eps)
    m = p["mlp"]
    y = dense(jax.nn.silu(dense(y, m["gate_proj"])) * dense(y, m["up_proj"]), m["down_proj"])
    return constrain(x + y, ACT), kv


def decode(p: dict, cfg: TextConfig, embeds: jax.Array, positions: jax.Array,
           attention_mask: jax.Array, cache: dict | None = None,
           remat_block: Callable = lambda f: f):
    """Run the decoder stack on input embeddings.

    embeds [B, T, D]; positions [B, T] (RoPE positions); attention_mask [B, T] (1 = real token).
    Without a cache, attention is causal over the T inputs. With a cache, the T inputs are
    written at slots [index, index+T) and attend to every valid earlier slot; `cache["index"]`
    is a scalar or, per row, an int32 [B] (`init_cache(per_slot=True)`).
    Returns (final-normed hidden [B, T, D], new cache or None).
    """
    b, t, _ = embeds.shape
    valid = attention_mask.astype(jnp.bool_)
    if cache is None:
        query_slot = jnp.arange(t)
        key_mask, key_slot, index = valid, query_slot, None
    else:
        index = cache["index"]
        key_mask = write_cache(cache["mask"], valid, index, axis=1)
        query_slot = jnp.expand_dims(index, -1) + jnp.arange(t)  # [T] or, per row, [B, T]
        key_slot = jnp.arange(key_mask.shape[1])
    query_slot = jnp.broadcast_to(query_slot, (b, t))
    # [B, T, S]: causal by slot, and only keys that hold real tokens.
    mask = (key_slot[None, None, :] <= query_slot[:, :, None]) & key_mask[:, None, :]

    x = constrain(embeds, ACT)
    block = remat_block(lambda bp, x, kv: decoder_block(bp, cfg, x, positions, mask, kv, index))
    new_layers = {}
    for i in range(cfg.num_layers):
        kv = None if cache is None else cache["layers"][str(i)]
        x, new_kv = block(p["layers"][str(i)], x, kv)
        new_layers[str(i)] = new_kv
    x = rms_norm(x, p["norm"], cfg.rms_norm_eps)
    new_cache = None if cache is None else {"layers": new_layers, "mask": key_mask, "index": index + t}
    return x, new_cache


def embed_tokens(p: dict, ids: jax.Array, dtype) -> jax.Array:
    return jnp.take(p["embed_tokens"]["embedding"], ids, axis=0).astype(dtype)


def logits(p: dict, cfg: TextConfig, hidden: jax.Array) -> jax.Array:
    """[B, T, D] → fp32 logits [B, T, V]."""
    if cfg.tie_word_embeddings:
        w = p["embed_tokens"]["embedding"].astype(hidden.dtype).T
    else:
        w = p["lm_head"]["kernel"].astype(hidden.dtype)
    out = jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)
    return constrain(out, ("act_batch", "act_seq", "act_vocab"))
