"""Shared math: activations and attention. Pure functions of arrays (the modules in clip.py,
llama.py, eva_vit.py and qformer.py call them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    # jax.nn.gelu defaults to the tanh approximation; LLaVA's nn.GELU() is the erf one (§1.3).
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu_exact, "silu": jax.nn.silu}


# Queries are processed in blocks of this many rows when the sequence is longer: the fp32
# scores of one block ([B, N, 256, S]) are rematerialised in the backward pass instead of the
# whole [B, N, T, S] (8.6 GB per layer for 16 x 32 heads x 2048² in fp32).
QUERY_BLOCK = 256


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              kv_heads_major: bool = False) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q [B, T, N, H], k/v [B, S, K, H] (or [B, K, S, H] with `kv_heads_major`, the KV cache's
    layout) with N a multiple of K; mask [B, T, S] or None (True = may attend). Scores and
    softmax in fp32 like HF's eager path, output in q's dtype. Rows are independent, so
    blocking the queries changes no result.
    """
    b, t, n, h = q.shape
    if t <= QUERY_BLOCK or t % QUERY_BLOCK:
        return _attention(q, k, v, mask, kv_heads_major)
    blocks = t // QUERY_BLOCK
    qs = q.reshape(b, blocks, QUERY_BLOCK, n, h).swapaxes(0, 1)
    if mask is None:
        block = jax.checkpoint(lambda qb: _attention(qb, k, v, None, kv_heads_major))
        out = jax.lax.map(block, qs)
    else:
        ms = mask.reshape(b, blocks, QUERY_BLOCK, mask.shape[-1]).swapaxes(0, 1)
        block = jax.checkpoint(lambda xs: _attention(xs[0], k, v, xs[1], kv_heads_major))
        out = jax.lax.map(block, (qs, ms))
    return out.swapaxes(0, 1).reshape(b, t, n, h)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
               kv_heads_major: bool = False) -> jax.Array:
    n, h = q.shape[2:]
    if not kv_heads_major:
        k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))  # [B, K, S, H]
    kv_heads = k.shape[1]
    if kv_heads != n:  # grouped-query: share each kv head with its group of query heads
        k = jnp.repeat(k, n // kv_heads, axis=1)
        v = jnp.repeat(v, n // kv_heads, axis=1)
    # Heads-major 4-D einsums: XLA:CPU ran this layout 1.8x faster than a 5-D grouped one
    # (forward + backward, measured in benchmarks/bench_train.py's profiling).
    q = q.transpose(0, 2, 1, 3)  # [B, N, T, H]; k, v [B, N, S, H]
    scores = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (h ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnts,bnsh->bnth", probs, v)
    return out.transpose(0, 2, 1, 3)
