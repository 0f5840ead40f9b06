"""The cached decode loop: equals recomputing the full forward, compiles once per shape,
gives the same tokens sharded over 8 devices, and honours stop strings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgv_jax.generation import decode, prompts
from sgv_jax.generation.decode import generate_tokens
from sgv_jax.generation.generator import local_mesh
from sgv_jax.generation.sampling import SamplingConfig
from sgv_jax.models import get_preset, llama, llava
from tests.test_generate_helpers import tiny_generator

NEW = 10


def tiny_batch(cfg, lengths=(9, 4), with_image=(True, False), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n, img in zip(lengths, with_image):
        text = rng.integers(3, cfg.text.vocab_size, size=n).astype(np.int32)
        text[0] = 1
        image = [cfg.image_token_id] * cfg.num_image_tokens if img else []
        rows.append(np.concatenate([text[:1], image, text[1:]]).astype(np.int32))
    ids, mask = prompts.left_pad(rows, 0, bucket=8)
    size = cfg.vision.image_size
    pixels = rng.standard_normal((len(rows), size, size, 3)).astype(np.float32)
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def test_cached_decoding_equals_full_forward_at_every_step(highest_precision):
    cfg = get_preset("tiny")
    params = llava.init(cfg, jax.random.key(3))
    rows, batch = tiny_batch(cfg)
    tokens = generate_tokens(params, cfg, batch, SamplingConfig(), max_new_tokens=NEW,
                             eos_ids=(-1,), pad_id=0)
    # No cache: the whole sequence again for every token. Right padding to one width keeps a
    # single compiled forward; causal attention means pads after a position never reach it.
    width = max(len(r) for r in rows) + NEW
    full = jax.jit(lambda ids, mask, px: llava.forward(
        params, cfg, {"input_ids": ids, "attention_mask": mask, "pixel_values": px})[0])
    for b, row in enumerate(rows):
        seq = list(row)
        for t in range(NEW):
            ids = np.zeros((1, width), np.int32)
            ids[0, :len(seq)] = seq
            mask = (np.arange(width) < len(seq)).astype(np.int32)[None]
            logits = full(ids, mask, batch["pixel_values"][b:b + 1])
            want = int(jnp.argmax(logits[0, len(seq) - 1]))
            assert tokens[b, t] == want, f"row {b} step {t}: cached {tokens[b, t]} != full {want}"
            seq.append(want)


def test_compiles_once_per_shape_not_per_token_or_prompt():
    cfg = get_preset("tiny")
    params = llava.init(cfg, jax.random.key(0))
    kw = {"max_new_tokens": NEW, "eos_ids": (-1,), "pad_id": 0}
    _, batch = tiny_batch(cfg, seed=0)
    generate_tokens(params, cfg, batch, SamplingConfig(), **kw)
    sizes = decode.prefill._cache_size(), decode.decode_steps._cache_size()
    # Other prompts of the same bucket, run whole or in host-checked chunks: no new programs.
    _, other = tiny_batch(cfg, lengths=(8, 6), seed=1)
    generate_tokens(params, cfg, other, SamplingConfig(), **kw)
    generate_tokens(params, cfg, other, SamplingConfig(), **kw, chunk=3,
                    stopped=lambda t: np.zeros(len(t), bool))
    assert (decode.prefill._cache_size(), decode.decode_steps._cache_size()) == sizes


def test_sampling_with_top_k_one_decodes_the_greedy_tokens():
    cfg = get_preset("tiny")
    params = llava.init(cfg, jax.random.key(5))
    _, batch = tiny_batch(cfg)
    kw = {"max_new_tokens": NEW, "eos_ids": (-1,), "pad_id": 0}
    greedy = generate_tokens(params, cfg, batch, SamplingConfig(), **kw)
    sampled = generate_tokens(params, cfg, batch, SamplingConfig(temperature=0.9, top_k=1,
                                                                 repetition_penalty=1.0),
                              key=jax.random.key(7), **kw)
    np.testing.assert_array_equal(sampled, greedy)
    free = [generate_tokens(params, cfg, batch, SamplingConfig(temperature=1.0, top_k=0),
                            key=jax.random.key(seed), **kw) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(free[0], free[1])  # a seed fixes the draw
    assert not np.array_equal(free[0], free[2])


@pytest.mark.slow  # ~40 s: compiling for 8 simulated devices
def test_eight_devices_give_the_single_device_tokens():
    single = tiny_generator(seed=1)
    sharded = tiny_generator(seed=1, mesh=local_mesh())
    assert sharded.batch_multiple == 8
    image = np.random.default_rng(0).standard_normal((21, 21, 3)).astype(np.float32)
    texts = ["<image>\nWhat is in the picture?", "Hello there!", "<image>\nDescribe it."]
    images = [image, None, -image]
    want = single.complete(texts, images, max_new_tokens=6)
    got = sharded.complete(texts, images, max_new_tokens=6)
    assert [c.tokens for c in got] == [c.tokens for c in want]
    leaf = sharded.params["language_model"]["lm_head"]["kernel"]
    assert len(leaf.sharding.device_set) == 8


def test_stop_strings_cut_text_and_tokens():
    gen = tiny_generator(seed=2)
    texts, images = ["Hello there!", "The quick brown fox"], [None, None]
    free = gen.complete(texts, images, max_new_tokens=24)
    stop = free[0].text[len(free[0].text) // 2:][:3]  # a piece of row 0's own answer
    cut = gen.complete(texts, images, max_new_tokens=24, stop_strings=[stop])
    assert cut[0].finish == "stop" and stop not in cut[0].text
    assert free[0].text.startswith(cut[0].text)
    assert len(cut[0].tokens) < len(free[0].tokens)
    # The kept tokens are the shortest prefix whose text contains the stop string.
    assert stop in prompts.decode_text(gen.tokenizer, cut[0].tokens)
    assert stop not in prompts.decode_text(gen.tokenizer, cut[0].tokens[:-1])
    if stop not in free[1].text:
        assert cut[1].tokens == free[1].tokens


def test_text_and_image_prompts_are_checked():
    gen = tiny_generator()
    image = np.zeros((21, 21, 3), np.float32)
    for text, img in [("no image marker", image), ("<image> twice <image>", image),
                      ("<image> but no image", None)]:
        try:
            gen.complete([text], [img], max_new_tokens=2)
        except ValueError as e:
            assert "<image>" in str(e)
        else:
            raise AssertionError(f"{text!r} should be rejected")


def test_decode_programs_compile_without_ynnpack_dots_on_cpu_and_decode_the_same():
    """CpuOptionsJit passes its XLA:CPU options (the YNNPACK dot fusions, slower for few-row dots,
    are off) and changes nothing a step computes beyond float order."""
    from sgv_jax import xla_cpu

    def step(w, x):
        return jnp.tanh(x @ w) @ w.T

    w = jax.random.normal(jax.random.key(0), (256, 512))
    x = jax.random.normal(jax.random.key(1), (8, 256))
    decode_program = xla_cpu.CpuOptionsJit(xla_cpu.FEW_ROW_DOTS, step)
    assert jax.default_backend() == "cpu"
    assert "__ynn_fusion" not in decode_program.lower(w, x).compile().as_text()
    want = jax.jit(step)(w, x)  # entries up to ~30: 512-term sums, in another order
    np.testing.assert_allclose(decode_program(w, x), want, rtol=0,
                               atol=4e-6 * float(jnp.abs(want).max()))
    assert decode_program._cache_size() == 1


@pytest.mark.parametrize("rows,dtype", [(1, "float32"), (2, "float32"), (1, "bfloat16"),
                                        (2, "bfloat16")])
def test_the_decode_loop_writes_its_cache_in_place(rows, dtype):
    # Each step reads the cache blocks before writing its key (LlamaModel.decode's READ_FIRST) and
    # CPU copy insertion is region-analysed (xla_cpu.DECODE_LOOP): no block of the loop-carried cache
    # is copied. Before, every step copied each block up to four times (a quarter of a batch-1
    # step in bench_generate.py).
    import re

    cfg = get_preset("tiny")
    # The Generator's layout, in the compute dtype (bf16 loops compile with YNNPACK's dots).
    params = llava.fuse_decoder(llava.cast_floating(llava.init(cfg, jax.random.key(0)), dtype))
    _, batch = tiny_batch(cfg, lengths=(9, 4)[:rows], with_image=(True, False)[:rows])
    static = {"cfg": cfg, "sampling": SamplingConfig(), "max_new_tokens": NEW,
              "eos_ids": (-1,), "pad_id": 0, "dtype": dtype}
    state = decode.prefill(params, batch, jax.random.key(0), **static)
    block = state["cache"]["k"][0][0]
    assert block.dtype == llama.cache_storage_dtype(dtype)  # bf16 as its bits: uint16
    text = decode.decode_steps.lower(params, state, np.int32(NEW), np.zeros(rows, bool),
                                     **static).compile().as_text()
    assert ("__ynn_fusion" in text) == (dtype == "bfloat16")
    shape = "{}[{}]".format({"float32": "f32", "bfloat16": "u16"}[dtype],
                            ",".join(map(str, block.shape)))
    assert re.search(r"dynamic-update-slice", text)
    assert not re.findall(rf"= {re.escape(shape)}\S* copy\(", text)


def test_the_fused_decode_layout_holds_the_same_weights_and_decodes_the_same(highest_precision):
    """The Generator's layout (llava.fuse_decoder: each layer's q|k|v and gate|up kernels
    concatenated, so a decode step runs 4 dots a layer instead of 7) split back is the
    unstacked tree exactly, and its decoder gives the unfused hidden states and tokens."""
    cfg = get_preset("tiny_even")  # grouped-query: q is wider than k and v
    params = llava.init(cfg, jax.random.key(0))
    unfused, fused = llava.unstack_decoder(params), llava.fuse_decoder(params)
    layers = fused["language_model"]["layers"]
    assert set(layers[0]["self_attn"]) == {"qkv_proj", "o_proj"}
    assert set(layers[0]["mlp"]) == {"gate_up_proj", "down_proj"}
    for got, want in zip(layers, unfused["language_model"]["layers"]):
        jax.tree.map(np.testing.assert_array_equal, llama.split_projections(got, cfg.text), want)
    assert llava.fuse_decoder(fused)["language_model"]["layers"][0] is layers[0]

    _, batch = tiny_batch(cfg)

    def prefill_hidden(tree):
        model, decoder_layers = llava.from_unstacked(cfg, tree)
        lm = model.language_model
        embeds = model.embed_inputs(batch, "float32")
        cache = llama.init_cache(cfg.text, embeds.shape[0], embeds.shape[1], jnp.float32)
        positions = decode.prompt_positions(batch["attention_mask"])
        return lm.decode(embeds, positions, batch["attention_mask"], cache,
                         layers=decoder_layers, read=llama.READ_INPUTS)[0]

    want = jax.jit(prefill_hidden)(unfused)
    np.testing.assert_allclose(jax.jit(prefill_hidden)(fused), want, rtol=1e-5,
                               atol=1e-6 * float(jnp.abs(want).max()))
    kw = {"max_new_tokens": NEW, "eos_ids": (-1,), "pad_id": 0}
    np.testing.assert_array_equal(generate_tokens(fused, cfg, batch, SamplingConfig(), **kw),
                                  generate_tokens(unfused, cfg, batch, SamplingConfig(), **kw))


def test_projections_with_adapters_are_not_fused():
    layer = {"self_attn": {name: {"kernel": np.ones((4, 4))} for name in
                           ("q_proj", "k_proj", "v_proj", "o_proj")},
             "mlp": {name: {"kernel": np.ones((4, 4))} for name in
                     ("gate_proj", "up_proj", "down_proj")}}
    assert llama.is_fused(llama.fuse_projections(layer))
    layer["mlp"]["up_proj"]["lora_a"] = np.ones((4, 2))
    assert llama.fuse_projections(layer) is layer
