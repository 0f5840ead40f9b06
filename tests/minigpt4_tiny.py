"""Tiny random HF pieces assembled the MiniGPT-4 way (MINIGPT4.md §5.2): Blip2VisionModel with
its post_layernorm as ln_vision (eps patched to the original's 1e-5), Blip2QFormerModel,
language_projection and LlamaForCausalLM, in a Blip2ForConditionalGeneration (fp32, eager)."""

from __future__ import annotations

import numpy as np

VOCAB = 97
NUM_QUERY = 5


def tiny_blip2_config(vocab: int = VOCAB):
    from transformers import (
        Blip2Config,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        LlamaConfig,
    )

    # Matches the `minigpt4_tiny` preset.
    vision = Blip2VisionConfig(hidden_size=24, intermediate_size=44, num_hidden_layers=3,
                               num_attention_heads=2, patch_size=7, image_size=21,
                               layer_norm_eps=1e-6, qkv_bias=True)
    qformer = Blip2QFormerConfig(hidden_size=36, num_hidden_layers=4, num_attention_heads=3,
                                 intermediate_size=52, cross_attention_frequency=2,
                                 encoder_hidden_size=24, max_position_embeddings=16)
    text = LlamaConfig(vocab_size=vocab, hidden_size=40, intermediate_size=88, num_hidden_layers=2,
                       num_attention_heads=5, num_key_value_heads=5, rms_norm_eps=1e-6,
                       max_position_embeddings=256, pad_token_id=0)
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                       text_config=text.to_dict(), num_query_tokens=NUM_QUERY,
                       image_token_id=vocab - 1)


def build_hf_minigpt4(seed: int = 0, vocab: int = VOCAB):
    """The HF model with every weight perturbed, the k third of each qkv bias kept zero (the
    original has no k bias) and post_layernorm's eps set to ln_vision's 1e-5. `vocab`: the
    LLaMA vocabulary (a test's own tokenizer's size)."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    config = tiny_blip2_config(vocab)
    config._attn_implementation = "eager"
    for sub in (config.vision_config, config.qformer_config, config.text_config):
        sub._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn_like(p) if "embed" not in name else 0.5 * torch.randn_like(p))
            if name.endswith("self_attn.qkv.bias"):
                d = p.shape[0] // 3
                p[d:2 * d] = 0
    model.vision_model.post_layernorm.eps = 1e-5
    return model


def random_pixels(batch: int, size: int = 21, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
