"""This machine's roofs, measured in the same run as the benchmark that quotes them.

Machines change between sessions, so no benchmark carries a typed-in roof: each one calls these
functions at start-up (a few seconds) and prints every ratio beside the fraction of roof it is.

- `matmul_gflops(m, k, n, dtype)`: best GFLOP/s of an isolated [m,k] @ [k,n] under XLA and
  under torch, at the benchmark's own shapes (small shapes run far below a 4096² matmul).
- `stream_read_gbs(nbytes)`: best GB/s of a matrix-vector product over a weight matrix of
  `nbytes` (larger than the caches), under XLA and torch, in both orientations (W @ x reads
  rows, x @ W as a decode step's [1, in] @ [in, out] does): the read rate a decode step can
  reach. Neither orientation is the faster one on every run or side (2-core Zen 3, fp32:
  XLA 27.6-33.1 vs 36.9-38.5 GB/s, torch 19.8-22.7 vs 24.7-29.4; bf16 torch 21 vs 0.2).
Both sides use the same threads as the benchmark's own runs (torch.set_num_threads is left alone).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from sgv_jax.models import nn

REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Roof:
    """One measured roof: its value under XLA and under torch, and what was measured."""

    what: str
    unit: str
    xla: float
    torch: float

    def line(self) -> str:
        return f"roof {self.what}: XLA {self.xla:,.1f} {self.unit}, torch {self.torch:,.1f} {self.unit}"


# A call slower than this is its own measurement: warm caches and a compile are a small part of
# it, and repeating it would take minutes (torch's bf16 matmul without bf16 hardware runs at
# ~1 GFLOP/s: six calls at bench_train.py's lm_head shape took ~5 minutes).
SLOW_CALL_SECONDS = 2.0


def _best_seconds(call, repeats: int = REPEATS) -> float:
    t0 = time.perf_counter()
    call()  # compile / warm the caches
    first = time.perf_counter() - t0
    if first > SLOW_CALL_SECONDS:
        return first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def matmul_gflops(m: int, k: int, n: int, dtype: str = "float32") -> Roof:
    """Isolated matmul rate at one shape, XLA vs torch (torch bf16 on CPU goes through oneDNN,
    which uses AMX where the CPU has it; XLA:CPU's path is measured, not assumed)."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    ta = torch.from_numpy(a).to(_torch_dtype(dtype))
    tb = torch.from_numpy(b).to(_torch_dtype(dtype))
    with torch.inference_mode():
        tt = _best_seconds(lambda: ta @ tb)
    flops = 2.0 * m * k * n
    return Roof(f"matmul {dtype} [{m},{k}]@[{k},{n}]", "GFLOP/s",
                xla_matmul_gflops(m, k, n, dtype, a, b), flops / tt / 1e9)


def xla_matmul_gflops(m: int, k: int, n: int, dtype: str = "float32", a=None, b=None) -> float:
    """XLA's side of `matmul_gflops` alone, on jax's default device (an accelerator's roof,
    where torch may not be installed); random operands unless given."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32) if a is None else a
    b = rng.standard_normal((k, n), np.float32) if b is None else b
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    matmul = jax.jit(jnp.matmul)
    if jnp.dtype(dtype) == jnp.bfloat16:
        # As the model's bf16 linears multiply (models/nn.py `dot_general`): an fp32 result
        # rounded once, which XLA:CPU runs with bf16 kernels; a bf16-result dot it upcasts.
        matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32)
                         .astype(x.dtype))
    return 2.0 * m * k * n / _best_seconds(lambda: matmul(ja, jb).block_until_ready()) / 1e9


def stream_read_gbs(nbytes: int = 512 << 20, dtype: str = "float32") -> Roof:
    """Read bandwidth a weight-streaming step can reach: y = W @ x over `nbytes` of W."""
    import torch

    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    cols = 4096
    rows = max(1, nbytes // (itemsize * cols))
    w = np.random.default_rng(0).standard_normal((rows, cols), np.float32)
    jw, tw = jnp.asarray(w, dtype), torch.from_numpy(w).to(_torch_dtype(dtype))
    del w
    gemv = jax.jit(jnp.matmul)
    if jnp.dtype(dtype) == jnp.bfloat16:
        # As the model's bf16 linears multiply (models/nn.py `matmul_f32`: an fp32 result, one
        # row padded to two), which XLA:CPU runs with bf16 kernels; its own bf16 gemv converts
        # the whole matrix to fp32 on every call (1-8 GB/s here).
        gemv = jax.jit(lambda a, b: nn.matmul_f32(a, b).astype(a.dtype))
    xla = tt = float("inf")
    for vector_first in (False, True):  # W [rows, cols] @ x [cols], then x [1, rows] @ W
        shape = (1, rows) if vector_first else (cols,)
        jx, tx = jnp.ones(shape, dtype), torch.ones(shape, dtype=_torch_dtype(dtype))
        jargs, targs = ((jx, jw), (tx, tw)) if vector_first else ((jw, jx), (tw, tx))
        xla = min(xla, _best_seconds(lambda a=jargs: gemv(*a).block_until_ready()))
        with torch.inference_mode():
            tt = min(tt, _best_seconds(lambda a=targs: a[0] @ a[1]))
    size = rows * cols * itemsize
    return Roof(f"streamed read {dtype} ({size / 2**20:.0f} MiB gemv, the faster orientation)",
                "GB/s", size / xla / 1e9, size / tt / 1e9)


def fraction(rate: float, roof: float) -> str:
    """'NN.N% of roof' text for a rate measured against a roof in the same unit."""
    return f"{rate / roof:.1%} of roof"


if __name__ == "__main__":
    for roof in (matmul_gflops(2048, 2048, 2048), matmul_gflops(2048, 2048, 2048, "bfloat16"),
                 stream_read_gbs()):
        print(roof.line(), flush=True)
