"""Check source weight files against mapping tables, then stream them into parameter groups.

Everything that can be checked from headers (key names, shapes, layer counts) is checked before
any tensor is read, so a bad source fails at once and lists every problem. Tensors are then read
one at a time in file order; a group (one block / module, `formats.group_of`) is handed on as
soon as its last tensor arrives, so memory holds one mapped file plus the groups in flight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from sgv_jax.convert.formats import Transform
from sgv_jax.convert.sources import WeightFiles
from sgv_jax.convert.state_dict import ConversionError, check_keys
from sgv_jax.models.storage import group_of


@dataclasses.dataclass
class Part:
    """One source of tensors (a directory or file) and the table that maps its keys."""

    files: WeightFiles
    table: dict[str, tuple[str, Transform]]
    label: str  # names the source in errors: "CLIP dir /data/clip (CLIP vision model)"
    skip: Callable[[str], bool] = lambda key: False  # keys deliberately left unused

    def used_keys(self) -> list[str]:
        return [k for k in self.files.key_file if not self.skip(k)]


def check_parts(parts: list[Part], expected: dict[str, tuple], fresh: dict[str, Any] | None = None) -> None:
    """Names, shapes and coverage: every parameter comes from exactly one place."""
    owner: dict[str, str] = {p: "freshly initialised" for p in fresh or {}}
    for part in parts:
        check_keys(part.table, part.used_keys(), part.label)
        bad = []
        for key, (path, tf) in part.table.items():
            if path not in expected:
                raise ConversionError(f"{part.label}: {key} maps to {path}, not a parameter")
            if path in owner:
                raise ConversionError(f"{path} comes from both {owner[path]} and {part.label}")
            owner[path] = part.label
            want = tf.theirs_shape(tuple(expected[path]))
            found = part.files.shapes[key]
            if tuple(found) != tuple(want):
                bad.append(f"{key}: expected {want}, found {tuple(found)} "
                           f"(in {part.files.key_file[key]})")
        if bad:
            raise ConversionError(f"{part.label}: shape mismatches ({len(bad)}):\n  "
                                  + "\n  ".join(bad))
    unfilled = sorted(set(expected) - set(owner))
    if unfilled:
        raise ConversionError(f"no source provides ({len(unfilled)}): " + ", ".join(unfilled[:20]))


def stream_groups(parts: list[Part], expected: dict[str, tuple], dtype=None,
                  fresh: dict[str, np.ndarray] | None = None, progress: bool = True
                  ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(group, {param path: array}) as groups complete; call `check_parts` first."""
    members: dict[str, int] = {}
    for path in expected:
        members[group_of(path)] = members.get(group_of(path), 0) + 1
    pending: dict[str, dict[str, np.ndarray]] = {}

    def add(path: str, value: np.ndarray):
        if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
            value = value.astype(dtype, copy=False)
        group = group_of(path)
        pending.setdefault(group, {})[path] = value
        if len(pending[group]) == members[group]:
            return group, pending.pop(group)
        return None

    total = sum(len(p.table) for p in parts) + len(fresh or {})
    bar = _progress(total, progress)
    for path, value in (fresh or {}).items():
        bar.update(1)
        if done := add(path, value):
            yield done
    for part in parts:
        for file in part.files.files:
            with part.files.open(file) as getters:
                for key, get in getters.items():
                    if key not in part.table:
                        continue  # ignored buffers, skipped keys (checked in check_parts)
                    path, tf = part.table[key]
                    bar.set_postfix_str(key[-40:], refresh=False)
                    bar.update(1)
                    if done := add(path, tf.to_ours(get())):
                        yield done
    bar.close()
    if pending:
        raise ConversionError("incomplete parameter groups after reading every file: "
                              + ", ".join(sorted(pending)))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="tensor", desc="converting", disable=not enabled,
                mininterval=1.0)
