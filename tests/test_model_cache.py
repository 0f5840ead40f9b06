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
    assert len(cache["k"]) == text.num_layers and len(cache["k"][0]) == 1
    assert cache["k"][0][0].shape == (2, text.num_kv_heads, 16, text.resolved_head_dim)
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
    own earlier tokens, whatever the other rows hold; also when the cache is in blocks of 4
    slots and attention reads only the first block (all the rows use), as the serving engine's
    decode step does."""
    lm = language_model(4)
    a = jnp.asarray([[7, 8, 9, 10]], jnp.int32)
    b = jnp.asarray([[20, 21]], jnp.int32)
    ref = [lm.logits(lm.decode(lm.embed(x, jnp.float32), llava.default_positions(x),
                               jnp.ones_like(x))[0])[:, -1] for x in (a, b)]

    cache = llama.init_cache(lm.cfg, batch=2, max_len=8, dtype=jnp.float32, per_slot=True,
                             block=attend)
    rows = lambda tree, pick: jax.tree.map(pick, tree)
    # Row 0 holds a[:3] at slots 0..2, row 1 holds b[:1] at slot 0: fill them one row at a time.
    for row, prompt in ((0, a[:, :3]), (1, b[:, :1])):
        one = {**rows({"k": cache["k"], "v": cache["v"], "mask": cache["mask"]},
                      lambda x, r=row: x[r:r + 1]), "index": jnp.zeros((1,), jnp.int32)}
        _, one = lm.decode(lm.embed(prompt, jnp.float32), llava.default_positions(prompt),
                           jnp.ones_like(prompt), one)
        for name in ("k", "v", "mask"):
            cache[name] = jax.tree.map(lambda whole, part, r=row: whole.at[r].set(part[0]),
                                       cache[name], one[name])
    cache["index"] = jnp.asarray([3, 1], jnp.int32)
    last = jnp.asarray([[a[0, 3]], [b[0, 1]]], jnp.int32)
    hidden, cache = lm.decode(lm.embed(last, jnp.float32), cache["index"][:, None],
                              jnp.ones_like(last), cache, attend=attend)
    got = lm.logits(hidden)[:, -1]
    np.testing.assert_allclose(got[0], ref[0][0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], ref[1][0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["index"], [4, 2])
    # The whole cache comes back, written in place.
    assert sum(block.shape[2] for block in cache["k"][0]) == 8


def test_a_prefill_reading_its_own_keys_equals_one_reading_the_cache(highest_precision):
    """READ_INPUTS (a prefill into an empty cache: causal attention over the inputs, blocked
    by layers.QUERY_BLOCK with a shorter last block) gives the hidden states and the cache
    that READ_WRITTEN (attention over the cache after the write) gives, left padding
    included, over a prompt longer than one query block and not a multiple of it."""
    from sgv_jax.models import layers as attention_layers

    lm = language_model(6)
    t = attention_layers.QUERY_BLOCK + 12
    ids = jnp.asarray(np.random.default_rng(1).integers(1, lm.cfg.vocab_size, (2, t)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, :7].set(0)  # row 1 left-padded
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    embeds = lm.embed(ids, jnp.float32)

    def prefill(read):
        cache = llama.init_cache(lm.cfg, batch=2, max_len=t + 4, dtype=jnp.float32)
        return lm.decode(embeds, positions, mask, cache, layers=lm.split_layers(), read=read)

    (want, want_cache), (got, got_cache) = (prefill(r) for r in (llama.READ_WRITTEN,
                                                                 llama.READ_INPUTS))
    real = np.asarray(mask, bool)

    def slots(blocks):  # the real tokens' slots of one layer, [tokens, K, H]
        return np.asarray(blocks[0])[:, :, :t].transpose(0, 2, 1, 3)[real]

    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5, rtol=0)
    for name in ("k", "v"):
        for layer_got, layer_want in zip(got_cache[name], want_cache[name]):
            np.testing.assert_allclose(slots(layer_got), slots(layer_want), atol=2e-5, rtol=0)
    np.testing.assert_array_equal(got_cache["mask"], want_cache["mask"])
    with pytest.raises(ValueError, match="read='after'"):
        lm.decode(embeds, positions, mask, read="after")


def test_rope_tables_are_evaluated_once_per_forward():
    """cos and sin are computed once and read by every layer's q and k (llama.rope_tables):
    fused into each consumer, XLA:CPU evaluated them per element of every q and k and again
    in every causal block's key transpose (one cosine per consumer in the compiled prefill)."""
    lm = language_model(7)
    ids = jnp.ones((1, 40), jnp.int32)

    def prefill(embeds, positions):
        cache = llama.init_cache(lm.cfg, batch=1, max_len=48, dtype=jnp.float32)
        return lm.decode(embeds, positions, jnp.ones_like(ids), cache, layers=lm.split_layers(),
                         read=llama.READ_INPUTS)[0]

    text = jax.jit(prefill).lower(lm.embed(ids, jnp.float32),
                                  llava.default_positions(ids)).compile().as_text()
    assert lm.cfg.num_layers > 1
    assert text.count(" cosine(") == 1 and text.count(" sine(") == 1


