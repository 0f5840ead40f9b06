"""Decode throughput of sgv_jax vs HF transformers `generate` (PyTorch CPU) on one ~100M model.

    python benchmarks/bench_generate.py [--new-tokens 128] [--batches 1,8] [--repeats 3]
        [--dtypes float32,bfloat16] [--ttft-image-size 336]

One random LlavaForConditionalGeneration (CLIP 4x256 at 112 px = 64 image tokens, LLaMA
10x640, vocab 32064 as llava-hf; ~94M parameters) in fp32; ours gets the same weights through
the llava-hf converter. Prompt = image + 32 text tokens (97 tokens), greedy, KV cache on both
(HF's DynamicCache, our preallocated one), EOS disabled so every run decodes exactly N tokens.
Decode tokens/s = B * (N - 1) / (time(N new tokens) - time(1 new token)): prefill and the
first token cancel out. Best of `repeats` runs after a warm-up (which compiles ours).

The memory-bandwidth roof is measured in the same run (benchmarks/roofs.py): the fastest
streamed read of a gemv over 512 MiB under XLA and torch, in fp32 and in bf16, for every dtype
(the memory is the same; only the kernels differ, and XLA's bf16 gemv at that shape read less
than our bf16 decode does). A decode step must read the
decoder's weights (minus the embedding table, of which it reads B rows) and the KV cache so
far; each rate is printed with its fraction of that roof (goal at batch 1: >= 85%), then the
ratio (goal at batch 8: >= 2x). Every batch runs with fp32 and with bf16 weights on both sides.

Time to first token: the same decoder behind a CLIP tower at `--ttft-image-size` px (336: 576
image tokens, as LLaVA-1.5), one prompt, `max_new_tokens=1`, best of `repeats`, ours vs HF.
"""

import argparse
import copy
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import roofs  # benchmarks/roofs.py, beside this script
import torch

from sgv_jax import allocator
from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
from sgv_jax.generation.decode import generate_tokens
from sgv_jax.generation.sampling import GREEDY
from sgv_jax.models.llava import cast_floating, fuse_decoder

VOCAB, IMAGE_ID, PAD = 32064, 32000, 32001  # llava-hf's vocabulary layout (REFERENCE.md §1.7)
TEXT_TOKENS = 32


def build_hf_model(image_size: int = 112):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, patch_size=14, image_size=image_size)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=640, intermediate_size=1728,
                       num_hidden_layers=10, num_attention_heads=10, num_key_value_heads=10,
                       rms_norm_eps=1e-5, max_position_embeddings=1024, pad_token_id=PAD,
                       bos_token_id=1, eos_token_id=None)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID)
    config._attn_implementation = "sdpa"  # HF's default on CPU
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # decode exactly max_new_tokens
    return model, config


def make_prompt(batch: int, n_image: int, image_size: int):
    rng = np.random.default_rng(0)
    text = rng.integers(3, 32000, size=(batch, TEXT_TOKENS))
    ids = np.concatenate([np.ones((batch, 1), np.int64), np.full((batch, n_image), IMAGE_ID),
                          text], axis=1)
    pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    return ids, pixels


def seconds(run, n: int) -> float:
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


