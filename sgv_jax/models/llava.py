"""The LLaVA / ShareGPT4V VLM: CLIP features → projector → written into the token embeddings at
the image positions → LLaMA decoder (REFERENCE.md §1.6–1.7).

`LlavaModel` is the NNX module; `build_model(cfg, rngs)` makes one. Outside the model, the
parameters travel as a plain nested dict of arrays (`nnx.to_pure_dict` of the Param state, the
layers stacked on a leading axis): the train step, the checkpointers and the generator pass that
dict through `jax.jit` and rebuild the module inside with `from_params` (`nnx.merge`), so every
function at the jit boundary stays pure.

A batch is a dict of arrays with static shapes:
  input_ids      int32 [B, L]   image positions hold `config.image_token_id` or IMAGE_TOKEN_INDEX
                                (one per image feature row)
  attention_mask int32 [B, L]   1 = real token (optional: all ones)
  pixel_values   float [B, H, W, 3] NHWC, CLIP-normalised (optional for text-only batches)
  labels         int32 [B, L]   unshifted, IGNORE_INDEX where masked (loss only)
  positions      int32 [B, L]   RoPE positions (optional: 0..L-1, as HF with right padding)
A sample without an image simply has no image positions: its (zero) image runs through the
tower, as in the reference, and its features are never read.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.models import nn
from sgv_jax.models.clip import CLIPVisionTower
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.cross_entropy import sliced_cross_entropy, summed_losses
from sgv_jax.models.llama import (
    LlamaModel,
    fuse_projections,
    iter_layers,
    split_projections,
    unstack_layers,
)
from sgv_jax.models.nn import REMAT_POLICIES, check_remat
from sgv_jax.models.projector import Projector
from sgv_jax.sharding import check_whole_heads, tree_shardings

__all__ = ["REMAT_POLICIES", "LlavaModel", "build_model", "check_remat"]

# Positions of the vocabulary projection the loss computes at once
# (`cross_entropy.sliced_cross_entropy`); a slice whose targets are all ignored is skipped.
LOSS_CHUNK = 256


def image_positions(input_ids: jax.Array, cfg: VLMConfig) -> jax.Array:
    """Where image features go: the model's image token, or the pipeline's placeholder
    (IMAGE_TOKEN_INDEX can never be a real token id, so it is always recognised). [B, L] bool"""
    return (input_ids == cfg.image_token_id) | (input_ids == IMAGE_TOKEN_INDEX)


def splice_image_embeddings(token_embeds: jax.Array, features: jax.Array,
                            is_image: jax.Array) -> jax.Array:
    """Write feature row j at the j-th image position of each sample (static shapes, a gather).

    token_embeds [B, L, D]; features [B, P, D]; is_image [B, L] bool."""
    row = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)  # [B, L]
    gathered = jnp.take_along_axis(features, row[..., None], axis=1)  # [B, L, D]
    return jnp.where(is_image[..., None], gathered.astype(token_embeds.dtype), token_embeds)


def default_positions(input_ids: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


class LlavaModel(nnx.Module):
    def __init__(self, cfg: VLMConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = CLIPVisionTower(cfg.vision, rngs)
        self.projector = Projector(cfg.projector_type, cfg.vision.hidden_size,
                                   cfg.text.hidden_size, cfg.projector_bias, rngs)
        self.language_model = LlamaModel(cfg.text, rngs, cfg.lora)

    def select_vision_features(self, pixel_values: jax.Array, remat: str = "none",
                               no_grad_below: int = 0) -> jax.Array:
        """`hidden_states[vision_feature_layer]`, CLS dropped for 'patch'. [B, P, D_vis]"""
        hidden = self.vision_tower.hidden_state(pixel_values, self.cfg.vision_layers_used,
                                                remat=remat, no_grad_below=no_grad_below)
        return hidden[:, 1:] if self.cfg.vision_feature_select == "patch" else hidden

    def embed_inputs(self, batch: dict, dtype, remat: str = "none", no_grad_below: int = 0,
                     out: dict | None = None) -> jax.Array:
        """Token embeddings with projected image features spliced in. [B, L, D]"""
        ids = batch["input_ids"]
        is_image = image_positions(ids, self.cfg)
        embeds = self.language_model.embed(jnp.where(is_image, 0, ids), dtype)
        if batch.get("pixel_values") is None:
            return embeds
        vis = self.select_vision_features(batch["pixel_values"].astype(dtype), remat, no_grad_below)
        feats = self.projector(vis)
        if out is not None:
            out["img/features"], out["img/projected"] = vis, feats
        return splice_image_embeddings(embeds, feats, is_image)

    def hidden_states(self, batch: dict, dtype, remat: str = "none", no_grad_below: int = 0,
                      out: dict | None = None, dropout_key: jax.Array | None = None
                      ) -> jax.Array:
        """The decoder's final-normed hidden states [B, L, D]; `dropout_key` only in training
        (the LoRA adapters' dropout)."""
        out = {} if out is None else out
        embeds = self.embed_inputs(batch, dtype, remat, no_grad_below, out)
        mask = batch.get("attention_mask")
        if mask is None:
            mask = jnp.ones(batch["input_ids"].shape, jnp.int32)
        positions = batch.get("positions")
        if positions is None:
            positions = default_positions(batch["input_ids"])
        hidden, _ = self.language_model.decode(embeds, positions, mask, remat=remat,
                                               dropout_key=dropout_key)
        out["llm/hidden"] = hidden
        return hidden

    def __call__(self, batch: dict, dtype=jnp.float32, remat: str = "none"
                 ) -> tuple[jax.Array, dict]:
        """Logits [B, L, V] (fp32) and named intermediates (big_vision style `out`)."""
        out: dict = {}
        hidden = self.hidden_states(batch, dtype, remat, out=out)
        return self.language_model.logits(hidden), out

    def loss_terms(self, batch: dict, dtype=jnp.float32, remat: str = "none",
                   no_grad_below: int = 0, chunk: int | None = None,
                   dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(sum of shifted token losses, counted tokens), by `cross_entropy.sliced_cross_entropy`:
        `chunk`-position slices (default LOSS_CHUNK; the whole sequence when it does not divide
        the length), skipped when no row has a label there, and never holding [B, L, V]
        logits."""
        hidden = self.hidden_states(batch, dtype, remat, no_grad_below, dropout_key=dropout_key)
        # Shift once: position t predicts labels[t+1]; the last position predicts nothing.
        labels = batch["labels"]
        targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], 1)
        length = hidden.shape[1]
        chunk = chunk or LOSS_CHUNK
        if length % chunk:
            chunk = length
        weight = self.language_model.head_weight(hidden.dtype)
        return sliced_cross_entropy(hidden, targets, weight, chunk)


def token_losses(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shifted cross-entropy: position t predicts labels[t+1]. Returns (sum of losses over
    counted tokens, number of counted tokens), so callers choose the normalisation."""
    total, counted, _, _ = summed_losses(logits[:, :-1].astype(jnp.float32), labels[:, 1:])
    return total, counted.sum()


# ----------------------------------------------------------------------------- building


def build_model(cfg: VLMConfig, rngs: nnx.Rngs) -> LlavaModel:
    """The NNX model with random weights. Eager sharding is off: shardings come from the
    logical axes through `init` (born sharded) or the train layout, so this also runs under
    `nnx.eval_shape` with no mesh set."""
    with nnx.use_eager_sharding(False):
        if getattr(cfg, "family", None) == "minigpt4":
            # Local import: MiniGPT4Model subclasses LlavaModel.
            from sgv_jax.models.minigpt4 import MiniGPT4Model

            return MiniGPT4Model(cfg, rngs)
        return LlavaModel(cfg, rngs)


@functools.cache
def _abstract(cfg: VLMConfig) -> tuple[Any, dict, dict]:
    """(graphdef, abstract params {path: ShapeDtypeStruct}, logical axes) — shapes only."""
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    axes = nnx.to_pure_dict(nnx.get_partition_spec(state))
    axes = jax.tree.map(tuple, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return graphdef, nnx.to_pure_dict(state), axes


def abstract_params(cfg: VLMConfig) -> dict:
    """The parameter tree's shapes and dtypes (fp32), from `nnx.eval_shape`; nothing allocated."""
    return _abstract(cfg)[1]


def param_axes(cfg: VLMConfig) -> dict:
    """Each parameter's logical axes, read from its `nnx.Param` metadata."""
    return _abstract(cfg)[2]


def from_params(cfg: VLMConfig, params: dict) -> LlavaModel:
    """The module over given parameter arrays (traced ones too: used inside `jax.jit`)."""
    return nnx.merge(_abstract(cfg)[0], params)


def unstack_decoder(params: dict) -> dict:
    """`params` with the decoder's stacked layers as a list of per-layer trees, each leaf its
    own buffer: what a program run once per decode step takes, since slicing a layer out of
    the stack inside the program copies its weights on every call (LlamaModel.split_layers).
    Copies the decoder's weights; drop the stacked tree afterwards. An unstacked tree is
    returned as it is."""
    lm = params["language_model"]
    if isinstance(lm["layers"], list):
        return params
    return {**params, "language_model": {**lm, "layers": unstack_layers(lm["layers"])}}


def fuse_decoder(params: dict) -> dict:
    """`unstack_decoder`'s tree with each layer's q|k|v and gate|up kernels concatenated
    (`llama.fuse_projections`): the layout decode programs read fastest. Outside `jax.jit`,
    once per loaded model (inside, it would copy the weights on every call). Not for a mesh
    that splits those kernels' output axis: the concatenation would not follow their shards.
    A stacked tree is sliced and fused one layer at a time, so the copy peaks where
    `unstack_decoder`'s does (the stacked tree + one unstacked copy)."""
    lm = params["language_model"]
    layers = lm["layers"] if isinstance(lm["layers"], list) else iter_layers(lm["layers"])
    return {**params, "language_model": {**lm, "layers": [fuse_projections(layer)
                                                          for layer in layers]}}


def from_unstacked(cfg: VLMConfig, params: dict) -> tuple[LlavaModel, list]:
    """The model and its decoder layers over `unstack_decoder`'s or `fuse_decoder`'s tree
    (inside `jax.jit`): pass the layers to `decode(layers=)`. The model's own stacked layers are
    stacked from the same trees; nothing that decodes with `layers=` reads them, and XLA drops
    the stacking."""
    layers = params["language_model"]["layers"]
    stacked = jax.tree.map(lambda *ws: jnp.stack(ws),
                           *[split_projections(layer, cfg.text) for layer in layers])
    model = from_params(cfg, {**params, "language_model": {**params["language_model"],
                                                           "layers": stacked}})
    return model, model.language_model.layers_from(layers)


def cast_floating(tree: Any, dtype) -> Any:
    """Cast floating leaves to the compute dtype (master weights stay fp32 outside)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def param_shardings(cfg: VLMConfig, mesh) -> dict:
    """Every parameter's NamedSharding from its logical axes; refuses a mesh that would split
    a head or leave a dimension undivided, naming it."""
    heads = {"text.num_heads": cfg.text.num_heads, "text.num_kv_heads": cfg.text.num_kv_heads,
             "vision.num_heads": cfg.vision.num_heads}
    if getattr(cfg, "family", None) == "minigpt4":
        heads["qformer.num_heads"] = cfg.qformer.num_heads
    check_whole_heads(heads, mesh)
    return tree_shardings(param_axes(cfg), abstract_params(cfg), mesh)


@functools.cache
def _initialisers(cfg: VLMConfig) -> dict:
    """{path tuple: (initialiser, stacked)} of every parameter, read from its Param metadata."""
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        meta = var.get_metadata()
        out[tuple(path)] = (meta[nn.INIT_FN], (meta.get("out_sharding") or (None,))[0] == nn.LAYERS)
    return out


def _draw(path: tuple, shape: tuple, initialiser, stacked: bool, key: jax.Array) -> jax.Array:
    """One parameter from a key folded from its storage path ('language_model/layers/3/mlp/
    up_proj/kernel' for block 3 of a stacked leaf), so a parameter's value depends on its name
    only: adding a module (LoRA adapters, a new head) or reordering construction changes no
    other weight, and the values equal the pre-NNX model's for the same seed."""
    def one(name: str, block_shape: tuple) -> jax.Array:
        leaf_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        return initialiser(leaf_key, block_shape, jnp.float32)

    names = [str(p) for p in path]
    if not stacked:
        return one("/".join(names), shape)
    at = names.index(nn.LAYERS) + 1  # the stacked module's `layers` component
    return jnp.stack([one("/".join(names[:at] + [str(i)] + names[at:]), shape[1:])
                      for i in range(shape[0])])


def init(cfg: VLMConfig, key: jax.Array, mesh=None, dtype=jnp.float32) -> dict:
    """Random parameters as a plain dict, each drawn from a key folded from its path (see
    `_draw`); with a mesh they are born sharded by the logical-axis rules (the full tree
    never exists on one device)."""
    initialisers = _initialisers(cfg)
    shapes = traverse_util.flatten_dict(abstract_params(cfg))

    def make(k):
        flat = {path: _draw(path, shapes[path].shape, *initialisers[path], k) for path in shapes}
        return cast_floating(traverse_util.unflatten_dict(flat), dtype)

    if mesh is None:
        return jax.jit(make)(key)
    return jax.jit(make, out_shardings=param_shardings(cfg, mesh))(key)


# ------------------------------------------------------------- functional API (pure, jittable)


def forward(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
            remat: str = "none") -> tuple[jax.Array, dict]:
    """Logits [B, L, V] (fp32) and named intermediates."""
    return from_params(cfg, cast_floating(params, dtype))(batch, dtype, remat)


def loss_terms(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
               remat: str = "none", no_grad_below: int = 0, chunk: int | None = None,
               dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    model = from_params(cfg, cast_floating(params, dtype))
    return model.loss_terms(batch, dtype, remat, no_grad_below, chunk, dropout_key)


def loss(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
         remat: str = "none") -> jax.Array:
    """Mean shifted cross-entropy over labels != IGNORE_INDEX in the batch."""
    total, count = loss_terms(params, cfg, batch, dtype, remat)
    return total / jnp.maximum(count, 1)


def select_vision_features(params: dict, cfg: VLMConfig, pixel_values: jax.Array,
                           remat: str = "none") -> jax.Array:
    return from_params(cfg, params).select_vision_features(pixel_values, remat)


def embed_inputs(params: dict, cfg: VLMConfig, batch: dict, dtype) -> jax.Array:
    """Token embeddings with image features spliced in; `params` already in `dtype`."""
    return from_params(cfg, params).embed_inputs(batch, dtype)
