"""NNX building blocks shared by the towers: parameters that name their logical axes, the norms,
and stacked layers run with `lax.scan` under a rematerialisation policy.

Every `nnx.Param` carries its logical axes in its `out_sharding` metadata (`("embed", "mlp")`);
sharding.py maps those names to mesh axes. Models are built with eager sharding off: shardings
come from `jax.jit(out_shardings=...)` at init (born sharded) and from the train layout, so a
model can also be built under `nnx.eval_shape` with no mesh at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# HF's initializer_range for both CLIP and LLaMA configs.
INIT_STDDEV = 0.02
NORMAL = nnx.initializers.normal(INIT_STDDEV)
ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()
LAYERS = "layers"  # the logical name of the stacking axis

Axes = Sequence[str | None]


def param(init: Callable, axes: Axes) -> Callable:
    """An initialiser whose Param records its logical axes."""
    return nnx.with_partitioning(init, tuple(axes))


def linear(d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool,
           rngs: nnx.Rngs) -> nnx.Linear:
    """`kernel [in, out]` (HF stores `weight [out, in]`; the converters transpose)."""
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=param(NORMAL, axes),
                      bias_init=param(ZEROS, (axes[1],)), rngs=rngs)


def layer_norm(dim: int, axis: str | None, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance as torch computes it (flax's default fast variance is E[x²] - E[x]²).
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False,
                         scale_init=param(ONES, (axis,)), bias_init=param(ZEROS, (axis,)),
                         rngs=rngs)


def embed(num: int, dim: int, axes: tuple[str | None, str | None], rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, dim, embedding_init=param(NORMAL, axes), rngs=rngs)


class RMSNorm(nnx.Module):
    """LLaMA's RMSNorm: normalise in fp32, cast back to the input dtype, THEN scale
    (REFERENCE §1.4). flax's nnx.RMSNorm multiplies by the scale before casting, which rounds
    differently in bf16, so this one keeps HF's order."""

    def __init__(self, dim: int, eps: float, rngs: nnx.Rngs):
        self.scale = nnx.Param(param(ONES, ("norm",))(rngs.params(), (dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], count: int,
            rngs: nnx.Rngs) -> nnx.Module:
    """`count` layers as one module whose parameters carry a leading `layers` axis (each
    Param's logical axes gain "layers" in front), so the forward pass is one scanned body."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
    def make(layer_rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(layer_rngs)

    return make(rngs)


# Rematerialisation of a scanned layer body: what the backward pass keeps from the forward.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # keep everything (no recomputation)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
    # Keep weight matmuls in host memory (TPU/GPU backends with pinned host memory).
    "dots_offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: use one of {sorted(REMAT_POLICIES)}")


def scan_layers(layers: nnx.Module, body: Callable, carry: Any, xs: Any = None, *,
                start: int = 0, stop: int | None = None, remat: str = "none") -> tuple[Any, Any]:
    """Run `body(layer, carry, x) -> (carry, y)` over layers[start:stop] with `lax.scan`.

    The compiled program holds one layer body whatever the depth; under FSDP each layer's
    weights are gathered inside the loop. `xs` (e.g. a stacked KV cache) is scanned along with
    the layers. Returns (carry, stacked ys)."""
    check_remat(remat)
    graphdef, state = nnx.split(layers)
    state = jax.tree.map(lambda w: w[start:stop], nnx.to_pure_dict(state))
    count = jax.tree.leaves(state)[0].shape[0]
    if count == 0:
        return carry, None

    def step(carry, layer_and_x):
        layer_state, x = layer_and_x
        return body(nnx.merge(graphdef, layer_state), carry, x)

    policy = REMAT_POLICIES[remat]
    if policy is not None:
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))
