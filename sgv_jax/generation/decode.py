"""Prefill + KV-cache decoding under `jax.jit` with static shapes.

`prefill` runs the (left-padded) prompt batch once through the VLM, filling a preallocated
cache of `L + max_new_tokens` slots, and picks the first new token. `decode_steps` then runs a
`lax.while_loop` of one-token steps on device until `stop_at` tokens exist or every row has hit
EOS; its state (cache included) is donated, so the cache is updated in place. Both compile once
per (batch, prompt length, max_new_tokens); the loop bound is a traced scalar, so the host may
run the loop in chunks (to check stop strings) without recompiling.

Rows are left-padded (`attention_mask` 0 on the left) so every row's last prompt token sits in
the last column; RoPE positions count real tokens only (cumsum(mask) - 1, as HF's
`prepare_inputs_for_generation`). After EOS a row emits `pad_id`, as HF does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sgv_jax import xla_cpu
from sgv_jax.generation.sampling import SamplingConfig, choose_token
from sgv_jax.models import llama, llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.sharding import constrain

State = dict  # cache, tokens [B, N], step, done [B], position [B], seen [B, V] | None, key

_STATIC = ("cfg", "sampling", "max_new_tokens", "eos_ids", "pad_id", "dtype")


def prompt_positions(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions of a left-padded batch: real tokens count from 0; pads get 0 (unread)."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)


def prompt_token_mask(input_ids: jax.Array, attention_mask: jax.Array, cfg: VLMConfig) -> jax.Array:
    """[B, V] bool: text tokens of the prompt, which the repetition penalty counts as already
    generated (HF penalises every id in `input_ids`). Pads and image positions are left out:
    they are not text (the reference's image id -200 is not even a vocabulary row). MiniGPT-4
    passes its prompt to `generate` as `inputs_embeds` only, so none of it is penalised there
    (MINIGPT4.md §2.3)."""
    vocab = cfg.text.vocab_size
    if getattr(cfg, "family", None) == "minigpt4":
        return jnp.zeros((input_ids.shape[0], vocab), jnp.bool_)
    counted = attention_mask.astype(bool) & ~llava.image_positions(input_ids, cfg)
    counted &= (input_ids >= 0) & (input_ids < vocab)
    rows = jnp.arange(input_ids.shape[0])[:, None]
    seen = jnp.zeros((input_ids.shape[0], vocab + 1), jnp.bool_)
    return seen.at[rows, jnp.where(counted, input_ids, vocab)].set(True)[:, :vocab]


def _mark_seen(seen: jax.Array | None, token: jax.Array) -> jax.Array | None:
    if seen is None:
        return None
    return seen.at[jnp.arange(token.shape[0]), token].set(True)


def _is_eos(token: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    return jnp.isin(token, jnp.asarray(eos_ids, jnp.int32))


def _constrain_cache(cache: dict) -> dict:
    # Decode batches are split over the data-parallel mesh axes like activations.
    return {**cache, "k": [llama.constrain_blocks(layer) for layer in cache["k"]],
            "v": [llama.constrain_blocks(layer) for layer in cache["v"]],
            "mask": constrain(cache["mask"], ("act_batch", "act_seq"))}


def model_and_layers(cfg: VLMConfig, params: dict) -> tuple:
    """The model and its decoder layers, one module each, for `decode(layers=)` (inside jit).
    The Generator's tree is already unstacked (each layer reads its own buffers); a stacked
    one is split here, which copies every layer's weights on each call (277 ms a call for
    bench_generate.py's 94M model on 2 cores)."""
    return llava.from_unstacked(cfg, llava.unstack_decoder(params))


@functools.partial(jax.jit, static_argnames=_STATIC)
def prefill(params: dict, batch: dict, key: jax.Array, *, cfg: VLMConfig,
            sampling: SamplingConfig, max_new_tokens: int, eos_ids: tuple[int, ...],
            pad_id: int, dtype: str) -> State:
    """Prompt pass. batch: input_ids/attention_mask [B, L] (left-padded), optional
    pixel_values [B, H, W, 3]. `params` are expected already in the compute dtype."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b, length = ids.shape
    model, layers = model_and_layers(cfg, params)
    lm = model.language_model
    embeds = model.embed_inputs(batch, dtype)  # [B, L, D]
    cache = _constrain_cache(llama.init_cache(cfg.text, b, length + max_new_tokens, dtype))
    positions = prompt_positions(mask)
    hidden, cache = lm.decode(embeds, positions, mask, cache, layers=layers,
                              read=llama.READ_INPUTS)
    # Left padding puts every row's last prompt token in the last column; only it is scored.
    logits = lm.logits(hidden[:, -1:])[:, 0]  # [B, V]
    seen = prompt_token_mask(ids, mask, cfg) if sampling.uses_penalty else None
    key, sub = jax.random.split(key)
    token = choose_token(logits, seen, sampling, sub)
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    return {"cache": cache, "tokens": tokens, "step": jnp.ones((), jnp.int32),
            "done": _is_eos(token, eos_ids), "position": positions[:, -1] + 1,
            "seen": _mark_seen(seen, token), "key": key}


def _loop_options(*_, dtype: str, **__) -> dict:
    return xla_cpu.decode_loop_options(dtype)


@functools.partial(xla_cpu.CpuOptionsJit, _loop_options, static_argnames=_STATIC,
                   donate_argnames=("state",))
def decode_steps(params: dict, state: State, stop_at: jax.Array, finished: jax.Array, *,
                 cfg: VLMConfig, sampling: SamplingConfig, max_new_tokens: int,
                 eos_ids: tuple[int, ...], pad_id: int, dtype: str) -> State:
    """One token per iteration until `state["step"] == min(stop_at, max_new_tokens)` or all
    rows are done. `finished` [B] bool marks rows the host stopped (stop strings). `state` is
    donated: the caller must use the returned one."""
    model, layers = model_and_layers(cfg, params)  # outside the loop: see split_layers
    lm = model.language_model
    stop_at = jnp.minimum(stop_at, max_new_tokens)
    state = {**state, "done": state["done"] | finished}

    def keep_going(s: State) -> jax.Array:
        return (s["step"] < stop_at) & ~jnp.all(s["done"])

    def step(s: State) -> State:
        last = jax.lax.dynamic_index_in_dim(s["tokens"], s["step"] - 1, axis=1)  # [B, 1]
        embeds = lm.embed(last, dtype)
        hidden, cache = lm.decode(embeds, s["position"][:, None], jnp.ones_like(last), s["cache"],
                                  layers=layers, read=llama.READ_FIRST)
        logits = lm.logits(hidden)[:, 0]
        key, sub = jax.random.split(s["key"])
        token = choose_token(logits, s["seen"], sampling, sub)
        token = jnp.where(s["done"], pad_id, token)
        tokens = jax.lax.dynamic_update_index_in_dim(s["tokens"], token, s["step"], axis=1)
        return {"cache": cache, "tokens": tokens, "step": s["step"] + 1,
                "done": s["done"] | _is_eos(token, eos_ids), "position": s["position"] + 1,
                "seen": _mark_seen(s["seen"], token), "key": key}

    return jax.lax.while_loop(keep_going, step, state)


def generate_tokens(params: dict, cfg: VLMConfig, batch: dict, sampling: SamplingConfig, *,
                    max_new_tokens: int, eos_ids: tuple[int, ...], pad_id: int,
                    dtype: str = "float32", key: jax.Array | None = None,
                    chunk: int | None = None,
                    stopped: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """New tokens [B, max_new_tokens] (pad after EOS, and after a stop; trailing columns pad
    when every row finished early).

    Without `stopped` the whole decode is one device call. With it, decoding runs `chunk`
    tokens at a time and `stopped(tokens so far [B, n]) -> bool [B]` marks rows to finish
    (stop strings); the host syncs once per chunk, never per token.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    static = {"cfg": cfg, "sampling": sampling, "max_new_tokens": max_new_tokens,
              "eos_ids": tuple(eos_ids), "pad_id": pad_id, "dtype": dtype}
    key = jax.random.key(0) if key is None else key
    state = prefill(params, batch, key, **static)
    if stopped is None:
        none_finished = np.zeros(batch["input_ids"].shape[0], bool)
        state = decode_steps(params, state, np.int32(max_new_tokens), none_finished, **static)
        return np.asarray(state["tokens"])
    chunk = chunk or 16
    step = 1
    while True:
        tokens = np.asarray(state["tokens"])
        done = np.asarray(state["done"]) | stopped(tokens[:, :step])
        if step >= max_new_tokens or done.all():
            break
        state = decode_steps(params, state, np.int32(step + chunk), done, **static)
        step = int(state["step"])
    return tokens
