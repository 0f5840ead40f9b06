"""Each stage trains exactly the set its config names (REFERENCE §4.1–4.3)."""

import re

import jax
import pytest

from sgv_jax.models import get_preset, llava
from sgv_jax.models.params import abstract_params, flatten
from sgv_jax.train import optim
from tests.train_helpers import load_config


def trainable_paths(config_name, variant=""):
    config = load_config(config_name, variant)
    abstract = abstract_params(llava.param_specs(get_preset(config.model)))
    train, frozen = optim.split_trainable(abstract, config.trainable_modules,
                                          config.tune_vit_from_layer)
    t, f = set(flatten(train)), set(flatten(frozen))
    assert t.isdisjoint(f) and t | f == set(flatten(abstract))
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
    abstract = abstract_params(llava.param_specs(get_preset(config.model)))
    train, _ = optim.split_trainable(abstract, config.trainable_modules, config.tune_vit_from_layer)
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
        optim.split_trainable({"a": 1}, ("vision",), -1)


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
