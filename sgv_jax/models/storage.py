"""The storage key space: one path per block's tensor, as files and converters see the model.

In memory the layers are stacked (`language_model/layers/mlp/up_proj/kernel` is [L, D, F]); on
disk and in every conversion table each block is its own tensor
(`language_model/layers/17/mlp/up_proj/kernel` is [D, F]). Stacking is a per-leaf transform at
this one boundary, so conversion streams one block at a time, `sgv` checkpoints keep one group
per block (and checkpoints written before the layers were stacked load unchanged), and the
mapping tables stay one row per HF tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig

STACKED = ("vision_tower/layers", "language_model/layers")


def flatten(tree: dict) -> dict[str, Any]:
    """{'a/b/c': leaf} for a nested dict."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def _stack_of(path: str) -> str | None:
    return next((s for s in STACKED if path.startswith(s + "/")), None)


def group_of(path: str) -> str:
    """The storage group of a per-block path: one transformer block or one module.

    'language_model/layers/17/mlp/up_proj/kernel' → 'language_model.layers.17';
    'projector/linear_1/kernel' → 'projector.linear_1'."""
    parts = path.split("/")
    return ".".join(parts[:3] if len(parts) > 2 and parts[1] == "layers" else parts[:2])


def _per_block(path: str, index: int) -> str:
    stack = _stack_of(path)
    return f"{stack}/{index}/{path[len(stack) + 1:]}"


def storage_shapes(cfg: VLMConfig) -> dict[str, tuple[int, ...]]:
    """{per-block path: shape} of every tensor of the model (from abstract shapes only), block
    by block in the order `iter_groups` writes them."""
    return {p: tuple(v.shape) for _, group in iter_groups(llava.abstract_params(cfg))
            for p, v in group.items()}


def iter_groups(params: dict) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group, {per-block path: array}) for a stacked tree, one group at a time (slices of the
    stacked arrays, so sharded arrays stay on device)."""
    flat = flatten(params)
    plain: dict[str, dict[str, Any]] = {}
    for path, value in flat.items():
        if not _stack_of(path):
            plain.setdefault(group_of(path), {})[path] = value
    yield from plain.items()
    for stack in STACKED:
        leaves = {p: v for p, v in flat.items() if _stack_of(p) == stack}
        if not leaves:
            continue
        for i in range(next(iter(leaves.values())).shape[0]):
            yield f"{stack.replace('/', '.')}.{i}", {_per_block(p, i): _block(v, i)
                                                     for p, v in leaves.items()}


def _block(value, index: int):
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
    return value[index]


def unstack(params: dict) -> dict[str, Any]:
    """{per-block path: array} for a stacked tree."""
    return {p: v for _, group in iter_groups(params) for p, v in group.items()}


def split_block_path(path: str) -> tuple[str, int | None]:
    """('language_model/layers/mlp/up_proj/kernel', 17) for a per-block path; (path, None) for
    a tensor outside the stacks."""
    stack_name = _stack_of(path)
    if stack_name is None:
        return path, None
    index, rest = path[len(stack_name) + 1:].split("/", 1)
    return f"{stack_name}/{rest}", int(index)


def stack(flat: dict[str, Any], stack_fn=lambda path, arrays: np.stack(arrays)) -> dict:
    """The stacked nested tree from {per-block path: array} (every block present);
    `stack_fn(stacked path, [arrays])` builds each stacked leaf."""
    out: dict[str, Any] = {}
    blocks: dict[str, dict[int, Any]] = {}
    for path, value in flat.items():
        stacked_path, index = split_block_path(path)
        if index is None:
            out[path] = value
        else:
            blocks.setdefault(stacked_path, {})[index] = value
    for path, by_index in blocks.items():
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        if missing:
            raise ValueError(f"{path}: blocks {missing} missing")
        out[path] = stack_fn(path, [by_index.pop(i) for i in range(len(by_index))])
    return unflatten(out)
