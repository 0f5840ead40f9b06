"""Random init draws each parameter from a key folded from its storage path (llava._draw), so a
parameter's value depends on its name and the seed only."""

import dataclasses
import zlib

import jax
import numpy as np

from sgv_jax.models import get_preset, llava, storage
from sgv_jax.models.config import LoraConfig
from sgv_jax.models.nn import NORMAL


def test_a_stacked_block_is_drawn_from_its_own_storage_path():
    cfg = get_preset("tiny_even")
    params = llava.init(cfg, jax.random.key(3))
    name = "language_model/layers/1/mlp/up_proj/kernel"
    key = jax.random.fold_in(jax.random.key(3), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    block = params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"][1]
    # (jitted like init: eager and fused sampling can differ in the last bit)
    np.testing.assert_array_equal(block, jax.jit(lambda k: NORMAL(k, block.shape, np.float32))(key))
    # Blocks differ from one another, and the stack's order is the blocks' order.
    per_block = storage.unstack(params)
    assert not np.array_equal(per_block[name], per_block[name.replace("/1/", "/0/")])


def test_adding_adapters_changes_no_base_weight():
    cfg = get_preset("tiny_even")
    with_lora = dataclasses.replace(cfg, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    base = storage.flatten(llava.init(cfg, jax.random.key(0)))
    adapted = storage.flatten(llava.init(with_lora, jax.random.key(0)))
    assert set(base) < set(adapted)
    for path, value in base.items():
        np.testing.assert_array_equal(adapted[path], value, err_msg=path)
    b = [v for p, v in adapted.items() if p.endswith("lora_b")]
    assert b and all(not np.any(v) for v in b)  # PEFT: B starts at zero
