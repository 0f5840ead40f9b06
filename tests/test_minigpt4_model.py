"""MiniGPT-4 presets and model plumbing: parameter counts equal the reference's (MINIGPT4.md §6)
from abstract shapes, the config round-trips through its dict, the builders dispatch on it, and
the parameters shard by their logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax import sharding
from sgv_jax.models import llava
from sgv_jax.models.config import MiniGPT4Config, VLMConfig, get_preset, validate
from sgv_jax.models.storage import storage_shapes


def count(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name, total, parts", [
    # vision_tower holds ln_vision (985,894,528 + 2,816); qformer its 32 query tokens
    # (105,137,664 + 24,576); projector is llama_proj.
    ("minigpt4_7b", 7_832_633_216, {"vision_tower": 985_897_344, "qformer": 105_162_240,
                                    "projector": 3_149_824, "language_model": 6_738_423_808}),
    ("minigpt4_13b", 14_110_871_424, {"projector": 3_937_280, "language_model": 13_015_874_560}),
])
def test_parameter_counts_equal_the_reference(name, total, parts):
    params = llava.abstract_params(get_preset(name))
    assert count(params) == total
    for module, n in parts.items():
        assert count(params[module]) == n, module


def test_config_dict_round_trip_dispatches_on_family():
    cfg = get_preset("minigpt4_tiny")
    back = VLMConfig.from_dict(cfg.to_dict())
    assert isinstance(back, MiniGPT4Config) and back == cfg
    validate(cfg)
    with pytest.raises(ValueError, match="qformer.hidden_size"):
        validate(cfg.replace(qformer=cfg.qformer.__class__(hidden_size=35, num_heads=3)))


def test_storage_paths_are_per_block():
    shapes = storage_shapes(get_preset("minigpt4_tiny"))
    assert shapes["vision_tower/layers/2/self_attn/qkv/kernel"] == (24, 72)
    assert shapes["qformer/layer_0/cross_attn/key/kernel"] == (24, 36)
    assert "qformer/layer_1/cross_attn/key/kernel" not in shapes  # cross-attention every 2nd
    assert shapes["qformer/embeddings/query_tokens"] == (5, 36)
    assert shapes["projector/linear_1/kernel"] == (36, 40)


@pytest.mark.slow
def test_sgv_checkpoint_round_trip(tmp_path):
    from sgv_jax.checkpoint_sgv import load_sgv, save_sgv

    cfg = get_preset("minigpt4_tiny")
    params = llava.init(cfg, jax.random.key(0))
    save_sgv(str(tmp_path / "ck"), cfg, params)
    cfg2, params2 = load_sgv(str(tmp_path / "ck"))
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_init_and_forward():
    cfg = get_preset("minigpt4_tiny")
    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    params = llava.init(cfg, jax.random.key(0), mesh)
    kernel = params["qformer"]["layer_0"]["cross_attn"]["key"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    ids = np.full((2, 12), 5, np.int32)
    ids[:, 2:2 + cfg.num_image_tokens] = -200
    batch = {"input_ids": jnp.asarray(ids), "pixel_values": jnp.zeros((2, 21, 21, 3))}
    logits, out = llava.forward(params, cfg, batch)
    assert logits.shape == (2, 12, cfg.text.vocab_size)
    assert out["img/projected"].shape == (2, cfg.num_image_tokens, cfg.text.hidden_size)
