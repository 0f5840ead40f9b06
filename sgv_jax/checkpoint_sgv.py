"""The `sgv` model checkpoint: everything training and generation need to start from weights.

    CKPT/config.json        {"format": "sgv", "version": 1, "model": VLMConfig.to_dict(),
                             "dtype": ..., "groups": [...], + optional extras such as
                             "hf_image_token_index" or "tokenizer"}
    CKPT/params/index.json  {group: {param path: {"shape": [...], "dtype": "float32"}}}
    CKPT/params/<group>/    one orbax PyTree checkpoint per group: one transformer block
                            ('language_model.layers.17') or one module ('projector.linear_1')
    CKPT/tokenizer/         tokenizer / processor files copied from the source, when it had them

Groups let conversion stream (one block in RAM, not 28 GB of fp32 7B) and let `load_sgv` restore
straight into sharded arrays group by group. Paths are per block (`models/storage.py`); the model's
stacked layers are cut into blocks on save and stacked again on load, so the format is the same
as before the layers were stacked and older checkpoints load unchanged. Everything is written to a sibling `<CKPT>.partial`
and renamed at the end, so a failed write never leaves a directory that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgv_jax.models.config import VLMConfig
from sgv_jax.models.storage import (
    flatten,
    group_of,
    iter_groups,
    split_block_path,
    stack,
    storage_shapes,
    unflatten,
)
from sgv_jax.paths import is_remote, resolve

FORMAT, VERSION = "sgv", 1
Group = tuple[str, dict[str, Any]]  # (group name, {per-block param path: array})


class CheckpointError(ValueError):
    """A checkpoint that is not what its config says: the message names every offending path."""


def read_sgv_config(path: str) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be an sgv checkpoint of a known version."""
    config_path = resolve(path) / "config.json"
    if not config_path.is_file():
        hint = " (a failed or unfinished conversion)" if path.endswith(".partial") else ""
        raise FileNotFoundError(f"{path} is not an sgv checkpoint{hint}: {config_path} is missing")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not an sgv checkpoint (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}); convert it with launch/convert.py first")
    if meta.get("version") != VERSION:
        raise ValueError(f"{config_path}: sgv version {meta.get('version')!r}; this code reads "
                         f"version {VERSION}")
    return meta


def read_param_index(path: str) -> dict[str, dict[str, dict]]:
    read_sgv_config(path)
    return json.loads((resolve(path) / "params" / "index.json").read_text())


def _cast(x: Any, dtype) -> Any:
    if dtype is None or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(dtype)


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def save_sgv(path: str, cfg: VLMConfig, params_or_groups: dict | Iterable[Group], dtype=None,
             tokenizer_dir: str | list[str] | None = None, extra: dict[str, Any] | None = None
             ) -> str:
    """Write an sgv checkpoint from a full (stacked) tree (numpy or jax arrays, sharded ones
    included) or from an iterator of (group, {path: array}) pairs for streamed conversion. Every parameter
    of `cfg` must be written once with its spec's shape. `tokenizer_dir` (a directory, or a list
    of files) is copied to `tokenizer/`. Returns `path`."""
    remote = is_remote(path)
    path = str(resolve(path))
    if resolve(path).exists():
        raise FileExistsError(f"{path} already exists; choose a new destination or remove it")
    groups = iter_groups(params_or_groups) if isinstance(params_or_groups, dict) \
        else params_or_groups
    expected = storage_shapes(cfg)
    # Object stores have no rename: there the files are written in place and config.json,
    # written last, is what makes the folder a checkpoint.
    partial = path if remote else path + ".partial"
    if jax.process_index() == 0 and not remote and os.path.exists(partial):
        shutil.rmtree(partial)  # leftovers of an earlier failed run
    _sync("sgv-clean")
    index: dict[str, dict[str, dict]] = {}
    checkpointer = ocp.StandardCheckpointer()
    for name, flat in groups:
        _check_group(name, flat, expected, index, path)
        flat = {p: _cast(v, dtype) for p, v in flat.items()}
        prefix = name.replace(".", "/") + "/"
        tree = unflatten({p[len(prefix):]: v for p, v in flat.items()})
        checkpointer.save(resolve(partial) / "params" / name, tree)
        checkpointer.wait_until_finished()  # bounds memory to one group
        index[name] = {p: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype)}
                       for p, v in flat.items()}
    unfilled = sorted(set(expected) - {p for g in index.values() for p in g})
    if unfilled:
        raise CheckpointError(f"{path}: parameters never written ({len(unfilled)}): "
                              + ", ".join(unfilled[:20]))
    if jax.process_index() == 0:
        dtypes = {d["dtype"] for g in index.values() for d in g.values()}
        meta = {"format": FORMAT, "version": VERSION, "model": cfg.to_dict(),
                "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
                "groups": list(index), **(extra or {})}
        _copy_tokenizer(tokenizer_dir, resolve(partial) / "tokenizer")
        (resolve(partial) / "params" / "index.json").write_text(json.dumps(index, indent=1))
        (resolve(partial) / "config.json").write_text(json.dumps(meta, indent=2))
        if not remote:
            os.replace(partial, path)  # config.json appears only once everything is written
    _sync("sgv-done")
    return path


