"""The sgv checkpoint API: full trees (sharded on 8 devices), streamed groups, clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sgv_jax.checkpoint_sgv import (
    CheckpointError,
    iter_sgv_groups,
    load_sgv,
    read_sgv_config,
    save_sgv,
)
from sgv_jax.models import llava
from sgv_jax.models.config import get_preset
from sgv_jax.models.storage import flatten, group_of, unflatten, unstack

CFG = get_preset("tiny_even")


@pytest.fixture(scope="module")
def params():
    return llava.init(CFG, jax.random.PRNGKey(0))


def row_sharded(tree, mesh):
    """Shard every leaf's last axis over all devices when it divides, else replicate (the
    stacked layers axis in front stays whole, as the model's rules keep it)."""
    n = mesh.size

    def spec(x):
        split = PartitionSpec(*([None] * (x.ndim - 1)), "x")
        return NamedSharding(mesh, split if x.shape[-1] % n == 0 else PartitionSpec())

    return jax.tree.map(spec, tree)


def test_sharded_tree_saves_and_restores_into_the_requested_shardings(params, tmp_path):
    mesh = jax.make_mesh((8,), ("x",))
    shardings = row_sharded(params, mesh)
    sharded = jax.device_put(params, shardings)
    path = save_sgv(str(tmp_path / "ckpt"), CFG, sharded, extra={"note": "test"})
    cfg, restored = load_sgv(path, shardings=shardings)
    assert cfg == CFG
    flat_restored, flat_shardings = flatten(restored), flatten(shardings)
    assert flat_restored.keys() == flatten(params).keys()
    for p, a in flatten(params).items():
        assert flat_restored[p].sharding == flat_shardings[p], p
        assert np.array_equal(np.asarray(a), np.asarray(flat_restored[p])), p
    meta = read_sgv_config(path)
    assert meta["note"] == "test" and meta["dtype"] == "float32"
    assert "language_model.layers.1" in meta["groups"]
    assert not os.path.exists(path + ".partial")


def test_dtype_on_save_and_on_load(params, tmp_path):
    path = save_sgv(str(tmp_path / "bf16"), CFG, params, dtype=jnp.bfloat16)
    assert read_sgv_config(path)["dtype"] == "bfloat16"
    _, back = load_sgv(path, dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(back)} == {jnp.dtype(jnp.float32)}


def test_streamed_groups_round_trip(params, tmp_path):
    flat = {p: np.asarray(v) for p, v in unstack(params).items()}  # per-block storage paths
    groups = {}
    for p, v in flat.items():
        groups.setdefault(group_of(p), {})[p] = v
    path = save_sgv(str(tmp_path / "ckpt"), CFG, iter(groups.items()))
    again = {p: v for _, g in iter_sgv_groups(path) for p, v in g.items()}
    assert sorted(again) == sorted(flat)
    assert all(np.array_equal(again[p], flat[p]) for p in flat)


def test_missing_parameter_is_named_and_nothing_valid_is_left(params, tmp_path):
    flat = flatten(params)
    del flat["language_model/norm/scale"]
    dst = str(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="language_model/norm/scale"):
        save_sgv(dst, CFG, unflatten(flat))
    assert not os.path.exists(dst)
    with pytest.raises(FileNotFoundError, match="unfinished conversion"):
        load_sgv(dst + ".partial")


def test_wrong_shape_is_named_with_expected_and_found(params, tmp_path):
    flat = flatten(params)
    flat["projector/linear_1/bias"] = jnp.zeros(3)
    with pytest.raises(CheckpointError, match=r"projector/linear_1/bias: expected shape \(48,\), "
                                              r"found \(3,\)"):
        save_sgv(str(tmp_path / "ckpt"), CFG, unflatten(flat))


def test_existing_destination_is_not_overwritten(params, tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError, match="ckpt already exists"):
        save_sgv(str(tmp_path / "ckpt"), CFG, params)


def test_hf_directory_is_not_an_sgv_checkpoint(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "llava"}, f)
    with pytest.raises(ValueError, match=r"config.json: not an sgv checkpoint"):
        load_sgv(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not an sgv checkpoint"):
        read_sgv_config(str(tmp_path / "nothing"))
