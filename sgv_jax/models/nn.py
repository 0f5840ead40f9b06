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
from jax.ad_checkpoint import checkpoint_name

# HF's initializer_range for both CLIP and LLaMA configs.
INIT_STDDEV = 0.02
NORMAL = nnx.initializers.normal(INIT_STDDEV)
ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()
LAYERS = "layers"  # the logical name of the stacking axis

Axes = Sequence[str | None]


INIT_FN = "init_fn"  # Param metadata: the initialiser, for `llava.init`'s path-keyed draw


def param(init: Callable, axes: Axes) -> Callable:
    """An initialiser whose Param records its logical axes and the initialiser itself."""
    return nnx.with_partitioning(init, tuple(axes), **{INIT_FN: init})


HALF_DOT = "half_dot"  # checkpoint name of a bf16 linear's output on CPU (see dot_general)


def matmul_f32(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, out] accumulated into an fp32 result, whatever the operands'
    dtype. On CPU one bf16 row (a batch-1 decode step) is padded to two: XLA:CPU hands no
    one-row dot to YNNPACK's bf16 kernels, and its own dot converts the whole kernel to fp32 on
    every call. Chained [1, 640] @ [640, 1920 | 640 | 3456], [1, 1728] @ [1728, 640] and the
    [640, 32064] head over 140 MB of bf16 weights (Zen 4): 24.1 ms as one row, 9.3 ms as two."""
    def dot(rows):
        return jax.lax.dot_general(rows, kernel, (((rows.ndim - 1,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)

    if (x.size != x.shape[-1] or x.dtype != jnp.bfloat16
            or jax.default_backend() != "cpu"):
        return dot(x)
    row = x.reshape(1, -1)
    return dot(jnp.concatenate([row, jnp.zeros_like(row)]))[:1].reshape(*x.shape[:-1], -1)


@jax.custom_vjp
def _bf16_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, out] in bf16, accumulated in fp32, rounded to bf16 once."""
    return matmul_f32(x, kernel).astype(x.dtype)


def _bf16_matmul_fwd(x, kernel):
    return _bf16_matmul(x, kernel), (x, kernel)


def _bf16_matmul_bwd(residuals, d_y):
    # Both backward dots also take bf16 operands into an fp32 result: autodiff's own transpose
    # of an fp32-result dot would multiply an fp32 cotangent by a bf16 operand, which XLA:CPU
    # upcasts again.
    x, kernel = residuals
    d_x = jax.lax.dot_general(d_y, kernel, (((d_y.ndim - 1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
    lead = tuple(range(x.ndim - 1))
    d_kernel = jax.lax.dot_general(x, d_y, ((lead, lead), ((), ())),
                                   preferred_element_type=jnp.float32)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None):
    """`nnx.Linear`'s dot. XLA:CPU upcasts both operands of a bf16 dot with a bf16 result to
    fp32 and multiplies in fp32; a bf16 dot with an fp32 result it hands to YNNPACK's bf16
    kernels (AVX512-BF16 where the CPU has it), which ran 1.9x faster on a Zen 4 (374 vs 197
    GFLOP/s at [1024,768]@[768,2048]). On CPU, a linear's bf16 dot therefore asks for fp32 and
    rounds to bf16 once, as torch's autocast does (the same numbers as the upcast). Elsewhere,
    and for any other dtype or form, it is `lax.dot_general` (GPUs and TPUs multiply bf16
    natively; their `dots` remat policy sees a plain dot)."""
    is_linear = dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2
    if (is_linear and lhs.dtype == rhs.dtype == jnp.bfloat16 and preferred_element_type is None
            and out_sharding is None and jax.default_backend() == "cpu"):
        # Named so that the `dots` remat policies keep it, as they keep a plain dot.
        return checkpoint_name(_bf16_matmul(lhs, rhs), HALF_DOT)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type,
                               out_sharding=out_sharding)


def linear(d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool,
           rngs: nnx.Rngs) -> nnx.Linear:
    """`kernel [in, out]` (HF stores `weight [out, in]`; the converters transpose)."""
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=param(NORMAL, axes),
                      bias_init=param(ZEROS, (axes[1],)), dot_general=dot_general, rngs=rngs)


# PEFT's A init, kaiming_uniform_(a=√5) on [r, in]: U(−1/√in, 1/√in) (LORA.md §2.2). flax's
# he_uniform (nnx.LoRA's default) is √6 times wider.
LORA_A_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
LORA_RANK = "lora_rank"  # the logical name of the adapter rank axis
LORA_PARAMS = ("lora_a", "lora_b")  # the adapter leaves' names in a parameter path


class LoRALinear(nnx.Linear):
    """An `nnx.Linear` (frozen base `kernel [in, out]`) plus PEFT's LoRA branch (LORA.md §2.5):
    y = x·kernel + scale · dropout(x)·lora_a·lora_b, with `lora_a [in, r]` = PEFT's `lora_A.weight`ᵀ
    and `lora_b [r, out]` = `lora_B.weight`ᵀ as `nnx.LoRAParam`s. The scale stays outside B
    (folding it in would change Adam's effective lr, LORA.md §2.5); dropout acts on the branch
    input only and only when a key is given (training)."""

    def __init__(self, d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool,
                 rank: int, scale: float, dropout: float, rngs: nnx.Rngs):
        super().__init__(d_in, d_out, use_bias=bias, kernel_init=param(NORMAL, axes),
                         bias_init=param(ZEROS, (axes[1],)), dot_general=dot_general,
                         rngs=rngs)
        self.lora_a = nnx.LoRAParam(param(LORA_A_INIT, (axes[0], LORA_RANK))(
            rngs.params(), (d_in, rank), jnp.float32))
        self.lora_b = nnx.LoRAParam(param(ZEROS, (LORA_RANK, axes[1]))(
            rngs.params(), (rank, d_out), jnp.float32))
        self.scale, self.dropout = scale, dropout

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        y = super().__call__(x)
        branch = x
        if dropout_key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, x.shape)
            branch = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        a, b = self.lora_a[...].astype(x.dtype), self.lora_b[...].astype(x.dtype)
        return y + ((branch @ a) @ b) * jnp.asarray(self.scale, x.dtype)


