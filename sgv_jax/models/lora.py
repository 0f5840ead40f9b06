"""LoRA adapters as parameter-tree operations: pick them out, give a base model fresh ones,
merge them into the base weights (PEFT's `merge_and_unload`, LORA.md §5).

The adapters live beside the base kernels of the adapted linears
(`language_model/layers/self_attn/q_proj/{kernel,lora_a,lora_b}`, stacked over layers like
every decoder weight); see `nn.LoRALinear` for the math.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.nn import LORA_PARAMS
from sgv_jax.models.storage import flatten, unflatten


def is_adapter_path(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in LORA_PARAMS


def adapters_of(params: dict) -> dict:
    """The adapter leaves of a (nested) parameter tree."""
    return unflatten({p: v for p, v in flatten(params).items() if is_adapter_path(p)})


def without_adapters(params: dict) -> dict:
    return unflatten({p: v for p, v in flatten(params).items() if not is_adapter_path(p)})


def adapter_count(cfg: VLMConfig) -> int:
    """Adapter parameters of a config, from abstract shapes (LORA.md §1.4)."""
    return int(sum(np.prod(v.shape, dtype=np.int64)
                   for v in flatten(adapters_of(llava.abstract_params(cfg))).values()))


def fresh_adapters(cfg: VLMConfig, key: jax.Array, mesh=None) -> dict:
    """PEFT-initialised adapters (A uniform, B zero) for `cfg.lora`; under jit only the adapter
    initialisers survive dead-code elimination, so a 7B base is never materialised."""

    def make(k):
        state = nnx.to_pure_dict(nnx.state(llava.build_model(cfg, nnx.Rngs(k))))
        return adapters_of(state)

    if mesh is None:
        return jax.jit(make)(key)
    shardings = adapters_of(llava.param_shardings(cfg, mesh))
    return jax.jit(make, out_shardings=shardings)(key)


def with_fresh_adapters(params: dict, cfg: VLMConfig, key: jax.Array, mesh=None) -> dict:
    """A base tree (any adapters it had dropped) completed with fresh adapters for `cfg.lora`."""
    flat = flatten(without_adapters(params))
    flat.update(flatten(fresh_adapters(cfg, key, mesh)))
    return unflatten(flat)


def merged(params: dict, cfg: VLMConfig) -> dict:
    """The base tree with every adapter folded in: kernel + scale · lora_a @ lora_b, formed in
    fp32 and cast back to the kernel's dtype (LORA.md §5); adapters removed."""
    if cfg.lora is None:
        return params
    flat = flatten(params)
    out = {p: v for p, v in flat.items() if not is_adapter_path(p)}
    for path in flat:
        if path.endswith("/lora_a"):
            module = path[:-len("/lora_a")]
            kernel = flat[module + "/kernel"]
            a = jnp.asarray(flat[path], jnp.float32)
            b = jnp.asarray(flat[module + "/lora_b"], jnp.float32)
            delta = cfg.lora.scale * jnp.einsum("...ir,...ro->...io", a, b,
                                                precision=jax.lax.Precision.HIGHEST)
            out[module + "/kernel"] = (jnp.asarray(kernel, jnp.float32) + delta).astype(kernel.dtype)
    return unflatten(out)
