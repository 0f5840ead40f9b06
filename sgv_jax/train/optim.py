"""Optimizer, learning-rate schedule and the per-stage trainable set (REFERENCE.md §4).

Stages are data: `trainable_modules` names modules trained whole (top-level ones, or a
sub-module by path such as `language_model/lm_head`), and
`tune_vit_from_layer` (ShareGPT4V's flag) adds CLIP blocks >= k; the pseudo-module `adapters`
names the LoRA weights (`…/lora_a`, `…/lora_b`) wherever they sit, so LLaVA-1.5's LoRA stage
trains ("projector", "adapters") while the base decoder stays frozen (LORA.md §1.1). Parameters are split by path
into a trainable and a frozen tree; only the trainable one gets AdamW moments. The CLIP blocks
are one stacked array per weight, so that flag splits each stacked leaf along its `layers` axis:
blocks < k go to the frozen tree, blocks >= k to the trainable one, and `merge` concatenates
them back (the model then runs the two parts as two scans, `no_grad_below`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from sgv_jax.models.storage import flatten, unflatten

MODULES = ("vision_tower", "projector", "language_model")
ADAPTERS = "adapters"
VIT_BLOCKS = "vision_tower/layers/"
LORA_LEAVES = ("lora_a", "lora_b")


def is_adapter(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in LORA_LEAVES


@dataclasses.dataclass(frozen=True)
class TrainableSet:
    """Which parameters a stage trains: whole modules, plus CLIP blocks >= `vit_from_layer`
    (-1: none) when the tower itself is not trained whole (§4.1)."""

    modules: tuple[str, ...]
    vit_from_layer: int = -1

    def __post_init__(self):
        unknown = [m for m in self.modules if m not in (*MODULES, ADAPTERS)
                   and not (m.split("/", 1)[0] in MODULES and "/" in m)]
        if unknown:
            raise ValueError(f"trainable_modules {unknown} unknown; choose from "
                             f"{(*MODULES, ADAPTERS)} or a module inside one (e.g. "
                             "'language_model/lm_head')")

    def trains_whole(self, path: str) -> bool:
        """Whether `path` lies in a module trained whole (a top-level one or a sub-module)."""
        return any(path == m or path.startswith(m + "/") for m in self.modules)

    @property
    def splits_vit(self) -> bool:
        return "vision_tower" not in self.modules and self.vit_from_layer >= 0

    def vit_boundary(self, num_blocks: int) -> int:
        """First trained CLIP block (num_blocks when none is trained)."""
        if "vision_tower" in self.modules:
            return 0
        return num_blocks if self.vit_from_layer < 0 else min(self.vit_from_layer, num_blocks)


def split_trainable(params: dict, trainable: TrainableSet) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts that together hold every parameter exactly once; a
    stacked CLIP leaf split at the boundary appears in both, blocks [0, k) frozen and [k, n)
    trainable. Works on arrays and on ShapeDtypeStructs."""
    train, frozen = {}, {}
    for path, value in flatten(params).items():
        if trainable.trains_whole(path) or (
                ADAPTERS in trainable.modules and is_adapter(path)):
            train[path] = value
        elif path.startswith(VIT_BLOCKS) and trainable.splits_vit:
            k = trainable.vit_boundary(value.shape[0])
            if k > 0:
                frozen[path] = _rows(value, 0, k)
            if k < value.shape[0]:
                train[path] = _rows(value, k, value.shape[0])
        else:
            frozen[path] = value
    if not train:
        raise ValueError("the trainable set is empty: check trainable_modules / tune_vit_from_layer")
    return unflatten(train), unflatten(frozen)


