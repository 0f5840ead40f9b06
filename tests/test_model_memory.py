"""The memory- and time-saving paths (query-blocked attention, the sliced loss) compute the same
numbers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax.models import cross_entropy, get_preset, layers, llava
from tests.test_model_sharded import demo_batch


def test_blocked_attention_equals_full(highest_precision, monkeypatch):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 8, 4, 6)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 8, 2, 6)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 8, 2, 6)), jnp.float32)
    mask = jnp.tril(jnp.ones((8, 8), bool))[None].repeat(2, 0)
    full = layers.attention(q, k, v, mask)
    monkeypatch.setattr(layers, "QUERY_BLOCK", 2)
    np.testing.assert_allclose(layers.attention(q, k, v, mask), full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(layers.attention(q, k, v, None), layers._attention(q, k, v, None),
                               atol=1e-6, rtol=0)


def test_causal_blocks_skip_masked_keys_and_change_no_value_or_gradient(highest_precision,
                                                                         monkeypatch):
    # Training's causal self-attention skips the key blocks after each query block; over a
    # right-padded batch (every query may attend to its row's first key) the values and the
    # gradients of q, k and v must be those of the whole masked score matrix.
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 8, 4, 6)), jnp.float32) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]  # grouped heads
    keys = jnp.asarray([[True] * 8, [True] * 5 + [False] * 3])
    mask = jnp.tril(jnp.ones((8, 8), bool))[None] & keys[:, None, :]

    def run(fn):
        return jax.value_and_grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(q, k, v)

    want, g_want = run(lambda q, k, v: layers._attention(q, k, v, mask))
    monkeypatch.setattr(layers, "QUERY_BLOCK", 2)
    blocked = lambda q, k, v: layers.attention(q, k, v, mask, causal=True)
    jaxpr = str(jax.make_jaxpr(blocked)(q, k, v))
    assert "f32[2,4,2,2]" in jaxpr  # the first block's scores: its 2 keys, not all 8
    got, g_got = run(blocked)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_fused_attention_call_equals_einsum_path(highest_precision):
    """The fused path's call (cuDNN on GPUs) passes layout, grouped heads, scale and mask as the
    einsum path reads them: checked through jax's XLA implementation of the same call, with a
    causal mask over a right-padded batch. cuDNN itself runs only on a GPU
    (benchmarks/bench_train_chip.py compares the two there)."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, 8, 4, 6)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 8, 2, 6)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 8, 2, 6)), jnp.float32)
    keys = jnp.asarray([[True] * 8, [True] * 5 + [False] * 3])
    mask = jnp.tril(jnp.ones((8, 8), bool))[None] & keys[:, None, :]
    assert not layers.uses_fused_attention(q, k)  # fp32 on a CPU: the einsum path
    np.testing.assert_allclose(layers.fused_attention(q, k, v, mask, "xla"),
                               layers._attention(q, k, v, mask), atol=1e-6, rtol=0)
    np.testing.assert_allclose(layers.fused_attention(q, k, v, None, "xla"),
                               layers._attention(q, k, v, None), atol=1e-6, rtol=0)


def test_chunked_loss_and_gradient_equal_unchunked(highest_precision):
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=11)  # 16 image + 11 text = 27 -> pad to 28
    batch = {k: np.pad(v, [(0, 0), (0, 1)] + [(0, 0)] * (v.ndim - 2),
                       constant_values=-100 if k == "labels" else 0) if k != "pixel_values"
             else v for k, v in batch.items()}

    def via_logits(p):
        logits, _ = llava.forward(p, cfg, batch)
        return llava.token_losses(logits, batch["labels"])

    def chunked(p):
        return llava.loss_terms(p, cfg, batch, chunk=7)  # 28 = 4 chunks of 7

    want, want_n = via_logits(params)
    got, got_n = chunked(params)
    assert int(got_n) == int(want_n)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    g1 = jax.grad(lambda p: via_logits(p)[0])(params)
    g2 = jax.grad(lambda p: chunked(p)[0])(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_the_loss_gradient_never_holds_the_whole_batch_logits():
    # Each slice's gradients are formed with its logits, so the compiled gradient holds one
    # slice's [B, chunk, V] logits at a time: no [B, L, V] buffer, nor a stack of slices.
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=16)  # 32 tokens, slices of 8
    grad = jax.jit(jax.grad(lambda p: llava.loss_terms(p, cfg, batch, chunk=8)[0]))
    hlo = grad.lower(params).compile().as_text()
    vocab = cfg.text.vocab_size
    logit_like = re.findall(rf"f32\[(\d+(?:,\d+)+),{vocab}\]", hlo)  # [..., V], rank >= 3
    sizes = {int(np.prod([int(d) for d in dims.split(",")])) for dims in logit_like}
    assert sizes and max(sizes) == 2 * 8, sorted(sizes)


