"""The tiny model on an 8-device simulated mesh (data=2, fsdp=2, tensor=2)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgv_jax import sharding
from sgv_jax.models import get_preset, llava
from sgv_jax.models.storage import flatten


def demo_batch(cfg, batch=4, text=6, seed=0):
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    ids = rng.integers(3, cfg.text.vocab_size, size=(batch, n + text)).astype(np.int32)
    ids[:, 0] = 1
    ids[::2, 1:1 + n] = cfg.image_token_id  # even samples have an image, odd ones are text-only
    mask = np.ones_like(ids)
    mask[1, -2:] = 0
    size = cfg.vision.image_size
    pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    pixels[1::2] = 0
    labels = np.where(ids == cfg.image_token_id, -100, ids)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "labels": labels}


def test_eight_device_mesh_matches_one_device_and_shards_every_param(highest_precision):
    assert len(jax.devices()) == 8
    cfg = get_preset("tiny_even")
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = llava.init(cfg, jax.random.key(0), mesh)

    # Every parameter carries the sharding its logical names ask for (tiny_even's sizes divide
    # the mesh; a size that does not is refused, never silently replicated).
    flat_params, flat_axes = flatten(params), flatten(llava.param_axes(cfg))
    for path, value in flat_params.items():
        want = P(*[sharding.RULES[a] if a else None for a in flat_axes[path]])
        assert value.sharding == NamedSharding(mesh, want), path
    kernel = flat_params["language_model/layers/mlp/up_proj/kernel"]
    assert kernel.addressable_shards[0].data.shape == (cfg.text.num_layers,
                                                       cfg.text.hidden_size // 2,
                                                       cfg.text.intermediate_size // 2)

    batch = demo_batch(cfg)
    single = jax.device_put(jax.tree.map(np.asarray, params), jax.devices()[0])
    want_logits, _ = jax.jit(lambda p, b: llava.forward(p, cfg, b))(single, batch)

    batch_shardings = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    sharded_batch = jax.device_put(batch, batch_shardings)
    with jax.set_mesh(mesh):
        got_logits, _ = jax.jit(lambda p, b: llava.forward(p, cfg, b))(params, sharded_batch)
    assert got_logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), atol=1e-5, rtol=0)


def test_bf16_forward_stays_close_to_fp32():
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(1))
    batch = demo_batch(cfg, batch=2)
    fp32, _ = llava.forward(params, cfg, batch, jnp.float32)
    bf16, _ = llava.forward(params, cfg, batch, jnp.bfloat16)
    assert bf16.dtype == jnp.float32  # logits are produced in fp32 for the loss
    real = batch["attention_mask"].astype(bool)
    err = np.abs(np.asarray(bf16) - np.asarray(fp32))[real]
    scale = np.abs(np.asarray(fp32))[real].max()
    # bf16 keeps 8 mantissa bits (~4e-3 relative); two tiny layers stay within 2% of the range.
    assert err.max() <= 0.02 * scale, (err.max(), scale)
    loss32 = llava.loss(params, cfg, batch, jnp.float32)
    loss16 = llava.loss(params, cfg, batch, jnp.bfloat16)
    assert abs(float(loss16) - float(loss32)) <= 0.01 * float(loss32)
