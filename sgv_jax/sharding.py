"""Logical axis names → mesh axes, and the shardings derived from them.

Parameters and activations name *logical* axes; one strict table maps each name to a mesh axis of
the (`data`, `fsdp`, `tensor`) mesh. Unknown names are errors, not silent pass-throughs. A
dimension that a mesh axis does not divide is replicated instead (tiny test models), which
`param_shardings` reports so tests can assert the real presets shard fully.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Weight axes.
PARAM_RULES: dict[str, Any] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "norm": None,
    "vis_embed": "fsdp",
    "vis_mlp": "tensor",
    "vis_heads": "tensor",
}
# Activation axes: the batch is split over both data-parallel axes (FSDP is data parallel for
# activations); the model dim stays whole, tensor parallelism splits heads/mlp inside blocks.
ACTIVATION_RULES: dict[str, Any] = {
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_vocab": "tensor",
}
RULES = {**PARAM_RULES, **ACTIVATION_RULES}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh. -1 in one slot takes the remaining devices; a fully given
    shape smaller than the host's devices uses the first ones (single process only)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // known
    needed = int(np.prod(shape))
    if needed < len(devices) and jax.process_count() == 1:
        devices = devices[:needed]  # e.g. the 1-device demo on a multi-device host
    if needed != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices; "
                         f"{len(devices)} are available")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def _mesh_axis_size(mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([mesh.shape[n] for n in names]))


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh=None) -> P:
    """PartitionSpec for logical names; dims a mesh axis does not divide stay replicated."""
    out = []
    for i, name in enumerate(logical):
        if name is None:
            out.append(None)
            continue
        if name not in RULES:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(RULES)}")
        axis = RULES[name]
        if axis is not None and shape is not None and mesh is not None:
            if shape[i] % _mesh_axis_size(mesh, axis):
                axis = None
        out.append(axis)
    return P(*out)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(axes_tree: Any, abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree, from its logical-axes tree and shapes."""
    return jax.tree.map(
        lambda axes, leaf: NamedSharding(mesh, logical_to_spec(axes, leaf.shape, mesh)),
        axes_tree, abstract_tree, is_leaf=_is_axes)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays: leading dim over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(ACTIVATION_RULES["act_batch"], *([None] * (ndim - 1))))


def unsharded_dims(axes_tree: Any, abstract_tree: Any, mesh: Mesh) -> list[str]:
    """'path: dim i (name→axis) size n' for every dim the rules shard but the mesh cannot."""
    from sgv_jax.models.params import path_str

    problems = []
    flat_axes = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_axes)[0]
    flat_abs = jax.tree.leaves(abstract_tree)
    for (path, axes), leaf in zip(flat_axes, flat_abs):
        for i, name in enumerate(axes):
            axis = RULES.get(name) if name else None
            if axis is not None and leaf.shape[i] % _mesh_axis_size(mesh, axis):
                problems.append(f"{path_str(path)}: dim {i} ({name}→{axis}) size {leaf.shape[i]}")
    return problems
