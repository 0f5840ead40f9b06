"""KV-cached decoding equals recomputing the full forward."""

import jax
import jax.numpy as jnp
import numpy as np

from sgv_jax.models import get_preset, llama, llava


def test_cached_decoding_equals_full_forward(highest_precision):
    cfg = get_preset("tiny_even")
    text = cfg.text
    params = llava.init(cfg, jax.random.key(0))["language_model"]
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, text.vocab_size, size=(2, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    positions = llava.default_positions(ids)

    full_hidden, _ = llama.decode(params, text, llama.embed_tokens(params, ids, jnp.float32),
                                  positions, mask)
    want = llama.logits(params, text, full_hidden)

    cache = llama.init_cache(text, batch=2, max_len=16, dtype=jnp.float32)
    prompt = 5
    step = jax.jit(lambda c, i, p: llama.decode(
        params, text, llama.embed_tokens(params, i, jnp.float32), p, jnp.ones_like(i), c))
    hidden, cache = step(cache, ids[:, :prompt], positions[:, :prompt])
    got = [llama.logits(params, text, hidden)]
    for t in range(prompt, ids.shape[1]):
        hidden, cache = step(cache, ids[:, t:t + 1], positions[:, t:t + 1])
        got.append(llama.logits(params, text, hidden))
    assert int(cache["index"]) == ids.shape[1]
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-5, rtol=0)


def test_left_padded_prompt_in_cache_matches_unpadded(highest_precision):
    """A left-padded row (positions counted from its first real token) gives the logits the
    same prompt gives alone: pad slots are never attended to."""
    cfg = get_preset("tiny_even")
    text = cfg.text
    params = llava.init(cfg, jax.random.key(2))["language_model"]
    row = jnp.asarray([[5, 9, 11, 3]], jnp.int32)
    alone, _ = llama.decode(params, text, llama.embed_tokens(params, row, jnp.float32),
                            llava.default_positions(row), jnp.ones_like(row))

    padded = jnp.asarray([[0, 0, 5, 9, 11, 3]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1]], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = llama.init_cache(text, batch=1, max_len=8, dtype=jnp.float32)
    hidden, _ = llama.decode(params, text, llama.embed_tokens(params, padded, jnp.float32),
                             positions, mask, cache)
    np.testing.assert_allclose(hidden[:, 2:], alone, atol=1e-5, rtol=0)
