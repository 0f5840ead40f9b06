"""Logical axis names → mesh axes, and the shardings derived from them.

Parameters and activations name *logical* axes; one strict table maps each name to a mesh axis of
the (`data`, `fsdp`, `tensor`) mesh. Unknown names are errors, not silent pass-throughs. A
parameter dimension that its mesh axis does not divide is refused, naming the parameter, the
dimension and the axis (choose another mesh); activation constraints replicate such a dimension
instead (a batch of 1 on a data-parallel mesh is legitimate).
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
    "layers": None,  # the stacking axis of scanned layers: every device holds its share of each
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "norm": None,
    "vis_embed": "fsdp",
    "vis_mlp": "tensor",
    "vis_heads": "tensor",
    "lora_rank": None,  # the adapter rank (128 at most): small, kept whole on every device
    # MiniGPT-4's Q-Former (BERT-base): its own names, so its 768 never meets the ViT's 1408.
    "qf_embed": "fsdp",
    "qf_mlp": "tensor",
    "qf_heads": "tensor",
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
                    mesh=None, strict_name: str | None = None) -> P:
    """PartitionSpec for logical names. A dim its mesh axis does not divide is refused when
    `strict_name` names the array (a parameter), else replicated (activations)."""
    out = []
    for i, name in enumerate(logical):
        if name is None:
            out.append(None)
            continue
        if name not in RULES:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(RULES)}")
        axis = RULES[name]
        if axis is not None and shape is not None and mesh is not None:
            size = _mesh_axis_size(mesh, axis)
            if shape[i] % size:
                if strict_name is not None:
                    raise ValueError(
                        f"{strict_name}: dimension {i} ({name}, size {shape[i]}) is not divisible "
                        f"by mesh axis {axis}={size}; choose a mesh whose {axis} size divides it")
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
    """NamedShardings for a parameter tree, from its logical-axes tree and shapes; refuses a
    dimension the mesh cannot divide, naming the parameter."""
    return jax.tree_util.tree_map_with_path(
        lambda path, axes, leaf: NamedSharding(mesh, logical_to_spec(
            axes, leaf.shape, mesh, strict_name=jax.tree_util.keystr(path, simple=True, separator="/"))),
        axes_tree, abstract_tree, is_leaf=_is_axes)


def check_whole_heads(head_counts: dict[str, int], mesh: Mesh) -> None:
    """Tensor parallelism splits whole attention heads: a head count the `tensor` axis does not
    divide is refused (its projection width may still divide, e.g. 40 x 128 on 16 devices)."""
    tensor = mesh.shape["tensor"]
    for name, count in head_counts.items():
        if count % tensor:
            raise ValueError(f"{name} = {count} is not divisible by mesh axis tensor={tensor}: "
                             "tensor parallelism splits whole heads; choose a tensor size that "
                             f"divides {count}")


def batch_sharding(mesh: Mesh, ndim: int, accumulated: bool = False) -> NamedSharding:
    """Batch arrays: the sample dim over (data, fsdp), the rest replicated; with
    `accumulated` a leading micro-batch axis [A, B, ...] stays whole."""
    lead = (None,) if accumulated else ()
    rest = [None] * (ndim - len(lead) - 1)
    return NamedSharding(mesh, P(*lead, ACTIVATION_RULES["act_batch"], *rest))
