"""Shared math: linear layers, norms, activations and attention. Pure functions of arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(x: jax.Array, p: dict) -> jax.Array:
    y = x @ p["kernel"].astype(x.dtype)
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def layer_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
    """LayerNorm computed in fp32 and cast back (torch upcasts under autocast the same way)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
    """LLaMA RMSNorm: normalise in fp32, cast back to the input dtype, THEN scale (§1.4)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    return p["scale"].astype(x.dtype) * y.astype(x.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    # jax.nn.gelu defaults to the tanh approximation; LLaVA's nn.GELU() is the erf one (§1.3).
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu_exact, "silu": jax.nn.silu}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q [B, T, N, H], k/v [B, S, K, H] with N a multiple of K; mask broadcastable to [B, T, S]
    (True = may attend). Scores and softmax in fp32 like HF's eager path, output in q's dtype.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)  # [B, T, K, G, H]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (h ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)
