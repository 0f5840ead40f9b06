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
QUERY_BLOCK = 128

# On GPUs, half-precision attention over a whole sequence runs as cuDNN's fused (flash)
# kernel: the einsum path below writes fp32 [B, N, T, S] scores to memory and reads them back
# several times per layer, which on an H200 costs as much as the layer's matmuls. Benchmarks
# set this False to time the einsum path for comparison.
FUSED_ATTENTION = True


def attention(q: jax.Array, k: jax.Array | list[jax.Array], v: jax.Array | list[jax.Array],
              mask: jax.Array | None, causal: bool = False) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q [B, T, N, H] with N a multiple of K; k/v [B, S, K, H], or lists of the KV cache's
    heads-major blocks [B, K, S_j, H] that together make the S keys, in order (each block is
    read where it lies: see llama.init_cache). mask [B, T, S] or None (True = may attend).
    Scores and softmax in fp32 like HF's eager path, output in q's dtype. Rows are
    independent, so blocking the queries changes no result.

    `causal`: the caller promises that query t may attend to no key after slot t (S == T, the
    mask already says so): query blocks then skip the key blocks after them, which are all
    masked. The result is the same for every row that may attend to some key; a row that may
    attend to none (a padding query) averages the keys up to its block's end instead of all S.
    """
    if uses_fused_attention(q, k):
        return fused_attention(q, k, v, mask, "cudnn")
    b, t, n, h = q.shape
    if t <= QUERY_BLOCK:
        return _attention(q, k, v, mask)
    if causal:
        return _causal_blocks(q, k, v, mask)
    if t % QUERY_BLOCK:
        return _attention(q, k, v, mask)
    blocks = t // QUERY_BLOCK
    qs = q.reshape(b, blocks, QUERY_BLOCK, n, h).swapaxes(0, 1)
    if mask is None:
        block = jax.checkpoint(lambda qb: _attention(qb, k, v, None))
        out = jax.lax.map(block, qs)
    else:
        ms = mask.reshape(b, blocks, QUERY_BLOCK, mask.shape[-1]).swapaxes(0, 1)
        block = jax.checkpoint(lambda xs: _attention(xs[0], k, v, xs[1]))
        out = jax.lax.map(block, (qs, ms))
    return out.swapaxes(0, 1).reshape(b, t, n, h)


def _causal_blocks(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Query block i against keys [0, (i + 1) * QUERY_BLOCK) only: the skipped score blocks
    are masked anyway, and their matmuls and softmax were 3/8 of the attention work at 512
    tokens (half of it at long lengths). The blocks differ in width, so they are unrolled; the
    last one is shorter when T is not a multiple of the block (a prefill's prompt)."""
    block = jax.checkpoint(_attention)
    outs = []
    for start in range(0, q.shape[1], QUERY_BLOCK):
        end = start + QUERY_BLOCK
        outs.append(block(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end]))
    return jnp.concatenate(outs, axis=1)


def uses_fused_attention(q: jax.Array, k: jax.Array | list[jax.Array]) -> bool:
    """cuDNN's kernel takes contiguous [B, S, K, H] keys in fp16/bf16 on a GPU: the training
    step and cache-less forwards qualify; the KV cache's blocks (decode) do not."""
    return (FUSED_ATTENTION and not isinstance(k, list) and jax.default_backend() == "gpu"
            and q.dtype in (jnp.bfloat16, jnp.float16))


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                    implementation: str) -> jax.Array:
    """`attention` through `jax.nn.dot_product_attention` (same [B, T, N, H] / [B, S, K, H]
    layout, grouped heads and 1/sqrt(H) scale). The softmax accumulates in fp32 inside the
    kernel. A query row with no key to attend to (never in a right-padded training batch) is
    undefined there, where the einsum path averages all keys."""
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                        mask=None if mask is None else mask[:, None],
                                        implementation=implementation)


def _attention(q: jax.Array, k: jax.Array | list[jax.Array], v: jax.Array | list[jax.Array],
               mask: jax.Array | None) -> jax.Array:
    n, h = q.shape[2:]
    if isinstance(k, list):
        ks, vs = k, v
    else:
        ks, vs = [k.transpose(0, 2, 1, 3)], [v.transpose(0, 2, 1, 3)]  # [B, K, S, H]
    ks, vs = [x.astype(q.dtype) for x in ks], [x.astype(q.dtype) for x in vs]
    kv_heads = ks[0].shape[1]
    if kv_heads != n:  # grouped-query: share each kv head with its group of query heads
        ks = [jnp.repeat(x, n // kv_heads, axis=1) for x in ks]
        vs = [jnp.repeat(x, n // kv_heads, axis=1) for x in vs]
    # Heads-major 4-D einsums: XLA:CPU ran this layout 1.8x faster than a 5-D grouped one
    # (forward + backward, measured in benchmarks/bench_train.py's profiling).
    q = q.transpose(0, 2, 1, 3)  # [B, N, T, H]; k, v blocks [B, N, S_j, H]
    scores = [jnp.einsum("bnth,bnsh->bnts", q, x, preferred_element_type=jnp.float32)
              for x in ks]
    scores = (scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)) * (h ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out, start = None, 0
    for x in vs:  # each value block against its slice of the probabilities
        size = x.shape[2]
        part = jnp.einsum("bnts,bnsh->bnth", probs[..., start:start + size], x)
        out, start = part if out is None else out + part, start + size
    return out.transpose(0, 2, 1, 3)
