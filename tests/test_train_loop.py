"""The training loop on the demo config: exact resume, frozen params, mesh, learning."""

import os

import jax
import numpy as np
import pytest

from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.models.storage import flatten
from sgv_jax.train.loop import NonFiniteLoss, train
from sgv_jax.train.metrics import read_metrics
from tests.train_helpers import load_config

SMALL = {"global_batch_size": 8, "per_device_batch_size": 8, "log_every": 1,
         "checkpoint_every": 5, "eval_every": 1000}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One folder for all runs of this module, so the demo dataset is generated once."""
    return tmp_path_factory.mktemp("runs")


def demo_config(name="pretrain", **overrides):
    return load_config(name, **{**SMALL, **overrides})


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.mark.slow
def test_resume_continues_bit_identically(runs):
    straight, resumed = str(runs / "straight"), str(runs / "resumed")
    train(demo_config(max_steps=10), straight)
    train(demo_config(max_steps=5), resumed)
    train(demo_config(max_steps=10), resumed)  # same workdir: resumes at step 5
    want, got = losses(straight), losses(resumed)
    assert sorted(want) == list(range(1, 11)) and sorted(got) == list(range(1, 11))
    assert got == want  # exact float equality at every step
    _, a = load_sgv(os.path.join(straight, "sgv"))
    _, b = load_sgv(os.path.join(resumed, "sgv"))
    for path, value in flatten(a).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flatten(b)[path]), err_msg=path)


@pytest.mark.slow
def test_frozen_params_never_change_and_trainable_ones_do(runs):
    workdir = str(runs / "ft")
    pre = str(runs / "pre")
    train(demo_config(max_steps=2), pre)
    config = demo_config("finetune", max_steps=3, init_from=os.path.join(pre, "sgv"))
    config.data.max_length = 96
    train(config, workdir)
    _, before = load_sgv(os.path.join(pre, "sgv"))
    _, after = load_sgv(os.path.join(workdir, "sgv"))
    before, after = flatten(before), flatten(after)
    for path in before:
        same = np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
        if path.startswith("vision_tower/"):
            assert same, f"frozen {path} changed"
        elif path != "language_model/embed_tokens/embedding":
            assert not same, f"trainable {path} did not change"
    # torch's padding_idx row never moves (REFERENCE §1.4); the rest of the table does.
    emb_b, emb_a = (np.asarray(x["language_model/embed_tokens/embedding"]) for x in (before, after))
    np.testing.assert_array_equal(emb_b[0], emb_a[0])
    assert not np.array_equal(emb_b[1:], emb_a[1:])
    # The frozen half is written once per run, not into every step checkpoint.
    checkpoints = os.path.join(workdir, "checkpoints")
    assert os.path.isdir(os.path.join(checkpoints, "frozen"))
    steps = [d for d in os.listdir(checkpoints) if d.isdigit()]
    assert steps and all(os.listdir(os.path.join(checkpoints, d)) == ["state"] or
                         "frozen" not in os.listdir(os.path.join(checkpoints, d)) for d in steps)


def test_optimizer_state_only_covers_trainable_params():
    import optax

    from sgv_jax import sharding
    from sgv_jax.models import get_preset
    from sgv_jax.train.layout import build_layout

    config = load_config("llava15_pretrain")
    layout = build_layout(config, get_preset(config.model), sharding.make_mesh(), 10)
    train_tree = layout.abstract_state["params"]
    assert set(train_tree) == {"projector"}
    moments = optax.tree_map_params(layout.optimizer, lambda p: p,
                                    layout.abstract_state["opt_state"],
                                    transform_non_params=lambda _: None)
    param_leaves = sum(x.size for x in jax.tree.leaves(train_tree))
    moment_leaves = sum(x.size for x in jax.tree.leaves(moments))
    assert moment_leaves == 2 * param_leaves  # Adam mu and nu, projector only
    frozen = layout.abstract_frozen
    assert {"vision_tower", "language_model"} == set(frozen)


@pytest.mark.slow
def test_eight_devices_give_the_single_device_loss(runs):
    one = str(runs / "one")
    eight = str(runs / "eight")
    train(demo_config(max_steps=2), one)  # the demo mesh is one device
    config = demo_config(max_steps=2, per_device_batch_size=2)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    with jax.default_matmul_precision("highest"):
        train(config, eight)
    a, b = losses(one), losses(eight)
    assert a.keys() == b.keys()
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])


def test_gradient_accumulation_matches_one_big_batch(runs):
    """4 micro-batches of 2 = one batch of 8 (global token mean), on the same data."""
    big, accum = str(runs / "big"), str(runs / "accum")
    with jax.default_matmul_precision("highest"):
        train(demo_config(max_steps=2), big)
        train(demo_config(max_steps=2, per_device_batch_size=2), accum)
    a, b = losses(big), losses(accum)
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])


def test_max_steps_stops_without_changing_the_schedule(runs):
    workdir = str(runs / "short")
    train(demo_config(max_steps=3), workdir)
    lrs = [r["lr"] for r in read_metrics(workdir) if "lr" in r]
    config = demo_config()
    total = 3000 * config.num_epochs // 8  # demo records x epochs / global batch
    warm = int(np.ceil(total * config.optim.warmup_ratio))
    assert len(lrs) == 3
    np.testing.assert_allclose(lrs, [config.optim.lr * s / warm for s in range(3)], rtol=1e-6)


def test_non_finite_loss_stops_with_a_clear_message(runs):
    workdir = str(runs / "nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        train(demo_config(max_steps=3, **{"optim.lr": 1e30}), workdir)
    assert not os.path.exists(os.path.join(workdir, "sgv"))


def test_invalid_config_values_fail_clearly(runs):
    with pytest.raises(ValueError, match="data.template"):
        train(demo_config(**{"data.template": "v2"}), str(runs / "bad"))
    with pytest.raises(ValueError, match="not a multiple"):
        train(demo_config(global_batch_size=12), str(runs / "bad2"))


def test_short_demo_loss_goes_down(runs):
    workdir = str(runs / "learn")
    train(demo_config(max_steps=25, log_every=5, global_batch_size=16, per_device_batch_size=16,
                      **{"optim.lr": 3e-3}), workdir)
    curve = losses(workdir)
    assert curve[25] < 0.6 * curve[5], curve


def test_the_cpu_train_step_gives_ynnpack_its_dots_only():
    # XLA:CPU's default also hands reductions (the softmax's max and sum) to YNNPACK, which ran
    # bench_train.py's step 10% slower (xla_cpu.LARGE_DOTS). The trainer's step keeps
    # YNNPACK's dot fusions and leaves every reduction to XLA.
    import re

    from sgv_jax import sharding
    from sgv_jax.models import get_preset
    from sgv_jax.train.layout import build_layout

    config = load_config("llava15_pretrain")
    layout = build_layout(config, get_preset(config.model), sharding.make_mesh(), 10)
    batch = layout.abstract_batch()

    def ynn_ops(step) -> set[str]:
        text = step.lower(layout.abstract_state, layout.abstract_frozen, batch).compile().as_text()
        return set(re.findall(r'ynn_fusion[.\d]* = .*?op_name="[^"]*/(\w+)"', text))

    assert ynn_ops(layout.train_step) == {"dot_general"}
    # Without the option this XLA hands it reductions too (if it stops, the option can go).
    assert ynn_ops(jax.jit(layout.train_step.__wrapped__)) > {"dot_general"}
