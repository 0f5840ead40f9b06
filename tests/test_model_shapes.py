"""Full-size presets without memory (NNX abstract shapes), and the logical-axis rule table."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from sgv_jax import sharding
from sgv_jax.models import build_model, get_preset, llava
from sgv_jax.models.config import PRESETS, validate
from sgv_jax.models.storage import flatten, storage_shapes


def count(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def abstract_model(name):
    """The NNX module of a preset from `nnx.eval_shape`: no mesh, nothing allocated."""
    return nnx.eval_shape(lambda: build_model(get_preset(name), nnx.Rngs(0)))


def test_sharegpt4v_7b_has_exact_reference_parameter_count():
    model = abstract_model("sharegpt4v_7b")
    assert count(nnx.state(model, nnx.Param)) == 7_062_902_784  # REFERENCE §1.5
    assert count(nnx.state(model.vision_tower, nnx.Param)) == 303_507_456
    assert count(nnx.state(model.projector, nnx.Param)) == 20_979_712
    assert count(nnx.state(model.language_model, nnx.Param)) == 6_738_415_616


def test_llava15_13b_has_its_own_parameter_count():
    # CLIP-L 303,507,456 + projector 1024x5120+5120 + 5120² + 5120 + LLaMA-2-13B 13,015,864,320.
    model = abstract_model("llava15_13b")
    assert count(nnx.state(model.language_model, nnx.Param)) == 13_015_864_320
    assert count(nnx.state(model, nnx.Param)) == 303_507_456 + 31_467_520 + 13_015_864_320


def test_every_param_names_its_logical_axes_and_stacked_ones_carry_layers():
    state = nnx.state(abstract_model("sharegpt4v_7b"), nnx.Param)
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves and all(isinstance(v, nnx.Param) for v in leaves)
    for path, axes in flatten(llava.param_axes(get_preset("sharegpt4v_7b"))).items():
        shape = flatten(llava.abstract_params(get_preset("sharegpt4v_7b")))[path].shape
        assert len(axes) == len(shape), path
        assert (axes[0] == "layers") == ("/layers/" in path), (path, axes)


def test_layers_are_stacked_and_the_tower_keeps_every_block():
    params = llava.abstract_params(get_preset("sharegpt4v_7b"))
    assert params["vision_tower"]["layers"]["mlp"]["fc1"]["kernel"].shape == (24, 1024, 4096)
    assert params["vision_tower"]["post_layernorm"]["scale"].shape == (1024,)
    assert params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (32, 4096, 4096)
    assert get_preset("sharegpt4v_7b").vision_layers_used == 23  # block 23 is not computed


def test_storage_key_space_is_per_block():
    shapes = storage_shapes(get_preset("llava15_13b"))
    assert shapes["language_model/layers/39/self_attn/q_proj/kernel"] == (5120, 5120)
    assert shapes["vision_tower/layers/23/mlp/fc1/kernel"] == (1024, 4096)
    assert "language_model/layers/40/self_attn/q_proj/kernel" not in shapes


def test_forward_does_not_compute_unused_clip_blocks():
    cfg = get_preset("tiny")
    params = llava.init(cfg, jax.random.key(0))
    pixels = np.random.default_rng(0).standard_normal((1, 21, 21, 3)).astype(np.float32)
    feats = llava.select_vision_features(params, cfg, pixels)
    # Perturbing the last block and post_layernorm must not change layer -2 features.
    vt = params["vision_tower"]
    vt["layers"] = jax.tree.map(lambda x: x.at[-1].add(1.0), vt["layers"])
    vt["post_layernorm"]["scale"] += 1.0
    np.testing.assert_array_equal(feats, llava.select_vision_features(params, cfg, pixels))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    validate(PRESETS[name])


def test_llava_v1_uses_linear_projector_and_224px():
    params = llava.abstract_params(get_preset("llava_v1_7b"))
    assert set(params["projector"]) == {"linear_1"}
    assert get_preset("llava_v1_7b").num_image_tokens == 256


def test_every_logical_name_has_a_rule_and_no_spec_repeats_a_mesh_axis():
    for name in PRESETS:
        axes = jax.tree.leaves(llava.param_axes(PRESETS[name]),
                               is_leaf=lambda x: isinstance(x, tuple))
        for spec_axes in axes:
            mesh_axes = [sharding.RULES[a] for a in spec_axes if a is not None]  # KeyError if unknown
            flat = [m for a in mesh_axes if a for m in (a if isinstance(a, tuple) else (a,))]
            assert len(flat) == len(set(flat)), f"{spec_axes} repeats a mesh axis"


def test_unknown_logical_name_is_an_error():
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("embed", "not_a_name"))


def abstract_mesh(shape):
    return AbstractMesh(shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("mesh_shape", [(1, 16, 1), (1, 8, 2), (2, 4, 2), (1, 32, 8)])
def test_7b_and_13b_presets_shard_on_real_meshes(mesh_shape):
    for name in ("sharegpt4v_7b", "llava15_13b"):
        shardings = llava.param_shardings(get_preset(name), abstract_mesh(mesh_shape))
        kernel = shardings["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
        assert tuple(kernel.spec) == (None, "fsdp", "tensor")


def test_tensor_parallelism_refuses_to_split_heads():
    # 13B's 40 heads x 128 = 5120 columns divide 16, but 40 heads do not: refused by name.
    with pytest.raises(ValueError, match=r"text.num_heads = 40 is not divisible by mesh axis "
                                         r"tensor=16.*whole heads"):
        llava.param_shardings(get_preset("llava15_13b"), abstract_mesh((1, 1, 16)))


def test_a_dimension_the_mesh_cannot_divide_is_refused_by_name():
    # tiny's hidden size 40 on fsdp=3: the error names the parameter, dimension and mesh axis.
    with pytest.raises(ValueError, match=r"language_model/embed_tokens/embedding: dimension 1 "
                                         r"\(embed, size 40\) is not divisible by mesh axis fsdp=3"):
        llava.param_shardings(get_preset("tiny"), abstract_mesh((1, 3, 1)))