def test_writes_across_cache_blocks_land_at_their_slots(highest_precision):
    """Three tokens written from slot 3 into blocks of 2 (slots 3 | 4 5) and one row written
    from slot 0: the blocks, laid end to end, equal the one-block cache's contents (the first
    layer's exactly; later layers' up to the order of the blocked attention's sums)."""
    lm = language_model(5)
    ids = jnp.asarray([[4, 5, 6], [7, 8, 9]], jnp.int32)
    embeds, positions = lm.embed(ids, jnp.float32), llava.default_positions(ids)
    index = jnp.asarray([3, 0], jnp.int32)
    whole, blocked = (llama.init_cache(lm.cfg, 2, 6, jnp.float32, per_slot=True, block=size)
                      for size in (None, 2))
    _, whole = lm.decode(embeds, positions, jnp.ones_like(ids), {**whole, "index": index})
    _, blocked = lm.decode(embeds, positions, jnp.ones_like(ids), {**blocked, "index": index})
    for name in ("k", "v"):
        for i, (layer_whole, layer_blocks) in enumerate(zip(whole[name], blocked[name])):
            assert len(layer_blocks) == 3
            np.testing.assert_allclose(jnp.concatenate(layer_blocks, axis=2), layer_whole[0],
                                       atol=0 if i == 0 else 1e-6, rtol=0)
    assert float(jnp.abs(whole["k"][0][0][0, :, 3:6]).min()) > 0  # the tokens were written


@pytest.mark.parametrize("per_slot", [False, True])
def test_a_bf16_cache_holds_its_keys_bits_and_decodes_like_the_forward(per_slot):
    """bf16 keys and values are stored as their bits (uint16: XLA:CPU has no bf16 in-place
    write), through both writes (one dynamic slice; per-slot scatters into blocks of 4): read
    back they are the keys exactly, and cached bf16 decoding gives the bf16 full forward's
    logits up to bf16 rounding."""
    storage = llama.cache_storage_dtype(jnp.bfloat16)
    assert storage == jnp.uint16
    blocks = [jnp.zeros((2, 3, 4, 8), storage) for _ in range(2 if per_slot else 1)]
    new = jax.random.normal(jax.random.key(0), (2, 2, 3, 8)).astype(jnp.bfloat16)  # [B, T, K, H]
    index = jnp.asarray([1, 3]) if per_slot else jnp.asarray(2)  # row 1 spans both blocks
    cached = jnp.concatenate([llama.from_cache(b) for b in llama._write_kv(blocks, new, index)],
                             axis=2)
    assert cached.dtype == jnp.bfloat16
    for row, start in enumerate(np.broadcast_to(np.asarray(index), (2,))):
        np.testing.assert_array_equal(cached[row, :, start:start + 2],
                                      new[row].transpose(1, 0, 2))

    lm = language_model(0)
    nnx.update(lm, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(lm, nnx.Param)))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, lm.cfg.vocab_size, (2, 7)), jnp.int32)
    positions = llava.default_positions(ids)
    full, _ = lm.decode(lm.embed(ids, jnp.bfloat16), positions, jnp.ones_like(ids))
    cache = llama.init_cache(lm.cfg, 2, 8, jnp.bfloat16, per_slot=per_slot,
                             block=4 if per_slot else None)
    got = []
    for t in range(ids.shape[1]):
        hidden, cache = lm.decode(lm.embed(ids[:, t:t + 1], jnp.bfloat16), positions[:, t:t + 1],
                                  jnp.ones_like(ids[:, :1]), cache)
        got.append(lm.logits(hidden))
    want = lm.logits(full)
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=0.01 * scale, rtol=0)
