"""Choosing the next token from logits, with HF `generate` semantics. Pure functions of arrays.

Order as `GenerationMixin._get_logits_processor` applies them (transformers 5.24
`generation/utils.py`): repetition penalty (also for greedy), then, when sampling, temperature,
top-k, top-p. Greedy is `temperature == 0`, LLaVA's `do_sample = temperature > 0`
(REFERENCE.md §4.6).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static (hashable) sampling settings; one compiled decode loop per distinct value.

    Defaults are HF GenerationConfig's (`top_k=50`, `top_p=1.0`, `repetition_penalty=1.0`),
    which LLaVA's `run_llava`/`run_share4v` inherit when they only pass a temperature.
    """

    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 50  # 0: off; only used when sampling
    top_p: float = 1.0  # 1.0: off; only used when sampling
    repetition_penalty: float = 1.0  # 1.0: off; also applies to greedy decoding

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature {self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p {self.top_p} must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty {self.repetition_penalty} must be > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty != 1.0


GREEDY = SamplingConfig()


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF RepetitionPenaltyLogitsProcessor: for every token already in the sequence, negative
    scores are multiplied by `penalty` and the others divided by it. logits [B, V]; seen [B, V]."""
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
    """HF TopKLogitsWarper: drop scores below the k-th largest (ties with it are kept)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def apply_top_p(logits: jax.Array, p: float) -> jax.Array:
    """HF TopPLogitsWarper: sort ascending, drop tokens whose cumulative probability is
    <= 1 - p, always keep the most likely one."""
    order = jnp.argsort(logits, axis=-1)
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    drop_sorted = (cumulative <= 1.0 - p).at[..., -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def process_logits(logits: jax.Array, seen: jax.Array | None, cfg: SamplingConfig) -> jax.Array:
    """All processors in HF's order; the result is what greedy argmaxes or sampling draws from."""
    logits = logits.astype(jnp.float32)
    if cfg.uses_penalty:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = apply_top_p(logits, cfg.top_p)
    return logits


def choose_token(logits: jax.Array, seen: jax.Array | None, cfg: SamplingConfig,
                 key: jax.Array) -> jax.Array:
    """Next token per row. logits [B, V] → int32 [B]."""
    scores = process_logits(logits, seen, cfg)
    if cfg.greedy:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)


def choose_tokens_per_row(logits: jax.Array, temperature: jax.Array, top_p: jax.Array,
                          keys: jax.Array, top_k: int) -> jax.Array:
    """Next token per row when every row has its own settings (continuous batching: one
    request per row), as traced arrays so new values never recompile. logits [B, V];
    temperature, top_p [B]; keys [B] (typed PRNG keys). Rows with temperature 0 take the
    argmax; the others sample after temperature, top-k (static), top-p, in HF's order. No
    repetition penalty (the OpenAI API has none)."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    sampling = temperature > 0

    def sample(_):
        scores = logits / jnp.where(sampling, temperature, 1.0)[:, None]
        if top_k:
            scores = apply_top_k(scores, top_k)
        # HF skips the top-p warper at p = 1 (it would only drop zero-probability tokens).
        scores = jnp.where((top_p < 1.0)[:, None], apply_top_p(scores, top_p[:, None]), scores)
        return jax.vmap(jax.random.categorical)(keys, scores)

    # Skip the vocabulary sort entirely while every row decodes greedily.
    sampled = jax.lax.cond(jnp.any(sampling), sample, lambda _: greedy, None)
    return jnp.where(sampling, sampled, greedy).astype(jnp.int32)
