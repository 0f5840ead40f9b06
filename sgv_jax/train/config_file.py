"""Load `configs/x.py[:variant]` outside absl flags (tests, the planner, the demo)."""

from __future__ import annotations

import importlib.util
import os


def load_config_file(spec: str):
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant)
