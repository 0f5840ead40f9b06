"""Device side of continuous batching: a fixed set of batch slots sharing one KV cache.

Every slot holds one request. Its cache row has its own write index (`llama.init_cache(...,
per_slot=True)`), so requests of any prompt length decode side by side and a finished slot
is refilled while the others keep going. Two jitted programs, both donating the slot state so
the cache is updated in place, and both reading the decoder's layers from per-layer buffers
(`llava.fuse_decoder`, q|k|v and gate|up concatenated; the engine keeps that copy):

  prefill_slot  one prompt (right-padded to a length bucket) through the VLM into one slot's
                cache row, and its first token. Compiled once per (bucket, with/without image).
  decode_step   one token for each of the first `rows` slots, attending to the first
                `attend` cache positions (the longest running request's, rounded up to a
                whole cache block, a quarter of the context). `rows` is the smallest row
                bucket (1, 8, 64, ..., and all slots) holding every running request, so one
                client pays for one row, not for every slot. One program per (rows, block
                count), all compiled by `warm_up`. The cache keeps each layer's slots in
                per-block buffers (llama.init_cache), so a step reads the blocks it attends to
                in place. Compiled with `xla_cpu.decode_step_options` (on CPU in fp32
                without YNNPACK's dot fusions, which are slow for few-row steps; in bf16
                with them, the only bf16 dots XLA:CPU has).

Sampling settings and seeds are traced arrays ([B] per slot), so a request never recompiles.
Rows sample with key fold_in(key(seed), i) for their i-th token: a seeded request gives the
same answer whatever else shares the batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgv_jax import xla_cpu
from sgv_jax.generation import prompts
from sgv_jax.generation.generator import Generator
from sgv_jax.generation.sampling import choose_tokens_per_row
from sgv_jax.models import llama, llava
from sgv_jax.models.config import VLMConfig

SlotState = dict  # cache (index [B]), token [B], position [B], step [B], temperature [B],
#                   top_p [B], seed [B]

_STATIC = ("cfg", "dtype", "top_k")
# Cache blocks per slot, and so decode programs: attention reads the used blocks only. A 32-slot
# step on bench_serve.py's model spent most of its time in attention over all 512 slots.
ATTEND_BUCKETS = 4


@dataclasses.dataclass(frozen=True)
class SlotRequest:
    """What the device needs to start one request."""

    ids: np.ndarray  # [n] prompt ids, image positions expanded (prompts.encode_prompt)
    pixels: np.ndarray | None  # [H, W, 3] preprocessed, or None for a text-only prompt
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def init_slots(cfg: VLMConfig, slots: int, context: int, block: int, dtype: str,
               device: jax.Device) -> SlotState:
    """Empty slots of `context` cache positions (a multiple of `block`), committed to `device`
    as the programs' outputs are (an uncommitted first state would compile every program a
    second time)."""

    def zeros():  # one buffer per leaf: the state is donated, and a shared buffer cannot be
        return jnp.zeros((slots,), jnp.int32)

    state = {"cache": llama.init_cache(cfg.text, slots, context, dtype, per_slot=True,
                                       block=block),
             "token": zeros(), "position": zeros(), "step": zeros(),
             "temperature": jnp.zeros((slots,), jnp.float32),
             "top_p": jnp.ones((slots,), jnp.float32), "seed": jnp.zeros((slots,), jnp.uint32)}
    return jax.device_put(state, device)


def _row_keys(seed: jax.Array, step: jax.Array) -> jax.Array:
    return jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(seed, step)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def prefill_slot(params: dict, state: SlotState, slot: jax.Array, ids: jax.Array,
                 length: jax.Array, pixels: jax.Array | None, temperature: jax.Array,
                 top_p: jax.Array, seed: jax.Array, *, cfg: VLMConfig, dtype: str,
                 top_k: int) -> tuple[SlotState, jax.Array]:
    """ids [1, Lb] right-padded (`length` real tokens); pixels [1, H, W, 3] or None.
    Returns the state with `slot` holding this prompt, and the prompt's first new token."""
    model, layers = llava.from_unstacked(cfg, params)
    lm, text = model.language_model, cfg.text
    bucket = ids.shape[1]
    valid = (jnp.arange(bucket) < length)[None]  # [1, Lb]
    batch = {"input_ids": ids, "attention_mask": valid.astype(jnp.int32)}
    if pixels is not None:
        batch["pixel_values"] = pixels
    embeds = model.embed_inputs(batch, dtype)
    # Right padding: real tokens take positions 0..n-1 and slots 0..n-1, so decoding goes on
    # at slot n (the pads after it are masked and overwritten as the answer grows).
    row = llama.init_cache(text, 1, bucket, dtype)
    hidden, row = lm.decode(embeds, llava.default_positions(ids), valid, row, layers=layers,
                            read=llama.READ_INPUTS)
    logits = lm.logits(jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1, 1))
    seed = seed.astype(jnp.uint32)
    token = choose_tokens_per_row(logits[:, 0], temperature[None], top_p[None],
                                  _row_keys(seed[None], jnp.zeros((1,), jnp.int32)), top_k)[0]

    cache = state["cache"]
    size = llama.cache_block_size(cache)

    def into_slot(blocks: list[jax.Array], written: jax.Array) -> list[jax.Array]:
        """The prompt's keys or values of one layer [1, K, Lb, H] into the slot's row of the
        blocks it spans (static: Lb is the bucket)."""
        blocks = list(blocks)
        for j in range(-(-bucket // size)):
            piece = written[:, :, j * size:(j + 1) * size]
            blocks[j] = jax.lax.dynamic_update_slice(blocks[j], piece, (slot, 0, 0, 0))
        return blocks

    kv = {n: [into_slot(cache[n][i], row[n][i][0]) for i in range(text.num_layers)]
          for n in ("k", "v")}
    mask_row = jnp.zeros((1, cache["mask"].shape[1]), jnp.bool_).at[:, :bucket].set(valid)
    cache = {**kv, "mask": jax.lax.dynamic_update_slice(cache["mask"], mask_row, (slot, 0)),
             "index": cache["index"].at[slot].set(length)}
    put = lambda name, value: state[name].at[slot].set(value)
    return {"cache": cache, "token": put("token", token), "position": put("position", length),
            "step": put("step", 1), "temperature": put("temperature", temperature),
            "top_p": put("top_p", top_p), "seed": put("seed", seed)}, token


def row_buckets(slots: int) -> list[int]:
    """Row counts a decode step is compiled for: powers of 8 below `slots`, then `slots`."""
    buckets = [1]
    while buckets[-1] * 8 < slots:
        buckets.append(buckets[-1] * 8)
    return buckets + [slots] if slots > 1 else buckets


def _step_options(*_, dtype: str, **__) -> dict:
    return xla_cpu.decode_step_options(dtype)


@functools.partial(xla_cpu.CpuOptionsJit, _step_options,
                   static_argnames=(*_STATIC, "attend", "rows"),
                   donate_argnames=("state",))
def decode_step(params: dict, state: SlotState, active: jax.Array, *, cfg: VLMConfig,
                dtype: str, top_k: int, attend: int, rows: int) -> tuple[SlotState, jax.Array]:
    """Feeds each of the first `rows` slots its last token; returns the state and their next
    tokens [rows]. `active` [rows] marks the running ones: the others compute too (static
    shapes) but neither advance nor matter, and the slots past `rows` are left as they are.
    Every active slot's cache index must be below `attend`."""
    model, layers = llava.from_unstacked(cfg, params)
    lm = model.language_model
    # The cache stays whole (the decoder writes and reads its first rows in place: slicing
    # the blocks out and back copied every block); the small per-slot vectors are sliced.
    head = {name: value[:rows] for name, value in state.items() if name != "cache"}
    last = head["token"][:, None]  # [rows, 1]
    hidden, cache = lm.decode(lm.embed(last, dtype), head["position"][:, None],
                              jnp.ones_like(last), state["cache"], attend=attend, layers=layers)
    logits = lm.logits(hidden)[:, 0]
    token = choose_tokens_per_row(logits, head["temperature"], head["top_p"],
                                  _row_keys(head["seed"], head["step"]), top_k)
    advance = lambda new, old: old.at[:rows].set(jnp.where(active, new[:rows], old[:rows]))
    cache = {**cache, "index": advance(cache["index"], state["cache"]["index"])}
    return {**state, "cache": cache, "token": advance(token, state["token"]),
            "position": advance(head["position"] + 1, state["position"]),
            "step": advance(head["step"] + 1, state["step"])}, token


class Engine:
    """The slot state of one model on this host, and the calls that advance it.

    `context` (default: the model's max_position_embeddings) is every slot's cache length: a
    request's prompt plus its answer must fit in it. Prompts are right-padded to a multiple of
    `bucket` tokens, so prompts of similar length share one compiled prefill. `device`
    (default: the first local one) holds the slots and a copy of the weights.
    """

    def __init__(self, generator: Generator, slots: int, context: int | None = None,
                 bucket: int = 32, top_k: int = 50, device: jax.Device | None = None):
        if generator.mesh is not None:
            raise ValueError("serving runs on one device; build the Generator without a mesh")
        self.generator = generator
        self.device = device or jax.local_devices()[0]
        # Per-layer weight buffers (llava.fuse_decoder): a 32-slot step reading the stacked
        # ones spent most of its time copying layers out of the stack.
        self.params = jax.device_put(llava.fuse_decoder(generator.params), self.device)
        self.cfg = generator.cfg
        self.slots = slots
        self.row_buckets = row_buckets(slots)
        positions = self.cfg.text.max_position_embeddings
        if context is not None and not 1 < context <= positions:
            raise ValueError(f"context {context}: must be in 2..{positions} (the model's "
                             "max_position_embeddings)")
        self.context = context or positions
        self.bucket = bucket
        self.static = {"cfg": self.cfg, "dtype": generator.dtype, "top_k": top_k}
        # Cache blocks of a quarter of the context; the last may reach past it (never read).
        self.block = -(-self.context // ATTEND_BUCKETS)
        self.reset()

    def reset(self) -> None:
        """Fresh (empty) slots, e.g. after a failed device call left the donated state unusable."""
        self.state = init_slots(self.cfg, self.slots, self.block * ATTEND_BUCKETS, self.block,
                                self.generator.dtype, self.device)
        self.index = np.zeros(self.slots, np.int64)  # the host's copy of the cache indices

    @staticmethod
    def choose_slot(free: list[int]) -> int:
        """The slot a new request takes: the lowest free one, so the running requests stay in
        the first rows and a step computes the smallest row bucket."""
        return free[0]

    def prefill(self, slot: int, request: SlotRequest) -> jax.Array:
        """Queues `request`'s prefill into `slot` (replacing whatever was there); returns its
        first token, a device scalar (reading it waits for the device)."""
        self.state, token = prefill_slot(*self._prefill_args(slot, request), **self.static)
        self.index[slot] = len(request.ids)
        return token

    def compile_prefill(self, request: SlotRequest) -> None:
        """Compiles, without running, the prefill program `request`'s prompt bucket takes (a
        later `prefill` of that bucket then only traces: ~0.2 s instead of ~2 s to compile on
        bench_serve.py's model)."""
        prefill_slot.lower(*self._prefill_args(0, request), **self.static).compile()

    def _prefill_args(self, slot: int, request: SlotRequest) -> tuple:
        n = len(request.ids)
        if not 0 < n < self.context:
            raise ValueError(f"prompt of {n} tokens does not fit the context of {self.context}")
        width, _ = self.prefill_shape(request)
        ids = np.full((1, width), max(self.generator.tokenizer.pad_id, 0), np.int32)
        ids[0, :n] = request.ids
        pixels = None if request.pixels is None else request.pixels[None].astype(np.float32)
        return (self.params, self.state, np.int32(slot), ids, np.int32(n), pixels,
                np.float32(request.temperature), np.float32(request.top_p),
                np.uint32(request.seed % 2**32))

    def prefill_shape(self, request: SlotRequest) -> tuple[int, bool]:
        """What selects `request`'s prefill program: its padded length, and whether it has an
        image."""
        width = min(prompts.bucket_length(len(request.ids), self.bucket), self.context)
        return width, request.pixels is not None

    def step(self, active: np.ndarray) -> jax.Array:
        """Queues one decode step; `active` [B] bool marks the slots in use. Returns the next
        token of each slot up to the last active one (at least) on the device (reading it
        waits): the host can queue more work before it reads them."""
        active = np.asarray(active, bool)
        needed = int(self.index[active].max()) + 1 if active.any() else 1
        used = int(np.flatnonzero(active)[-1]) + 1 if active.any() else 1
        rows = next(r for r in self.row_buckets if r >= used)
        self.state, tokens = decode_step(self.params, self.state, active[:rows],
                                         attend=self._attend(needed), rows=rows, **self.static)
        self.index[active] += 1
        return tokens

    def _attend(self, needed: int) -> int:
        """The fewest whole cache blocks that hold `needed` slots, in slots."""
        return prompts.bucket_length(needed, self.block)

    def warm_up(self) -> None:
        """Compiles every decode program before the first request (a program compiled while
        requests run would stall them all)."""
        for rows in self.row_buckets:
            for needed in range(1, self.context + 1, self.block):
                self.state, _ = decode_step(self.params, self.state, np.zeros(rows, bool),
                                            attend=self._attend(needed), rows=rows,
                                            **self.static)

    @staticmethod
    def compiled_programs() -> int:
        """Programs compiled so far by this process's engines (prefill buckets + decode)."""
        return prefill_slot._cache_size() + decode_step._cache_size()
