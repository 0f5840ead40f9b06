"""The LLaVA / ShareGPT4V VLM: CLIP features → projector → written into the token embeddings at
the image positions → LLaMA decoder (REFERENCE.md §1.6–1.7).

Pure functions of (params, config, batch). A batch is a dict of arrays with static shapes:
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

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sgv_jax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from sgv_jax.models import clip, llama, projector
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.params import cast_floating

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def param_specs(cfg: VLMConfig) -> dict:
    return {
        "vision_tower": clip.param_specs(cfg.vision),
        "projector": projector.param_specs(cfg.projector_type, cfg.vision.hidden_size,
                                           cfg.text.hidden_size, cfg.projector_bias),
        "language_model": llama.param_specs(cfg.text),
    }


def remat_wrapper(remat: str) -> Callable:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: use one of {sorted(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[remat]
    if policy is None:
        return lambda f: f
    return lambda f: jax.checkpoint(f, policy=policy)


def select_vision_features(params: dict, cfg: VLMConfig, pixel_values: jax.Array,
                           remat: str = "none") -> jax.Array:
    """`hidden_states[vision_feature_layer]`, CLS dropped for 'patch'. [B, P, D_vis]"""
    hidden = clip.hidden_state(params["vision_tower"], cfg.vision, pixel_values,
                               cfg.vision_layers_used, remat_wrapper(remat))
    return hidden[:, 1:] if cfg.vision_feature_select == "patch" else hidden


def image_features(params: dict, cfg: VLMConfig, pixel_values: jax.Array,
                   remat: str = "none") -> jax.Array:
    """Projected image features in the decoder's space. [B, P, D]"""
    feats = select_vision_features(params, cfg, pixel_values, remat)
    return projector.project(params["projector"], cfg.projector_type, feats)


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


def embed_inputs(params: dict, cfg: VLMConfig, batch: dict, dtype, remat: str = "none",
                 out: dict | None = None) -> jax.Array:
    """Token embeddings with projected image features spliced in. [B, L, D]"""
    ids = batch["input_ids"]
    is_image = image_positions(ids, cfg)
    lm = params["language_model"]
    embeds = llama.embed_tokens(lm, jnp.where(is_image, 0, ids), dtype)
    if batch.get("pixel_values") is None:
        return embeds
    vis = select_vision_features(params, cfg, batch["pixel_values"].astype(dtype), remat)
    feats = projector.project(params["projector"], cfg.projector_type, vis)
    if out is not None:
        out["img/features"], out["img/projected"] = vis, feats
    return splice_image_embeddings(embeds, feats, is_image)


def default_positions(input_ids: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


def hidden_states(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
                  remat: str = "none", out: dict | None = None) -> jax.Array:
    """The decoder's final-normed hidden states [B, L, D] (params already in `dtype`)."""
    out = {} if out is None else out
    embeds = embed_inputs(params, cfg, batch, dtype, remat, out)
    mask = batch.get("attention_mask")
    if mask is None:
        mask = jnp.ones(batch["input_ids"].shape, jnp.int32)
    positions = batch.get("positions")
    if positions is None:
        positions = default_positions(batch["input_ids"])
    hidden, _ = llama.decode(params["language_model"], cfg.text, embeds, positions, mask,
                             remat_block=remat_wrapper(remat))
    out["llm/hidden"] = hidden
    return hidden


def forward(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
            remat: str = "none") -> tuple[jax.Array, dict]:
    """Logits [B, L, V] (fp32) and named intermediates (big_vision style `out`)."""
    params = cast_floating(params, dtype)
    out: dict = {}
    hidden = hidden_states(params, cfg, batch, dtype, remat, out)
    return llama.logits(params["language_model"], cfg.text, hidden), out


def loss_terms(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
               remat: str = "none", chunk: int = 256) -> tuple[jax.Array, jax.Array]:
    """(sum of shifted token losses, counted tokens) without materialising [B, L, V] logits:
    the vocabulary projection and cross-entropy run over `chunk`-token slices, each
    rematerialised in the backward pass (fp32 logits of 16 x 2048 x 32000 would be 4 GB)."""
    params = cast_floating(params, dtype)
    hidden = hidden_states(params, cfg, batch, dtype, remat)
    lm = params["language_model"]
    # Shift once: position t predicts labels[t+1]; the last position predicts nothing.
    targets = jnp.concatenate([batch["labels"][:, 1:],
                               jnp.full_like(batch["labels"][:, :1], IGNORE_INDEX)], axis=1)
    length = hidden.shape[1]
    if length <= chunk or length % chunk:
        return _chunk_losses(lm, cfg, hidden, targets)

    @jax.checkpoint
    def one(carry, xs):
        h, t = xs
        total, count = _chunk_losses(lm, cfg, h, t)
        return (carry[0] + total, carry[1] + count), None

    b, d = hidden.shape[0], hidden.shape[2]
    hs = hidden.reshape(b, length // chunk, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, length // chunk, chunk).swapaxes(0, 1)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (total, count), _ = jax.lax.scan(one, init, (hs, ts))
    return total, count


def _chunk_losses(lm: dict, cfg: VLMConfig, hidden: jax.Array, targets: jax.Array):
    logits = llama.logits(lm, cfg.text, hidden)
    counted = targets != IGNORE_INDEX
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(counted, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(counted, logz - picked, 0.0).sum(), counted.sum()


def token_losses(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shifted cross-entropy: position t predicts labels[t+1]. Returns (sum of losses over
    counted tokens, number of counted tokens), so callers choose the normalisation."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(counted, targets, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(counted, logz - picked, 0.0)
    return losses.sum(), counted.sum()


def loss(params: dict, cfg: VLMConfig, batch: dict, dtype=jnp.float32,
         remat: str = "none") -> jax.Array:
    """Mean shifted cross-entropy over labels != IGNORE_INDEX in the batch."""
    total, count = loss_terms(params, cfg, batch, dtype, remat)
    return total / jnp.maximum(count, 1)


def init(cfg: VLMConfig, key: jax.Array, mesh=None, dtype=jnp.float32) -> dict:
    """Random parameters; with a mesh they are born sharded by the logical-axis rules (the
    full tree never exists on one device)."""
    from sgv_jax.models.params import abstract_params, init_params, logical_axes
    from sgv_jax.sharding import tree_shardings

    specs = param_specs(cfg)
    if mesh is None:
        return jax.jit(lambda k: init_params(specs, k, dtype))(key)
    shardings = tree_shardings(logical_axes(specs), abstract_params(specs, dtype), mesh)
    return jax.jit(lambda k: init_params(specs, k, dtype), out_shardings=shardings)(key)
