"""`jax.jit` for the token-at-a-time decode programs, with XLA:CPU's YNNPACK dot fusions off.

jax 0.10's XLA:CPU hands dots to YNNPACK fusions by default. For the few-row dots of a decode
step (and its batched per-row attention reads) they are slower than XLA's own dots; for the
training step's and the prefill's large dots they are faster. Measured on a 2-core Zen 3
(bench_serve.py's 26M model, in process): a 32-row serving step attending 256 positions 49 ->
35 ms, 8 rows 24 -> 15 ms, 1 row unchanged; the Generator's batch-8 decode 511 -> 583 tok/s,
batch 1 unchanged; but a prefill of a 71-token image prompt 45 -> 60 ms and the bench_train.py
step 6.6 -> 8.2 s. So only the decode programs compile with the option, and only on CPU: it
is an XLA:CPU option, and a backend whose compiler lacks it would reject it by name.
"""

from __future__ import annotations

import functools

import jax

CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # "": no YNNPACK fusions
# For a decode loop that carries the KV cache (decode.decode_steps): without region analysis
# XLA:CPU's copy insertion copied every cache block of the loop state before each step's write
# (with LlamaModel.decode's `read_first`: none). A one-step serving program is slower with it
# (8 rows 10.5 -> 13.1 ms), so it is the loop's alone.
CPU_LOOP_OPTIONS = {**CPU_DECODE_OPTIONS, "xla_cpu_copy_insertion_use_region_analysis": True}


class DecodeJit:
    """`jax.jit(fun, **jit_kwargs)`, with `cpu_options` (default `CPU_DECODE_OPTIONS`) when the
    default backend is CPU; a decorator as jax.jit is: `@functools.partial(DecodeJit,
    static_argnames=...)`. The backend is read at the first call, not at import (XLA_FLAGS and
    the platform may still be set before then)."""

    def __init__(self, fun, cpu_options: dict = CPU_DECODE_OPTIONS, **jit_kwargs):
        functools.update_wrapper(self, fun)
        self._fun = fun
        self._cpu_options = cpu_options
        self._jit_kwargs = jit_kwargs
        self._jitted: dict[str, jax.stages.Wrapped] = {}  # backend -> jitted fun

    def _for_backend(self):
        backend = jax.default_backend()
        if backend not in self._jitted:
            options = self._cpu_options if backend == "cpu" else None
            self._jitted[backend] = jax.jit(self._fun, compiler_options=options,
                                            **self._jit_kwargs)
        return self._jitted[backend]

    def __call__(self, *args, **kwargs):
        return self._for_backend()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._for_backend().lower(*args, **kwargs)

    def _cache_size(self) -> int:
        """Programs compiled so far (jax's private counter, summed over backends)."""
        return sum(jitted._cache_size() for jitted in self._jitted.values())

