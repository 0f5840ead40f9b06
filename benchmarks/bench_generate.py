"""Decode throughput of sgv_jax vs HF transformers `generate` (PyTorch CPU) on one ~100M model.

    python benchmarks/bench_generate.py [--new-tokens 128] [--batches 1,8] [--repeats 3]
        [--bandwidth-gbs 17.5]

One random LlavaForConditionalGeneration (CLIP 4x256 at 112 px = 64 image tokens, LLaMA
10x640, vocab 32064 as llava-hf; ~94M parameters) in fp32; ours gets the same weights through
the llava-hf converter. Prompt = image + 32 text tokens (97 tokens), greedy, KV cache on both
(HF's DynamicCache, our preallocated one), EOS disabled so every run decodes exactly N tokens.
Decode tokens/s = B * (N - 1) / (time(N new tokens) - time(1 new token)): prefill and the
first token cancel out. Best of `repeats` runs after a warm-up (which compiles ours).

The memory-bandwidth roof: a decode step must read the decoder's weights (minus the embedding
table, of which it reads B rows) and the KV cache so far; fraction = achieved bytes/s over
`--bandwidth-gbs` (this machine: ~16-19 GB/s read). Prints both, their ratio (goal >= 2x).
"""

import argparse
import os
import time

import jax
import numpy as np
import torch

from sgv_jax.convert.llava_hf import from_llava_hf_state_dict
from sgv_jax.generation.decode import generate_tokens
from sgv_jax.generation.sampling import GREEDY

VOCAB, IMAGE_ID, PAD = 32064, 32000, 32001  # llava-hf's vocabulary layout (REFERENCE.md §1.7)
TEXT_TOKENS = 32


def build_hf_model():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, patch_size=14, image_size=112)
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
    parser.add_argument("--bandwidth-gbs", type=float, default=17.5)
    args = parser.parse_args(argv)

    model, config = build_hf_model()
    cfg, params = from_llava_hf_state_dict(model.state_dict(), config.to_dict())
    params = jax.device_put(params)  # once: not a host->device copy per generate call
    n_params = sum(p.numel() for p in model.parameters())
    lm = model.model.language_model
    lm_bytes = 4 * (sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
                    + model.lm_head.weight.numel())
    kv_per_token = 4 * 2 * cfg.text.num_layers * cfg.text.num_kv_heads * cfg.text.resolved_head_dim
    print(f"model: {n_params / 1e6:.1f}M parameters fp32; decoder weights read per step "
          f"{lm_bytes / 1e6:.0f} MB; KV cache {kv_per_token / 1e3:.0f} kB per token; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)

    for batch in (int(b) for b in args.batches.split(",")):
        bench_batch(model, cfg, params, batch, args, lm_bytes, kv_per_token)

def bench_batch(model, cfg, params, batch: int, args, lm_bytes: int, kv_per_token: int) -> None:
    ids, pixels = make_prompt(batch, cfg.num_image_tokens, cfg.vision.image_size)
    mask = np.ones_like(ids)

    def run_hf(n):
        with torch.no_grad():
            return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                  pixel_values=torch.tensor(pixels), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=PAD)

    ours_batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                  "pixel_values": pixels.transpose(0, 2, 3, 1)}

    def run_ours(n):
        return generate_tokens(params, cfg, ours_batch, GREEDY, max_new_tokens=n,
                               eos_ids=(-1,), pad_id=PAD)

    hf_tokens = run_hf(args.new_tokens)[:, ids.shape[1]:].numpy()
    our_tokens = run_ours(args.new_tokens)
    assert hf_tokens.shape == our_tokens.shape, (hf_tokens.shape, our_tokens.shape)
    agree = np.mean(np.cumprod(hf_tokens == our_tokens, axis=1).sum(1)) / args.new_tokens
    rates = decode_rates({"hf": run_hf, "sgv_jax": run_ours}, batch, args.new_tokens,
                         args.repeats)
    context = ids.shape[1] + args.new_tokens / 2  # mean cache length while decoding
    step_bytes = lm_bytes + batch * context * kv_per_token
    for name, rate in rates.items():
        roof = rate / batch * step_bytes / (args.bandwidth_gbs * 1e9)
        print(f"batch {batch} {name:8s} {rate:8.1f} tokens/s  "
              f"({roof:5.1%} of the {args.bandwidth_gbs:g} GB/s roof)", flush=True)
    print(f"batch {batch} ratio sgv_jax/hf = {rates['sgv_jax'] / rates['hf']:.2f}x  "
          f"(greedy prefix agreement {agree:.0%})", flush=True)

if __name__ == "__main__":
    main()
