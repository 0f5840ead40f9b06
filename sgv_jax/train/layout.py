"""The training layout, derived once from (run config, model config, mesh): the abstract state,
the trainable/frozen partition, the shardings of parameters, optimizer state and batches, and the
jitted train and eval steps. The loop, the planner and the checkpointer all read it.

    state  = {"step", "params" (trainable, fp32 master), "opt_state" (their Adam moments)}
    frozen = the other parameters, in the compute dtype, no optimizer state
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgv_jax import sharding, xla_cpu
from sgv_jax.data.pipeline import MODEL_KEYS
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.train import optim
from sgv_jax.train import step as step_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _with_shardings(tree: Any, shardings: Any, dtype=None) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=s),
                        tree, shardings)


def _shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


@dataclasses.dataclass
class TrainLayout:
    model: VLMConfig
    mesh: Mesh
    trainable: optim.TrainableSet
    compute_dtype: Any
    accum_steps: int
    micro_batch: int  # samples per micro-batch over all devices
    length: int  # tokens per sample
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    abstract_state: dict  # ShapeDtypeStructs carrying their shardings
    abstract_frozen: dict
    train_step: Any  # jitted (state, frozen, batch) -> (state, metrics); state donated
    eval_step: Any  # jitted (trainable params, frozen, batch) -> (loss sum, tokens)

    @property
    def state_shardings(self) -> dict:
        return _shardings(self.abstract_state)

    @property
    def frozen_shardings(self) -> dict:
        return _shardings(self.abstract_frozen)

    def abstract_batch(self, accumulated: bool = True) -> dict:
        """The batch the step takes: [A, B, ...] micro-batches (or one [B, ...] batch)."""
        lead = (self.accum_steps, self.micro_batch) if accumulated else (self.micro_batch,)
        size = self.model.vision.image_size
        shapes = {"input_ids": (*lead, self.length), "attention_mask": (*lead, self.length),
                  "labels": (*lead, self.length), "pixel_values": (*lead, size, size, 3)}
        dtypes = {"pixel_values": jnp.float32}
        return {k: jax.ShapeDtypeStruct(
            shapes[k], dtypes.get(k, jnp.int32),
            sharding=sharding.batch_sharding(self.mesh, len(shapes[k]), accumulated))
            for k in MODEL_KEYS}

    def global_batch(self, host_batch: dict[str, np.ndarray], accumulated: bool) -> dict:
        """This host's numpy batch → global arrays sharded over (data, fsdp)."""
        arrays = {k: host_batch[k] for k in MODEL_KEYS}
        if accumulated:
            arrays = {k: v.reshape(self.accum_steps, -1, *v.shape[1:]) for k, v in arrays.items()}
        return {k: jax.make_array_from_process_local_data(
            sharding.batch_sharding(self.mesh, v.ndim, accumulated), v) for k, v in arrays.items()}

    def split(self, params: dict) -> tuple[dict, dict]:
        """(state, frozen) at step 0 from full parameters placed with `param_shardings`:
        the frozen half cast to the compute dtype, fresh Adam moments for the trainable one."""
        trainable, frozen = optim.split_trainable(params, self.trainable)
        cast = jax.jit(lambda f: llava.cast_floating(f, self.compute_dtype),
                       out_shardings=self.frozen_shardings)
        opt_state = jax.jit(self.optimizer.init,
                            out_shardings=self.state_shardings["opt_state"])(trainable)
        step = jax.device_put(np.int32(0), self.state_shardings["step"])
        return {"step": step, "params": trainable, "opt_state": opt_state}, cast(frozen)

    def model_flops_per_step(self) -> float:
        """Model FLOPs of one step over all devices: 6·N·tokens for trained weights (forward
        and two backward matmuls), 2·N·tokens for frozen ones (forward only); vision weights
        see patches, not text tokens. Recomputation (remat) is not counted, as MFU defines it."""
        def count(tree) -> int:
            return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))

        samples = self.accum_steps * self.micro_batch
        tokens = {"vision_tower": samples * (self.model.vision.num_patches + 1)}
        total = 0.0
        for half, factor in ((self.abstract_state["params"], 6), (self.abstract_frozen, 2)):
            for module, tree in half.items():
                total += factor * count(tree) * tokens.get(module, samples * self.length)
        return total

    def param_shardings(self) -> dict:
        """Shardings of the full (merged) parameter tree."""
        return llava.param_shardings(self.model, self.mesh)


def _moment_shardings(abs_opt: Any, param_shardings: dict, replicated) -> Any:
    """Each optimizer-state leaf whose key path ends in a parameter's path shards like that
    parameter; the rest (counters) are replicated. A path lookup rather than
    `optax.tree_map_params`, which trips over the `MaskedNode`s of `optax.partition` groups."""
    by_path = {tuple(k.key for k in path): sh for path, sh in
               jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def sharding_of(path, _):
        keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        for start in range(len(keys)):
            if keys[start:] in by_path:
                return by_path[keys[start:]]
        return replicated

    return jax.tree_util.tree_map_with_path(sharding_of, abs_opt)


def micro_batching(config, mesh: Mesh) -> tuple[int, int]:
    """(accumulation steps, samples per micro-batch over all devices)."""
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.per_device_batch_size * batch_devices
    if config.global_batch_size % micro:
        raise ValueError(f"global_batch_size {config.global_batch_size} is not a multiple of "
                         f"per_device_batch_size {config.per_device_batch_size} x {batch_devices} "
                         "data-parallel devices")
    return config.global_batch_size // micro, micro


def build_layout(config, model: VLMConfig, mesh: Mesh, total_steps: int) -> TrainLayout:
    """Everything a run's step needs, from abstract shapes only (nothing allocated)."""
    accum, micro = micro_batching(config, mesh)
    compute_dtype = DTYPES[config.compute_dtype]
    optimizer, schedule = optim.optimizer_for(config.optim, total_steps)
    trainable = optim.TrainableSet(tuple(config.trainable_modules), config.tune_vit_from_layer)

    params = _with_shardings(llava.abstract_params(model), llava.param_shardings(model, mesh))
    abs_train, abs_frozen = optim.split_trainable(params, trainable)
    abs_frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, compute_dtype,
                                                             sharding=x.sharding), abs_frozen)
    replicated = NamedSharding(mesh, P())
    abs_opt = jax.eval_shape(optimizer.init, abs_train)
    # Adam moments shard like their parameters; counters are replicated.
    opt_sh = _moment_shardings(abs_opt, _shardings(abs_train), replicated)
    abs_state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                 "params": abs_train, "opt_state": _with_shardings(abs_opt, opt_sh)}

    no_grad_below = (trainable.vit_boundary(model.vision.num_layers) if trainable.splits_vit
                     else 0)
    step_fn = step_lib.make_train_step(model, optimizer, schedule, compute_dtype, config.remat,
                                       config.freeze_pad_row, no_grad_below, config.seed)
    state_sh, frozen_sh = _shardings(abs_state), _shardings(abs_frozen)
    options = xla_cpu.options_for(mesh.devices.flat[0].platform,
                                  xla_cpu.train_options(compute_dtype))
    train_step = jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, None),
                         out_shardings=(state_sh, None), donate_argnums=(0,),
                         compiler_options=options)
    eval_step = jax.jit(step_lib.make_eval_step(model, compute_dtype), compiler_options=options)
    return TrainLayout(model, mesh, trainable, compute_dtype, accum, micro, config.data.max_length,
                       schedule, optimizer, abs_state, abs_frozen, train_step, eval_step)