def test_loss_slices_without_a_label_are_skipped_and_change_nothing(highest_precision,
                                                                    monkeypatch):
    # Both rows hold an image (16 tokens after BOS) and 8 unlabelled tokens at the end, so of
    # four 8-position slices only the third has a counted target in some row: the vocabulary
    # projection must run once, and the loss and every gradient stay those of whole logits.
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=16)  # 32 tokens
    n = cfg.num_image_tokens
    batch["input_ids"][:, 1:1 + n] = cfg.image_token_id
    batch["pixel_values"][:] = np.random.default_rng(1).standard_normal(
        batch["pixel_values"].shape)
    batch["attention_mask"][:] = 1
    batch["labels"] = np.where(batch["input_ids"] == cfg.image_token_id, -100,
                               batch["input_ids"])
    batch["labels"][:, -8:] = -100

    def via_logits(p):
        logits, _ = llava.forward(p, cfg, batch)
        return llava.token_losses(logits, batch["labels"])

    def sliced(p):
        return llava.loss_terms(p, cfg, batch, chunk=8)

    runs = []
    real = cross_entropy.summed_losses

    def counting(logits, targets):
        jax.debug.callback(lambda: runs.append(1))
        return real(logits, targets)

    monkeypatch.setattr(cross_entropy, "summed_losses", counting)
    got, got_n = jax.jit(sliced)(params)
    jax.effects_barrier()
    assert len(runs) == 1
    jax.jit(jax.grad(lambda p: sliced(p)[0]))(params)
    jax.effects_barrier()
    assert len(runs) == 2  # the gradient's pass, too, projects the one labelled slice only
    monkeypatch.setattr(cross_entropy, "summed_losses", real)

    want, want_n = via_logits(params)
    assert int(got_n) == int(want_n) == 2 * 7  # positions 16..22 predict labels 17..23
    np.testing.assert_allclose(got, want, rtol=1e-6)
    g1 = jax.grad(lambda p: via_logits(p)[0])(params)
    g2 = jax.grad(lambda p: sliced(p)[0])(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_sliced_mlp_loss_and_gradient_equal_whole(highest_precision, monkeypatch):
    # The MLP slices the sequence only above a memory budget; forcing the budget to zero on a
    # tiny model must change neither the loss nor any gradient.
    from sgv_jax.models import llama

    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=16)  # 16 image + 16 text = 32 tokens

    def loss(p):
        total, count = llava.loss_terms(p, cfg, batch, remat="full")
        return total / count

    want, g_want = jax.value_and_grad(loss)(params)
    monkeypatch.setattr(llama, "MLP_BUDGET_BYTES", 0)
    monkeypatch.setattr(llama, "MLP_CHUNK", 8)
    jaxpr = str(jax.make_jaxpr(loss)(params))
    assert "while" in jaxpr or "scan" in jaxpr  # the sliced path ran
    got, g_got = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_offloaded_layer_inputs_give_the_same_loss_and_gradient(highest_precision):
    # remat=full_offload keeps each scanned layer's input in pinned host memory instead of on
    # the device (XLA:CPU has that memory kind too); the numbers must be those of remat=full.
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=16)

    def loss(p, remat):
        total, count = llava.loss_terms(p, cfg, batch, remat=remat)
        return total / count

    want, g_want = jax.jit(jax.value_and_grad(lambda p: loss(p, "full")))(params)
    got, g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, "full_offload")))(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_layers_on_cpu_are_unrolled_so_no_stacked_residual_is_rewritten(dtype):
    """XLA:CPU has no bf16 dynamic update: a scan over bf16 layers saved its residuals by
    converting each stacked [L, ...] buffer to fp32, updating it and converting it back at every
    layer (bench_train.py's bf16 step 1.97 s; unrolled 1.61 s). In bf16 on CPU the layers are
    unrolled (nn.scan_layers) and the gradient program writes no bf16 stacked buffer through
    fp32; fp32 keeps one loop over the layers. Both give the fp32 loss up to their rounding."""
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(0))
    batch = demo_batch(cfg, batch=2, text=16)

    def loss(p, compute_dtype):
        total, count = llava.loss_terms(p, cfg, batch, dtype=jnp.dtype(compute_dtype))
        return total / count

    compiled = jax.jit(jax.value_and_grad(lambda p: loss(p, dtype))).lower(params).compile()
    text = compiled.as_text()
    stacked = re.findall(rf"= bf16\[{cfg.text.num_layers},[\d,]+\]\S* fusion\(.*calls=%(\S+)",
                         text)
    bodies = [text[text.index(f"%{name} "):].split("\n}\n")[0] for name in stacked]
    assert not [b for b in bodies if "dynamic-update-slice" in b and "convert(" in b]
    assert (" while(" in text) == (dtype == "float32")
    value, _ = compiled(params)
    want = jax.jit(lambda p: loss(p, "float32"))(params)
    np.testing.assert_allclose(value, want, rtol=2e-2 if dtype == "bfloat16" else 1e-6)