def _copy_tokenizer(source: str | list[str] | None, target) -> None:
    files = []
    if isinstance(source, str):
        files = [os.path.join(root, f) for root, _, names in os.walk(source) for f in names]
        base = source
    elif source:
        files, base = list(source), None
    for file in files:
        rel = os.path.relpath(file, base) if base else os.path.basename(file)
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(file).copy(dest, overwrite=True)


def _check_group(name: str, flat: dict, expected: dict, index: dict, path: str) -> None:
    if name in index:
        raise CheckpointError(f"{path}: group {name} written twice")
    problems = []
    for p, v in flat.items():
        if p not in expected:
            problems.append(f"{p}: not a parameter of this model config")
        elif group_of(p) != name:
            problems.append(f"{p}: belongs to group {group_of(p)}, not {name}")
        elif tuple(v.shape) != tuple(expected[p]):
            problems.append(f"{p}: expected shape {tuple(expected[p])}, found {tuple(v.shape)}")
    if problems:
        raise CheckpointError(f"{path}: group {name}:\n  " + "\n  ".join(problems))


def iter_sgv_groups(path: str, dtype=None) -> Iterator[Group]:
    """(group, {full param path: numpy array}) one group at a time, in the written order."""
    index = read_param_index(path)
    checkpointer = ocp.StandardCheckpointer()
    for name in index:
        restored = checkpointer.restore(resolve(path) / "params" / name)
        prefix = name.replace(".", "/") + "/"
        yield name, {prefix + p: _cast(np.asarray(v), dtype) for p, v in flatten(restored).items()}


def load_sgv(path: str, shardings: dict | None = None, dtype=None) -> tuple[VLMConfig, dict]:
    """(model config, stacked parameters). With `shardings` (a tree of `NamedSharding` shaped
    like the parameters) each group is restored directly into sharded arrays and the blocks are
    stacked into sharded arrays; otherwise jax arrays on the default device. `dtype` casts
    floating parameters on restore."""
    meta = read_sgv_config(path)
    cfg = VLMConfig.from_dict(meta["model"])
    index = read_param_index(path)
    stacked_shardings = flatten(shardings) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def block_sharding(p: str):
        stacked_path, block = split_block_path(p)
        sh = stacked_shardings.get(stacked_path)
        if sh is None:
            return default
        return sh if block is None else NamedSharding(sh.mesh, P(*sh.spec[1:]))

    checkpointer = ocp.StandardCheckpointer()
    flat: dict[str, Any] = {}
    for name, leaves in index.items():
        prefix = name.replace(".", "/") + "/"
        target = {}
        for p, info in leaves.items():
            stored = jnp.dtype(info["dtype"])
            want = dtype if dtype is not None and jnp.issubdtype(stored, jnp.floating) else stored
            target[p[len(prefix):]] = jax.ShapeDtypeStruct(
                tuple(info["shape"]), want, sharding=block_sharding(p))
        restored = checkpointer.restore(resolve(path) / "params" / name, unflatten(target))
        flat.update({prefix + p: v for p, v in flatten(restored).items()})

    def stack_blocks(stacked_path: str, blocks: list) -> jax.Array:
        sh = stacked_shardings.get(stacked_path, default)
        return jax.jit(lambda *b: jnp.stack(b), out_shardings=sh)(*blocks)

    return cfg, stack(flat, stack_blocks)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.sync_global_processes(name)
