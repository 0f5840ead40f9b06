"""Shared set-up for training tests: demo configs with tiny step counts."""

from __future__ import annotations

import os

from sgv_jax.train.config_file import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = "demo", **overrides):
    config = load_config_file(os.path.join(REPO, "configs", f"{name}.py") +
                              (f":{variant}" if variant else ""))
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
