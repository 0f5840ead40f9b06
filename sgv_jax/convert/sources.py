"""Lazy, file-by-file reading of HF weight files: sharded or single safetensors, or PyTorch `.bin`.

Only one weight file is open (memory-mapped) at a time, so reading a 7B checkpoint needs about one
shard of RAM. `.bin` files go through `torch.load(weights_only=True, mmap=True)`: never a full
unpickle of arbitrary objects (issue 3).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from typing import Any

from sgv_jax.convert.state_dict import to_numpy

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


class WeightFiles:
    """The weight files of one checkpoint directory (or one explicit file) and their keys."""

    def __init__(self, location: str):
        self.location = location
        self.files = _weight_files(location)
        self.key_file: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for path in self.files:
            for key, shape in _file_shapes(path).items():
                if key in self.key_file:
                    raise ValueError(f"{location}: key {key!r} is in both "
                                     f"{self.key_file[key]} and {path}")
                self.key_file[key] = path
                self.shapes[key] = shape

    def keys(self) -> list[str]:
        return list(self.key_file)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[dict[str, Any]]:
        """{key: lazy getter} for one file; the mapping is released when the block ends."""
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                yield {k: (lambda k=k: f.get_tensor(k)) for k in list(f.keys())}
        else:
            state = _torch_load(path)
            try:
                yield {k: (lambda k=k: to_numpy(state[k])) for k in state}
            finally:
                del state


def _weight_files(location: str) -> list[str]:
    if os.path.isfile(location):
        return [location]
    if not os.path.isdir(location):
        raise FileNotFoundError(f"{location}: no such checkpoint directory or weight file")
    for name in INDEX_NAMES:
        index_path = os.path.join(location, name)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [n for n in files if not os.path.isfile(os.path.join(location, n))]
            if missing:
                raise FileNotFoundError(f"{index_path} names shard files that are not there: "
                                        + ", ".join(missing))
            return [os.path.join(location, n) for n in files]
    for name in SINGLE_NAMES:
        if os.path.isfile(os.path.join(location, name)):
            return [os.path.join(location, name)]
    found = sorted(glob.glob(os.path.join(location, "*.safetensors"))
                   + glob.glob(os.path.join(location, "pytorch_model*.bin")))
    if found:
        return found
    raise FileNotFoundError(f"{location}: no weights (looked for {', '.join(INDEX_NAMES)}, "
                            f"{', '.join(SINGLE_NAMES)}, *.safetensors, pytorch_model*.bin)")


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key → shape from the file header (safetensors) or the mapped pickle (.bin): no data read."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in list(f.keys())}
    return {k: tuple(v.shape) for k, v in _torch_load(path).items()}


def _torch_load(path: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading PyTorch .bin files needs torch "
                          "(or convert the file to safetensors)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def read_json(directory: str, name: str = "config.json") -> dict[str, Any]:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (the converter reads the model shape from it)")
    with open(path) as f:
        return json.load(f)
