"""MiniGPT-4 training: the recipes' trainable set, schedule and weight decay (MINIGPT4.md §3.2),
and both :demo stages learning and resuming bit-identically."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax import sharding
from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.models import get_preset
from sgv_jax.models.storage import flatten
from sgv_jax.train import optim
from sgv_jax.train.layout import build_layout
from sgv_jax.train.loop import train
from sgv_jax.train.metrics import read_metrics
from tests.train_helpers import load_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("mg4_runs")


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.mark.parametrize("name", ["minigpt4_pretrain", "minigpt4_finetune"])
def test_recipes_train_llama_proj_only_with_a_frozen_rest_in_compute_dtype(name):
    config = load_config(name, variant="")
    layout = build_layout(config, get_preset(config.model), sharding.make_mesh(1, 1, 1),
                          config.total_steps)
    assert set(layout.abstract_state["params"]) == {"projector"}
    proj = flatten(layout.abstract_state["params"])
    assert {k: v.shape for k, v in proj.items()} == {"projector/linear_1/kernel": (768, 4096),
                                                     "projector/linear_1/bias": (4096,)}
    assert set(layout.abstract_frozen) == {"vision_tower", "qformer", "language_model"}
    assert {x.dtype for x in jax.tree.leaves(layout.abstract_frozen)} == {jnp.dtype(jnp.bfloat16)}


def test_stage1_schedule_is_linear_warmup_cosine():
    c = load_config("minigpt4_pretrain", variant="")
    schedule = optim.optimizer_for(c.optim, c.total_steps)[1]
    lr = lambda t: float(schedule(t))
    assert (c.total_steps, c.global_batch_size) == (20_000, 256)
    np.testing.assert_allclose(lr(0), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(lr(2500), 1e-6 + (1e-4 - 1e-6) / 2, rtol=1e-5)
    # After warmup: the cosine of the global step (a small drop at 5000, as the original).
    np.testing.assert_allclose(lr(5000), 2e-5 * 0.5 * (1 + np.cos(np.pi / 4)) + 8e-5, rtol=1e-5)
    np.testing.assert_allclose(lr(20_000), 8e-5, rtol=1e-5)
    f = load_config("minigpt4_finetune", variant="")
    schedule = optim.optimizer_for(f.optim, f.total_steps)[1]
    assert (f.total_steps, f.global_batch_size) == (1000, 12)
    np.testing.assert_allclose(float(schedule(200)), 2e-5 * 0.5 * (1 + np.cos(np.pi / 5)) + 1e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(float(schedule(1000)), 1e-5, rtol=1e-5)


def test_weight_decay_only_on_matrices():
    c = load_config("minigpt4_pretrain", variant="")
    tx = optim.optimizer_for(c.optim, c.total_steps)[0]
    params = {"projector": {"linear_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}},
              "q": {"layer_norm": {"scale": jnp.ones((2, 2))}}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    lr = 1e-6  # step 0 of the warmup
    np.testing.assert_allclose(updates["projector"]["linear_1"]["kernel"], -lr * 0.05, rtol=1e-5)
    assert not updates["projector"]["linear_1"]["bias"].any()
    assert not updates["q"]["layer_norm"]["scale"].any()


def demo(name, **overrides):
    return load_config(name, **{"log_every": 1, "eval_every": 1000, **overrides})


@pytest.mark.slow
def test_both_demo_stages_learn(runs):
    stage1, stage2 = str(runs / "learn1"), str(runs / "learn2")
    train(demo("minigpt4_pretrain", max_steps=40, checkpoint_every=40), stage1)
    first = losses(stage1)
    assert first[40] < 0.6 * first[1], first
    train(demo("minigpt4_finetune", max_steps=30, checkpoint_every=30,
               init_from=os.path.join(stage1, "sgv")), stage2)
    second = losses(stage2)
    assert second[30] < 0.6 * second[1], second
    # The frozen tower and Q-Former never move; llama_proj does.
    _, before = load_sgv(os.path.join(stage1, "sgv"))
    _, after = load_sgv(os.path.join(stage2, "sgv"))
    before, after = flatten(before), flatten(after)
    for path in before:
        same = np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
        if path.startswith(("vision_tower/", "qformer/")):
            assert same, path
        elif path.startswith("projector/"):
            assert not same, path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minigpt4_pretrain", "minigpt4_finetune"])
def test_demo_stage_resumes_bit_identically(runs, name):
    small = {"global_batch_size": 8, "per_device_batch_size": 8, "checkpoint_every": 2}
    straight, resumed = str(runs / f"{name}_straight"), str(runs / f"{name}_resumed")
    train(demo(name, max_steps=4, **small), straight)
    train(demo(name, max_steps=2, **small), resumed)
    train(demo(name, max_steps=4, **small), resumed)  # same workdir: resumes at step 2
    want, got = losses(straight), losses(resumed)
    assert sorted(want) == list(range(1, 5)) and got == want
    _, a = load_sgv(os.path.join(straight, "sgv"))
    _, b = load_sgv(os.path.join(resumed, "sgv"))
    for path, value in flatten(a).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flatten(b)[path]), err_msg=path)
