"""LoRA on the NNX model: counts from abstract shapes, the trainable split, training with the
base frozen, exact resume, a small step checkpoint, and generation from an adapter checkpoint."""

import os

import jax
import numpy as np
import pytest

from sgv_jax.checkpoint_sgv import load_sgv
from sgv_jax.models import llava, lora
from sgv_jax.models.config import LoraConfig, get_preset
from sgv_jax.models.storage import flatten
from sgv_jax.train import optim
from sgv_jax.train.loop import train
from sgv_jax.train.metrics import read_metrics
from tests.train_helpers import load_config

LLAVA15_LORA = LoraConfig(rank=128, alpha=256.0, dropout=0.05)


@pytest.mark.parametrize("preset,adapters,projector", [
    ("llava15_7b", 319_815_680, 20_979_712), ("llava15_13b", 500_695_040, 31_467_520)])
def test_trainable_counts_match_llava_lora_md(preset, adapters, projector):
    # LORA.md §1.4, from abstract shapes only.
    cfg = get_preset(preset).replace(lora=LLAVA15_LORA)
    trainable, _ = optim.split_trainable(llava.abstract_params(cfg),
                                         optim.TrainableSet(("projector", "adapters")))
    sizes = {p: int(np.prod(v.shape)) for p, v in flatten(trainable).items()}
    assert sum(v for p, v in sizes.items() if lora.is_adapter_path(p)) == adapters
    assert sum(v for p, v in sizes.items() if p.startswith("projector/")) == projector
    assert lora.adapter_count(cfg) == adapters


def test_adapters_start_as_peft_does_and_change_nothing():
    cfg = get_preset("tiny").replace(lora=LoraConfig(rank=3, alpha=6.0))
    params = llava.init(cfg, jax.random.PRNGKey(0))
    flat = flatten(params)
    a = flat["language_model/layers/mlp/down_proj/lora_a"]
    assert a.shape == (2, 88, 3)  # [L, in, r]
    bound = 1 / np.sqrt(88)  # PEFT's kaiming_uniform(a=√5): U(±1/√in) (LORA.md §2.2)
    assert 0.8 * bound < float(abs(a).max()) <= bound
    assert not np.any(flat["language_model/layers/mlp/down_proj/lora_b"])
    assert llava.param_axes(cfg)["language_model"]["layers"]["mlp"]["down_proj"]["lora_a"] == (
        "layers", "mlp", "lora_rank")
    merged = lora.merged(params, cfg)
    assert "lora_a" not in merged["language_model"]["layers"]["mlp"]["down_proj"]


def test_merge_equals_the_adapter_forward():
    cfg = get_preset("tiny").replace(lora=LoraConfig(rank=3, alpha=6.0, dropout=0.0))
    params = llava.init(cfg, jax.random.PRNGKey(0))
    flat = flatten(params)
    for p in flat:
        if p.endswith("lora_b"):
            flat[p] = jax.random.normal(jax.random.PRNGKey(1), flat[p].shape) * 0.1
    from sgv_jax.models.storage import unflatten

    params = unflatten(flat)
    ids = np.arange(1, 25, dtype=np.int32).reshape(2, 12) % 90
    batch = {"input_ids": ids}
    with jax.default_matmul_precision("highest"):
        adapted, _ = llava.forward(params, cfg, batch)
        plain, _ = llava.forward(lora.merged(params, cfg), cfg.replace(lora=None), batch)
    np.testing.assert_allclose(adapted, plain, atol=1e-5, rtol=0)


# LLaVA's LoRA set: the :demo variant also trains lm_head (BUILD.md §9), the recipe does not.
SMALL = {"global_batch_size": 8, "per_device_batch_size": 8, "log_every": 1,
         "checkpoint_every": 3, "eval_every": 1000, "init_from": "",
         "trainable_modules": ("projector", "adapters")}


def lora_config(**overrides):
    return load_config("llava15_finetune_lora", **{**SMALL, **overrides})


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.mark.slow
def test_lora_run_trains_adapters_only_resumes_exactly_and_checkpoints_small(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(lora_config(max_steps=6), straight)
    train(lora_config(max_steps=3), resumed)
    train(lora_config(max_steps=6), resumed)
    want, got = losses(straight), losses(resumed)
    assert [want[s] for s in range(1, 7)] == [got[s] for s in range(1, 7)]  # bitwise, dropout on

    cfg, final = load_sgv(os.path.join(straight, "sgv"))
    assert cfg.lora is not None and cfg.lora.rank == 16
    init = llava.init(cfg, jax.random.PRNGKey(0))  # the run's random init (seed 0)
    changed = {p for p, v in flatten(final).items()
               if not np.array_equal(np.asarray(v), np.asarray(flatten(init)[p]))}
    assert changed and all(lora.is_adapter_path(p) or p.startswith("projector/") for p in changed)
    assert any(p.endswith("lora_b") for p in changed)

    def size(folder):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)

    step_ckpt = os.path.join(straight, "checkpoints", "6")
    frozen = os.path.join(straight, "checkpoints", "frozen")
    # params + two Adam moments of the adapters and projector (fp32), plus orbax metadata; the
    # frozen base is written once, outside the step checkpoints.
    trained = sum(np.asarray(v).nbytes for p, v in flatten(final).items()
                  if lora.is_adapter_path(p) or p.startswith("projector/"))
    assert 2 * trained < size(step_ckpt) < 3 * trained + 200_000, (size(step_ckpt), trained)
    assert size(step_ckpt) < 4 << 20 and os.path.isdir(frozen)


def test_generator_runs_a_checkpoint_with_adapters(tmp_path):
    from sgv_jax.checkpoint_sgv import save_sgv
    from sgv_jax.generation import decode

    cfg = get_preset("tiny").replace(lora=LoraConfig(rank=3, alpha=6.0))
    params = llava.init(cfg, jax.random.PRNGKey(0))
    save_sgv(str(tmp_path / "ck"), cfg, params)
    cfg2, params2 = load_sgv(str(tmp_path / "ck"))
    assert cfg2 == cfg
    assert decode is not None and flatten(params2).keys() == flatten(params).keys()
