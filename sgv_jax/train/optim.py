"""Optimizer, learning-rate schedule and the per-stage trainable set (REFERENCE.md §4).

Stages are data: `trainable_modules` names top-level modules trained whole, and
`tune_vit_from_layer` (ShareGPT4V's flag) adds CLIP blocks >= k. Parameters are split by path
into a trainable and a frozen tree; only the trainable one gets AdamW moments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sgv_jax.models.params import flatten, unflatten

MODULES = ("vision_tower", "projector", "language_model")
_VIT_BLOCK = re.compile(r"^vision_tower/layers/(\d+)/")


def is_trainable(path: str, trainable_modules: Sequence[str], tune_vit_from_layer: int) -> bool:
    """ShareGPT4V stage 1 (`--tune_vit_from_layer 12`): CLIP blocks >= 12 train; the tower's
    embeddings, pre-norm, earlier blocks and post_layernorm stay frozen (§4.1)."""
    if path.split("/", 1)[0] in trainable_modules:
        return True
    block = _VIT_BLOCK.match(path)
    return tune_vit_from_layer >= 0 and block is not None and int(block.group(1)) >= tune_vit_from_layer


def check_modules(trainable_modules: Sequence[str]) -> None:
    unknown = [m for m in trainable_modules if m not in MODULES]
    if unknown:
        raise ValueError(f"trainable_modules {unknown} unknown; choose from {MODULES}")


def split_trainable(params: dict, trainable_modules: Sequence[str], tune_vit_from_layer: int
                    ) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts that together hold every leaf exactly once."""
    check_modules(trainable_modules)
    flat = flatten(params)
    train = {k: v for k, v in flat.items() if is_trainable(k, trainable_modules, tune_vit_from_layer)}
    frozen = {k: v for k, v in flat.items() if k not in train}
    if not train:
        raise ValueError("the trainable set is empty: check trainable_modules / tune_vit_from_layer")
    return unflatten(train), unflatten(frozen)


def merge(trainable: dict, frozen: dict) -> dict:
    return unflatten({**flatten(frozen), **flatten(trainable)})


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    # HF TrainingArguments.get_warmup_steps: ceil(total * ratio) (§4.4).
    return math.ceil(total_steps * warmup_ratio)


def lr_schedule(peak_lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """HF's get_cosine_schedule_with_warmup: linear 0→peak, then cosine to 0 at total_steps.

    `step` is the number of updates already applied (HF calls scheduler.step() after each)."""
    warm = warmup_steps(total_steps, warmup_ratio)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak_lr * step / max(warm, 1)
        progress = (step - warm) / max(total_steps - warm, 1)
        cos_lr = peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
        return jnp.where(step < warm, warm_lr, cos_lr)

    return schedule


def make_optimizer(schedule: optax.Schedule, b1: float, b2: float, eps: float,
                   weight_decay: float, grad_clip_norm: float | None) -> optax.GradientTransformation:
    """AdamW as torch's adamw_torch; clipping only if asked (the reference has none, §4.4)."""
    steps = []
    if grad_clip_norm:
        steps.append(optax.clip_by_global_norm(grad_clip_norm))
    steps.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*steps)


def zero_padding_row_grad(grads: dict, pad_token_id: int | None) -> dict:
    """torch's Embedding(padding_idx=pad) never updates that row (§1.4); do the same."""
    if pad_token_id is None or "language_model" not in grads:
        return grads
    lm = grads["language_model"]
    if "embed_tokens" not in lm:
        return grads
    table = lm["embed_tokens"]["embedding"]
    lm = {**lm, "embed_tokens": {"embedding": table.at[pad_token_id].set(0)}}
    return {**grads, "language_model": lm}


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
