"""LLaMA decoder (HF `LlamaModel` + `lm_head`, REFERENCE.md §1.4) as NNX modules.

RMSNorm with eps from config, rotate-half RoPE (HF layout, so HF weights load without a q/k
permutation), grouped-query attention, SwiGLU MLP, the layers stacked on a `layers` axis and run
with `lax.scan`, and an optional preallocated KV cache stacked the same way.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from sgv_jax.models import nn
from sgv_jax.models.config import LORA_TARGETS, LoraConfig, TextConfig
from sgv_jax.models.layers import attention
from sgv_jax.sharding import constrain

ACT = ("act_batch", "act_seq", "act_embed")

# The MLP runs over sequence slices of this many tokens, each rematerialised in the backward
# pass, when its [B, T, F] intermediates (gate, up, their product and their gradients: about
# five alive at once) would exceed MLP_BUDGET_BYTES per buffer: at ShareGPT4V-7B's 16 x 2048 x
# 11008 bf16 each is 0.72 GB. Below the budget slices only cost time, so the MLP runs whole.
MLP_CHUNK = 512
MLP_BUDGET_BYTES = 256 << 20
KV_ACT = ("act_batch", None, "act_seq", None)  # one cache block [B, K, S, H]

# What attention reads in a call with a KV cache (`LlamaModel.decode(read=)`):
READ_WRITTEN = "written"  # the cache's blocks after this call's write (a serving step)
READ_FIRST = "first"  # the blocks as they were, then the new keys themselves (a decode loop)
READ_INPUTS = "inputs"  # the new keys alone, causally: a prefill into an empty cache
READ_MODES = (READ_WRITTEN, READ_FIRST, READ_INPUTS)


def _lora_for(lora: LoraConfig | None, name: str) -> LoraConfig | None:
    return lora if lora is not None and name in lora.targets else None


def _key_for(dropout_key: jax.Array | None, name: str) -> jax.Array | None:
    """Each adapted linear draws its own dropout mask, as PEFT's per-module nn.Dropout."""
    return None if dropout_key is None else jax.random.fold_in(dropout_key, LORA_TARGETS.index(name))


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """RoPE's cos and sin [B, T, 1, H] in fp32 for positions [B, T] (HF's rotary_emb),
    computed once per forward and shared by every layer's q and k, as HF does.

    XLA:CPU fuses an elementwise producer into each of its consumers, so cos and sin were
    evaluated again for every element of every layer's q and k ([B, T, N, H]: once per head)
    and of each causal block's key transpose. The tables leave through an exact identity
    matmul, which XLA does not fuse into consumers (it drops optimization barriers before
    fusion): a 609-token prefill of bench_generate.py's 10-layer decoder 474-512 -> 422-430
    ms. Inside a scanned stack they are loop invariants anyway."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    identity = jnp.eye(head_dim, dtype=jnp.float32)  # x·1 + 0s: exact in fp32

    def materialised(table):
        return jnp.einsum("btnh,hg->btng", table, identity, precision=jax.lax.Precision.HIGHEST)

    return materialised(jnp.cos(angles)), materialised(jnp.sin(angles))


def rope(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate-half RoPE. x [B, T, N, H], tables `rope_tables` (cast to x's dtype, as HF)."""
    cos, sin = (t.astype(x.dtype) for t in tables)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype, per_slot: bool = False,
               block: int | None = None) -> dict:
    """Preallocated KV cache: fixed shapes, so decoding compiles once.

    `k` and `v` hold, for each layer, its slots in blocks of `block` (default: one block of
    `max_len`, which `block` must divide), each block its own [B, K, block, H] buffer. XLA:CPU
    dots need dense operands, so reading one layer out of a stacked [L, ...] cache, or the first
    slots out of a longer one, is a copy; a decode step that reads only whole per-layer blocks
    reads them in place (a 32-slot step of bench_serve.py's model spent 18 of its 46 ms of
    thread time in those copies). Heads-major, the layout attention reads: a sequence-major
    cache was transposed in full at every step.

    A bf16 cache holds its values' bits (uint16: `cache_storage_dtype`, `from_cache`).

    `index` is where the next tokens are written: a scalar (every row at the same slot, prompts
    left-padded) or, with `per_slot`, an int32 [B] (each row at its own slot: continuous
    batching)."""
    block = block or max_len
    dtype = cache_storage_dtype(dtype)
    if max_len % block:
        raise ValueError(f"a cache of {max_len} slots cannot be split into blocks of {block}")
    shape = (batch, cfg.num_kv_heads, block, cfg.resolved_head_dim)

    def blocks():  # one buffer each: the cache is donated, and a shared buffer cannot be
        return [[jnp.zeros(shape, dtype) for _ in range(max_len // block)]
                for _ in range(cfg.num_layers)]

    index = jnp.zeros((batch,) if per_slot else (), jnp.int32)
    return {"k": blocks(), "v": blocks(), "mask": jnp.zeros((batch, max_len), jnp.bool_),
            "index": index}


def cache_storage_dtype(dtype) -> jnp.dtype:
    """The KV cache's element type for keys and values of `dtype`: bf16 as its bits (uint16).
    XLA:CPU has no bf16 scatter or dynamic update: it converted every block a step wrote to
    fp32, updated it and converted it back, rewriting each one whole (a 32-slot serving step of
    bench_generate.py's model in bf16 rewrote 40 blocks of 5 MB). An integer write is done in
    place, and bitcasting between types of one width costs nothing on any backend."""
    return jnp.dtype(jnp.uint16) if jnp.dtype(dtype) == jnp.bfloat16 else jnp.dtype(dtype)


def _cached_values_dtype(storage: jnp.dtype) -> jnp.dtype:
    return jnp.dtype(jnp.bfloat16) if storage == jnp.uint16 else storage


def to_cache(x: jax.Array, storage: jnp.dtype) -> jax.Array:
    """Keys or values as a cache of element type `storage` holds them."""
    x = x.astype(_cached_values_dtype(storage))
    return jax.lax.bitcast_convert_type(x, storage) if x.dtype != storage else x


def from_cache(block: jax.Array) -> jax.Array:
    """A cache block's keys or values (the inverse of `to_cache`)."""
    values = _cached_values_dtype(block.dtype)
    return jax.lax.bitcast_convert_type(block, values) if values != block.dtype else block


def cache_block_size(cache: dict) -> int:
    return cache["k"][0][0].shape[2]


def _write_kv(blocks: list[jax.Array], new: jax.Array, index: jax.Array) -> list[jax.Array]:
    """Writes new [B, T, K, H] at slots [index_b, index_b + T) of one layer's blocks
    [B, K, S', H]: one dynamic slice into a single block when `index` is shared, else a
    scatter per block that drops the slots outside it."""
    new = to_cache(new, blocks[0].dtype)
    if index.ndim == 0 and len(blocks) == 1:
        return [jax.lax.dynamic_update_slice(blocks[0], new.transpose(0, 2, 1, 3),
                                             (0, 0, index, 0))]
    b, t = new.shape[:2]
    size = blocks[0].shape[2]
    rows = jnp.arange(b)[:, None]
    slots = jnp.broadcast_to(jnp.reshape(index, (-1, 1)) + jnp.arange(t), (b, t))
    written = []
    for j, block in enumerate(blocks):
        local = slots - j * size
        local = jnp.where((local >= 0) & (local < size), local, size)  # size: out of bounds
        written.append(block.at[rows, :, local].set(new, mode="drop"))
    return written


def constrain_blocks(blocks: list[jax.Array]) -> list[jax.Array]:
    """One layer's cache blocks, split over the mesh like activations (batch, sequence)."""
    return [constrain(block, KV_ACT) for block in blocks]


def _write_rows(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buffer[b, index_b + t] = new[b, t] (the cache's [B, S] mask)."""
    t = new.shape[1]
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer.dtype), index, axis=1)
    rows = jnp.arange(new.shape[0])[:, None]
    return buffer.at[rows, index[:, None] + jnp.arange(t)].set(new.astype(buffer.dtype))


# The decode layout's concatenated projections: {block: (fused name, the parts in order)}.
# A decode step streams every weight once through [B, D] @ [D, N] dots, and XLA:CPU streams a
# wider N faster, so a layer decodes with four dots (q|k|v, o, gate|up, down) instead of seven.
# Profile of bench_generate.py's batch-1 step (10 x 640 decoder, 2 Zen 3 cores): q, k, v and o
# at 22.5 GB/s -> q|k|v at 25.6; gate and up at 25.2 -> gate|up at 27.6; 12.7 -> 12.0 ms a step.
FUSED_PROJECTIONS = {"self_attn": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
                     "mlp": ("gate_up_proj", ("gate_proj", "up_proj"))}


def is_fused(layer: dict) -> bool:
    return FUSED_PROJECTIONS["self_attn"][0] in layer["self_attn"]


def fuse_projections(layer: dict) -> dict:
    """One layer's weight tree with q|k|v and gate|up concatenated along their output axis
    (`LlamaDecoderLayer(fused=True)`'s tree). A fused layer, or one whose projections carry
    adapters or biases, is returned as it is."""
    if is_fused(layer):
        return layer
    plain = all(set(layer[block][name]) == {"kernel"}
                for block, (_, parts) in FUSED_PROJECTIONS.items() for name in parts)
    if not plain:
        return layer
    out = dict(layer)
    for block, (fused, parts) in FUSED_PROJECTIONS.items():
        kernels = [layer[block][name]["kernel"] for name in parts]
        out[block] = {**{k: v for k, v in layer[block].items() if k not in parts},
                      fused: {"kernel": jnp.concatenate(kernels, axis=-1)}}
    return out


def split_projections(layer: dict, cfg: TextConfig) -> dict:
    """`fuse_projections`' inverse; an unfused layer is returned as it is."""
    if not is_fused(layer):
        return layer
    h = cfg.resolved_head_dim
    widths = {"self_attn": (cfg.num_heads * h, cfg.num_kv_heads * h, cfg.num_kv_heads * h),
              "mlp": (cfg.intermediate_size,) * 2}
    out = dict(layer)
    for block, (fused, parts) in FUSED_PROJECTIONS.items():
        kernel = layer[block][fused]["kernel"]
        ends = list(itertools.accumulate(widths[block]))[:-1]
        pieces = jnp.split(kernel, ends, axis=-1)
        out[block] = {**{k: v for k, v in layer[block].items() if k != fused},
                      **{name: {"kernel": w} for name, w in zip(parts, pieces)}}
    return out


def unstack_layers(stacked: dict) -> list[dict]:
    """A tree of stacked layer weights [L, ...] as L trees of one layer's weights."""
    return list(iter_layers(stacked))


def iter_layers(stacked: dict):
    """`unstack_layers` one layer at a time (each sliced when it is asked for)."""
    count = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(count):
        yield jax.tree.map(lambda w, i=i: w[i], stacked)


class LlamaAttention(nnx.Module):
    """`fused`: one `qkv_proj` kernel [D, q|k|v] in place of the three (the decode layout,
    `fuse_projections`; no adapters)."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, lora: LoraConfig | None = None,
                 fused: bool = False):
        d, h = cfg.hidden_size, cfg.resolved_head_dim
        q_dim, kv_dim = cfg.num_heads * h, cfg.num_kv_heads * h
        make = nn.linear_maybe_lora
        if fused:
            self.qkv_proj = nn.linear(d, q_dim + 2 * kv_dim, ("embed", "heads"), False, rngs)
        else:
            self.q_proj = make(d, q_dim, ("embed", "heads"), False, rngs, _lora_for(lora, "q_proj"))
            self.k_proj = make(d, kv_dim, ("embed", "kv_heads"), False, rngs,
                               _lora_for(lora, "k_proj"))
            self.v_proj = make(d, kv_dim, ("embed", "kv_heads"), False, rngs,
                               _lora_for(lora, "v_proj"))
        self.o_proj = make(q_dim, d, ("heads", "embed"), False, rngs, _lora_for(lora, "o_proj"))
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, h

    def project(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array],
                dropout_key: jax.Array | None = None):
        """q [B, T, N, H], k/v [B, T, K, H] with RoPE (`rope_tables`) applied to q and k."""
        b, t, _ = x.shape

        def proj(name):
            return nn.apply_linear(getattr(self, name), x, _key_for(dropout_key, name))

        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if hasattr(self, "qkv_proj"):
            q, k, v = jnp.split(self.qkv_proj(x), [q_dim, q_dim + kv_dim], axis=-1)
        else:
            q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        return rope(q, rotary), rope(k, rotary), v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """q [B, T, N, H]; k/v [B, S, K, H] (the T inputs' own keys: causal self-attention),
        or lists of the cache's blocks (layers.attention)."""
        b, t = q.shape[:2]
        out = attention(q, k, v, mask, causal=not isinstance(k, list))
        return nn.apply_linear(self.o_proj, out.reshape(b, t, self.num_heads * self.head_dim),
                               _key_for(dropout_key, "o_proj"))


class LlamaMLP(nnx.Module):
    """`fused`: one `gate_up_proj` kernel [D, gate|up] (the decode layout, no adapters)."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, lora: LoraConfig | None = None,
                 fused: bool = False):
        d, f = cfg.hidden_size, cfg.intermediate_size
        make = nn.linear_maybe_lora
        if fused:
            self.gate_up_proj = nn.linear(d, 2 * f, ("embed", "mlp"), False, rngs)
        else:
            self.gate_proj = make(d, f, ("embed", "mlp"), False, rngs, _lora_for(lora, "gate_proj"))
            self.up_proj = make(d, f, ("embed", "mlp"), False, rngs, _lora_for(lora, "up_proj"))
        self.intermediate_size = f
        self.down_proj = make(f, d, ("mlp", "embed"), False, rngs, _lora_for(lora, "down_proj"))

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        def proj(name, h):
            return nn.apply_linear(getattr(self, name), h, _key_for(dropout_key, name))

        def mlp(h):
            if hasattr(self, "gate_up_proj"):
                gate, up = jnp.split(self.gate_up_proj(h), 2, axis=-1)
            else:
                gate, up = proj("gate_proj", h), proj("up_proj", h)
            return proj("down_proj", jax.nn.silu(gate) * up)

        b, t, _ = x.shape
        too_big = b * t * self.intermediate_size * x.dtype.itemsize > MLP_BUDGET_BYTES
        # Tokens are independent in the MLP, so slicing changes no result; adapters' dropout
        # (training with LoRA) draws one mask for the whole sequence, so it runs whole.
        if not too_big or t <= MLP_CHUNK or t % MLP_CHUNK or dropout_key is not None:
            return mlp(x)
        graph, state = nnx.split(self)
        slices = x.reshape(b, t // MLP_CHUNK, MLP_CHUNK, -1).swapaxes(0, 1)
        out = jax.lax.map(jax.checkpoint(lambda h: nnx.merge(graph, state)(h)), slices)
        return out.swapaxes(0, 1).reshape(x.shape)


class LlamaDecoderLayer(nnx.Module):
    """One pre-norm block."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, lora: LoraConfig | None = None,
                 fused: bool = False):
        self.self_attn = LlamaAttention(cfg, rngs, lora, fused)
        self.mlp = LlamaMLP(cfg, rngs, lora, fused)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs)

    def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array], mask: jax.Array,
                 cache: tuple | None = None, dropout_key: jax.Array | None = None):
        """cache: None, or (this layer's key blocks, value blocks, write index, attend,
        read): the new keys/values are written into the blocks, which are returned; attention
        reads the first `attend` slots (static, a whole number of blocks; None: all) after
        the write, or as `read` says (see `LlamaModel.decode`). `rotary`: the inputs'
        `rope_tables`. `dropout_key`: this layer's key for the adapters' dropout (training
        only)."""
        q, k, v = self.self_attn.project(self.input_layernorm(x), rotary, dropout_key)
        if cache is not None:
            ks, vs, index, attend, read = cache
            used = len(ks) if attend is None else attend // ks[0].shape[2]
            old_k, old_v = ks[:used], vs[:used]
            ks = _write_kv(ks[:used], k, index) + ks[used:]
            vs = _write_kv(vs[:used], v, index) + vs[used:]
            values = _cached_values_dtype(ks[0].dtype)
            if read == READ_FIRST:
                # The new keys as the cache holds them (rounded to its values' dtype),
                # heads-major as its blocks.
                k = [from_cache(x) for x in old_k] + [k.astype(values).transpose(0, 2, 1, 3)]
                v = [from_cache(x) for x in old_v] + [v.astype(values).transpose(0, 2, 1, 3)]
            elif read == READ_INPUTS:  # as the cache holds them, sequence-major as computed
                k, v = k.astype(values), v.astype(values)
            else:  # lists of [B, K, S', H] blocks, read in place
                k, v = [from_cache(x) for x in ks[:used]], [from_cache(x) for x in vs[:used]]
            if isinstance(k, list) and k[0].shape[0] > x.shape[0]:  # inputs: the first rows
                k, v = ([blk[:x.shape[0]] for blk in blocks] for blocks in (k, v))
            cache = (ks, vs)
        x = constrain(x + self.self_attn.attend(q, k, v, mask, dropout_key), ACT)
        x = x + self.mlp(self.post_attention_layernorm(x), dropout_key)
        return constrain(x, ACT), cache


