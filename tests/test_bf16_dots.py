"""bf16 linears on CPU (models/nn.py `dot_general`): dots with an fp32 result rounded once, which
XLA:CPU runs with YNNPACK's bf16 kernels instead of upcasting both operands. The numbers are the
upcast dot's, gradients included; the `dots` remat policy still keeps them; the bf16 train step
and decode loop compile with the options (xla_cpu.py) under which the dots stay bf16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax import xla_cpu
from sgv_jax.models import nn

LINEAR = (((2,), (0,)), ((), ()))  # nnx.Linear's dimension numbers for a [B, T, in] input


def dot_operand_dtypes(hlo_text: str) -> list[tuple[str, str]]:
    """(lhs, rhs) element types of every dot in compiled HLO text, fused computations included."""
    found, types = [], {}
    for line in hlo_text.splitlines():
        if line.rstrip().endswith("{"):  # a new computation: its own parameter names
            types = dict(re.findall(r"(\w[\w.\-]*): (\w+)\[", line))
        for name, dtype in re.findall(r"%([\w.\-]+) = (\w+)\[", line):
            types[name] = dtype
        dot = re.search(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
        if dot:
            found.append((types.get(dot.group(1)), types.get(dot.group(2))))
    return found


def two_linears(x, w1, w2, dot):
    h = jax.nn.silu(dot(x, w1, LINEAR))
    return jnp.sum(jnp.sin(dot(h, w2, LINEAR).astype(jnp.float32)))


@pytest.fixture(scope="module")
def operands():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 33, 96)).astype(jnp.bfloat16)
    w1 = (0.1 * jax.random.normal(keys[1], (96, 160))).astype(jnp.bfloat16)
    w2 = (0.1 * jax.random.normal(keys[2], (160, 96))).astype(jnp.bfloat16)
    return x, w1, w2


def test_a_bf16_linear_gives_the_upcast_dots_numbers_forward_and_backward(operands):
    assert jax.default_backend() == "cpu"
    options = xla_cpu.train_options(jnp.bfloat16)
    ours = jax.jit(jax.value_and_grad(lambda *a: two_linears(*a, nn.dot_general), (0, 1, 2)),
                   compiler_options=options)
    plain = jax.jit(jax.value_and_grad(lambda *a: two_linears(*a, jax.lax.dot_general),
                                       (0, 1, 2)))
    (loss, grads), (want_loss, want_grads) = ours(*operands), plain(*operands)
    assert {g.dtype for g in grads} == {jnp.dtype(jnp.bfloat16)}
    # Both accumulate in fp32 and round to bf16 once; only the summation order may differ.
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-2)
    for got, want in zip(grads, want_grads):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=2 ** -7 * np.abs(want).max())


def test_the_bf16_train_options_keep_both_operands_of_every_dot_bf16(operands):
    grad = jax.grad(lambda *a: two_linears(*a, nn.dot_general), (0, 1, 2))
    text = jax.jit(grad, compiler_options=xla_cpu.train_options(jnp.bfloat16)).lower(
        *operands).compile().as_text()
    dots = dot_operand_dtypes(text)
    assert len(dots) == 6, dots  # two forward dots, two backward dots each
    assert set(dots) == {("bf16", "bf16")}
    # Why bf16 has its own options: under the fp32 step's LARGE_DOTS the YNNPACK fusion converts
    # both operands to fp32 first (if XLA stops doing so, one set of options would serve both).
    upcast = jax.jit(grad, compiler_options=xla_cpu.LARGE_DOTS).lower(*operands).compile()
    assert ("f32", "f32") in set(dot_operand_dtypes(upcast.as_text()))


def test_fp32_linears_are_plain_dots():
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    w = jax.random.normal(jax.random.key(2), (16, 8))
    jaxpr = str(jax.make_jaxpr(lambda x, w: nn.dot_general(x, w, LINEAR))(x, w))
    assert "custom_vjp" not in jaxpr and "dot_general" in jaxpr
    np.testing.assert_array_equal(jax.jit(nn.dot_general, static_argnums=2)(x, w, LINEAR),
                                  jax.jit(jax.lax.dot_general, static_argnums=2)(x, w, LINEAR))


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_remat_policies_treat_the_bf16_linears_as_plain_dots(remat):
    """`dots` keeps weight matmuls: the bf16 linears' dots (named, inside a custom_vjp) too, so
    the backward pass recomputes no more of them than of plain dots."""
    def dots_in_grad(dot):
        def layer(h, w1, w2):
            return h + dot(jax.nn.silu(dot(h, w1, LINEAR)), w2, LINEAR)

        body = jax.checkpoint(layer, policy=nn.REMAT_POLICIES[remat])

        def loss(weights, x):
            for w1, w2 in weights:
                x = body(x, w1, w2)
            return jnp.mean(jnp.square(x.astype(jnp.float32)))

        weights = [(jnp.ones((64, 128), jnp.bfloat16), jnp.ones((128, 64), jnp.bfloat16))] * 3
        text = jax.jit(jax.grad(loss)).lower(weights, jnp.ones((2, 8, 64), jnp.bfloat16)).as_text()
        return text.count("stablehlo.dot_general")

    assert dots_in_grad(nn.dot_general) == dots_in_grad(jax.lax.dot_general)


def test_decode_loops_take_their_options_from_the_weights_dtype():
    assert xla_cpu.decode_loop_options("float32") == xla_cpu.DECODE_LOOP
    bf16 = xla_cpu.decode_loop_options("bfloat16")
    assert "xla_cpu_experimental_ynn_fusion_type" not in bf16  # XLA's default: YNNPACK dots
    assert bf16["xla_cpu_copy_insertion_use_region_analysis"]  # the cache written in place

    calls = []

    def options(x, *, scale):
        calls.append(scale)
        return xla_cpu.FEW_ROW_DOTS if scale == 1 else {}

    program = xla_cpu.CpuOptionsJit(options, lambda x, *, scale: (x @ x) * scale,
                                    static_argnames=("scale",))
    x = jax.random.normal(jax.random.key(0), (64, 64))
    assert "__ynn_fusion" not in program.lower(x, scale=1).compile().as_text()
    assert "__ynn_fusion" in program.lower(x, scale=2).compile().as_text()
    np.testing.assert_allclose(program(x, scale=2), 2 * (x @ x), rtol=1e-5, atol=1e-4)
    program(x, scale=2)
    assert program._cache_size() == 1 and calls == [1, 2, 2, 2]


@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (3, 96)])
def test_one_bf16_row_is_padded_into_a_yNNPACK_dot_with_the_same_numbers(shape):
    """A batch-1 decode step's bf16 linears and vocabulary projection (nn.matmul_f32): XLA:CPU
    gives no one-row dot to YNNPACK, so the row is padded to two; the result is the fp32
    product of the bf16 operands, in the input's leading shape."""
    x = jax.random.normal(jax.random.key(1), shape).astype(jnp.bfloat16)
    kernel = (0.1 * jax.random.normal(jax.random.key(2), (96, 160))).astype(jnp.bfloat16)
    got = jax.jit(nn.matmul_f32)(x, kernel)
    assert got.shape == (*shape[:-1], 160) and got.dtype == jnp.float32
    want = x.astype(jnp.float32) @ kernel.astype(jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    text = jax.jit(nn.matmul_f32).lower(x, kernel).compile().as_text()
    assert "__ynn_fusion" in text
