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


def test_per_slot_cache_rows_decode_at_their_own_positions(highest_precision):
    """With an int32 [B] cache index, each row writes at its own slot: two prompts of different
    lengths, right-padded in one cache, continue exactly as each does alone."""
    cfg = get_preset("tiny_even")
    text = cfg.text
    params = llava.init(cfg, jax.random.key(3))["language_model"]
    rows = [[5, 9, 11], [7, 3, 8, 2, 6, 4]]
    steps = [[13, 17], [19, 23]]
    width = 6
    ids = jnp.asarray([r + [0] * (width - len(r)) for r in rows], jnp.int32)
    mask = jnp.asarray([[1] * len(r) + [0] * (width - len(r)) for r in rows], jnp.int32)
    cache = llama.init_cache(text, batch=2, max_len=10, dtype=jnp.float32, per_slot=True)
    embed = jax.jit(lambda i: llama.embed_tokens(params, i, jnp.float32))
    decode = jax.jit(lambda *args: llama.decode(params, text, *args))
    _, cache = decode(embed(ids), llava.default_positions(ids), mask, cache)
    # After the right-padded prefill each row continues at its own length.
    cache = {**cache, "index": jnp.asarray([len(r) for r in rows], jnp.int32)}
    got = []
    for t in range(2):
        new = jnp.asarray([[s[t]] for s in steps], jnp.int32)
        hidden, cache = decode(embed(new), cache["index"][:, None], jnp.ones_like(new), cache)
        got.append(llama.logits(params, text, hidden)[:, 0])
    assert cache["index"].tolist() == [len(r) + 2 for r in rows]
    for b, (row, more) in enumerate(zip(rows, steps)):
        full = jnp.asarray([row + more], jnp.int32)
        hidden, _ = decode(embed(full), llava.default_positions(full), jnp.ones_like(full))
        want = llama.logits(params, text, hidden)[0, len(row):]
        np.testing.assert_allclose(np.stack([g[b] for g in got]), want, atol=1e-5, rtol=0)
