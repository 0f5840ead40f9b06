"""The one chip table: dense bf16 peak FLOP/s and memory per chip, and how a device names it.

Peaks are the vendors' dense (no sparsity) bf16 figures: Cloud TPU system architecture pages
(v4 275 TFLOP/s 32 GiB; v5e 197, 16 GiB; v5p 459, 95 GiB; v6e 918, 32 GiB) and NVIDIA's data
sheets (A100 312 TFLOP/s; H100 SXM 989; H200 989, 141 GB). On a CPU there is no vendor figure
worth quoting: `cpu_matmul_roof` measures this machine's matmul rate instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    memory_bytes: float
    device_kinds: tuple[str, ...]  # substrings of jax's `device_kind`, lower case
    torus: int = 0  # TPU interconnect dimensions (3: v4/v5p, 2: v5e/v6e); 0: not a TPU


CHIPS = {c.name: c for c in (
    Chip("v4", 275e12, 32 * 2**30, ("tpu v4",), torus=3),
    Chip("v5e", 197e12, 16 * 2**30, ("tpu v5 lite", "tpu v5e"), torus=2),
    Chip("v5p", 459e12, 95 * 2**30, ("tpu v5p", "tpu v5"), torus=3),
    Chip("v6e", 918e12, 32 * 2**30, ("tpu v6 lite", "tpu v6e"), torus=2),
    Chip("a100", 312e12, 80e9, ("a100",)),
    Chip("h100", 989e12, 80e9, ("h100",)),
    Chip("h200", 989e12, 141e9, ("h200",)),
)}


def chip_of(device) -> Chip | None:
    """The table's entry for a jax device, matched on its `device_kind` (first match wins, so
    'tpu v5 lite' is tested before 'tpu v5')."""
    kind = device.device_kind.lower()
    for chip in CHIPS.values():
        if any(k in kind for k in chip.device_kinds):
            return chip
    return None


@functools.cache
def cpu_matmul_roof(size: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s of this host as XLA runs it, measured (about a second)."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def peak_flops_per_device(device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, what the figure is) for MFU."""
    device = device or jax.devices()[0]
    chip = chip_of(device)
    if chip is not None:
        return chip.peak_flops, f"{chip.name} dense bf16 peak"
    if device.platform == "cpu":
        roof = cpu_matmul_roof() / jax.local_device_count()
        return roof, "this CPU's fp32 matmul roof under XLA, measured at start-up (1024³)"
    return math.nan, f"unknown device kind {device.device_kind!r}"
