"""KV-cached decoding equals recomputing the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sgv_jax.models import build_model, get_preset, llama, llava


def language_model(seed: int) -> llama.LlamaModel:
    return build_model(get_preset("tiny_even"), nnx.Rngs(seed)).language_model


@pytest.mark.parametrize("split", [False, True])
def test_cached_decoding_equals_full_forward(highest_precision, split):
    """Also with the layers split into one module each (`split_layers`, what decode loops run)."""
    lm = language_model(0)
    text = lm.cfg
    layers = lm.split_layers() if split else None
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, text.vocab_size, size=(2, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    positions = llava.default_positions(ids)

    full_hidden, _ = lm.decode(lm.embed(ids, jnp.float32), positions, mask)
    want = lm.logits(full_hidden)

    cache = llama.init_cache(text, batch=2, max_len=16, dtype=jnp.float32)
    prompt = 5
    step = jax.jit(lambda c, i, p: lm.decode(lm.embed(i, jnp.float32), p, jnp.ones_like(i), c,
                                             layers=layers))
    hidden, cache = step(cache, ids[:, :prompt], positions[:, :prompt])
    got = [lm.logits(hidden)]
    for t in range(prompt, ids.shape[1]):
        hidden, cache = step(cache, ids[:, t:t + 1], positions[:, t:t + 1])
        got.append(lm.logits(hidden))
    assert int(cache["index"]) == ids.shape[1]
    assert cache["k"].shape == (text.num_layers, 2, text.num_kv_heads, 16, text.resolved_head_dim)
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-5, rtol=0)


def test_left_padded_prompt_in_cache_matches_unpadded(highest_precision):
    """A left-padded row (positions counted from its first real token) gives the logits the
    same prompt gives alone: pad slots are never attended to."""
    lm = language_model(2)
    row = jnp.asarray([[5, 9, 11, 3]], jnp.int32)
    alone, _ = lm.decode(lm.embed(row, jnp.float32), llava.default_positions(row),
                         jnp.ones_like(row))

    padded = jnp.asarray([[0, 0, 5, 9, 11, 3]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1]], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = llama.init_cache(lm.cfg, batch=1, max_len=8, dtype=jnp.float32)
    hidden, _ = lm.decode(lm.embed(padded, jnp.float32), positions, mask, cache)
    np.testing.assert_allclose(hidden[:, 2:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attend", [None, 4])
def test_rows_write_at_their_own_cache_slots(highest_precision, attend):
    """With a per-row write index (continuous batching), each row's next token sees exactly its
    own earlier tokens, whatever the other rows hold; also when attention reads only the first
    4 of the 8 cache slots (all the rows use), as the serving engine's decode step does."""
    lm = language_model(4)
    a = jnp.asarray([[7, 8, 9, 10]], jnp.int32)
    b = jnp.asarray([[20, 21]], jnp.int32)
    ref = [lm.logits(lm.decode(lm.embed(x, jnp.float32), llava.default_positions(x),
                               jnp.ones_like(x))[0])[:, -1] for x in (a, b)]

    cache = llama.init_cache(lm.cfg, batch=2, max_len=8, dtype=jnp.float32)
    # Row 0 holds a[:3] at slots 0..2, row 1 holds b[:1] at slot 0: fill them one row at a time.
    for row, prompt in ((0, a[:, :3]), (1, b[:, :1])):
        one = {**cache, "k": cache["k"][:, row:row + 1], "v": cache["v"][:, row:row + 1],
               "mask": cache["mask"][row:row + 1], "index": jnp.zeros((1,), jnp.int32)}
        _, one = lm.decode(lm.embed(prompt, jnp.float32), llava.default_positions(prompt),
                           jnp.ones_like(prompt), one)
        cache = {"k": cache["k"].at[:, row].set(one["k"][:, 0]),
                 "v": cache["v"].at[:, row].set(one["v"][:, 0]),
                 "mask": cache["mask"].at[row].set(one["mask"][0]), "index": cache["index"]}
    cache["index"] = jnp.asarray([3, 1], jnp.int32)
    last = jnp.asarray([[a[0, 3]], [b[0, 1]]], jnp.int32)
    hidden, cache = lm.decode(lm.embed(last, jnp.float32), cache["index"][:, None],
                              jnp.ones_like(last), cache, attend=attend)
    got = lm.logits(hidden)[:, -1]
    np.testing.assert_allclose(got[0], ref[0][0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], ref[1][0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["index"], [4, 2])
    assert cache["k"].shape[3] == 8  # the whole cache comes back, written in place
