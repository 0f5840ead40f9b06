"""Model config ↔ HF config dicts (llava-hf `LlavaConfig`, `CLIPVisionConfig`, `LlamaConfig`)."""

from __future__ import annotations

from typing import Any

from sgv_jax.models.config import TextConfig, VisionConfig, VLMConfig

_SELECT = {"default": "patch", "full": "cls_patch"}


def vision_from_hf(c: dict[str, Any]) -> VisionConfig:
    c = c.get("vision_config", c)  # a full CLIPModel config nests the vision part
    return VisionConfig(
        hidden_size=c.get("hidden_size", 768), intermediate_size=c.get("intermediate_size", 3072),
        num_layers=c.get("num_hidden_layers", 12), num_heads=c.get("num_attention_heads", 12),
        patch_size=c.get("patch_size", 32), image_size=c.get("image_size", 224),
        layer_norm_eps=c.get("layer_norm_eps", 1e-5), hidden_act=c.get("hidden_act", "quick_gelu"))


def text_from_hf(c: dict[str, Any]) -> TextConfig:
    rope = c.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or c.get("rope_scaling"):
        raise ValueError(f"RoPE scaling {rope or c.get('rope_scaling')} is not supported")
    if "rms_norm_eps" not in c:
        # HF's class default (1e-6) differs from LLaMA-2's 1e-5 (REFERENCE §1.4): never guess.
        raise ValueError("text config has no rms_norm_eps; LLaMA-2/Vicuna use 1e-5 — add it")
    return TextConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        head_dim=c.get("head_dim"), rms_norm_eps=c["rms_norm_eps"],
        rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
        max_position_embeddings=c.get("max_position_embeddings", 4096),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        pad_token_id=c.get("pad_token_id") if c.get("pad_token_id") is not None else 0)


def vlm_from_llava_hf(c: dict[str, Any]) -> VLMConfig:
    layer = c.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise TypeError(f"vision_feature_layer {layer!r}: only a single layer is supported")
    strategy = c.get("vision_feature_select_strategy", "default")
    if strategy not in _SELECT:
        raise ValueError(f"vision_feature_select_strategy {strategy!r}: use 'default' or 'full'")
    act = c.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"projector_hidden_act {act!r}: only exact 'gelu' (LLaVA) is supported")
    return VLMConfig(
        vision=vision_from_hf(c["vision_config"]), text=text_from_hf(c["text_config"]),
        projector_type="mlp2x_gelu", projector_bias=c.get("multimodal_projector_bias", True),
        vision_feature_layer=layer, vision_feature_select=_SELECT[strategy],
        image_token_id=c.get("image_token_index", c.get("image_token_id", 32000)))


def vision_to_hf(v: VisionConfig) -> dict[str, Any]:
    return {"model_type": "clip_vision_model", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "patch_size": v.patch_size,
            "image_size": v.image_size, "layer_norm_eps": v.layer_norm_eps,
            "hidden_act": v.hidden_act, "num_channels": 3, "projection_dim": 768}


def text_to_hf(t: TextConfig) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.resolved_head_dim, "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta, "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings, "pad_token_id": t.pad_token_id,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False}


def vlm_to_llava_hf(cfg: VLMConfig, image_token_index: int) -> dict[str, Any]:
    if cfg.projector_type != "mlp2x_gelu":
        raise ValueError(f"llava-hf has only the mlp2x_gelu projector; this model has "
                         f"{cfg.projector_type!r}")
    inverse = {v: k for k, v in _SELECT.items()}
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "vision_config": vision_to_hf(cfg.vision), "text_config": text_to_hf(cfg.text),
            "image_token_index": image_token_index, "projector_hidden_act": "gelu",
            "multimodal_projector_bias": cfg.projector_bias,
            "vision_feature_layer": cfg.vision_feature_layer,
            "vision_feature_select_strategy": inverse[cfg.vision_feature_select],
            "image_seq_length": cfg.num_image_tokens,
            "tie_word_embeddings": cfg.text.tie_word_embeddings}


# Vision towers the original LLaVA names in `mm_vision_tower` whose shapes are known (§1.1); any
# other name needs the tower's own config.json (`--vision-tower`).
KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": VisionConfig(),
    "openai/clip-vit-large-patch14": VisionConfig(image_size=224),
}


def vlm_from_original(c: dict[str, Any], vision: VisionConfig, source: str) -> VLMConfig:
    """Original LLaVA / ShareGPT4V LM config (LlamaConfig + mm_* fields, REFERENCE §2.3).

    The image placeholder stays IMAGE_TOKEN_INDEX (-200) and the vocab unpadded (§1.6)."""
    if c.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise ValueError(f"{source}: mm_hidden_size {c['mm_hidden_size']} disagrees with the "
                         f"vision tower's hidden_size {vision.hidden_size}")
    if c.get("mm_use_im_start_end"):
        raise ValueError(f"{source}: mm_use_im_start_end=True (<im_start>/<im_end> around images) "
                         "is not supported; ShareGPT4V/LLaVA-1.5 use False")
    return VLMConfig(
        vision=vision, text=text_from_hf(c),
        # LLaVA's builder defaults to 'linear' when the field is absent (v1 checkpoints).
        projector_type=c.get("mm_projector_type", "linear"),
        vision_feature_layer=c.get("mm_vision_select_layer", -2),
        vision_feature_select=c.get("mm_vision_select_feature", "patch"))


def original_from_vlm(cfg: VLMConfig, vision_tower: str) -> dict[str, Any]:
    """config.json of an original-format LLM dir (`LlavaLlamaForCausalLM`, §2.1/§2.3)."""
    return {**text_to_hf(cfg.text), "model_type": "llava_llama",
            "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": vision_tower,
            "use_mm_proj": True, "mm_projector_type": cfg.projector_type,
            "mm_hidden_size": cfg.vision.hidden_size,
            "mm_vision_select_layer": cfg.vision_feature_layer,
            "mm_vision_select_feature": cfg.vision_feature_select,
            "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_cache": True}
