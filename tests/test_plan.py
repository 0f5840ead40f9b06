"""The planner compiles the real train step on abstract shapes and reports what it finds."""

from sgv_jax import plan
from sgv_jax.models.config import get_preset
from sgv_jax.train.config_file import load_config_file


def test_plan_reports_memory_and_flops_for_a_sharded_step():
    config = load_config_file("configs/pretrain.py:demo")
    with config.unlocked():
        config.mesh.fsdp, config.per_device_batch_size, config.global_batch_size = 2, 4, 16
        config.data.max_length = 32
    cfg = get_preset("demo")
    result, compiled = plan.plan(config, cfg)
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
