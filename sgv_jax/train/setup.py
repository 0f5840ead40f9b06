"""Everything a run needs before its first step: model config, mesh, data, optimizer, and the
initial (or restored) state — resolved from a run config and a workdir."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgv_jax import sharding
from sgv_jax.data import pipeline
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig, get_preset, validate
from sgv_jax.train import optim
from sgv_jax.train import step as step_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Run:
    config: Any
    workdir: str
    model: VLMConfig
    mesh: Any
    accum_steps: int
    micro_batch: int  # samples per micro-batch over all devices
    total_steps: int  # length of the LR schedule (dataset size x epochs / global batch)
    stop_step: int  # where this run stops (max_steps, or total_steps)
    schedule: Any
    optimizer: Any
    compute_dtype: Any


def check_config(config) -> None:
    """Clear errors for values that would otherwise fail deep inside a run."""
    problems = []
    if config.data.template not in ("plain", "v1", "vicuna_v1"):
        problems.append(f"data.template {config.data.template!r}: use plain or v1")
    if config.data.aspect not in ("square", "pad"):
        problems.append(f"data.aspect {config.data.aspect!r}: use square or pad")
    if config.compute_dtype not in DTYPES:
        problems.append(f"compute_dtype {config.compute_dtype!r}: use {sorted(DTYPES)}")
    if config.remat not in llava.REMAT_POLICIES:
        problems.append(f"remat {config.remat!r}: use {sorted(llava.REMAT_POLICIES)}")
    for name in ("global_batch_size", "per_device_batch_size", "num_epochs", "log_every",
                 "checkpoint_every", "keep_checkpoints", "eval_every"):
        if getattr(config, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(config, name)}")
    if config.optim.lr <= 0 or not 0 <= config.optim.warmup_ratio < 1:
        problems.append(f"optim.lr {config.optim.lr} / optim.warmup_ratio "
                        f"{config.optim.warmup_ratio} out of range")
    try:
        optim.check_modules(config.trainable_modules)
    except ValueError as e:
        problems.append(str(e))
    if not config.data.train_file:
        problems.append("data.train_file is empty")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def model_config(config) -> VLMConfig:
    if config.init_from:
        from sgv_jax.checkpoint_sgv import read_sgv_config

        cfg = VLMConfig.from_dict(read_sgv_config(config.init_from)["model"])
    else:
        cfg = get_preset(config.model)
    validate(cfg)
    return cfg


def plan_run(config, workdir: str, num_records: int) -> Run:
    cfg = model_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.per_device_batch_size * batch_devices
    if config.global_batch_size % micro:
        raise ValueError(f"global_batch_size {config.global_batch_size} is not a multiple of "
                         f"per_device_batch_size {config.per_device_batch_size} x {batch_devices} "
                         "data-parallel devices")
    total = max(1, num_records * config.num_epochs // config.global_batch_size)
    stop = total if config.max_steps < 0 else min(config.max_steps, total)
    schedule = optim.lr_schedule(config.optim.lr, total, config.optim.warmup_ratio)
    o = config.optim
    optimizer = optim.make_optimizer(schedule, o.b1, o.b2, o.eps, o.weight_decay,
                                     o.grad_clip_norm or None)
    return Run(config, workdir, cfg, mesh, config.global_batch_size // micro, micro, total, stop,
               schedule, optimizer, DTYPES[config.compute_dtype])


def make_data(run: Run, data_file: str, seed: int, num_epochs: int | None, batch_size: int
              ) -> pipeline.DataIterator:
    c = run.config.data
    vision = run.model.vision
    return pipeline.make_dataset(
        data_file, c.image_folder, c.tokenizer, c.template, aspect=c.aspect,
        image_size=vision.image_size, num_image_tokens=run.model.num_image_tokens,
        max_length=c.max_length, global_batch_size=batch_size, seed=seed, num_epochs=num_epochs,
        worker_count=c.worker_count, strict=c.strict)


def to_global_batch(run: Run, host_batch: dict[str, np.ndarray], accumulated: bool) -> dict:
    """Host-local numpy batch → global arrays sharded over (data, fsdp); [A, B, ...] if
    accumulated."""
    arrays = {k: host_batch[k] for k in step_lib.BATCH_KEYS}
    if accumulated:
        arrays = {k: v.reshape(run.accum_steps, -1, *v.shape[1:]) for k, v in arrays.items()}
    shardings = step_lib.batch_shardings(run.mesh, arrays, accumulated)
    return {k: jax.make_array_from_process_local_data(shardings[k], v)
            for k, v in arrays.items()}


def peak_flops_per_device(config) -> float:
    if config.peak_flops_per_device:
        return config.peak_flops_per_device
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    known = {"v5p": 459e12, "v5 lite": 197e12, "v5e": 197e12, "v4": 275e12, "v6": 918e12,
             "h100": 989e12, "h200": 989e12, "a100": 312e12}
    for name, flops in known.items():
        if name in kind:
            return flops
    if device.platform == "cpu":
        # This project's reference machine: ~135 GFLOP/s fp32 matmul for the whole host.
        return 135e9 / jax.local_device_count()
    return math.nan
