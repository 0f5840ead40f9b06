"""Each stage trains exactly the set its config names (REFERENCE §4.1–4.3)."""

import re

import jax
import pytest

from sgv_jax.models import get_preset, llava
from sgv_jax.models.storage import flatten, storage_shapes
from sgv_jax.train import optim
from tests.train_helpers import load_config


def trainable_set(config):
    return optim.TrainableSet(tuple(config.trainable_modules), config.tune_vit_from_layer)


def trainable_paths(config_name, variant=""):
    """Per-block paths of the trainable and frozen halves (a split CLIP stack: blocks < k in
    the frozen half, >= k in the trainable one, renumbered from the boundary)."""
    config = load_config(config_name, variant)
    cfg = get_preset(config.model)
    train, frozen = optim.split_trainable(llava.abstract_params(cfg), trainable_set(config))
    merged = optim.merge(train, frozen) if not trainable_set(config).splits_vit else None
    k = trainable_set(config).vit_boundary(cfg.vision.num_layers)

    def per_block(tree, offset):
        paths = set()
        for path, leaf in flatten(tree).items():
            module, sub, rest = path.split("/", 2)
            if sub != "layers":
                paths.add(path)
                continue
            start = offset if module == "vision_tower" else 0
            paths |= {f"{module}/layers/{start + i}/{rest}" for i in range(leaf.shape[0])}
        return paths

    t, f = per_block(train, k), per_block(frozen, 0)
    assert t.isdisjoint(f) and t | f == set(storage_shapes(cfg))
    if merged is not None:
        assert set(flatten(merged)) == set(flatten(llava.abstract_params(cfg)))
    return t, f


def vit_block(path):
    m = re.match(r"vision_tower/layers/(\d+)/", path)
    return int(m.group(1)) if m else None


def test_sharegpt4v_stage1_trains_vit_blocks_from_12_projector_and_llm():
    train, frozen = trainable_paths("pretrain")
    for p in train | frozen:
        block = vit_block(p)
        should_train = (p.startswith(("projector/", "language_model/"))
                        or (block is not None and block >= 12))
        assert (p in train) == should_train, p
    assert "vision_tower/embeddings/patch_embedding/kernel" in frozen
    assert "vision_tower/pre_layrnorm/scale" in frozen
    assert "vision_tower/post_layernorm/scale" in frozen
    assert "vision_tower/layers/11/mlp/fc1/kernel" in frozen
    assert "vision_tower/layers/12/mlp/fc1/kernel" in train
    assert "language_model/embed_tokens/embedding" in train


def test_sharegpt4v_stage1_trainable_vit_part_matches_reference_count():
    config = load_config("pretrain", "")
    abstract = llava.abstract_params(get_preset(config.model))
    train, _ = optim.split_trainable(abstract, trainable_set(config))
    n = sum(x.size for x in jax.tree.leaves(train["vision_tower"]))
    assert n == 151_154_688  # REFERENCE §1.5


def test_sharegpt4v_stage2_freezes_the_whole_vit():
    train, frozen = trainable_paths("finetune")
    assert all(p.startswith("vision_tower/") for p in frozen)
    assert not any(p.startswith("vision_tower/") for p in train)
    assert any(p.startswith("projector/") for p in train)
    assert any(p.startswith("language_model/") for p in train)


def test_llava15_stage1_trains_only_the_projector():
    train, frozen = trainable_paths("llava15_pretrain")
    assert train and all(p.startswith("projector/") for p in train)


def test_llava15_stage2_trains_projector_and_llm():
    train, _ = trainable_paths("llava15_finetune")
    assert {p.split("/")[0] for p in train} == {"projector", "language_model"}


def test_unknown_module_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        optim.TrainableSet(("vision",), -1)
    with pytest.raises(ValueError, match="unknown"):
        optim.TrainableSet(("lm_head",), -1)  # a sub-module is named by its path


def test_a_sub_module_trains_whole_and_nothing_else_of_its_parent():
    """The LoRA demo trains lm_head beside the adapters (configs/llava15_finetune_lora.py):
    `language_model/lm_head` takes lm_head only, not `language_model/layers/...`."""
    cfg = get_preset("demo")
    params = llava.abstract_params(cfg)
    train, frozen = optim.split_trainable(
        params, optim.TrainableSet(("projector", "language_model/lm_head"), -1))
    assert {p.rsplit("/", 1)[0] for p in flatten(train) if p.startswith("language_model/")} == {
        "language_model/lm_head"}
    assert "language_model/embed_tokens/embedding" in flatten(frozen)
    assert set(flatten(optim.merge(train, frozen))) == set(flatten(params))


def test_split_stack_merges_back_to_the_full_tower():
    cfg = get_preset("tiny")
    params = llava.init(cfg, jax.random.key(0))
    train, frozen = optim.split_trainable(params, optim.TrainableSet(("projector",), 1))
    fc1 = params["vision_tower"]["layers"]["mlp"]["fc1"]["kernel"]
    assert frozen["vision_tower"]["layers"]["mlp"]["fc1"]["kernel"].shape[0] == 1
    assert train["vision_tower"]["layers"]["mlp"]["fc1"]["kernel"].shape[0] == fc1.shape[0] - 1
    merged = optim.merge(train, frozen)
    for path, value in flatten(params).items():
        assert (flatten(merged)[path] == value).all(), path


def test_schedule_matches_hf_cosine_with_warmup():
    import math

    total, warm_ratio, peak = 100, 0.03, 2e-5
    sched = optim.lr_schedule(peak, total, warm_ratio)
    warm = math.ceil(total * warm_ratio)  # 3
    assert float(sched(0)) == 0.0
    assert abs(float(sched(1)) - peak / warm) < 1e-12
    for step in (3, 40, 99):
        progress = (step - warm) / (total - warm)
        want = peak * 0.5 * (1 + math.cos(math.pi * progress))
        assert abs(float(sched(step)) - want) < 1e-11
