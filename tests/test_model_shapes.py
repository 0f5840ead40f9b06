"""Full-size presets without memory, and the logical-axis rule table."""

import jax
import numpy as np
import pytest

from sgv_jax import sharding
from sgv_jax.models import get_preset, llava
from sgv_jax.models.config import PRESETS, validate
from sgv_jax.models.params import (
    abstract_params,
    count_params,
    init_params,
    is_spec,
    logical_axes,
)


def abstract_init(cfg):
    specs = llava.param_specs(cfg)
    return jax.eval_shape(lambda k: init_params(specs, k), jax.random.key(0))


def test_sharegpt4v_7b_has_exact_reference_parameter_count():
    tree = abstract_init(get_preset("sharegpt4v_7b"))  # eval_shape: nothing allocated
    assert count_params(tree) == 7_062_902_784
    assert count_params(tree["vision_tower"]) == 303_507_456
    assert count_params(tree["projector"]) == 20_979_712
    assert count_params(tree["language_model"]) == 6_738_415_616


def test_tree_keeps_all_clip_blocks_and_post_layernorm():
    tree = abstract_init(get_preset("sharegpt4v_7b"))["vision_tower"]
    assert sorted(tree["layers"], key=int) == [str(i) for i in range(24)]
    assert tree["post_layernorm"]["scale"].shape == (1024,)
    assert get_preset("sharegpt4v_7b").vision_layers_used == 23  # block 23 is not computed


def test_forward_does_not_compute_unused_clip_blocks():
    cfg = get_preset("tiny")
    params = jax.jit(lambda k: init_params(llava.param_specs(cfg), k))(jax.random.key(0))
    pixels = np.random.default_rng(0).standard_normal((1, 21, 21, 3)).astype(np.float32)
    feats = llava.select_vision_features(params, cfg, pixels)
    # Perturbing the last block and post_layernorm must not change layer -2 features.
    last = str(cfg.vision.num_layers - 1)
    params["vision_tower"]["layers"][last] = jax.tree.map(lambda x: x + 1.0,
                                                          params["vision_tower"]["layers"][last])
    params["vision_tower"]["post_layernorm"]["scale"] += 1.0
    np.testing.assert_array_equal(feats, llava.select_vision_features(params, cfg, pixels))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    validate(PRESETS[name])


def test_13b_preset_shapes():
    cfg = get_preset("llava15_13b")
    tree = abstract_init(cfg)
    assert tree["language_model"]["layers"]["39"]["self_attn"]["q_proj"]["kernel"].shape == (5120, 5120)
    assert tree["projector"]["linear_1"]["kernel"].shape == (1024, 5120)


def test_llava_v1_uses_linear_projector_and_224px():
    tree = abstract_init(get_preset("llava_v1_7b"))
    assert set(tree["projector"]) == {"linear_1"}
    assert get_preset("llava_v1_7b").num_image_tokens == 256


def test_every_logical_name_has_a_rule_and_no_spec_repeats_a_mesh_axis():
    for name in PRESETS:
        axes = jax.tree.leaves(logical_axes(llava.param_specs(PRESETS[name])),
                               is_leaf=lambda x: isinstance(x, tuple))
        for spec_axes in axes:
            mesh_axes = [sharding.RULES[a] for a in spec_axes if a is not None]  # KeyError if unknown
            flat = [m for a in mesh_axes if a for m in (a if isinstance(a, tuple) else (a,))]
            assert len(flat) == len(set(flat)), f"{spec_axes} repeats a mesh axis"


def test_unknown_logical_name_is_an_error():
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("embed", "not_a_name"))


@pytest.mark.parametrize("mesh_shape", [(1, 16, 1), (1, 8, 2), (2, 4, 2), (1, 32, 8)])
def test_7b_presets_shard_fully_on_real_meshes(mesh_shape):
    from jax.sharding import AbstractMesh, AxisType

    mesh = AbstractMesh(mesh_shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    for name in ("sharegpt4v_7b", "llava15_13b"):
        specs = llava.param_specs(get_preset(name))
        problems = sharding.unsharded_dims(logical_axes(specs), abstract_params(specs), mesh)
        assert problems == [], problems[:5]


def test_param_specs_are_only_param_specs():
    leaves = jax.tree.leaves(llava.param_specs(get_preset("tiny")), is_leaf=is_spec)
    assert leaves and all(is_spec(x) for x in leaves)
