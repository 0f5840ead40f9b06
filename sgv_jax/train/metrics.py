"""Metric sinks: WORKDIR/metrics.jsonl (one object per logged step) and TensorBoard events.

Only process 0 writes; the others get a writer that drops everything.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