def linear_maybe_lora(d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool,
                      rngs: nnx.Rngs, lora=None) -> nnx.Linear:
    """`linear`, or a `LoRALinear` when `lora` (a LoraConfig) is given."""
    if lora is None:
        return linear(d_in, d_out, axes, bias, rngs)
    return LoRALinear(d_in, d_out, axes, bias, lora.rank, lora.scale, lora.dropout, rngs)


def apply_linear(layer: nnx.Linear, x: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
    """Call a linear that may carry an adapter; only adapters take the dropout key."""
    return layer(x, dropout_key) if isinstance(layer, LoRALinear) else layer(x)


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


LAYER_INPUT = "layer_input"  # checkpoint name of a scanned layer's input (see full_offload)

# Rematerialisation of a scanned layer body: what the backward pass keeps from the forward.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # keep everything (no recomputation)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    # Keep weight matmuls (and the bf16 linears' dots on CPU, which are named: `dot_general`).
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(HALF_DOT)),
    # Keep weight matmuls in host memory (TPU/GPU backends with pinned host memory).
    "dots_offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    # As `full`, but each layer's input (the residual stream the backward pass restarts from,
    # [L, B, T, D]: 8.6 GB per device at ShareGPT4V-7B stage 1) waits in pinned host memory.
    "full_offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[LAYER_INPUT],
        offload_src="device", offload_dst="pinned_host"),
}
OFFLOAD_POLICIES = ("dots_offload", "full_offload")


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: use one of {sorted(REMAT_POLICIES)}")


def scan_layers(layers: nnx.Module, body: Callable, carry: Any, xs: Any = None, *,
                start: int = 0, stop: int | None = None, remat: str = "none") -> tuple[Any, Any]:
    """Run `body(layer, carry, x) -> (carry, y)` over layers[start:stop] with `lax.scan`.

    The compiled program holds one layer body whatever the depth (but for bf16 on CPU, see
    below); under FSDP each layer's weights are gathered inside the loop. `xs` (e.g. a stacked
    KV cache) is scanned along with the layers. Returns (carry, stacked ys)."""
    check_remat(remat)
    graphdef, state = nnx.split(layers)
    state = jax.tree.map(lambda w: w[start:stop], nnx.to_pure_dict(state))
    count = jax.tree.leaves(state)[0].shape[0]
    if count == 0:
        return carry, None

    def step(carry, layer_and_x):
        layer_state, x = layer_and_x
        # Named so that `full_offload` can keep it on the host; every use reads the named value.
        carry = jax.tree.map(lambda c: checkpoint_name(c, LAYER_INPUT), carry)
        return body(nnx.merge(graphdef, layer_state), carry, x)

    policy = REMAT_POLICIES[remat]
    if policy is not None:
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    # XLA:CPU has no bf16 dynamic update: the scan's stacked bf16 residuals were converted to
    # fp32, updated and converted back at every layer, each buffer rewritten whole L times.
    # Unrolled, there is no stacked buffer (bench_train.py's bf16 step 1.97 -> 1.61 s; its fp32
    # step gains nothing: 2.99 vs 3.09 s, so fp32 and other backends keep the loop).
    bf16_on_cpu = (jax.default_backend() == "cpu"
                   and any(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(carry)))
    return jax.lax.scan(step, carry, (state, xs), unroll=count if bf16_on_cpu else 1)
