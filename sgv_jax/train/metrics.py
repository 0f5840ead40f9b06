"""Metric sinks: WORKDIR/metrics.jsonl (one object per logged step) and TensorBoard events.

Only process 0 writes; the others get a writer that drops everything.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from sgv_jax.paths import is_remote, local_mirror, resolve


class MetricWriter:
    """For a gs:// workdir the files are written locally (append-only JSONL and TensorBoard
    need a file system) and metrics.jsonl is mirrored to the workdir at every write."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._mirror = resolve(workdir) / "metrics.jsonl" if is_remote(workdir) else None
        if enabled:
            local = local_mirror(workdir, "")
            os.makedirs(local, exist_ok=True)
            self._path = os.path.join(local, "metrics.jsonl")
            self._jsonl = open(self._path, "a", buffering=1)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(local, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for key, value in metrics.items():
            value = float(value) if not isinstance(value, (str, dict)) else value
            row[key] = value
            if isinstance(value, float) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps(row) + "\n")
        if self._mirror is not None:
            with open(self._path) as f:
                self._mirror.write_text(f.read())

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = resolve(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
