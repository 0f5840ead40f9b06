"""XLA:CPU compile options, one set per kind of program, with the measurements that chose them.

jax 0.10's XLA:CPU hands dots, and by default also reductions and some elementwise work, to
YNNPACK fusions. What is fastest depends on the program's shapes, so each kind of program
compiles with its own options (`jax.jit(compiler_options=...)`), and only for CPU devices: they
are XLA:CPU options, and a backend whose compiler lacks them would reject them by name. The
fp32 figures are from a 2-core Zen 3 (AVX2), the bf16 ones from a 2-core Zen 4 (AVX512-BF16),
in process.

- `LARGE_DOTS`, train and eval steps: YNNPACK for dot fusions only. Its reductions (the
  softmax's max and sum) and stand-alone dots were slower than XLA's own code: bench_train.py's
  step 5.48 s by default, 4.85 s with this, 5.92 s with YNNPACK off.
- `FEW_ROW_DOTS`, fp32 decode steps: no YNNPACK fusions. For few-row dots and a decode step's
  batched per-row attention reads they are slower than XLA's own dots (bench_serve.py's model:
  a 32-row serving step attending 256 positions 49 -> 35 ms, 8 rows 24 -> 15 ms, 1 row
  unchanged; the Generator's batch-8 decode 511 -> 583 tok/s, batch 1 unchanged).
- `DECODE_LOOP`, a decode loop that carries the KV cache (decode.decode_steps): `FEW_ROW_DOTS`
  and region-analysed copy insertion. Without it XLA:CPU copied every cache block of the loop
  state before each step's write (with LlamaModel.decode's READ_FIRST: none; batch 1
  13.4 -> 11.6 ms a step on bench_generate.py's model). A one-step serving program is slower
  with it (8 rows 10.5 -> 13.1 ms), so it is the loop's alone.
- bf16 decode steps and loops keep XLA's defaults, whose YNNPACK fusions are the only bf16 dots
  XLA:CPU has (`decode_step_options`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

LARGE_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
BF16_DOTS = {}  # XLA:CPU's defaults: see `train_options`
FEW_ROW_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # "": no YNNPACK fusions
IN_PLACE_LOOP = {"xla_cpu_copy_insertion_use_region_analysis": True}  # see DECODE_LOOP above
DECODE_LOOP = {**FEW_ROW_DOTS, **IN_PLACE_LOOP}


def decode_step_options(dtype) -> dict:
    """A decode step's options (a serving step; the loop adds `IN_PLACE_LOOP`) for its weights'
    dtype. fp32: `FEW_ROW_DOTS`. bf16: XLA's defaults. XLA's own dots have no bf16 kernel
    (they convert every weight to fp32 on every step); YNNPACK's do, for the bf16 dots with an
    fp32 result that `models.nn.dot_general` asks for (one row padded to two: `matmul_f32`).
    Chained [R, 640] @ [640, 1920 | 3456] products over 80 MB of bf16 weights, Zen 4: R = 2-8
    rows 5.2-6.1 ms with YNNPACK vs 16-17 ms without (fp32: 10 ms). A serving step of
    bench_generate.py's model in bf16 (serve.engine.decode_step, 256 slots attended, Zen 4,
    with the cache's in-place writes): 1 row 26.2 -> 10.4 ms, 8 rows 37.9 -> 17.5 ms, 32 rows
    88.4 -> 52.8 ms."""
    return BF16_DOTS if jax.numpy.dtype(dtype) == jax.numpy.bfloat16 else FEW_ROW_DOTS


def decode_loop_options(dtype) -> dict:
    """A decode loop's options for its weights' dtype: `decode_step_options` and the cache
    written in place (`DECODE_LOOP` in fp32)."""
    return {**decode_step_options(dtype), **IN_PLACE_LOOP}


def train_options(compute_dtype) -> dict:
    """The train and eval steps' options for their compute dtype. In fp32, `LARGE_DOTS`. In
    bf16, XLA's defaults: the model's bf16 linears are dots with an fp32 result
    (`models.nn.dot_general`), which XLA:CPU's default YNNPACK fusions run with bf16 kernels,
    while under `LARGE_DOTS` the fusion converts both operands to fp32 first (Zen 4, AVX512-BF16,
    a 4-layer bf16 MLP's forward and backward: 250-270 GFLOP/s by default, 197 with
    `LARGE_DOTS`, 168-180 with the bf16-result dots of before)."""
    return BF16_DOTS if jax.numpy.dtype(compute_dtype) == jax.numpy.bfloat16 else LARGE_DOTS


def options_for(platform: str, cpu_options: dict) -> dict | None:
    """`jax.jit(compiler_options=)` for a program compiled for devices of `platform`."""
    return dict(cpu_options) if platform == "cpu" else None


class CpuOptionsJit:
    """`jax.jit(fun, **jit_kwargs)`, with `cpu_options` when the default backend is CPU; a
    decorator as jax.jit is: `@functools.partial(CpuOptionsJit, FEW_ROW_DOTS, ...)`.
    `cpu_options` is a dict, or a function of the call's arguments that returns one (one jit
    per distinct set). The backend is read at the first call, not at import (XLA_FLAGS and the
    platform may still be set before then)."""

    def __init__(self, cpu_options: dict | Callable[..., dict], fun, **jit_kwargs):
        functools.update_wrapper(self, fun)
        self._fun = fun
        self._cpu_options = cpu_options
        self._jit_kwargs = jit_kwargs
        self._jitted: dict[tuple, jax.stages.Wrapped] = {}  # (backend, options) -> jitted fun

    def _for_call(self, args, kwargs):
        backend = jax.default_backend()
        cpu_options = (self._cpu_options(*args, **kwargs) if callable(self._cpu_options)
                       else self._cpu_options)
        key = (backend, tuple(sorted(cpu_options.items())))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(
                self._fun, compiler_options=options_for(backend, cpu_options),
                **self._jit_kwargs)
        return self._jitted[key]

    def __call__(self, *args, **kwargs):
        return self._for_call(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._for_call(args, kwargs).lower(*args, **kwargs)

    def _cache_size(self) -> int:
        """Programs compiled so far (jax's private counter, summed over backends)."""
        return sum(jitted._cache_size() for jitted in self._jitted.values())
