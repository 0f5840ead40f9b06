"""Multi-process start-up: `jax.distributed.initialize()` when the run spans several processes."""

from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Explicit flags win; TPU pods (several workers) and the JAX_* environment variables are
    auto-detected by jax itself. A single process is left alone."""
    if coordinator or (num_processes or 0) > 1:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","):
        jax.distributed.initialize()
