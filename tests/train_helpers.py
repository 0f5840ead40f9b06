"""Shared set-up for training tests: demo configs with tiny step counts."""

from __future__ import annotations

import os
import tempfile

from sgv_jax.train.config_file import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo dataset is deterministic: generated once per machine for every test that trains.
DEMO_DATA = os.path.join(tempfile.gettempdir(), "sgv_jax_demo_data")


def demo_data() -> dict[str, str]:
    """The demo dataset's paths under DEMO_DATA, generated on first use (deterministic)."""
    from sgv_jax.demo.data import generate

    return generate(DEMO_DATA, seed=0)


def load_config(name: str, variant: str = "demo", **overrides):
    config = load_config_file(os.path.join(REPO, "configs", f"{name}.py") +
                              (f":{variant}" if variant else ""))
    if variant == "demo":
        config.data.demo_dir = DEMO_DATA
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