class LlamaModel(nnx.Module):
    """`language_model`: embeddings, the stacked decoder layers, the final norm, lm_head."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        self.cfg = cfg
        self.embed_tokens = nn.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), rngs)
        self.layers = nn.stacked(lambda r: LlamaDecoderLayer(cfg, r, lora), cfg.num_layers, rngs)
        self.norm = nn.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), False, rngs)

    def embed(self, ids: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.embed_tokens.embedding[...], ids, axis=0).astype(dtype)

    def decode(self, embeds: jax.Array, positions: jax.Array, attention_mask: jax.Array,
               cache: dict | None = None, remat: str = "none",
               dropout_key: jax.Array | None = None, attend: int | None = None,
               layers: list[LlamaDecoderLayer] | None = None, read: str = READ_WRITTEN):
        """Run the decoder stack on input embeddings.

        embeds [B, T, D]; positions [B, T] (RoPE positions); attention_mask [B, T] (1 = real
        token). Without a cache, attention is causal over the T inputs. With a cache, the T
        inputs are written at slots [index, index+T) and attend to every valid earlier slot.
        `attend` (static, a whole number of cache blocks) limits attention to the first
        `attend` cache slots, which must hold every slot the queries may see: a decode step
        then reads only the used blocks of a long cache (attention over all S slots dominated
        a 32-row decode step, bench_serve.py). With a cache the layers run one by one:
        `layers`, `split_layers()`'s modules, or (None) split here — a decode loop should
        split them once, outside the loop.
        A per-slot cache may hold more rows than the B inputs, which are then its first B
        rows (a serving step over the running slots only): they are written in place and only
        they are read, the other rows are left as they are.
        `read` (with a cache) is what attention reads:
        - READ_WRITTEN: the cache's blocks after this call's write. A serving step (one call
          per step, the cache donated).
        - READ_FIRST: the blocks as they were before this call's write, plus the new keys
          themselves, so that nothing reads a block after its write. For a loop that carries
          the cache (`decode_steps`): a block read after its write made XLA:CPU copy every
          block of the loop state on every step (20 copies a step for bench_generate.py's 10
          layers; none with this and region-analysed copy insertion, xla_cpu.py: batch 1
          13.4 -> 11.6 ms a step). A serving step is slower with it (8 rows 10.5 -> 22 ms).
        - READ_INPUTS: the new keys alone, causally, as without a cache: a prefill, whose
          cache holds nothing before it (the caller's promise; index 0). Query blocks then
          skip the key blocks after them (layers.attention's `causal`) and the fresh cache's
          empty slots are not read at all.
        `dropout_key` (training, no cache) drives the adapters' dropout, one key per layer.
        Returns (final-normed hidden [B, T, D], new cache or None).
        """
        b, t, _ = embeds.shape
        valid = attention_mask.astype(jnp.bool_)
        if read not in READ_MODES:
            raise ValueError(f"read={read!r}: use one of {READ_MODES}")
        if cache is not None and attend is not None and attend % cache_block_size(cache):
            raise ValueError(f"attend={attend} must be a whole number of cache blocks "
                             f"({cache_block_size(cache)} slots each)")
        if cache is not None:
            index = cache["index"] if cache["index"].ndim == 0 else cache["index"][:b]
            cache_mask = _write_rows(cache["mask"], valid, index)
        if cache is None or read == READ_INPUTS:  # the inputs' own keys
            query_slot = jnp.broadcast_to(jnp.arange(t), (b, t))
            key_mask, key_slot = valid, jnp.arange(t)
        else:
            key_mask = cache_mask[:b]
            query_slot = jnp.reshape(index, (-1, 1)) + jnp.arange(t)  # [B or 1, T]
            key_slot = jnp.arange(key_mask.shape[1])[:attend]
        # [B, T, S]: causal by slot, and only keys that hold real tokens.
        mask = ((key_slot[None, None, :] <= query_slot[:, :, None])
                & key_mask[:, None, :key_slot.shape[0]])
        if cache is not None and read == READ_FIRST:
            # The blocks as they were, then the T new keys: the slots being written are masked
            # out of the blocks and seen through the new keys instead (causally, real ones).
            writing = ((key_slot[None, :] >= query_slot[:, :1])
                       & (key_slot[None, :] < query_slot[:, :1] + t))  # [B or 1, S]
            own = jnp.tril(jnp.ones((t, t), jnp.bool_))[None] & valid[:, None, :]  # [B, T, T]
            mask = jnp.concatenate([mask & ~writing[:, None, :], own], axis=-1)

        rotary = rope_tables(positions, self.cfg.resolved_head_dim, self.cfg.rope_theta)
        x = constrain(embeds, ACT)
        if cache is None:
            def block(layer, x, key):
                return layer(x, rotary, mask, dropout_key=key)[0], None

            keys = (None if dropout_key is None
                    else jax.random.split(dropout_key, self.cfg.num_layers))
            x, _ = nn.scan_layers(self.layers, block, x, keys, remat=remat)
            new_cache = None
        else:
            layers = self.split_layers() if layers is None else layers
            ks, vs = [], []
            for i, layer in enumerate(layers):
                x, (k, v) = layer(x, rotary, mask, (constrain_blocks(cache["k"][i]),
                                                       constrain_blocks(cache["v"][i]),
                                                       index, attend, read))
                ks.append(k)
                vs.append(v)
            new_index = (index + t if index.ndim == 0
                         else cache["index"].at[:b].set(index + t))
            new_cache = {"k": ks, "v": vs, "mask": cache_mask, "index": new_index}
        return self.norm(x), new_cache

    def split_layers(self) -> list[LlamaDecoderLayer]:
        """The stacked layers as one module per layer, each with its own weight buffers.

        For decode loops: call it outside the loop and pass the result to `decode(layers=)`.
        Scanning the stacked layers makes XLA:CPU copy each layer's weights out of the stack
        before its matmuls (a kLoop dynamic-slice fusion: the weights are read 3x per step);
        a decode step is bound by those reads (bench_generate.py)."""
        return self.layers_from(unstack_layers(nnx.to_pure_dict(nnx.state(self.layers))))

    def layers_from(self, layer_params: list[dict]) -> list[LlamaDecoderLayer]:
        """One decoder-layer module per tree of `layer_params` (each shaped like one slice of
        the stacked layers, or `fuse_projections` of one), for `decode(layers=)`."""
        graphs = {False: nnx.split(self.layers)[0]}
        if any(is_fused(p) for p in layer_params):
            graphs[True] = _fused_layer_graph(self.cfg)
        return [nnx.merge(graphs[is_fused(p)], p) for p in layer_params]

    def head_weight(self, dtype) -> jax.Array:
        """The vocabulary projection [D, V] in `dtype` (the embedding table's transpose when
        tied)."""
        if self.cfg.tie_word_embeddings:
            return self.embed_tokens.embedding[...].astype(dtype).T
        return self.lm_head.kernel[...].astype(dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, T, D] → fp32 logits [B, T, V]."""
        return vocab_logits(hidden, self.head_weight(hidden.dtype))


@functools.cache
def _fused_layer_graph(cfg: TextConfig) -> nnx.GraphDef:
    """The graph of `LlamaDecoderLayer(fused=True)`, from shapes only. Outside any mesh: under
    one, `nnx.eval_shape` would read the logical axes as mesh axes."""
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())), \
            nnx.use_eager_sharding(False):
        layer = nnx.eval_shape(lambda: LlamaDecoderLayer(cfg, nnx.Rngs(0), fused=True))
    return nnx.split(layer)[0]


LOGIT_AXES = ("act_batch", "act_seq", "act_vocab")


def vocab_logits(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """hidden [B, T, D] @ weight [D, V] (both in the compute dtype) → fp32 logits [B, T, V]."""
    out = nn.matmul_f32(hidden, weight)
    return constrain(out, LOGIT_AXES)
