"""Parameter specs: one declaration gives shapes, logical sharding axes and initialisers.

Every module describes its parameters as a nested dict of `ParamSpec`. From that single tree we
derive the abstract shapes (`jax.eval_shape`-free: they are written down), the logical-axis tree
for sharding, and a pure `init_params(specs, key)` that can run under `jax.jit` with
`out_shardings`, so a 7B model is born sharded and never materialised on one host.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# HF's initializer_range for both CLIP and LLaMA configs.
INIT_STDDEV = 0.02


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical axis name per dimension (see sharding.py)
    init: str = "normal"  # 'normal' | 'zeros' | 'ones'

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def dense_spec(d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool) -> dict:
    """A linear layer stored as `kernel [in, out]` (HF stores `weight [out, in]`)."""
    spec = {"kernel": ParamSpec((d_in, d_out), axes)}
    if bias:
        spec["bias"] = ParamSpec((d_out,), (axes[1],), "zeros")
    return spec


def norm_spec(dim: int, axis: str | None, bias: bool) -> dict:
    spec = {"scale": ParamSpec((dim,), (axis,), "ones")}
    if bias:
        spec["bias"] = ParamSpec((dim,), (axis,), "zeros")
    return spec


def path_str(path: tuple) -> str:
    """'language_model/layers/3/mlp/up_proj/kernel' for a jax key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _init_leaf(spec: ParamSpec, key: jax.Array, dtype) -> jax.Array:
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    if spec.init == "normal":
        return (INIT_STDDEV * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)
    raise ValueError(f"unknown initialiser {spec.init!r}")


def init_params(specs: dict, key: jax.Array, dtype=jnp.float32) -> dict:
    """Random parameters for a spec tree. Each leaf's key is folded from its path, so adding a
    parameter elsewhere does not change the others' values."""

    def init_one(path, spec):
        leaf_key = jax.random.fold_in(key, zlib.crc32(path_str(path).encode()) & 0x7FFFFFFF)
        return _init_leaf(spec, leaf_key, dtype)

    return jax.tree_util.tree_map_with_path(init_one, specs, is_leaf=is_spec)


def abstract_params(specs: dict, dtype=jnp.float32) -> dict:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=is_spec)


def logical_axes(specs: dict) -> dict:
    """The tree of logical axis tuples, same structure as the parameters."""
    return jax.tree.map(lambda s: s.axes, specs, is_leaf=is_spec)


def count_params(tree: dict) -> int:
    leaves = jax.tree.leaves(tree, is_leaf=is_spec)
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in leaves))


def flatten(tree: dict, is_leaf: Callable | None = None) -> dict[str, Any]:
    """{'a/b/c': leaf} for a nested dict (our checkpoint and conversion key space)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {path_str(p): v for p, v in flat}


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def cast_floating(tree: Any, dtype) -> Any:
    """Cast floating leaves to the compute dtype (master weights stay fp32 outside)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
