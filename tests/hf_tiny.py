"""Tiny random HF LLaVA models for parity tests (torch, fp32, eager attention)."""

from __future__ import annotations

import numpy as np


def tiny_llava_config(num_kv_heads: int = 5, vision_feature_layer: int = -2,
                      strategy: str = "default", vocab: int = 101, **text_overrides):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=24, intermediate_size=44, num_hidden_layers=3,
                              num_attention_heads=2, patch_size=7, image_size=21,
                              projection_dim=16)
    text = LlamaConfig(vocab_size=vocab, hidden_size=40, intermediate_size=88,
                       num_hidden_layers=2, num_attention_heads=5 if num_kv_heads != 2 else 4,
                       num_key_value_heads=num_kv_heads, rms_norm_eps=1e-5,
                       max_position_embeddings=128, pad_token_id=0, **text_overrides)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1,
                       vision_feature_layer=vision_feature_layer,
                       vision_feature_select_strategy=strategy)


def build_hf_llava(config, seed: int = 0):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config).eval()
    # Random init leaves norms at 1 and biases at 0; perturb everything so every weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def num_image_tokens(config) -> int:
    v = config.vision_config
    n = (v.image_size // v.patch_size) ** 2
    return n if config.vision_feature_select_strategy == "default" else n + 1


def make_inputs(config, lengths, with_image, seed: int = 0):
    """Right-padded ids [B, L] with one image run after BOS in samples that have one.

    Returns (input_ids, attention_mask, pixel_values NCHW for the image samples only)."""
    rng = np.random.default_rng(seed)
    n_img = num_image_tokens(config)
    image_id = config.image_token_index
    vocab = config.text_config.vocab_size
    total = [n + (n_img if img else 0) for n, img in zip(lengths, with_image)]
    width = max(total)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for b, (n, img) in enumerate(zip(lengths, with_image)):
        text = rng.integers(3, image_id, size=n)
        text[0] = 1
        row = np.concatenate([text[:1], np.full(n_img, image_id), text[1:]]) if img else text
        ids[b, :len(row)] = row
        mask[b, :len(row)] = 1
    size = config.vision_config.image_size
    pixels = rng.standard_normal((sum(with_image), 3, size, size)).astype(np.float32)
    assert image_id < vocab
    return ids, mask, pixels
