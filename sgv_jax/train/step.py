"""The pure train step.

`train_step(state, frozen, batch)` is a function of arrays only: it merges the trainable and
frozen halves inside the loss, accumulates gradients over micro-batches with `lax.scan`, and
normalises by the *global* token count of the whole step (sum of token losses / number of
counted tokens over every micro-batch and device). The reference instead averages per-device
token means (REFERENCE §4.5); with equal token counts per device the two agree.

The only randomness is the LoRA adapters' dropout (LORA.md §2.1): its key is a function of
(seed, step, micro-batch), so a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.train.optim import merge, zero_padding_row_grad


def make_train_step(cfg: VLMConfig, optimizer: optax.GradientTransformation, schedule: Callable,
                    compute_dtype, remat: str, freeze_pad_row: bool,
                    no_grad_below: int = 0, seed: int = 0) -> Callable:
    """`no_grad_below`: CLIP blocks below it are frozen (run behind a stop-gradient)."""
    pad_row = cfg.text.pad_token_id if freeze_pad_row else None
    uses_dropout = cfg.lora is not None and cfg.lora.dropout > 0

    def loss_terms(trainable, frozen, micro, key):
        params = merge(llava.cast_floating(trainable, compute_dtype), frozen)
        return llava.loss_terms(params, cfg, micro, compute_dtype, remat, no_grad_below,
                                dropout_key=key)

    grad_fn = jax.value_and_grad(loss_terms, has_aux=True)

    def train_step(state: dict, frozen: dict, batch: dict) -> tuple[dict, dict]:
        """batch leaves are [A, B, ...]: A accumulation micro-batches of B samples."""
        params = state["params"]
        step_key = jax.random.fold_in(jax.random.key(seed), state["step"])

        def accumulate(carry, micro_and_index):
            grads, total, count = carry
            micro, index = micro_and_index
            key = jax.random.fold_in(step_key, index) if uses_dropout else None
            (micro_total, micro_count), g = grad_fn(params, frozen, micro, key)
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, total + micro_total, count + micro_count), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        accum_steps = jax.tree.leaves(batch)[0].shape[0]
        (grads, total, count), _ = jax.lax.scan(accumulate, init,
                                                (batch, jnp.arange(accum_steps)))
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grads = zero_padding_row_grad(grads, pad_row)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                     "opt_state": opt_state}
        metrics = {"loss": total / denom, "tokens": count, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step


def make_eval_step(cfg: VLMConfig, compute_dtype) -> Callable:
    def eval_step(trainable: dict, frozen: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
        params = merge(llava.cast_floating(trainable, compute_dtype), frozen)
        return llava.loss_terms(params, cfg, batch, compute_dtype)

    return eval_step
