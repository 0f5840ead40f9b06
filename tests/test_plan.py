"""The planner compiles the real train step on abstract shapes and reports what it finds."""

import dataclasses

from sgv_jax import plan
from sgv_jax.models.config import get_preset
from sgv_jax.train.config_file import load_config_file


def test_plan_reports_memory_and_flops_for_a_sharded_step():
    config = load_config_file("configs/pretrain.py:demo")
    with config.unlocked():
        config.mesh.fsdp, config.per_device_batch_size, config.global_batch_size = 2, 4, 16
        config.data.max_length = 32
    cfg = get_preset("demo")
    result, _ = plan.plan(config, cfg)
    assert result.devices == 2 and result.accum_steps == 2 and result.micro_batch == 8
    # fp32 master weights split over fsdp=2: half the parameter bytes per device (up to
    # the few replicated norm vectors).
    full = result.params * 4
    assert full / 2 <= result.param_bytes <= full / 2 * 1.05
    assert result.opt_bytes >= 2 * result.grad_bytes * 0.99  # Adam mu and nu
    # Model FLOPs lie between 2·N·tokens (all frozen) and 6·N·tokens (all trained).
    tokens = config.global_batch_size * config.data.max_length
    assert 2 * result.params * tokens * 0.5 < result.analytic_flops < 6 * result.params * tokens * 2
    assert result.compiled_flops > 0
    text = plan.report(result, "v5p", 0.4)
    assert text.splitlines()[-1].startswith("per-device total: ")


def test_a_cpu_compiled_plan_gives_no_fit_verdict_and_names_make_libtpu():
    """XLA:CPU ignores remat: its memory is reported as overstated, never as fits / NO."""
    result = plan.Plan(devices=4, mesh={"data": 1, "fsdp": 4, "tensor": 1}, accum_steps=1,
                       micro_batch=16, tokens_per_step=4096, params=7_000_000_000,
                       trainable_params=7_000_000_000, param_bytes=7 * 2**30, opt_bytes=14 * 2**30,
                       grad_bytes=7 * 2**30, temp_bytes=400 * 2**30, total_bytes=421 * 2**30,
                       compiled_flops=1e15, compiled_for_tpu=False, analytic_flops=4e15)
    text = plan.report(result, "v4", 0.4)
    assert "not judged" in text and "ignores remat" in text and "`make libtpu`" in text
    assert ": NO" not in text and ": yes" not in text
    fitting = dataclasses.replace(result, compiled_for_tpu=True, temp_bytes=2 * 2**30,
                                  total_bytes=23 * 2**30)
    assert plan.report(fitting, "v4", 0.4).count("fits v4: yes") == 1
    # The TPU compiler checks temporaries alone; arguments + temporaries over HBM are a no.
    over = dataclasses.replace(fitting, total_bytes=33 * 2**30)
    assert "fits v4: NO" in plan.report(over, "v4", 0.4)


def test_a_lora_config_is_planned_with_its_adapters_and_adam_only_for_them():
    from sgv_jax.models import llava, lora
    from sgv_jax.models.storage import flatten

    config = load_config_file("configs/llava15_finetune_lora.py:demo")
    with config.unlocked():
        config.per_device_batch_size = config.global_batch_size = 4
        config.data.max_length = 32
        config.trainable_modules = ("projector", "adapters")  # the recipe's set (the demo adds lm_head)
    cfg = plan.planned_model(config)
    assert cfg.lora is not None and cfg.lora.rank == config.lora.rank
    result, _ = plan.plan(config, cfg)
    projector = sum(v.size for p, v in flatten(llava.abstract_params(cfg)).items()
                    if p.startswith("projector/"))
    assert result.trainable_params == lora.adapter_count(cfg) + projector
    # fp32 Adam mu and nu of the trained part only (one device), plus the groups' step counts.
    assert 0 <= result.opt_bytes - 2 * 4 * result.trainable_params <= 64


def test_a_refused_plan_says_whether_any_batch_could_fit():
    """The TPU compiler's refusal only gives a total; the report adds what the run holds
    between steps, so a user sees when no batch size can help (7B LoRA r128 on one v5e)."""
    gib = 2**30
    held = plan.StateBytes(trainable=int(1.36e9), frozen=int(14.08e9), optimizer=int(2.73e9))
    refused = plan.DoesNotFit(22.11 * gib, 15.75 * gib, "RESOURCE_EXHAUSTED", held)
    text = plan.refusal_report(refused, "v5e")
    assert "18.17 GB" in text and "no batch size fits" in text and "--mesh fsdp=N" in text
    small = plan.StateBytes(trainable=int(0.2e9), frozen=int(14.08e9), optimizer=int(0.4e9))
    text = plan.refusal_report(plan.DoesNotFit(17.0 * gib, 15.75 * gib, "", small), "v5e")
    assert "no batch size fits" not in text and "GB are left for activations" in text
