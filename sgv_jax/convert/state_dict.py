"""Apply a mapping table to a dict of tensors, with errors that name every offending key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sgv_jax.checkpoint_sgv import CheckpointError
from sgv_jax.convert.formats import IGNORED_KEYS, Transform
from sgv_jax.models.storage import stack, unstack


class ConversionError(CheckpointError):
    """Missing, unexpected or mis-shaped tensors; the message lists them all by name."""


def to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor or array as numpy, keeping the dtype (bf16 via ml_dtypes)."""
    if hasattr(tensor, "detach"):
        import torch

        t = tensor.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(tensor)


def check_keys(table: Mapping[str, tuple[str, Transform]], keys, source: str) -> None:
    keys = {k for k in keys if not IGNORED_KEYS.search(k)}
    missing = sorted(set(table) - keys)
    unexpected = sorted(keys - set(table))
    if missing or unexpected:
        lines = [f"{source} does not match the expected layout:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:20])
                         + (" …" if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" …" if len(unexpected) > 20 else ""))
        raise ConversionError("\n".join(lines))


def params_from_state_dict(state: Mapping[str, Any], table: Mapping[str, tuple[str, Transform]],
                           expected: dict[str, tuple], source: str = "state dict") -> dict:
    """Our (stacked) parameter tree from their tensors: checks names, transforms, checks
    shapes. `expected`: {per-block path: shape} (`storage.storage_shapes`)."""
    check_keys(table, state.keys(), source)
    flat, bad_shapes = {}, []
    for key, (path, tf) in table.items():
        value = tf.to_ours(to_numpy(state[key]))
        want = expected[path]
        if tuple(value.shape) != tuple(want):
            bad_shapes.append(f"{key} → {path}: expected {tuple(want)} (ours), found "
                              f"{tuple(value.shape)} after '{tf.name}'")
        flat[path] = value
    if bad_shapes:
        raise ConversionError(f"{source}: shape mismatches ({len(bad_shapes)}):\n  "
                              + "\n  ".join(bad_shapes))
    unfilled = sorted(set(expected) - set(flat))
    if unfilled:
        raise ConversionError(f"{source}: parameters not filled: {', '.join(unfilled)}")
    return stack(flat)


def state_dict_from_params(params: dict, table: Mapping[str, tuple[str, Transform]]
                           ) -> dict[str, np.ndarray]:
    """Their tensors from our parameters (the same table read backwards)."""
    flat = unstack(params)
    return {key: tf.to_theirs(np.asarray(flat[path])) for key, (path, tf) in table.items()}