def decode_rates(runs: dict, batch: int, new_tokens: int, repeats: int) -> dict[str, float]:
    """Decode tokens/s per runner. Runners alternate within each repeat, so on a shared
    machine both see the same background load; the best repeat counts."""
    for run in runs.values():
        run(1), run(new_tokens)  # warm-up (compiles ours)
    full = {name: [] for name in runs}
    one = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            full[name].append(seconds(run, new_tokens))
            one[name].append(seconds(run, 1))
    return {name: batch * (new_tokens - 1) / (min(full[name]) - min(one[name])) for name in runs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--ttft-image-size", type=int, default=336,
                        help="0 skips the time-to-first-token comparison")
    args = parser.parse_args(argv)
    print(f"load: {os.getloadavg()[0]:.2f} (the CPU is shared: rerun when it is high)", flush=True)

    hf_fp32, config = build_hf_model()
    cfg, params_fp32 = from_llava_hf_state_dict(hf_fp32.state_dict(), config.to_dict())
    n_params = sum(p.numel() for p in hf_fp32.parameters())
    lm = hf_fp32.model.language_model
    lm_params = (sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
                 + hf_fp32.lm_head.weight.numel())
    print(f"model: {n_params / 1e6:.1f}M parameters; decoder weights read per step "
          f"{lm_params / 1e6:.1f}M; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs; "
          f"allocator {allocator.in_use()} (both sides)",
          flush=True)

    read_roofs = [roofs.stream_read_gbs(dtype=dtype) for dtype in TORCH_DTYPES]
    for roof in read_roofs:
        print(roof.line(), flush=True)
    memory_roof = max(max(roof.xla, roof.torch) for roof in read_roofs)
    for dtype in args.dtypes.split(","):
        itemsize = np.dtype(jnp.dtype(dtype)).itemsize
        model = copy.deepcopy(hf_fp32).to(TORCH_DTYPES[dtype])  # the fp32 one stays exact
        # Once, in the compute dtype and in the decode layout (layers unstacked, q|k|v and
        # gate|up fused), as the Generator holds them: not a cast, a host->device copy or a
        # layer split per generate call.
        params = fuse_decoder(jax.device_put(cast_floating(params_fp32, dtype)))
        kv_per_token = itemsize * 2 * cfg.text.num_layers * cfg.text.num_kv_heads \
            * cfg.text.resolved_head_dim
        print(f"{dtype}: decoder weights {lm_params * itemsize / 1e6:.0f} MB per step, KV cache "
              f"{kv_per_token / 1e3:.0f} kB per token", flush=True)
        for batch in (int(b) for b in args.batches.split(",")):
            bench_batch(model, cfg, params, batch, args, dtype, lm_params * itemsize,
                        kv_per_token, memory_roof)
        del model
    if args.ttft_image_size:
        time_to_first_token(args)
    print(f"load: {os.getloadavg()[0]:.2f}", flush=True)


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def runners(model, cfg, params, ids, pixels, dtype: str):
    """(run_hf(n), run_ours(n)): n new greedy tokens for the prompt, each side's own way."""
    mask = np.ones_like(ids)
    torch_pixels = torch.tensor(pixels).to(TORCH_DTYPES[dtype])

    def run_hf(n):
        with torch.no_grad():
            return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                  pixel_values=torch_pixels, max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=PAD)

    ours_batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                  "pixel_values": pixels.transpose(0, 2, 3, 1)}

    def run_ours(n):
        return generate_tokens(params, cfg, ours_batch, GREEDY, max_new_tokens=n,
                               eos_ids=(-1,), pad_id=PAD, dtype=dtype)

    return run_hf, run_ours


def bench_batch(model, cfg, params, batch: int, args, dtype: str, weight_bytes: int,
                kv_per_token: int, roof_gbs: float) -> None:
    ids, pixels = make_prompt(batch, cfg.num_image_tokens, cfg.vision.image_size)
    run_hf, run_ours = runners(model, cfg, params, ids, pixels, dtype)
    hf_tokens = run_hf(args.new_tokens)[:, ids.shape[1]:].numpy()
    our_tokens = run_ours(args.new_tokens)
    assert hf_tokens.shape == our_tokens.shape, (hf_tokens.shape, our_tokens.shape)
    agree = np.mean(np.cumprod(hf_tokens == our_tokens, axis=1).sum(1)) / args.new_tokens
    rates = decode_rates({"hf": run_hf, "sgv_jax": run_ours}, batch, args.new_tokens,
                         args.repeats)
    context = ids.shape[1] + args.new_tokens / 2  # mean cache length while decoding
    step_bytes = weight_bytes + batch * context * kv_per_token
    fractions = {}
    for name, rate in rates.items():
        gbs = rate / batch * step_bytes / 1e9
        fractions[name] = gbs / roof_gbs
        print(f"batch {batch} {dtype} {name:8s} {rate:8.1f} tokens/s  {gbs:5.1f} GB/s  "
              f"({fractions[name]:5.1%} of the measured {roof_gbs:.1f} GB/s roof)", flush=True)
    print(f"batch {batch} ratio sgv_jax/hf = {rates['sgv_jax'] / rates['hf']:.2f}x  "
          f"({dtype}; roof fractions sgv_jax {fractions['sgv_jax']:.1%}, hf {fractions['hf']:.1%};"
          f" greedy prefix agreement {agree:.0%})", flush=True)


def time_to_first_token(args) -> None:
    """Prefill of one LLaVA-1.5-sized image prompt (576 image tokens at 336 px) + first token."""
    model, config = build_hf_model(args.ttft_image_size)
    cfg, params = from_llava_hf_state_dict(model.state_dict(), config.to_dict())
    params = fuse_decoder(jax.device_put(params))
    ids, pixels = make_prompt(1, cfg.num_image_tokens, cfg.vision.image_size)
    run_hf, run_ours = runners(model, cfg, params, ids, pixels, "float32")
    first = {"hf": run_hf(1)[0, -1].item(), "sgv_jax": int(run_ours(1)[0, 0])}
    best = {name: min(seconds(run, 1) for _ in range(args.repeats))
            for name, run in (("hf", run_hf), ("sgv_jax", run_ours))}
    print(f"time to first token, {ids.shape[1]}-token prompt ({cfg.num_image_tokens} image "
          f"tokens), float32: sgv_jax {best['sgv_jax'] * 1e3:.0f} ms, hf {best['hf'] * 1e3:.0f} ms"
          f", ratio sgv_jax/hf = {best['hf'] / best['sgv_jax']:.2f}x  (same first token: "
          f"{first['hf'] == first['sgv_jax']})", flush=True)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    main()
