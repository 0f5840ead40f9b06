"""The pure train step and its shardings.

`train_step(state, frozen, batch)` is a function of arrays only: it merges the trainable and
frozen halves inside the loss, accumulates gradients over micro-batches with `lax.scan`, and
normalises by the *global* token count of the whole step (sum of token losses / number of
counted tokens over every micro-batch and device). The reference instead averages per-device
token means (REFERENCE §4.5); with equal token counts per device the two agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgv_jax import sharding
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.params import abstract_params, flatten, logical_axes, unflatten
from sgv_jax.train.optim import merge, zero_padding_row_grad

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")


def make_train_step(cfg: VLMConfig, optimizer: optax.GradientTransformation, schedule: Callable,
                    compute_dtype, remat: str, freeze_pad_row: bool) -> Callable:
    pad_row = cfg.text.pad_token_id if freeze_pad_row else None

    def loss_terms(trainable, frozen, micro):
        return llava.loss_terms(merge(trainable, frozen), cfg, micro, compute_dtype, remat)

    grad_fn = jax.value_and_grad(loss_terms, has_aux=True)

    def train_step(state: dict, frozen: dict, batch: dict) -> tuple[dict, dict]:
        """batch leaves are [A, B, ...]: A accumulation micro-batches of B samples."""
        params = state["params"]

        def accumulate(carry, micro):
            grads, total, count = carry
            (micro_total, micro_count), g = grad_fn(params, frozen, micro)
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, total + micro_total, count + micro_count), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (grads, total, count), _ = jax.lax.scan(accumulate, init, batch)
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grads = zero_padding_row_grad(grads, pad_row)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                     "opt_state": opt_state, "rng": jax.random.fold_in(state["rng"], state["step"])}
        metrics = {"loss": total / denom, "tokens": count, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step


def make_eval_step(cfg: VLMConfig, compute_dtype) -> Callable:
    def eval_step(params: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
        return llava.loss_terms(params, cfg, batch, compute_dtype)

    return eval_step


def param_shardings_for(cfg: VLMConfig, tree: dict, mesh) -> dict:
    """Shardings of a subtree (trainable or frozen half) of the full parameter tree."""
    specs = llava.param_specs(cfg)
    all_shardings = flatten(sharding.tree_shardings(logical_axes(specs), abstract_params(specs),
                                                    mesh), is_leaf=lambda x: isinstance(x, NamedSharding))
    return unflatten({path: all_shardings[path] for path in flatten(tree)})


def state_shardings(cfg: VLMConfig, optimizer, abstract_trainable: dict, mesh) -> dict:
    """Adam moments shard like their parameters; counters are replicated."""
    replicated = NamedSharding(mesh, P())
    param_sh = param_shardings_for(cfg, abstract_trainable, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_trainable)
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    return {"step": replicated, "params": param_sh, "opt_state": opt_sh, "rng": replicated}


def batch_shardings(mesh, batch: dict, accumulated: bool) -> dict:
    """Samples split over (data, fsdp); the leading accumulation axis (if any) is not."""
    lead = (None,) if accumulated else ()

    def one(x):
        rest = x.ndim - len(lead) - 1
        return NamedSharding(mesh, P(*lead, sharding.ACTIVATION_RULES["act_batch"], *([None] * rest)))

    return jax.tree.map(one, batch)


def jit_train_step(step_fn, state_sh: dict, frozen_sh: dict, batch_sh: dict) -> Any:
    """Donates the trainable params and optimizer state (not the frozen half)."""
    return jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
