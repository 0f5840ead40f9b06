"""Everything a run needs before its first step: model config, mesh, data, optimizer, and the
initial (or restored) state — resolved from a run config and a workdir."""

from __future__ import annotations

import dataclasses
from typing import Any

from sgv_jax import sharding
from sgv_jax.data import (
    images,
    minigpt4_pipeline,
    minigpt4_samples,
    pipeline,
    templates,
)
from sgv_jax.models.config import LoraConfig, VLMConfig, get_preset, validate
from sgv_jax.models.nn import REMAT_POLICIES
from sgv_jax.train import optim
from sgv_jax.train.layout import DTYPES, TrainLayout, build_layout


@dataclasses.dataclass
class Run:
    config: Any
    workdir: str
    layout: TrainLayout
    total_steps: int  # length of the LR schedule (dataset size x epochs / global batch)
    stop_step: int  # where this run stops (max_steps, or total_steps)

    @property
    def model(self) -> VLMConfig:
        return self.layout.model


def check_config(config) -> None:
    """Clear errors for values that would otherwise fail deep inside a run."""
    problems = []
    if config.data.template not in templates.NAMES:
        problems.append(f"data.template {config.data.template!r}: use one of "
                        f"{', '.join(templates.NAMES)}")
    if config.data.aspect not in images.ASPECTS:
        problems.append(f"data.aspect {config.data.aspect!r}: use one of {', '.join(images.ASPECTS)}")
    minigpt4 = config.get("minigpt4")
    if minigpt4 is None and config.data.aspect == "random_resized_crop":
        problems.append("data.aspect 'random_resized_crop' is MiniGPT-4's training crop; "
                        "LLaVA-format data takes square, pad or resize")
    if minigpt4 is not None and minigpt4.stage not in minigpt4_pipeline.STAGES:
        problems.append(f"minigpt4.stage {minigpt4.stage!r}: use 1 (webdataset shards) or 2 "
                        "(cc_sbu_align)")
    if config.compute_dtype not in DTYPES:
        problems.append(f"compute_dtype {config.compute_dtype!r}: use {sorted(DTYPES)}")
    if config.remat not in REMAT_POLICIES:
        problems.append(f"remat {config.remat!r}: use {sorted(REMAT_POLICIES)}")
    for name in ("global_batch_size", "per_device_batch_size", "num_epochs", "log_every",
                 "checkpoint_every", "keep_checkpoints", "eval_every"):
        if getattr(config, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(config, name)}")
    if config.optim.lr <= 0 or not 0 <= config.optim.warmup_ratio < 1:
        problems.append(f"optim.lr {config.optim.lr} / optim.warmup_ratio "
                        f"{config.optim.warmup_ratio} out of range")
    try:
        optim.TrainableSet(tuple(config.trainable_modules), config.tune_vit_from_layer)
        lora_config(config)
    except ValueError as e:
        problems.append(str(e))
    if not config.data.train_file:
        problems.append("data.train_file is empty")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def lora_config(config) -> LoraConfig | None:
    """The run's `lora` fields as a LoraConfig (None for rank 0)."""
    lora = config.get("lora")
    if lora is None or lora.rank <= 0:
        return None
    return LoraConfig(lora.rank, float(lora.alpha), float(lora.dropout), tuple(lora.targets))


def model_config(config) -> VLMConfig:
    """init_from's (or the preset's) shapes; the run's `lora` adds adapters, or replaces the
    ones init_from carries (rank 0 keeps them)."""
    if config.init_from:
        from sgv_jax.checkpoint_sgv import read_sgv_config

        cfg = VLMConfig.from_dict(read_sgv_config(config.init_from)["model"])
    else:
        cfg = get_preset(config.model)
    lora = lora_config(config)
    if lora is not None:
        cfg = cfg.replace(lora=lora)
    validate(cfg)
    if "adapters" in config.trainable_modules and cfg.lora is None:
        raise ValueError("invalid config: trainable_modules names 'adapters' but the model has no "
                         "LoRA adapters; set --config.lora.rank (e.g. 128)")
    return cfg


def count_records(config) -> int:
    """Samples in the training data (records of a LLaVA JSON file, or MiniGPT-4's)."""
    minigpt4 = config.get("minigpt4")
    if minigpt4 is not None:
        return minigpt4_pipeline.count_records(minigpt4.stage, config.data.train_file,
                                               config.data.image_folder)
    from sgv_jax.data.records import RecordFile

    return len(RecordFile(config.data.train_file))


def plan_run(config, workdir: str, num_records: int) -> Run:
    cfg = model_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    total = max(1, num_records * config.num_epochs // config.global_batch_size)
    if config.get("total_steps", 0) > 0:  # a fixed number of iterations (MiniGPT-4's recipes)
        total = config.total_steps
    stop = total if config.max_steps < 0 else min(config.max_steps, total)
    return Run(config, workdir, build_layout(config, cfg, mesh, total), total, stop)


def make_data(run: Run, data_file: str, seed: int, num_epochs: int | None, batch_size: int
              ) -> pipeline.DataIterator:
    c = run.config.data
    model = run.layout.model
    minigpt4 = run.config.get("minigpt4")
    if minigpt4 is not None:
        instructions = (minigpt4_samples.read_prompt_file(minigpt4.prompts_file)
                        if minigpt4.prompts_file else minigpt4_samples.ALIGNMENT_PROMPTS)
        return minigpt4_pipeline.make_dataset(
            minigpt4.stage, data_file, c.image_folder, c.tokenizer, instructions=instructions,
            max_txt_len=minigpt4.max_txt_len, end_sym=minigpt4.end_sym, aspect=c.aspect,
            image_size=model.vision.image_size, num_image_tokens=model.num_image_tokens,
            max_length=c.max_length, global_batch_size=batch_size, seed=seed,
            num_epochs=num_epochs, worker_count=c.worker_count, strict=c.strict)
    return pipeline.make_dataset(
        data_file, c.image_folder, c.tokenizer, c.template, aspect=c.aspect,
        image_size=model.vision.image_size, num_image_tokens=model.num_image_tokens,
        max_length=c.max_length, global_batch_size=batch_size, seed=seed, num_epochs=num_epochs,
        worker_count=c.worker_count, strict=c.strict)