def _rows(value, start: int, stop: int):
    """Blocks [start, stop) of a stacked leaf (the `layers` axis is never sharded, so an
    abstract leaf keeps its sharding)."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((stop - start, *value.shape[1:]), value.dtype,
                                    sharding=value.sharding)
    return value[start:stop]


def merge(trainable: dict, frozen: dict) -> dict:
    """The full tree again: a leaf in both halves is a split stack, frozen blocks first."""
    flat_train, flat_frozen = flatten(trainable), flatten(frozen)
    out = {**flat_frozen, **flat_train}
    for path in flat_train.keys() & flat_frozen.keys():
        low, high = flat_frozen[path], flat_train[path]
        out[path] = jnp.concatenate([low.astype(high.dtype), high], axis=0)
    return unflatten(out)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    # HF TrainingArguments.get_warmup_steps: ceil(total * ratio) (§4.4).
    return math.ceil(total_steps * warmup_ratio)


def lr_schedule(peak_lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """HF's get_cosine_schedule_with_warmup: linear 0→peak, then cosine to 0 at total_steps.

    `step` is the number of updates already applied (HF calls scheduler.step() after each).
    Not optax.warmup_cosine_decay_schedule: its fp32 interpolation lands up to ~3e-6 (relative)
    away from HF's float64 values; this one stays within an ulp of them."""
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


def group_labels(params: dict) -> dict:
    """'projector' for the projector's leaves, 'base' for every other trainable leaf: LLaVA's
    `mm_projector_lr` group (LORA.md §3.1)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "projector" if path[0].key == "projector" else "base", params)


def make_grouped_optimizer(peak_lr: float, projector_lr: float, total_steps: int,
                           warmup_ratio: float, b1: float, b2: float, eps: float,
                           weight_decay: float, grad_clip_norm: float | None
                           ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with one warmup+cosine schedule per group: the projector at `projector_lr` (0: the
    same lr as the rest), everything else at `peak_lr`; both follow the same shape, so their
    ratio is fixed (LORA.md §3.2). Clipping, if asked, is over the global norm of all groups.
    Returns (optimizer, the base group's schedule)."""
    schedule = lr_schedule(peak_lr, total_steps, warmup_ratio)
    if not projector_lr or projector_lr == peak_lr:
        return make_optimizer(schedule, b1, b2, eps, weight_decay, grad_clip_norm), schedule
    projector_schedule = lr_schedule(projector_lr, total_steps, warmup_ratio)
    groups = optax.partition(
        {"base": optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
         "projector": optax.adamw(projector_schedule, b1=b1, b2=b2, eps=eps,
                                  weight_decay=weight_decay)},
        group_labels)
    steps = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
    return optax.chain(*steps, groups), schedule


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


def linear_warmup_cosine(init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int,
                         total_steps: int) -> optax.Schedule:
    """MiniGPT-4's `linear_warmup_cosine_lr` (MINIGPT4.md §3.2): for the first `warmup_steps`
    updates `min(init, warmup + (init - warmup) * t / warmup_steps)`, then
    `(init - min) * 0.5 * (1 + cos(pi * t / total)) + min` on the global step t (so the curve
    jumps down a little where warmup ends, as the original's does). `t` = updates applied."""

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(init_lr, warmup_lr + (init_lr - warmup_lr) * t / max(warmup_steps, 1))
        cos = (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / max(total_steps, 1))) + min_lr
        return jnp.where(t < warmup_steps, warm, cos)

    return schedule


def decay_mask(params: dict) -> dict:
    """True where MiniGPT-4/LAVIS apply weight decay: parameters of >= 2 dimensions whose name
    holds no bias/norm (`p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n` get none, §3.2)."""
    def decays(path, leaf) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return leaf.ndim >= 2 and not any(s in name for s in ("bias", "norm", "ln_"))

    return jax.tree_util.tree_map_with_path(decays, params)


def optimizer_for(o, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) of a run config's `optim` fields: HF's warmup+cosine (LLaVA,
    ShareGPT4V), or `schedule = "linear_warmup_cosine"` with MiniGPT-4's fields (`min_lr`,
    `warmup_lr`, `warmup_steps`) and weight decay on matrices only (`decay_matrices_only`)."""
    if o.get("schedule", "warmup_cosine") == "linear_warmup_cosine":
        schedule = linear_warmup_cosine(o.lr, o.min_lr, o.warmup_lr, o.warmup_steps, total_steps)
        steps = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm else []
        mask = decay_mask if o.get("decay_matrices_only", False) else None
        steps.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                                 weight_decay=o.weight_decay, mask=mask))
        return optax.chain(*steps), schedule
    return make_grouped_optimizer(o.lr, o.get("projector_lr", 0.0), total_steps, o.warmup_ratio,
                                  o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm or None)
